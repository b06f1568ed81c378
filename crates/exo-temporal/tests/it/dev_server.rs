//! The workflow, the activity and the client against a real Temporal dev
//! server (started once for this test binary). The host here runs no agent:
//! each task's payload is a script of what each attempt does, so the tests
//! pin down what Temporal does with it (retries, budgets, timeouts, cancel,
//! attach). The worker's tests run real agents through the same code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use exo_proto::{ErrorType, OutcomeStatus, RunOutcome};
use exo_temporal::{
    ActivityHost, ActivityRun, AgentTask, AttemptOutcome, TemporalClient, TemporalConfig,
    TemporalWorker, WorkflowState,
};
use exo_testkit::TestTemporal;
use serde_json::{Value, json};

/// Runs the step of the payload's `steps` for the attempt (the last step
/// for later attempts) and counts attempts per task.
#[derive(Default)]
struct ScriptHost {
    attempts: Mutex<HashMap<String, u32>>,
}

impl ScriptHost {
    fn attempts(&self, task_id: &str) -> u32 {
        self.attempts
            .lock()
            .unwrap()
            .get(task_id)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl ActivityHost for ScriptHost {
    async fn run(&self, run: ActivityRun) -> RunOutcome {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(run.task_id.clone())
            .or_default() += 1;
        let script: Value = serde_json::from_str(&run.payload_json).unwrap();
        let steps = script["steps"].as_array().unwrap();
        let step = steps[(run.attempt as usize - 1).min(steps.len() - 1)].clone();
        let sleep = Duration::from_millis(step["sleep_ms"].as_u64().unwrap_or(0));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = run.cancel.cancelled() => return RunOutcome::cancelled("scripted"),
        }
        match step["do"].as_str().unwrap() {
            "complete" => {
                RunOutcome::completed("scripted", format!("done on attempt {}", run.attempt))
            }
            // The outcome says exactly what the script says, so a retryable
            // `ConfigError` tests the retry policy's own list.
            "fail" => RunOutcome {
                retryable: step["retryable"].as_bool().unwrap_or(true),
                ..RunOutcome::failed(
                    "scripted",
                    format!("attempt {} failed", run.attempt),
                    step["type"]
                        .as_str()
                        .map_or(ErrorType::Runtime, ErrorType::from),
                    true,
                )
            },
            "time_out" => RunOutcome::timed_out("scripted", "deadline passed"),
            "wait_for_cancel" => {
                run.cancel.cancelled().await;
                RunOutcome::cancelled("scripted")
            }
            other => panic!("unknown step {other}"),
        }
    }
}

struct Harness {
    client: TemporalClient,
    worker: TemporalWorker,
    host: Arc<ScriptHost>,
}

async fn start() -> Harness {
    let temporal = TestTemporal::new();
    let config = TemporalConfig {
        host: temporal.address().to_owned(),
        task_queue: temporal.task_queue().to_owned(),
        heartbeat_timeout: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(250),
        timeout_margin: Duration::from_secs(2),
        max_concurrent_activities: 4,
        ..TemporalConfig::default()
    };
    let client = TemporalClient::connect(&config).await.unwrap();
    let host = Arc::new(ScriptHost::default());
    let worker = TemporalWorker::start(&client, host.clone()).await.unwrap();
    Harness {
        client,
        worker,
        host,
    }
}

fn task(steps: Value, max_retries: u32) -> AgentTask {
    AgentTask {
        task_id: uuid::Uuid::new_v4().simple().to_string(),
        payload_json: json!({ "steps": steps }).to_string(),
        timeout_seconds: 30.0,
        max_retries,
        retry_initial_interval_ms: 50,
        retry_max_interval_ms: 200,
        heartbeat_timeout_ms: 2_000,
        timeout_margin_ms: 2_000,
        approval_timeout_ms: 0,
    }
}

async fn run_to_end(harness: &Harness, task: &AgentTask) -> AttemptOutcome {
    let workflow = harness.client.start_or_attach(task).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), workflow.outcome())
        .await
        .expect("the workflow ended in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spend_the_budget_and_outcomes_come_back() {
    let mut harness = start().await;
    // (steps per attempt, max_retries, status, error type, attempts, workflow state)
    let cases = [
        (
            json!([{"do": "complete"}]),
            3,
            OutcomeStatus::Completed,
            None,
            1,
            WorkflowState::Completed,
        ),
        (
            json!([{"do": "fail"}, {"do": "fail"}, {"do": "complete"}]),
            3,
            OutcomeStatus::Completed,
            None,
            3,
            WorkflowState::Completed,
        ),
        (
            json!([{"do": "fail"}]),
            1,
            OutcomeStatus::Failed,
            Some(ErrorType::Runtime),
            2,
            WorkflowState::Failed,
        ),
        (
            json!([{"do": "fail", "type": "ConfigError", "retryable": false}]),
            3,
            OutcomeStatus::Failed,
            Some(ErrorType::Config),
            1,
            WorkflowState::Failed,
        ),
        (
            json!([{"do": "fail", "type": "ConfigError"}]),
            3,
            OutcomeStatus::Failed,
            Some(ErrorType::Config),
            1,
            WorkflowState::Failed,
        ),
        (
            json!([{"do": "time_out"}]),
            0,
            OutcomeStatus::TimedOut,
            Some(ErrorType::Timeout),
            1,
            WorkflowState::Failed,
        ),
        // A run longer than the heartbeat timeout: the timer keeps it alive.
        (
            json!([{"do": "complete", "sleep_ms": 4_500}]),
            0,
            OutcomeStatus::Completed,
            None,
            1,
            WorkflowState::Completed,
        ),
    ];
    for (steps, max_retries, status, error_type, attempts, state) in cases {
        let task = task(steps.clone(), max_retries);
        let ended = run_to_end(&harness, &task).await;
        assert_eq!(
            ended.attempt, attempts,
            "{steps}: the last attempt reported"
        );
        let outcome = ended.outcome;
        assert_eq!(outcome.status, status, "{steps}: {outcome:?}");
        assert_eq!(outcome.error_type, error_type, "{steps}: {outcome:?}");
        assert_eq!(
            outcome.agent_name, "scripted",
            "{steps}: the host's outcome came back"
        );
        assert_eq!(harness.host.attempts(&task.task_id), attempts, "{steps}");
        if status == OutcomeStatus::Completed {
            assert_eq!(outcome.output, format!("done on attempt {attempts}"));
        }
        assert_eq!(
            harness.client.workflow_state(&task.task_id).await.unwrap(),
            state,
            "{steps}"
        );
    }
    harness
        .worker
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claimer_attaches_instead_of_running_the_task_again() {
    let mut harness = start().await;
    let task = task(json!([{"do": "complete", "sleep_ms": 1_000}]), 3);
    let first = harness.client.start_or_attach(&task).await.unwrap();
    let second = harness.client.start_or_attach(&task).await.unwrap();
    assert_eq!(first.workflow_id(), format!("exo-task-{}", task.task_id));
    assert_eq!(
        first.run_id(),
        second.run_id(),
        "attached to the running workflow"
    );
    let (one, two) = tokio::join!(first.outcome(), second.outcome());
    assert_eq!(one.unwrap(), two.unwrap());
    // Once completed, a late claimer gets the recorded result.
    let late = run_to_end(&harness, &task).await;
    assert_eq!(late.outcome.status, OutcomeStatus::Completed);
    assert_eq!(
        harness.host.attempts(&task.task_id),
        1,
        "the agent ran once"
    );

    // A failed workflow is replaced by a new run (a redriven task runs again).
    let failing = self::task(
        json!([{"do": "fail", "retryable": false}, {"do": "complete"}]),
        0,
    );
    assert_eq!(
        run_to_end(&harness, &failing).await.outcome.status,
        OutcomeStatus::Failed
    );
    let again = run_to_end(&harness, &failing).await;
    assert_eq!(
        again.outcome.status,
        OutcomeStatus::Failed,
        "a fresh run starts at attempt 1"
    );
    assert_eq!(harness.host.attempts(&failing.task_id), 2);
    harness
        .worker
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_workflow_stops_its_run() {
    let mut harness = start().await;
    let task = task(json!([{"do": "wait_for_cancel"}]), 3);
    let workflow = harness.client.start_or_attach(&task).await.unwrap();
    let started = tokio::time::Instant::now();
    while harness.host.attempts(&task.task_id) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the activity never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_at = tokio::time::Instant::now();
    workflow.cancel("test").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), workflow.outcome())
        .await
        .unwrap()
        .unwrap()
        .outcome;
    assert_eq!(outcome.status, OutcomeStatus::Cancelled);
    assert_eq!(
        outcome.agent_name, "scripted",
        "the run's outcome rides on the cancel"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "the cancel took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(
        harness.client.workflow_state(&task.task_id).await.unwrap(),
        WorkflowState::Canceled
    );
    assert_eq!(harness.host.attempts(&task.task_id), 1);
    harness
        .worker
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_hands_running_attempts_to_another_worker() {
    let mut harness = start().await;
    let task = task(json!([{"do": "wait_for_cancel"}, {"do": "complete"}]), 3);
    let workflow = harness.client.start_or_attach(&task).await.unwrap();
    let started = tokio::time::Instant::now();
    while harness.host.attempts(&task.task_id) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the activity never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    harness
        .worker
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap();
    // A second worker on the same queue picks up the retry.
    let mut second = TemporalWorker::start(&harness.client, harness.host.clone())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), workflow.outcome())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.outcome.status, OutcomeStatus::Completed);
    assert_eq!(outcome.outcome.output, "done on attempt 2");
    assert_eq!(outcome.attempt, 2);
    second.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_or_namespace_is_a_clear_error() {
    let temporal = TestTemporal::new();
    let cases = [
        (
            TemporalConfig {
                host: format!("127.0.0.1:{}", exo_testkit::free_port()),
                connect_timeout: Duration::from_secs(2),
                ..TemporalConfig::default()
            },
            "is unusable",
        ),
        (
            TemporalConfig {
                host: temporal.address().to_owned(),
                namespace: "no-such-namespace".into(),
                ..TemporalConfig::default()
            },
            "namespace does not exist",
        ),
    ];
    for (config, needle) in cases {
        let error = TemporalClient::connect(&config)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(needle), "{error}");
        assert!(error.contains(&config.host), "{error}");
    }
}
