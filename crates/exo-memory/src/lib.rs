//! Conversation memory for exo: stores that keep a session's messages so a
//! later task can carry on where an earlier one stopped.
//!
//! `exo-worker` depends on this crate (behind its own `sqlite`/`postgres`
//! features) to do what the reference's "memory hydration" does: read a
//! task's `metadata.memory`, open the store it names, save the user input
//! and what the agent said and did, and load prior history into the
//! message list. The crate depends only on `exo-proto` for [`Message`]. It
//! must never know about Redis, queues or the worker: it sees items, scopes
//! and DSNs, nothing else.
//!
//! The SQL backends use the reference's `memory_items` table exactly
//! (columns, types, defaults, index names, ISO-8601 `+00:00` timestamps,
//! metadata JSON with unset fields as `null`), so one database can serve
//! Python and Rust workers at once.
//!
//! # Main types
//!
//! - [`MemoryStore`]: the async, object-safe store trait (`add` is an
//!   upsert, `get`, `search` newest first, `history` oldest first, `clear`
//!   soft-deletes, `close`).
//! - [`MemoryItem`] with [`MemoryKind`] (system, human, ai with tool calls,
//!   tool with its error), [`MemoryStatus`] and [`MemoryMetadata`];
//!   [`MemoryItem::from_message`] and [`MemoryItem::to_message`] convert
//!   to and from [`Message`].
//! - [`MemoryScope`] filters by user, session, task and agent;
//!   [`SearchQuery`] adds text, type, status and a limit.
//! - [`ShortTermStore`]: in-process and bounded, always compiled in.
//!   `SqliteStore` and `PostgresStore`: behind features, both aliases of
//!   the one `SqlStore`, generic over the SQL dialect.
//! - [`MemoryConfig`] parses `metadata.memory`; [`MemoryPolicy`] decides
//!   which store a payload may open (named stores, payload DSNs refused by
//!   default); [`StoreRegistry`] opens stores and shares one pool per
//!   database and one short-term store per process.
//!
//! # Remember a conversation
//!
//! ```
//! use exo_memory::{
//!     MemoryItem, MemoryMetadata, MemoryStore, ShortTermConfig, ShortTermStore,
//!     messages_from_items,
//! };
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = ShortTermStore::new(ShortTermConfig::default());
//! let session = MemoryMetadata {
//!     session_id: Some("chat-1".into()),
//!     ..MemoryMetadata::default()
//! };
//! store.add(&MemoryItem::human("My name is Ada.", session.clone())).await?;
//! store.add(&MemoryItem::ai("Hello, Ada.", Vec::new(), session.clone())).await?;
//!
//! // A later task of the same session starts from its history.
//! let history = store.history(&session.scope(), 100).await?;
//! let messages = messages_from_items(&history);
//! assert_eq!(messages.len(), 2);
//! # Ok::<(), exo_memory::Error>(())
//! # }).unwrap();
//! ```
//!
//! # The worker's path
//!
//! ```no_run
//! # async fn run(metadata: serde_json::Map<String, serde_json::Value>) -> exo_memory::Result<()> {
//! use exo_memory::{MemoryConfig, MemoryItem, MemoryPolicy, MemoryStore, RegistryConfig,
//!     StoreRegistry, messages_from_items};
//!
//! // At startup, from `--memory-store NAME=DSN` flags.
//! let policy = MemoryPolicy::from_specs(["main=sqlite:///var/lib/exo/memory.db"], false)?;
//! let registry = StoreRegistry::new(RegistryConfig::default());
//!
//! // Per task.
//! if let Some(config) = MemoryConfig::from_task_metadata(&metadata)? {
//!     let store = registry.open_for_task(&policy, &config).await?;
//!     let prior = store.history(&config.history_scope(), 100).await?;
//!     let mut messages = messages_from_items(&prior);
//!     let saved = config.metadata_for_task("0123456789abcdef0123456789abcdef");
//!     store.add(&MemoryItem::human("Continue our conversation", saved)).await?;
//!     # messages.clear();
//! }
//!
//! // At shutdown.
//! registry.close_all().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | (none) | yes | the trait, items, config, policy, registry and [`ShortTermStore`] |
//! | `sqlite` | no | `SqliteStore`, on sqlx with a bundled SQLite |
//! | `postgres` | no | `PostgresStore`, on sqlx |
//!
//! Asking for a backend that is not compiled in fails with
//! [`Error::BackendNotCompiled`], which names the feature.
//!
//! [`Message`]: exo_proto::Message

mod clock;
mod config;
mod dsn;
mod error;
mod item;
mod policy;
#[cfg(feature = "postgres")]
mod postgres;
mod registry;
mod short_term;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_store;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

pub use config::{METADATA_KEY, MemoryConfig};
pub use dsn::{SqliteLocation, StoreTarget, redact_dsn};
pub use error::{BoxError, Error, Result};
pub use item::{
    MemoryItem, MemoryKind, MemoryMetadata, MemoryScope, MemoryStatus, messages_from_items,
};
pub use policy::{MemoryPolicy, NamedStore};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use registry::{RegistryConfig, StoreRegistry, open_store};
pub use short_term::{ShortTermConfig, ShortTermStore};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql_store::SqlStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use store::{Backend, MemoryStore, SearchQuery, SqlConfig};
