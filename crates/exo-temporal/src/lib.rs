//! Durable execution of exo tasks on Temporal: one workflow
//! ([`AgentExecutionWorkflow`]) that runs one heartbeating activity
//! (`execute_agent`), the worker that polls for both, and the client that
//! starts a task's workflow, attaches to it, awaits it and cancels it.
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
//!    (its previous claimer died) the call attaches to it; when one already
//!    completed, the call attaches to its result; only a failed, cancelled
//!    or timed-out one is replaced by a new run.
//! 2. The workflow schedules `execute_agent` with a start-to-close timeout of
//!    `timeout_seconds` plus a margin, a heartbeat timeout, and a retry
//!    policy of `1 + max_retries` attempts with exponential backoff
//!    (`ConfigError` is never retried, nor is an outcome that says it cannot
//!    be helped by a retry).
//! 3. Whichever process polls the activity runs the agent through its
//!    [`ActivityHost`], heartbeating on a timer (not per event) so a long
//!    model call never misses its heartbeat timeout. A workflow cancel
//!    reaches the activity with the next heartbeat and fires the run's
//!    cancel token.
//! 4. The workflow completes with the [`AttemptOutcome`] of a completed run,
//!    fails with it (as application-failure details) when the run failed or
//!    timed out on its last attempt, and ends cancelled (with it as details)
//!    when it was cancelled. [`RunningWorkflow::outcome`] turns all of these
//!    back into an [`AttemptOutcome`].
//! 5. A run that stops at a call waiting for a person's approval fails its
//!    workflow run with the non-retryable `WaitingForApproval` failure (the
//!    waiting outcome as details). The claiming worker parks the task in
//!    Redis; after the decision the next claim starts a new run of the same
//!    id, whose activity replays the task's step journal from Redis, so
//!    no finished model or tool call runs again.
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
