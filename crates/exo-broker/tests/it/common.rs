//! Shared helpers for the broker tests: a broker on a real Redis with the
//! test's own key prefix, and sample payloads.

use std::time::Duration;

use exo_broker::{Broker, BrokerConfig, ClaimedTask, RetryPolicy};
use exo_proto::{Keys, RunStatus, StreamEvent, TaskPayload, WorkerHealth};
use exo_testkit::TestRedis;
use serde_json::json;

pub(crate) fn config(redis: &TestRedis) -> BrokerConfig {
    let mut config = BrokerConfig::new(redis.url()).with_keys(Keys::with_prefix(redis.prefix()));
    config.retry = RetryPolicy {
        max_retries: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        jitter: 0.0,
    };
    config.command_timeout = Duration::from_secs(5);
    // Tests kill workers on purpose and reap at once.
    config.dead_worker_idle = Duration::ZERO;
    config
}

pub(crate) async fn broker(redis: &TestRedis) -> Broker {
    Broker::connect(config(redis))
        .await
        .expect("connect to the test Redis")
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(crate) fn payload(input: &str) -> TaskPayload {
    let config = json!({"name": "helper", "model": "scripted:echo"});
    TaskPayload::new(new_id(), config.as_object().unwrap().clone(), input)
}

pub(crate) fn completed(agent: &str) -> StreamEvent {
    StreamEvent::status(
        RunStatus::Completed,
        agent,
        format!("Agent '{agent}' completed execution"),
    )
}

pub(crate) fn errored(agent: &str, message: &str) -> StreamEvent {
    StreamEvent::status(RunStatus::Error, agent, message)
}

pub(crate) fn cancelled(agent: &str) -> StreamEvent {
    StreamEvent::status(RunStatus::Cancelled, agent, "cancelled")
}

/// Claims until `count` tasks arrived or three claims in a row found none.
pub(crate) async fn claim_all(broker: &Broker, worker: &str, count: usize) -> Vec<ClaimedTask> {
    let mut claimer = broker.worker_session(worker).claimer();
    let mut tasks = Vec::new();
    let mut empty = 0;
    while tasks.len() < count && empty < 3 {
        let claim = claimer
            .claim(count - tasks.len(), Duration::from_millis(100))
            .await
            .unwrap();
        if claim.tasks.is_empty() {
            empty += 1;
        }
        tasks.extend(claim.tasks);
    }
    claimer.close().await;
    tasks
}

/// A raw Redis command for assertions, on a separate connection.
pub(crate) async fn raw(redis: &TestRedis) -> fred::prelude::Client {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

pub(crate) fn texts(events: &[exo_broker::StreamItem]) -> Vec<String> {
    events.iter().map(|item| item.event.to_json()).collect()
}

/// `XREADGROUP` one entry for `consumer` on a separate connection, without
/// the claim script: an entry read but never marked running.
pub(crate) async fn read_without_marking(
    client: &fred::prelude::Client,
    broker: &Broker,
    consumer: &str,
) {
    use fred::prelude::*;
    let group = broker.keys().group();
    let _: fred::types::Value = client
        .custom(
            fred::cmd!("XREADGROUP"),
            vec![
                "GROUP",
                &group,
                consumer,
                "COUNT",
                "1",
                "STREAMS",
                broker.keys().queue(),
                ">",
            ],
        )
        .await
        .unwrap();
}

/// A heartbeat for `worker_id`, as a live worker writes it.
pub(crate) fn health(worker_id: &str) -> WorkerHealth {
    WorkerHealth {
        worker_id: worker_id.to_owned(),
        status: "running".into(),
        tasks_processed: 0,
        tasks_failed: 0,
        current_task_id: None,
        started_at: exo_proto::time::now_seconds(),
        last_heartbeat: exo_proto::time::now_seconds(),
        concurrency: 1,
        hostname: "test".into(),
        heartbeat_ttl: Some(30),
        active_tasks: None,
        queue: None,
    }
}

/// Ends an attempt as worker "finisher" would, and returns what it did.
pub(crate) async fn finish(
    broker: &Broker,
    task: &ClaimedTask,
    outcome: exo_broker::Outcome<'_>,
    events: Vec<String>,
    terminal: &StreamEvent,
) -> exo_broker::Finished {
    broker
        .worker_session("finisher")
        .finish(
            task,
            outcome,
            events,
            terminal,
            exo_broker::FinishOptions::default(),
        )
        .await
        .unwrap()
}

/// Appends a queue entry the way a reference client does (a bare XADD with
/// one `payload` field), on the raw connection; returns its id.
pub(crate) async fn raw_xadd(
    client: &fred::prelude::Client,
    broker: &Broker,
    payload: &str,
) -> String {
    use fred::prelude::*;
    client
        .xadd(
            broker.keys().queue(),
            false,
            None,
            "*",
            vec![("payload", payload)],
        )
        .await
        .unwrap()
}
