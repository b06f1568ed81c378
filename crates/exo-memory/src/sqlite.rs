//! The SQLite dialect (feature `sqlite`): the reference's schema, and how
//! a SQLite database is opened.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Row, Sqlite,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult, SqliteRow,
        SqliteSynchronous,
    },
};

use crate::{
    dsn::{SqliteLocation, StoreTarget},
    error::Result,
    sql::{self, Dialect},
    sql_store::SqlStore,
    store::{Backend, SqlConfig},
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

/// SQLite's spelling. Items with equal `created_at` are ordered by `rowid`:
/// the order in which they were first inserted, which an upsert keeps.
#[derive(Debug, Clone, Copy)]
pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    type Database = Sqlite;
    const BACKEND: Backend = Backend::Sqlite;
    const COLUMNS: &'static str = "id, content, memory_type, status, metadata, extra_json, \
                                   created_at, updated_at, version";
    const LIKE: &'static str = "LIKE";
    const NEWEST_FIRST: &'static str = "created_at DESC, rowid DESC";
    const JSON_CAST: &'static str = "";
    /// IMMEDIATE takes the write lock up front, so the transaction waits
    /// for other writers instead of failing half-way.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");

    fn scope_field(key: &'static str) -> &'static str {
        match key {
            "user_id" => "json_extract(metadata, '$.user_id')",
            "session_id" => "json_extract(metadata, '$.session_id')",
            "task_id" => "json_extract(metadata, '$.task_id')",
            _ => "json_extract(metadata, '$.agent_id')",
        }
    }

    fn version(row: &SqliteRow) -> std::result::Result<i64, sqlx::Error> {
        row.try_get("version")
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// How long a writer waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A store in a SQLite database, in the reference's `memory_items` table.
///
/// A file database uses WAL journaling and a pool of up to four
/// connections; writers wait for each other up to ten seconds. The
/// substring search folds case for ASCII letters only (SQLite's `LIKE`).
pub type SqliteStore = SqlStore<SqliteDialect>;

impl SqlStore<SqliteDialect> {
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
        let connecting = pool_options.connect_with(options);
        let pool = sql::connect_within(&target, config.connect_timeout, connecting).await?;
        for statement in std::iter::once(CREATE_TABLE).chain(CREATE_INDEXES) {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(|error| sql::connect_error(&target, error))?;
        }
        Ok(SqlStore::new(
            pool,
            target,
            config.connect_timeout.max(BUSY_TIMEOUT),
        ))
    }
}
