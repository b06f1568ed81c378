//! Swarms in their three modes, on the scripted provider: who runs, on
//! what input, with which model, and what the task's stream sees.

use std::sync::{Arc, Mutex};

use crate::common::{agent, assert_summary, collect, runner, scripted_factory, spec, summary};
use exo_agent::{OutcomeStatus, RunOptions};
use exo_models::ProviderFactory;
use exo_proto::{ErrorType, StreamEvent};
use serde_json::{Value, json};

fn script(turns: Value) -> String {
    format!("scripted:{turns}")
}

/// A scripted factory that also records every model string it is asked
/// for.
fn recording_factory() -> (ProviderFactory, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = scripted_factory();
    let record = Arc::clone(&seen);
    let factory: ProviderFactory = Arc::new(move |model: &str| {
        record.lock().unwrap().push(model.to_owned());
        inner(model)
    });
    (factory, seen)
}

async fn check(case: &str, swarm: Value, input: &str, detailed: bool, expected: &str) {
    let run = collect(
        &runner(scripted_factory()),
        &spec(swarm),
        input,
        Vec::new(),
        RunOptions {
            detailed,
            ..RunOptions::default()
        },
    )
    .await;
    assert!(
        !run.events.iter().any(StreamEvent::is_terminal),
        "{case}: a member emitted a terminal status"
    );
    assert_summary(case, &summary(&run), expected);
}

#[tokio::test]
async fn workflow_pipes_each_stage_into_the_next() {
    let swarm = json!({
        "agents": [
            agent("alpha", &script(json!([{"text": "alpha says hi"}])), json!({})),
            agent("bravo", "scripted:echo", json!({})),
            agent("charlie", &script(json!([{"text": "charlie was here"}])), json!({})),
            agent("delta", "scripted:echo", json!({})),
        ],
        "flow": "alpha >> (bravo | charlie) >> delta",
        "mode": "workflow",
    });
    // Echo splits its answer into up to 10 chunks; the plain summary shows
    // each.
    let run = collect(
        &runner(scripted_factory()),
        &spec(swarm.clone()),
        "start",
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(run.outcome.status, OutcomeStatus::Completed);
    assert_eq!(run.outcome.output, "alpha says hi\n\ncharlie was here");
    assert!(run.outcome.is_swarm);
    assert_eq!(run.outcome.agent_name, "alpha+bravo+charlie+delta");
    let by_agent = |name: &str| -> String {
        run.events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::Text(text) if text.agent_name == name => Some(text.text.as_str()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(by_agent("alpha"), "alpha says hi");
    assert_eq!(by_agent("bravo"), "alpha says hi");
    assert_eq!(by_agent("charlie"), "charlie was here");
    assert_eq!(by_agent("delta"), "alpha says hi\n\ncharlie was here");
    match run.outcome.terminal_event() {
        StreamEvent::Status(status) => assert_eq!(
            status.message,
            "Swarm 'alpha+bravo+charlie+delta' completed execution"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn each_member_gets_its_own_provider() {
    let (factory, seen) = recording_factory();
    let swarm = json!({
        "agents": [
            agent("first", "openai:scripted-unused", json!({})),
            agent("second", "mock:echo", json!({})),
        ],
        "mode": "workflow",
    });
    // `openai:scripted-unused` makes the scripted factory fail: the swarm
    // must fail before it starts, naming the member and its model.
    let run = collect(
        &runner(Arc::clone(&factory)),
        &spec(swarm),
        "x",
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(run.outcome.error_type, Some(ErrorType::Config));
    assert!(
        run.outcome
            .error
            .as_deref()
            .unwrap()
            .starts_with("agent `first`: model `openai:scripted-unused`"),
        "{:?}",
        run.outcome.error
    );

    seen.lock().unwrap().clear();
    let swarm = json!({
        "agents": [
            agent("first", "scripted:weather", json!({"tools": ["get_weather"]})),
            agent("second", "mock:echo", json!({})),
        ],
        "mode": "workflow",
    });
    let run = collect(
        &runner(factory),
        &spec(swarm),
        "Weather?",
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(*seen.lock().unwrap(), ["scripted:weather", "mock:echo"]);
    assert_eq!(run.outcome.output, "Let me check. It is sunny in Paris.");
}

#[tokio::test]
async fn a_failing_member_fails_the_workflow() {
    check(
        "failing member",
        json!({
            "agents": [
                agent("first", "scripted:fail", json!({})),
                agent("second", "scripted:echo", json!({})),
            ],
            "mode": "workflow",
        }),
        "x",
        true,
        r#"
        status first: starting "Agent 'first' starting execution"
        step first 1 Started
        error first: RuntimeError step=Some(1): provider down
        outcome: Failed RuntimeError retryable=true: provider down
        output: ""
        "#,
    )
    .await;
}

#[tokio::test]
async fn handoff_follows_the_named_member() {
    check(
        "handoff",
        json!({
            "agents": [
                agent("triage", &script(json!([{"text": "billing: customer wants a refund"}])), json!({})),
                agent("billing", "scripted:echo", json!({})),
                agent("support", &script(json!([{"text": "not me"}])), json!({})),
            ],
            "mode": "handoff",
        }),
        "I want my money back",
        false,
        r#"
        text triage: "billing: customer wants a refund"
        text billing: "cus"
        text billing: "tom"
        text billing: "er "
        text billing: "wa"
        text billing: "nt"
        text billing: "s "
        text billing: "a "
        text billing: "re"
        text billing: "fu"
        text billing: "nd"
        outcome: Completed
        output: "customer wants a refund"
        "#,
    )
    .await;
}

#[tokio::test]
async fn handoff_ping_pong_is_bounded() {
    check(
        "max_handoffs",
        json!({
            "agents": [
                agent("ping", &script(json!([{"text": "pong"}, {"text": "pong"}, {"text": "pong"}])), json!({})),
                agent("pong", &script(json!([{"text": "ping"}, {"text": "ping"}, {"text": "ping"}])), json!({})),
            ],
            "mode": "handoff",
            "max_handoffs": 2,
        }),
        "serve",
        false,
        r#"
        text ping: "pong"
        text pong: "ping"
        text ping: "pong"
        error ping+pong: MaxHandoffsExceeded step=None: Swarm 'ping+pong' exceeded max_handoffs (2): 'ping' handed off to 'pong'
        outcome: Failed MaxHandoffsExceeded retryable=false: Swarm 'ping+pong' exceeded max_handoffs (2): 'ping' handed off to 'pong'
        output: ""
        "#,
    )
    .await;
}

#[tokio::test]
async fn team_lead_delegates_to_members_as_tools() {
    check(
        "team",
        json!({
            "agents": [
                agent("lead", &script(json!([
                    {"text": "Asking the writer. ", "tool_calls": [
                        {"id": "d1", "name": "delegate_to_writer", "arguments": {"task": "a haiku"}}
                    ]},
                    {"text": "Here it is."}
                ])), json!({})),
                agent("writer", "scripted:echo", json!({"instructions": "Write poems.\nShort ones."})),
            ],
            "mode": "team",
        }),
        "Write me a haiku",
        true,
        r#"
        status lead: starting "Agent 'lead' starting execution"
        step lead 1 Started
        text lead: "Asking the writer. "
        delta lead: [0] "d1" "delegate_to_writer" "{\"task\":\"a haiku\"}"
        tool_call lead: d1 delegate_to_writer {"task":"a haiku"}
        status writer: starting "Agent 'writer' starting execution"
        step writer 1 Started
        text writer: "a"
        text writer: " "
        text writer: "h"
        text writer: "a"
        text writer: "i"
        text writer: "k"
        text writer: "u"
        usage writer: step 1 2/2/4 scripted:echo
        step writer 1 Completed
        tool_result lead: d1 delegate_to_writer {"task":"a haiku"} -> "a haiku"
        step lead 1 Completed
        step lead 2 Started
        text lead: "Here it is."
        step lead 2 Completed
        outcome: Completed
        output: "Asking the writer. Here it is."
        "#,
    )
    .await;
}

#[tokio::test]
async fn a_failing_delegate_is_a_tool_error_for_the_lead() {
    check(
        "team with a failing member",
        json!({
            "agents": [
                agent("lead", &script(json!([
                    {"tool_calls": [{"id": "d1", "name": "delegate_to_broken", "arguments": {"task": "x"}}]},
                    {"text": "The member failed."}
                ])), json!({})),
                agent("broken", "scripted:fail:out of ink", json!({})),
            ],
            "mode": "team",
        }),
        "go",
        false,
        r#"
        tool_call lead: d1 delegate_to_broken {"task":"x"}
        error broken: RuntimeError step=Some(1): out of ink
        text lead: "The member failed."
        outcome: Completed
        output: "The member failed."
        "#,
    )
    .await;
}
