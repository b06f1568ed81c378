//! The store both SQL backends share: [`SqlStore`], generic over the
//! [`Dialect`] that names what differs between them.

use std::{marker::PhantomData, time::Duration};

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::{
    dsn::StoreTarget,
    error::{Error, Result},
    item::{MemoryItem, MemoryScope, StoredRow},
    sql::{self, Dialect},
    store::{Backend, MemoryStore, SearchQuery},
};

/// A store in a SQL database, in the reference's `memory_items` table.
///
/// `D` is the dialect, which picks the driver. Name the store through its
/// alias, `SqliteStore` (feature `sqlite`) or `PostgresStore` (feature
/// `postgres`), which also carry the constructors.
#[derive(Debug, Clone)]
pub struct SqlStore<D: Dialect> {
    pool: Pool<D::Database>,
    target: StoreTarget,
    timeout: Duration,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlStore<D> {
    /// A store on `pool`, which reaches `target` and whose operations name
    /// `timeout` when the pool runs dry.
    pub(crate) fn new(pool: Pool<D::Database>, target: StoreTarget, timeout: Duration) -> Self {
        tracing::debug!(target = %target, "opened {} memory store", D::BACKEND);
        SqlStore {
            pool,
            target,
            timeout,
            dialect: PhantomData,
        }
    }

    /// Where the database is (a password hidden in its `Display`).
    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// The connection pool, for callers that need the raw table.
    pub fn pool(&self) -> &Pool<D::Database> {
        &self.pool
    }

    fn error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
        sql::query_error(D::BACKEND.as_str(), operation, self.timeout)
    }
}

impl<D: Dialect> SqlStore<D>
where
    String: for<'r> Decode<'r, D::Database> + Type<D::Database>,
    &'static str: ColumnIndex<<D::Database as Database>::Row>,
{
    fn decode(&self, row: &<D::Database as Database>::Row) -> Result<MemoryItem> {
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
                version: D::version(row)?,
            })
        };
        read().map_err(self.error("read row"))?.into_item()
    }
}

#[async_trait]
impl<D: Dialect> MemoryStore for SqlStore<D>
where
    for<'r> String: Encode<'r, D::Database> + Decode<'r, D::Database> + Type<D::Database>,
    i64: for<'r> Encode<'r, D::Database> + Type<D::Database>,
    &'static str: ColumnIndex<<D::Database as Database>::Row>,
    <D::Database as Database>::Arguments: IntoArguments<D::Database>,
    for<'c> &'c mut <D::Database as Database>::Connection: Executor<'c, Database = D::Database>,
{
    fn backend(&self) -> Backend {
        D::BACKEND
    }

    async fn add(&self, item: &MemoryItem) -> Result<()> {
        item.validate()?;
        sql::upsert_query::<D>(StoredRow::from_item(item))
            .build()
            .execute(&self.pool)
            .await
            .map_err(self.error("add"))?;
        Ok(())
    }

    async fn add_many(&self, items: &[MemoryItem]) -> Result<()> {
        for item in items {
            item.validate()?;
        }
        let begun = match D::BEGIN_WRITE {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        };
        let mut transaction = begun.map_err(self.error("add_many"))?;
        for item in items {
            sql::upsert_query::<D>(StoredRow::from_item(item))
                .build()
                .execute(&mut *transaction)
                .await
                .map_err(self.error("add_many"))?;
        }
        transaction.commit().await.map_err(self.error("add_many"))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<MemoryItem>> {
        let mut builder = sql::get_query::<D>(id);
        let row = builder
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(self.error("get"))?;
        row.as_ref().map(|row| self.decode(row)).transpose()
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::search_query::<D>(query);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("search"))?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>> {
        let mut builder = sql::history_query::<D>(scope, limit);
        let rows = builder
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("history"))?;
        rows.iter().rev().map(|row| self.decode(row)).collect()
    }

    async fn clear(&self, scope: &MemoryScope) -> Result<u64> {
        let mut builder = sql::clear_query::<D>(scope);
        let result = builder
            .build()
            .execute(&self.pool)
            .await
            .map_err(self.error("clear"))?;
        Ok(D::rows_affected(&result))
    }

    async fn close(&self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}
