//! How a run ended ([`RunOutcome`]), as every layer passes it upward: the
//! agent returns it, Temporal carries it between processes, and the worker
//! settles the task from it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ApprovalRequest, ErrorType, RunStatus, StreamEvent, Usage};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The agent (or swarm) gave its final answer.
    Completed,
    /// The run failed: see `error`, `error_type` and `retryable`.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// The run passed its deadline.
    TimedOut,
    /// The run stopped at a call to a tool that needs a person's approval
    /// (see `approval`); it goes on from its journal once decided.
    WaitingForApproval,
    /// The run stopped at its step limit (each step its own durable unit,
    /// e.g. a Temporal activity); it goes on from its journal.
    Yielded,
}

/// The end of a run.
///
/// As JSON every field is written; on reading, only `status` and
/// `agent_name` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// How it ended.
    pub status: OutcomeStatus,
    /// The agent's name, or the swarm's (members joined by `+`).
    pub agent_name: String,
    /// True for a swarm run.
    #[serde(default)]
    pub is_swarm: bool,
    /// The final output: for an agent all text of the run (every step), as
    /// the reference reports it; for a swarm the output its mode describes.
    #[serde(default)]
    pub output: String,
    /// Token usage of every model call of the run, all agents together.
    #[serde(default)]
    pub usage: Usage,
    /// The error message, for every status but `Completed`.
    #[serde(default)]
    pub error: Option<String>,
    /// The error's kind, for every status but `Completed`.
    #[serde(default)]
    pub error_type: Option<ErrorType>,
    /// False when running the task again cannot help (bad config, refused
    /// MCP server, authentication, max steps); meaningful for `Failed`.
    #[serde(default)]
    pub retryable: bool,
    /// For `WaitingForApproval`: the call that waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRequest>,
}

impl RunOutcome {
    /// A completed run of `agent_name` with `output`.
    pub fn completed(agent_name: impl Into<String>, output: impl Into<String>) -> Self {
        RunOutcome {
            status: OutcomeStatus::Completed,
            agent_name: agent_name.into(),
            is_swarm: false,
            output: output.into(),
            usage: Usage::default(),
            error: None,
            error_type: None,
            retryable: false,
            approval: None,
        }
    }

    /// A run that stopped to wait for a person's decision on `approval`.
    pub fn waiting(agent_name: impl Into<String>, approval: ApprovalRequest) -> Self {
        RunOutcome {
            status: OutcomeStatus::WaitingForApproval,
            approval: Some(approval),
            ..RunOutcome::completed(agent_name, "")
        }
    }

    /// A failed run. `retryable` counts only for a kind whose retryability
    /// is not fixed; a kind with a fixed one ([`ErrorType::retryable`])
    /// decides for itself.
    pub fn failed(
        agent_name: impl Into<String>,
        error: impl Into<String>,
        error_type: ErrorType,
        retryable: bool,
    ) -> Self {
        RunOutcome {
            status: OutcomeStatus::Failed,
            error: Some(error.into()),
            retryable: error_type.retryable().unwrap_or(retryable),
            error_type: Some(error_type),
            ..RunOutcome::completed(agent_name, "")
        }
    }

    /// A cancelled run: error `cancelled`, kind [`ErrorType::Cancelled`].
    pub fn cancelled(agent_name: impl Into<String>) -> Self {
        RunOutcome {
            status: OutcomeStatus::Cancelled,
            ..RunOutcome::failed(agent_name, "cancelled", ErrorType::Cancelled, false)
        }
    }

    /// A run that passed its deadline: kind [`ErrorType::Timeout`].
    pub fn timed_out(agent_name: impl Into<String>, error: impl Into<String>) -> Self {
        RunOutcome {
            status: OutcomeStatus::TimedOut,
            ..RunOutcome::failed(agent_name, error, ErrorType::Timeout, true)
        }
    }

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
            // Only a caller that goes on with the next step sets a step
            // limit; a yielded run that ends here was left unfinished.
            OutcomeStatus::Yielded => StreamEvent::status(
                RunStatus::Error,
                name,
                format!("{kind} '{name}' stopped at its step limit and was not continued"),
            ),
            OutcomeStatus::WaitingForApproval => StreamEvent::status(
                RunStatus::WaitingForTool,
                name,
                match &self.approval {
                    Some(approval) => format!(
                        "Waiting for approval of tool '{}' (call {})",
                        approval.tool_name, approval.tool_call_id
                    ),
                    None => "Waiting for approval".to_owned(),
                },
            ),
            OutcomeStatus::Cancelled => StreamEvent::status(
                RunStatus::Cancelled,
                name,
                format!("{kind} '{name}' was cancelled"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_as_json() {
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 2,
            total_tokens: 5,
        };
        // (outcome, its JSON)
        let cases = [
            (
                RunOutcome {
                    usage,
                    ..RunOutcome::completed("helper", "done")
                },
                json!({"status": "completed", "agent_name": "helper", "is_swarm": false, "output": "done",
                       "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
                       "error": null, "error_type": null, "retryable": false}),
            ),
            (
                RunOutcome::timed_out("helper", "deadline passed"),
                json!({"status": "timed_out", "agent_name": "helper", "is_swarm": false, "output": "",
                       "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                       "error": "deadline passed", "error_type": "TimeoutError", "retryable": true}),
            ),
            (
                RunOutcome {
                    is_swarm: true,
                    ..RunOutcome::cancelled("a+b")
                },
                json!({"status": "cancelled", "agent_name": "a+b", "is_swarm": true, "output": "",
                       "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                       "error": "cancelled", "error_type": "CancelledError", "retryable": false}),
            ),
            (
                RunOutcome::failed("helper", "bad value", ErrorType::from("ValueError"), true),
                json!({"status": "failed", "agent_name": "helper", "is_swarm": false, "output": "",
                       "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                       "error": "bad value", "error_type": "ValueError", "retryable": true}),
            ),
        ];
        for (outcome, expected) in cases {
            let json = serde_json::to_value(&outcome).unwrap();
            assert_eq!(json, expected, "{outcome:?}");
            let back: RunOutcome = serde_json::from_value(json).unwrap();
            assert_eq!(back, outcome);
        }
        let minimal: RunOutcome =
            serde_json::from_str(r#"{"status":"completed","agent_name":"a"}"#).unwrap();
        assert_eq!(minimal, RunOutcome::completed("a", ""));
    }

    #[test]
    fn a_kind_with_fixed_retryability_decides_it() {
        // (kind, retryable asked for, retryable recorded)
        let cases = [
            (ErrorType::Config, true, false),
            (ErrorType::Timeout, false, true),
            (ErrorType::Runtime, true, true),
            (ErrorType::Runtime, false, false),
            (ErrorType::Panic, true, true),
        ];
        for (kind, asked, recorded) in cases {
            let outcome = RunOutcome::failed("a", "e", kind.clone(), asked);
            assert_eq!(outcome.retryable, recorded, "{kind} asked {asked}");
        }
    }

    #[test]
    fn terminal_events() {
        // (outcome, terminal event JSON)
        let cases = [
            (
                RunOutcome::completed("helper", "hi"),
                json!({"type": "status", "status": "completed", "agent_name": "helper", "message": "Agent 'helper' completed execution"}),
            ),
            (
                RunOutcome {
                    is_swarm: true,
                    ..RunOutcome::cancelled("a+b")
                },
                json!({"type": "status", "status": "cancelled", "agent_name": "a+b", "message": "Swarm 'a+b' was cancelled"}),
            ),
            (
                RunOutcome::timed_out("helper", "too slow"),
                json!({"type": "status", "status": "error", "agent_name": "helper", "message": "too slow"}),
            ),
            (
                RunOutcome::failed("helper", "boom", ErrorType::Runtime, true),
                json!({"type": "status", "status": "error", "agent_name": "helper", "message": "boom"}),
            ),
        ];
        for (outcome, expected) in cases {
            let event = serde_json::to_value(outcome.terminal_event()).unwrap();
            assert_eq!(event, expected, "{outcome:?}");
        }
        assert!(RunOutcome::completed("a", "").is_completed());
        assert_eq!(
            RunOutcome::completed("a", "out").result_json(),
            json!({"output": "out"})
        );
    }
}
