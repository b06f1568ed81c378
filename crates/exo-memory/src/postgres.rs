//! The PostgreSQL store (feature `postgres`).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Connection, PgPool, Postgres, Row,
    postgres::{PgArguments, PgConnectOptions, PgConnection, PgPoolOptions, PgRow},
};

use crate::{
    dsn::StoreTarget,
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

const UPSERT: &str = "INSERT INTO memory_items
    (id, content, memory_type, status, metadata, extra_json, created_at, updated_at, deleted, version)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, 0, 1)
ON CONFLICT (id) DO UPDATE SET
    content    = EXCLUDED.content,
    status     = EXCLUDED.status,
    metadata   = EXCLUDED.metadata,
    extra_json = EXCLUDED.extra_json,
    updated_at = EXCLUDED.updated_at,
    version    = memory_items.version + 1,
    deleted    = 0";

const COLUMNS: &str = "id, content, memory_type, status, metadata::text AS metadata, \
    extra_json::text AS extra_json, created_at, updated_at, version";

fn scope_field(key: &'static str) -> &'static str {
    match key {
        "user_id" => "metadata->>'user_id'",
        "session_id" => "metadata->>'session_id'",
        "task_id" => "metadata->>'task_id'",
        _ => "metadata->>'agent_id'",
    }
}

/// PostgreSQL has no stable insertion order to fall back on (`ctid` moves
/// on every upsert), so items with equal `created_at` are ordered by `id`:
/// arbitrary but stable, and the same in `search` and `history`. Items made
/// in one process never share a `created_at` (see [`MemoryItem::new`]), so
/// a tie means two processes, or timestamps set by hand. Both compare
/// bytewise (`COLLATE "C"`): a database's language collation may weigh
/// punctuation differently, and ISO timestamps sort right only bytewise.
const DIALECT: Dialect = Dialect {
    backend: "postgres",
    columns: COLUMNS,
    like: "ILIKE",
    newest_first: "created_at COLLATE \"C\" DESC, id COLLATE \"C\" DESC",
    scope_field,
};

/// A store in a PostgreSQL database, in the reference's `memory_items`
/// table.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    target: StoreTarget,
    timeout: Duration,
}

impl PostgresStore {
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
        let mut connection = match tokio::time::timeout(
            config.connect_timeout,
            PgConnection::connect_with(&options),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(sql::connect_error(&target, error)),
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    backend: "postgres",
                    target: target.redacted(),
                    timeout: config.connect_timeout,
                });
            }
        };
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
        tracing::debug!(target = %target, "opened postgres memory store");
        Ok(PostgresStore {
            pool,
            target,
            timeout: config.connect_timeout,
        })
    }

    /// Where the database is (password hidden in its `Display`).
    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// The connection pool, for callers that need the raw table.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
        sql::query_error(DIALECT.backend, operation, self.timeout)
    }

    fn decode(&self, row: &PgRow) -> Result<MemoryItem> {
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
                version: i64::from(row.try_get::<i32, _>("version")?),
            })
        };
        read().map_err(self.error("read row"))?.into_item()
    }

    fn upsert_query(item: &MemoryItem) -> sqlx::query::Query<'static, Postgres, PgArguments> {
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

#[async_trait]
impl MemoryStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
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
        let mut transaction = self.pool.begin().await.map_err(self.error("add_many"))?;
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM memory_items WHERE id = $1 AND deleted = 0"
        )))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(self.error("get"))?;
        row.as_ref().map(|row| self.decode(row)).transpose()
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::search_query::<Postgres>(&DIALECT, query);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("search"))?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::history_query::<Postgres>(&DIALECT, scope, limit);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("history"))?;
        rows.iter().rev().map(|row| self.decode(row)).collect()
    }

    async fn clear(&self, scope: &MemoryScope) -> Result<u64> {
        let mut builder = sql::clear_query::<Postgres>(&DIALECT, scope);
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
