//! The Gemini API: `generateContent` streaming
//! (`:streamGenerateContent?alt=sse`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

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
        short_id,
    },
};

const PROVIDER: &str = "gemini";

/// The Gemini API's base URL.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The documented stand-in for a thought signature the client no longer
/// has (history from elsewhere); without one, newer models reject a
/// replayed function call.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// How many thought signatures one provider remembers.
const SIGNATURE_LIMIT: usize = 256;

impl HttpProviderConfig {
    /// The Gemini API with this model and key; requests go to
    /// `{base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`,
    /// with the key as `x-goog-api-key`.
    pub fn gemini(model: impl Into<String>, api_key: impl Into<String>) -> Self {
        HttpProviderConfig::new(model, GEMINI_BASE_URL, Some(api_key.into()))
    }
}

/// A Gemini model.
///
/// Gemini sends whole function calls without ids; each gets a generated
/// id. Thinking models attach a thought signature to a function call that
/// must be sent back with it; the provider remembers the signatures of
/// the calls it streamed (by call id) and replays them.
#[derive(Debug, Clone)]
pub struct GeminiProvider {
    config: HttpProviderConfig,
    client: reqwest::Client,
    signatures: Arc<Mutex<HashMap<String, String>>>,
}

impl GeminiProvider {
    /// A provider on the process-wide HTTP client.
    pub fn new(config: HttpProviderConfig) -> Self {
        GeminiProvider::with_client(config, shared_client())
    }

    /// A provider on its own HTTP client.
    pub fn with_client(config: HttpProviderConfig, client: reqwest::Client) -> Self {
        GeminiProvider {
            config,
            client,
            signatures: Arc::default(),
        }
    }

    fn signature(&self, call_id: &str) -> Option<String> {
        self.signatures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(call_id)
            .cloned()
    }

    /// The request body for `request`: system messages become
    /// `systemInstruction`, tool calls `functionCall` parts, tool results
    /// `functionResponse` parts; adjacent turns of one role are merged.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let mut system = Vec::new();
        let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
        let mut push = |role: &'static str, parts: Vec<Value>| {
            if parts.is_empty() {
                return;
            }
            match contents.last_mut() {
                Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
                _ => contents.push((role, parts)),
            }
        };
        for message in &request.messages {
            match message {
                Message::System { content } => {
                    if !content.is_empty() {
                        system.push(json!({"text": content}));
                    }
                }
                Message::User { content } => push("user", text_parts(content)),
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    let mut parts = text_parts(content);
                    for (position, call) in tool_calls.iter().enumerate() {
                        let args = serde_json::from_str::<Value>(&call.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| json!({}));
                        let mut part = json!({"functionCall": {"name": call.name, "args": args}});
                        match self.signature(&call.id) {
                            Some(signature) => part["thoughtSignature"] = json!(signature),
                            None if position == 0 => {
                                part["thoughtSignature"] = json!(SKIP_SIGNATURE)
                            }
                            None => {}
                        }
                        parts.push(part);
                    }
                    push("model", parts);
                }
                Message::Tool {
                    tool_name,
                    content,
                    error,
                    ..
                } => {
                    let text = content.to_text();
                    let response = match error {
                        Some(error) if text.is_empty() => json!({"error": error}),
                        Some(error) => json!({"error": error, "result": text}),
                        None => json!({"result": text}),
                    };
                    push(
                        "user",
                        vec![
                            json!({"functionResponse": {"name": tool_name, "response": response}}),
                        ],
                    );
                }
            }
        }
        let mut body = Map::new();
        body.insert(
            "contents".into(),
            Value::Array(
                contents
                    .into_iter()
                    .map(|(role, parts)| json!({"role": role, "parts": parts}))
                    .collect(),
            ),
        );
        if !system.is_empty() {
            body.insert("systemInstruction".into(), json!({"parts": system}));
        }
        if !request.tools.is_empty() {
            let declarations: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": gemini_schema(&tool.parameters),
                    })
                })
                .collect();
            body.insert(
                "tools".into(),
                json!([{ "functionDeclarations": declarations }]),
            );
        }
        let mut generation = Map::new();
        if let Some(temperature) = request.temperature {
            generation.insert("temperature".into(), json!(temperature));
        }
        if let Some(max_tokens) = request.max_tokens {
            generation.insert("maxOutputTokens".into(), json!(max_tokens));
        }
        if !generation.is_empty() {
            body.insert("generationConfig".into(), Value::Object(generation));
        }
        Value::Object(body)
    }
}

fn text_parts(content: &Content) -> Vec<Value> {
    match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![json!({"text": text})],
        Content::Blocks(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .map(|text| json!({"text": text}))
            .collect(),
    }
}

/// Gemini's `parameters` accept an OpenAPI subset of JSON Schema; the keys
/// it rejects are removed, recursively.
fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(key, _)| {
                    !matches!(
                        key.as_str(),
                        "$schema" | "additionalProperties" | "$id" | "$comment"
                    )
                })
                .map(|(key, value)| (key.clone(), gemini_schema(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

/// Gemini model names (`gemini-2.5-flash`, `tunedModels/x`): letters,
/// digits, `-`, `_`, `.` and one `/` between parts.
fn check_model_name(model: &str) -> Result<()> {
    let valid = !model.is_empty()
        && model.len() <= 200
        && model.split('/').count() <= 2
        && model.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        });
    if valid {
        Ok(())
    } else {
        Err(crate::Error::Config(format!(
            "`{}` is not a Gemini model name (letters, digits, `-`, `_`, `.`)",
            model.chars().take(80).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod model_name_tests {
    #[test]
    fn model_names_cannot_reach_other_paths() {
        for good in [
            "gemini-2.5-flash",
            "gemini-1.5-pro-002",
            "tunedModels/my-model",
        ] {
            assert!(super::check_model_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../../v1/files",
            "x?key=1",
            "x#y",
            "a/b/c",
            "x:generateContent",
            "a b",
            "a/..",
        ] {
            assert!(super::check_model_name(bad).is_err(), "{bad}");
        }
    }
}

#[async_trait]
impl ModelProvider for GeminiProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ChunkStream> {
        // The model name goes into the URL's path: a payload must not be
        // able to change the path or add a query with it.
        check_model_name(&self.config.model)?;
        let body = self.request_body(request);
        let url = join_url(
            &self.config.base_url,
            &format!(
                "v1beta/models/{}:streamGenerateContent?alt=sse",
                self.config.model
            ),
        );
        let body = open_stream(PROVIDER, &self.config.retry, || {
            let builder = self.client.post(&url);
            let builder = match &self.config.api_key {
                Some(key) => builder.header("x-goog-api-key", key),
                None => builder,
            };
            builder.header("accept", "text/event-stream").json(&body)
        })
        .await?;
        let decoder = Decoder {
            signatures: Arc::clone(&self.signatures),
            ..Decoder::default()
        };
        Ok(sse_chunks(PROVIDER, body, decoder))
    }
}

#[derive(Debug, Default)]
struct Decoder {
    calls: u32,
    usage: Option<Usage>,
    finished: bool,
    signatures: Arc<Mutex<HashMap<String, String>>>,
}

impl Decoder {
    fn remember(&self, call_id: &str, signature: &str) {
        let mut signatures = self
            .signatures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if signatures.len() >= SIGNATURE_LIMIT {
            signatures.clear();
        }
        signatures.insert(call_id.to_owned(), signature.to_owned());
    }
}

fn finish_reason(reason: &str, had_calls: bool) -> FinishReason {
    match reason {
        "STOP" if had_calls => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_lowercase()),
    }
}

impl SseDecoder for Decoder {
    fn decode(&mut self, event: &Event) -> Result<Vec<StreamChunk>> {
        if event.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value = event_json(PROVIDER, event)?;
        if let Some(error) = value.get("error") {
            return Err(classify_stream_error(PROVIDER, error));
        }
        let mut chunk = StreamChunk::default();
        if let Some(metadata) = value.get("usageMetadata") {
            let count = |key: &str| metadata.get(key).and_then(Value::as_u64).unwrap_or(0);
            let input_tokens = count("promptTokenCount");
            let output_tokens = count("candidatesTokenCount") + count("thoughtsTokenCount");
            let total = count("totalTokenCount");
            self.usage = Some(Usage {
                input_tokens,
                output_tokens,
                total_tokens: if total == 0 {
                    input_tokens + output_tokens
                } else {
                    total
                },
            });
        }
        let candidate = value
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|candidates| candidates.first());
        if let Some(parts) = candidate
            .and_then(|candidate| candidate.pointer("/content/parts"))
            .and_then(Value::as_array)
        {
            let mut reasoning = String::new();
            for part in parts {
                let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    if thought {
                        reasoning.push_str(text);
                    } else {
                        chunk.text.push_str(text);
                    }
                }
                if let Some(call) = part.get("functionCall") {
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("call_{}", short_id()));
                    if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str) {
                        self.remember(&id, signature);
                    }
                    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
                    chunk.tool_calls.push(ToolCallDelta {
                        index: self.calls,
                        id: Some(id),
                        name: call.get("name").and_then(Value::as_str).map(str::to_owned),
                        arguments: args.to_string(),
                    });
                    self.calls += 1;
                }
            }
            if !reasoning.is_empty() {
                chunk.reasoning = Some(reasoning);
            }
        }
        if let Some(reason) = candidate
            .and_then(|candidate| candidate.get("finishReason"))
            .and_then(Value::as_str)
        {
            self.finished = true;
            chunk.finish_reason = Some(finish_reason(reason, self.calls > 0));
        }
        if value
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .is_some()
        {
            // The prompt itself was blocked; no candidate follows.
            self.finished = true;
            chunk.finish_reason = Some(FinishReason::ContentFilter);
        }
        if chunk == StreamChunk::default() {
            return Ok(Vec::new());
        }
        Ok(vec![chunk])
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn at_end(&mut self) -> Vec<StreamChunk> {
        // Gemini repeats the running usage in every event; the last one
        // counts, reported once at the end.
        self.usage
            .take()
            .map(|usage| {
                vec![StreamChunk {
                    usage: Some(usage),
                    ..StreamChunk::default()
                }]
            })
            .unwrap_or_default()
    }
}
