//! What the SQLite and PostgreSQL stores share: the [`Dialect`] trait that
//! names what differs between them, and the statements that differ only in
//! dialect, built with bound parameters.
//!
//! Every value from a caller is bound. Only fixed text is pushed into the
//! SQL: column names, the scope keys (a fixed list), and the dialect's
//! operators.

use std::{fmt, future::Future, time::Duration};

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::{
    dsn::StoreTarget,
    error::{BoxError, Error, Result},
    item::{CONVERSATION_TYPES, MemoryScope, StoredRow},
    store::{Backend, SearchQuery},
};

/// What one SQL backend does its own way: its sqlx driver, how it spells
/// the parts of a statement that differ, and how it reads the few values
/// it stores differently. Implemented by `SqliteDialect` and
/// `PostgresDialect`, and by nothing outside this crate.
pub trait Dialect: fmt::Debug + Clone + Send + Sync + 'static {
    /// The sqlx driver.
    type Database: Database;

    /// The backend, for [`crate::MemoryStore::backend`] and errors.
    const BACKEND: Backend;

    /// The columns of a memory item, read as text where the backend stores
    /// JSON natively.
    const COLUMNS: &'static str;

    /// The case-insensitive `LIKE` operator.
    const LIKE: &'static str;

    /// The `ORDER BY` terms for newest first: `created_at`, then a tiebreak
    /// that orders items stored with the same timestamp.
    const NEWEST_FIRST: &'static str;

    /// What follows a bound JSON text to store it in a JSON column: a
    /// cast, or nothing where JSON is stored as text.
    const JSON_CAST: &'static str;

    /// The statement that opens the transaction of
    /// [`crate::MemoryStore::add_many`]; `None` for the driver's own
    /// `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;

    /// Reads one scope field of the metadata as text.
    fn scope_field(key: &'static str) -> &'static str;

    /// Reads the `version` column of `row`.
    fn version(row: &<Self::Database as Database>::Row) -> std::result::Result<i64, sqlx::Error>;

    /// How many rows a statement changed.
    fn rows_affected(result: &<Self::Database as Database>::QueryResult) -> u64;
}

/// `text` as a `LIKE` pattern that matches it as a plain substring: `\`,
/// `%` and `_` are escaped with `\`.
pub(crate) fn substring_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for character in text.chars() {
        if matches!(character, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

fn limit_value(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn push_scope<D: Dialect>(builder: &mut QueryBuilder<D::Database>, scope: &MemoryScope)
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    for (key, value) in scope.filters() {
        builder.push(format!(" AND {} = ", D::scope_field(key)));
        builder.push_bind(value.to_owned());
    }
}

/// `INSERT` for [`crate::MemoryStore::add`]: inserts `row`, or updates the
/// item in place. An update keeps the item's `memory_type`, `created_at`
/// and place among items with the same `created_at` (SQLite's `rowid`),
/// bumps its `version` and brings it back if it was soft-deleted.
pub(crate) fn upsert_query<D: Dialect>(row: StoredRow) -> QueryBuilder<D::Database>
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    let mut builder = QueryBuilder::new(
        "INSERT INTO memory_items (id, content, memory_type, status, metadata, extra_json, \
         created_at, updated_at, deleted, version) VALUES (",
    );
    let mut values = builder.separated(", ");
    values.push_bind(row.id);
    values.push_bind(row.content);
    values.push_bind(row.memory_type);
    values.push_bind(row.status);
    values.push_bind(row.metadata);
    values.push_unseparated(D::JSON_CAST);
    values.push_bind(row.extra_json);
    values.push_unseparated(D::JSON_CAST);
    values.push_bind(row.created_at);
    values.push_bind(row.updated_at);
    builder.push(
        ", 0, 1) ON CONFLICT (id) DO UPDATE SET content = excluded.content, \
         status = excluded.status, metadata = excluded.metadata, \
         extra_json = excluded.extra_json, updated_at = excluded.updated_at, \
         version = memory_items.version + 1, deleted = 0",
    );
    builder
}

/// `SELECT` for [`crate::MemoryStore::get`]: one live item by id.
pub(crate) fn get_query<D: Dialect>(id: &str) -> QueryBuilder<D::Database>
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    let mut builder = QueryBuilder::new(format!(
        "SELECT {} FROM memory_items WHERE id = ",
        D::COLUMNS
    ));
    builder.push_bind(id.to_owned());
    builder.push(" AND deleted = 0");
    builder
}

/// `SELECT` for [`crate::MemoryStore::search`]: newest first.
pub(crate) fn search_query<D: Dialect>(query: &SearchQuery) -> QueryBuilder<D::Database>
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
    i64: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    let mut builder = QueryBuilder::new(format!(
        "SELECT {} FROM memory_items WHERE deleted = 0",
        D::COLUMNS
    ));
    if let Some(memory_type) = &query.memory_type {
        builder.push(" AND memory_type = ");
        builder.push_bind(memory_type.clone());
    }
    if let Some(status) = query.status {
        builder.push(" AND status = ");
        builder.push_bind(status.as_str().to_owned());
    }
    if !query.query.is_empty() {
        builder.push(format!(" AND content {} ", D::LIKE));
        builder.push_bind(substring_pattern(&query.query));
        builder.push(" ESCAPE '\\'");
    }
    push_scope::<D>(&mut builder, &query.scope);
    builder.push(format!(" ORDER BY {} LIMIT ", D::NEWEST_FIRST));
    builder.push_bind(limit_value(query.limit));
    builder
}

/// `SELECT` for [`crate::MemoryStore::history`]: the newest `limit`
/// conversation items, newest first (the caller reverses them).
pub(crate) fn history_query<D: Dialect>(
    scope: &MemoryScope,
    limit: usize,
) -> QueryBuilder<D::Database>
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
    i64: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    let kinds: Vec<String> = CONVERSATION_TYPES
        .iter()
        .map(|kind| format!("'{kind}'"))
        .collect();
    let mut builder = QueryBuilder::new(format!(
        "SELECT {} FROM memory_items WHERE deleted = 0 AND status <> 'discard' \
         AND memory_type IN ({})",
        D::COLUMNS,
        kinds.join(", ")
    ));
    push_scope::<D>(&mut builder, scope);
    builder.push(format!(" ORDER BY {} LIMIT ", D::NEWEST_FIRST));
    builder.push_bind(limit_value(limit));
    builder
}

/// `UPDATE` for [`crate::MemoryStore::clear`]: a soft delete.
pub(crate) fn clear_query<D: Dialect>(scope: &MemoryScope) -> QueryBuilder<D::Database>
where
    String: for<'t> Encode<'t, D::Database> + Type<D::Database>,
{
    let mut builder = QueryBuilder::new("UPDATE memory_items SET deleted = 1 WHERE deleted = 0");
    push_scope::<D>(&mut builder, scope);
    builder
}

/// Maps a driver error from `operation` to [`Error`], naming a closed pool
/// and a pool that timed out plainly.
pub(crate) fn query_error(
    backend: &'static str,
    operation: &'static str,
    timeout: Duration,
) -> impl Fn(sqlx::Error) -> Error {
    move |error| match error {
        sqlx::Error::PoolClosed => Error::Closed { backend },
        sqlx::Error::PoolTimedOut => Error::Database {
            backend,
            operation,
            source: format!(
                "no database connection within {timeout:?} (is the server up, or the pool \
                 exhausted?)"
            )
            .into(),
        },
        other => Error::Database {
            backend,
            operation,
            source: Box::new(other),
        },
    }
}

/// The error for a failed connection attempt.
pub(crate) fn connect_error(target: &StoreTarget, source: impl Into<BoxError>) -> Error {
    Error::Connect {
        backend: target.backend().as_str(),
        target: target.redacted(),
        source: source.into(),
    }
}

/// Waits up to `timeout` for `connecting`, which opens a connection or a
/// pool to `target`. A refusal fails with the driver's reason, a silence
/// with [`Error::ConnectTimeout`].
pub(crate) async fn connect_within<T>(
    target: &StoreTarget,
    timeout: Duration,
    connecting: impl Future<Output = std::result::Result<T, sqlx::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(error)) => Err(connect_error(target, error)),
        Err(_) => Err(Error::ConnectTimeout {
            backend: target.backend().as_str(),
            target: target.redacted(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, get_query, substring_pattern, upsert_query};
    use crate::item::{MemoryItem, MemoryMetadata, StoredRow};

    #[test]
    fn patterns_match_the_text_literally() {
        for (text, pattern) in [
            ("hello", "%hello%"),
            ("100%", "%100\\%%"),
            ("a_b", "%a\\_b%"),
            ("c:\\dir", "%c:\\\\dir%"),
        ] {
            assert_eq!(substring_pattern(text), pattern);
        }
    }

    /// The statements `D` builds for `get` and for an upsert.
    fn statements<D: Dialect>() -> [String; 2]
    where
        String: for<'t> sqlx::Encode<'t, D::Database> + sqlx::Type<D::Database>,
    {
        let item = MemoryItem::human("hello", MemoryMetadata::default());
        [
            get_query::<D>(&item.id).sql().as_str().to_owned(),
            upsert_query::<D>(StoredRow::from_item(&item))
                .sql()
                .as_str()
                .to_owned(),
        ]
    }

    const UPDATE: &str = "ON CONFLICT (id) DO UPDATE SET content = excluded.content, \
        status = excluded.status, metadata = excluded.metadata, \
        extra_json = excluded.extra_json, updated_at = excluded.updated_at, \
        version = memory_items.version + 1, deleted = 0";

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_binds_with_question_marks() {
        let [get, upsert] = statements::<crate::sqlite::SqliteDialect>();
        assert_eq!(
            get,
            "SELECT id, content, memory_type, status, metadata, extra_json, created_at, \
             updated_at, version FROM memory_items WHERE id = ? AND deleted = 0"
        );
        assert_eq!(
            upsert,
            format!(
                "INSERT INTO memory_items (id, content, memory_type, status, metadata, \
                 extra_json, created_at, updated_at, deleted, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 1) {UPDATE}"
            )
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_numbers_its_parameters_and_casts_json() {
        let [get, upsert] = statements::<crate::postgres::PostgresDialect>();
        assert_eq!(
            get,
            "SELECT id, content, memory_type, status, metadata::text AS metadata, \
             extra_json::text AS extra_json, created_at, updated_at, version \
             FROM memory_items WHERE id = $1 AND deleted = 0"
        );
        assert_eq!(
            upsert,
            format!(
                "INSERT INTO memory_items (id, content, memory_type, status, metadata, \
                 extra_json, created_at, updated_at, deleted, version) \
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, 0, 1) {UPDATE}"
            )
        );
    }
}
