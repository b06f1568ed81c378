//! The worker with the Temporal executor, in process, against a real
//! redis-server, a real Temporal dev server and the scripted provider: the
//! event stream and the task hash are the ones local mode writes, Temporal
//! spends the retry budget, and a cancel ends the workflow.

use std::{sync::Arc, time::Duration};

use exo_agent::{McpPolicy, Runner, ToolRegistry};
use exo_broker::{Broker, BrokerConfig, RetryPolicy};
use exo_proto::{Keys, StreamEvent, TaskPayload, TaskResult, TaskStatus};
use exo_testkit::{TestRedis, TestTemporal};
use exo_worker::{
    ExecutorKind, LocalExecutor, Memory, ShutdownHandle, TemporalConfig, TemporalExecutor, Worker,
    WorkerConfig,
};
use serde_json::{Value, json};

struct Harness {
    _redis: TestRedis,
    temporal: TestTemporal,
    broker: Broker,
    shutdown: ShutdownHandle,
    worker: tokio::task::JoinHandle<exo_worker::Result<()>>,
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

fn tools() -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    exo_agent::builtin::register_all(&mut tools);
    tools
}

async fn broker_for(config: &WorkerConfig) -> Broker {
    Broker::connect(
        BrokerConfig::new(config.broker.redis_url.clone()).with_keys(config.broker.keys.clone()),
    )
    .await
    .unwrap()
}

/// A worker on a Redis of its own, local or (`temporal_mode`) on Temporal
/// with a task queue of its own.
async fn start(temporal_mode: bool) -> Harness {
    let redis = TestRedis::new();
    let temporal = TestTemporal::new();
    let mut config = worker_config(&redis);
    let broker = broker_for(&config).await;
    let mut builder = Worker::builder(redis.url()).tools(tools());
    if temporal_mode {
        config.executor = ExecutorKind::Temporal;
        let settings = TemporalConfig {
            host: temporal.address().to_owned(),
            task_queue: temporal.task_queue().to_owned(),
            heartbeat_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(250),
            timeout_margin: Duration::from_secs(3),
            max_concurrent_activities: config.concurrency,
            ..TemporalConfig::default()
        };
        let runner = Arc::new(Runner::new(
            exo_models::default_factory(),
            Arc::new(tools()),
            McpPolicy::default(),
        ));
        let memory = Memory::new(&Default::default()).unwrap();
        let local = Arc::new(LocalExecutor::new(
            broker_for(&config).await.worker_session("temporal-worker"),
            runner,
            memory,
            config.deadline_grace,
        ));
        let executor = TemporalExecutor::start(&config, settings, local)
            .await
            .unwrap();
        builder = builder.custom_executor(Arc::new(executor));
    }
    let worker = builder
        .configure(|settings| *settings = config.clone())
        .build()
        .unwrap();
    let worker_id = worker.id().to_owned();
    let shutdown = worker.shutdown_handle();
    let worker = tokio::spawn(worker.run());
    Harness {
        _redis: redis,
        temporal,
        broker,
        shutdown,
        worker,
        worker_id,
    }
}

impl Harness {
    async fn stop(self) {
        self.shutdown.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.worker)
            .await
            .expect("the worker stopped in time")
            .unwrap()
            .unwrap();
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

/// The hash without what differs between any two runs (ids, times).
fn hash_shape(task: &TaskResult) -> Value {
    let mut value = json!(task.to_hash_fields());
    if let Value::Array(fields) = &mut value {
        fields.retain(|field| {
            !matches!(
                field[0].as_str(),
                Some("task_id" | "worker_id" | "started_at" | "completed_at" | "created_at")
            )
        });
    }
    value
}

async fn wait(broker: &Broker, task_id: &str, timeout: Duration) -> (TaskResult, Vec<StreamEvent>) {
    let events = tokio::time::timeout(timeout, broker.client().events(task_id, None).collect())
        .await
        .expect("the task ended in time")
        .unwrap();
    let task = broker.client().get(task_id).await.unwrap().unwrap();
    (task, events.into_iter().map(|item| item.event).collect())
}

/// How a task ended: its hash, its events, its id.
type Ended = (TaskResult, Vec<StreamEvent>, String);

/// Runs the payload on a fresh worker of each mode and returns both ends,
/// local first.
async fn run_in_both_modes(payload: &TaskPayload) -> (Ended, Ended) {
    let mut results = Vec::new();
    for temporal_mode in [false, true] {
        let harness = start(temporal_mode).await;
        let mut payload = payload.clone();
        payload.task_id = new_id();
        harness
            .broker
            .client()
            .submit(payload.clone())
            .await
            .unwrap();
        let (task, events) = wait(&harness.broker, &payload.task_id, Duration::from_secs(60)).await;
        assert_eq!(
            task.worker_id.as_deref(),
            Some(harness.worker_id.as_str()),
            "the claiming worker records the task"
        );
        if temporal_mode {
            assert_eq!(
                harness
                    .temporal
                    .workflow_status(&format!("exo-task-{}", payload.task_id))
                    .as_deref(),
                Some(match task.status {
                    TaskStatus::Completed => "Completed",
                    TaskStatus::Cancelled => "Canceled",
                    _ => "Failed",
                }),
                "the task ran as a workflow"
            );
        }
        harness.stop().await;
        results.push((task, events, payload.task_id));
    }
    let temporal = results.pop().unwrap();
    let local = results.pop().unwrap();
    (local, temporal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn golden_runs_look_the_same_as_in_local_mode() {
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
        payload
            .agent_config
            .insert("model".into(), json!("scripted:weather"));
        payload.created_at = 0.0;
        assert_eq!(payload.detailed, detailed);
        let (local, temporal) = run_in_both_modes(&payload).await;
        let (task, events, _) = &temporal;
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.output(), Some("Let me check. It is sunny in Paris."));
        let mut expected: Vec<Value> = fixture(events_file)
            .lines()
            .map(|line| {
                normalized(&exo_proto::decode::<StreamEvent>("event", line.as_bytes()).unwrap())
            })
            .collect();
        if !detailed {
            expected.push(json!({"type": "status", "status": "completed", "agent_name": "helper", "message": "Agent 'helper' completed execution"}));
        }
        let got: Vec<Value> = events
            .iter()
            .map(normalized)
            .map(|mut value| {
                if value["type"] == "usage" {
                    value["model"] = json!("openai:gpt-4o-mini");
                }
                value
            })
            .collect();
        assert_eq!(got, expected, "{events_file} in temporal mode");
        let local_events: Vec<Value> = local.1.iter().map(normalized).collect();
        let temporal_events: Vec<Value> = temporal.1.iter().map(normalized).collect();
        assert_eq!(
            temporal_events, local_events,
            "{events_file}: same stream in both modes"
        );
        assert_eq!(
            hash_shape(&temporal.0),
            hash_shape(&local.0),
            "{payload_file}: same hash in both modes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_end_the_same_way_after_temporal_spent_the_budget() {
    // A config error is never retried; a timeout is retried once (one
    // retry budget) and then recorded as the local worker words it.
    let bad = payload(
        json!({"name": "broken", "model": "scripted:weather", "tools": 42}),
        "x",
    );
    let mut slow = payload(
        json!({"name": "slowpoke", "model": "scripted:slow:10000"}),
        "x",
    );
    slow.timeout_seconds = 0.5;
    slow.max_retries = Some(1);
    for (payload, error, status_events) in
        [(bad, None, 0), (slow, Some("timed out after 0.5 s"), 1)]
    {
        let (local, temporal) = run_in_both_modes(&payload).await;
        let (task, events, task_id) = &temporal;
        assert_eq!(task.status, TaskStatus::Failed, "{task_id}");
        assert_eq!(task.status, local.0.status);
        assert_eq!(
            task.error, local.0.error,
            "the same error text in both modes"
        );
        assert_eq!(
            task.retries, local.0.retries,
            "the same retry count in both modes"
        );
        if let Some(error) = error {
            assert_eq!(task.error.as_deref(), Some(error));
        }
        let terminal: Vec<_> = events.iter().filter(|event| event.is_terminal()).collect();
        assert_eq!(terminal.len(), 1, "exactly one terminal event: {events:?}");
        assert_eq!(
            normalized(terminal[0]),
            normalized(local.1.iter().find(|event| event.is_terminal()).unwrap())
        );
        // The retry is announced on the stream in both modes.
        let retries = |events: &[StreamEvent]| {
            events
                .iter()
                .filter(|event| normalized(event)["status"] == "running")
                .count()
        };
        assert_eq!(retries(events), status_events, "{events:?}");
        assert_eq!(retries(&local.1), status_events, "{:?}", local.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_stops_the_workflow_and_ends_the_task_cancelled() {
    let harness = start(true).await;
    let config = json!({"name": "sleeper", "model": "scripted:{\"turns\":[{\"tool_calls\":[{\"id\":\"c1\",\"name\":\"sleep\",\"arguments\":{\"seconds\":60}}]}]}", "tools": ["sleep"]});
    let mut task = payload(config, "x");
    task.detailed = true;
    harness.broker.client().submit(task.clone()).await.unwrap();
    // Wait until the agent runs (its first event is in the stream).
    let mut stream = harness.broker.client().events(&task.task_id, None);
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the agent started")
        .unwrap()
        .unwrap();
    stream.close().await;
    let cancelled_at = std::time::Instant::now();
    harness.broker.client().cancel(&task.task_id).await.unwrap();
    let (state, events) = wait(&harness.broker, &task.task_id, Duration::from_secs(30)).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "the cancel took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(state.status, TaskStatus::Cancelled);
    let terminal: Vec<_> = events.iter().filter(|event| event.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "{events:?}");
    assert_eq!(
        normalized(terminal[0]),
        json!({"type": "status", "status": "cancelled", "agent_name": "sleeper", "message": "Agent 'sleeper' was cancelled"})
    );
    assert!(
        events.last().unwrap().is_terminal(),
        "the run's events come before the terminal one"
    );
    assert_eq!(
        harness
            .temporal
            .workflow_status(&format!("exo-task-{}", task.task_id))
            .as_deref(),
        Some("Canceled")
    );
    harness.stop().await;
}
