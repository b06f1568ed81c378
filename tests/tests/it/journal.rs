//! The step journal and approvals with real worker processes: a worker
//! SIGKILLed in the middle of a five-step run leaves a journal that the next
//! worker replays (the provider and the tools see each finished step once),
//! and calls to `hitl_tools` wait for a person with the slot freed.

use std::{collections::BTreeMap, time::Duration};

use exo_e2e::{Target, WorkerProcess, agent_file, eventually};
use exo_testkit::{FakeLlmServer, FakeResponse, TestRedis, redis_command};
use serde_json::{Value, json};

/// The port of a `redis://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// `LLEN` of a key, through the raw protocol.
fn list_length(redis: &TestRedis, key: &str) -> usize {
    let reply = redis_command(port_of(redis.url()), &["LLEN", key]).expect("LLEN");
    reply
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("LLEN {key}: {reply}"))
}

/// How many tool results the chat request carries: which step it asks for.
fn tool_results_in(body: &Value) -> usize {
    body["messages"].as_array().map_or(0, |messages| {
        messages
            .iter()
            .filter(|message| message["role"] == "tool")
            .count()
    })
}

#[test]
fn a_run_killed_in_step_4_resumes_from_the_journal_on_another_worker() {
    let redis = TestRedis::new();
    killed_in_step_4(&redis, &|target, args| target.start_worker(args), true);
}

/// A five-step run (four `http_request` calls, then an answer) whose worker
/// is SIGKILLed while step 4 waits for the provider; `start` starts a
/// worker process with the given arguments. The provider must see steps 1-3
/// once and each tool must run once. `new_attempt` says whether the resumed
/// run is a new attempt of the Redis task (under Temporal, the activity is
/// retried within the same attempt, or the task is reclaimed: either way).
pub(crate) fn killed_in_step_4(
    redis: &TestRedis,
    start: &dyn Fn(&Target, &[&str]) -> WorkerProcess,
    new_attempt: bool,
) -> String {
    let provider = FakeLlmServer::start();
    let base = provider.base_url();
    let step = |number: usize| {
        FakeResponse::openai_tool_calls(&[(
            &format!("call_{number}"),
            "http_request",
            &json!({"url": format!("{base}/step/{number}"), "method": "POST",
                "body": {"step": number}})
            .to_string(),
        )])
    };
    provider.push(step(1));
    provider.push(step(2));
    provider.push(step(3));
    // Step 4 of the first worker never answers: it is killed waiting.
    provider.push(
        FakeResponse::new(200)
            .header("content-type", "text/event-stream")
            .chunk_after(Duration::from_secs(90), "data: [DONE]\n\n")
            .for_path("/chat/completions"),
    );
    provider.push(step(4));
    provider.push(FakeResponse::openai_text("All four steps are done."));
    for number in 1..=4 {
        provider.push(
            FakeResponse::json(200, &json!({"ok": true, "step": number}))
                .for_path(&format!("/step/{number}")),
        );
    }

    let target = Target::of(redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "stepper", "model": "openai:gpt-4o-mini", "tools": ["http_request"],
            "max_steps": 10}),
    );
    let worker_args = [
        "--concurrency",
        "1",
        "--heartbeat-ttl",
        "2",
        "--lease",
        "10",
        "--http-tool-allow",
        &format!("{base}/step/"),
    ];
    let victim = start(&target, &worker_args);
    let task_id = target.submit(&agent, "Do the four steps.");
    let journal = format!("{}journal:{task_id}", redis.prefix());
    // Three model calls and three tools finished: the run is in step 4.
    eventually(Duration::from_secs(30), "six journal records", || {
        (list_length(redis, &journal) == 6).then_some(())
    });
    eventually(Duration::from_secs(10), "the fourth model request", || {
        (provider
            .json_bodies()
            .iter()
            .filter(|body| tool_results_in(body) == 3)
            .count()
            == 1)
            .then_some(())
    });
    victim.signal("KILL");
    let survivor = start(&target, &worker_args);
    let status = target.wait_for_status(&task_id, "completed", Duration::from_secs(60));
    assert_eq!(status["worker_id"], json!(survivor.worker_id));
    if new_attempt {
        assert_eq!(
            status["retries"], 1,
            "the lost attempt counts as a retry: {status}"
        );
    }
    assert_eq!(
        status["result"]["output"], "All four steps are done.",
        "{status}"
    );

    // The provider saw steps 1-3 once, step 4 twice (the killed request
    // and the survivor's), and step 5 once.
    let requests = provider.requests();
    let bodies: Vec<Value> = requests
        .iter()
        .filter(|request| request.path_only().ends_with("/chat/completions"))
        .map(|request| request.json())
        .collect();
    let mut counts = BTreeMap::new();
    for body in &bodies {
        *counts.entry(tool_results_in(body) + 1).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 2), (5, 1)]),
        "model requests per step"
    );
    // The survivor's step-4 request carries the three replayed results.
    let step_4: Vec<&Value> = bodies
        .iter()
        .filter(|body| tool_results_in(body) == 3)
        .collect();
    assert_eq!(
        step_4[0]["messages"], step_4[1]["messages"],
        "the resumed run asks the provider exactly what the killed one asked"
    );

    // Each tool ran once, with a stable idempotency key.
    let side_effects: Vec<_> = requests
        .iter()
        .filter(|request| request.path_only().contains("/step/"))
        .collect();
    let paths: Vec<&str> = side_effects
        .iter()
        .map(|request| request.path_only())
        .collect();
    assert_eq!(paths, ["/step/1", "/step/2", "/step/3", "/step/4"]);
    for request in &side_effects {
        let key = request
            .header("idempotency-key")
            .expect("an Idempotency-Key");
        assert!(key.starts_with(&format!("{task_id}/")), "{key}");
    }

    // The stream does not repeat what was replayed: four tool calls, one
    // terminal event.
    let events = target.events(&task_id);
    let calls = events
        .iter()
        .filter(|event| event["type"] == "tool_call")
        .count();
    assert_eq!(calls, 4, "{events:#?}");
    let terminal = events
        .iter()
        .filter(|event| {
            event["type"] == "status"
                && ["completed", "error", "cancelled"]
                    .contains(&event["status"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(terminal, 1);
    // A finished task keeps no journal.
    assert_eq!(list_length(redis, &journal), 0);
    task_id
}

/// Waits until the task waits for approval and returns its status JSON.
fn wait_for_approval(target: &Target, task_id: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        &format!("task {task_id} to wait for approval"),
        || {
            let status = target.status(task_id);
            (status["waiting_for"] == "approval").then_some(status)
        },
    )
}

#[test]
fn approvals_approve_deny_time_out_and_cancel_while_the_slot_serves_others() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
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
    // One slot: every other task runs while a gated one waits.
    let worker = target.start_worker(&["--concurrency", "1", "--approval-timeout", "600"]);

    // Approved, with changed arguments.
    let approved = target.submit(&gated, "Weather?");
    let waiting = wait_for_approval(&target, &approved);
    assert_eq!(waiting["status"], "pending");
    assert_eq!(waiting["approval"]["tool_name"], "get_weather");
    assert!(waiting["approval_deadline"].as_f64().is_some(), "{waiting}");
    let other = target.submit(&echo, "meanwhile");
    target.wait_for_status(&other, "completed", Duration::from_secs(20));
    let output = target.run(&[
        "task",
        "approve",
        &approved,
        "--by",
        "ada",
        "--args",
        r#"{"city": "Rome"}"#,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = target.wait_for_status(&approved, "completed", Duration::from_secs(30));
    assert_eq!(done["waiting_for"], Value::Null);
    let events = target.events(&approved);
    let waiting_event = events
        .iter()
        .find(|event| event["status"] == "waiting_for_tool")
        .expect("a waiting_for_tool event");
    assert_eq!(waiting_event["type"], "status");
    assert_eq!(waiting_event["tool_name"], "get_weather");
    assert_eq!(waiting_event["arguments"], r#"{"city": "Paris"}"#);
    let decision = events
        .iter()
        .find(|event| event.get("approval").is_some())
        .expect("the decision in the events");
    assert_eq!(decision["approval"]["approved"], true);
    assert_eq!(decision["approval"]["by"], "ada");
    let results: Vec<&Value> = events
        .iter()
        .filter(|event| event["type"] == "tool_call")
        .collect();
    assert_eq!(results.len(), 1, "the call shows once: {events:#?}");
    // A second decision is refused: the task no longer waits.
    let again = target.run(&["task", "approve", &approved]);
    assert!(!again.status.success());

    // Denied, with a reason the model sees.
    let denied = target.submit(&gated, "Weather?");
    wait_for_approval(&target, &denied);
    let output = target.run(&[
        "task",
        "deny",
        &denied,
        "--by",
        "grace",
        "--reason",
        "not today",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.wait_for_status(&denied, "completed", Duration::from_secs(30));
    let events = target.events(&denied);
    let decision = events
        .iter()
        .find(|event| event.get("approval").is_some())
        .expect("the decision in the events");
    assert_eq!(decision["approval"]["approved"], false);
    assert_eq!(decision["approval"]["reason"], "not today");

    // No decision before the payload's deadline: denied by exo.
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
    target.wait_for_status(&timed_out, "completed", Duration::from_secs(30));
    let events = target.events(&timed_out);
    let decision = events
        .iter()
        .find(|event| event.get("approval").is_some())
        .expect("the deadline's decision in the events");
    assert_eq!(decision["approval"]["approved"], false);
    assert_eq!(decision["approval"]["by"], "exo");

    // Cancelled while waiting.
    let cancelled = target.submit(&gated, "Weather?");
    wait_for_approval(&target, &cancelled);
    let output = target.run(&["task", "cancel", &cancelled]);
    assert!(output.status.success());
    let status = target.wait_for_status(&cancelled, "cancelled", Duration::from_secs(10));
    assert_eq!(status["waiting_for"], Value::Null);
    let last = target.events(&cancelled).pop().unwrap();
    assert_eq!(last["status"], "cancelled");
    let approve = target.run(&["task", "approve", &cancelled]);
    assert!(
        !approve.status.success(),
        "a cancelled task takes no decision"
    );

    // The worker never held a slot while a task waited, and it is healthy.
    let health = target.run(&["worker", "health", &worker.worker_id]);
    assert_eq!(health.status.code(), Some(0));
}
