//! The registry shares stores; a store that is down fails fast and clearly.

use std::sync::Arc;

use exo_memory::{
    Backend, Error, MemoryItem, MemoryScope, RegistryConfig, StoreRegistry, StoreTarget,
};

#[tokio::test]
async fn one_short_term_store_per_registry() {
    let registry = StoreRegistry::new(RegistryConfig::default());
    let first = registry.open(&StoreTarget::ShortTerm).await.unwrap();
    let second = registry.open(&StoreTarget::ShortTerm).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    let metadata = MemoryScope::new().with_session_id("s").to_metadata();
    first
        .add(&MemoryItem::human("turn 1", metadata))
        .await
        .unwrap();
    let history = second
        .history(&MemoryScope::new().with_session_id("s"), 10)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "a later task sees an earlier task's turn");
    assert_eq!(registry.short_term().len(), 1);
    assert_eq!(registry.pool_count(), 0);
}

#[test]
fn every_backend_reports_whether_it_is_compiled_in() {
    for backend in Backend::ALL {
        let compiled = match backend {
            Backend::ShortTerm => true,
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
        };
        assert_eq!(backend.is_compiled(), compiled, "{backend}");
        match backend.ensure_compiled() {
            Ok(()) => assert!(compiled, "{backend}"),
            Err(error) => {
                assert!(!compiled, "{backend}");
                let feature = backend.feature().unwrap();
                assert!(
                    error
                        .to_string()
                        .contains(&format!("cargo feature `{feature}`")),
                    "{error}"
                );
            }
        }
    }
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
#[tokio::test]
async fn opening_a_backend_that_is_not_compiled_in_names_the_feature() {
    let registry = StoreRegistry::new(RegistryConfig::default());
    let targets = [
        StoreTarget::parse("sqlite::memory:").unwrap(),
        StoreTarget::parse("postgres://exo@127.0.0.1:1/exo").unwrap(),
    ];
    for target in targets {
        if target.backend().is_compiled() {
            continue;
        }
        let error = registry.open(&target).await.unwrap_err();
        let feature = target.backend().feature().unwrap();
        assert!(
            matches!(error, Error::BackendNotCompiled { .. }),
            "{target}: {error}"
        );
        assert!(error.to_string().contains(feature), "{error}");
        let error = exo_memory::open_store(&target, &Default::default())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::BackendNotCompiled { .. }), "{error}");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test]
    async fn one_pool_per_database_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("shared.db");
        let registry = StoreRegistry::new(RegistryConfig::default());
        let spellings = [
            format!("sqlite://{}", path.display()),
            path.display().to_string(),
            format!("sqlite:{}", path.display()),
        ];
        let first = registry
            .open(&StoreTarget::parse(&spellings[0]).unwrap())
            .await
            .unwrap();
        for spelling in &spellings[1..] {
            let again = registry
                .open(&StoreTarget::parse(spelling).unwrap())
                .await
                .unwrap();
            assert!(Arc::ptr_eq(&first, &again), "{spelling} reuses the pool");
        }
        assert_eq!(registry.pool_count(), 1);

        let other =
            StoreTarget::parse(&directory.path().join("other.db").display().to_string()).unwrap();
        let different = registry.open(&other).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &different));
        assert_eq!(registry.pool_count(), 2);
    }

    #[tokio::test]
    async fn concurrent_opens_share_one_pool() {
        let directory = tempfile::tempdir().unwrap();
        let target =
            StoreTarget::parse(&directory.path().join("race.db").display().to_string()).unwrap();
        let registry = Arc::new(StoreRegistry::new(RegistryConfig::default()));
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let registry = Arc::clone(&registry);
                let target = target.clone();
                tokio::spawn(async move { registry.open(&target).await.unwrap() })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(open.await.unwrap());
        }
        assert!(stores.iter().all(|store| Arc::ptr_eq(store, &stores[0])));
        assert_eq!(registry.pool_count(), 1);
    }

    #[tokio::test]
    async fn a_task_closing_its_store_leaves_the_pool_open_until_close_all() {
        let directory = tempfile::tempdir().unwrap();
        let target =
            StoreTarget::parse(&directory.path().join("m.db").display().to_string()).unwrap();
        let registry = StoreRegistry::new(RegistryConfig::default());
        let metadata = MemoryScope::new().with_session_id("s").to_metadata();
        let store = registry.open(&target).await.unwrap();
        store
            .add(&MemoryItem::human("one", metadata.clone()))
            .await
            .unwrap();
        store.close().await.unwrap();
        store
            .add(&MemoryItem::human("two", metadata.clone()))
            .await
            .unwrap();

        registry.close_all().await;
        assert_eq!(registry.pool_count(), 0);
        let error = store
            .add(&MemoryItem::human("three", metadata))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Closed { .. }), "{error}");

        let reopened = registry.open(&target).await.unwrap();
        let history = reopened
            .history(&MemoryScope::new().with_session_id("s"), 10)
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "the file kept both turns");
    }

    #[tokio::test]
    async fn a_directory_that_does_not_exist_fails_clearly() {
        let directory = tempfile::tempdir().unwrap();
        let target = StoreTarget::parse(
            &directory
                .path()
                .join("missing")
                .join("m.db")
                .display()
                .to_string(),
        )
        .unwrap();
        let registry = StoreRegistry::new(RegistryConfig::default());
        let error = registry.open(&target).await.unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("could not open the sqlite memory store at sqlite://"),
            "{error}"
        );
        assert_eq!(registry.pool_count(), 0, "a failure is not kept");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use exo_memory::{PostgresStore, SqlConfig};

    use super::*;
    use crate::common::test_postgres;

    #[tokio::test]
    async fn one_pool_per_url() {
        let database = test_postgres().await;
        let registry = StoreRegistry::new(RegistryConfig::default());
        let target = StoreTarget::parse(database.url()).unwrap();
        let first = registry.open(&target).await.unwrap();
        let second = registry.open(&target).await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(registry.pool_count(), 1);
        let metadata = MemoryScope::new().with_session_id("s").to_metadata();
        first
            .add(&MemoryItem::human("hello", metadata))
            .await
            .unwrap();
        let seen = second
            .history(&MemoryScope::new().with_session_id("s"), 10)
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        registry.close_all().await;
    }

    fn quick() -> SqlConfig {
        SqlConfig {
            connect_timeout: Duration::from_secs(2),
            ..SqlConfig::default()
        }
    }

    #[tokio::test]
    async fn a_closed_port_fails_at_once_with_the_reason() {
        let port = exo_testkit::free_port();
        let url = format!("postgres://exo:s3cret@127.0.0.1:{port}/exo");
        let started = Instant::now();
        let error = PostgresStore::connect(&url, &quick()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let message = error.to_string();
        assert!(matches!(error, Error::Connect { .. }), "{message}");
        assert!(
            message.contains(&format!(
                "could not open the postgres memory store at postgres://exo:***@127.0.0.1:{port}/exo"
            )),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        let registry = StoreRegistry::new(RegistryConfig {
            sql: quick(),
            ..RegistryConfig::default()
        });
        let target = StoreTarget::parse(&url).unwrap();
        assert!(registry.open(&target).await.is_err());
        assert_eq!(registry.pool_count(), 0, "a failure is not kept");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        // Accepts connections and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = Instant::now();
        let error =
            PostgresStore::connect(&format!("postgres://exo@127.0.0.1:{port}/exo"), &quick())
                .await
                .unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        assert!(matches!(error, Error::ConnectTimeout { .. }), "{error}");
        assert!(
            error.to_string().contains("no connection within 2s"),
            "{error}"
        );
        silent.abort();
    }
}
