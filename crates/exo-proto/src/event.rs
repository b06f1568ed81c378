//! The events a run streams to `exo:stream:{id}` and `exo:events:{id}`.
//!
//! Field names, order and defaults follow the reference exactly; a field
//! omitted on input takes the reference default.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};
use serde_json::{Map, Value};

use crate::task::Usage;

/// One event of a run, tagged by `type` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Streamed model text.
    Text(TextEvent),
    /// A complete tool call, emitted before the tool runs.
    ToolCall(ToolCallEvent),
    /// A fragment of a tool call as it streams (detailed runs only).
    ToolCallDelta(ToolCallDeltaEvent),
    /// A step boundary (detailed runs only).
    Step(StepEvent),
    /// A finished tool call with its result (detailed runs only).
    ToolResult(ToolResultEvent),
    /// Model reasoning text.
    Reasoning(ReasoningEvent),
    /// A run error.
    Error(ErrorEvent),
    /// A run status change; `completed`, `error` and `cancelled` are terminal.
    Status(StatusEvent),
    /// Token usage of one step (detailed runs only).
    Usage(UsageEvent),
    /// Progress reported by an MCP tool.
    McpProgress(McpProgressEvent),
    /// A context-window management action.
    Context(ContextEvent),
}

const EVENT_TYPES: &str = "text, tool_call, tool_call_delta, step, tool_result, reasoning, error, status, usage, mcp_progress, context";

impl<'de> Deserialize<'de> for StreamEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let kind = match value.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "field `type` must be a string, found {other}"
                )));
            }
            None => return Err(D::Error::custom("missing field `type`")),
        };
        fn body<'de, T: Deserialize<'de>, E: serde::de::Error>(
            kind: &str,
            value: Value,
        ) -> Result<T, E> {
            T::deserialize(value).map_err(|error| E::custom(format!("{kind} event: {error}")))
        }
        Ok(match kind.as_str() {
            "text" => StreamEvent::Text(body(&kind, value)?),
            "tool_call" => StreamEvent::ToolCall(body(&kind, value)?),
            "tool_call_delta" => StreamEvent::ToolCallDelta(body(&kind, value)?),
            "step" => StreamEvent::Step(body(&kind, value)?),
            "tool_result" => StreamEvent::ToolResult(body(&kind, value)?),
            "reasoning" => StreamEvent::Reasoning(body(&kind, value)?),
            "error" => StreamEvent::Error(body(&kind, value)?),
            "status" => {
                let mut event: StatusEvent = body(&kind, value)?;
                // The tag is the enum's; it must not come back as an extra.
                event.extra.remove("type");
                StreamEvent::Status(event)
            }
            "usage" => StreamEvent::Usage(body(&kind, value)?),
            "mcp_progress" => StreamEvent::McpProgress(body(&kind, value)?),
            "context" => StreamEvent::Context(body(&kind, value)?),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown event type `{other}` (expected one of: {EVENT_TYPES})"
                )));
            }
        })
    }
}

impl StreamEvent {
    /// The `type` tag of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamEvent::Text(_) => "text",
            StreamEvent::ToolCall(_) => "tool_call",
            StreamEvent::ToolCallDelta(_) => "tool_call_delta",
            StreamEvent::Step(_) => "step",
            StreamEvent::ToolResult(_) => "tool_result",
            StreamEvent::Reasoning(_) => "reasoning",
            StreamEvent::Error(_) => "error",
            StreamEvent::Status(_) => "status",
            StreamEvent::Usage(_) => "usage",
            StreamEvent::McpProgress(_) => "mcp_progress",
            StreamEvent::Context(_) => "context",
        }
    }

    /// True for a `status` event whose status ends the task's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamEvent::Status(status) if status.status.is_terminal())
    }

    /// The agent that produced the event.
    pub fn agent_name(&self) -> &str {
        match self {
            StreamEvent::Text(event) => &event.agent_name,
            StreamEvent::ToolCall(event) => &event.agent_name,
            StreamEvent::ToolCallDelta(event) => &event.agent_name,
            StreamEvent::Step(event) => &event.agent_name,
            StreamEvent::ToolResult(event) => &event.agent_name,
            StreamEvent::Reasoning(event) => &event.agent_name,
            StreamEvent::Error(event) => &event.agent_name,
            StreamEvent::Status(event) => &event.agent_name,
            StreamEvent::Usage(event) => &event.agent_name,
            StreamEvent::McpProgress(event) => &event.agent_name,
            StreamEvent::Context(event) => &event.agent_name,
        }
    }

    /// True for the event types a non-detailed run emits.
    pub fn is_plain(&self) -> bool {
        matches!(
            self,
            StreamEvent::Text(_)
                | StreamEvent::ToolCall(_)
                | StreamEvent::Error(_)
                | StreamEvent::McpProgress(_)
                | StreamEvent::Context(_)
        )
    }

    /// Serializes the event to its wire JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            // Every field is a plain JSON value, so this cannot fail; keep the
            // stream well-formed even so.
            format!(r#"{{"type":"error","error":"unserializable event: {error}","error_type":"{kind}","agent_name":"","step_number":null,"recoverable":false}}"#, kind = crate::ErrorType::Serialization)
        })
    }

    /// A terminal `status` event.
    pub fn status(status: RunStatus, agent_name: &str, message: impl Into<String>) -> Self {
        StreamEvent::Status(StatusEvent {
            status,
            agent_name: agent_name.to_owned(),
            message: message.into(),
            extra: Map::new(),
        })
    }
}

/// `text`: streamed model text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEvent {
    /// The text fragment.
    pub text: String,
    /// The agent that produced it.
    #[serde(default)]
    pub agent_name: String,
}

/// `tool_call`: a complete tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallEvent {
    /// The tool name.
    pub tool_name: String,
    /// The provider's call id.
    pub tool_call_id: String,
    /// The arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
    /// The agent that produced it.
    #[serde(default)]
    pub agent_name: String,
}

/// `tool_call_delta`: a streamed fragment of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDeltaEvent {
    /// The position of the call within the step.
    #[serde(default)]
    pub index: u32,
    /// The call id, present on the first fragment only.
    #[serde(default)]
    pub tool_call_id: String,
    /// The tool name, present on the first fragment only.
    #[serde(default)]
    pub tool_name: String,
    /// A fragment of the arguments JSON.
    #[serde(default)]
    pub arguments_delta: String,
    /// The agent that produced it.
    #[serde(default)]
    pub agent_name: String,
}

/// Whether a step is starting or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The step started.
    Started,
    /// The step finished.
    Completed,
}

/// `step`: a step boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    /// 1-based step number.
    pub step_number: u32,
    /// The agent that runs the step.
    #[serde(default)]
    pub agent_name: String,
    /// Started or completed.
    pub status: StepStatus,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds, set on completion.
    #[serde(default)]
    pub completed_at: Option<f64>,
    /// Usage of the step, set on completion.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// What a tool returned: a string or content blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolOutput {
    /// Plain text.
    Text(String),
    /// Content blocks, kept as JSON.
    Blocks(Vec<Value>),
}

impl Default for ToolOutput {
    fn default() -> Self {
        ToolOutput::Text(String::new())
    }
}

/// `tool_result`: a finished tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResultEvent {
    /// The tool name.
    pub tool_name: String,
    /// The provider's call id.
    pub tool_call_id: String,
    /// The parsed arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// What the tool returned.
    #[serde(default)]
    pub result: ToolOutput,
    /// The error text when the tool failed.
    #[serde(default)]
    pub error: Option<String>,
    /// False when the tool failed.
    #[serde(default = "default_true")]
    pub success: bool,
    /// Wall time of the call in milliseconds.
    #[serde(default)]
    pub duration_ms: f64,
    /// The agent that called the tool.
    #[serde(default)]
    pub agent_name: String,
}

fn default_true() -> bool {
    true
}

/// `reasoning`: model reasoning text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningEvent {
    /// The reasoning fragment.
    pub text: String,
    /// The agent that produced it.
    #[serde(default)]
    pub agent_name: String,
}

/// `error`: a run error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// The error message.
    pub error: String,
    /// The error's kind, e.g. `RuntimeError` or `TimeoutError`.
    #[serde(default)]
    pub error_type: String,
    /// The agent that failed.
    #[serde(default)]
    pub agent_name: String,
    /// The step that failed, when known.
    #[serde(default)]
    pub step_number: Option<u32>,
    /// True when the task will be retried.
    #[serde(default)]
    pub recoverable: bool,
}

/// The status values of a `status` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The run is starting.
    Starting,
    /// The run is going.
    Running,
    /// The run waits for tools.
    WaitingForTool,
    /// Terminal: the run finished.
    Completed,
    /// Terminal: the run was cancelled.
    Cancelled,
    /// Terminal: the run failed.
    Error,
}

impl RunStatus {
    /// True for `completed`, `cancelled` and `error`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Cancelled | RunStatus::Error
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::WaitingForTool => "waiting_for_tool",
            RunStatus::Completed => "completed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Error => "error",
        }
    }
}

/// `status`: a run status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// The new status.
    pub status: RunStatus,
    /// The agent (or swarm) it concerns.
    #[serde(default)]
    pub agent_name: String,
    /// A human-readable message.
    #[serde(default)]
    pub message: String,
    /// Extension fields, kept as they came: `waiting_for`, `tool_name`,
    /// `tool_call_id`, `arguments` and `approval_deadline` of a
    /// `waiting_for_tool` event, `approval` of a decision (see
    /// `docs/protocol.md`). Empty on reference events.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// `usage`: token usage of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The token counts.
    pub usage: Usage,
    /// The agent that spent them.
    #[serde(default)]
    pub agent_name: String,
    /// The step that spent them.
    #[serde(default)]
    pub step_number: u32,
    /// The `provider:model` string.
    #[serde(default)]
    pub model: String,
}

/// `mcp_progress`: progress reported by an MCP tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpProgressEvent {
    /// The tool reporting progress.
    pub tool_name: String,
    /// Progress so far.
    pub progress: f64,
    /// The total, when known.
    #[serde(default)]
    pub total: Option<f64>,
    /// A message from the tool.
    #[serde(default)]
    pub message: String,
    /// The agent that called the tool.
    #[serde(default)]
    pub agent_name: String,
}

/// `context`: a context-window management action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextEvent {
    /// What was done, e.g. `trim`.
    pub action: String,
    /// The agent whose context changed.
    #[serde(default)]
    pub agent_name: String,
    /// Messages before.
    #[serde(default)]
    pub before_count: u64,
    /// Messages after.
    #[serde(default)]
    pub after_count: u64,
    /// Action-specific details.
    #[serde(default)]
    pub details: Map<String, Value>,
}
