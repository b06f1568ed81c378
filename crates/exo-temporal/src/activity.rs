//! The `execute_agent` activity and the host trait it runs agents through.

// The SDK's macros generate marker structs without `Debug`.
#![allow(missing_debug_implementations)]

use std::{sync::Arc, time::Duration};

use exo_proto::{ErrorType, OutcomeStatus, RunOutcome};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outcome::{ActivityInput, AttemptOutcome, application_failure};

/// One activity attempt, as the host sees it.
#[derive(Debug, Clone)]
pub struct ActivityRun {
    /// The task id.
    pub task_id: String,
    /// The task payload, as queued.
    pub payload_json: String,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// Attempts in all (0 when Temporal reports no limit).
    pub max_attempts: u32,
    /// Fires when the workflow was cancelled or this process shuts down;
    /// the run must then stop promptly.
    pub cancel: CancellationToken,
    /// The run's deadline.
    pub deadline: Instant,
    /// Run at most this many new model or tool calls, then stop with a
    /// `Yielded` outcome: the workflow schedules the next step. `None`:
    /// the whole run (workflows started before steps were activities).
    pub step_limit: Option<u32>,
}

/// Runs agents for the activity. The worker implements it: it runs the
/// agent with memory, publishes every event it produced (all of them,
/// before returning, since the attempt may run on another process than the
/// one that claimed the task), and reports the outcome. It never writes the
/// terminal status event; the claiming worker does.
#[async_trait::async_trait]
pub trait ActivityHost: Send + Sync + 'static {
    /// Runs one attempt to its end.
    async fn run(&self, run: ActivityRun) -> RunOutcome;

    /// Whether the task has ended outside the workflow (cancelled while
    /// its run waited for a decision): the waiting workflow then ends
    /// cancelled. An error means "cannot tell": the workflow asks again
    /// later. The default never knows of an end.
    async fn task_ended(&self, _task_id: &str) -> Result<bool, String> {
        Ok(false)
    }
}

/// Why a running activity stopped before its run ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Temporal cancelled the activity (the workflow was cancelled, or the
    /// attempt is already over on the server).
    Cancelled,
    /// This process is shutting down; another worker retries the attempt.
    Shutdown,
}

/// What the activity heartbeats: the attempt it is on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Progress {
    attempt: u32,
}

/// The activities a [`crate::TemporalWorker`] registers: `execute_agent`.
pub struct AgentActivities {
    host: Arc<dyn ActivityHost>,
    heartbeat_interval: Duration,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AgentActivities {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AgentActivities")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl AgentActivities {
    /// Activities running agents through `host`, heartbeating every
    /// `heartbeat_interval`; `shutdown` stops running attempts so another
    /// worker retries them.
    pub fn new(
        host: Arc<dyn ActivityHost>,
        heartbeat_interval: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        AgentActivities {
            host,
            heartbeat_interval,
            shutdown,
        }
    }
}

#[activities]
impl AgentActivities {
    /// Runs the task's agent through the host, heartbeating on a timer, and
    /// turns its outcome into the activity's result: `Ok` for a completed
    /// run, a cancellation when Temporal cancelled it, and an application
    /// failure otherwise (retryable unless the outcome says a retry cannot
    /// help), carrying the outcome and the attempt number as its details.
    // The SDK's macro adds an undocumented constant named after it.
    #[allow(missing_docs)]
    #[activity(name = "execute_agent")]
    pub async fn execute_agent(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ActivityInput,
    ) -> Result<AttemptOutcome, ActivityError> {
        let info = ctx.info();
        let attempt = info.attempt.max(1);
        let max_attempts = info
            .retry_policy
            .as_ref()
            .map(|policy| policy.maximum_attempts())
            .unwrap_or(0);
        let cancel = CancellationToken::new();
        let run = ActivityRun {
            task_id: input.task_id.clone(),
            payload_json: input.payload_json,
            attempt,
            max_attempts,
            cancel: cancel.clone(),
            deadline: Instant::now()
                + Duration::from_secs_f64(input.timeout_seconds.clamp(0.001, 315_360_000.0)),
            step_limit: input.step_limit,
        };
        tracing::info!(task_id = input.task_id, attempt, "activity started");
        let host = self.host.clone();
        let mut running = tokio::spawn(async move { host.run(run).await });
        let mut ticker = tokio::time::interval(self.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = None;
        let joined = loop {
            tokio::select! {
                joined = &mut running => break joined,
                _ = ticker.tick() => {
                    if let Err(error) = ctx.record_heartbeat(Progress { attempt }).await {
                        tracing::warn!(%error, task_id = input.task_id, "heartbeat not recorded");
                    }
                }
                () = ctx.cancelled(), if stop.is_none() => {
                    tracing::info!(task_id = input.task_id, attempt, "activity cancelled by Temporal; stopping the run");
                    stop = Some(Stop::Cancelled);
                    cancel.cancel();
                }
                () = self.shutdown.cancelled(), if stop.is_none() => {
                    tracing::warn!(task_id = input.task_id, attempt, "worker shutting down; stopping the run so another worker retries it");
                    stop = Some(Stop::Shutdown);
                    cancel.cancel();
                }
            }
        };
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(error) => {
                return Err(failed(AttemptOutcome {
                    outcome: RunOutcome::failed(
                        "",
                        format!("the activity's run panicked: {error}"),
                        ErrorType::Panic,
                        true,
                    ),
                    attempt,
                }));
            }
        };
        tracing::info!(task_id = input.task_id, attempt, status = ?outcome.status, "activity finished");
        activity_result(AttemptOutcome { outcome, attempt }, stop)
    }

    /// Whether the task has ended outside the workflow (see
    /// [`ActivityHost::task_ended`]); asked now and then while the workflow
    /// waits for a decision.
    // The SDK's macro adds an undocumented constant named after it.
    #[allow(missing_docs)]
    #[activity(name = "task_ended")]
    pub async fn task_ended(
        self: Arc<Self>,
        _ctx: ActivityContext,
        task_id: String,
    ) -> Result<bool, ActivityError> {
        self.host
            .task_ended(&task_id)
            .await
            .map_err(|error| ActivityError::from(std::io::Error::other(error)))
    }
}

/// The activity's result for a run's outcome and what stopped it.
fn activity_result(
    ended: AttemptOutcome,
    stop: Option<Stop>,
) -> Result<AttemptOutcome, ActivityError> {
    let AttemptOutcome { outcome, attempt } = ended;
    match (outcome.status, stop) {
        // A finished step: its calls are in the journal whatever stopped
        // the activity since, and the workflow schedules the next step.
        (OutcomeStatus::Completed | OutcomeStatus::Yielded, _) => {
            Ok(AttemptOutcome { outcome, attempt })
        }
        (_, Some(Stop::Shutdown)) => Err(failed(AttemptOutcome {
            outcome: RunOutcome::failed(
                outcome.agent_name,
                "the worker running this attempt shut down",
                ErrorType::WorkerShutdown,
                true,
            ),
            attempt,
        })),
        (_, Some(Stop::Cancelled)) => Err(ActivityError::cancelled_with_details(AttemptOutcome {
            outcome: RunOutcome {
                status: OutcomeStatus::Cancelled,
                ..outcome
            },
            attempt,
        })),
        (OutcomeStatus::Cancelled, None) => Err(failed(AttemptOutcome {
            outcome: RunOutcome {
                status: OutcomeStatus::Failed,
                error: Some("the run stopped without a cancel request".to_owned()),
                error_type: Some(ErrorType::Runtime),
                retryable: true,
                ..outcome
            },
            attempt,
        })),
        (OutcomeStatus::Failed | OutcomeStatus::TimedOut, None) => {
            Err(failed(AttemptOutcome { outcome, attempt }))
        }
        // A call waits for a person: the workflow run ends (never retried)
        // with the waiting outcome, the claiming worker parks the task in
        // Redis and frees its slot, and the decision re-queues it; its next
        // claim starts a new run of the workflow, which replays the journal
        // (the decision included).
        (OutcomeStatus::WaitingForApproval, None) => Err(ActivityError::application(
            application_failure(&AttemptOutcome { outcome, attempt }, true),
        )),
    }
}

/// The activity failure for an outcome: retryable as the outcome says.
fn failed(ended: AttemptOutcome) -> ActivityError {
    let non_retryable = !ended.outcome.retryable;
    ActivityError::application(application_failure(&ended, non_retryable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_become_activity_results() {
        let completed = RunOutcome::completed("a", "done");
        let failed = RunOutcome::failed("a", "bad config", ErrorType::Config, false);
        let flaky = RunOutcome::failed("a", "rate limited", ErrorType::Runtime, true);
        let timed_out = RunOutcome::timed_out("a", "deadline passed");
        let cancelled = RunOutcome::cancelled("a");
        let waiting = RunOutcome::waiting(
            "a",
            exo_proto::ApprovalRequest {
                key: exo_proto::StepKey {
                    scope: "a".into(),
                    call: 1,
                },
                agent_name: "a".into(),
                tool_call_id: "c1".into(),
                tool_name: "send".into(),
                arguments: "{}".into(),
            },
        );
        // (outcome, stop, expected: Ok, or Err as (kind, type, non-retryable))
        let cases: Vec<(RunOutcome, Option<Stop>, Result<(), (&str, &str, bool)>)> = vec![
            (completed.clone(), None, Ok(())),
            (completed, Some(Stop::Cancelled), Ok(())),
            (failed, None, Err(("application", "ConfigError", true))),
            (
                flaky.clone(),
                None,
                Err(("application", "RuntimeError", false)),
            ),
            (timed_out, None, Err(("application", "TimeoutError", false))),
            (
                waiting.clone(),
                None,
                Err(("application", "WaitingForApproval", true)),
            ),
            (
                waiting,
                Some(Stop::Cancelled),
                Err(("cancelled", "", false)),
            ),
            (
                cancelled.clone(),
                Some(Stop::Cancelled),
                Err(("cancelled", "", false)),
            ),
            (
                cancelled.clone(),
                None,
                Err(("application", "RuntimeError", false)),
            ),
            (
                cancelled,
                Some(Stop::Shutdown),
                Err(("application", "WorkerShutdown", false)),
            ),
            (
                flaky,
                Some(Stop::Shutdown),
                Err(("application", "WorkerShutdown", false)),
            ),
        ];
        for (outcome, stop, expected) in cases {
            let label = format!("{:?} {stop:?}", outcome.status);
            let ended = AttemptOutcome {
                outcome,
                attempt: 2,
            };
            match (activity_result(ended, stop), expected) {
                (Ok(ended), Ok(())) => assert_eq!(ended.attempt, 2, "{label}"),
                (Err(ActivityError::Cancelled { details }), Err(("cancelled", _, _))) => {
                    assert!(details.is_some(), "{label}");
                }
                (
                    Err(ActivityError::Application(failure)),
                    Err(("application", kind, non_retryable)),
                ) => {
                    assert_eq!(failure.type_name(), Some(kind), "{label}");
                    assert_eq!(failure.is_non_retryable(), non_retryable, "{label}");
                }
                (result, expected) => panic!("{label}: {result:?} vs {expected:?}"),
            }
        }
    }
}
