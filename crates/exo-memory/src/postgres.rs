//! The PostgreSQL dialect (feature `postgres`): the reference's schema, and
//! how a PostgreSQL database is opened.

use std::str::FromStr;

use sqlx::{
    Connection, Postgres, Row,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgQueryResult, PgRow},
};

use crate::{
    dsn::StoreTarget,
    error::{Error, Result},
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
    metadata    JSONB NOT NULL DEFAULT '{}',
    extra_json  JSONB NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted     SMALLINT NOT NULL DEFAULT 0,
    version     INTEGER NOT NULL DEFAULT 1
)";

/// The reference's index names, in the order of [`CREATE_INDEXES`].
const INDEX_NAMES: [&str; 5] = [
    "idx_memory_type",
    "idx_status",
    "idx_created_at",
    "idx_metadata_user",
    "idx_metadata_session",
];

/// The reference's indexes, all partial on live rows.
const CREATE_INDEXES: [&str; 5] = [
    "CREATE INDEX IF NOT EXISTS idx_memory_type ON memory_items(memory_type) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_status ON memory_items(status) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_created_at ON memory_items(created_at) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_metadata_user ON memory_items((metadata->>'user_id')) \
     WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS idx_metadata_session ON memory_items((metadata->>'session_id')) \
     WHERE deleted = 0",
];

/// Serialises schema creation between processes that open the same
/// database at once (`CREATE ... IF NOT EXISTS` alone can race in the
/// catalog). The value is the text "exomemry" read as a big-endian integer.
const SCHEMA_LOCK: i64 = 0x6578_6f6d_656d_7279;

/// PostgreSQL's spelling.
///
/// PostgreSQL has no stable insertion order to fall back on (`ctid` moves
/// on every upsert), so items with equal `created_at` are ordered by `id`:
/// arbitrary but stable, and the same in `search` and `history`. Items made
/// in one process never share a `created_at` (see
/// [`crate::MemoryItem::new`]), so a tie means two processes, or timestamps
/// set by hand. Both compare bytewise (`COLLATE "C"`): a database's
/// language collation may weigh punctuation differently, and ISO
/// timestamps sort right only bytewise.
#[derive(Debug, Clone, Copy)]
pub struct PostgresDialect;

impl Dialect for PostgresDialect {
    type Database = Postgres;
    const BACKEND: Backend = Backend::Postgres;
    const COLUMNS: &'static str = "id, content, memory_type, status, metadata::text AS metadata, \
                                   extra_json::text AS extra_json, created_at, updated_at, version";
    const LIKE: &'static str = "ILIKE";
    const NEWEST_FIRST: &'static str = "created_at COLLATE \"C\" DESC, id COLLATE \"C\" DESC";
    const JSON_CAST: &'static str = "::jsonb";
    const BEGIN_WRITE: Option<&'static str> = None;

    fn scope_field(key: &'static str) -> &'static str {
        match key {
            "user_id" => "metadata->>'user_id'",
            "session_id" => "metadata->>'session_id'",
            "task_id" => "metadata->>'task_id'",
            _ => "metadata->>'agent_id'",
        }
    }

    /// The reference declares `version` as `INTEGER`, which is 32 bits here.
    fn version(row: &PgRow) -> std::result::Result<i64, sqlx::Error> {
        Ok(i64::from(row.try_get::<i32, _>("version")?))
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A store in a PostgreSQL database, in the reference's `memory_items`
/// table.
pub type PostgresStore = SqlStore<PostgresDialect>;

impl SqlStore<PostgresDialect> {
    /// Connects to `url` (`postgres://` or `postgresql://`) and creates the
    /// table and indexes if they are not there yet. A server that is down
    /// or unreachable fails within `config.connect_timeout`, with the
    /// reason.
    pub async fn connect(url: &str, config: &SqlConfig) -> Result<Self> {
        let target = StoreTarget::parse_for(Backend::Postgres, url)?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| Error::InvalidDsn {
                backend: "postgres",
                dsn: target.redacted(),
                reason: error.to_string(),
            })?
            .application_name("exo-memory");
        // One plain connection first: the pool retries a refused connection
        // until its timeout and then reports only the timeout, while this
        // reports the real reason at once.
        let connecting = PgConnection::connect_with(&options);
        let mut connection =
            sql::connect_within(&target, config.connect_timeout, connecting).await?;
        let schema =
            tokio::time::timeout(config.connect_timeout * 2, ensure_schema(&mut connection))
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Protocol(format!(
                        "creating the memory_items table took longer than {:?}",
                        config.connect_timeout * 2
                    )))
                });
        let _ = connection.close().await;
        schema.map_err(|error| sql::connect_error(&target, error))?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options);
        Ok(SqlStore::new(pool, target, config.connect_timeout))
    }
}

/// Creates the table and indexes unless they all exist. Checking first
/// lets a role without `CREATE` rights use a database the reference set up.
async fn ensure_schema(connection: &mut PgConnection) -> std::result::Result<(), sqlx::Error> {
    let mut check = String::from("SELECT to_regclass('memory_items') IS NOT NULL");
    for name in INDEX_NAMES {
        check.push_str(&format!(" AND to_regclass('{name}') IS NOT NULL"));
    }
    let complete: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(check))
        .fetch_one(&mut *connection)
        .await?;
    if complete {
        return Ok(());
    }
    let mut transaction = connection.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *transaction)
        .await?;
    for statement in std::iter::once(CREATE_TABLE).chain(CREATE_INDEXES) {
        sqlx::query(statement).execute(&mut *transaction).await?;
    }
    transaction.commit().await
}
