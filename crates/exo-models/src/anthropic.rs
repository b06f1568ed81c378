//! The Anthropic Messages streaming API.

use std::collections::BTreeMap;

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
    openai::tool_text,
    provider::{
        ChunkStream, FinishReason, ModelProvider, ModelRequest, StreamChunk, ToolCallDelta,
    },
};

const PROVIDER: &str = "anthropic";

/// The Anthropic API's base URL.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// The API version this crate speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The completion limit when the agent sets none; the API requires one.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;

impl HttpProviderConfig {
    /// The Anthropic API with this model and key; requests go to
    /// `{base_url}/v1/messages`, with the key as `x-api-key`.
    pub fn anthropic(model: impl Into<String>, api_key: impl Into<String>) -> Self {
        HttpProviderConfig::new(model, ANTHROPIC_BASE_URL, Some(api_key.into()))
    }
}

/// A Claude model behind the Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    config: HttpProviderConfig,
    client: reqwest::Client,
}

impl AnthropicProvider {
    /// A provider on the process-wide HTTP client.
    pub fn new(config: HttpProviderConfig) -> Self {
        AnthropicProvider {
            config,
            client: shared_client(),
        }
    }

    /// A provider on its own HTTP client.
    pub fn with_client(config: HttpProviderConfig, client: reqwest::Client) -> Self {
        AnthropicProvider { config, client }
    }

    /// The request body for `request`: system messages become the `system`
    /// parameter, tool calls become `tool_use` blocks, and tool results
    /// become `tool_result` blocks in the following user turn. Adjacent
    /// messages of one role are merged, as the API wants.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let mut system = Vec::new();
        let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
        let mut push = |role: &'static str, blocks: Vec<Value>| {
            if blocks.is_empty() {
                return;
            }
            match messages.last_mut() {
                Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
                _ => messages.push((role, blocks)),
            }
        };
        for message in &request.messages {
            match message {
                Message::System { content } => {
                    if !content.is_empty() {
                        system.push(content.clone());
                    }
                }
                Message::User { content } => push("user", content_blocks(content)),
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    let mut blocks = content_blocks(content);
                    for call in tool_calls {
                        let input = serde_json::from_str::<Value>(&call.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| json!({}));
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": input,
                        }));
                    }
                    push("assistant", blocks);
                }
                Message::Tool {
                    tool_call_id,
                    content,
                    error,
                    ..
                } => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": tool_call_id,
                        "content": tool_text(content, error.as_deref()),
                    });
                    if error.is_some() {
                        block["is_error"] = json!(true);
                    }
                    push("user", vec![block]);
                }
            }
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(self.config.model));
        body.insert(
            "max_tokens".into(),
            json!(request.max_tokens.unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS)),
        );
        body.insert("stream".into(), json!(true));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert(
            "messages".into(),
            Value::Array(
                messages
                    .into_iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect(),
            ),
        );
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.parameters,
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(temperature) = request.temperature {
            // The API accepts 0..=1; agents default to 1.0 but may say more.
            body.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
        }
        Value::Object(body)
    }
}

fn content_blocks(content: &Content) -> Vec<Value> {
    match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![json!({"type": "text", "text": text})],
        Content::Blocks(blocks) => blocks.clone(),
    }
}

#[async_trait]
impl ModelProvider for AnthropicProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ChunkStream> {
        let body = self.request_body(request);
        let url = join_url(&self.config.base_url, "v1/messages");
        let body = open_stream(PROVIDER, &self.config.retry, || {
            let builder = self.client.post(&url);
            let builder = match &self.config.api_key {
                Some(key) => builder.header("x-api-key", key),
                None => builder,
            };
            builder
                .header("anthropic-version", ANTHROPIC_VERSION)
                .header("accept", "text/event-stream")
                .json(&body)
        })
        .await?;
        Ok(sse_chunks(PROVIDER, body, Decoder::default()))
    }
}

#[derive(Debug, Default)]
struct Decoder {
    /// Content block index to tool call index.
    tool_blocks: BTreeMap<u64, u32>,
    input_tokens: u64,
    output_tokens: u64,
    finished: bool,
    done: bool,
}

fn stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn input_tokens(usage: &Value) -> Option<u64> {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    let base = count("input_tokens")?;
    Some(
        base + count("cache_creation_input_tokens").unwrap_or(0)
            + count("cache_read_input_tokens").unwrap_or(0),
    )
}

impl SseDecoder for Decoder {
    fn decode(&mut self, event: &Event) -> Result<Vec<StreamChunk>> {
        if event.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value = event_json(PROVIDER, event)?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.event.as_str());
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let mut chunk = StreamChunk::default();
        match kind {
            "message_start" => {
                if let Some(usage) = value.pointer("/message/usage") {
                    self.input_tokens = input_tokens(usage).unwrap_or(0);
                    self.output_tokens = usage
                        .get("output_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                }
            }
            "content_block_start" => {
                let block = value.get("content_block").cloned().unwrap_or_default();
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let tool_index = self.tool_blocks.len() as u32;
                        self.tool_blocks.insert(index, tool_index);
                        let text =
                            |key: &str| block.get(key).and_then(Value::as_str).map(str::to_owned);
                        chunk.tool_calls.push(ToolCallDelta {
                            index: tool_index,
                            id: text("id"),
                            name: text("name"),
                            arguments: String::new(),
                        });
                    }
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            chunk.text = text.to_owned();
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = value.get("delta").cloned().unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        chunk.text = delta
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                    }
                    Some("input_json_delta") => {
                        let fragment = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if let Some(tool_index) = self.tool_blocks.get(&index)
                            && !fragment.is_empty()
                        {
                            chunk.tool_calls.push(ToolCallDelta {
                                index: *tool_index,
                                id: None,
                                name: None,
                                arguments: fragment.to_owned(),
                            });
                        }
                    }
                    Some("thinking_delta") => {
                        chunk.reasoning = delta
                            .get("thinking")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = value.get("usage") {
                    if let Some(input) = input_tokens(usage) {
                        self.input_tokens = input;
                    }
                    if let Some(output) = usage.get("output_tokens").and_then(Value::as_u64) {
                        self.output_tokens = output;
                    }
                }
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finished = true;
                    chunk.finish_reason = Some(stop_reason(reason));
                }
                chunk.usage = Some(Usage {
                    input_tokens: self.input_tokens,
                    output_tokens: self.output_tokens,
                    total_tokens: self.input_tokens + self.output_tokens,
                });
            }
            "message_stop" => {
                self.finished = true;
                self.done = true;
            }
            "error" => {
                let error = value.get("error").cloned().unwrap_or(value.clone());
                return Err(classify_stream_error(PROVIDER, &error));
            }
            _ => {}
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
