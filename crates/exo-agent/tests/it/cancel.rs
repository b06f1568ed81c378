//! Cancellation and deadlines take effect inside tool calls and model
//! streams, promptly; tool calls of one step run concurrently.

use crate::common;

use std::time::{Duration, Instant};

use common::{agent, collect, runner, scripted_factory, spec};
use exo_agent::{OutcomeStatus, RunEvent, RunOptions};
use exo_models::{HttpProviderConfig, OpenAiProvider, RetryPolicy, fixed_factory};
use exo_proto::{ErrorType, RunStatus, StreamEvent};
use exo_testkit::{FakeLlmServer, FakeResponse};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn sleeper(seconds: f64) -> serde_json::Value {
    agent(
        "sleeper",
        &format!(
            "scripted:{}",
            json!([
                {"tool_calls": [{"id": "c1", "name": "sleep", "arguments": {"seconds": seconds}}]},
                {"text": "rested"}
            ])
        ),
        json!({"tools": ["sleep"]}),
    )
}

#[tokio::test]
async fn a_sleeping_tool_is_cancelled_within_a_second() {
    let runner = runner(scripted_factory());
    let spec = spec(sleeper(60.0));
    let cancel = CancellationToken::new();
    let options = RunOptions {
        detailed: false,
        cancel: cancel.clone(),
        deadline: None,
        pause: None,
        ..RunOptions::default()
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    let run =
        tokio::spawn(async move { runner.run(&spec, "rest", Vec::new(), options, sender).await });

    // Wait until the tool is running, then cancel.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await {
            Ok(Some(RunEvent::Stream(StreamEvent::ToolCall(_)))) => break,
            Ok(Some(_)) => continue,
            other => panic!("the tool call never started: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fired = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the run ended after the cancel")
        .unwrap();
    let took = fired.elapsed();
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(outcome.status, OutcomeStatus::Cancelled);
    assert!(!outcome.retryable);
    match outcome.terminal_event() {
        StreamEvent::Status(status) => {
            assert_eq!(status.status, RunStatus::Cancelled);
            assert_eq!(status.message, "Agent 'sleeper' was cancelled");
        }
        other => panic!("not a status event: {other:?}"),
    }
}

#[tokio::test]
async fn a_deadline_stops_a_slow_scripted_stream() {
    let runner = runner(scripted_factory());
    let started = Instant::now();
    let options = RunOptions {
        detailed: true,
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(300)),
        ..RunOptions::default()
    };
    let run = collect(
        &runner,
        &spec(agent("slowpoke", "scripted:slow:60000", json!({}))),
        "hurry",
        Vec::new(),
        options,
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1300),
        "the deadline took {took:?}"
    );
    assert_eq!(run.outcome.status, OutcomeStatus::TimedOut);
    assert_eq!(run.outcome.error_type, Some(ErrorType::Timeout));
    assert!(run.outcome.retryable);
    assert_eq!(run.kinds(), ["status", "step", "error"]);
    match run.outcome.terminal_event() {
        StreamEvent::Status(status) => {
            assert_eq!(status.status, RunStatus::Error);
            assert!(
                status
                    .message
                    .starts_with("Agent 'slowpoke' timed out after 0."),
                "{}",
                status.message
            );
        }
        other => panic!("not a status event: {other:?}"),
    }
}

#[tokio::test]
async fn a_deadline_stops_a_stalled_http_stream() {
    // The server sends the first text chunk, then stalls for a minute.
    let server = FakeLlmServer::start();
    let first = FakeResponse::openai_text("Hello there");
    let mut stalled = FakeResponse::new(200).header("content-type", "text/event-stream");
    stalled.chunks.push(first.chunks[1].clone());
    stalled = stalled.chunk_after(Duration::from_secs(60), first.chunks[2].bytes.clone());
    server.push(stalled);
    let provider = OpenAiProvider::new(
        HttpProviderConfig::openai("gpt-4o-mini", None)
            .with_base_url(server.openai_base_url())
            .with_retry(RetryPolicy::none()),
    );
    let runner = runner(fixed_factory(std::sync::Arc::new(provider)));
    let started = Instant::now();
    let run = collect(
        &runner,
        &spec(agent("helper", "openai:gpt-4o-mini", json!({}))),
        "hi",
        Vec::new(),
        RunOptions {
            deadline: Some(tokio::time::Instant::now() + Duration::from_millis(500)),
            ..RunOptions::default()
        },
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the deadline took {took:?}"
    );
    assert_eq!(run.outcome.status, OutcomeStatus::TimedOut);
    assert_eq!(
        run.text(),
        "Hel",
        "the first chunk arrived before the stall"
    );
}

#[tokio::test]
async fn a_deadline_stops_a_tool_call() {
    let runner = runner(scripted_factory());
    let started = Instant::now();
    let run = collect(
        &runner,
        &spec(sleeper(60.0)),
        "rest",
        Vec::new(),
        RunOptions {
            deadline: Some(tokio::time::Instant::now() + Duration::from_millis(300)),
            ..RunOptions::default()
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(1300));
    assert_eq!(run.outcome.status, OutcomeStatus::TimedOut);
    assert_eq!(run.kinds(), ["tool_call", "error"]);
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_does_nothing() {
    let runner = runner(scripted_factory());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let run = collect(
        &runner,
        &spec(agent(
            "helper",
            "scripted:weather",
            json!({"tools": ["get_weather"]}),
        )),
        "hi",
        Vec::new(),
        RunOptions {
            detailed: true,
            cancel,
            deadline: None,
            pause: None,
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(run.outcome.status, OutcomeStatus::Cancelled);
    assert!(run.events.is_empty(), "{:?}", run.events);
}

#[tokio::test]
async fn tool_calls_of_one_step_run_concurrently_and_report_in_call_order() {
    let runner = runner(scripted_factory());
    let config = agent(
        "parallel",
        &format!(
            "scripted:{}",
            json!([
                {"tool_calls": [
                    {"id": "slow", "name": "sleep", "arguments": {"seconds": 0.4}},
                    {"id": "fast", "name": "sleep", "arguments": {"seconds": 0.1}},
                    {"id": "also", "name": "sleep", "arguments": {"seconds": 0.4}}
                ]},
                {"text": "done"}
            ])
        ),
        json!({"tools": ["sleep"]}),
    );
    let started = Instant::now();
    let run = collect(&runner, &spec(config), "go", Vec::new(), common::detailed()).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(750),
        "three sleeps took {took:?}"
    );
    let results: Vec<&str> = run
        .events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::ToolResult(result) => Some(result.tool_call_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(results, ["slow", "fast", "also"]);
    assert_eq!(run.outcome.output, "done");
}

#[tokio::test]
async fn a_paused_run_starts_no_call_until_resumed_and_cancel_still_works() {
    let (pause, paused) = tokio::sync::watch::channel(true);
    let runner = runner(scripted_factory());
    let spec = spec(agent(
        "helper",
        "scripted:weather",
        json!({"tools": ["get_weather"]}),
    ));
    let options = RunOptions {
        detailed: true,
        pause: Some(paused.clone()),
        ..RunOptions::default()
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    let run = {
        let (runner, spec) = (runner.clone(), spec.clone());
        tokio::spawn(async move { runner.run(&spec, "hi", Vec::new(), options, sender).await })
    };
    // Paused before its first model call: nothing but the start status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(event) = receiver.try_recv() {
        assert!(
            !matches!(
                event,
                RunEvent::Stream(StreamEvent::Text(_) | StreamEvent::ToolCall(_))
            ),
            "a paused run made a call: {event:?}"
        );
    }
    assert!(!run.is_finished());
    pause.send(false).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the resumed run ended")
        .unwrap();
    assert_eq!(outcome.status, OutcomeStatus::Completed);

    // A cancel ends a paused run at once.
    pause.send(true).unwrap();
    let cancel = CancellationToken::new();
    let options = RunOptions {
        cancel: cancel.clone(),
        pause: Some(paused),
        ..RunOptions::default()
    };
    let (sender, _receiver) = tokio::sync::mpsc::channel(64);
    let run =
        tokio::spawn(async move { runner.run(&spec, "hi", Vec::new(), options, sender).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("the paused run was cancelled promptly")
        .unwrap();
    assert_eq!(outcome.status, OutcomeStatus::Cancelled);
    drop(pause);
}
