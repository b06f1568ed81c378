//! The SQLite store (feature `sqlite`).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row, Sqlite, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use crate::{
    dsn::{SqliteLocation, StoreTarget},
    error::{Error, Result},
    item::{MemoryItem, MemoryScope, StoredRow},
    sql::{self, Dialect},
    store::{Backend, MemoryStore, SearchQuery, SqlConfig},
};

/// The reference's table, exactly.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS memory_items (
    id          TEXT PRIMARY KEY,
    content     TEXT NOT NULL,
    memory_type TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'accepted',
    metadata    TEXT NOT NULL DEFAULT '{}',
    extra_json  TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    version     INTEGER NOT NULL DEFAULT 1
)";

/// The reference's indexes, with its names, all partial on live rows.
const CREATE_INDEXES: [&str; 3] = [
    "CREATE INDEX IF NOT EXISTS idx_memory_type ON memory_items(memory_type) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_status ON memory_items(status) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_created_at ON memory_items(created_at) WHERE deleted = 0",
];

/// Insert, or update in place: the row keeps its `rowid` (and so its place
/// among items with the same `created_at`), its `memory_type` and its
/// `created_at`.
const UPSERT: &str = "INSERT INTO memory_items
    (id, content, memory_type, status, metadata, extra_json, created_at, updated_at, deleted, version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 1)
ON CONFLICT(id) DO UPDATE SET
    content    = excluded.content,
    status     = excluded.status,
    metadata   = excluded.metadata,
    extra_json = excluded.extra_json,
    updated_at = excluded.updated_at,
    version    = memory_items.version + 1,
    deleted    = 0";

const GET: &str = "SELECT id, content, memory_type, status, metadata, extra_json, created_at, \
    updated_at, version FROM memory_items WHERE id = ? AND deleted = 0";

fn scope_field(key: &'static str) -> &'static str {
    match key {
        "user_id" => "json_extract(metadata, '$.user_id')",
        "session_id" => "json_extract(metadata, '$.session_id')",
        "task_id" => "json_extract(metadata, '$.task_id')",
        _ => "json_extract(metadata, '$.agent_id')",
    }
}

/// SQLite orders items with equal `created_at` by `rowid`: the order in
/// which they were first inserted, which an upsert keeps.
const DIALECT: Dialect = Dialect {
    backend: "sqlite",
    columns: "id, content, memory_type, status, metadata, extra_json, created_at, updated_at, \
              version",
    like: "LIKE",
    newest_first: "created_at DESC, rowid DESC",
    scope_field,
};

/// How long a writer waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A store in a SQLite database, in the reference's `memory_items` table.
///
/// A file database uses WAL journaling and a pool of up to four
/// connections; writers wait for each other up to ten seconds. The
/// substring search folds case for ASCII letters only (SQLite's `LIKE`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    target: StoreTarget,
    timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating the file when missing) the database and creates the
    /// table and indexes if they are not there yet.
    pub async fn open(location: &SqliteLocation, config: &SqlConfig) -> Result<Self> {
        let target = StoreTarget::Sqlite(location.clone());
        let (options, max_connections) = match location {
            SqliteLocation::Memory => (
                SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(|error| sql::connect_error(&target, error))?,
                1,
            ),
            SqliteLocation::File(path) => (
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
                config.max_connections.clamp(1, 4),
            ),
        };
        let options = options.busy_timeout(BUSY_TIMEOUT);
        let in_memory = *location == SqliteLocation::Memory;
        let pool_options = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(config.connect_timeout.max(BUSY_TIMEOUT));
        // An in-memory database lives as long as one of its connections, so
        // the pool keeps one open for good.
        let pool_options = if in_memory {
            pool_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            pool_options
        };
        let pool =
            match tokio::time::timeout(config.connect_timeout, pool_options.connect_with(options))
                .await
            {
                Ok(Ok(pool)) => pool,
                Ok(Err(error)) => return Err(sql::connect_error(&target, error)),
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        backend: "sqlite",
                        target: target.redacted(),
                        timeout: config.connect_timeout,
                    });
                }
            };
        for statement in std::iter::once(CREATE_TABLE).chain(CREATE_INDEXES) {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(|error| sql::connect_error(&target, error))?;
        }
        tracing::debug!(target = %target, "opened sqlite memory store");
        Ok(SqliteStore {
            pool,
            target,
            timeout: config.connect_timeout.max(BUSY_TIMEOUT),
        })
    }

    /// Where the database is.
    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// The connection pool, for callers that need the raw table.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
        sql::query_error(DIALECT.backend, operation, self.timeout)
    }

    fn decode(&self, row: &SqliteRow) -> Result<MemoryItem> {
        let read = || -> std::result::Result<StoredRow, sqlx::Error> {
            Ok(StoredRow {
                id: row.try_get("id")?,
                content: row.try_get("content")?,
                memory_type: row.try_get("memory_type")?,
                status: row.try_get("status")?,
                metadata: row.try_get("metadata")?,
                extra_json: row.try_get("extra_json")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                version: row.try_get("version")?,
            })
        };
        read().map_err(self.error("read row"))?.into_item()
    }

    fn upsert_query(
        item: &MemoryItem,
    ) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
        let row = StoredRow::from_item(item);
        sqlx::query(UPSERT)
            .bind(row.id)
            .bind(row.content)
            .bind(row.memory_type)
            .bind(row.status)
            .bind(row.metadata)
            .bind(row.extra_json)
            .bind(row.created_at)
            .bind(row.updated_at)
    }
}

#[async_trait]
impl MemoryStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn add(&self, item: &MemoryItem) -> Result<()> {
        item.validate()?;
        Self::upsert_query(item)
            .execute(&self.pool)
            .await
            .map_err(self.error("add"))?;
        Ok(())
    }

    async fn add_many(&self, items: &[MemoryItem]) -> Result<()> {
        for item in items {
            item.validate()?;
        }
        // IMMEDIATE takes the write lock up front, so the transaction waits
        // for other writers instead of failing half-way.
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.error("add_many"))?;
        for item in items {
            Self::upsert_query(item)
                .execute(&mut *transaction)
                .await
                .map_err(self.error("add_many"))?;
        }
        transaction.commit().await.map_err(self.error("add_many"))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<MemoryItem>> {
        let row = sqlx::query(GET)
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.error("get"))?;
        row.as_ref().map(|row| self.decode(row)).transpose()
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::search_query::<Sqlite>(&DIALECT, query);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("search"))?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::history_query::<Sqlite>(&DIALECT, scope, limit);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("history"))?;
        rows.iter().rev().map(|row| self.decode(row)).collect()
    }

    async fn clear(&self, scope: &MemoryScope) -> Result<u64> {
        let mut builder = sql::clear_query::<Sqlite>(&DIALECT, scope);
        let result = builder
            .build()
            .execute(&self.pool)
            .await
            .map_err(self.error("clear"))?;
        Ok(result.rows_affected())
    }

    async fn close(&self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}
