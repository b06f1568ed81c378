//! Durable execution of exo tasks on Temporal: one workflow
//! ([`AgentExecutionWorkflow`]) that runs a task one step at a time, each
//! step (a model call or a tool call) its own heartbeating activity
//! (`execute_agent`), the worker that polls for both, and the client that
//! starts a task's workflow, attaches to it, awaits it, passes decisions to
//! it and cancels it.
//!
//! `exo-worker` depends on this crate behind its `temporal` feature; nothing
//! else should. This crate never learns about Redis, agents or memory: the
//! activity hands the task payload to an [`ActivityHost`] (implemented by
//! the worker) and only moves JSON and an [`exo_proto::RunOutcome`] in and
//! out of Temporal, with the attempt that produced it beside it
//! ([`AttemptOutcome`]). It depends on `exo-proto` for the shared value
//! types only.
//!
//! How a task runs:
//!
//! 1. The worker that claimed the task calls [`TemporalClient::start_or_attach`]
//!    with an [`AgentTask`]. The workflow id is `exo-task-{task_id}`, so a
//!    task never runs twice at once: when a workflow with that id is running
//!    (its previous claimer died, or it waits for a decision) the call
//!    attaches to it; when one already completed, the call attaches to its
//!    result; only a failed, cancelled or timed-out one is replaced by a new
//!    run.
//! 2. The workflow schedules `execute_agent` with a step limit of one: the
//!    activity replays the task's step journal (kept in Redis by the host)
//!    and runs the next model call or tool call, then ends with a `Yielded`
//!    outcome, and the workflow schedules the next step, until the run ends
//!    by itself. A finished step is in the workflow's history: neither a
//!    retried activity nor a replayed workflow repeats it. Each step has a
//!    start-to-close timeout of the time left before the task's deadline
//!    plus a margin, a heartbeat timeout, and a retry policy of
//!    `1 + max_retries` attempts with exponential backoff (`ConfigError` is
//!    never retried, nor is an outcome that says it cannot be helped by a
//!    retry). Histories written before steps were activities replay as one
//!    activity for the whole run (a workflow patch).
//! 3. Whichever process polls the activity runs the step through its
//!    [`ActivityHost`], heartbeating on a timer (not per event) so a long
//!    model call never misses its heartbeat timeout. A workflow cancel
//!    reaches the activity with the next heartbeat and fires the run's
//!    cancel token.
//! 4. The workflow completes with the [`AttemptOutcome`] of a completed run,
//!    fails with it (as application-failure details) when a step failed or
//!    timed out on its last attempt, and ends cancelled (with it as details)
//!    when it was cancelled. [`RunningWorkflow::outcome`] turns all of these
//!    back into an [`AttemptOutcome`].
//! 5. A step that stops at a call waiting for a person's approval ends its
//!    activity with the waiting outcome. The workflow keeps it (query
//!    `waiting`, [`RunningWorkflow::waiting`]): the claiming worker reads
//!    it, parks the task in Redis and frees its slot, while the workflow
//!    waits for the `decided` signal of that call. The worker that claims
//!    the decided task sends it ([`RunningWorkflow::decide`], the decision
//!    record: who, when, what), and the next step replays the journal,
//!    decision included. Waiting does not count against the task's
//!    deadline. While it waits the workflow asks now and then (activity
//!    `task_ended`, [`ActivityHost::task_ended`]) whether the task ended
//!    outside it (cancelled while waiting), and then ends cancelled;
//!    without a signal within the approval timeout plus five minutes it
//!    fails.
//!
//! Configuration comes from the environment ([`TemporalConfig::from_env`]):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TEMPORAL_HOST` | `localhost:7233` | the Temporal frontend, `host:port` or a URL |
//! | `TEMPORAL_NAMESPACE` | `default` | the namespace |
//! | `EXO_TEMPORAL_TASK_QUEUE` | `exo-agents` | the task queue of the workflow and the activity |
//! | `EXO_TEMPORAL_HEARTBEAT_TIMEOUT` | `20` | seconds without a heartbeat after which an activity attempt is presumed dead and retried |
//!
//! Main types: [`TemporalConfig`], [`TemporalClient`], [`RunningWorkflow`],
//! [`TemporalWorker`], [`ActivityHost`], [`AgentTask`], [`AttemptOutcome`].
//!
//! # Feature flags
//!
//! None. The crate itself is the optional part: `exo-worker` pulls it in
//! with its `temporal` feature.

mod activity;
mod client;
mod config;
mod error;
mod outcome;
mod worker;
mod workflow;

pub use activity::{ActivityHost, ActivityRun, AgentActivities};
pub use client::{RunningWorkflow, TemporalClient, WorkflowState, workflow_id};
pub use config::TemporalConfig;
pub use error::{Error, Result};
pub use outcome::{ActivityInput, AgentTask, AttemptOutcome};
pub use worker::TemporalWorker;
pub use workflow::AgentExecutionWorkflow;
