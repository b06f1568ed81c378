//! Running one claimed task: the executor seam and the local executor.

use std::{sync::Arc, time::Duration};

use exo_agent::{RunEvent, RunOptions, Runner};
use exo_broker::{ClaimedTask, PublishOptions, WorkerSession};
use exo_proto::{
    AgentSpec, ErrorEvent, ErrorType, Journal, OutcomeStatus, RunOutcome, StreamEvent, TaskPayload,
};
use futures::FutureExt;
use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::memory::{Memory, MemorySession};

/// What an executor gets besides the task: when to stop.
#[derive(Debug, Clone)]
pub struct RunControl {
    /// Fires on a client cancel, a lost lease, or a forced shutdown.
    pub cancel: CancellationToken,
    /// The task's deadline (`timeout_seconds` after it started).
    pub deadline: Instant,
    /// While `true`, the run starts no new model or tool call: the worker is
    /// cut off from Redis and does not know whether it still owns the task.
    pub pause: Option<tokio::sync::watch::Receiver<bool>>,
    /// Run at most this many new model or tool calls, then stop with a
    /// `Yielded` outcome (see `exo_agent::RunOptions::step_limit`); the
    /// Temporal executor runs each step as its own activity. `None`: no
    /// limit.
    pub step_limit: Option<u32>,
}

/// What an executor returns: the run's outcome and the events it produced
/// that are not yet in Redis (they go out with the task's final write).
#[derive(Debug)]
pub struct Execution {
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Event JSON not yet published.
    pub unsent_events: Vec<String>,
    /// Step-journal records not yet written.
    pub unsent_journal: Vec<String>,
    /// Retries the executor spent inside this attempt (Temporal retries
    /// activities itself); they are added to the task's `retries`, so the
    /// task hash reads the same whichever executor ran it.
    pub retries_used: u32,
    /// What the model calls this attempt sent used, by model (replayed
    /// calls sent nothing); cost is added by the worker's price table.
    pub spent: Vec<exo_broker::ModelSpend>,
}

/// Runs a claimed task's agent and streams its events. The worker claims,
/// fences, retries and finishes; the executor only runs.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Runs the task until it ends, is cancelled, or passes its deadline.
    async fn execute(&self, task: &ClaimedTask, control: RunControl) -> Execution;

    /// Stops whatever the executor runs in the background, at worker
    /// shutdown after the drain.
    async fn shutdown(&self) {}
}

/// Runs agents in this process.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    session: WorkerSession,
    runner: Arc<Runner>,
    memory: Memory,
    grace: Duration,
    gate: Option<Arc<dyn exo_agent::ModelGate>>,
    prices: Option<Arc<exo_proto::PriceTable>>,
}

impl LocalExecutor {
    /// An executor publishing through `session`, running agents with
    /// `runner` and hydrating memory from `memory`. A run that has not
    /// stopped `grace` after its deadline (or its cancel) is aborted.
    pub fn new(
        session: WorkerSession,
        runner: Arc<Runner>,
        memory: Memory,
        grace: Duration,
    ) -> Self {
        LocalExecutor {
            session,
            runner,
            memory,
            grace,
            gate: None,
            prices: None,
        }
    }

    /// The same executor, counting cost (and `budget.max_cost`) by
    /// `prices`.
    pub fn with_prices(mut self, prices: Arc<exo_proto::PriceTable>) -> Self {
        self.prices = Some(prices);
        self
    }

    /// The same executor, admitting every model call through `gate`
    /// (fleet-wide rate limits).
    pub fn with_gate(mut self, gate: Arc<dyn exo_agent::ModelGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The worker session it publishes through.
    #[cfg_attr(not(feature = "temporal"), allow(dead_code))]
    pub(crate) fn session(&self) -> &WorkerSession {
        &self.session
    }
}

/// The agent config, with the payload's `model` as the fallback when the
/// config names none.
pub(crate) fn agent_spec(payload: &TaskPayload) -> exo_proto::Result<AgentSpec> {
    if let Some(model) = &payload.model
        && !payload.agent_config.contains_key("model")
        && !payload.agent_config.contains_key("agents")
    {
        let mut config = payload.agent_config.clone();
        config.insert("model".to_owned(), Value::String(model.clone()));
        return AgentSpec::from_map(&config);
    }
    payload.agent_spec()
}

/// The name to report for a payload whose config may not even parse.
pub(crate) fn agent_name_of(payload: &TaskPayload) -> String {
    payload
        .agent_config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn error_event(outcome: &RunOutcome) -> StreamEvent {
    StreamEvent::Error(ErrorEvent {
        error: outcome.error.clone().unwrap_or_default(),
        error_type: outcome
            .error_type
            .as_ref()
            .map(ErrorType::to_string)
            .unwrap_or_default(),
        agent_name: outcome.agent_name.clone(),
        step_number: None,
        recoverable: false,
    })
}

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    async fn execute(&self, task: &ClaimedTask, control: RunControl) -> Execution {
        self.run(&task.payload, Some(&task.lease), control).await
    }
}

impl LocalExecutor {
    /// Runs a payload's agent here and streams its events; the events not
    /// yet published come back with the outcome. Needs no lease, so a
    /// Temporal activity can use it on whichever worker it lands.
    pub async fn run_payload(&self, payload: &TaskPayload, control: RunControl) -> Execution {
        self.run(payload, None, control).await
    }

    /// Runs a payload; with a lease, its events are fenced on it.
    async fn run(
        &self,
        payload: &TaskPayload,
        lease: Option<&exo_broker::Lease>,
        control: RunControl,
    ) -> Execution {
        let task_id = payload.task_id.as_str();
        let publisher = match lease {
            Some(lease) => self
                .session
                .publisher(task_id, PublishOptions { fence: Some(lease) }),
            None => self.session.publisher(task_id, PublishOptions::default()),
        };
        let spec = match agent_spec(payload) {
            Ok(spec) => spec,
            Err(error) => {
                let outcome = RunOutcome::failed(
                    agent_name_of(payload),
                    error.to_string(),
                    ErrorType::Config,
                    false,
                );
                publisher.publish(&error_event(&outcome)).await;
                return Execution::closing(outcome, publisher).await;
            }
        };
        let (memory, history) = match MemorySession::open(&self.memory, payload).await {
            Ok(Some((session, prior))) => {
                let mut history = prior;
                history.extend(payload.messages.iter().cloned());
                (Some(session), history)
            }
            Ok(None) => (None, payload.messages.clone()),
            Err(failure) => {
                let outcome = RunOutcome::failed(
                    spec.name(),
                    failure.message,
                    ErrorType::Memory,
                    failure.retryable,
                );
                publisher.publish(&error_event(&outcome)).await;
                return Execution::closing(outcome, publisher).await;
            }
        };
        let replay = match read_journal(&self.session, task_id, lease).await {
            Ok(journal) => journal,
            Err(error) => {
                let outcome = RunOutcome::failed(
                    spec.name(),
                    format!("the step journal could not be read: {error}"),
                    ErrorType::Runtime,
                    true,
                );
                publisher.publish(&error_event(&outcome)).await;
                return Execution::closing(outcome, publisher).await;
            }
        };
        if !replay.is_empty() {
            tracing::info!(
                task_id,
                model_calls = replay.model_calls(),
                "resuming from the step journal"
            );
        }
        let (sender, mut receiver) = mpsc::channel(256);
        let options = RunOptions {
            detailed: payload.detailed,
            cancel: control.cancel.clone(),
            deadline: Some(control.deadline),
            pause: control.pause.clone(),
            replay,
            task_id: task_id.to_owned(),
            attempt: lease.map_or(0, |lease| lease.attempt),
            gate: self.gate.clone(),
            budget: payload.budget.unwrap_or_default(),
            prices: self.prices.clone(),
            step_limit: control.step_limit,
        };
        let runner = self.runner.clone();
        let input = payload.input.clone();
        let run_spec = spec.clone();
        // The run is polled here, beside its events, not spawned: a task of
        // its own cost a hand-over between the runtime's threads on every
        // step (5-10% of a worker's CPU per no-op task at concurrency 32,
        // see docs/operations.md). Dropping it
        // stops it, so the worker never leaves an agent running unseen; a
        // panic in it ends the attempt, not the worker. It keeps the
        // caller's span (the task's execute span), so model-call and
        // tool-call spans nest under it. Boxed: the run's future is large.
        let mut run = Box::pin(
            std::panic::AssertUnwindSafe(async move {
                runner
                    .run(&run_spec, &input, history, options, sender)
                    .await
            })
            .catch_unwind(),
        );
        let mut run_done = None;
        let hard_stop = control.deadline + self.grace;
        let grace = self.grace;
        let cancel = control.cancel.clone();
        let cancel_stop = async move {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(cancel_stop);
        let deadline_stop = tokio::time::sleep_until(hard_stop);
        tokio::pin!(deadline_stop);
        // The timers come first: a run that streams without pause must not
        // starve them.
        let mut channel_open = true;
        let mut spent = Spent::default();
        let outcome = loop {
            tokio::select! {
                biased;
                () = &mut deadline_stop => {
                    tracing::warn!(task_id, "the run did not stop at its deadline; aborted");
                    break RunOutcome::timed_out(spec.name(), "deadline passed");
                }
                () = &mut cancel_stop => {
                    tracing::warn!(task_id, "the run did not stop after its cancel; aborted");
                    break RunOutcome::cancelled(spec.name());
                }
                result = &mut run, if run_done.is_none() => {
                    let outcome = match result {
                        Ok(outcome) => outcome,
                        Err(panic) => panicked(&spec, &*panic),
                    };
                    // Its last events are still in the channel.
                    if !channel_open {
                        break outcome;
                    }
                    run_done = Some(outcome);
                }
                event = receiver.recv(), if channel_open => match event {
                    Some(event) => {
                        // Publishing waits only when Redis is away and the
                        // buffer is full; the deadline still holds then.
                        tokio::select! {
                            () = forward(event, &publisher, memory.as_ref(), &mut spent) => {}
                            () = tokio::time::sleep_until(hard_stop) => {}
                        }
                    }
                    None => {
                        channel_open = false;
                        if let Some(outcome) = run_done.take() {
                            break outcome;
                        }
                    }
                },
            }
        };
        // A run stopped by its deadline or a cancel goes now, with its
        // calls in flight.
        drop(run);
        while let Ok(event) = receiver.try_recv() {
            tokio::select! {
                () = forward(event, &publisher, memory.as_ref(), &mut spent) => {}
                () = tokio::time::sleep_until(hard_stop + self.grace) => break,
            }
        }
        if let Some(memory) = &memory
            && outcome.status == OutcomeStatus::Cancelled
        {
            Box::pin(roll_back_if_asked(&self.session, memory, task_id)).await;
        }
        drop(memory);
        let mut execution = Execution::closing(outcome, publisher).await;
        execution.spent = spent.into_rows();
        execution
    }
}

/// What the model calls of one attempt used, by model.
#[derive(Debug, Default)]
struct Spent(std::collections::BTreeMap<String, exo_broker::ModelSpend>);

impl Spent {
    fn add(&mut self, model: String, usage: exo_proto::Usage) {
        let row = self
            .0
            .entry(model.clone())
            .or_insert_with(|| exo_broker::ModelSpend {
                model,
                ..Default::default()
            });
        row.usage += usage;
        row.calls += 1;
    }

    fn into_rows(self) -> Vec<exo_broker::ModelSpend> {
        self.0.into_values().collect()
    }
}

impl Execution {
    /// The outcome, with what `publisher` had not yet written.
    pub(crate) async fn closing(
        outcome: RunOutcome,
        publisher: exo_broker::EventPublisher,
    ) -> Self {
        let unsent = publisher.close_all().await;
        Execution {
            outcome,
            unsent_events: unsent.events,
            unsent_journal: unsent.journal,
            retries_used: 0,
            spent: Vec::new(),
        }
    }
}

/// Deletes what a cancelled run wrote to memory when a later task of its
/// conversation asked for a rollback.
async fn roll_back_if_asked(session: &WorkerSession, memory: &MemorySession, task_id: &str) {
    match session.rollback_requested(task_id).await {
        Ok(true) => match memory.roll_back(task_id).await {
            Ok(deleted) => {
                tracing::info!(task_id, deleted, "rolled back what the run wrote to memory");
            }
            Err(failure) => tracing::warn!(
                task_id,
                error = failure.message,
                "could not roll back what the run wrote to memory"
            ),
        },
        Ok(false) => {}
        Err(error) => tracing::warn!(task_id, %error, "could not read whether to roll back"),
    }
}

/// The step journal of a task's earlier attempts. A first attempt (with a
/// lease) has none and reads nothing; a retried, reclaimed or resumed one
/// reads it in one round trip.
async fn read_journal(
    session: &WorkerSession,
    task_id: &str,
    lease: Option<&exo_broker::Lease>,
) -> exo_broker::Result<Journal> {
    if lease.is_some_and(|lease| lease.attempt <= 1) {
        return Ok(Journal::default());
    }
    // Boxed, as it is rare: the run's future stays small.
    let records = Box::pin(session.journal(task_id)).await?;
    Ok(Journal::from_json(records.iter().map(String::as_str)))
}

/// Sends one thing a run produced where it goes: events to the stream,
/// messages to memory.
async fn forward(
    event: RunEvent,
    publisher: &exo_broker::EventPublisher,
    memory: Option<&MemorySession>,
    spent: &mut Spent,
) {
    match event {
        RunEvent::Stream(event) => {
            exo_observability::record::event_emitted(event.kind());
            publisher.publish(&event).await;
        }
        RunEvent::Message {
            agent_name,
            message,
        } => {
            if let Some(memory) = memory {
                Box::pin(memory.save(&agent_name, &message)).await;
            }
        }
        RunEvent::Journal(record) => match serde_json::to_string(&record) {
            Ok(json) => publisher.journal(json).await,
            Err(error) => tracing::warn!(%error, "a journal record did not serialize"),
        },
        RunEvent::Spent { model, usage } => spent.add(model, usage),
        _ => {}
    }
}

fn panicked(spec: &AgentSpec, panic: &(dyn std::any::Any + Send)) -> RunOutcome {
    let message = format!("the run panicked: {}", crate::attempt::panic_message(panic));
    RunOutcome::failed(spec.name(), message, ErrorType::Panic, true)
}
