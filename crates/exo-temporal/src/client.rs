//! The client side: connect, start or attach to a task's workflow, await
//! its outcome, see whether it waits for a decision and send it one,
//! cancel it.

use std::time::Duration;

use exo_proto::{Backoff, DecisionRecord, ErrorType, Jitter, OutcomeStatus, RunOutcome};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, TlsOptions, WorkflowCancelOptions,
    WorkflowDescribeOptions, WorkflowGetResultOptions, WorkflowHandle, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowQueryOptions, WorkflowSignalOptions, WorkflowStartOptions,
    errors::{WorkflowGetResultError, WorkflowInteractionError, WorkflowStartError},
    tonic::{self, Code},
};
use temporalio_common::{
    HasWorkflowDefinition, error::IncomingError,
    protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest,
};

use crate::{
    config::TemporalConfig,
    error::{Error, Result},
    outcome::{AgentTask, AttemptOutcome},
    workflow::AgentExecutionWorkflow,
};

/// A workflow's lifecycle status, as Temporal reports it.
pub use temporalio_client::WorkflowExecutionStatus as WorkflowState;

/// The workflow id of a task: `exo-task-{task_id}`.
pub fn workflow_id(task_id: &str) -> String {
    format!("exo-task-{task_id}")
}

/// A connection to one namespace of a Temporal server. Cheap to clone.
#[derive(Clone)]
pub struct TemporalClient {
    client: Client,
    config: TemporalConfig,
}

impl std::fmt::Debug for TemporalClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TemporalClient")
            .field("host", &self.config.host)
            .field("namespace", &self.config.namespace)
            .field("task_queue", &self.config.task_queue)
            .finish_non_exhaustive()
    }
}

impl TemporalClient {
    /// Connects and checks that the namespace exists. An unreachable server
    /// or a missing namespace is an [`Error::Unreachable`] that names both.
    pub async fn connect(config: &TemporalConfig) -> Result<Self> {
        config.validate()?;
        let url = config.url()?;
        let unreachable = |reason: String| Error::Unreachable {
            host: config.host.clone(),
            namespace: config.namespace.clone(),
            reason,
        };
        let tls = (url.scheme() == "https").then(|| TlsOptions::builder().build());
        let options = ConnectionOptions::new(url)
            .identity(config.identity.clone().unwrap_or_else(default_identity))
            .connect_timeout(config.connect_timeout)
            .maybe_tls_options(tls)
            .build();
        // Connecting also asks the server for its capabilities; bound the
        // whole exchange, since the client retries unavailable servers.
        let bound = config.connect_timeout + Duration::from_secs(5);
        let connection = tokio::time::timeout(bound, Connection::connect(options))
            .await
            .map_err(|_| unreachable(format!("no answer within {bound:?}")))?
            .map_err(|error| unreachable(error_chain(&error)))?;
        let client = Client::new(
            connection,
            ClientOptions::new(config.namespace.clone()).build(),
        )
        .map_err(|error| unreachable(error.to_string()))?;
        let mut service = client.connection().workflow_service();
        let request = tonic::Request::new(DescribeNamespaceRequest {
            namespace: config.namespace.clone(),
            ..Default::default()
        });
        match tokio::time::timeout(bound, service.describe_namespace(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) if status.code() == Code::NotFound => {
                return Err(unreachable(format!(
                    "the namespace does not exist (create it with `temporal operator namespace create --namespace {}`)",
                    config.namespace
                )));
            }
            Ok(Err(status)) => return Err(unreachable(status.message().to_owned())),
            Err(_) => return Err(unreachable(format!("no answer within {bound:?}"))),
        }
        Ok(TemporalClient {
            client,
            config: config.clone(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &TemporalConfig {
        &self.config
    }

    /// The SDK client, for the worker that shares this connection.
    pub(crate) fn raw(&self) -> &Client {
        &self.client
    }

    /// Starts the task's workflow, or attaches to the one that already has
    /// its id: a running one (its previous claimer died) or a completed one
    /// (it finished before its result was recorded). Only a failed,
    /// cancelled, terminated or timed-out run is replaced by a new one.
    pub async fn start_or_attach(&self, task: &AgentTask) -> Result<RunningWorkflow> {
        let id = workflow_id(&task.task_id);
        let options = WorkflowStartOptions::new(self.config.task_queue.clone(), id.clone())
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicateFailedOnly)
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .maybe_execution_timeout(task.execution_timeout())
            .static_summary(format!("exo task {}", task.task_id))
            .build();
        match self
            .client
            .start_workflow(AgentExecutionWorkflow::run, task.clone(), options)
            .await
        {
            Ok(handle) => Ok(RunningWorkflow {
                handle,
                workflow_id: id,
            }),
            Err(WorkflowStartError::AlreadyStarted { .. }) => {
                tracing::info!(
                    workflow_id = id,
                    "the task's workflow already completed; using its result"
                );
                Ok(RunningWorkflow {
                    handle: self.client.get_workflow_handle(id.clone()),
                    workflow_id: id,
                })
            }
            Err(error) => Err(Error::Rpc(format!(
                "cannot start workflow {id}: {}",
                error_chain(&error)
            ))),
        }
    }

    /// A handle on the task's latest workflow run.
    pub fn workflow(&self, task_id: &str) -> RunningWorkflow {
        let id = workflow_id(task_id);
        RunningWorkflow {
            handle: self.client.get_workflow_handle(id.clone()),
            workflow_id: id,
        }
    }

    /// The lifecycle status of the task's latest workflow run.
    pub async fn workflow_state(&self, task_id: &str) -> Result<WorkflowState> {
        self.workflow(task_id).state().await
    }
}

/// `{pid}@{hostname}`, as the other Temporal SDKs name their processes.
fn default_identity() -> String {
    format!(
        "{}@{}",
        std::process::id(),
        gethostname::gethostname().to_string_lossy()
    )
}

/// An error with its sources, joined by `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The SDK's handle type of the task workflow.
type Handle = WorkflowHandle<Client, <AgentExecutionWorkflow as HasWorkflowDefinition>::Run>;

/// A task's workflow run: await its outcome, cancel it, read its state.
pub struct RunningWorkflow {
    handle: Handle,
    workflow_id: String,
}

impl std::fmt::Debug for RunningWorkflow {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunningWorkflow")
            .field("workflow_id", &self.workflow_id)
            .field("run_id", &self.run_id())
            .finish()
    }
}

/// How many times in a row a transient server error is ridden out while
/// awaiting a workflow.
const AWAIT_RETRIES: u32 = 30;

/// The wait after the `n`th transient error in a row while awaiting a
/// workflow: 400 ms after the first, doubling, at most 5 s.
const AWAIT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    multiplier: 2,
    max: Duration::from_secs(5),
    jitter: Jitter::None,
};

impl RunningWorkflow {
    /// The workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The run id, when known (not for a handle on the latest run).
    pub fn run_id(&self) -> Option<&str> {
        self.handle.info().run_id.as_deref()
    }

    /// Waits until the workflow ends and returns the run's outcome: the
    /// result of a completed workflow, or the outcome carried by its
    /// failure or cancellation. A terminated workflow is a failure that no
    /// retry can fix; a workflow past its execution timeout timed out.
    /// Transient server errors are ridden out with backoff.
    pub async fn outcome(&self) -> Result<AttemptOutcome> {
        let mut failures = 0u32;
        loop {
            let result = self
                .handle
                .get_result(WorkflowGetResultOptions::default())
                .await;
            let error = match result {
                Ok(outcome) => return Ok(outcome),
                Err(error) => error,
            };
            match outcome_of_result_error(error) {
                Ok(outcome) => return Ok(outcome),
                Err(Retry::Transient(message)) if failures < AWAIT_RETRIES => {
                    failures += 1;
                    tracing::warn!(
                        workflow_id = self.workflow_id,
                        failures,
                        error = message,
                        "awaiting the workflow failed; retrying"
                    );
                    tokio::time::sleep(AWAIT_BACKOFF.delay(failures)).await;
                }
                Err(Retry::Transient(message) | Retry::Final(message)) => {
                    return Err(Error::Rpc(format!(
                        "awaiting workflow {}: {message}",
                        self.workflow_id
                    )));
                }
            }
        }
    }

    /// The outcome of the step that waits for a decision on a call to one
    /// of the agent's `hitl_tools`, while one waits (the workflow's
    /// `waiting` query).
    pub async fn waiting(&self) -> Result<Option<AttemptOutcome>> {
        self.handle
            .query(
                AgentExecutionWorkflow::waiting,
                (),
                WorkflowQueryOptions::default(),
            )
            .await
            .map_err(|error| {
                Error::Rpc(format!(
                    "cannot query workflow {}: {}",
                    self.workflow_id,
                    error_chain(&error)
                ))
            })
    }

    /// Sends a decision on a call to the workflow (its `decided` signal);
    /// the step that waits for it goes on. Sending one twice is harmless.
    pub async fn decide(&self, decision: &DecisionRecord) -> Result<()> {
        self.handle
            .signal(
                AgentExecutionWorkflow::decided,
                decision.clone(),
                WorkflowSignalOptions::default(),
            )
            .await
            .map_err(|error| {
                Error::Rpc(format!(
                    "cannot signal workflow {}: {}",
                    self.workflow_id,
                    error_chain(&error)
                ))
            })
    }

    /// Asks Temporal to cancel the workflow. Its activity learns it with its
    /// next heartbeat and stops its run; the workflow then ends cancelled.
    pub async fn cancel(&self, reason: &str) -> Result<()> {
        let options = WorkflowCancelOptions::builder()
            .reason(reason.to_owned())
            .build();
        match self.handle.cancel(options).await {
            Ok(()) => Ok(()),
            Err(error) => Err(Error::Rpc(format!(
                "cannot cancel workflow {}: {}",
                self.workflow_id,
                error_chain(&error)
            ))),
        }
    }

    /// The run's lifecycle status now.
    pub async fn state(&self) -> Result<WorkflowState> {
        let description = self
            .handle
            .describe(WorkflowDescribeOptions::default())
            .await
            .map_err(|error: WorkflowInteractionError| {
                Error::Rpc(format!(
                    "cannot describe workflow {}: {}",
                    self.workflow_id,
                    error_chain(&error)
                ))
            })?;
        Ok(description.status())
    }
}

/// Why awaiting a workflow gave no outcome.
#[derive(Debug)]
enum Retry {
    /// The server was briefly unavailable; try again.
    Transient(String),
    /// It will not get better.
    Final(String),
}

/// The outcome a workflow that did not complete stands for.
fn outcome_of_result_error(
    error: WorkflowGetResultError,
) -> std::result::Result<AttemptOutcome, Retry> {
    let outcome = match error {
        WorkflowGetResultError::Failed(failure) => return Ok(outcome_of_failure(&failure)),
        WorkflowGetResultError::Cancelled { details } => {
            return Ok(match details.deserialize::<AttemptOutcome>() {
                Ok(ended) => AttemptOutcome {
                    outcome: RunOutcome {
                        status: OutcomeStatus::Cancelled,
                        ..ended.outcome
                    },
                    ..ended
                },
                Err(_) => AttemptOutcome::unattributed(RunOutcome::cancelled("")),
            });
        }
        WorkflowGetResultError::Terminated { .. } => RunOutcome::failed(
            "",
            "the task's Temporal workflow was terminated",
            ErrorType::WorkflowTerminated,
            false,
        ),
        WorkflowGetResultError::TimedOut => RunOutcome::timed_out(
            "",
            "the task's Temporal workflow passed its execution timeout",
        ),
        WorkflowGetResultError::Rpc(status) if is_transient(&status) => {
            return Err(Retry::Transient(status.message().to_owned()));
        }
        other => return Err(Retry::Final(error_chain(&other))),
    };
    Ok(AttemptOutcome::unattributed(outcome))
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::ResourceExhausted
    )
}

/// The outcome a workflow failure carries (the workflow attaches it as the
/// failure's details).
fn outcome_of_failure(failure: &IncomingError) -> AttemptOutcome {
    let outcome = match failure {
        IncomingError::Application(application) => match application.details::<AttemptOutcome>() {
            Ok(Some(ended)) => return ended,
            _ => RunOutcome::failed(
                "",
                application.to_string(),
                application
                    .type_name()
                    .map_or(ErrorType::Runtime, ErrorType::from),
                false,
            ),
        },
        other => RunOutcome::failed(
            "",
            other.failure().message.clone(),
            ErrorType::Runtime,
            false,
        ),
    };
    AttemptOutcome::unattributed(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_ids_name_the_task() {
        assert_eq!(
            workflow_id("0123456789abcdef0123456789abcdef"),
            "exo-task-0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn ends_without_an_outcome_become_outcomes() {
        let cases = [
            (
                WorkflowGetResultError::TimedOut,
                Some((OutcomeStatus::TimedOut, ErrorType::Timeout)),
            ),
            (
                WorkflowGetResultError::Rpc(tonic::Status::unavailable("down")),
                None,
            ),
            (
                WorkflowGetResultError::NotFound(tonic::Status::not_found("gone")),
                None,
            ),
        ];
        for (error, expected) in cases {
            let label = error.to_string();
            match (outcome_of_result_error(error), expected) {
                (Ok(ended), Some((status, error_type))) => {
                    assert_eq!(ended.outcome.status, status, "{label}");
                    assert_eq!(ended.outcome.error_type, Some(error_type), "{label}");
                }
                (Err(Retry::Transient(_)), None) if label.contains("Server error") => {}
                (Err(Retry::Final(_)), None) if label.contains("not found") => {}
                (result, expected) => panic!("{label}: {result:?} vs {expected:?}"),
            }
        }
    }
}
