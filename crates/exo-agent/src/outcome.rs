//! What a run reports while it goes ([`RunEvent`]) and what the caller
//! tells it ([`RunOptions`]). How it ends is [`exo_proto::RunOutcome`].

use exo_proto::{Journal, JournalRecord, Message, StreamEvent};
pub use exo_proto::{OutcomeStatus, RunOutcome};
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
    /// A finished model call or tool call, for the task's step journal: a
    /// later attempt that gets it back (see [`RunOptions::replay`]) does not
    /// do it again.
    Journal(JournalRecord),
    /// What one model call sent in this attempt used (a replayed call
    /// sends nothing): for the usage ledger.
    Spent {
        /// The model string of the agent that made the call.
        model: String,
        /// The usage the provider reported.
        usage: exo_proto::Usage,
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
    /// What earlier attempts of this task finished (their
    /// [`RunEvent::Journal`] records): replayed model calls are not sent
    /// again, replayed tools do not run again, and their events are not
    /// emitted again (they are in the stream already). Decisions on calls
    /// to `hitl_tools` come this way too.
    pub replay: Journal,
    /// The task id, for the idempotency keys tools get
    /// ([`crate::ToolContext::idempotency_key`]).
    pub task_id: String,
    /// The attempt, recorded in the journal records this run writes.
    pub attempt: u32,
    /// Admits each model call the run sends against shared rate limits
    /// (see [`crate::ModelGate`]); none by default.
    pub gate: Option<std::sync::Arc<dyn crate::ModelGate>>,
    /// What the run may spend (the payload's `budget`): once its tokens
    /// are spent, the run starts no new model call and fails with
    /// `BudgetExceeded`.
    pub budget: exo_proto::Budget,
    /// Turns tokens into cost, for `budget.max_cost`; none by default (then
    /// a cost budget counts nothing).
    pub prices: Option<std::sync::Arc<exo_proto::PriceTable>>,
    /// Run at most this many new model or tool calls (replayed ones do not
    /// count), then stop with [`exo_proto::OutcomeStatus::Yielded`]: a
    /// caller that runs each step as its own durable unit (a Temporal
    /// activity) continues the run from its journal. The tool calls of one
    /// model answer then run one after another; a delegation to a team
    /// member is one step. `None` (the default): no limit.
    pub step_limit: Option<u32>,
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

    /// Sends an event whatever the run's `detailed` setting (a status
    /// that a reader of any run must see, e.g. a wait for capacity).
    pub(crate) async fn always(&self, event: StreamEvent) {
        let _ = self.sender.send(RunEvent::Stream(event)).await;
    }

    pub(crate) async fn spent(&self, model: &str, usage: exo_proto::Usage) {
        let _ = self
            .sender
            .send(RunEvent::Spent {
                model: model.to_owned(),
                usage,
            })
            .await;
    }

    pub(crate) async fn journal(&self, record: JournalRecord) {
        let _ = self.sender.send(RunEvent::Journal(record)).await;
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
