//! The HTTP providers against a real local server replaying recorded
//! transcripts (`test_data/{provider}/*.http`). Each case streams one call
//! and compares a readable summary of every chunk (or the error) with
//! `test_data/{provider}/{case}.expected`. Run with `UPDATE_EXPECT=1` to
//! rewrite the expected files after a deliberate change, then review the
//! diff.

use std::{path::PathBuf, sync::Arc, time::Duration};

use exo_models::{
    AnthropicProvider, Completion, Error, GeminiProvider, HttpProviderConfig, ModelProvider,
    ModelRequest, OpenAiProvider, RetryPolicy, StreamChunk, ToolDefinition,
};
use exo_proto::{Message, ToolCall};
use exo_testkit::{FakeLlmServer, FakeResponse};
use futures::StreamExt;
use serde_json::{Value, json};

fn test_data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(path)
}

fn transcript(provider: &str, name: &str) -> FakeResponse {
    let path = test_data(&format!("{provider}/{name}.http"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    FakeResponse::from_transcript(&text)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Compares `actual` with the file `path` under `test_data/`, or rewrites
/// it when `UPDATE_EXPECT=1`.
fn expect_file(path: &str, actual: &str) {
    exo_testkit::expect_file(test_data(path), actual);
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_retry_after: Duration::from_millis(50),
    }
}

fn provider(kind: &str, server: &FakeLlmServer, retry: RetryPolicy) -> Arc<dyn ModelProvider> {
    match kind {
        "openai" => Arc::new(OpenAiProvider::new(
            HttpProviderConfig::openai("gpt-4o-mini", Some("sk-test".into()))
                .with_base_url(server.openai_base_url())
                .with_retry(retry),
        )),
        "anthropic" => Arc::new(AnthropicProvider::new(
            HttpProviderConfig::anthropic("claude-sonnet-4-5", "ak-test")
                .with_base_url(server.base_url())
                .with_retry(retry),
        )),
        "gemini" => Arc::new(GeminiProvider::new(
            HttpProviderConfig::gemini("gemini-2.5-flash", "gk-test")
                .with_base_url(server.base_url())
                .with_retry(retry),
        )),
        other => panic!("no provider {other}"),
    }
}

/// Ids the Gemini provider generates are random; they print as
/// `<generated>`.
fn show_id(id: &str) -> String {
    match id.strip_prefix("call_") {
        Some(rest) if rest.len() == 12 && rest.chars().all(|c| c.is_ascii_hexdigit()) => {
            "<generated>".to_owned()
        }
        _ => id.to_owned(),
    }
}

fn describe_chunk(chunk: &StreamChunk) -> String {
    let mut parts = Vec::new();
    if !chunk.text.is_empty() {
        parts.push(format!("text={:?}", chunk.text));
    }
    if let Some(reasoning) = &chunk.reasoning {
        parts.push(format!("reasoning={reasoning:?}"));
    }
    for call in &chunk.tool_calls {
        let mut part = format!("call[{}]", call.index);
        if let Some(id) = &call.id {
            part.push_str(&format!(" id={}", show_id(id)));
        }
        if let Some(name) = &call.name {
            part.push_str(&format!(" name={name}"));
        }
        part.push_str(&format!(" args={:?}", call.arguments));
        parts.push(part);
    }
    if let Some(reason) = &chunk.finish_reason {
        parts.push(format!("finish={}", reason.as_str()));
    }
    if let Some(usage) = &chunk.usage {
        parts.push(format!(
            "usage={}/{}/{}",
            usage.input_tokens, usage.output_tokens, usage.total_tokens
        ));
    }
    format!("chunk: {}", parts.join("  "))
}

fn describe_error(error: &Error) -> String {
    let head = format!(
        "{} retryable={} retry_after={:?}",
        error.error_type(),
        error.is_retryable(),
        error.retry_after()
    );
    match error {
        // Transport messages come from the HTTP stack and vary; the kind is
        // what matters.
        Error::Transport { .. } => head,
        Error::Interrupted { message, .. } if message.contains("connection closed") => {
            format!("{head}: {error}")
        }
        Error::Interrupted { .. } => head,
        _ => format!("{head}: {error}"),
    }
}

/// Streams one call and summarizes every chunk, the assembled answer and
/// the number of requests the server saw.
async fn summarize(
    provider: &dyn ModelProvider,
    request: &ModelRequest,
    server: &FakeLlmServer,
) -> String {
    let mut lines = Vec::new();
    let mut completion = Completion::default();
    match provider.stream(request).await {
        Err(error) => lines.push(format!("error: {}", describe_error(&error))),
        Ok(mut stream) => {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => {
                        lines.push(describe_chunk(&chunk));
                        completion.push(&chunk);
                    }
                    Err(error) => {
                        lines.push(format!("error: {}", describe_error(&error)));
                        break;
                    }
                }
            }
        }
    }
    lines.push(format!("text: {:?}", completion.text));
    if !completion.reasoning.is_empty() {
        lines.push(format!("reasoning: {:?}", completion.reasoning));
    }
    for call in completion.tool_calls() {
        lines.push(format!(
            "tool call: id={} name={} arguments={}",
            show_id(&call.id),
            call.name,
            call.arguments
        ));
    }
    if let Some(reason) = &completion.finish_reason {
        lines.push(format!("finish: {}", reason.as_str()));
    }
    if let Some(usage) = &completion.usage {
        lines.push(format!(
            "usage: {}/{}/{}",
            usage.input_tokens, usage.output_tokens, usage.total_tokens
        ));
    }
    lines.push(format!("requests: {}", server.request_count()));
    lines.join("\n") + "\n"
}

/// Runs `case` for `provider_kind`: queues the transcripts, streams one
/// call, and compares the summary with `{provider}/{case}.expected`.
async fn check(provider_kind: &str, case: &str, transcripts: &[&str], retry: RetryPolicy) {
    let server = FakeLlmServer::start();
    for name in transcripts {
        server.push(transcript(provider_kind, name));
    }
    let provider = provider(provider_kind, &server, retry);
    let request = ModelRequest::new(vec![Message::user("Weather in Paris?")]);
    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        summarize(provider.as_ref(), &request, &server),
    )
    .await
    .unwrap_or_else(|_| panic!("{provider_kind}/{case} did not finish in 20 s"));
    expect_file(&format!("{provider_kind}/{case}.expected"), &summary);
}

#[tokio::test]
async fn openai_transcripts() {
    let retry = fast_retries();
    check("openai", "text", &["text"], retry).await;
    check("openai", "tool_call_split", &["tool_call_split"], retry).await;
    check(
        "openai",
        "parallel_tool_calls",
        &["parallel_tool_calls"],
        retry,
    )
    .await;
    check("openai", "reasoning", &["reasoning"], retry).await;
    check(
        "openai",
        "rate_limited_then_text",
        &["rate_limited", "text"],
        retry,
    )
    .await;
    check(
        "openai",
        "rate_limited_no_retry",
        &["rate_limited", "text"],
        RetryPolicy::none(),
    )
    .await;
    check(
        "openai",
        "server_errors_exhaust_retries",
        &["server_error", "server_error", "server_error", "text"],
        retry,
    )
    .await;
    check("openai", "hang_up_then_text", &["hang_up", "text"], retry).await;
    check("openai", "unauthorized", &["unauthorized", "text"], retry).await;
    check(
        "openai",
        "context_length",
        &["context_length", "text"],
        retry,
    )
    .await;
    check("openai", "bad_request", &["bad_request", "text"], retry).await;
    check(
        "openai",
        "dropped_mid_stream",
        &["dropped_mid_stream", "text"],
        retry,
    )
    .await;
    check(
        "openai",
        "ended_without_finish",
        &["ended_without_finish", "text"],
        retry,
    )
    .await;
    check("openai", "stream_error", &["stream_error", "text"], retry).await;
}

#[tokio::test]
async fn anthropic_transcripts() {
    let retry = fast_retries();
    check("anthropic", "text", &["text"], retry).await;
    check("anthropic", "tool_use_split", &["tool_use_split"], retry).await;
    check(
        "anthropic",
        "parallel_tool_use",
        &["parallel_tool_use"],
        retry,
    )
    .await;
    check(
        "anthropic",
        "rate_limited_then_text",
        &["rate_limited", "text"],
        retry,
    )
    .await;
    check(
        "anthropic",
        "overloaded_then_text",
        &["overloaded", "text"],
        retry,
    )
    .await;
    check(
        "anthropic",
        "hang_up_then_text",
        &["hang_up", "text"],
        retry,
    )
    .await;
    check(
        "anthropic",
        "unauthorized",
        &["unauthorized", "text"],
        retry,
    )
    .await;
    check(
        "anthropic",
        "context_length",
        &["context_length", "text"],
        retry,
    )
    .await;
    check("anthropic", "error_event", &["error_event", "text"], retry).await;
    check(
        "anthropic",
        "dropped_mid_stream",
        &["dropped_mid_stream", "text"],
        retry,
    )
    .await;
}

#[tokio::test]
async fn gemini_transcripts() {
    let retry = fast_retries();
    check("gemini", "text", &["text"], retry).await;
    check("gemini", "function_call", &["function_call"], retry).await;
    check(
        "gemini",
        "parallel_function_calls",
        &["parallel_function_calls"],
        retry,
    )
    .await;
    check(
        "gemini",
        "rate_limited_then_text",
        &["rate_limited", "text"],
        retry,
    )
    .await;
    check(
        "gemini",
        "server_error_then_text",
        &["server_error", "text"],
        retry,
    )
    .await;
    check("gemini", "hang_up_then_text", &["hang_up", "text"], retry).await;
    check("gemini", "forbidden", &["forbidden", "text"], retry).await;
    check(
        "gemini",
        "context_length",
        &["context_length", "text"],
        retry,
    )
    .await;
    check(
        "gemini",
        "dropped_mid_stream",
        &["dropped_mid_stream", "text"],
        retry,
    )
    .await;
}

/// A conversation with everything a request must carry: a system prompt,
/// history, a tool call, a tool result, a failed tool result, and tools.
fn conversation(call_id: &str) -> ModelRequest {
    ModelRequest {
        messages: vec![
            Message::system("Be helpful."),
            Message::user("hi"),
            Message::assistant("hello", vec![]),
            Message::user("Weather in Paris and Rome?"),
            Message::assistant(
                "Let me check. ",
                vec![
                    ToolCall {
                        id: call_id.to_owned(),
                        name: "get_weather".into(),
                        arguments: r#"{"city": "Paris"}"#.into(),
                    },
                    ToolCall {
                        id: "call_2".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city": "Rome"}"#.into(),
                    },
                ],
            ),
            Message::Tool {
                tool_call_id: call_id.to_owned(),
                tool_name: "get_weather".into(),
                content: "sunny in Paris".into(),
                error: None,
            },
            Message::Tool {
                tool_call_id: "call_2".into(),
                tool_name: "get_weather".into(),
                content: "".into(),
                error: Some("weather service unavailable".into()),
            },
        ],
        tools: vec![ToolDefinition {
            name: "get_weather".into(),
            description: "Get the weather of a city.".into(),
            parameters: json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city."}},
                "required": ["city"],
                "additionalProperties": false
            }),
        }],
        temperature: Some(0.2),
        max_tokens: Some(512),
    }
}

/// Sends `request` to `provider_kind` and compares the body the server
/// received with `{provider}/request.expected.json`; returns the recorded
/// request for more assertions.
async fn check_request(
    provider_kind: &str,
    request: &ModelRequest,
) -> exo_testkit::RecordedRequest {
    let server = FakeLlmServer::start();
    let provider = provider(provider_kind, &server, RetryPolicy::none());
    server.push(transcript(provider_kind, "text"));
    let completion = provider.complete(request).await.unwrap();
    assert_eq!(completion.text, "It is sunny in Paris.");
    let recorded = server.requests().pop().unwrap();
    let body = serde_json::to_string_pretty(&recorded.json()).unwrap() + "\n";
    expect_file(&format!("{provider_kind}/request.expected.json"), &body);
    recorded
}

#[tokio::test]
async fn openai_request_body_and_headers() {
    let recorded = check_request("openai", &conversation("call_1")).await;
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.header("authorization"), Some("Bearer sk-test"));
    let body = recorded.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["messages"][5]["role"], "tool");
    assert_eq!(
        body["messages"][6]["content"],
        "Error: weather service unavailable"
    );
}

#[tokio::test]
async fn anthropic_request_body_and_headers() {
    let recorded = check_request("anthropic", &conversation("call_1")).await;
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.header("x-api-key"), Some("ak-test"));
    assert_eq!(recorded.header("anthropic-version"), Some("2023-06-01"));
    let body = recorded.json();
    assert_eq!(body["system"], "Be helpful.");
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"][0]["type"], "tool_result");
    assert_eq!(last["content"][1]["is_error"], true);
}

#[tokio::test]
async fn gemini_request_body_and_headers() {
    let recorded = check_request("gemini", &conversation("call_1")).await;
    assert_eq!(
        recorded.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(recorded.header("x-goog-api-key"), Some("gk-test"));
    let body = recorded.json();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be helpful.");
    let parameters = &body["tools"][0]["functionDeclarations"][0]["parameters"];
    assert!(parameters.get("additionalProperties").is_none());
    assert!(parameters.get("$schema").is_none());
}

#[tokio::test]
async fn gemini_replays_thought_signatures() {
    // The first call streams a function call with a thought signature; the
    // follow-up request replays that call and must carry the signature.
    let server = FakeLlmServer::start();
    let provider = provider("gemini", &server, RetryPolicy::none());
    server.push(transcript("gemini", "function_call"));
    server.push(transcript("gemini", "text"));
    let first = provider
        .complete(&ModelRequest::new(vec![Message::user("Weather in Paris?")]))
        .await
        .unwrap();
    let call = first.tool_calls()[0].clone();
    let followup = ModelRequest::new(vec![
        Message::user("Weather in Paris?"),
        Message::assistant(first.text.clone(), vec![call.clone()]),
        Message::Tool {
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            content: "sunny in Paris".into(),
            error: None,
        },
    ]);
    provider.complete(&followup).await.unwrap();
    let body = server.requests()[1].json();
    let model_turn = &body["contents"][1];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(
        model_turn["parts"][1]["functionCall"]["args"],
        json!({"city": "Paris"})
    );
    assert_eq!(model_turn["parts"][1]["thoughtSignature"], "c2lnLXBhcmlz");
    assert_eq!(
        body["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"result": "sunny in Paris"}})
    );
}

#[tokio::test]
async fn complete_collects_the_stream() {
    let server = FakeLlmServer::start();
    server.push(transcript("openai", "parallel_tool_calls"));
    let provider = provider("openai", &server, RetryPolicy::none());
    let completion = provider
        .complete(&ModelRequest::new(vec![Message::user("x")]))
        .await
        .unwrap();
    let calls = completion.tool_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].arguments, r#"{"city": "Rome"}"#);
    let arguments: Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
}
