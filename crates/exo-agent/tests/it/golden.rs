//! Golden sequences: the scripted provider replaying the reference
//! fixture's model answers produces exactly the reference's events
//! (`exo-proto/test_data`), timestamps and durations aside. `run` emits
//! every event but the terminal status, which comes from the outcome.

use crate::common::{collect, fixed_scripted, fixture_events, fixture_json, normalize, runner};
use exo_agent::{OutcomeStatus, RunOptions};
use exo_proto::{ErrorType, Message, TaskPayload, ToolCall, Usage};
use serde_json::Value;

/// What a golden case expects besides the event sequence.
struct Expect {
    status: OutcomeStatus,
    output: &'static str,
    /// The fixture has the terminal status as its last line.
    terminal_in_fixture: bool,
    /// Take only this many fixture lines (one attempt of a retried task).
    fixture_lines: Option<usize>,
}

/// Runs the fixture payload with `detailed` and the scripted `model`, and
/// compares the events (plus the outcome's terminal event) with
/// `events_file`.
async fn check(payload_file: &str, detailed: bool, model: &str, events_file: &str, expect: Expect) {
    let payload: TaskPayload =
        serde_json::from_value(fixture_json(payload_file)).expect("the fixture payload parses");
    let spec = payload.agent_spec().unwrap();
    let runner = runner(fixed_scripted(model));
    let options = RunOptions {
        detailed,
        ..RunOptions::default()
    };
    let run = collect(
        &runner,
        &spec,
        &payload.input,
        payload.messages.clone(),
        options,
    )
    .await;

    let mut expected = fixture_events(events_file);
    if let Some(lines) = expect.fixture_lines {
        expected.truncate(lines);
    }
    let terminal = normalize(serde_json::to_value(run.outcome.terminal_event()).unwrap());
    let mut actual = run.normalized_events();
    if expect.terminal_in_fixture {
        actual.push(terminal);
    } else {
        assert_eq!(
            terminal,
            serde_json::json!({"type": "status", "status": "completed", "agent_name": "helper",
                "message": "Agent 'helper' completed execution"}),
            "{events_file}: the terminal event"
        );
    }
    let show = |events: &[Value]| {
        events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        show(&actual),
        show(&expected),
        "{events_file}: events differ (left: ours, right: the reference)"
    );
    assert_eq!(run.outcome.status, expect.status, "{events_file}");
    assert_eq!(run.outcome.output, expect.output, "{events_file}");
}

#[tokio::test]
async fn detailed_tool_run_matches_the_reference() {
    check(
        "tool_run_detailed.payload.json",
        true,
        "weather",
        "tool_run_detailed.events.jsonl",
        Expect {
            status: OutcomeStatus::Completed,
            output: "Let me check. It is sunny in Paris.",
            terminal_in_fixture: true,
            fixture_lines: None,
        },
    )
    .await;
}

#[tokio::test]
async fn plain_tool_run_matches_the_reference() {
    check(
        "tool_run_plain.payload.json",
        false,
        "weather",
        "tool_run_plain.events.jsonl",
        Expect {
            status: OutcomeStatus::Completed,
            output: "Let me check. It is sunny in Paris.",
            terminal_in_fixture: false,
            fixture_lines: None,
        },
    )
    .await;
}

#[tokio::test]
async fn first_attempt_of_the_error_run_matches_the_reference() {
    check(
        "tool_run_detailed.payload.json",
        true,
        "fail",
        "error_run.events.jsonl",
        Expect {
            status: OutcomeStatus::Failed,
            output: "",
            terminal_in_fixture: true,
            fixture_lines: Some(4),
        },
    )
    .await;
}

#[tokio::test]
async fn the_error_run_outcome_is_a_retryable_runtime_error() {
    let payload: TaskPayload =
        serde_json::from_value(fixture_json("tool_run_detailed.payload.json")).unwrap();
    let runner = runner(fixed_scripted("fail"));
    let run = collect(
        &runner,
        &payload.agent_spec().unwrap(),
        &payload.input,
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(run.outcome.error.as_deref(), Some("provider down"));
    assert_eq!(run.outcome.error_type, Some(ErrorType::Runtime));
    assert!(run.outcome.retryable, "the reference retries this failure");
    assert_eq!(run.kinds(), ["error"], "a plain run emits only the error");
}

#[tokio::test]
async fn the_tool_run_reports_usage_and_conversation_messages() {
    let payload: TaskPayload =
        serde_json::from_value(fixture_json("tool_run_detailed.payload.json")).unwrap();
    let runner = runner(fixed_scripted("weather"));
    let run = collect(
        &runner,
        &payload.agent_spec().unwrap(),
        &payload.input,
        payload.messages.clone(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(
        run.outcome.usage,
        Usage {
            input_tokens: 30,
            output_tokens: 11,
            total_tokens: 41
        }
    );
    assert_eq!(
        run.outcome.result_json(),
        serde_json::json!({"output": "Let me check. It is sunny in Paris."})
    );
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: "{\"city\": \"Paris\"}".into(),
    };
    let expected = vec![
        (
            "helper".to_owned(),
            Message::assistant("Let me check. ", vec![call]),
        ),
        (
            "helper".to_owned(),
            Message::Tool {
                tool_call_id: "call_1".into(),
                tool_name: "get_weather".into(),
                content: "sunny in Paris".into(),
                error: None,
            },
        ),
        (
            "helper".to_owned(),
            Message::assistant("It is sunny in Paris.", vec![]),
        ),
    ];
    assert_eq!(run.messages, expected);
}
