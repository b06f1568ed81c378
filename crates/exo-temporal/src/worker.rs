//! The Temporal worker (poller) of one process: runs the workflow and the
//! `execute_agent` activity for whichever worker claimed the task.

use std::{sync::Arc, time::Duration};

use temporalio_sdk::{
    Runtime, Worker, WorkerOptions,
    runtime::{
        RuntimeOptions,
        worker_tuner::{FixedSizeSlotSupplier, TunerHolder},
    },
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    activity::{ActivityHost, AgentActivities},
    client::TemporalClient,
    error::{Error, Result},
    workflow::AgentExecutionWorkflow,
};

/// Workflow tasks this process works on at once (they are short).
const WORKFLOW_SLOTS: usize = 100;

/// Workflows kept in this process's cache between their tasks.
const CACHED_WORKFLOWS: usize = 200;

/// How long the activities still running after the grace period get to
/// report their attempt as failed, so another worker retries it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running Temporal worker. The SDK's worker keeps its workflows on one
/// thread (they are not `Send`), so it runs on a thread of its own that
/// drives it on the caller's tokio runtime; activities run as ordinary
/// tokio tasks of that runtime.
pub struct TemporalWorker {
    initiate_shutdown: Box<dyn Fn() + Send + Sync>,
    stop_activities: CancellationToken,
    finished: Option<oneshot::Receiver<Result<()>>>,
    task_queue: String,
}

impl std::fmt::Debug for TemporalWorker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TemporalWorker")
            .field("task_queue", &self.task_queue)
            .finish_non_exhaustive()
    }
}

type Started = (Box<dyn Fn() + Send + Sync>, oneshot::Receiver<Result<()>>);

impl TemporalWorker {
    /// Starts polling the client's task queue for the workflow and the
    /// activity, running agents through `host`. Must be called inside a
    /// tokio runtime.
    pub async fn start(client: &TemporalClient, host: Arc<dyn ActivityHost>) -> Result<Self> {
        let config = client.config().clone();
        let runtime_handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Worker("no tokio runtime to run on".into()))?;
        let stop_activities = CancellationToken::new();
        let activities =
            AgentActivities::new(host, config.heartbeat_interval, stop_activities.clone());
        let sdk_client = client.raw().clone();
        let (started_sender, started) = oneshot::channel::<Result<Started>>();
        let task_queue = config.task_queue.clone();
        std::thread::Builder::new()
            .name("exo-temporal".into())
            .spawn(move || {
                runtime_handle.block_on(async move {
                    let (done_sender, done) = oneshot::channel();
                    let built = build_worker(&config, sdk_client, activities);
                    let (runtime, mut worker) = match built {
                        Ok(pair) => pair,
                        Err(error) => {
                            let _ = started_sender.send(Err(error));
                            return;
                        }
                    };
                    let initiate = worker.shutdown_handle();
                    let _ = started_sender.send(Ok((Box::new(initiate), done)));
                    let result = worker
                        .run()
                        .await
                        .map_err(|error| Error::Worker(error.to_string()));
                    if let Err(error) = &result {
                        tracing::error!(%error, "the Temporal worker stopped with an error");
                    }
                    drop(worker);
                    drop(runtime);
                    let _ = done_sender.send(result);
                });
            })
            .map_err(|error| Error::Worker(format!("cannot start its thread: {error}")))?;
        let (initiate_shutdown, finished) = started
            .await
            .map_err(|_| Error::Worker("its thread ended before starting".into()))??;
        tracing::info!(
            task_queue,
            host = client.config().host,
            namespace = client.config().namespace,
            "Temporal worker started"
        );
        Ok(TemporalWorker {
            initiate_shutdown,
            stop_activities,
            finished: Some(finished),
            task_queue,
        })
    }

    /// The task queue it polls.
    pub fn task_queue(&self) -> &str {
        &self.task_queue
    }

    /// Stops polling, lets running activities finish within `grace`, then
    /// stops the rest (their attempts fail as retryable, so another worker
    /// runs them), and waits for the worker to end.
    pub async fn shutdown(&mut self, grace: Duration) -> Result<()> {
        let Some(mut finished) = self.finished.take() else {
            return Ok(());
        };
        (self.initiate_shutdown)();
        if let Ok(result) = tokio::time::timeout(grace, &mut finished).await {
            return result.unwrap_or(Ok(()));
        }
        tracing::warn!(
            ?grace,
            "activities still running after the grace period; stopping them so other workers retry them"
        );
        self.stop_activities.cancel();
        match tokio::time::timeout(STOP_GRACE, finished).await {
            Ok(result) => result.unwrap_or(Ok(())),
            Err(_) => Err(Error::Worker(format!(
                "did not stop within {:?} after its activities were stopped",
                STOP_GRACE
            ))),
        }
    }
}

impl Drop for TemporalWorker {
    fn drop(&mut self) {
        if self.finished.is_some() {
            self.stop_activities.cancel();
            (self.initiate_shutdown)();
        }
    }
}

/// The SDK runtime and worker, with the workflow and the activity
/// registered.
fn build_worker(
    config: &crate::TemporalConfig,
    client: temporalio_client::Client,
    activities: AgentActivities,
) -> Result<(Runtime, Worker)> {
    let runtime = Runtime::from_current_tokio(RuntimeOptions::default())
        .map_err(|error| Error::Worker(error.to_string()))?;
    let tuner = TunerHolder::builder()
        .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(WORKFLOW_SLOTS))
        .activity_task_slot_supplier(FixedSizeSlotSupplier::new(config.max_concurrent_activities))
        .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(1))
        .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
        .build();
    let options = WorkerOptions::new(config.task_queue.clone())
        .register_workflow::<AgentExecutionWorkflow>()
        .map_err(|error| Error::Worker(error.to_string()))?
        .register_activities(activities)
        .tuner(tuner)
        .max_cached_workflows(CACHED_WORKFLOWS)
        .sticky_queue_schedule_to_start_timeout(config.sticky_queue_timeout)
        .max_heartbeat_throttle_interval(config.heartbeat_interval)
        .default_heartbeat_throttle_interval(config.heartbeat_interval)
        .maybe_client_identity_override(config.identity.clone())
        .build();
    let worker =
        Worker::new(&runtime, client, options).map_err(|error| Error::Worker(error.to_string()))?;
    Ok((runtime, worker))
}
