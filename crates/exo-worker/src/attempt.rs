//! How one attempt ends: the run in its own tokio task, then what its end
//! means for the task ([`settlement`], a pure function), the fenced final
//! write, and the hook.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use exo_agent::{OutcomeStatus, RunOutcome};
use exo_broker::{ClaimedTask, FinishOptions, Finished, Finisher, ModelSpend, Outcome};
use exo_observability::record::{self, TaskLabels};
use exo_proto::{RunStatus, StreamEvent, TaskStatus};
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    execute::{Execution, Executor, RunControl},
    hooks::TaskHooks,
    runtime::backoff,
    state::{RunningTask, Shared, StopReason},
};

/// A claimed task in a slot's hands, registered from the moment its claim
/// landed: the heartbeat renews its lease and a cancel reaches it even
/// while it waits for its turn.
pub(crate) struct Held {
    pub(crate) task: ClaimedTask,
    pub(crate) running: Arc<RunningTask>,
}

impl Held {
    /// Registers a task just claimed.
    pub(crate) fn register(shared: &Shared, task: ClaimedTask) -> Held {
        let running = Arc::new(RunningTask {
            lease: task.lease.clone(),
            cancel: CancellationToken::new(),
            stop: Mutex::new(None),
            started: std::time::Instant::now(),
        });
        shared.registry.register(running.clone());
        Held { task, running }
    }
}

/// An attempt whose run is over and whose final write is still to come.
pub(crate) struct Ended {
    held: Held,
    execution: Execution,
    cancelled: bool,
    timeout: Duration,
    pub(crate) ran_for: Duration,
}

/// Runs one attempt (a panic of the executor fails the task, not the
/// worker). `None` when there is nothing to write: the attempt was lost to
/// another worker, or handed back by the drain.
pub(crate) async fn run_attempt(
    shared: &Shared,
    executor: &Arc<dyn Executor>,
    held: Held,
) -> Option<Ended> {
    let Held { task, running } = &held;
    let started = std::time::Instant::now();
    // The payload's deadline, capped by the worker.
    let timeout = Duration::try_from_secs_f64(task.payload.timeout_seconds.max(0.001))
        .unwrap_or(Duration::MAX)
        .min(shared.config.max_task_timeout);
    let control = RunControl {
        cancel: running.cancel.clone(),
        deadline: Instant::now() + timeout,
        pause: Some(shared.pause.subscribe()),
        step_limit: None,
    };
    let span = tracing::info_span!(
        "exo.task.execute",
        task_id = task.lease.task_id,
        attempt = task.lease.attempt,
        worker_id = shared.worker_id,
        queue = shared.config.broker.keys.queue()
    );
    exo_observability::set_parent_from(&span, &task.payload.trace_context());
    let execution = {
        let executor = executor.clone();
        async move {
            std::panic::AssertUnwindSafe(executor.execute(task, control))
                .catch_unwind()
                .await
        }
    };
    let execution = match tracing::Instrument::instrument(execution, span).await {
        Ok(execution) => execution,
        Err(panic) => Execution {
            outcome: RunOutcome::failed(
                crate::execute::agent_name_of(&task.payload),
                format!("the executor panicked: {}", panic_message(&*panic)),
                exo_proto::ErrorType::Panic,
                true,
            ),
            unsent_events: Vec::new(),
            unsent_journal: Vec::new(),
            retries_used: 0,
            spent: Vec::new(),
        },
    };
    let stop = running.stop_reason();
    match stop {
        Some(StopReason::Lost) => {
            tracing::warn!(
                task_id = task.lease.task_id,
                "attempt lost to another worker; its result is dropped"
            );
            shared.registry.unregister(running);
            return None;
        }
        Some(StopReason::Shutdown) => {
            // Handed back by the drain; nothing to write.
            shared.registry.unregister(running);
            return None;
        }
        _ => {}
    }
    Some(Ended {
        execution,
        cancelled: stop == Some(StopReason::Cancelled),
        timeout,
        ran_for: started.elapsed(),
        held,
    })
}

/// Ends an attempt: the fenced final write, then the hook. The write also
/// claims up to `next` tasks for the slot when the worker may take them
/// (one round trip for both); they come back registered. The task stays
/// registered until its write lands, so the heartbeat keeps renewing its
/// lease while that write is retried.
pub(crate) async fn write_attempt(
    shared: Arc<Shared>,
    hooks: Arc<dyn TaskHooks>,
    ended: Ended,
    next: usize,
) -> Vec<Held> {
    let Ended {
        held: Held { task, running },
        execution,
        cancelled,
        timeout,
        ran_for,
    } = ended;
    let claimed = finish(
        &shared, &hooks, &task, execution, cancelled, timeout, ran_for, next,
    )
    .await;
    shared.registry.unregister(&running);
    claimed
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Formats `timeout_seconds` as the guide writes it: "timed out after 300 s".
fn timeout_message(timeout: Duration) -> String {
    let seconds = timeout.as_secs_f64();
    if seconds.fract() == 0.0 {
        format!("timed out after {} s", seconds as u64)
    } else {
        format!("timed out after {seconds} s")
    }
}

/// What a run's end means for its task: the outcome to record and the
/// terminal event to end the stream with. `cancelled` says whether a client
/// asked for the cancel (a run that stopped by itself without one is a
/// retryable failure); `timeout_text` is the message of a timeout.
fn settlement<'a>(
    outcome: &'a RunOutcome,
    cancelled: bool,
    timeout_text: &'a str,
    waiting: &'a Waiting,
) -> (Outcome<'a>, StreamEvent) {
    let agent_name = outcome.agent_name.as_str();
    match outcome.status {
        OutcomeStatus::WaitingForApproval if cancelled => (
            Outcome::Cancelled,
            RunOutcome::cancelled(agent_name).terminal_event(),
        ),
        OutcomeStatus::WaitingForApproval => (
            Outcome::Waiting {
                approval: &waiting.approval,
                event: &waiting.event,
                wait: waiting.wait,
            },
            outcome.terminal_event(),
        ),
        OutcomeStatus::Completed => (
            Outcome::Completed {
                output: &outcome.output,
            },
            outcome.terminal_event(),
        ),
        OutcomeStatus::Cancelled if cancelled => (Outcome::Cancelled, outcome.terminal_event()),
        OutcomeStatus::Cancelled => (
            Outcome::Failed {
                error: "the run stopped without a cancel request",
                retryable: true,
            },
            StreamEvent::status(
                RunStatus::Error,
                agent_name,
                "the run stopped without a cancel request",
            ),
        ),
        OutcomeStatus::TimedOut => (
            Outcome::Failed {
                error: timeout_text,
                retryable: outcome.retryable,
            },
            StreamEvent::status(RunStatus::Error, agent_name, timeout_text),
        ),
        OutcomeStatus::Failed => (
            Outcome::Failed {
                error: outcome.error.as_deref().unwrap_or("the run failed"),
                retryable: outcome.retryable,
            },
            outcome.terminal_event(),
        ),
        // A run with a step limit that nobody continued: a retry goes on
        // from its journal.
        OutcomeStatus::Yielded => (
            Outcome::Failed {
                error: "the run stopped at its step limit and was not continued",
                retryable: true,
            },
            outcome.terminal_event(),
        ),
    }
}

/// What a run that stopped for an approval leaves in Redis: the request
/// (JSON), the `waiting_for_tool` event with its extension fields, and how
/// long the wait may last.
#[derive(Debug, Default)]
struct Waiting {
    approval: String,
    event: String,
    wait: Duration,
}

impl Waiting {
    fn of(outcome: &RunOutcome, payload: &exo_proto::TaskPayload, most: Duration) -> Self {
        let Some(approval) = &outcome.approval else {
            return Waiting::default();
        };
        // The payload may ask for a shorter wait than the worker allows.
        let wait = payload
            .metadata
            .get("approval_timeout_seconds")
            .and_then(serde_json::Value::as_f64)
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .filter(|wait| !wait.is_zero())
            .map_or(most, |wait| wait.min(most));
        let deadline = exo_proto::time::now_seconds() + wait.as_secs_f64();
        let mut event = serde_json::to_value(outcome.terminal_event()).unwrap_or_default();
        event["waiting_for"] = "approval".into();
        event["tool_name"] = approval.tool_name.clone().into();
        event["tool_call_id"] = approval.tool_call_id.clone().into();
        event["arguments"] = approval.arguments.clone().into();
        event["approval_deadline"] = deadline.into();
        Waiting {
            approval: serde_json::to_string(approval).unwrap_or_default(),
            event: event.to_string(),
            wait,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Shared,
    hooks: &Arc<dyn TaskHooks>,
    task: &ClaimedTask,
    execution: Execution,
    cancelled: bool,
    timeout: Duration,
    ran_for: Duration,
    next: usize,
) -> Vec<Held> {
    let finisher = &shared.finisher;
    let outcome = execution.outcome;
    let agent_name = outcome.agent_name.clone();
    let timeout_text = timeout_message(timeout);
    let waiting = Waiting::of(&outcome, &task.payload, shared.config.approval_timeout);
    let (result, terminal) = settlement(&outcome, cancelled, &timeout_text, &waiting);
    let events = execution.unsent_events;
    let journal = execution.unsent_journal;
    let retries_used = execution.retries_used;
    let spent = priced(&shared.config.prices, execution.spent);
    let mut claimed = Vec::new();
    let mut finished = write_outcome(
        shared,
        task,
        result,
        (events.clone(), journal, spent.clone()),
        &terminal,
        retries_used,
        finisher,
        (next, &mut claimed),
    )
    .await;
    if finished == Some(Finished::CancelRequested) {
        let terminal = StreamEvent::status(
            RunStatus::Cancelled,
            &agent_name,
            format!("Task '{}' was cancelled", task.lease.task_id),
        );
        finished = write_outcome(
            shared,
            task,
            Outcome::Cancelled,
            (events, Vec::new(), spent),
            &terminal,
            retries_used,
            finisher,
            (0, &mut claimed),
        )
        .await;
    }
    let Some(finished) = finished else {
        return claimed;
    };
    let (status, output, error) = match &finished {
        Finished::Waiting => {
            tracing::info!(
                task_id = task.lease.task_id,
                tool = outcome
                    .approval
                    .as_ref()
                    .map(|approval| approval.tool_name.as_str()),
                "the task waits for an approval; its slot is free"
            );
            return claimed;
        }
        Finished::Completed => {
            shared.processed.fetch_add(1, Ordering::Relaxed);
            (TaskStatus::Completed, Some(outcome.output.as_str()), None)
        }
        Finished::Cancelled => (TaskStatus::Cancelled, None, None),
        Finished::Failed | Finished::Retrying { .. } => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let error = match result {
                Outcome::Failed { error, .. } => Some(error),
                _ => None,
            };
            (TaskStatus::Failed, None, error)
        }
        Finished::Stale { status, attempt } => {
            tracing::warn!(
                task_id = task.lease.task_id,
                status,
                attempt,
                "result refused: the attempt is no longer current"
            );
            return claimed;
        }
        Finished::CancelRequested => return claimed,
    };
    let recorded = match &finished {
        Finished::Retrying { .. } => TaskStatus::Retrying,
        _ => status,
    };
    record::task_finished(
        TaskLabels::new(shared.config.broker.keys.queue(), &shared.worker_id),
        recorded,
        ran_for,
    );
    record::redis_round_trips(
        &shared.worker_id,
        shared.broker.keys().queue(),
        shared.broker.round_trips(),
    );
    match &finished {
        Finished::Retrying { retry, delay } => {
            tracing::warn!(
                task_id = task.lease.task_id,
                retry,
                ?delay,
                error,
                "attempt failed; retrying"
            );
        }
        Finished::Failed => tracing::warn!(task_id = task.lease.task_id, error, "task failed"),
        _ => tracing::info!(task_id = task.lease.task_id, %status, "task finished"),
    }
    call_hook(
        hooks,
        &task.payload,
        status,
        output,
        error,
        shared.config.hook_timeout,
    )
    .await;
    claimed
}

/// What an attempt's model calls cost by the worker's price table, each
/// model counted in the worker's metrics.
fn priced(prices: &exo_proto::PriceTable, spent: Vec<ModelSpend>) -> Vec<ModelSpend> {
    spent
        .into_iter()
        .map(|mut spend| {
            spend.cost_micros = prices.cost_micros(&spend.model, &spend.usage);
            record::model_usage(
                &spend.model,
                spend.usage.input_tokens,
                spend.usage.output_tokens,
                spend.cost_micros,
            );
            spend
        })
        .collect()
}

/// The fenced final write, retried while Redis is unreachable or answers
/// with a passing error (loading, busy, a read-only replica after a
/// failover, resharding): the result must not be lost. Until a forced
/// shutdown.
///
/// The first call also claims up to `next` tasks into `claimed` (each
/// registered at once) when the worker may take them; a repeated call
/// claims nothing (a claim whose reply was lost is handed back by the
/// heartbeat).
#[allow(clippy::too_many_arguments)]
async fn write_outcome(
    shared: &Shared,
    task: &ClaimedTask,
    outcome: Outcome<'_>,
    (events, journal, spent): (Vec<String>, Vec<String>, Vec<ModelSpend>),
    terminal: &StreamEvent,
    retries_used: u32,
    finisher: &Finisher,
    (next, claimed): (usize, &mut Vec<Held>),
) -> Option<Finished> {
    let mut attempt = 0;
    loop {
        let options = FinishOptions {
            inner_retries: retries_used,
            current_task_after: Some(shared.current_task_besides(&task.lease.task_id)),
            journal: journal.clone(),
            spent: spent.clone(),
        };
        let next = if attempt == 0 && shared.may_claim_next() {
            next
        } else {
            0
        };
        let written = finisher
            .finish_then_claim(
                task,
                outcome,
                events.clone(),
                terminal,
                options.clone(),
                next,
            )
            .await;
        match written {
            Ok((finished, claim)) => {
                shared.note_rejected(&claim.rejected);
                claimed.extend(
                    claim
                        .tasks
                        .into_iter()
                        .map(|task| Held::register(shared, task)),
                );
                return Some(finished);
            }
            Err(error) if error.is_transient() && !shared.force.is_cancelled() => {
                attempt += 1;
                tracing::warn!(%error, attempt, task_id = task.lease.task_id, "cannot record the result yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff(attempt)) => {}
                    () = shared.force.cancelled() => {}
                }
            }
            Err(error) => {
                // Redis refuses this write for good (too large, a key of the
                // wrong type, a missing permission): record the attempt as
                // a failure with the reason instead, so the task is charged
                // a retry and ends in the dead letter after its budget,
                // rather than handed back and run again for free.
                let reason = format!("the result could not be recorded: {error}");
                tracing::error!(%error, task_id = task.lease.task_id, "could not record the result; recording the attempt as failed");
                let terminal =
                    StreamEvent::status(RunStatus::Error, terminal.agent_name(), reason.clone());
                return match shared
                    .session
                    .finish(
                        task,
                        Outcome::Failed {
                            error: &reason,
                            retryable: true,
                        },
                        Vec::new(),
                        &terminal,
                        options,
                    )
                    .await
                {
                    Ok(finished) => Some(finished),
                    Err(error) => {
                        tracing::error!(%error, task_id = task.lease.task_id, "could not record the failure either; the task will be reclaimed");
                        None
                    }
                };
            }
        }
    }
}

async fn call_hook(
    hooks: &Arc<dyn TaskHooks>,
    payload: &exo_proto::TaskPayload,
    status: TaskStatus,
    output: Option<&str>,
    error: Option<&str>,
    timeout: Duration,
) {
    let hooks = hooks.clone();
    let payload = payload.clone();
    let output = output.map(str::to_owned);
    let error = error.map(str::to_owned);
    let task_id = payload.task_id.clone();
    let call = tokio::spawn(async move {
        hooks
            .on_task_done(&payload, status, output.as_deref(), error.as_deref())
            .await
            .map_err(|error| error.to_string())
    });
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(task_id, error, "on_task_done failed"),
        Ok(Err(join)) => tracing::error!(task_id, error = %join, "on_task_done panicked"),
        Err(_) => tracing::warn!(task_id, ?timeout, "on_task_done timed out"),
    }
}

#[cfg(test)]
mod tests {
    use exo_agent::{OutcomeStatus, RunOutcome};
    use exo_broker::Outcome;

    use super::settlement;

    fn run(status: OutcomeStatus, error: Option<&str>, retryable: bool) -> RunOutcome {
        RunOutcome {
            status,
            agent_name: "helper".into(),
            is_swarm: false,
            output: "the output".into(),
            usage: Default::default(),
            error: error.map(str::to_owned),
            error_type: error.map(|_| exo_proto::ErrorType::Runtime),
            retryable,
            approval: None,
        }
    }

    /// What each way a run ends means for its task: the recorded outcome, and
    /// the terminal event's status and message.
    #[test]
    fn how_a_run_end_settles_its_task() {
        let cases: &[(RunOutcome, bool, &str, &str)] = &[
            (
                run(OutcomeStatus::Completed, None, false),
                false,
                "completed: the output",
                "completed: Agent 'helper' completed execution",
            ),
            (
                run(OutcomeStatus::Cancelled, None, false),
                true,
                "cancelled",
                "cancelled: Agent 'helper' was cancelled",
            ),
            (
                run(OutcomeStatus::Cancelled, None, false),
                false,
                "failed (retryable): the run stopped without a cancel request",
                "error: the run stopped without a cancel request",
            ),
            (
                run(OutcomeStatus::TimedOut, None, true),
                false,
                "failed (retryable): timed out after 0.5 s",
                "error: timed out after 0.5 s",
            ),
            (
                run(OutcomeStatus::Failed, Some("the model refused"), false),
                false,
                "failed (final): the model refused",
                "error: the model refused",
            ),
            (
                run(OutcomeStatus::Failed, None, true),
                false,
                "failed (retryable): the run failed",
                "error: ",
            ),
        ];
        let waiting = super::Waiting::default();
        for (outcome, cancelled, recorded, terminal) in cases {
            let (result, event) =
                settlement(outcome, *cancelled, "timed out after 0.5 s", &waiting);
            let recorded_now = match result {
                Outcome::Completed { output } => format!("completed: {output}"),
                Outcome::Cancelled => "cancelled".to_owned(),
                Outcome::Waiting { .. } => "waiting".to_owned(),
                Outcome::Failed { error, retryable } => format!(
                    "failed ({}): {error}",
                    if retryable { "retryable" } else { "final" }
                ),
            };
            let event = serde_json::to_value(&event).unwrap();
            let terminal_now = format!(
                "{}: {}",
                event["status"].as_str().unwrap_or_default(),
                event["message"].as_str().unwrap_or_default()
            );
            assert_eq!(
                (recorded_now.as_str(), terminal_now.starts_with(terminal)),
                (*recorded, true),
                "{:?} cancelled={cancelled}: terminal `{terminal_now}`",
                outcome.status
            );
        }
    }
}
