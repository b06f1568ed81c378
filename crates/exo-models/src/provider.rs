//! The provider trait, what goes in and what streams out.

use std::{collections::BTreeMap, fmt, pin::Pin};

use async_trait::async_trait;
use exo_proto::{Message, ToolCall, Usage};
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::error::Result;

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    /// The name the model calls it by.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON schema of its arguments object.
    pub parameters: Value,
}

/// One model call: the conversation so far and the tools on offer. The
/// model itself is chosen when the provider is built.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelRequest {
    /// The conversation, system message first when there is one.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    pub tools: Vec<ToolDefinition>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
}

impl ModelRequest {
    /// A request with these messages and nothing else set.
    pub fn new(messages: Vec<Message>) -> Self {
        ModelRequest {
            messages,
            ..ModelRequest::default()
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end of the answer.
    Stop,
    /// The model asked for tool calls.
    ToolCalls,
    /// The completion token limit was reached.
    Length,
    /// The provider filtered the answer.
    ContentFilter,
    /// A reason this crate does not know, as the provider spelled it.
    Other(String),
}

impl FinishReason {
    /// The reason's name: `stop`, `tool_calls`, `length`, `content_filter`,
    /// or the provider's own word.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(reason) => reason,
        }
    }
}

/// A fragment of a tool call. The first fragment of a call usually carries
/// its id and name; every fragment may carry a piece of the arguments JSON.
/// Fragments of one call share its `index`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    /// The position of the call within the answer.
    pub index: u32,
    /// The call id, when this fragment carries it.
    pub id: Option<String>,
    /// The tool name, when this fragment carries it.
    pub name: Option<String>,
    /// A piece of the arguments JSON (possibly empty).
    pub arguments: String,
}

/// One piece of a streamed answer. Any field may be empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamChunk {
    /// Answer text.
    pub text: String,
    /// Reasoning text, for models that stream it.
    pub reasoning: Option<String>,
    /// Tool call fragments, in stream order.
    pub tool_calls: Vec<ToolCallDelta>,
    /// Set once, when the model stops.
    pub finish_reason: Option<FinishReason>,
    /// Token usage of the whole call, when the provider reports it.
    pub usage: Option<Usage>,
}

impl StreamChunk {
    /// A chunk of answer text.
    pub fn text(text: impl Into<String>) -> Self {
        StreamChunk {
            text: text.into(),
            ..StreamChunk::default()
        }
    }
}

/// The stream of a model call. It ends after the finish reason and the
/// usage have arrived (in either order, depending on the provider), or with
/// an error; a stream that breaks off before the model finished yields
/// [`crate::Error::Interrupted`].
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk>> + Send>>;

/// A whole answer, assembled from chunks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// All answer text.
    pub text: String,
    /// All reasoning text.
    pub reasoning: String,
    /// The finish reason, when one arrived.
    pub finish_reason: Option<FinishReason>,
    /// The last usage reported.
    pub usage: Option<Usage>,
    /// Calls by index, each with whether its id was generated here.
    calls: BTreeMap<u32, (ToolCall, bool)>,
}

impl Completion {
    /// A whole answer as an earlier attempt recorded it (text, tool calls in
    /// order, usage), for a run that replays its journal.
    pub fn replayed(text: String, tool_calls: Vec<ToolCall>, usage: Option<Usage>) -> Self {
        Completion {
            text,
            usage,
            calls: (0u32..)
                .zip(tool_calls)
                .map(|(index, call)| (index, (call, false)))
                .collect(),
            ..Completion::default()
        }
    }

    /// Adds a chunk: appends text, assembles tool calls by index, and keeps
    /// the finish reason and the last usage.
    pub fn push(&mut self, chunk: &StreamChunk) {
        self.text.push_str(&chunk.text);
        if let Some(reasoning) = &chunk.reasoning {
            self.reasoning.push_str(reasoning);
        }
        for delta in &chunk.tool_calls {
            let (call, generated) = self.calls.entry(delta.index).or_insert_with(|| {
                // A call the provider sends without an id gets one, so tool
                // results can refer to it; a later fragment's id replaces it.
                let call = ToolCall {
                    id: format!("call_{}_{}", delta.index, short_id()),
                    name: String::new(),
                    arguments: String::new(),
                };
                (call, true)
            });
            if let Some(id) = delta.id.as_deref().filter(|id| !id.is_empty())
                && *generated
            {
                call.id = id.to_owned();
                *generated = false;
            }
            if let Some(name) = delta.name.as_deref().filter(|name| !name.is_empty())
                && call.name.is_empty()
            {
                call.name = name.to_owned();
            }
            call.arguments.push_str(&delta.arguments);
        }
        if chunk.finish_reason.is_some() {
            self.finish_reason.clone_from(&chunk.finish_reason);
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
    }

    /// The assembled tool calls in index order. A call the provider sent
    /// without an id has a generated one (the same on every call of this
    /// method).
    pub fn tool_calls(&self) -> Vec<ToolCall> {
        self.calls.values().map(|(call, _)| call.clone()).collect()
    }

    /// True when the answer asked for tools.
    pub fn has_tool_calls(&self) -> bool {
        !self.calls.is_empty()
    }
}

pub(crate) fn short_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(12);
    id
}

/// A model behind one API. Providers are built for one `provider:model`
/// string (see [`crate::resolve_provider`]) and may be shared between
/// concurrent runs.
#[async_trait]
pub trait ModelProvider: Send + Sync + fmt::Debug {
    /// The provider's name, e.g. `openai`.
    fn name(&self) -> &str;

    /// The model name, without the provider prefix.
    fn model(&self) -> &str;

    /// Starts a streamed call. Transient failures before the first byte of
    /// the answer are retried inside this call; dropping the returned
    /// future or stream aborts the request.
    async fn stream(&self, request: &ModelRequest) -> Result<ChunkStream>;

    /// A whole answer: the stream, collected.
    async fn complete(&self, request: &ModelRequest) -> Result<Completion> {
        let mut stream = self.stream(request).await?;
        let mut completion = Completion::default();
        while let Some(chunk) = stream.next().await {
            completion.push(&chunk?);
        }
        Ok(completion)
    }
}
