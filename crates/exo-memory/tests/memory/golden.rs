//! The table is the reference's, byte for byte where it matters: rows we
//! write have its column layout, and rows it writes read back correctly.
//!
//! Golden files live in `test_data/`; refresh them with `UPDATE_EXPECT=1`.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

use std::path::PathBuf;

use exo_memory::{
    MemoryItem, MemoryKind, MemoryScope, MemoryStatus, MemoryStore, SearchQuery,
    messages_from_items,
};
use exo_proto::ToolCall;
use serde_json::{Value, json};

use crate::common::ids;

/// The path of a file under `test_data/`.
fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(name)
}

/// Compares `actual` with the golden file `name`, or rewrites the file when
/// `UPDATE_EXPECT=1`.
fn check_golden(name: &str, actual: &str) {
    exo_testkit::expect_file(test_data(name), actual);
}

/// Like [`check_golden`] for JSON, written pretty-printed with a final
/// newline (`serde_json` keeps object keys sorted, so the text is stable).
fn check_golden_json(name: &str, actual: &Value) {
    let mut text = serde_json::to_string_pretty(actual).expect("json");
    text.push('\n');
    check_golden(name, &text);
}

/// The ids in `reference_rows.sql`, in file order.
const REFERENCE_IDS: [&str; 10] = [
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "1a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "2a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "3a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "4a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "5a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "6a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "7a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "8a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "9a1b2c3d4e5f60718293a4b5c6d7e8f9",
];

/// True for `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
fn is_reference_timestamp(text: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddddd+00:00";
    text.len() == shape.len()
        && text
            .chars()
            .zip(shape.chars())
            .all(|(actual, expected)| match expected {
                'd' => actual.is_ascii_digit(),
                literal => actual == literal,
            })
}

/// The two items whose rows are compared with the golden files: an ai
/// item with tool calls and a failed tool item, with fixed ids and times.
fn items_we_write() -> Vec<MemoryItem> {
    let metadata = MemoryScope::new()
        .with_user_id("u-1")
        .with_session_id("s-1")
        .with_task_id("t-1")
        .to_metadata();
    let mut ai = MemoryItem::ai(
        "Let me check.",
        vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }],
        metadata.clone(),
    )
    .with_id("00000000000000000000000000000001");
    ai.created_at = "2026-11-28T12:00:00.000001+00:00".into();
    ai.updated_at = ai.created_at.clone();
    let mut tool = MemoryItem::tool(
        "call_1",
        "get_weather",
        "",
        Some("city not found".into()),
        metadata,
    )
    .with_id("00000000000000000000000000000002")
    .with_status(MemoryStatus::Draft);
    tool.created_at = "2026-11-28T12:00:00.000002+00:00".into();
    tool.updated_at = tool.created_at.clone();
    vec![ai, tool]
}

/// Writes the golden items, then upserts and clears, recording the rows
/// after each step with `dump`.
async fn write_and_dump<F, Fut>(store: &dyn MemoryStore, dump: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let items = items_we_write();
    let mut out = String::new();
    store.add_many(&items).await.expect("add");
    out.push_str("# after add\n");
    out.push_str(&dump().await);
    let mut upserted = items[0].clone();
    upserted.updated_at = "2026-11-28T12:00:01.000000+00:00".into();
    store.add(&upserted).await.expect("upsert");
    out.push_str("# after an upsert of the ai item\n");
    out.push_str(&dump().await);
    store
        .clear(&MemoryScope::new().with_session_id("s-1"))
        .await
        .expect("clear");
    out.push_str("# after clear\n");
    out.push_str(&dump().await);

    let fresh = MemoryItem::human("now", items[0].metadata.clone());
    store.add(&fresh).await.expect("add");
    let stored = store.get(&fresh.id).await.expect("get").expect("present");
    assert!(
        is_reference_timestamp(&stored.created_at),
        "{}",
        stored.created_at
    );
    assert!(
        is_reference_timestamp(&stored.updated_at),
        "{}",
        stored.updated_at
    );
    out
}

/// Everything our store makes of the reference's rows, as JSON.
async fn read_reference_rows(store: &dyn MemoryStore) -> Value {
    let mut items = Vec::new();
    for id in REFERENCE_IDS {
        let item = store.get(id).await.expect("get");
        items.push(item.as_ref().map_or(Value::Null, describe));
    }
    let scope = MemoryScope::new().with_session_id("s-ref");
    let history = store.history(&scope, 100).await.expect("history");
    let newest = store
        .search(&SearchQuery::in_scope(scope.clone(), 100))
        .await
        .expect("search");
    let user = store
        .search(
            &SearchQuery::in_scope(MemoryScope::new().with_user_id("u-ref"), 100).with_text("OSLO"),
        )
        .await
        .expect("search");
    json!({
        "get": items,
        "history_ids": ids(&history),
        "history_messages": messages_from_items(&history),
        "search_newest_first": ids(&newest),
        "search_user_text_oslo": ids(&user),
    })
}

fn describe(item: &MemoryItem) -> Value {
    let other_extra = match &item.kind {
        MemoryKind::Other { extra, .. } => Value::Object(extra.clone()),
        _ => Value::Null,
    };
    json!({
        "id": item.id,
        "memory_type": item.memory_type(),
        "status": item.status.as_str(),
        "content": item.content,
        "metadata": item.metadata,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
        "version": item.version,
        "message": item.to_message(),
        "other_extra": other_extra,
    })
}

fn read_test_data(name: &str) -> String {
    std::fs::read_to_string(test_data(name)).expect("test data")
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use exo_memory::{SqlConfig, SqliteLocation, SqliteStore};
    use sqlx::{AssertSqlSafe, Row, SqlitePool};

    use super::*;

    /// Columns (`PRAGMA table_info`) and index definitions.
    async fn schema(pool: &SqlitePool) -> String {
        let mut out = String::from("# columns: cid|name|type|notnull|dflt_value|pk\n");
        let columns = sqlx::query(
            "SELECT CAST(cid AS TEXT), name, type, CAST(\"notnull\" AS TEXT), \
             coalesce(dflt_value, 'NULL'), CAST(pk AS TEXT) FROM pragma_table_info('memory_items')",
        )
        .fetch_all(pool)
        .await
        .expect("table_info");
        for row in columns {
            let fields: Vec<String> = (0..6).map(|index| row.get::<String, _>(index)).collect();
            out.push_str(&fields.join("|"));
            out.push('\n');
        }
        out.push_str("# indexes\n");
        let indexes = sqlx::query(
            "SELECT name, coalesce(sql, '(automatic)') FROM sqlite_master \
             WHERE type = 'index' AND tbl_name = 'memory_items' ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .expect("indexes");
        for row in indexes {
            out.push_str(&format!(
                "{}: {}\n",
                row.get::<String, _>(0),
                row.get::<String, _>(1)
            ));
        }
        out
    }

    /// Every row, each column with its SQLite storage class and raw value.
    async fn rows(pool: &SqlitePool) -> String {
        let columns = [
            "id",
            "content",
            "memory_type",
            "status",
            "metadata",
            "extra_json",
            "created_at",
            "updated_at",
            "deleted",
            "version",
        ];
        let select: Vec<String> = columns
            .iter()
            .map(|column| format!("typeof({column}) || ' ' || CAST({column} AS TEXT)"))
            .collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM memory_items ORDER BY rowid",
            select.join(", ")
        )))
        .fetch_all(pool)
        .await
        .expect("rows");
        let mut out = String::new();
        for row in rows {
            for (index, column) in columns.iter().enumerate() {
                out.push_str(&format!("{column}: {}\n", row.get::<String, _>(index)));
            }
            out.push('\n');
        }
        out
    }

    #[tokio::test]
    async fn rows_we_write_have_the_reference_layout() {
        let directory = tempfile::tempdir().unwrap();
        let location = SqliteLocation::File(directory.path().join("ours.db"));
        let store = SqliteStore::open(&location, &SqlConfig::default())
            .await
            .unwrap();
        check_golden("sqlite.schema.txt", &schema(store.pool()).await);
        let dumped = write_and_dump(&store, || rows(store.pool())).await;
        check_golden("sqlite.rows.txt", &dumped);
    }

    #[tokio::test]
    async fn reads_rows_the_reference_wrote() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("reference.db");
        // The reference creates the table and writes its rows first.
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let reference = SqlitePool::connect_with(options).await.unwrap();
        for name in ["reference_schema.sqlite.sql", "reference_rows.sql"] {
            sqlx::raw_sql(AssertSqlSafe(read_test_data(name)))
                .execute(&reference)
                .await
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        reference.close().await;
        // Opening it again keeps the table as it is.
        let store = SqliteStore::open(&SqliteLocation::File(path), &SqlConfig::default())
            .await
            .unwrap();
        check_golden("sqlite.schema.txt", &schema(store.pool()).await);
        check_golden_json(
            "reference_rows.read.json",
            &read_reference_rows(&store).await,
        );
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use exo_memory::{PostgresStore, SqlConfig};
    use exo_testkit::TestPostgres;

    use super::*;
    use crate::common::test_postgres;

    fn psql(database: &TestPostgres, sql: &str) -> String {
        let mut out = database
            .execute(sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        out.push('\n');
        out
    }

    /// Columns (`information_schema`) and index definitions.
    fn schema(database: &TestPostgres) -> String {
        let mut out = String::from("# columns: column_name|data_type|is_nullable|column_default\n");
        out.push_str(&psql(
            database,
            "SELECT column_name, data_type, is_nullable, column_default \
             FROM information_schema.columns WHERE table_name = 'memory_items' \
             ORDER BY ordinal_position",
        ));
        out.push_str("# indexes\n");
        out.push_str(&psql(
            database,
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'memory_items' \
             ORDER BY indexname",
        ));
        out
    }

    /// Every row as psql prints it, with the column types.
    fn rows(database: &TestPostgres) -> String {
        let mut out = String::from(
            "# id|content|memory_type|status|metadata|extra_json|created_at|updated_at|deleted|\
             version|pg_typeof(metadata)|pg_typeof(deleted)|pg_typeof(version)\n",
        );
        out.push_str(&psql(
            database,
            "SELECT id, content, memory_type, status, metadata, extra_json, created_at, \
             updated_at, deleted, version, pg_typeof(metadata), pg_typeof(deleted), \
             pg_typeof(version) FROM memory_items ORDER BY id",
        ));
        out
    }

    #[tokio::test]
    async fn rows_we_write_have_the_reference_layout() {
        let database = test_postgres().await;
        let store = PostgresStore::connect(database.url(), &SqlConfig::default())
            .await
            .unwrap();
        check_golden("postgres.schema.txt", &schema(&database));
        let dumped = write_and_dump(&store, || async { rows(&database) }).await;
        check_golden("postgres.rows.txt", &dumped);
    }

    #[tokio::test]
    async fn reads_rows_the_reference_wrote() {
        let database = test_postgres().await;
        // The reference creates the table and writes its rows first.
        psql(&database, &read_test_data("reference_schema.postgres.sql"));
        psql(&database, &read_test_data("reference_rows.sql"));
        // Opening it again keeps the table as it is.
        let store = PostgresStore::connect(database.url(), &SqlConfig::default())
            .await
            .unwrap();
        check_golden("postgres.schema.txt", &schema(&database));
        check_golden_json(
            "reference_rows.read.json",
            &read_reference_rows(&store).await,
        );
    }
}
