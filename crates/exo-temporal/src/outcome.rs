//! What goes into a task's workflow and what comes out of it.

use std::time::Duration;

use exo_proto::Usage;
use serde::{Deserialize, Serialize};

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

    /// The start-to-close timeout of one activity attempt.
    pub fn start_to_close(&self) -> Duration {
        self.timeout() + Duration::from_millis(self.timeout_margin_ms)
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
    /// minute. A backstop only; attempts end long before it.
    pub fn execution_timeout(&self) -> Duration {
        let per_attempt = self.start_to_close() + self.retry_max_interval();
        per_attempt
            .saturating_mul(self.max_attempts())
            .saturating_add(Duration::from_secs(60))
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
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The agent (or swarm) gave its final answer.
    Completed,
    /// The run failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// The run passed its deadline.
    TimedOut,
}

/// The end of a run, as the workflow reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOutcome {
    /// How it ended.
    pub status: OutcomeKind,
    /// The agent's name, or the swarm's.
    pub agent_name: String,
    /// True for a swarm run.
    #[serde(default)]
    pub is_swarm: bool,
    /// The final output.
    #[serde(default)]
    pub output: String,
    /// Token usage of the run.
    #[serde(default)]
    pub usage: Usage,
    /// The error message, for every status but `completed`.
    #[serde(default)]
    pub error: Option<String>,
    /// The error's kind, e.g. `RuntimeError`, `ConfigError`,
    /// `TimeoutError`.
    #[serde(default)]
    pub error_type: Option<String>,
    /// False when running the task again cannot help.
    #[serde(default)]
    pub retryable: bool,
    /// The activity attempt that produced it (1 for the first; 0 when not
    /// known).
    #[serde(default)]
    pub attempt: u32,
}

impl AgentOutcome {
    /// A failed outcome.
    pub fn failed(
        agent_name: impl Into<String>,
        error: impl Into<String>,
        error_type: impl Into<String>,
        retryable: bool,
    ) -> Self {
        AgentOutcome {
            status: OutcomeKind::Failed,
            agent_name: agent_name.into(),
            is_swarm: false,
            output: String::new(),
            usage: Usage::default(),
            error: Some(error.into()),
            error_type: Some(error_type.into()),
            retryable,
            attempt: 0,
        }
    }

    /// A cancelled outcome.
    pub fn cancelled(agent_name: impl Into<String>) -> Self {
        AgentOutcome {
            status: OutcomeKind::Cancelled,
            retryable: false,
            ..Self::failed(agent_name, "cancelled", "CancelledError", false)
        }
    }

    /// A timed-out outcome.
    pub fn timed_out(agent_name: impl Into<String>, error: impl Into<String>) -> Self {
        AgentOutcome {
            status: OutcomeKind::TimedOut,
            ..Self::failed(agent_name, error, "TimeoutError", true)
        }
    }

    /// The error message, or a word for the status when there is none.
    pub fn error_text(&self) -> String {
        self.error.clone().unwrap_or_else(|| {
            match self.status {
                OutcomeKind::Completed => "",
                OutcomeKind::Failed => "the run failed",
                OutcomeKind::Cancelled => "cancelled",
                OutcomeKind::TimedOut => "timed out",
            }
            .to_owned()
        })
    }
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
            assert_eq!(task.execution_timeout().as_millis(), execution, "{task:?}");
        }
    }

    #[test]
    fn outcomes_round_trip_as_json() {
        let outcome = AgentOutcome::timed_out("helper", "deadline passed");
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["status"], "timed_out");
        assert_eq!(json["error_type"], "TimeoutError");
        let back: AgentOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, outcome);
        let minimal: AgentOutcome =
            serde_json::from_str(r#"{"status":"completed","agent_name":"a"}"#).unwrap();
        assert_eq!(minimal.output, "");
        assert!(!minimal.retryable);
    }
}
