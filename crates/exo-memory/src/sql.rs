//! What the SQLite and PostgreSQL stores share: the statements that differ
//! only in dialect, built with bound parameters.
//!
//! Every value from a caller is bound. Only fixed text is pushed into the
//! SQL: column names, the scope keys (a fixed list), and the dialect's
//! operators.

use std::time::Duration;

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::{
    dsn::StoreTarget,
    error::{BoxError, Error},
    item::{CONVERSATION_TYPES, MemoryScope},
    store::SearchQuery,
};

/// How one SQL backend spells the parts that differ.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The backend name, for errors.
    pub(crate) backend: &'static str,
    /// The columns of a memory item, read as text where the backend stores
    /// JSON natively.
    pub(crate) columns: &'static str,
    /// The case-insensitive `LIKE` operator.
    pub(crate) like: &'static str,
    /// The `ORDER BY` terms for newest first: `created_at`, then a tiebreak
    /// that orders items stored with the same timestamp.
    pub(crate) newest_first: &'static str,
    /// Reads one scope field of the metadata as text.
    pub(crate) scope_field: fn(&'static str) -> &'static str,
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

fn push_scope<DB>(builder: &mut QueryBuilder<DB>, dialect: &Dialect, scope: &MemoryScope)
where
    DB: Database,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    for (key, value) in scope.filters() {
        builder.push(format!(" AND {} = ", (dialect.scope_field)(key)));
        builder.push_bind(value.to_owned());
    }
}

/// `SELECT` for [`crate::MemoryStore::search`]: newest first.
pub(crate) fn search_query<DB>(dialect: &Dialect, query: &SearchQuery) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut builder = QueryBuilder::new(format!(
        "SELECT {} FROM memory_items WHERE deleted = 0",
        dialect.columns
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
        builder.push(format!(" AND content {} ", dialect.like));
        builder.push_bind(substring_pattern(&query.query));
        builder.push(" ESCAPE '\\'");
    }
    push_scope(&mut builder, dialect, &query.scope);
    builder.push(format!(" ORDER BY {} LIMIT ", dialect.newest_first));
    builder.push_bind(limit_value(query.limit));
    builder
}

/// `SELECT` for [`crate::MemoryStore::history`]: the newest `limit`
/// conversation items, newest first (the caller reverses them).
pub(crate) fn history_query<DB>(
    dialect: &Dialect,
    scope: &MemoryScope,
    limit: usize,
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    let kinds: Vec<String> = CONVERSATION_TYPES
        .iter()
        .map(|kind| format!("'{kind}'"))
        .collect();
    let mut builder = QueryBuilder::new(format!(
        "SELECT {} FROM memory_items WHERE deleted = 0 AND status <> 'discard' \
         AND memory_type IN ({})",
        dialect.columns,
        kinds.join(", ")
    ));
    push_scope(&mut builder, dialect, scope);
    builder.push(format!(" ORDER BY {} LIMIT ", dialect.newest_first));
    builder.push_bind(limit_value(limit));
    builder
}

/// `UPDATE` for [`crate::MemoryStore::clear`]: a soft delete.
pub(crate) fn clear_query<DB>(dialect: &Dialect, scope: &MemoryScope) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut builder = QueryBuilder::new("UPDATE memory_items SET deleted = 1 WHERE deleted = 0");
    push_scope(&mut builder, dialect, scope);
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

#[cfg(test)]
mod tests {
    use super::substring_pattern;

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
}
