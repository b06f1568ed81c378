//! What goes into a task's workflow and what comes out of it.

use std::time::Duration;

use exo_proto::{ErrorType, OutcomeStatus, RunOutcome};
use serde::{Deserialize, Serialize};
use temporalio_common::error::ApplicationFailure;

/// A claimed task, as the client hands it to Temporal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTask {
    /// The task id (the workflow id is `exo-task-{task_id}`).
    pub task_id: String,
    /// The task payload, as queued.
    pub payload_json: String,
    /// The run's deadline, per attempt (the payload's `timeout_seconds`).
    pub timeout_seconds: f64,
    /// Retries after the first attempt (`max_retries` of the payload, or the
    /// worker's default).
    pub max_retries: u32,
    /// Milliseconds before the first retry; each retry doubles it.
    pub retry_initial_interval_ms: u64,
    /// The longest wait between retries, in milliseconds.
    pub retry_max_interval_ms: u64,
    /// Milliseconds without a heartbeat after which an attempt is presumed
    /// dead.
    pub heartbeat_timeout_ms: u64,
    /// Milliseconds added to `timeout_seconds` for the activity's
    /// start-to-close timeout.
    pub timeout_margin_ms: u64,
    /// How long the run may wait for a decision on a call to one of its
    /// agent's `hitl_tools`, each time (0: its agent has none, so it never
    /// waits). The workflow waits for the decision's signal a little
    /// longer: the worker that claims the decided task sends it.
    #[serde(default)]
    pub approval_timeout_ms: u64,
}

impl AgentTask {
    /// Attempts in all: `1 + max_retries`.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The run's deadline as a duration (at least 1 ms, at most ten years).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds.clamp(0.001, 315_360_000.0))
    }

    /// The start-to-close timeout of one activity attempt of the whole
    /// run.
    pub fn start_to_close(&self) -> Duration {
        self.timeout() + self.timeout_margin()
    }

    /// What an activity attempt gets beyond the run's deadline to stop and
    /// publish its last events.
    pub fn timeout_margin(&self) -> Duration {
        Duration::from_millis(self.timeout_margin_ms)
    }

    /// The heartbeat timeout of the activity.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.max(1_000))
    }

    /// The delay before the first retry (at least 1 ms; Temporal refuses
    /// zero).
    pub fn retry_initial_interval(&self) -> Duration {
        Duration::from_millis(self.retry_initial_interval_ms.max(1))
    }

    /// The longest delay between retries (never below the first one).
    pub fn retry_max_interval(&self) -> Duration {
        Duration::from_millis(self.retry_max_interval_ms).max(self.retry_initial_interval())
    }

    /// How long the whole workflow may take at most: every attempt runs to
    /// its start-to-close timeout and waits the longest backoff, plus a
    /// minute. A backstop only; attempts end long before it. None for a
    /// run that may wait for people (as many times as it calls such tools;
    /// each wait is bounded by [`AgentTask::approval_wait`]).
    pub fn execution_timeout(&self) -> Option<Duration> {
        if self.approval_timeout_ms > 0 {
            return None;
        }
        let per_attempt = self.start_to_close() + self.retry_max_interval();
        Some(
            per_attempt
                .saturating_mul(self.max_attempts())
                .saturating_add(Duration::from_secs(60)),
        )
    }

    /// How long the workflow waits for the signal of a decision: the
    /// approval timeout plus five minutes for the reaper to deny a call
    /// past its deadline and a worker to claim the task and signal it.
    /// After that the workflow fails (the task was cancelled while it
    /// waited, or no worker came).
    pub fn approval_wait(&self) -> Duration {
        Duration::from_millis(self.approval_timeout_ms) + Duration::from_secs(300)
    }

    /// How often a waiting workflow asks whether its task ended meanwhile
    /// (cancelled while it waited): a sixtieth of the approval timeout,
    /// between 1 s and a minute.
    pub fn approval_check_interval(&self) -> Duration {
        Duration::from_millis(self.approval_timeout_ms / 60)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// What one activity attempt gets: the payload and its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityInput {
    /// The task id.
    pub task_id: String,
    /// The task payload, as queued.
    pub payload_json: String,
    /// The run's deadline, from the start of the attempt.
    pub timeout_seconds: f64,
    /// Run at most this many new model or tool calls, then end the
    /// activity with a `Yielded` outcome. Absent (workflows started before
    /// steps were activities): the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_limit: Option<u32>,
}

/// What the workflow reports: a run's outcome and the activity attempt
/// that produced it. As JSON it is the outcome's object with an `attempt`
/// field beside the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptOutcome {
    /// How the run ended.
    #[serde(flatten)]
    pub outcome: RunOutcome,
    /// The activity attempt that produced it (1 for the first; 0 when not
    /// known).
    #[serde(default)]
    pub attempt: u32,
}

impl AttemptOutcome {
    /// An outcome no known attempt produced (Temporal reported the end).
    pub fn unattributed(outcome: RunOutcome) -> Self {
        AttemptOutcome {
            outcome,
            attempt: 0,
        }
    }
}

/// The failure type of a run that waits for a person's decision. The
/// workflow run ends with it (never retried), so the task's next claim,
/// after the decision, starts a new run of the same workflow id.
pub(crate) const WAITING_FOR_APPROVAL: &str = "WaitingForApproval";

/// The application failure that carries an outcome: named after its error
/// type, with its error message, and the outcome as its details.
pub(crate) fn application_failure(
    ended: &AttemptOutcome,
    non_retryable: bool,
) -> ApplicationFailure {
    let outcome = &ended.outcome;
    let message = outcome.error.clone().unwrap_or_else(|| {
        match outcome.status {
            OutcomeStatus::Completed => "",
            OutcomeStatus::Failed => "the run failed",
            OutcomeStatus::Cancelled => "cancelled",
            OutcomeStatus::TimedOut => "timed out",
            OutcomeStatus::WaitingForApproval => "waiting for approval",
            OutcomeStatus::Yielded => "stopped at its step limit",
        }
        .to_owned()
    });
    let type_name = if outcome.status == OutcomeStatus::WaitingForApproval {
        WAITING_FOR_APPROVAL.to_owned()
    } else {
        outcome
            .error_type
            .as_ref()
            .unwrap_or(&ErrorType::Runtime)
            .as_str()
            .to_owned()
    };
    ApplicationFailure::builder(message)
        .type_name(type_name)
        .non_retryable(non_retryable)
        .details(ended.clone())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(timeout_seconds: f64, max_retries: u32, initial: u64, max: u64) -> AgentTask {
        AgentTask {
            task_id: "t".into(),
            payload_json: "{}".into(),
            timeout_seconds,
            max_retries,
            retry_initial_interval_ms: initial,
            retry_max_interval_ms: max,
            heartbeat_timeout_ms: 20_000,
            timeout_margin_ms: 10_000,
            approval_timeout_ms: 0,
        }
    }

    #[test]
    fn timeouts_and_backoff() {
        // (task, attempts, start-to-close, first retry, longest retry, execution timeout)
        let cases = [
            (
                task(300.0, 3, 1_000, 60_000),
                4,
                310_000,
                1_000,
                60_000,
                1_540_000,
            ),
            (task(0.5, 0, 0, 0), 1, 10_500, 1, 1, 70_501),
            (task(2.0, 1, 500, 100), 2, 12_000, 500, 500, 85_000),
        ];
        for (task, attempts, start_to_close, initial, max, execution) in cases {
            assert_eq!(task.max_attempts(), attempts, "{task:?}");
            assert_eq!(
                task.start_to_close().as_millis(),
                start_to_close,
                "{task:?}"
            );
            assert_eq!(
                task.retry_initial_interval().as_millis(),
                initial,
                "{task:?}"
            );
            assert_eq!(task.retry_max_interval().as_millis(), max, "{task:?}");
            assert_eq!(
                task.execution_timeout().map(|timeout| timeout.as_millis()),
                Some(execution),
                "{task:?}"
            );
        }
        // A run that may wait for people has no execution timeout; each
        // wait has its bound.
        let waiting = AgentTask {
            approval_timeout_ms: 3_600_000,
            ..task(300.0, 3, 1_000, 60_000)
        };
        assert_eq!(waiting.execution_timeout(), None);
        assert_eq!(waiting.approval_wait().as_secs(), 3_900);
        assert_eq!(waiting.approval_check_interval().as_secs(), 60);
        let short = AgentTask {
            approval_timeout_ms: 30_000,
            ..waiting
        };
        assert_eq!(short.approval_check_interval().as_secs(), 1);
    }

    #[test]
    fn outcomes_round_trip_as_json() {
        let ended = AttemptOutcome {
            outcome: RunOutcome::timed_out("helper", "deadline passed"),
            attempt: 2,
        };
        let json = serde_json::to_value(&ended).unwrap();
        assert_eq!(json["status"], "timed_out");
        assert_eq!(json["error_type"], "TimeoutError");
        assert_eq!(json["attempt"], 2);
        let back: AttemptOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, ended);
        let minimal: AttemptOutcome =
            serde_json::from_str(r#"{"status":"completed","agent_name":"a"}"#).unwrap();
        assert_eq!(minimal.outcome.output, "");
        assert!(!minimal.outcome.retryable);
        assert_eq!(minimal.attempt, 0);
    }

    #[test]
    fn application_failures_carry_the_outcome() {
        // (outcome, non-retryable, expected message and type name)
        let cases = [
            (
                RunOutcome::failed("a", "bad config", ErrorType::Config, false),
                true,
                "bad config",
                "ConfigError",
            ),
            (
                RunOutcome {
                    error: None,
                    error_type: None,
                    ..RunOutcome::timed_out("a", "")
                },
                false,
                "timed out",
                "RuntimeError",
            ),
            (
                RunOutcome::failed("a", "no", ErrorType::from("ValueError"), true),
                false,
                "no",
                "ValueError",
            ),
        ];
        for (outcome, non_retryable, message, type_name) in cases {
            let ended = AttemptOutcome {
                outcome,
                attempt: 3,
            };
            let failure = application_failure(&ended, non_retryable);
            assert_eq!(failure.type_name(), Some(type_name), "{ended:?}");
            assert_eq!(failure.is_non_retryable(), non_retryable, "{ended:?}");
            assert_eq!(failure.to_string(), message);
        }
    }
}
