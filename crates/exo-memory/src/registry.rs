//! One registry per worker process: it opens stores and shares them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{
    config::MemoryConfig,
    dsn::{SqliteLocation, StoreTarget},
    error::{Error, Result},
    item::{MemoryItem, MemoryScope},
    policy::MemoryPolicy,
    short_term::{ShortTermConfig, ShortTermStore},
    store::{Backend, MemoryStore, SearchQuery, SqlConfig},
};

/// How a [`StoreRegistry`] opens stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The bounds of the process's short-term store.
    pub short_term: ShortTermConfig,
    /// How SQL stores connect.
    pub sql: SqlConfig,
}

/// Opens a store of its own (not shared): a new, empty short-term store, or
/// a new pool for a SQL database.
pub async fn open_store(target: &StoreTarget, config: &SqlConfig) -> Result<Arc<dyn MemoryStore>> {
    match target {
        StoreTarget::ShortTerm => Ok(Arc::new(ShortTermStore::default())),
        StoreTarget::Sqlite(location) => open_sqlite(location, config).await,
        StoreTarget::Postgres(url) => open_postgres(url, config).await,
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(
    location: &SqliteLocation,
    config: &SqlConfig,
) -> Result<Arc<dyn MemoryStore>> {
    Ok(Arc::new(
        crate::sqlite::SqliteStore::open(location, config).await?,
    ))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &SqliteLocation, _: &SqlConfig) -> Result<Arc<dyn MemoryStore>> {
    Err(Error::BackendNotCompiled {
        backend: "sqlite",
        feature: "sqlite",
    })
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, config: &SqlConfig) -> Result<Arc<dyn MemoryStore>> {
    Ok(Arc::new(
        crate::postgres::PostgresStore::connect(url, config).await?,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str, _: &SqlConfig) -> Result<Arc<dyn MemoryStore>> {
    Err(Error::BackendNotCompiled {
        backend: "postgres",
        feature: "postgres",
    })
}

/// A pooled store handed out by the registry. Tasks may call `close` when
/// they finish, as the reference's worker does; the pool stays open for
/// the other tasks until [`StoreRegistry::close_all`].
#[derive(Debug)]
struct SharedStore {
    inner: Arc<dyn MemoryStore>,
}

#[async_trait]
impl MemoryStore for SharedStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    async fn add(&self, item: &MemoryItem) -> Result<()> {
        self.inner.add(item).await
    }

    async fn add_many(&self, items: &[MemoryItem]) -> Result<()> {
        self.inner.add_many(items).await
    }

    async fn get(&self, id: &str) -> Result<Option<MemoryItem>> {
        self.inner.get(id).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>> {
        self.inner.search(query).await
    }

    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>> {
        self.inner.history(scope, limit).await
    }

    async fn clear(&self, scope: &MemoryScope) -> Result<u64> {
        self.inner.clear(scope).await
    }

    /// Does nothing: the registry owns the pool.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

type Slot = Arc<OnceCell<Arc<SharedStore>>>;

/// The stores of one worker process: one short-term store, and one pool
/// per SQL database, opened on first use and shared by every task.
///
/// Two spellings of one SQLite file (`sqlite:///data/m.db` and
/// `/data/m.db`) share a pool; PostgreSQL URLs are compared as written.
/// Tasks that open the same database at the same moment wait for one
/// connection attempt. A failed attempt is not remembered: the next task
/// tries again.
#[derive(Debug, Default)]
pub struct StoreRegistry {
    config: RegistryConfig,
    short_term: Arc<ShortTermStore>,
    slots: Mutex<HashMap<StoreTarget, Slot>>,
}

impl StoreRegistry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        StoreRegistry {
            short_term: Arc::new(ShortTermStore::new(config.short_term.clone())),
            config,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration this registry opens stores with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The process's short-term store.
    pub fn short_term(&self) -> Arc<ShortTermStore> {
        Arc::clone(&self.short_term)
    }

    /// The store at `target`: the short-term store, or the shared pool of
    /// that database, connecting (and creating the table) on first use.
    pub async fn open(&self, target: &StoreTarget) -> Result<Arc<dyn MemoryStore>> {
        target.backend().ensure_compiled()?;
        if *target == StoreTarget::ShortTerm {
            return Ok(self.short_term());
        }
        let slot: Slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(slots.entry(target.clone()).or_default())
        };
        let store = slot
            .get_or_try_init(|| async {
                let inner = open_store(target, &self.config.sql).await?;
                tracing::info!(target = %target, "opened memory store");
                Ok::<_, Error>(Arc::new(SharedStore { inner }))
            })
            .await?;
        Ok(Arc::clone(store) as Arc<dyn MemoryStore>)
    }

    /// Resolves a task's memory config under `policy`, then opens the store.
    pub async fn open_for_task(
        &self,
        policy: &MemoryPolicy,
        config: &MemoryConfig,
    ) -> Result<Arc<dyn MemoryStore>> {
        let target = policy.resolve(config)?;
        self.open(&target).await
    }

    /// How many SQL pools are open.
    pub fn pool_count(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|slot| slot.initialized())
            .count()
    }

    /// Closes every SQL pool, for shutdown. Stores handed out before fail
    /// with [`crate::Error::Closed`] afterwards; opening again makes new
    /// pools. The short-term store keeps its items.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(store) = slot.get()
                && let Err(error) = store.inner.close().await
            {
                tracing::warn!(%error, "closing a memory store failed");
            }
        }
    }
}
