//! Memory hydration end to end: two tasks of one session, the second on
//! another worker for the persistent backends, with a real OpenAI-compatible
//! HTTP provider (a local fake server that records what it was sent).

use std::{sync::Arc, time::Duration};

use exo_agent::ToolRegistry;
use exo_broker::{Broker, BrokerConfig};
use exo_proto::{Keys, TaskPayload, TaskResult, TaskStatus};
use exo_testkit::{FakeLlmServer, FakeResponse, TestPostgres, TestRedis};
use exo_worker::{ShutdownHandle, Worker, WorkerConfig};
use serde_json::{Value, json};

struct Running {
    shutdown: ShutdownHandle,
    handle: tokio::task::JoinHandle<exo_worker::Result<()>>,
    id: String,
}

fn start_worker(
    redis: &TestRedis,
    llm: &FakeLlmServer,
    stores: &[String],
    allow_payload_dsn: bool,
) -> Running {
    let mut config = WorkerConfig::new(redis.url());
    config.broker.keys = Keys::new(redis.prefix(), redis.queue());
    config.claim_block = Duration::from_millis(200);
    config.memory.stores = stores
        .iter()
        .map(|spec| exo_memory::NamedStore::parse(spec).unwrap())
        .collect();
    config.memory.allow_payload_dsn = allow_payload_dsn;
    config.broker.retry.max_retries = 0;
    let base_url = llm.openai_base_url();
    let providers: exo_models::ProviderFactory = Arc::new(move |model: &str| {
        let base_url = base_url.clone();
        exo_models::resolve_provider_with_env(model, &move |name| match name {
            "OPENAI_BASE_URL" => Some(base_url.clone()),
            "OPENAI_API_KEY" => Some("test-key".to_owned()),
            _ => None,
        })
    });
    let mut tools = ToolRegistry::new();
    exo_agent::builtin::register_all(&mut tools);
    let worker = Worker::builder(redis.url())
        .configure(|settings| *settings = config)
        .provider_factory(providers)
        .tools(tools)
        .build()
        .unwrap();
    let id = worker.id().to_owned();
    let shutdown = worker.shutdown_handle();
    Running {
        shutdown,
        handle: tokio::spawn(worker.run()),
        id,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.shutdown();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn broker(redis: &TestRedis) -> Broker {
    Broker::connect(
        BrokerConfig::new(redis.url()).with_keys(Keys::new(redis.prefix(), redis.queue())),
    )
    .await
    .unwrap()
}

fn task(input: &str, memory: Value) -> TaskPayload {
    let config = json!({"name": "assistant", "model": "openai:gpt-4o-mini", "tools": ["echo"]});
    let mut payload = TaskPayload::new(
        uuid::Uuid::new_v4().simple().to_string(),
        config.as_object().unwrap().clone(),
        input,
    );
    payload.metadata.insert("memory".into(), memory);
    payload
}

async fn run(broker: &Broker, payload: TaskPayload) -> TaskResult {
    let handle = broker.client().submit(payload).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .unwrap()
        .unwrap()
}

/// The messages of the model request, as (role, content, tool names).
fn conversation(request: &Value) -> Vec<(String, String, Vec<String>)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            let tools = message["tool_calls"]
                .as_array()
                .map(|calls| {
                    calls
                        .iter()
                        .map(|call| call["function"]["name"].as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (
                message["role"].as_str().unwrap_or("").to_owned(),
                message["content"].as_str().unwrap_or("").to_owned(),
                tools,
            )
        })
        .collect()
}

/// Task 1 says its name and calls a tool; task 2 asks for the name. Task 2's
/// model request must carry the whole first exchange.
async fn check_session(backend: &str, stores: Vec<String>, memory: Value, second_worker: bool) {
    let redis = TestRedis::new();
    let llm = FakeLlmServer::start();
    llm.push(FakeResponse::openai_tool_calls(&[(
        "call_1",
        "echo",
        r#"{"text": "Ada"}"#,
    )]));
    llm.push(FakeResponse::openai_text("Nice to meet you, Ada."));
    llm.push(FakeResponse::openai_text("Your name is Ada."));
    let broker = broker(&redis).await;

    let first = start_worker(&redis, &llm, &stores, false);
    let one = run(&broker, task("my name is Ada", memory.clone())).await;
    assert_eq!(
        one.status,
        TaskStatus::Completed,
        "{backend}: {:?}",
        one.error
    );
    let second = if second_worker {
        first.stop().await;
        start_worker(&redis, &llm, &stores, false)
    } else {
        first
    };
    let two = run(&broker, task("what is my name?", memory)).await;
    assert_eq!(
        two.status,
        TaskStatus::Completed,
        "{backend}: {:?}",
        two.error
    );
    assert_eq!(two.output(), Some("Your name is Ada."));
    if second_worker {
        assert_eq!(
            two.worker_id.as_deref(),
            Some(second.id.as_str()),
            "{backend}: task 2 ran on the second worker"
        );
        assert_ne!(one.worker_id, two.worker_id);
    }
    second.stop().await;

    let requests = llm.json_bodies();
    assert_eq!(requests.len(), 3, "{backend}");
    let seen = conversation(&requests[2]);
    let expected = vec![
        ("user".to_owned(), "my name is Ada".to_owned(), vec![]),
        (
            "assistant".to_owned(),
            String::new(),
            vec!["echo".to_owned()],
        ),
        ("tool".to_owned(), "Ada".to_owned(), vec![]),
        (
            "assistant".to_owned(),
            "Nice to meet you, Ada.".to_owned(),
            vec![],
        ),
        ("user".to_owned(), "what is my name?".to_owned(), vec![]),
    ];
    assert_eq!(
        seen, expected,
        "{backend}: task 2's request: {}",
        requests[2]["messages"]
    );
}

#[tokio::test]
async fn short_term_memory_carries_a_session_across_tasks_of_one_worker() {
    check_session(
        "short_term",
        Vec::new(),
        json!({"backend": "short_term", "scope": {"user_id": "u1", "session_id": "s1"}}),
        false,
    )
    .await;
}

#[tokio::test]
async fn sqlite_memory_carries_a_session_across_workers() {
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!("sqlite://{}", dir.path().join("memory.db").display());
    check_session(
        "sqlite",
        vec![format!("main={dsn}")],
        json!({"backend": "sqlite", "store": "main", "scope": {"user_id": "u1", "session_id": "s1"}}),
        true,
    )
    .await;
}

#[tokio::test]
async fn postgres_memory_carries_a_session_across_workers() {
    let database = TestPostgres::new();
    check_session(
        "postgres",
        vec![format!("main={}", database.url())],
        json!({"backend": "postgres", "store": "main", "scope": {"user_id": "u1", "session_id": "s1"}}),
        true,
    )
    .await;
}

#[tokio::test]
async fn payload_dsns_are_refused_and_a_down_store_fails_only_its_task() {
    let redis = TestRedis::new();
    let llm = FakeLlmServer::openai("hello");
    let broker = broker(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let sneaky = format!(
        "sqlite://{}",
        dir.path().join("chosen-by-the-client.db").display()
    );
    let worker = start_worker(
        &redis,
        &llm,
        &["down=postgres://exo@127.0.0.1:1/none".to_owned()],
        false,
    );

    let refused = run(
        &broker,
        task("x", json!({"backend": "sqlite", "dsn": sneaky})),
    )
    .await;
    assert_eq!(refused.status, TaskStatus::Failed);
    let error = refused.error.unwrap_or_default();
    assert!(
        error.starts_with("memory:") && error.contains("DSN"),
        "{error}"
    );
    assert!(
        !dir.path().join("chosen-by-the-client.db").exists(),
        "the payload's file was never created"
    );

    let down = run(
        &broker,
        task("x", json!({"backend": "postgres", "store": "down"})),
    )
    .await;
    assert_eq!(down.status, TaskStatus::Failed);
    assert!(down.error.unwrap_or_default().starts_with("memory:"));

    let fine = run(&broker, task("x", json!({"backend": "short_term"}))).await;
    assert_eq!(
        fine.status,
        TaskStatus::Completed,
        "the worker still serves tasks"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_swarm_persists_every_members_turns() {
    let redis = TestRedis::new();
    let llm = FakeLlmServer::start();
    llm.push(FakeResponse::openai_text(
        "Facts: Ada Lovelace wrote the first program.",
    ));
    llm.push(FakeResponse::openai_text("Ada wrote the first program."));
    llm.push(FakeResponse::openai_text("You asked about Ada."));
    let broker = broker(&redis).await;
    let worker = start_worker(&redis, &llm, &[], false);
    let memory = json!({"backend": "short_term", "scope": {"session_id": "swarm-session"}});
    let swarm = json!({
        "agents": [
            {"name": "researcher", "model": "openai:gpt-4o-mini"},
            {"name": "writer", "model": "openai:gpt-4o-mini"}
        ],
        "flow": "researcher >> writer",
        "mode": "workflow"
    });
    let mut first = TaskPayload::new(
        uuid::Uuid::new_v4().simple().to_string(),
        swarm.as_object().unwrap().clone(),
        "Tell me about Ada",
    );
    first.metadata.insert("memory".into(), memory.clone());
    let one = run(&broker, first).await;
    assert_eq!(one.status, TaskStatus::Completed, "{:?}", one.error);
    let two = run(&broker, task("What did we talk about?", memory)).await;
    assert_eq!(two.status, TaskStatus::Completed, "{:?}", two.error);
    worker.stop().await;
    let requests = llm.json_bodies();
    let seen = conversation(&requests[2]);
    let contents: Vec<&str> = seen
        .iter()
        .map(|(_, content, _)| content.as_str())
        .collect();
    assert_eq!(
        contents,
        [
            "Tell me about Ada",
            "Facts: Ada Lovelace wrote the first program.",
            "Ada wrote the first program.",
            "What did we talk about?"
        ],
        "both members' turns were saved: {seen:?}"
    );
}

/// A task whose first attempt fails after a tool call is retried: the retry
/// replays its journal, asks the provider what the first attempt would
/// have asked (its input and messages once, not again from memory), and
/// leaves each of its messages in memory once.
#[tokio::test]
async fn a_retried_task_sees_and_saves_its_own_messages_once() {
    let redis = TestRedis::new();
    let llm = FakeLlmServer::start();
    llm.push(FakeResponse::openai_tool_calls(&[(
        "call_1",
        "echo",
        r#"{"text": "Ada"}"#,
    )]));
    // The second model call fails through the provider's own retries (a
    // retryable failure of the attempt); the task's retry answers.
    for _ in 0..4 {
        llm.push(
            FakeResponse::json(
                503,
                &json!({"error": {"message": "overloaded", "type": "server_error"}}),
            )
            .header("retry-after", "0"),
        );
    }
    llm.push(FakeResponse::openai_text("Nice to meet you, Ada."));
    llm.push(FakeResponse::openai_text("Your name is Ada."));
    let broker = broker(&redis).await;
    let worker = start_worker(&redis, &llm, &[], false);
    let memory = json!({"backend": "short_term", "scope": {"session_id": "retried"}});
    let mut first = task("my name is Ada", memory.clone());
    first.max_retries = Some(2);
    let first_id = first.task_id.clone();
    let one = run(&broker, first).await;
    assert_eq!(one.status, TaskStatus::Completed, "{:?}", one.error);
    let state = broker.client().get(&first_id).await.unwrap().unwrap();
    assert_eq!(state.retries, Some(1), "one retry of the task");
    let two = run(&broker, task("what is my name?", memory)).await;
    assert_eq!(two.status, TaskStatus::Completed, "{:?}", two.error);
    worker.stop().await;

    let requests = llm.json_bodies();
    assert_eq!(requests.len(), 7);
    // The failed call and the retry's asked the same.
    assert_eq!(requests[1]["messages"], requests[5]["messages"]);
    let user = |text: &str| ("user".to_owned(), text.to_owned(), vec![]);
    let first_exchange = vec![
        user("my name is Ada"),
        (
            "assistant".to_owned(),
            String::new(),
            vec!["echo".to_owned()],
        ),
        ("tool".to_owned(), "Ada".to_owned(), vec![]),
    ];
    assert_eq!(conversation(&requests[5]), first_exchange);
    // Memory holds every message of the first task once.
    let mut expected = first_exchange;
    expected.push((
        "assistant".to_owned(),
        "Nice to meet you, Ada.".to_owned(),
        vec![],
    ));
    expected.push(user("what is my name?"));
    assert_eq!(conversation(&requests[6]), expected);
}
