//! `exo start worker --executor temporal` end to end: worker processes on a
//! real Redis and a real Temporal dev server. A worker killed in the middle
//! of an activity loses nothing (Temporal retries the attempt on another
//! worker), a cancel through the CLI cancels the workflow, and an
//! unreachable Temporal stops the worker with a clear error.
//!
//! Needs `target/debug/exo` built with the `temporal` feature:
//! `cargo build -p exo-cli --features temporal`, then
//! `cargo test -p exo-e2e --features temporal --test it -- temporal::`.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use exo_e2e::{Target, WorkerProcess, agent_file, eventually};
use exo_testkit::{TestRedis, TestTemporal};
use serde_json::{Value, json};

/// Fails with instructions unless the `exo` binary has the `temporal`
/// feature. Bad Temporal settings make such a binary exit at once, before
/// connecting to anything; one without the feature says so instead.
fn require_temporal_binary(target: &Target) {
    let output = target
        .command()
        .env("EXO_REDIS_URL", "redis://127.0.0.1:1")
        .env("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "soon")
        .args(["start", "worker", "--executor", "temporal"])
        .output()
        .expect("run exo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("`temporal` feature"),
        "target/debug/exo was built without the `temporal` feature; run \
         `cargo build -p exo-cli --features temporal` first:\n{stderr}"
    );
    assert!(
        stderr.contains("EXO_TEMPORAL_HEARTBEAT_TIMEOUT"),
        "unexpected answer to bad Temporal settings:\n{stderr}"
    );
}

/// Starts an `exo start worker --executor temporal` process on the test's
/// Redis and Temporal task queue, with a 2 s activity heartbeat timeout,
/// waits for it to start and checks that its banner names that Temporal.
fn start_temporal_worker(target: &Target, temporal: &TestTemporal, args: &[&str]) -> WorkerProcess {
    let mut command = target.command();
    command
        .env("TEMPORAL_HOST", temporal.address())
        .env("TEMPORAL_NAMESPACE", "default")
        .env("EXO_TEMPORAL_TASK_QUEUE", temporal.task_queue())
        .env("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "2")
        .stdin(Stdio::null())
        .args([
            "start",
            "worker",
            "--executor",
            "temporal",
            "--builtin-tools",
        ])
        .args(["--log-format", "compact"])
        .args(args)
        .env("RUST_LOG", "info");
    let worker = WorkerProcess::start(command);
    let stdout = worker.stdout();
    let expected = format!(
        "temporal:    {} (namespace default, task queue {})",
        temporal.address(),
        temporal.task_queue()
    );
    assert!(stdout.contains("executor:    temporal"), "{stdout}");
    assert!(
        stdout.contains(&expected),
        "`{expected}` missing:\n{stdout}"
    );
    worker
}

/// SIGTERM, then waits for a clean exit.
fn stop(worker: &mut WorkerProcess) {
    worker.signal("TERM");
    let status = worker.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "the worker exited with {status}:\n{}",
        worker.stderr()
    );
}

fn status_of(target: &Target, task_id: &str) -> Value {
    target.json(&["task", "status", task_id])
}

fn is_terminal(event: &Value) -> bool {
    event["type"] == "status"
        && ["completed", "error", "cancelled"].contains(&event["status"].as_str().unwrap_or(""))
}

fn submit(target: &Target, agent: &std::path::Path) -> String {
    let submitted = target.json(&[
        "task",
        "submit",
        "--agent",
        agent.to_str().unwrap(),
        "--input",
        "x",
        "--detailed",
    ]);
    submitted["task_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_worker_killed_mid_activity_loses_nothing() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    require_temporal_binary(&target);
    let temporal = TestTemporal::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "slow", "model": "scripted:slow:4000"}),
    );
    let fast_failover = [
        "--concurrency",
        "1",
        "--heartbeat-ttl",
        "2",
        "--lease",
        "10",
    ];
    let mut victim = start_temporal_worker(&target, &temporal, &fast_failover);
    let task_id = submit(&target, &agent);
    // The activity runs on the victim (the only poller) once the run's
    // first event is in the stream.
    eventually(
        Duration::from_secs(20),
        "the activity to start on the victim",
        || {
            let status = status_of(&target, &task_id);
            (status["status"] == "running"
                && status["worker_id"] == json!(victim.worker_id)
                && !target.events(&task_id).is_empty())
            .then_some(())
        },
    );
    // SIGKILL, as a crash would.
    victim.signal("KILL");
    victim.wait(Duration::from_secs(30));
    let started = Instant::now();
    let mut survivor = start_temporal_worker(&target, &temporal, &fast_failover);
    let status = eventually(
        Duration::from_secs(60),
        "the task to complete on the survivor",
        || {
            let status = status_of(&target, &task_id);
            (status["status"] == "completed").then_some(status)
        },
    );
    let took = started.elapsed();
    assert_eq!(status["worker_id"], json!(survivor.worker_id));
    assert_eq!(status["result"], json!({"output": "Done after 4000 ms."}));
    let events = target.events(&task_id);
    let terminal: Vec<&Value> = events.iter().filter(|event| is_terminal(event)).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {events:#?}");
    assert_eq!(terminal[0]["status"], "completed");
    assert!(is_terminal(events.last().unwrap()), "{events:#?}");
    assert!(
        events.iter().any(|event| event["type"] == "status"
            && event["status"] == "running"
            && event["message"]
                .as_str()
                .is_some_and(|text| text.contains("starts on Temporal"))),
        "Temporal retried the attempt on the survivor: {events:#?}"
    );
    assert_eq!(
        temporal
            .workflow_status(&format!("exo-task-{task_id}"))
            .as_deref(),
        Some("Completed")
    );
    assert!(took < Duration::from_secs(60), "failover took {took:?}");
    stop(&mut survivor);
}

#[test]
fn a_run_killed_in_step_4_resumes_from_the_journal_under_temporal() {
    let redis = TestRedis::new();
    require_temporal_binary(&Target::of(&redis));
    let temporal = TestTemporal::new();
    let task_id = crate::journal::killed_in_step_4(
        &redis,
        &|target, args| start_temporal_worker(target, &temporal, args),
        false,
    );
    // Each model call and each tool call was its own activity: four model
    // calls with a tool each, then the answer. The killed step 4 is one
    // activity with two attempts.
    let events = history(&temporal, &task_id);
    let count = |kind: &str| events.iter().filter(|event| is_event(event, kind)).count();
    assert_eq!(
        (
            count("ActivityTaskScheduled"),
            count("ActivityTaskCompleted")
        ),
        (9, 9),
        "one activity per step: {events:#?}"
    );
}

/// The events of a workflow's history, from `temporal workflow show`.
fn history(temporal: &TestTemporal, task_id: &str) -> Vec<Value> {
    let output = temporal.cli(&[
        "workflow",
        "show",
        "--workflow-id",
        &format!("exo-task-{task_id}"),
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let history: Value = serde_json::from_slice(&output.stdout).unwrap();
    history["events"].as_array().cloned().unwrap_or_default()
}

/// Standard base64, as the CLI prints payloads.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let Some(value) = ALPHABET.iter().position(|letter| *letter == byte) else {
            continue;
        };
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    bytes
}

/// Whether an event of a history is of `kind` (`WorkflowExecutionSignaled`,
/// ...), whichever spelling the CLI uses.
fn is_event(event: &Value, kind: &str) -> bool {
    let spelled = event["eventType"]
        .as_str()
        .unwrap_or("")
        .replace('_', "")
        .to_ascii_lowercase();
    spelled.trim_start_matches("eventtype") == kind.to_ascii_lowercase()
}

#[test]
fn an_approval_under_temporal_frees_the_slot_and_arrives_as_a_signal() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    require_temporal_binary(&target);
    let temporal = TestTemporal::new();
    let dir = tempfile::tempdir().unwrap();
    let gated = agent_file(
        dir.path(),
        "gated.json",
        &json!({"name": "gated", "model": "scripted:weather",
            "tools": ["fixtools.tools.get_weather"], "hitl_tools": ["get_weather"]}),
    );
    let echo = agent_file(
        dir.path(),
        "echo.json",
        &json!({"name": "echoer", "model": "scripted:echo"}),
    );
    // A waiting workflow asks every second whether its task was cancelled
    // (a sixtieth of the approval timeout, at least 1 s).
    let mut worker = start_temporal_worker(
        &target,
        &temporal,
        &["--concurrency", "1", "--approval-timeout", "30"],
    );
    let task_id = submit(&target, &gated);
    let waiting = eventually(Duration::from_secs(30), "the task to wait", || {
        let status = status_of(&target, &task_id);
        (status["waiting_for"] == "approval").then_some(status)
    });
    assert_eq!(waiting["approval"]["tool_name"], "get_weather");
    assert_eq!(
        temporal
            .workflow_status(&format!("exo-task-{task_id}"))
            .as_deref(),
        Some("Running"),
        "the workflow waits for the decision's signal"
    );
    // The one slot is free: another task runs meanwhile.
    let other = submit(&target, &echo);
    target.wait_for_status(&other, "completed", Duration::from_secs(30));
    let output = target.run(&["task", "approve", &task_id, "--by", "ada"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = target.wait_for_status(&task_id, "completed", Duration::from_secs(60));
    assert_eq!(
        done["result"],
        json!({"output": "Let me check. It is sunny in Paris."})
    );
    assert_eq!(
        temporal
            .workflow_status(&format!("exo-task-{task_id}"))
            .as_deref(),
        Some("Completed")
    );
    // One workflow run: the decision arrived as a signal that records who
    // decided, and each step was an activity (model call, tool, answer).
    let events = history(&temporal, &task_id);
    let signals: Vec<&Value> = events
        .iter()
        .filter(|event| is_event(event, "WorkflowExecutionSignaled"))
        .collect();
    assert_eq!(signals.len(), 1, "{events:#?}");
    let attributes = &signals[0]["workflowExecutionSignaledEventAttributes"];
    assert_eq!(attributes["signalName"], "decided");
    let decision: Value = serde_json::from_slice(&base64_decode(
        attributes["input"]["payloads"][0]["data"]
            .as_str()
            .unwrap_or(""),
    ))
    .unwrap();
    assert_eq!(decision["by"], "ada", "{decision}");
    assert_eq!(decision["approved"], true, "{decision}");
    assert_eq!(
        decision["tool_call_id"],
        waiting["approval"]["tool_call_id"]
    );
    // Each step an activity: the model call (whose activity ends as the
    // call waits), then the tool, then the answer.
    let steps = events
        .iter()
        .filter(|event| {
            is_event(event, "ActivityTaskScheduled")
                && event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
                    == "execute_agent"
        })
        .count();
    let failed = events
        .iter()
        .filter(|event| is_event(event, "ActivityTaskFailed"))
        .count();
    assert_eq!((steps, failed), (3, 1), "{events:#?}");
    let stream = target.events(&task_id);
    let terminal: Vec<&Value> = stream.iter().filter(|event| is_terminal(event)).collect();
    assert_eq!(terminal.len(), 1, "{stream:#?}");
    assert!(
        stream
            .iter()
            .any(|event| event["approval"]["by"] == "ada" && event["approval"]["approved"] == true),
        "{stream:#?}"
    );
    let calls = stream
        .iter()
        .filter(|event| event["type"] == "tool_call")
        .count();
    assert_eq!(calls, 1, "the replayed call is not repeated: {stream:#?}");

    // No decision before the payload's deadline: the reaper denies the call
    // and the denial reaches the workflow the same way.
    let timed_out = target.json(&[
        "task",
        "submit",
        "--agent",
        gated.to_str().unwrap(),
        "--input",
        "Weather?",
        "--metadata",
        r#"{"approval_timeout_seconds": 1}"#,
    ])["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = eventually(Duration::from_secs(60), "the denied task to end", || {
        let status = status_of(&target, &timed_out);
        ["completed", "failed"]
            .contains(&status["status"].as_str().unwrap_or(""))
            .then_some(status)
    });
    assert_eq!(ended["status"], "completed", "{ended}");
    let stream = target.events(&timed_out);
    assert!(
        stream
            .iter()
            .any(|event| event["approval"]["by"] == "exo" && event["approval"]["approved"] == false),
        "{stream:#?}"
    );
    assert_eq!(
        temporal
            .workflow_status(&format!("exo-task-{timed_out}"))
            .as_deref(),
        Some("Completed")
    );

    // Cancelled while it waits: the task ends at once, and its workflow
    // learns it at its next check.
    let cancelled = submit(&target, &gated);
    eventually(Duration::from_secs(30), "the task to wait", || {
        (status_of(&target, &cancelled)["waiting_for"] == "approval").then_some(())
    });
    let output = target.run(&["task", "cancel", &cancelled]);
    assert!(output.status.success());
    target.wait_for_status(&cancelled, "cancelled", Duration::from_secs(10));
    eventually(
        Duration::from_secs(20),
        "the workflow to end cancelled",
        || {
            let status = temporal.workflow_status(&format!("exo-task-{cancelled}"));
            matches!(status.as_deref(), Some("Canceled" | "Cancelled")).then_some(())
        },
    );
    stop(&mut worker);
}

#[test]
fn a_cancel_through_the_cli_cancels_the_workflow() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    require_temporal_binary(&target);
    let temporal = TestTemporal::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "slow", "model": "scripted:slow:60000"}),
    );
    let mut worker = start_temporal_worker(&target, &temporal, &[]);
    let task_id = submit(&target, &agent);
    eventually(Duration::from_secs(20), "the activity to start", || {
        (!target.events(&task_id).is_empty()).then_some(())
    });
    let cancelled = target.json(&["task", "cancel", &task_id]);
    assert_eq!(cancelled["result"], "cancelling");
    let started = Instant::now();
    let output = target.run(&["task", "events", &task_id, "--follow"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the cancel took {:?}",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("● cancelled"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(status_of(&target, &task_id)["status"], "cancelled");
    let events = target.events(&task_id);
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "status", "status": "cancelled", "agent_name": "slow", "message": "Agent 'slow' was cancelled"})
    );
    let workflow_id = format!("exo-task-{task_id}");
    assert_eq!(
        temporal.workflow_status(&workflow_id).as_deref(),
        Some("Canceled")
    );
    // And as an operator would check it, with the temporal CLI.
    let described = temporal.cli(&["workflow", "describe", "--workflow-id", &workflow_id]);
    assert!(
        String::from_utf8_lossy(&described.stdout).contains("CANCELED"),
        "{}",
        String::from_utf8_lossy(&described.stdout)
    );
    stop(&mut worker);
}

#[test]
fn an_unreachable_temporal_stops_the_worker_with_a_clear_error() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    require_temporal_binary(&target);
    let address = format!("127.0.0.1:{}", exo_testkit::free_port());
    let started = Instant::now();
    let output = target
        .command()
        .env("TEMPORAL_HOST", &address)
        .args(["start", "worker", "--executor", "temporal"])
        .output()
        .expect("run exo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Temporal server {address} (namespace `default`) is unusable"
        )),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
