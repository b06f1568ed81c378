//! What a run reports while it goes ([`RunEvent`]) and when it ends
//! ([`RunOutcome`]), and what the caller tells it ([`RunOptions`]).

use exo_proto::{Message, RunStatus, StreamEvent, Usage};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// Something a run produced, in the order it was produced.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunEvent {
    /// An event for the task's event stream. Every event except the
    /// terminal `status` (see [`RunOutcome::terminal_event`]).
    Stream(StreamEvent),
    /// A conversation message, for memory persistence: each assistant turn
    /// (text and tool calls) and each tool result (with its error text).
    Message {
        /// The agent whose conversation it belongs to.
        agent_name: String,
        /// The message.
        message: Message,
    },
}

/// How the caller runs a task.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Emit the rich event set (`status`, `step`, `usage`,
    /// `tool_call_delta`, `tool_result`) besides `text`, `tool_call` and
    /// `error`.
    pub detailed: bool,
    /// Cancels the run, promptly, even inside a model stream or tool call.
    pub cancel: CancellationToken,
    /// Ends the run as timed out at this instant, promptly.
    pub deadline: Option<Instant>,
    /// While this reads `true`, the run starts no new model call and no new
    /// tool call (calls already under way go on); cancel and the deadline
    /// still take effect. A worker cut off from its queue holds its runs
    /// here until it knows whether it still owns them.
    pub pause: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// The agent (or swarm) gave its final answer.
    Completed,
    /// The run failed: see `error`, `error_type` and `retryable`.
    Failed,
    /// The cancel token fired.
    Cancelled,
    /// The deadline passed.
    TimedOut,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// How it ended.
    pub status: OutcomeStatus,
    /// The agent's name, or the swarm's (members joined by `+`).
    pub agent_name: String,
    /// True for a swarm run.
    pub is_swarm: bool,
    /// The final output: for an agent all text of the run (every step), as
    /// the reference reports it; for a swarm the output described in
    /// [`crate::swarm`].
    pub output: String,
    /// Token usage of every model call of the run, all agents together.
    pub usage: Usage,
    /// The error message, for every status but `Completed`.
    pub error: Option<String>,
    /// The error's kind, e.g. `RuntimeError`, `ConfigError`,
    /// `TimeoutError`.
    pub error_type: Option<String>,
    /// False when running the task again cannot help (bad config, refused
    /// MCP server, authentication, max steps); meaningful for `Failed`.
    pub retryable: bool,
}

impl RunOutcome {
    /// True when the run completed.
    pub fn is_completed(&self) -> bool {
        self.status == OutcomeStatus::Completed
    }

    /// The task hash's `result` object: `{"output": <output>}`.
    pub fn result_json(&self) -> Value {
        json!({ "output": self.output })
    }

    /// The terminal `status` event for this outcome, with the reference's
    /// messages: `completed` with "Agent '{name}' completed execution",
    /// `error` with the error message (also for a timeout), `cancelled`
    /// with "Agent '{name}' was cancelled". A swarm says "Swarm" instead of
    /// "Agent".
    pub fn terminal_event(&self) -> StreamEvent {
        let kind = if self.is_swarm { "Swarm" } else { "Agent" };
        let name = &self.agent_name;
        let error = || self.error.clone().unwrap_or_default();
        match self.status {
            OutcomeStatus::Completed => StreamEvent::status(
                RunStatus::Completed,
                name,
                format!("{kind} '{name}' completed execution"),
            ),
            OutcomeStatus::Failed | OutcomeStatus::TimedOut => {
                StreamEvent::status(RunStatus::Error, name, error())
            }
            OutcomeStatus::Cancelled => StreamEvent::status(
                RunStatus::Cancelled,
                name,
                format!("{kind} '{name}' was cancelled"),
            ),
        }
    }
}

/// Sends a run's events, dropping the ones a non-detailed run does not
/// emit. A closed receiver is ignored: the run goes on.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    sender: mpsc::Sender<RunEvent>,
    detailed: bool,
}

impl Emitter {
    pub(crate) fn new(sender: mpsc::Sender<RunEvent>, detailed: bool) -> Self {
        Emitter { sender, detailed }
    }

    pub(crate) async fn event(&self, event: StreamEvent) {
        if self.detailed || event.is_plain() {
            let _ = self.sender.send(RunEvent::Stream(event)).await;
        }
    }

    pub(crate) async fn message(&self, agent_name: &str, message: Message) {
        let _ = self
            .sender
            .send(RunEvent::Message {
                agent_name: agent_name.to_owned(),
                message,
            })
            .await;
    }
}
