//! The OpenAI Chat Completions streaming API, which also serves every
//! OpenAI-compatible server: Ollama, vLLM, llama.cpp server, LM Studio and
//! others, reached through the base URL.

use async_trait::async_trait;
use eventsource_stream::Event;
use exo_proto::{Content, Message, Usage};
use serde_json::{Map, Value, json};

use crate::{
    error::Result,
    http::{
        HttpProviderConfig, SseDecoder, classify_stream_error, event_json, join_url, open_stream,
        shared_client, sse_chunks,
    },
    provider::{
        ChunkStream, FinishReason, ModelProvider, ModelRequest, StreamChunk, ToolCallDelta,
    },
};

const PROVIDER: &str = "openai";

/// The OpenAI API's base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

impl HttpProviderConfig {
    /// The OpenAI API with this model and key; requests go to
    /// `{base_url}/chat/completions`, with the key as a bearer token. Point
    /// the base URL at any OpenAI-compatible server.
    pub fn openai(model: impl Into<String>, api_key: Option<String>) -> Self {
        HttpProviderConfig::new(model, OPENAI_BASE_URL, api_key)
    }
}

/// A model behind the Chat Completions API.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    config: HttpProviderConfig,
    client: reqwest::Client,
}

impl OpenAiProvider {
    /// A provider on the process-wide HTTP client.
    pub fn new(config: HttpProviderConfig) -> Self {
        OpenAiProvider {
            config,
            client: shared_client(),
        }
    }

    /// A provider on its own HTTP client (for custom timeouts or proxies).
    pub fn with_client(config: HttpProviderConfig, client: reqwest::Client) -> Self {
        OpenAiProvider { config, client }
    }

    /// The request body for `request`.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.config.model));
        body.insert(
            "messages".into(),
            Value::Array(request.messages.iter().map(message_json).collect()),
        );
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(max_tokens) = request.max_tokens {
            // OpenAI's own API deprecated `max_tokens` (its reasoning models
            // refuse it); compatible servers know `max_tokens` best.
            let key = if self.config.base_url.starts_with(OPENAI_BASE_URL) {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            body.insert(key.into(), json!(max_tokens));
        }
        Value::Object(body)
    }
}

/// The text a tool message carries to the model: its content, and its error
/// when it failed.
pub(crate) fn tool_text(content: &Content, error: Option<&str>) -> String {
    let text = content.to_text();
    match error {
        Some(error) if text.is_empty() => format!("Error: {error}"),
        Some(error) => format!("{text}\nError: {error}"),
        None => text,
    }
}

fn content_json(content: &Content) -> Value {
    match content {
        Content::Text(text) => json!(text),
        Content::Blocks(blocks) => Value::Array(blocks.clone()),
    }
}

fn message_json(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content_json(content)}),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut object = Map::new();
            object.insert("role".into(), json!("assistant"));
            let content = if content.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                json!(content.to_text())
            };
            object.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|call| {
                        let arguments = if call.arguments.trim().is_empty() {
                            "{}"
                        } else {
                            call.arguments.as_str()
                        };
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments},
                        })
                    })
                    .collect();
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(object)
        }
        Message::Tool {
            tool_call_id,
            content,
            error,
            ..
        } => json!({
            "role": "tool",
            "tool_call_id": tool_call_id,
            "content": tool_text(content, error.as_deref()),
        }),
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ChunkStream> {
        let body = self.request_body(request);
        let url = join_url(&self.config.base_url, "chat/completions");
        let body = open_stream(PROVIDER, &self.config.retry, || {
            let builder = self
                .client
                .post(&url)
                .header("accept", "text/event-stream")
                .json(&body);
            match &self.config.api_key {
                Some(key) => builder.bearer_auth(key),
                None => builder,
            }
        })
        .await?;
        Ok(sse_chunks(PROVIDER, body, Decoder::default()))
    }
}

#[derive(Debug, Default)]
struct Decoder {
    finished: bool,
    done: bool,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "end_turn" => FinishReason::Stop,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn usage(value: &Value) -> Usage {
    let count = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    let input_tokens = count("prompt_tokens");
    let output_tokens = count("completion_tokens");
    let total = count("total_tokens");
    Usage {
        input_tokens,
        output_tokens,
        total_tokens: if total == 0 {
            input_tokens + output_tokens
        } else {
            total
        },
    }
}

impl SseDecoder for Decoder {
    fn decode(&mut self, event: &Event) -> Result<Vec<StreamChunk>> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            self.finished = true;
            return Ok(Vec::new());
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let value = event_json(PROVIDER, event)?;
        if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
            return Err(classify_stream_error(PROVIDER, error));
        }
        let mut chunk = StreamChunk::default();
        if let Some(choice) = value
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        {
            if let Some(delta) = choice.get("delta") {
                if let Some(text) = delta.get("content").and_then(Value::as_str) {
                    chunk.text = text.to_owned();
                }
                let reasoning = delta
                    .get("reasoning_content")
                    .or_else(|| delta.get("reasoning"))
                    .and_then(Value::as_str)
                    .filter(|text| !text.is_empty());
                chunk.reasoning = reasoning.map(str::to_owned);
                if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                    for (position, call) in calls.iter().enumerate() {
                        let function = call.get("function");
                        let text = |value: Option<&Value>| {
                            value.and_then(Value::as_str).map(str::to_owned)
                        };
                        chunk.tool_calls.push(ToolCallDelta {
                            index: call
                                .get("index")
                                .and_then(Value::as_u64)
                                .and_then(|index| u32::try_from(index).ok())
                                .unwrap_or(position as u32),
                            id: text(call.get("id")),
                            name: text(function.and_then(|function| function.get("name"))),
                            arguments: text(
                                function.and_then(|function| function.get("arguments")),
                            )
                            .unwrap_or_default(),
                        });
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finished = true;
                chunk.finish_reason = Some(finish_reason(reason));
            }
        }
        if let Some(value) = value.get("usage").filter(|usage| usage.is_object()) {
            chunk.usage = Some(usage(value));
        }
        if chunk == StreamChunk::default() {
            return Ok(Vec::new());
        }
        Ok(vec![chunk])
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_limit_key_depends_on_the_server() {
        let request = ModelRequest {
            max_tokens: Some(64),
            ..ModelRequest::default()
        };
        let official = OpenAiProvider::new(HttpProviderConfig::openai("o3", Some("k".into())));
        let body = official.request_body(&request);
        assert_eq!(body["max_completion_tokens"], 64);
        assert!(body.get("max_tokens").is_none());
        let local = OpenAiProvider::new(
            HttpProviderConfig::openai("llama3.2", None).with_base_url("http://localhost:11434/v1"),
        );
        assert_eq!(local.request_body(&request)["max_tokens"], 64);
    }
}
