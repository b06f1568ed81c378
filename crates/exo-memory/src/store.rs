//! The `MemoryStore` trait, the search query, and the backend names.

use std::{fmt, str::FromStr, time::Duration};

use async_trait::async_trait;

use crate::{
    error::{Error, Result},
    item::{MemoryItem, MemoryScope, MemoryStatus},
};

/// The backends this crate knows, whether or not they are compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// In-process memory, shared by the tasks of one worker process.
    ShortTerm,
    /// SQLite through sqlx (feature `sqlite`).
    Sqlite,
    /// PostgreSQL through sqlx (feature `postgres`).
    Postgres,
}

impl Backend {
    /// Every backend, in a stable order.
    pub const ALL: [Backend; 3] = [Backend::ShortTerm, Backend::Sqlite, Backend::Postgres];

    /// The name used in `metadata.memory.backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::ShortTerm => "short_term",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The cargo feature that compiles the backend in; `None` for the
    /// short-term backend, which is always there.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Backend::ShortTerm => None,
            Backend::Sqlite => Some("sqlite"),
            Backend::Postgres => Some("postgres"),
        }
    }

    /// True when this binary can open stores of this backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::ShortTerm => true,
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
        }
    }

    /// Fails with [`Error::BackendNotCompiled`], naming the feature, when
    /// the backend is not compiled in.
    pub fn ensure_compiled(self) -> Result<()> {
        match self.feature() {
            Some(feature) if !self.is_compiled() => Err(Error::BackendNotCompiled {
                backend: self.as_str(),
                feature,
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// Accepts the reference's names, plus `short-term` and `postgresql`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "short_term" | "short-term" => Ok(Backend::ShortTerm),
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(Error::UnknownBackend {
                name: other.to_owned(),
            }),
        }
    }
}

/// How the SQL stores connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlConfig {
    /// How long opening a store, or waiting for a pooled connection, may
    /// take before it fails. A database that is down fails within this
    /// time, never hangs.
    pub connect_timeout: Duration,
    /// The most connections in one PostgreSQL pool. SQLite uses at most 4
    /// (one for an in-memory database), since it writes one at a time.
    pub max_connections: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            connect_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// What [`MemoryStore::search`] looks for. Every filter is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// A case-insensitive substring of the content; empty matches all.
    /// SQLite folds case for ASCII letters only.
    pub query: String,
    /// The scope fields that must match.
    pub scope: MemoryScope,
    /// Only items of this `memory_type`.
    pub memory_type: Option<String>,
    /// Only items with this status.
    pub status: Option<MemoryStatus>,
    /// At most this many items (10 by default, as in the reference).
    pub limit: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            query: String::new(),
            scope: MemoryScope::default(),
            memory_type: None,
            status: None,
            limit: 10,
        }
    }
}

impl SearchQuery {
    /// Everything in `scope`, up to `limit` items.
    pub fn in_scope(scope: MemoryScope, limit: usize) -> Self {
        SearchQuery {
            scope,
            limit,
            ..Self::default()
        }
    }

    /// This query, matching `text` as a substring.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.query = text.into();
        self
    }

    /// This query, restricted to one `memory_type`.
    pub fn with_memory_type(mut self, memory_type: impl Into<String>) -> Self {
        self.memory_type = Some(memory_type.into());
        self
    }

    /// This query, restricted to one status.
    pub fn with_status(mut self, status: MemoryStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// This query with another limit.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// A store of memory items. Every backend behaves the same; the shared test
/// suite in `tests/` holds them to it.
///
/// Ordering: items are ordered by `created_at`, then by the order in which
/// they were first stored where the backend records it (SQLite's `rowid`,
/// the short-term store's insertion counter), else by `id` (PostgreSQL).
/// Items made with [`MemoryItem::new`] in one process never share a
/// `created_at`, so their order is exact everywhere.
#[async_trait]
pub trait MemoryStore: Send + Sync + fmt::Debug {
    /// The backend behind this store.
    fn backend(&self) -> Backend;

    /// Stores `item`. An item with the same id is replaced (an upsert):
    /// content, status, metadata, kind-specific fields and `updated_at` are
    /// updated, `version` goes up by one, and a soft-deleted item comes
    /// back. `memory_type` and `created_at` keep their first values.
    async fn add(&self, item: &MemoryItem) -> Result<()>;

    /// Stores several items, in order. SQL backends do it in one
    /// transaction.
    async fn add_many(&self, items: &[MemoryItem]) -> Result<()> {
        for item in items {
            self.add(item).await?;
        }
        Ok(())
    }

    /// The item with this id, unless it is absent or soft-deleted.
    async fn get(&self, id: &str) -> Result<Option<MemoryItem>>;

    /// Items matching `query`, newest first. Soft-deleted items are left out.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>>;

    /// The conversation in `scope`: the newest `limit` items of kinds
    /// system, human, ai and tool that are not discarded or soft-deleted,
    /// returned oldest first, ready to be turned into messages.
    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>>;

    /// Soft-deletes every item in `scope` and returns how many. The empty
    /// scope clears the whole store.
    async fn clear(&self, scope: &MemoryScope) -> Result<u64>;

    /// Releases what the store holds. A store handed out by
    /// [`crate::StoreRegistry`] is shared, so closing it does nothing;
    /// [`crate::StoreRegistry::close_all`] closes the pools.
    async fn close(&self) -> Result<()>;
}
