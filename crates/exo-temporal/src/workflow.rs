//! `AgentExecutionWorkflow`: one task, one `execute_agent` activity per
//! step (a model call or a tool call).
//!
//! Workflow code must be deterministic: everything here is computed from
//! the workflow's input, its clock and the activities' results, nothing
//! else.

// The SDK's macros generate marker structs without `Debug`.
#![allow(missing_debug_implementations)]

use std::{collections::BTreeSet, time::Duration};

use exo_proto::{DecisionRecord, ErrorType, OutcomeStatus, RunOutcome};
use temporalio_common::{
    RetryPolicy,
    error::{ActivityExecutionError, IncomingError, TimeoutType},
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityOptions, SyncWorkflowContext, WorkflowContext,
    WorkflowContextView, WorkflowResult, WorkflowTermination, workflows::select,
};

use crate::{
    activity::AgentActivities,
    outcome::{ActivityInput, AgentTask, AttemptOutcome, application_failure},
};

/// Runs one task's agent durably, one step per activity: each
/// `execute_agent` activity replays the task's step journal (in Redis) and
/// runs one new model call or tool call, then ends with a `Yielded`
/// outcome, and the workflow schedules the next, until the run ends. A
/// finished step is in the workflow's history, so neither a retried
/// activity nor a replayed workflow repeats it. Each step gets the task's
/// retry budget and the time left before the task's deadline.
///
/// A step that stops at a call to one of the agent's `hitl_tools` ends its
/// activity with the waiting outcome; the workflow keeps it (query
/// `waiting`, which the claiming worker reads to park the task in Redis
/// and free its slot) and waits for the `decided` signal of that call.
/// The worker that claims the task after the decision sends it (the
/// decision record: who, when, what), and the next step replays the
/// journal, decision included. Time spent waiting does not count against
/// the task's deadline. Every [`AgentTask::approval_check_interval`] the
/// workflow asks (activity `task_ended`) whether the task ended outside it
/// (cancelled while it waited), and then ends cancelled. No signal within
/// [`AgentTask::approval_wait`] fails the workflow.
///
/// The workflow ends with the run's [`AttemptOutcome`]: as its result when
/// the run completed, as the details of its failure when a step failed or
/// timed out on its last attempt, and as the details of its cancellation
/// when it was cancelled. Histories written before steps were activities
/// (one activity for the whole run) replay as they were.
#[workflow]
#[derive(Debug, Default)]
pub struct AgentExecutionWorkflow {
    /// The outcome of the step that waits for a decision, while it waits.
    waiting: Option<AttemptOutcome>,
    /// The calls decided so far (see [`decision_key`]).
    decided: BTreeSet<String>,
}

/// How a decision names its call: scope, model call and tool call id.
fn decision_key(key: &exo_proto::StepKey, tool_call_id: &str) -> String {
    format!("{}/{}/{tool_call_id}", key.scope, key.call)
}

/// The patch that made each step its own activity.
const STEP_ACTIVITIES: &str = "exo-step-activities";

/// Steps one workflow run schedules at most: a backstop far beyond any
/// agent's `max_steps` times its tool calls.
const MAX_STEPS: u32 = 10_000;

#[workflow_methods]
impl AgentExecutionWorkflow {
    /// The workflow's body.
    // The SDK's macro adds an undocumented constant named after it.
    #[allow(missing_docs)]
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        task: AgentTask,
    ) -> WorkflowResult<AttemptOutcome> {
        if !ctx.patched(STEP_ACTIVITIES) {
            let input = ActivityInput {
                task_id: task.task_id.clone(),
                payload_json: task.payload_json.clone(),
                timeout_seconds: task.timeout_seconds,
                step_limit: None,
            };
            return match ctx
                .execute_activity(
                    AgentActivities::execute_agent,
                    input,
                    activity_options(&task, task.timeout()),
                )
                .await
            {
                Ok(outcome) => Ok(outcome),
                Err(error) => Err(termination(&task, &error)),
            };
        }
        let started = ctx.workflow_time();
        // Time spent waiting for people: not the run's.
        let mut waited = Duration::ZERO;
        let mut last = AttemptOutcome::unattributed(RunOutcome::timed_out("", "deadline passed"));
        for _ in 0..MAX_STEPS {
            let elapsed = match (started, ctx.workflow_time()) {
                (Some(started), Some(now)) => now
                    .duration_since(started)
                    .unwrap_or_default()
                    .saturating_sub(waited),
                _ => Duration::ZERO,
            };
            let Some(left) = task
                .timeout()
                .checked_sub(elapsed)
                .filter(|left| !left.is_zero())
            else {
                let ended = AttemptOutcome {
                    outcome: RunOutcome::timed_out(
                        last.outcome.agent_name.clone(),
                        "deadline passed",
                    ),
                    attempt: last.attempt,
                };
                return Err(WorkflowTermination::failed_application(
                    application_failure(&ended, true),
                ));
            };
            let input = ActivityInput {
                task_id: task.task_id.clone(),
                payload_json: task.payload_json.clone(),
                timeout_seconds: left.as_secs_f64(),
                step_limit: Some(1),
            };
            match ctx
                .execute_activity(
                    AgentActivities::execute_agent,
                    input,
                    activity_options(&task, left),
                )
                .await
            {
                Ok(ended) if ended.outcome.status == OutcomeStatus::Yielded => last = ended,
                Ok(ended) => return Ok(ended),
                Err(error) => {
                    let ended = outcome_of_error(&task, &error);
                    let Some(approval) = ended
                        .outcome
                        .approval
                        .clone()
                        .filter(|_| ended.outcome.status == OutcomeStatus::WaitingForApproval)
                    else {
                        return Err(termination(&task, &error));
                    };
                    let key = decision_key(&approval.key, &approval.tool_call_id);
                    let wait_started = ctx.workflow_time();
                    ctx.state_mut(|state| state.waiting = Some(ended.clone()));
                    // Wait for the signal, asking now and then whether the
                    // task ended meanwhile (cancelled while it waited).
                    let wait = task.approval_wait();
                    let check_every = task.approval_check_interval();
                    let mut checked = Duration::ZERO;
                    let mut in_time = false;
                    while checked < wait {
                        let mut decided = std::pin::pin!(
                            ctx.wait_condition(|state| state.decided.contains(&key))
                        );
                        let mut tick = std::pin::pin!(ctx.timer(check_every));
                        let signalled = select! {
                            result = decided => {
                                result.map_err(|_| WorkflowTermination::cancelled_with_details(ended.clone()))?;
                                true
                            }
                            _ = tick => false,
                        };
                        if signalled {
                            in_time = true;
                            break;
                        }
                        checked += check_every;
                        let ended_outside = ctx
                            .execute_activity(
                                AgentActivities::task_ended,
                                task.task_id.clone(),
                                check_options(),
                            )
                            .await
                            .unwrap_or(false);
                        if ended_outside {
                            ctx.state_mut(|state| state.waiting = None);
                            let cancelled = AttemptOutcome {
                                outcome: RunOutcome::cancelled(ended.outcome.agent_name.clone()),
                                attempt: ended.attempt,
                            };
                            return Err(WorkflowTermination::cancelled_with_details(cancelled));
                        }
                    }
                    ctx.state_mut(|state| state.waiting = None);
                    if !in_time {
                        let failed = AttemptOutcome {
                            outcome: RunOutcome::failed(
                                ended.outcome.agent_name.clone(),
                                format!(
                                    "no decision on the call to '{}' reached the workflow within {} s",
                                    approval.tool_name,
                                    task.approval_wait().as_secs()
                                ),
                                ErrorType::Timeout,
                                false,
                            ),
                            attempt: ended.attempt,
                        };
                        return Err(WorkflowTermination::failed_application(
                            application_failure(&failed, true),
                        ));
                    }
                    if let (Some(from), Some(to)) = (wait_started, ctx.workflow_time()) {
                        waited += to.duration_since(from).unwrap_or_default();
                    }
                    last = ended;
                }
            }
        }
        let ended = AttemptOutcome {
            outcome: RunOutcome::failed(
                last.outcome.agent_name.clone(),
                format!("the run took more than {MAX_STEPS} steps"),
                ErrorType::MaxStepsExceeded,
                false,
            ),
            attempt: last.attempt,
        };
        Err(WorkflowTermination::failed_application(
            application_failure(&ended, true),
        ))
    }

    /// A decision on a call to one of the agent's `hitl_tools` (sent by
    /// the worker that claims the decided task; sending it again is
    /// harmless).
    // The SDK's macro adds an undocumented constant named after it.
    #[allow(missing_docs)]
    #[signal(name = "decided")]
    pub fn decided(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: DecisionRecord) {
        self.decided
            .insert(decision_key(&decision.key, &decision.tool_call_id));
    }

    /// The outcome of the step that waits for a decision, while one waits.
    // The SDK's macro adds an undocumented constant named after it.
    #[allow(missing_docs)]
    #[query(name = "waiting")]
    pub fn waiting(&self, _ctx: &WorkflowContextView) -> Option<AttemptOutcome> {
        self.waiting.clone()
    }
}

/// The activity's timeouts, cancellation and retry policy for a task with
/// `left` until its deadline.
pub(crate) fn activity_options(task: &AgentTask, left: Duration) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(left + task.timeout_margin())
        .heartbeat_timeout(task.heartbeat_timeout())
        // The cancel is only over once the run has stopped and published
        // its last events, so the claiming worker's terminal event comes
        // after them.
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(retry_policy(task))
        .summary(format!("exo task {}", task.task_id))
        .build()
}

/// The short activity that asks whether a task ended while its workflow
/// waited: a few quick attempts, then the wait goes on and asks later.
fn check_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_attempts(3)
                .build(),
        )
        .build()
}

/// `1 + max_retries` attempts with doubling backoff; config errors are
/// final.
pub(crate) fn retry_policy(task: &AgentTask) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(task.retry_initial_interval())
        .backoff_coefficient(2.0)
        .maximum_interval(task.retry_max_interval())
        .maximum_attempts(task.max_attempts())
        // Error types the activity's retry policy never retries.
        .non_retryable_error_types([ErrorType::Config.as_str()])
        .build()
}

/// How the workflow ends when the activity did not complete.
fn termination(task: &AgentTask, error: &ActivityExecutionError) -> WorkflowTermination {
    let ended = outcome_of_error(task, error);
    if ended.outcome.status == OutcomeStatus::Cancelled {
        return WorkflowTermination::cancelled_with_details(ended);
    }
    WorkflowTermination::failed_application(application_failure(&ended, true))
}

/// The outcome an activity error stands for. The activity attaches its
/// outcome to its failures and cancellations; timeouts and other failures
/// are described from what Temporal reports.
pub(crate) fn outcome_of_error(task: &AgentTask, error: &ActivityExecutionError) -> AttemptOutcome {
    let outcome = match error {
        ActivityExecutionError::Cancelled(cancelled) => {
            match cancelled.details::<AttemptOutcome>() {
                Ok(Some(ended)) => {
                    return AttemptOutcome {
                        outcome: RunOutcome {
                            status: OutcomeStatus::Cancelled,
                            ..ended.outcome
                        },
                        ..ended
                    };
                }
                _ => RunOutcome::cancelled(""),
            }
        }
        ActivityExecutionError::Failed(failed) => match failed.cause() {
            Some(IncomingError::Application(application)) => {
                match application.details::<AttemptOutcome>() {
                    Ok(Some(ended)) => return ended,
                    _ => RunOutcome::failed(
                        "",
                        application.to_string(),
                        application
                            .type_name()
                            .map_or(ErrorType::Runtime, ErrorType::from),
                        !application.is_non_retryable(),
                    ),
                }
            }
            Some(IncomingError::Timeout(timeout)) => match timeout.timeout_type() {
                TimeoutType::StartToClose | TimeoutType::ScheduleToClose => RunOutcome::timed_out(
                    "",
                    format!(
                        "the activity did not finish within its start-to-close timeout of {:.1} s",
                        task.start_to_close().as_secs_f64()
                    ),
                ),
                TimeoutType::Heartbeat => RunOutcome::failed(
                    "",
                    format!(
                        "the activity stopped heartbeating for {:.1} s (its worker died or hung)",
                        task.heartbeat_timeout().as_secs_f64()
                    ),
                    ErrorType::HeartbeatTimeout,
                    true,
                ),
                other => RunOutcome::failed(
                    "",
                    format!("the activity timed out ({other:?})"),
                    ErrorType::Timeout,
                    true,
                ),
            },
            Some(IncomingError::Cancelled(_)) => RunOutcome::cancelled(""),
            Some(other) => RunOutcome::failed(
                "",
                other.failure().message.clone(),
                ErrorType::Runtime,
                true,
            ),
            None => RunOutcome::failed(
                "",
                failed.failure().message.clone(),
                ErrorType::Runtime,
                true,
            ),
        },
        other => RunOutcome::failed("", other.to_string(), ErrorType::Runtime, false),
    };
    AttemptOutcome::unattributed(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy_spends_the_task_budget() {
        let task = AgentTask {
            task_id: "t".into(),
            payload_json: "{}".into(),
            timeout_seconds: 30.0,
            max_retries: 2,
            retry_initial_interval_ms: 250,
            retry_max_interval_ms: 4_000,
            heartbeat_timeout_ms: 5_000,
            timeout_margin_ms: 2_000,
            approval_timeout_ms: 0,
        };
        let policy = retry_policy(&task);
        assert_eq!(policy.maximum_attempts(), 3);
        assert_eq!(policy.initial_interval().as_millis(), 250);
        assert_eq!(
            policy.maximum_interval().map(|d| d.as_millis()),
            Some(4_000)
        );
        assert_eq!(policy.non_retryable_error_types(), ["ConfigError"]);
        let options = activity_options(&task, task.timeout());
        assert_eq!(
            options.heartbeat_timeout.map(|d| d.as_millis()),
            Some(5_000)
        );
        assert_eq!(
            options.cancellation_type,
            ActivityCancellationType::WaitCancellationCompleted
        );
    }
}
