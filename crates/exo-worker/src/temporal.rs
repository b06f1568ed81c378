//! The Temporal executor: each claimed task runs as a durable workflow, and
//! this process also polls for workflows and activities, so one worker
//! process is a complete deployment.
//!
//! The worker that claimed a task starts (or attaches to) the task's
//! workflow and awaits it; whichever process polls the activity runs the
//! agent with [`LocalExecutor::run_payload`] and publishes all its events
//! before the activity ends. The claiming worker then records the outcome
//! and writes the terminal event through its normal finish path, exactly as
//! in local mode. Temporal spends the retry budget (`1 + max_retries`
//! activity attempts), so a failure the workflow reports is final here.
//!
//! An attempt publishes its events to the Redis of the process that runs
//! it, so every worker polling one task queue must use the same Redis and
//! key prefix (and the same memory stores, tools and providers).
//!
//! `exo start worker --executor temporal` reads the settings from the
//! environment (see [`exo_temporal::TemporalConfig`]), and the worker's
//! concurrency caps the activities this process runs at once; a program
//! embedding a worker can pass explicit settings to
//! [`TemporalExecutor::start`].

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use exo_broker::{Broker, ClaimedTask, PublishOptions, RetryPolicy};
use exo_proto::{
    AgentSpec, ErrorType, JournalRecord, RunOutcome, RunStatus, StreamEvent, TaskPayload,
    TaskStatus,
};
use exo_temporal::{
    ActivityHost, ActivityRun, AgentTask, AttemptOutcome, RunningWorkflow, TemporalClient,
    TemporalConfig, TemporalWorker,
};

use crate::{
    config::WorkerConfig,
    error::{Error, Result},
    execute::{Execution, Executor, LocalExecutor, RunControl, agent_name_of, agent_spec},
};

/// Reads the Temporal settings from the environment and starts the
/// executor (see [`TemporalExecutor::start`]). This process's share of
/// activities is the worker's concurrency, and its id names it to Temporal.
pub(crate) async fn start(
    config: &WorkerConfig,
    worker_id: &str,
    local: Arc<LocalExecutor>,
) -> Result<Arc<dyn Executor>> {
    let mut settings =
        TemporalConfig::from_env().map_err(|error| Error::Config(error.to_string()))?;
    settings.identity = Some(worker_id.to_owned());
    settings.max_concurrent_activities = config.concurrency;
    settings.timeout_margin = default_timeout_margin(config);
    Ok(Arc::new(
        TemporalExecutor::start(config, settings, local).await?,
    ))
}

/// The run's own deadline plus its grace fire first; five more seconds
/// leave time to publish the last events.
fn default_timeout_margin(config: &WorkerConfig) -> Duration {
    config.deadline_grace + Duration::from_secs(5)
}

/// Runs each claimed task as a durable Temporal workflow, and runs this
/// process's share of the workflows and activities (its own Temporal
/// worker). `exo start worker --executor temporal` builds one from the
/// environment; a program embedding a worker can build one with explicit
/// settings and pass it to [`crate::WorkerBuilder::custom_executor`].
#[derive(Debug)]
pub struct TemporalExecutor {
    client: TemporalClient,
    worker: tokio::sync::Mutex<Option<TemporalWorker>>,
    broker: Broker,
    /// Reads the step journals of tasks whose workflows wait for decisions.
    local: Arc<LocalExecutor>,
    approval_timeout: Duration,
    retry: RetryPolicy,
    grace: Duration,
    drain_timeout: Duration,
}

impl TemporalExecutor {
    /// Connects to Temporal with `settings` (an unreachable server or a
    /// missing namespace is an error that names them), connects to the
    /// worker's Redis for publishing events, and starts polling for the
    /// workflow and the activity, which runs agents with `local`.
    /// `settings.timeout_margin` must exceed the worker's deadline grace.
    pub async fn start(
        config: &WorkerConfig,
        settings: TemporalConfig,
        local: Arc<LocalExecutor>,
    ) -> Result<Self> {
        if settings.timeout_margin <= config.deadline_grace {
            return Err(Error::Config(format!(
                "the Temporal timeout margin ({:?}) must exceed the deadline grace ({:?}), or attempts would be cut off before they stop",
                settings.timeout_margin, config.deadline_grace
            )));
        }
        let broker = Broker::connect(config.broker.clone()).await?;
        let client = TemporalClient::connect(&settings)
            .await
            .map_err(|error| Error::Executor(error.to_string()))?;
        let host = Arc::new(WorkerHost {
            local: local.clone(),
        });
        let worker = TemporalWorker::start(&client, host)
            .await
            .map_err(|error| Error::Executor(error.to_string()))?;
        tracing::info!(
            host = settings.host,
            namespace = settings.namespace,
            task_queue = settings.task_queue,
            "tasks run on Temporal"
        );
        Ok(TemporalExecutor {
            client,
            worker: tokio::sync::Mutex::new(Some(worker)),
            broker,
            local,
            approval_timeout: config.approval_timeout,
            retry: config.broker.retry,
            grace: config.deadline_grace,
            drain_timeout: config.drain_timeout,
        })
    }

    /// The Temporal client, e.g. to look at a task's workflow.
    pub fn client(&self) -> &TemporalClient {
        &self.client
    }
}

#[async_trait::async_trait]
impl Executor for TemporalExecutor {
    async fn execute(&self, task: &ClaimedTask, control: RunControl) -> Execution {
        let names = Names::of(&task.payload);
        let agent_task = self.agent_task(task);
        let workflow = match self.client.start_or_attach(&agent_task).await {
            Ok(workflow) => workflow,
            Err(error) => {
                // Temporal never saw the task: the worker's own retry applies.
                return execution(
                    names.failed(
                        format!("cannot run the task on Temporal: {error}"),
                        ErrorType::Temporal,
                    ),
                    0,
                );
            }
        };
        tracing::debug!(workflow_id = workflow.workflow_id(), run_id = ?workflow.run_id(), "awaiting the task's workflow");
        let can_wait = agent_task.approval_timeout_ms > 0;
        let decided = if can_wait {
            match self.send_decisions(&task.lease.task_id, &workflow).await {
                Ok(decided) => decided,
                Err(error) => {
                    return execution(
                        names.failed(
                            format!("cannot pass the task's decisions to its workflow: {error}"),
                            ErrorType::Temporal,
                        ),
                        0,
                    );
                }
            }
        } else {
            BTreeSet::new()
        };
        let outcome = tokio::select! {
            outcome = workflow.outcome() => outcome,
            waiting = until_waiting(&workflow, &decided), if can_wait => waiting,
            () = control.cancel.cancelled() => self.stopped(task, &workflow).await,
        };
        match outcome {
            Ok(ended) => {
                let mut done = execution(
                    names.settled(ended.outcome),
                    ended.attempt.saturating_sub(1),
                );
                done.spent = spent_of_run(&task.payload, &done.outcome);
                done
            }
            Err(error) => {
                // The workflow may still be running; a retry of the task
                // attaches to it.
                execution(
                    names.failed(
                        format!("lost track of the task's Temporal workflow: {error}"),
                        ErrorType::Temporal,
                    ),
                    0,
                )
            }
        }
    }

    async fn shutdown(&self) {
        let worker = self.worker.lock().await.take();
        if let Some(mut worker) = worker
            && let Err(error) = worker.shutdown(self.drain_timeout).await
        {
            tracing::warn!(%error, "the Temporal worker did not stop cleanly");
        }
    }
}

impl TemporalExecutor {
    /// How long a run of this task may wait for each decision: the
    /// worker's approval timeout when its agent (or a member of its swarm)
    /// has `hitl_tools`, else 0 (it never waits).
    fn approval_timeout_ms(&self, task: &ClaimedTask) -> u64 {
        let has_hitl = match agent_spec(&task.payload) {
            Ok(AgentSpec::Agent(config)) => !config.hitl_tools.is_empty(),
            Ok(AgentSpec::Swarm(swarm)) => swarm
                .agents
                .iter()
                .any(|agent| !agent.hitl_tools.is_empty()),
            Err(_) => false,
        };
        if has_hitl {
            millis(self.approval_timeout)
        } else {
            0
        }
    }

    /// Signals the workflow every decision in the task's journal (a
    /// decided task is claimed again to go on; the signal wakes its
    /// workflow). Returns the calls decided.
    async fn send_decisions(
        &self,
        task_id: &str,
        workflow: &RunningWorkflow,
    ) -> std::result::Result<BTreeSet<String>, String> {
        let records = self
            .local
            .session()
            .journal(task_id)
            .await
            .map_err(|error| error.to_string())?;
        let mut decided = BTreeSet::new();
        for record in records {
            let Ok(JournalRecord::Decision(decision)) = serde_json::from_str(&record) else {
                continue;
            };
            workflow
                .decide(&decision)
                .await
                .map_err(|error| error.to_string())?;
            decided.insert(call_of(&decision.key, &decision.tool_call_id));
        }
        Ok(decided)
    }

    /// The workflow input for a claimed task. The retries the worker
    /// already spent on it (e.g. while Temporal was unreachable) come off
    /// its budget.
    fn agent_task(&self, task: &ClaimedTask) -> AgentTask {
        let settings = self.client.config();
        AgentTask {
            task_id: task.lease.task_id.clone(),
            payload_json: task.raw_payload.clone(),
            timeout_seconds: task.payload.timeout_seconds,
            max_retries: task.max_retries.saturating_sub(task.retries),
            retry_initial_interval_ms: millis(self.retry.base_backoff),
            retry_max_interval_ms: millis(self.retry.max_backoff),
            heartbeat_timeout_ms: millis(settings.heartbeat_timeout),
            timeout_margin_ms: millis(settings.timeout_margin),
            approval_timeout_ms: self.approval_timeout_ms(task),
        }
    }

    /// The run was stopped from outside. A client cancel cancels the
    /// workflow and waits (bounded) for it to end; a lost lease or a forced
    /// shutdown leaves the workflow running, since whoever claims the task
    /// next attaches to it (and this attempt's result is dropped anyway).
    async fn stopped(
        &self,
        task: &ClaimedTask,
        workflow: &RunningWorkflow,
    ) -> exo_temporal::Result<AttemptOutcome> {
        let task_id = task.lease.task_id.as_str();
        let cancelled_by_client = match self.broker.client().get(task_id).await {
            Ok(Some(state)) => state.status == TaskStatus::Cancelled,
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, task_id, "cannot tell why the task was stopped; leaving its workflow running");
                false
            }
        };
        if !cancelled_by_client {
            return Ok(AttemptOutcome::unattributed(RunOutcome::cancelled("")));
        }
        if let Err(error) = workflow.cancel("cancelled by an exo client").await {
            tracing::warn!(%error, task_id, "could not cancel the task's workflow");
            return Ok(AttemptOutcome::unattributed(RunOutcome::cancelled("")));
        }
        let settings = self.client.config();
        let bound = settings.heartbeat_interval * 2 + self.grace + Duration::from_secs(10);
        match tokio::time::timeout(bound, workflow.outcome()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(
                    task_id,
                    ?bound,
                    "the workflow did not end after its cancel; recording the task as cancelled"
                );
                Ok(AttemptOutcome::unattributed(RunOutcome::cancelled("")))
            }
        }
    }
}

/// How often a claiming worker asks a workflow that may wait for a
/// decision whether it does.
const WAITING_POLL: Duration = Duration::from_secs(1);

/// A call, as decisions and waiting outcomes name it.
fn call_of(key: &exo_proto::StepKey, tool_call_id: &str) -> String {
    format!("{}/{}/{tool_call_id}", key.scope, key.call)
}

/// Resolves once the workflow waits for a decision on a call not yet
/// decided (a call just decided may still show while its signal is on the
/// way): with the waiting outcome, which parks the task in Redis and
/// frees the slot while the workflow waits for its signal.
async fn until_waiting(
    workflow: &RunningWorkflow,
    decided: &BTreeSet<String>,
) -> exo_temporal::Result<AttemptOutcome> {
    loop {
        tokio::time::sleep(WAITING_POLL).await;
        match workflow.waiting().await {
            Ok(Some(ended)) => {
                let undecided =
                    ended.outcome.approval.as_ref().is_some_and(|call| {
                        !decided.contains(&call_of(&call.key, &call.tool_call_id))
                    });
                if undecided {
                    return Ok(ended);
                }
            }
            Ok(None) => {}
            // The workflow may have just ended: its outcome says so.
            Err(error) => tracing::debug!(%error, "could not ask whether the workflow waits"),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a workflow's run used, for the usage ledger: the activity ran it
/// elsewhere, so only the run's totals come back; they are counted under
/// the agent's model (a swarm's under its first member's), replayed calls
/// included.
fn spent_of_run(payload: &TaskPayload, outcome: &RunOutcome) -> Vec<exo_broker::ModelSpend> {
    let usage = outcome.usage;
    if usage.input_tokens + usage.output_tokens == 0 {
        return Vec::new();
    }
    let model = match crate::execute::agent_spec(payload) {
        Ok(exo_proto::AgentSpec::Agent(config)) => config.model.clone(),
        Ok(exo_proto::AgentSpec::Swarm(swarm)) => swarm
            .agents
            .first()
            .map(|agent| agent.model.clone())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    vec![exo_broker::ModelSpend {
        model,
        usage,
        calls: 0,
        cost_micros: 0,
    }]
}

fn execution(outcome: RunOutcome, retries_used: u32) -> Execution {
    // The activity published every event it produced.
    Execution {
        outcome,
        unsent_events: Vec::new(),
        unsent_journal: Vec::new(),
        retries_used,
        spent: Vec::new(),
    }
}

/// The agent's name and kind from the payload, for outcomes that did not
/// come from a run (the workflow never started the activity, or Temporal
/// failed).
struct Names {
    agent_name: String,
    is_swarm: bool,
}

impl Names {
    fn of(payload: &TaskPayload) -> Self {
        match agent_spec(payload) {
            Ok(spec) => Names {
                agent_name: spec.name(),
                is_swarm: matches!(spec, AgentSpec::Swarm(_)),
            },
            Err(_) => Names {
                agent_name: agent_name_of(payload),
                is_swarm: false,
            },
        }
    }

    /// A retryable failure around the workflow (Temporal never saw the
    /// task, or lost track of it): the worker's own retry applies.
    fn failed(&self, error: String, error_type: ErrorType) -> RunOutcome {
        RunOutcome {
            is_swarm: self.is_swarm,
            ..RunOutcome::failed(&self.agent_name, error, error_type, true)
        }
    }

    /// The workflow's outcome as the worker records it: named after the
    /// payload when no run named it, and never retried again, since
    /// Temporal spent the retry budget.
    fn settled(&self, outcome: RunOutcome) -> RunOutcome {
        let named = !outcome.agent_name.is_empty();
        RunOutcome {
            agent_name: if named {
                outcome.agent_name
            } else {
                self.agent_name.clone()
            },
            is_swarm: if named {
                outcome.is_swarm
            } else {
                self.is_swarm
            },
            retryable: false,
            ..outcome
        }
    }
}

/// Runs activity attempts in this process: the agent through the local
/// executor, then every event it produced out to Redis.
struct WorkerHost {
    local: Arc<LocalExecutor>,
}

/// How many times publishing an attempt's last events is tried.
const PUBLISH_ATTEMPTS: u32 = 8;

#[async_trait::async_trait]
impl ActivityHost for WorkerHost {
    async fn run(&self, run: ActivityRun) -> RunOutcome {
        let payload = match TaskPayload::from_json(run.payload_json.as_bytes()) {
            Ok(payload) => payload,
            Err(error) => {
                return RunOutcome::failed(
                    "",
                    format!("the task payload cannot be read: {error}"),
                    ErrorType::Config,
                    false,
                );
            }
        };
        let names = Names::of(&payload);
        if run.attempt > 1 {
            // As in local mode, a retry is announced on the task's stream.
            let budget = if run.max_attempts > 0 {
                format!(" of {}", run.max_attempts - 1)
            } else {
                String::new()
            };
            let event = StreamEvent::status(
                RunStatus::Running,
                &names.agent_name,
                format!(
                    "attempt {} did not finish; retry {}{budget} starts on Temporal",
                    run.attempt - 1,
                    run.attempt - 1
                ),
            );
            if let Err(error) = self.publish(&run.task_id, &[event.to_json()]).await {
                return names_failed_to_publish(&names, &error);
            }
        }
        let control = RunControl {
            cancel: run.cancel.clone(),
            deadline: run.deadline,
            pause: None,
            step_limit: run.step_limit,
        };
        // The attempt joins the submitter's trace, wherever it runs.
        let span = tracing::info_span!(
            "exo.task.activity",
            task_id = run.task_id,
            attempt = run.attempt
        );
        exo_observability::set_parent_from(&span, &payload.trace_context());
        let execution =
            tracing::Instrument::instrument(self.local.run_payload(&payload, control), span).await;
        if let Err(error) = self
            .publish_with_journal(
                &run.task_id,
                &execution.unsent_events,
                &execution.unsent_journal,
            )
            .await
        {
            return names_failed_to_publish(&names, &error);
        }
        execution.outcome
    }

    async fn task_ended(&self, task_id: &str) -> std::result::Result<bool, String> {
        match self.local.session().broker().client().get(task_id).await {
            Ok(Some(task)) => Ok(task.status.is_terminal()),
            // Expired or deleted: nothing will decide it any more.
            Ok(None) => Ok(true),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl WorkerHost {
    /// Publishes events, retrying while Redis is unreachable.
    async fn publish(&self, task_id: &str, events: &[String]) -> exo_broker::Result<()> {
        self.publish_with_journal(task_id, events, &[]).await
    }

    /// Publishes events and step-journal records (a later activity attempt
    /// replays the journal), retrying while Redis is unreachable.
    async fn publish_with_journal(
        &self,
        task_id: &str,
        events: &[String],
        journal: &[String],
    ) -> exo_broker::Result<()> {
        let mut attempt = 0;
        loop {
            let published = self
                .local
                .session()
                .publish_with_journal(task_id, events, journal, PublishOptions::default())
                .await;
            match published {
                Ok(_) => return Ok(()),
                Err(error) if error.is_unreachable() && attempt + 1 < PUBLISH_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, task_id, "cannot publish the attempt's events yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn names_failed_to_publish(names: &Names, error: &exo_broker::Error) -> RunOutcome {
    RunOutcome {
        is_swarm: names.is_swarm,
        ..RunOutcome::failed(
            names.agent_name.clone(),
            format!("the attempt's events could not be published: {error}"),
            ErrorType::Runtime,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_proto::{OutcomeStatus, Usage};

    #[test]
    fn outcomes_cross_the_workflow_and_come_back_final() {
        let names = Names {
            agent_name: "helper".into(),
            is_swarm: false,
        };
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
        };
        let statuses = [
            OutcomeStatus::Completed,
            OutcomeStatus::Failed,
            OutcomeStatus::Cancelled,
            OutcomeStatus::TimedOut,
        ];
        for status in statuses {
            let run = RunOutcome {
                status,
                agent_name: "a+b".into(),
                is_swarm: true,
                output: "out".into(),
                usage,
                error: Some("e".into()),
                error_type: Some(ErrorType::Runtime),
                retryable: true,
                approval: None,
            };
            // The outcome crosses Temporal as JSON.
            let sent = serde_json::to_string(&AttemptOutcome {
                outcome: run.clone(),
                attempt: 2,
            })
            .unwrap();
            let received: AttemptOutcome = serde_json::from_str(&sent).unwrap();
            assert_eq!(received.attempt, 2, "{status:?}");
            let back = names.settled(received.outcome);
            assert_eq!(
                back,
                RunOutcome {
                    retryable: false,
                    ..run
                },
                "{status:?}: Temporal spent the budget"
            );
        }
        // An outcome with no name (the activity never ran) takes the payload's.
        let back = names.settled(RunOutcome::cancelled(""));
        assert_eq!(back.agent_name, "helper");
        assert_eq!(back.status, OutcomeStatus::Cancelled);
    }
}
