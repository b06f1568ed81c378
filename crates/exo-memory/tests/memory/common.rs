//! What every test module shares: fresh stores.

use std::{any::Any, sync::Arc};

use exo_memory::{MemoryItem, MemoryStore, ShortTermStore};

/// The ids of `items`, in order.
pub(crate) fn ids(items: &[MemoryItem]) -> Vec<String> {
    items.iter().map(|item| item.id.clone()).collect()
}

/// A store for one test, with whatever keeps its database alive.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn MemoryStore>,
    /// A temporary directory or database, dropped after the store.
    _guard: Box<dyn Any + Send>,
}

/// A fresh short-term store.
pub(crate) async fn short_term() -> Fixture {
    Fixture {
        store: Arc::new(ShortTermStore::default()),
        _guard: Box::new(()),
    }
}

/// A fresh SQLite store in a temporary file.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite() -> Fixture {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let location = exo_memory::SqliteLocation::File(directory.path().join("memory.db"));
    let store = exo_memory::SqliteStore::open(&location, &exo_memory::SqlConfig::default())
        .await
        .expect("open sqlite");
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(directory),
    }
}

/// A database of its own on the test PostgreSQL.
#[cfg(feature = "postgres")]
pub(crate) async fn test_postgres() -> exo_testkit::TestPostgres {
    tokio::task::spawn_blocking(exo_testkit::TestPostgres::new)
        .await
        .expect("start the test postgres")
}

/// A fresh PostgreSQL store in a database of its own.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres() -> Fixture {
    let database = test_postgres().await;
    let store =
        exo_memory::PostgresStore::connect(database.url(), &exo_memory::SqlConfig::default())
            .await
            .expect("connect to the test postgres");
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(database),
    }
}
