//! The worker end to end, in process, against a real redis-server and the
//! scripted provider: golden event sequences, timeout, cancel, panics,
//! retries, hooks, drain.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use exo_agent::ToolRegistry;
use exo_broker::{Broker, BrokerConfig, RetryPolicy};
use exo_proto::{Keys, StreamEvent, TaskPayload, TaskResult, TaskStatus};
use exo_testkit::TestRedis;
use exo_worker::{ShutdownHandle, TaskHooks, Worker, WorkerBuilder, WorkerConfig};
use serde_json::{Value, json};

/// One `on_task_done` call: task id, status, result, error.
type HookCall = (String, TaskStatus, Option<String>, Option<String>);

/// Records every `on_task_done` call; panics on the first call when asked.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<HookCall>>,
    panic_first: bool,
}

#[async_trait::async_trait]
impl TaskHooks for Recorder {
    async fn on_task_done(
        &self,
        task: &TaskPayload,
        status: TaskStatus,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((
                task.task_id.clone(),
                status,
                result.map(str::to_owned),
                error.map(str::to_owned),
            ));
            calls.len() == 1
        };
        if self.panic_first && first {
            panic!("hook exploded");
        }
        Ok(())
    }
}

struct Harness {
    redis: TestRedis,
    broker: Broker,
    shutdown: ShutdownHandle,
    worker: tokio::task::JoinHandle<exo_worker::Result<()>>,
    hooks: Arc<Recorder>,
    worker_id: String,
}

fn worker_config(redis: &TestRedis) -> WorkerConfig {
    let mut config = WorkerConfig::new(redis.url());
    config.broker.keys = Keys::new(redis.prefix(), redis.queue());
    config.concurrency = 4;
    config.broker.heartbeat_ttl = Duration::from_secs(3);
    config.broker.lease = Duration::from_secs(5);
    config.claim_block = Duration::from_millis(200);
    config.reap_interval = Duration::from_millis(500);
    config.drain_timeout = Duration::from_secs(5);
    config.deadline_grace = Duration::from_millis(500);
    config.broker.retry = RetryPolicy {
        max_retries: 3,
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        jitter: 0.0,
    };
    config
}

async fn start(redis: TestRedis, edit: impl FnOnce(&mut WorkerConfig), hooks: Recorder) -> Harness {
    start_with(redis, edit, hooks, |builder| builder).await
}

/// [`start`], with a last say on the worker's builder.
async fn start_with(
    redis: TestRedis,
    edit: impl FnOnce(&mut WorkerConfig),
    hooks: Recorder,
    build: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Harness {
    let mut config = worker_config(&redis);
    edit(&mut config);
    let hooks = Arc::new(hooks);
    let mut tools = ToolRegistry::new();
    exo_agent::builtin::register_all(&mut tools);
    let worker = build(
        Worker::builder(redis.url())
            .configure(|settings| *settings = config.clone())
            .tools(tools)
            .hooks(hooks.clone()),
    )
    .build()
    .unwrap();
    let worker_id = worker.id().to_owned();
    let shutdown = worker.shutdown_handle();
    let worker = tokio::spawn(worker.run());
    let broker =
        Broker::connect(BrokerConfig::new(redis.url()).with_keys(config.broker.keys.clone()))
            .await
            .unwrap();
    Harness {
        redis,
        broker,
        shutdown,
        worker,
        hooks,
        worker_id,
    }
}

impl Harness {
    async fn stop(self) -> (Broker, Arc<Recorder>, TestRedis) {
        self.shutdown.shutdown();
        tokio::time::timeout(Duration::from_secs(15), self.worker)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        (self.broker, self.hooks, self.redis)
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../exo-proto/test_data/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn payload(config: Value, input: &str) -> TaskPayload {
    TaskPayload::new(new_id(), config.as_object().unwrap().clone(), input)
}

/// Event JSON without timestamps and durations.
fn normalized(event: &StreamEvent) -> Value {
    let mut value = serde_json::to_value(event).unwrap();
    if let Value::Object(map) = &mut value {
        for key in ["started_at", "completed_at", "duration_ms"] {
            map.remove(key);
        }
    }
    value
}

/// Waits (up to 4 s) until the task runs.
async fn wait_running(broker: &Broker, task_id: &str) {
    for _ in 0..200 {
        let state = broker.client().get(task_id).await.unwrap().unwrap();
        if state.status == TaskStatus::Running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A normal task submitted now completes: the worker lives on.
async fn next_task_runs(broker: &Broker) {
    let next = payload(
        json!({"name": "fine", "model": "scripted:echo"}),
        "still here",
    );
    broker.client().submit(next.clone()).await.unwrap();
    let (state, _) = wait(broker, &next.task_id).await;
    assert_eq!(state.output(), Some("still here"));
}

/// A client of the test queue, for what is queued before a worker starts.
async fn queue_client(redis: &TestRedis) -> Broker {
    let keys = worker_config(redis).broker.keys;
    Broker::connect(BrokerConfig::new(redis.url()).with_keys(keys))
        .await
        .unwrap()
}

async fn wait(broker: &Broker, task_id: &str) -> (TaskResult, Vec<StreamEvent>) {
    let events = tokio::time::timeout(
        Duration::from_secs(20),
        broker.client().events(task_id, None).collect(),
    )
    .await
    .expect("the task ended in time")
    .unwrap();
    let task = broker.client().get(task_id).await.unwrap().unwrap();
    (task, events.into_iter().map(|item| item.event).collect())
}

#[tokio::test]
async fn the_golden_runs_stream_the_reference_events() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    for (payload_file, events_file, detailed) in [
        (
            "tool_run_detailed.payload.json",
            "tool_run_detailed.events.jsonl",
            true,
        ),
        (
            "tool_run_plain.payload.json",
            "tool_run_plain.events.jsonl",
            false,
        ),
    ] {
        let mut payload = TaskPayload::from_json(fixture(payload_file).as_bytes()).unwrap();
        payload.task_id = new_id();
        payload
            .agent_config
            .insert("model".into(), json!("scripted:weather"));
        payload.created_at = 0.0;
        assert_eq!(payload.detailed, detailed);
        harness
            .broker
            .client()
            .submit(payload.clone())
            .await
            .unwrap();
        let (task, events) = wait(&harness.broker, &payload.task_id).await;
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.output(), Some("Let me check. It is sunny in Paris."));
        let mut expected: Vec<Value> = fixture(events_file)
            .lines()
            .map(|line| {
                normalized(&exo_proto::decode::<StreamEvent>("event", line.as_bytes()).unwrap())
            })
            .collect();
        if !detailed {
            // The reference never ends a plain run's stream; exo does.
            expected.push(json!({"type": "status", "status": "completed", "agent_name": "helper", "message": "Agent 'helper' completed execution"}));
        }
        let got: Vec<Value> = events
            .iter()
            .map(normalized)
            .map(|mut value| {
                // The fixture's usage events name the reference's model.
                if value["type"] == "usage" {
                    value["model"] = json!("openai:gpt-4o-mini");
                }
                value
            })
            .collect();
        assert_eq!(got, expected, "{events_file}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_timeout_fails_the_attempt_and_retries_apply() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let mut task = payload(
        json!({"name": "slowpoke", "model": "scripted:slow:10000"}),
        "x",
    );
    task.timeout_seconds = 0.5;
    task.max_retries = Some(1);
    let started = std::time::Instant::now();
    harness.broker.client().submit(task.clone()).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.error.as_deref(), Some("timed out after 0.5 s"));
    assert_eq!(state.retries, Some(1), "the timeout was retried once");
    let terminal: Vec<_> = events.iter().filter(|event| event.is_terminal()).collect();
    assert_eq!(terminal.len(), 1);
    assert_eq!(
        normalized(terminal[0])["message"],
        json!("timed out after 0.5 s")
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_running_task_is_cancelled_within_a_second() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let config = json!({"name": "sleeper", "model": "scripted:{\"turns\":[{\"tool_calls\":[{\"id\":\"c1\",\"name\":\"sleep\",\"arguments\":{\"seconds\":60}}]}]}", "tools": ["sleep"]});
    let task = payload(config, "x");
    harness.broker.client().submit(task.clone()).await.unwrap();
    // Wait until it runs.
    for _ in 0..100 {
        if harness
            .broker
            .client()
            .get(&task.task_id)
            .await
            .unwrap()
            .unwrap()
            .status
            == TaskStatus::Running
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancelled_at = std::time::Instant::now();
    harness.broker.client().cancel(&task.task_id).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(state.status, TaskStatus::Cancelled);
    let last = events.last().unwrap();
    assert!(last.is_terminal());
    assert_eq!(normalized(last)["status"], json!("cancelled"));
    let (_, hooks, _) = harness.stop().await;
    assert_eq!(hooks.calls.lock().unwrap()[0].1, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_task_cancelled_while_queued_never_starts() {
    let redis = TestRedis::new();
    let broker = queue_client(&redis).await;
    let task = payload(json!({"name": "never", "model": "scripted:echo"}), "x");
    broker.client().submit(task.clone()).await.unwrap();
    broker.client().cancel(&task.task_id).await.unwrap();
    let harness = start(redis, |_| {}, Recorder::default()).await;
    let after = payload(
        json!({"name": "after", "model": "scripted:echo"}),
        "hello there",
    );
    harness.broker.client().submit(after.clone()).await.unwrap();
    let (state, _) = wait(&harness.broker, &after.task_id).await;
    assert_eq!(state.output(), Some("hello there"));
    let never = harness
        .broker
        .client()
        .get(&task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (never.status, never.started_at),
        (TaskStatus::Cancelled, None)
    );
    let (_, events) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(events.len(), 1);
    let (_, hooks, _) = harness.stop().await;
    assert!(
        hooks
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|call| call.0 != task.task_id)
    );
}

#[tokio::test]
async fn a_panicking_tool_fails_its_task_and_the_worker_lives_on() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let config = json!({"name": "boom", "model": "scripted:{\"turns\":[{\"tool_calls\":[{\"id\":\"c1\",\"name\":\"panic\",\"arguments\":\"{}\"}]},{\"text\":\"unreachable\"}]}", "tools": ["panic"]});
    let mut task = payload(config, "x");
    task.max_retries = Some(0);
    harness.broker.client().submit(task.clone()).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(state.status, TaskStatus::Failed);
    assert!(
        state.error.as_deref().unwrap_or_default().contains("panic"),
        "{:?}",
        state.error
    );
    assert!(events.last().unwrap().is_terminal());
    next_task_runs(&harness.broker).await;
    harness.stop().await;
}

/// A panic in the run itself (here: building its model provider), outside
/// any tool: the attempt fails with the panic's message, the worker runs
/// the next task.
#[tokio::test]
async fn a_panicking_run_fails_its_task_and_the_worker_lives_on() {
    let default = exo_models::default_factory();
    let providers: exo_models::ProviderFactory = Arc::new(move |model: &str| {
        if model.starts_with("panicky:") {
            panic!("no provider for {model}");
        }
        default(model)
    });
    let harness = start_with(
        TestRedis::new(),
        |_| {},
        Recorder::default(),
        |builder| builder.provider_factory(providers),
    )
    .await;
    let mut task = payload(json!({"name": "boom", "model": "panicky:model"}), "x");
    task.max_retries = Some(0);
    harness.broker.client().submit(task.clone()).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(
        state.error.as_deref(),
        Some("the run panicked: no provider for panicky:model")
    );
    assert!(events.last().unwrap().is_terminal());
    next_task_runs(&harness.broker).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_failing_task_retries_three_times_then_dead_letters_and_hooks_see_every_attempt() {
    let hooks = Recorder {
        panic_first: true,
        ..Recorder::default()
    };
    let harness = start(TestRedis::new(), |_| {}, hooks).await;
    let task = payload(json!({"name": "helper", "model": "scripted:fail"}), "x");
    harness.broker.client().submit(task.clone()).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.retries, Some(3));
    assert_eq!(state.error.as_deref(), Some("provider down"));
    assert_eq!(events.iter().filter(|event| event.is_terminal()).count(), 1);
    let errors = events
        .iter()
        .filter(|event| matches!(event, StreamEvent::Error(_)))
        .count();
    assert_eq!(errors, 4, "one error per attempt");
    let letters = harness.broker.admin().dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 4);
    // The worker survived the panicking hook.
    let next = payload(json!({"name": "fine", "model": "scripted:echo"}), "ok");
    harness.broker.client().submit(next.clone()).await.unwrap();
    wait(&harness.broker, &next.task_id).await;
    let (_, hooks, _) = harness.stop().await;
    let calls = hooks.calls.lock().unwrap();
    let failed: Vec<_> = calls.iter().filter(|call| call.0 == task.task_id).collect();
    assert_eq!(failed.len(), 4);
    assert!(
        failed
            .iter()
            .all(|call| call.1 == TaskStatus::Failed && call.3.as_deref() == Some("provider down"))
    );
    assert!(calls.iter().any(|call| call.0 == next.task_id
        && call.1 == TaskStatus::Completed
        && call.2.as_deref() == Some("ok")));
}

#[tokio::test]
async fn a_bad_config_fails_at_once_without_retries() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let cases = [
        (
            json!({"name": "x", "model": "scripted:echo", "ptc": true}),
            "ptc",
        ),
        (
            json!({"name": "x", "model": "scripted:echo", "tools": ["no.such.tool"]}),
            "no.such.tool",
        ),
        (json!({"model": "scripted:echo"}), "name"),
    ];
    for (config, needle) in cases {
        let task = payload(config, "x");
        harness.broker.client().submit(task.clone()).await.unwrap();
        let (state, events) = wait(&harness.broker, &task.task_id).await;
        assert_eq!(state.status, TaskStatus::Failed);
        assert_eq!(state.retries, None, "config errors are not retried");
        assert!(
            state.error.as_deref().unwrap_or_default().contains(needle),
            "{:?}",
            state.error
        );
        assert!(events.last().unwrap().is_terminal());
    }
    harness.stop().await;
}

#[tokio::test]
async fn shutdown_drains_running_tasks_and_removes_the_heartbeat() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let task = payload(json!({"name": "slow", "model": "scripted:slow:700"}), "x");
    harness.broker.client().submit(task.clone()).await.unwrap();
    for _ in 0..100 {
        if harness
            .broker
            .client()
            .get(&task.task_id)
            .await
            .unwrap()
            .unwrap()
            .status
            == TaskStatus::Running
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_id = harness.worker_id.clone();
    assert!(
        harness
            .broker
            .admin()
            .worker(&worker_id)
            .await
            .unwrap()
            .is_some()
    );
    let (broker, _, _redis) = harness.stop().await;
    let state = broker.client().get(&task.task_id).await.unwrap().unwrap();
    assert_eq!(
        state.status,
        TaskStatus::Completed,
        "the running task finished during the drain"
    );
    assert!(
        broker.admin().worker(&worker_id).await.unwrap().is_none(),
        "the heartbeat is gone"
    );
}

#[tokio::test]
async fn a_task_past_the_drain_timeout_is_handed_back() {
    let harness = start(
        TestRedis::new(),
        |config| config.drain_timeout = Duration::from_millis(300),
        Recorder::default(),
    )
    .await;
    let task = payload(json!({"name": "slow", "model": "scripted:slow:30000"}), "x");
    harness.broker.client().submit(task.clone()).await.unwrap();
    for _ in 0..100 {
        if harness
            .broker
            .client()
            .get(&task.task_id)
            .await
            .unwrap()
            .unwrap()
            .status
            == TaskStatus::Running
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (broker, hooks, _redis) = harness.stop().await;
    let state = broker.client().get(&task.task_id).await.unwrap().unwrap();
    assert_eq!(
        state.status,
        TaskStatus::Pending,
        "handed back to the queue"
    );
    assert_eq!(broker.admin().queue_stats().await.unwrap().depth(), 1);
    assert!(hooks.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_worker_rides_out_a_redis_outage() {
    let harness = start(TestRedis::dedicated(), |_| {}, Recorder::default()).await;
    let Harness {
        mut redis,
        broker,
        shutdown,
        worker,
        hooks: _,
        worker_id: _,
    } = harness;
    let before = payload(json!({"name": "a", "model": "scripted:echo"}), "before");
    broker.client().submit(before.clone()).await.unwrap();
    wait(&broker, &before.task_id).await;

    redis.server().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !worker.is_finished(),
        "the worker is still alive without Redis"
    );
    redis.server().unwrap().restart();

    // The restarted server lost everything (no persistence), the consumer
    // group included; the worker recreates it and carries on.
    let after = payload(
        json!({"name": "a", "model": "scripted:echo"}),
        "after the outage",
    );
    let mut submitted = false;
    for _ in 0..50 {
        if broker.client().submit(after.clone()).await.is_ok() {
            submitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(submitted);
    let (state, _) = wait(&broker, &after.task_id).await;
    assert_eq!(state.output(), Some("after the outage"));
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_redis_stall_longer_than_the_ttl_costs_time_not_work() {
    // Heartbeat TTL 3 s; Redis frozen for 5 s while a task runs. Nobody may
    // take the task over, no retry is charged, and it completes on its
    // first attempt.
    let harness = start(TestRedis::dedicated(), |_| {}, Recorder::default()).await;
    let mut task = payload(json!({"name": "slow", "model": "scripted:slow:7000"}), "x");
    task.max_retries = Some(0);
    harness.broker.client().submit(task.clone()).await.unwrap();
    wait_running(&harness.broker, &task.task_id).await;
    let Harness {
        mut redis,
        broker,
        shutdown,
        worker,
        ..
    } = harness;
    redis.server().unwrap().freeze();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.server().unwrap().thaw();
    let (state, events) = wait(&broker, &task.task_id).await;
    assert_eq!(state.status, TaskStatus::Completed, "{state:?}");
    assert_eq!(state.retries.unwrap_or(0), 0, "a retry was charged");
    assert!(
        !events
            .iter()
            .any(|event| serde_json::to_string(event).unwrap().contains("WorkerLost")),
        "the stall looked like a death: {events:?}"
    );
    assert_eq!(events.iter().filter(|event| event.is_terminal()).count(), 1);
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_idle_worker_told_to_stop_without_redis_exits_within_seconds() {
    let harness = start(TestRedis::dedicated(), |_| {}, Recorder::default()).await;
    let Harness {
        mut redis,
        broker,
        shutdown,
        worker,
        ..
    } = harness;
    let task = payload(json!({"name": "a", "model": "scripted:echo"}), "x");
    broker.client().submit(task.clone()).await.unwrap();
    wait(&broker, &task.task_id).await;
    redis.server().unwrap().freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stopped")
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        stopping.elapsed()
    );
    redis.server().unwrap().thaw();
}

/// One hostile or broken queue entry, and what its dead letter or failed
/// task must say.
struct BadEntry {
    name: &'static str,
    payload: Vec<u8>,
    /// The task id whose hash must end `failed`, if the entry names one.
    task_id: Option<String>,
    reason: &'static str,
}

fn bad_entries() -> Vec<BadEntry> {
    let id = || new_id();
    let json_entry = |name, value: Value, task_id: Option<String>, reason| BadEntry {
        name,
        payload: value.to_string().into_bytes(),
        task_id,
        reason,
    };
    let mut entries = Vec::new();
    let deep_id = id();
    let mut deep = String::from("\"x\"");
    for _ in 0..5000 {
        deep = format!("[{deep}]");
    }
    entries.push(BadEntry {
        name: "nested 5000 levels",
        payload: format!("{{\"task_id\":\"{deep_id}\",\"metadata\":{{\"x\":{deep}}}}}")
            .into_bytes(),
        task_id: Some(deep_id),
        reason: "not valid JSON",
    });
    let big_id = id();
    entries.push(BadEntry {
        name: "10 MB payload",
        payload: format!(
            "{{\"task_id\":\"{big_id}\",\"input\":\"{}\"}}",
            "x".repeat(10 * 1024 * 1024)
        )
        .into_bytes(),
        task_id: Some(big_id),
        reason: "exceeds the limit",
    });
    let utf8_id = id();
    let mut bytes = format!("{{\"task_id\":\"{utf8_id}\",\"agent_config\":{{\"name\":\"a\",\"model\":\"scripted:echo\"}},\"input\":\"x?\"}}").into_bytes();
    let at = bytes.iter().position(|byte| *byte == b'?').unwrap();
    bytes[at] = 0xff;
    entries.push(BadEntry {
        name: "invalid UTF-8",
        payload: bytes,
        task_id: Some(utf8_id),
        reason: "UTF-8",
    });
    entries.push(json_entry(
        "reserved id",
        json!({"task_id": "index"}),
        None,
        "not a valid task id",
    ));
    entries.push(json_entry(
        "over-long id",
        json!({"task_id": "a".repeat(300)}),
        None,
        "not a valid task id",
    ));
    entries.push(json_entry(
        "id of the wrong type",
        json!({"task_id": 7}),
        None,
        "no task_id",
    ));
    entries.push(BadEntry {
        name: "not JSON",
        payload: b"{this is not json".to_vec(),
        task_id: None,
        reason: "not valid JSON",
    });
    let wrong_types = id();
    entries.push(json_entry(
        "fields of the wrong type",
        json!({"task_id": wrong_types, "messages": "hello", "timeout_seconds": "soon"}),
        Some(wrong_types),
        "messages",
    ));
    let role = id();
    entries.push(json_entry(
        "unknown role",
        json!({"task_id": role, "agent_config": {"name": "a", "model": "scripted:echo"}, "messages": [{"role": "robot", "content": "x"}]}),
        Some(role),
        "robot",
    ));
    let tool = id();
    entries.push(json_entry(
        "unknown tool",
        json!({"task_id": tool, "agent_config": {"name": "a", "model": "scripted:echo", "tools": ["app.tools.nope"]}, "input": "x"}),
        Some(tool),
        "app.tools.nope",
    ));
    let invalid = id();
    entries.push(json_entry(
        "config that fails validation",
        json!({"task_id": invalid, "agent_config": {"name": "", "model": "scripted:echo"}, "input": "x"}),
        Some(invalid),
        "name",
    ));
    let timeout = id();
    entries.push(json_entry(
        "negative timeout",
        json!({"task_id": timeout, "agent_config": {"name": "a", "model": "scripted:echo"}, "timeout_seconds": -1}),
        Some(timeout),
        "timeout_seconds",
    ));
    entries
}

#[tokio::test]
async fn a_live_worker_survives_a_corpus_of_bad_entries() {
    let harness = start(TestRedis::new(), |_| {}, Recorder::default()).await;
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(harness.redis.url()).unwrap(),
    )
    .build()
    .unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    let entries = bad_entries();
    for entry in &entries {
        let _: String = fred::prelude::ClientLike::custom(
            &client,
            fred::cmd!("XADD"),
            vec![
                fred::types::Value::from(harness.broker.keys().queue()),
                "*".into(),
                "payload".into(),
                fred::types::Value::Bytes(entry.payload.clone().into()),
            ],
        )
        .await
        .unwrap_or_else(|error| panic!("{}: {error}", entry.name));
    }
    // The next normal task completes.
    next_task_runs(&harness.broker).await;
    // Every bad entry is accounted for, with a reason naming its problem.
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = harness.broker.admin().dead_letters(100).await.unwrap();
        if letters.len() >= entries.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for entry in &entries {
        let reason = match &entry.task_id {
            Some(task_id) => {
                let (state, events) = wait(&harness.broker, task_id).await;
                assert_eq!(state.status, TaskStatus::Failed, "{}", entry.name);
                assert_eq!(
                    events.iter().filter(|event| event.is_terminal()).count(),
                    1,
                    "{}",
                    entry.name
                );
                state.error.unwrap_or_default()
            }
            None => letters
                .iter()
                .find(|letter| letter.task_id.is_empty() && letter.reason.contains(entry.reason))
                .map(|letter| letter.reason.clone())
                .unwrap_or_default(),
        };
        assert!(
            reason.contains(entry.reason),
            "{}: the reason `{reason}` does not name `{}`",
            entry.name,
            entry.reason
        );
    }
    assert!(
        letters.len() >= entries.len(),
        "{} dead letters for {} bad entries",
        letters.len(),
        entries.len()
    );
    assert!(!harness.worker.is_finished());
    harness.stop().await;
}

#[tokio::test]
async fn a_final_write_refused_for_memory_waits_instead_of_running_the_task_again() {
    // Redis refuses writes (OOM under noeviction) when the run ends; the
    // worker keeps the task and retries its final write, so the task is not
    // handed back and run a second time.
    let harness = start(TestRedis::dedicated(), |_| {}, Recorder::default()).await;
    let task = payload(json!({"name": "slow", "model": "scripted:slow:1500"}), "x");
    harness.broker.client().submit(task.clone()).await.unwrap();
    wait_running(&harness.broker, &task.task_id).await;
    let port = harness
        .redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    exo_testkit::redis_command(port, &["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    exo_testkit::redis_command(port, &["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(state.status, TaskStatus::Completed, "{state:?}");
    assert_eq!(state.retries.unwrap_or(0), 0);
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(harness.redis.url()).unwrap(),
    )
    .build()
    .unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    let attempt: String = fred::prelude::HashesInterface::hget(
        &client,
        harness.broker.keys().task(&task.task_id),
        "attempt",
    )
    .await
    .unwrap();
    assert_eq!(attempt, "1", "the task ran again");
    assert_eq!(events.iter().filter(|event| event.is_terminal()).count(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_waits_for_its_old_heartbeat_to_expire() {
    // A fixed worker id, and the previous process's heartbeat (another
    // nonce) still in Redis: the new process waits for it to expire, then
    // serves.
    let redis = TestRedis::new();
    let config = worker_config(&redis);
    let worker_id = format!("fixed-{}", new_id());
    let key = config.broker.keys.clone().worker(&worker_id);
    let port: u16 = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    exo_testkit::redis_command(
        port,
        &[
            "HSET",
            &key,
            "nonce",
            "previous-process",
            "status",
            "running",
        ],
    )
    .unwrap();
    exo_testkit::redis_command(port, &["EXPIRE", &key, "2"]).unwrap();
    let harness = start(
        redis,
        |config| config.worker_id = Some(worker_id.clone()),
        Recorder::default(),
    )
    .await;
    let task = payload(
        json!({"name": "a", "model": "scripted:echo"}),
        "after the restart",
    );
    harness.broker.client().submit(task.clone()).await.unwrap();
    let (state, _) = wait(&harness.broker, &task.task_id).await;
    assert_eq!(state.output(), Some("after the restart"));
    assert_eq!(state.worker_id.as_deref(), Some(worker_id.as_str()));
    harness.stop().await;
}

/// Tasks queued before a worker with one slot starts: a short one, a slow
/// one (`slow_ms`), and `after` more. The short task's final write claims
/// the slow one and, with the lookahead, holds `lookahead` of the others
/// behind it; the rest stay queued. Returns the harness once the short task
/// is done, with the ids of the slow task and of the `after` others.
async fn held_behind_a_slow_task(
    window: Duration,
    slow_ms: u64,
    lookahead: usize,
    after: usize,
) -> (Harness, String, Vec<String>) {
    let redis = TestRedis::new();
    let broker = queue_client(&redis).await;
    let short = payload(json!({"name": "short", "model": "scripted:echo"}), "a");
    let slow = payload(
        json!({"name": "slow", "model": format!("scripted:slow:{slow_ms}")}),
        "b",
    );
    let others: Vec<TaskPayload> = (0..after)
        .map(|index| {
            payload(
                json!({"name": "held", "model": "scripted:echo"}),
                &format!("c{index}"),
            )
        })
        .collect();
    for task in [&short, &slow].into_iter().chain(&others) {
        broker.client().submit(task.clone()).await.unwrap();
    }
    let harness = start(
        redis,
        |config| {
            config.concurrency = 1;
            config.lookahead = lookahead;
            config.lookahead_window = window;
        },
        Recorder::default(),
    )
    .await;
    let (state, _) = wait(&harness.broker, &short.task_id).await;
    assert_eq!(state.status, TaskStatus::Completed);
    // The short task's final write claimed the slow one and the lookahead
    // at once.
    for (index, task) in others.iter().enumerate() {
        let expected = if index < lookahead {
            (TaskStatus::Running, Some(harness.worker_id.clone()))
        } else {
            (TaskStatus::Pending, None)
        };
        assert_eq!(
            status_and_worker(&harness.broker, &task.task_id).await,
            expected,
            "task {index} after the slow one"
        );
    }
    let others = others.into_iter().map(|task| task.task_id).collect();
    (harness, slow.task_id, others)
}

/// The lookahead caps what the worker holds: the rest stays in the queue
/// for other workers.
#[tokio::test]
async fn a_worker_holds_no_more_than_its_lookahead() {
    let (harness, slow, others) = held_behind_a_slow_task(Duration::from_secs(10), 500, 1, 3).await;
    assert_eq!(
        harness.broker.admin().queue_stats().await.unwrap().depth(),
        2
    );
    for task_id in others.iter().chain([&slow]) {
        assert_eq!(
            wait(&harness.broker, task_id).await.0.status,
            TaskStatus::Completed
        );
    }
    harness.stop().await;
}

async fn status_and_worker(broker: &Broker, task_id: &str) -> (TaskStatus, Option<String>) {
    let state = broker.client().get(task_id).await.unwrap().unwrap();
    (state.status, state.worker_id)
}

/// Tasks held behind one that runs longer than the lookahead window go
/// back to the queue (for any worker), and each then runs once.
#[tokio::test]
async fn tasks_held_behind_a_long_task_go_back_to_the_queue() {
    let (harness, slow, held) =
        held_behind_a_slow_task(Duration::from_millis(500), 3000, 2, 2).await;
    // Well past the window, the slow task still runs and the held ones
    // wait in the queue again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status_and_worker(&harness.broker, &slow).await.0,
        TaskStatus::Running
    );
    for task_id in &held {
        assert_eq!(
            status_and_worker(&harness.broker, task_id).await,
            (TaskStatus::Pending, None),
            "handed back"
        );
    }
    assert_eq!(
        harness.broker.admin().queue_stats().await.unwrap().depth(),
        2
    );
    for task_id in held.iter().chain([&slow]) {
        let (state, events) = wait(&harness.broker, task_id).await;
        assert_eq!(state.status, TaskStatus::Completed);
        assert_eq!(
            events.iter().filter(|event| event.is_terminal()).count(),
            1,
            "ran once"
        );
    }
    let (_, hooks, _) = harness.stop().await;
    assert_eq!(hooks.calls.lock().unwrap().len(), 4);
}

/// A task held ahead is the worker's: a cancel reaches it before it starts,
/// and it ends cancelled without running.
#[tokio::test]
async fn a_held_task_cancelled_ends_cancelled_without_running() {
    let (harness, slow, held) = held_behind_a_slow_task(Duration::from_secs(10), 800, 2, 2).await;
    harness.broker.client().cancel(&held[0]).await.unwrap();
    let (state, events) = wait(&harness.broker, &held[0]).await;
    assert_eq!(state.status, TaskStatus::Cancelled);
    assert_eq!(events.len(), 1, "only the terminal event: {events:?}");
    assert_eq!(normalized(&events[0])["status"], json!("cancelled"));
    for task_id in [&slow, &held[1]] {
        assert_eq!(
            wait(&harness.broker, task_id).await.0.status,
            TaskStatus::Completed
        );
    }
    harness.stop().await;
}

/// A drain finishes the running task and hands the held ones back.
#[tokio::test]
async fn a_drain_hands_back_the_held_tasks() {
    let (harness, slow, held) = held_behind_a_slow_task(Duration::from_secs(10), 800, 2, 2).await;
    let (broker, hooks, _redis) = harness.stop().await;
    assert_eq!(
        broker.client().get(&slow).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
    for task_id in &held {
        assert_eq!(
            status_and_worker(&broker, task_id).await,
            (TaskStatus::Pending, None)
        );
    }
    assert_eq!(broker.admin().queue_stats().await.unwrap().depth(), 2);
    assert_eq!(hooks.calls.lock().unwrap().len(), 2);
}
