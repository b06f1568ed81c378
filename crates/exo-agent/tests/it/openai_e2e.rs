//! An agent run through the real OpenAI provider against the fake
//! OpenAI-compatible server: what the model receives on each call (system
//! prompt, history, input, tools with injected arguments, tool results and
//! tool errors), and what the run reports.

use crate::common;

use std::sync::Arc;

use common::{agent, collect, runner, spec};
use exo_agent::OutcomeStatus;
use exo_models::{ProviderFactory, resolve_provider_with_env};
use exo_proto::{ErrorType, Message, StreamEvent};
use exo_testkit::{FakeLlmServer, FakeResponse};
use serde_json::json;

/// Resolves model strings as a worker would, with `OPENAI_BASE_URL`
/// pointing at the fake server.
fn factory(server: &FakeLlmServer) -> ProviderFactory {
    let base_url = server.openai_base_url();
    Arc::new(move |model: &str| {
        let env = |name: &str| (name == "OPENAI_BASE_URL").then(|| base_url.clone());
        resolve_provider_with_env(model, &env)
    })
}

#[tokio::test]
async fn a_tool_run_over_http() {
    let server = FakeLlmServer::openai("It is sunny in Paris.");
    server.push(FakeResponse::openai_tool_calls(&[
        (
            "call_1",
            "get_weather",
            r#"{"city": "Paris", "reason": "asked"}"#,
        ),
        ("call_2", "get_weather", r#"{"city": "#),
    ]));
    let config = agent(
        "helper",
        "openai:gpt-4o-mini",
        json!({
            "instructions": "Be helpful.",
            "tools": ["fixtools.tools.get_weather"],
            "injected_tool_args": {"reason": "Why you call the tool."},
            "temperature": 0.2,
            "max_tokens": 512,
        }),
    );
    let history = vec![Message::user("hi"), Message::assistant("hello", vec![])];
    let run = collect(
        &runner(factory(&server)),
        &spec(config),
        "Weather in Paris?",
        history,
        common::detailed(),
    )
    .await;
    assert_eq!(
        run.outcome.status,
        OutcomeStatus::Completed,
        "{:?}",
        run.outcome
    );
    assert_eq!(run.outcome.output, "It is sunny in Paris.");

    let bodies = server.json_bodies();
    assert_eq!(bodies.len(), 2);
    let first = &bodies[0];
    assert_eq!(first["model"], "gpt-4o-mini");
    assert_eq!(first["stream"], true);
    assert_eq!(first["stream_options"], json!({"include_usage": true}));
    assert_eq!(first["temperature"], 0.2);
    assert_eq!(first["max_tokens"], 512);
    assert_eq!(
        first["messages"],
        json!([
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Weather in Paris?"},
        ])
    );
    assert_eq!(
        first["tools"],
        json!([{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city."},
                        "reason": {"type": "string", "description": "Why you call the tool."},
                    },
                    "required": ["city"],
                },
            },
        }])
    );

    let second = &bodies[1]["messages"];
    assert_eq!(second.as_array().unwrap().len(), 7);
    assert_eq!(
        second[4],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"reason\": \"asked\"}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": "}},
        ]})
    );
    assert_eq!(
        second[5],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny in Paris"})
    );
    assert_eq!(second[6]["tool_call_id"], "call_2");
    let error = second[6]["content"].as_str().unwrap();
    assert!(
        error.starts_with("Error: Invalid JSON arguments for tool 'get_weather': "),
        "{error}"
    );

    let usage_models: Vec<&str> = run
        .events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::Usage(usage) => Some(usage.model.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(usage_models, ["openai:gpt-4o-mini", "openai:gpt-4o-mini"]);
    let tool_results: Vec<(bool, String)> = run
        .events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::ToolResult(result) => Some((
                result.success,
                serde_json::to_string(&result.arguments).unwrap(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        tool_results,
        [
            (true, r#"{"city":"Paris","reason":"asked"}"#.to_owned()),
            (false, "{}".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_http_failure_reports_the_provider_error() {
    let server = FakeLlmServer::start();
    server.set_default(
        FakeResponse::json(
            401,
            &json!({"error": {"message": "bad key", "type": "invalid_request_error"}}),
        )
        .for_path("/chat/completions"),
    );
    let run = collect(
        &runner(factory(&server)),
        &spec(agent("helper", "openai:gpt-4o-mini", json!({}))),
        "hi",
        Vec::new(),
        common::detailed(),
    )
    .await;
    assert_eq!(run.outcome.status, OutcomeStatus::Failed);
    assert_eq!(run.outcome.error_type, Some(ErrorType::Authentication));
    assert_eq!(
        run.outcome.error.as_deref(),
        Some("openai: authentication failed (HTTP 401): bad key")
    );
    assert!(!run.outcome.retryable);
    assert_eq!(
        server.request_count(),
        1,
        "authentication errors are not retried"
    );
}
