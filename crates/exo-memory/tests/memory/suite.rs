//! One behaviour suite, run against every backend: the short-term store,
//! SQLite in a temporary file, and a real PostgreSQL.

use std::sync::Arc;

use exo_memory::{
    Error, MemoryItem, MemoryMetadata, MemoryScope, MemoryStatus, MemoryStore, SearchQuery,
    messages_from_items,
};
use exo_proto::{Message, ToolCall};

use crate::common::ids;

/// One item of the shared corpus.
struct Seed {
    id: &'static str,
    message: Message,
    user: &'static str,
    session: &'static str,
    task: &'static str,
    agent: &'static str,
    status: MemoryStatus,
}

fn tool_call() -> ToolCall {
    ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    }
}

/// The corpus: id, user, session, task, agent, status and message, in the
/// order the items are made.
#[rustfmt::skip]
fn seeds() -> Vec<Seed> {
    use MemoryStatus::{Accepted, Discard, Draft};
    let tool_result = Message::Tool {
        tool_call_id: "call_1".into(),
        tool_name: "get_weather".into(),
        content: "sunny".into(),
        error: None,
    };
    let table = vec![
        ("sys", "u1", "s1", "t1", "a1", Accepted, Message::system("You are terse.")),
        ("h1",  "u1", "s1", "t1", "a1", Accepted, Message::user("What is the weather in Paris?")),
        ("a1",  "u1", "s1", "t1", "a1", Accepted, Message::assistant("Let me check.", vec![tool_call()])),
        ("t1",  "u1", "s1", "t1", "a1", Accepted, tool_result),
        ("a2",  "u1", "s1", "t1", "a1", Accepted, Message::assistant("It is SUNNY in Paris.", vec![])),
        ("h2",  "u1", "s1", "t2", "a1", Draft,    Message::user("And in Rome?")),
        ("x1",  "u1", "s2", "t3", "a2", Accepted, Message::user("100% sure_thing")),
        ("x2",  "u2", "s3", "t4", "a1", Discard,  Message::user("other user")),
    ];
    table
        .into_iter()
        .map(|(id, user, session, task, agent, status, message)| Seed {
            id, message, user, session, task, agent, status,
        })
        .collect()
}

fn metadata(user: &str, session: &str, task: &str, agent: &str) -> MemoryMetadata {
    MemoryScope::new()
        .with_user_id(user)
        .with_session_id(session)
        .with_task_id(task)
        .with_agent_id(agent)
        .to_metadata()
}

/// The corpus as items, made in order (so `created_at` increases).
fn corpus() -> Vec<MemoryItem> {
    seeds()
        .into_iter()
        .map(|seed| {
            MemoryItem::from_message(
                &seed.message,
                metadata(seed.user, seed.session, seed.task, seed.agent),
            )
            .with_id(seed.id)
            .with_status(seed.status)
        })
        .collect()
}

async fn add_corpus(store: &dyn MemoryStore) -> Vec<MemoryItem> {
    let items = corpus();
    for item in &items {
        store.add(item).await.expect("add");
    }
    items
}

fn scope() -> MemoryScope {
    MemoryScope::new()
}

pub(crate) async fn search_filters(store: &dyn MemoryStore) {
    add_corpus(store).await;
    let all = |limit| SearchQuery::default().with_limit(limit);
    let cases: Vec<(&str, SearchQuery, Vec<&str>)> = vec![
        (
            "everything, newest first",
            all(100),
            vec!["x2", "x1", "h2", "a2", "t1", "a1", "h1", "sys"],
        ),
        ("limit", all(3), vec!["x2", "x1", "h2"]),
        ("limit zero", all(0), vec![]),
        (
            "by user",
            SearchQuery::in_scope(scope().with_user_id("u2"), 10),
            vec!["x2"],
        ),
        (
            "by session",
            SearchQuery::in_scope(scope().with_session_id("s2"), 10),
            vec!["x1"],
        ),
        (
            "by task",
            SearchQuery::in_scope(scope().with_task_id("t2"), 10),
            vec!["h2"],
        ),
        (
            "by agent",
            SearchQuery::in_scope(scope().with_agent_id("a2"), 10),
            vec!["x1"],
        ),
        (
            "by user and session",
            SearchQuery::in_scope(scope().with_user_id("u1").with_session_id("s1"), 3),
            vec!["h2", "a2", "t1"],
        ),
        (
            "empty scope field is no filter",
            SearchQuery::in_scope(scope().with_user_id(""), 2),
            vec!["x2", "x1"],
        ),
        (
            "unknown user",
            SearchQuery::in_scope(scope().with_user_id("nobody"), 10),
            vec![],
        ),
        (
            "substring, any case",
            all(10).with_text("paris"),
            vec!["a2", "h1"],
        ),
        (
            "upper-case query",
            all(10).with_text("SUNNY"),
            vec!["a2", "t1"],
        ),
        ("percent is literal", all(10).with_text("100%"), vec!["x1"]),
        ("a lone percent", all(10).with_text("%"), vec!["x1"]),
        (
            "underscore is literal",
            all(10).with_text("e_t"),
            vec!["x1"],
        ),
        (
            "underscore is no wildcard",
            all(10).with_text("s_n"),
            vec![],
        ),
        (
            "memory type",
            all(10).with_memory_type("ai"),
            vec!["a2", "a1"],
        ),
        ("tool type", all(10).with_memory_type("tool"), vec!["t1"]),
        (
            "draft",
            all(10).with_status(MemoryStatus::Draft),
            vec!["h2"],
        ),
        (
            "discard",
            all(10).with_status(MemoryStatus::Discard),
            vec!["x2"],
        ),
        (
            "type, status and user together",
            SearchQuery::in_scope(scope().with_user_id("u1"), 10)
                .with_memory_type("human")
                .with_status(MemoryStatus::Accepted),
            vec!["x1", "h1"],
        ),
        (
            "text and session",
            SearchQuery::in_scope(scope().with_session_id("s1"), 10).with_text("in"),
            vec!["h2", "a2", "h1"],
        ),
    ];
    for (name, query, expected) in cases {
        let found = store.search(&query).await.expect("search");
        assert_eq!(ids(&found), expected, "{} {name}", store.backend());
    }
}

pub(crate) async fn get_round_trips_every_kind(store: &dyn MemoryStore) {
    let items = add_corpus(store).await;
    for item in &items {
        let stored = store.get(&item.id).await.expect("get");
        assert_eq!(
            stored.as_ref(),
            Some(item),
            "{} {}",
            store.backend(),
            item.id
        );
    }
    assert_eq!(store.get("missing").await.expect("get"), None);
    let history = store
        .history(&scope().with_session_id("s1"), 100)
        .await
        .expect("history");
    let expected: Vec<Message> = seeds()
        .into_iter()
        .filter(|seed| seed.session == "s1")
        .map(|seed| seed.message)
        .collect();
    assert_eq!(
        messages_from_items(&history),
        expected,
        "{}",
        store.backend()
    );
}

pub(crate) async fn history_is_oldest_first(store: &dyn MemoryStore) {
    add_corpus(store).await;
    let cases: Vec<(&str, MemoryScope, usize, Vec<&str>)> = vec![
        (
            "a session",
            scope().with_session_id("s1"),
            100,
            vec!["sys", "h1", "a1", "t1", "a2", "h2"],
        ),
        (
            "the newest three",
            scope().with_session_id("s1"),
            3,
            vec!["t1", "a2", "h2"],
        ),
        (
            "one task",
            scope().with_session_id("s1").with_task_id("t1"),
            2,
            vec!["t1", "a2"],
        ),
        (
            "a user",
            scope().with_user_id("u1"),
            100,
            vec!["sys", "h1", "a1", "t1", "a2", "h2", "x1"],
        ),
        (
            "discarded items are left out",
            scope().with_user_id("u2"),
            100,
            vec![],
        ),
        ("limit zero", scope().with_session_id("s1"), 0, vec![]),
    ];
    for (name, scope, limit, expected) in cases {
        let history = store.history(&scope, limit).await.expect("history");
        assert_eq!(ids(&history), expected, "{} {name}", store.backend());
    }
}

pub(crate) async fn quick_succession_keeps_its_order(store: &dyn MemoryStore) {
    let in_session = metadata("u", "fast", "t", "a");
    let one_by_one: Vec<MemoryItem> = (0..300)
        .map(|turn| MemoryItem::human(format!("turn {turn}"), in_session.clone()))
        .collect();
    for item in &one_by_one {
        store.add(item).await.expect("add");
    }
    let batch: Vec<MemoryItem> = (0..100)
        .map(|turn| MemoryItem::ai(format!("reply {turn}"), vec![], in_session.clone()))
        .collect();
    store.add_many(&batch).await.expect("add_many");
    let made: Vec<String> = one_by_one
        .iter()
        .chain(&batch)
        .map(|item| item.id.clone())
        .collect();
    let session = scope().with_session_id("fast");
    let history = store.history(&session, 1_000).await.expect("history");
    assert_eq!(ids(&history), made, "{} history", store.backend());
    let newest = store
        .search(&SearchQuery::in_scope(session.clone(), 1_000))
        .await
        .expect("search");
    let mut reversed = made.clone();
    reversed.reverse();
    assert_eq!(ids(&newest), reversed, "{} search", store.backend());
    let last_ten = store.history(&session, 10).await.expect("history");
    assert_eq!(
        ids(&last_ten),
        made[made.len() - 10..],
        "{}",
        store.backend()
    );
}

pub(crate) async fn equal_timestamps_have_a_stable_order(store: &dyn MemoryStore) {
    // Timestamps set by hand, all equal: every backend falls back on a
    // tiebreak, and these ids ascend in insertion order, so insertion order
    // (SQLite, short-term) and id order (PostgreSQL) agree.
    let in_session = metadata("u", "ties", "t", "a");
    let mut made = Vec::new();
    for index in 0..20 {
        let mut item = MemoryItem::human(format!("tie {index}"), in_session.clone())
            .with_id(format!("tie-{index:02}"));
        item.created_at = "2026-01-01T00:00:00.000000+00:00".into();
        store.add(&item).await.expect("add");
        made.push(item.id);
    }
    let session = scope().with_session_id("ties");
    let history = store.history(&session, 100).await.expect("history");
    assert_eq!(ids(&history), made, "{}", store.backend());
    let newest = store
        .search(&SearchQuery::in_scope(session, 100))
        .await
        .expect("search");
    made.reverse();
    assert_eq!(ids(&newest), made, "{}", store.backend());
}

/// Where the backend records insertion order (SQLite's `rowid`, the
/// short-term store's counter), equal timestamps keep that order whatever
/// the ids, and an upsert keeps an item's place.
pub(crate) async fn equal_timestamps_keep_insertion_order(store: &dyn MemoryStore) {
    let in_session = metadata("u", "ties", "t", "a");
    let mut made = Vec::new();
    for index in 0..10 {
        let mut item = MemoryItem::human(format!("tie {index}"), in_session.clone())
            .with_id(format!("tie-{:02}", 9 - index));
        item.created_at = "2026-01-01T00:00:00.000000+00:00".into();
        store.add(&item).await.expect("add");
        made.push(item);
    }
    let mut changed = made[3].clone();
    changed.content = "changed".into();
    store.add(&changed).await.expect("upsert");
    let history = store
        .history(&scope().with_session_id("ties"), 100)
        .await
        .expect("history");
    let made_ids: Vec<String> = made.iter().map(|item| item.id.clone()).collect();
    assert_eq!(ids(&history), made_ids, "{}", store.backend());
}

pub(crate) async fn upsert_bumps_the_version_and_undeletes(store: &dyn MemoryStore) {
    let first = MemoryItem::human("first draft", metadata("u", "s", "t1", "a"))
        .with_id("item")
        .with_status(MemoryStatus::Draft);
    store.add(&first).await.expect("add");
    let mut changed = MemoryItem::ai(
        "second take",
        vec![tool_call()],
        metadata("u", "s", "t2", "a"),
    )
    .with_id("item");
    changed.updated_at = "2099-01-01T00:00:00.000000+00:00".into();
    store.add(&changed).await.expect("upsert");
    let stored = store.get("item").await.expect("get").expect("present");
    assert_eq!(stored.version, 2, "{}", store.backend());
    assert_eq!(stored.content.to_text(), "second take");
    assert_eq!(stored.status, MemoryStatus::Accepted);
    assert_eq!(stored.metadata.task_id.as_deref(), Some("t2"));
    assert_eq!(stored.updated_at, changed.updated_at);
    assert_eq!(
        stored.created_at,
        first.created_at,
        "{} keeps created_at",
        store.backend()
    );
    assert_eq!(
        stored.memory_type(),
        "human",
        "{} keeps memory_type",
        store.backend()
    );
    let all = store.search(&SearchQuery::default()).await.expect("search");
    assert_eq!(ids(&all), ["item"], "{} no duplicate", store.backend());

    assert_eq!(
        store
            .clear(&scope().with_session_id("s"))
            .await
            .expect("clear"),
        1
    );
    assert_eq!(store.get("item").await.expect("get"), None);
    store.add(&changed).await.expect("re-add");
    let back = store.get("item").await.expect("get").expect("undeleted");
    assert_eq!(back.version, 3, "{}", store.backend());
}

pub(crate) async fn clear_soft_deletes_a_scope(store: &dyn MemoryStore) {
    add_corpus(store).await;
    let cleared = store
        .clear(&scope().with_session_id("s1"))
        .await
        .expect("clear");
    assert_eq!(cleared, 6, "{}", store.backend());
    let left = store
        .search(&SearchQuery::default().with_limit(100))
        .await
        .expect("search");
    assert_eq!(ids(&left), ["x2", "x1"], "{}", store.backend());
    assert_eq!(store.get("h1").await.expect("get"), None);
    assert!(
        store
            .history(&scope().with_session_id("s1"), 10)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(
        store
            .clear(&scope().with_session_id("s1"))
            .await
            .expect("clear"),
        0
    );
    assert_eq!(
        store
            .clear(&scope().with_user_id("u2"))
            .await
            .expect("clear"),
        1
    );
    assert_eq!(store.clear(&scope()).await.expect("clear all"), 1);
    assert!(
        store
            .search(&SearchQuery::default())
            .await
            .expect("search")
            .is_empty()
    );
}

pub(crate) async fn concurrent_writers_lose_nothing(store: Arc<dyn MemoryStore>) {
    const WRITERS: usize = 8;
    const ITEMS: usize = 50;
    let hot = MemoryItem::human("shared", metadata("u", "busy", "hot", "a")).with_id("hot");
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            let in_task = metadata("u", "busy", &format!("w{writer}"), "a");
            let mut made = Vec::new();
            for turn in 0..ITEMS {
                let item = MemoryItem::human(format!("w{writer} turn {turn}"), in_task.clone());
                store.add(&item).await.expect("concurrent add");
                store.add(&hot).await.expect("concurrent upsert");
                made.push(item.id);
            }
            made
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.expect("writer task"));
    }
    let everything = store
        .search(&SearchQuery::in_scope(
            scope().with_session_id("busy"),
            10_000,
        ))
        .await
        .expect("search");
    assert_eq!(everything.len(), WRITERS * ITEMS + 1, "{}", store.backend());
    for (writer, made) in written.iter().enumerate() {
        let history = store
            .history(&scope().with_task_id(format!("w{writer}")), 1_000)
            .await
            .expect("history");
        assert_eq!(&ids(&history), made, "{} writer {writer}", store.backend());
    }
    let hot = store.get("hot").await.expect("get").expect("present");
    assert_eq!(
        hot.version,
        (WRITERS * ITEMS) as i64,
        "{} every upsert counted",
        store.backend()
    );
}

pub(crate) async fn refuses_an_item_without_id(store: &dyn MemoryStore) {
    let item = MemoryItem::human("x", MemoryMetadata::default()).with_id("");
    let error = store.add(&item).await.expect_err("an empty id");
    assert!(matches!(error, Error::InvalidItem(_)), "{error}");
    let error = store.add_many(&[item]).await.expect_err("an empty id");
    assert!(matches!(error, Error::InvalidItem(_)), "{error}");
}

/// Runs every check of the suite against a backend, one test per check,
/// each on a fresh store.
macro_rules! suite {
    ($backend:ident, $fixture:path) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn search_filters() {
                super::search_filters(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn get_round_trips_every_kind() {
                super::get_round_trips_every_kind(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn history_is_oldest_first() {
                super::history_is_oldest_first(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn quick_succession_keeps_its_order() {
                super::quick_succession_keeps_its_order(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn equal_timestamps_have_a_stable_order() {
                super::equal_timestamps_have_a_stable_order(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn upsert_bumps_the_version_and_undeletes() {
                super::upsert_bumps_the_version_and_undeletes(&*$fixture().await.store).await;
            }

            #[tokio::test]
            async fn clear_soft_deletes_a_scope() {
                super::clear_soft_deletes_a_scope(&*$fixture().await.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writers_lose_nothing() {
                let fixture = $fixture().await;
                super::concurrent_writers_lose_nothing(Arc::clone(&fixture.store)).await;
            }

            #[tokio::test]
            async fn refuses_an_item_without_id() {
                super::refuses_an_item_without_id(&*$fixture().await.store).await;
            }
        }
    };
}

suite!(short_term, crate::common::short_term);
#[cfg(feature = "sqlite")]
suite!(sqlite, crate::common::sqlite);

#[tokio::test]
async fn short_term_equal_timestamps_keep_insertion_order() {
    equal_timestamps_keep_insertion_order(&*crate::common::short_term().await.store).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_equal_timestamps_keep_insertion_order() {
    equal_timestamps_keep_insertion_order(&*crate::common::sqlite().await.store).await;
}
#[cfg(feature = "postgres")]
suite!(postgres, crate::common::postgres);
