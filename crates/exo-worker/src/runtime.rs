//! The worker: its builder, its loops, and how a task attempt ends.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use exo_agent::{McpPolicy, OutcomeStatus, RunOutcome, Runner, ToolRegistry};
use exo_broker::{Broker, BrokerConfig, ClaimedTask, Finished, Outcome};
use exo_models::ProviderFactory;
use exo_observability::record::{self, QueueSample, TaskLabels};
use exo_proto::{Keys, RunStatus, StreamEvent, TaskStatus};
use futures::FutureExt;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ExecutorKind, WorkerConfig, default_worker_id, hostname},
    error::{Error, Result},
    execute::{Execution, Executor, LocalExecutor, RunControl},
    hooks::{NoHooks, TaskHooks},
    memory::Memory,
    state::{Registry, RunningTask, Shared, StopReason},
};

/// Builds a [`Worker`]: the guide's options plus tools, providers, hooks and
/// an MCP allowlist.
pub struct WorkerBuilder {
    config: WorkerConfig,
    providers: Option<ProviderFactory>,
    tools: ToolRegistry,
    mcp: McpPolicy,
    hooks: Arc<dyn TaskHooks>,
    executor: Option<Arc<dyn Executor>>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerBuilder")
            .field("config", &self.config)
            .field("custom_providers", &self.providers.is_some())
            .field("tools", &self.tools)
            .field("mcp", &self.mcp)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// A builder with the reference defaults.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self::from_config(WorkerConfig::new(redis_url))
    }

    /// A builder from a full config.
    pub fn from_config(config: WorkerConfig) -> Self {
        WorkerBuilder {
            config,
            providers: None,
            tools: ToolRegistry::new(),
            mcp: McpPolicy::default(),
            hooks: Arc::new(NoHooks),
            executor: None,
        }
    }

    /// The worker id (default `{hostname}-{pid}-{8 hex}`).
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.config.worker_id = Some(worker_id.into());
        self
    }

    /// Task slots (default 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// The queue stream (default `exo:tasks`).
    pub fn queue_name(mut self, queue_name: impl Into<String>) -> Self {
        self.config.queue_name = queue_name.into();
        self
    }

    /// The heartbeat TTL (default 30 s).
    pub fn heartbeat_ttl(mut self, ttl: Duration) -> Self {
        self.config.heartbeat_ttl = ttl;
        self
    }

    /// Where tasks run (default local).
    pub fn executor(mut self, executor: ExecutorKind) -> Self {
        self.config.executor = executor;
        self
    }

    /// Builds providers from model strings (default: resolved from the
    /// model string and the environment).
    pub fn provider_factory(mut self, providers: ProviderFactory) -> Self {
        self.providers = Some(providers);
        self
    }

    /// The tools agents may name.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// Which MCP servers agents may start or reach.
    pub fn mcp_policy(mut self, policy: McpPolicy) -> Self {
        self.mcp = policy;
        self
    }

    /// The post-task callback.
    pub fn hooks(mut self, hooks: Arc<dyn TaskHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Runs tasks with this executor instead of the one `executor` names.
    pub fn custom_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Edits the config in place.
    pub fn configure(mut self, edit: impl FnOnce(&mut WorkerConfig)) -> Self {
        edit(&mut self.config);
        self
    }

    /// Validates the settings and builds the worker. Nothing connects yet.
    pub fn build(self) -> Result<Worker> {
        self.config.validate().map_err(Error::Config)?;
        if self.config.executor == ExecutorKind::Temporal
            && self.executor.is_none()
            && !cfg!(feature = "temporal")
        {
            return Err(Error::Executor(
                "--executor temporal needs exo built with the `temporal` feature (cargo install --path crates/exo-cli --features temporal)".into(),
            ));
        }
        let hostname = hostname();
        let worker_id = self
            .config
            .worker_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| default_worker_id(&hostname));
        let memory = Memory::new(
            &self.config.memory_stores,
            self.config.allow_payload_dsn,
            self.config.memory_history_limit,
        )
        .map_err(|error| Error::Config(error.to_string()))?;
        let providers = self.providers.unwrap_or_else(exo_models::default_factory);
        let runner = Arc::new(Runner::new(providers, Arc::new(self.tools), self.mcp));
        Ok(Worker {
            config: self.config,
            worker_id,
            hostname,
            runner,
            memory,
            hooks: self.hooks,
            executor: self.executor,
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            status: Arc::new(WorkerStatus::default()),
        })
    }
}

/// Whether a running worker is connected and whether it is draining, for
/// readiness probes.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    connected: AtomicBool,
    draining: AtomicBool,
}

impl WorkerStatus {
    /// Connected to Redis.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Shutting down: no longer claiming.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Stops a running worker from elsewhere (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    shutdown: CancellationToken,
    force: CancellationToken,
}

impl ShutdownHandle {
    /// Graceful: stop claiming, let running tasks finish within the drain
    /// timeout, hand the rest back.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Immediate: stop running tasks now and hand them back.
    pub fn force(&self) {
        self.shutdown.cancel();
        self.force.cancel();
    }

    /// True once a shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// A worker process's runtime: claims tasks, runs them on its slots,
/// heartbeats, reclaims tasks of dead workers, and drains on shutdown.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    worker_id: String,
    hostname: String,
    runner: Arc<Runner>,
    memory: Memory,
    hooks: Arc<dyn TaskHooks>,
    executor: Option<Arc<dyn Executor>>,
    shutdown: CancellationToken,
    force: CancellationToken,
    status: Arc<WorkerStatus>,
}

impl Worker {
    /// A builder with the reference defaults.
    pub fn builder(redis_url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(redis_url)
    }

    /// The worker id.
    pub fn id(&self) -> &str {
        &self.worker_id
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Connection and drain state, for readiness probes.
    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// A handle that stops this worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shutdown: self.shutdown.clone(),
            force: self.force.clone(),
        }
    }

    /// The agent runner (for executors that run agents elsewhere, e.g. in a
    /// Temporal activity).
    pub fn runner(&self) -> Arc<Runner> {
        self.runner.clone()
    }

    /// The memory setup (for executors that run agents elsewhere).
    pub fn memory(&self) -> Memory {
        self.memory.clone()
    }

    /// The broker settings this worker uses.
    pub fn broker_config(&self) -> BrokerConfig {
        let mut config = BrokerConfig::new(self.config.redis_url.clone()).with_keys(Keys::new(
            self.config.key_prefix.clone(),
            self.config.queue_name.clone(),
        ));
        config.retry = self.config.retry;
        config.lease = self.config.lease;
        config.heartbeat_ttl = self.config.heartbeat_ttl;
        config.max_retries_cap = self.config.max_retries_cap;
        config.task_ttl = self.config.task_ttl;
        config.event_ttl = self.config.event_ttl;
        config.tls_ca_file = self.config.tls_ca_file.clone();
        config.replica_acks = self.config.replica_acks;
        config
    }

    /// Runs until [`ShutdownHandle::shutdown`] is called, then drains. Redis
    /// outages are ridden out with backoff; only invalid settings end it
    /// early.
    pub async fn run(self) -> Result<()> {
        let broker = match self.connect().await? {
            Some(broker) => broker,
            None => return Ok(()),
        };
        self.status.connected.store(true, Ordering::Relaxed);
        broker.on_publish(Arc::new(|_events, took| record::events_published(took)));
        let local = Arc::new(LocalExecutor::new(
            broker.clone(),
            self.runner.clone(),
            self.memory.clone(),
            self.config.deadline_grace,
        ));
        let executor: Arc<dyn Executor> = match (&self.executor, self.config.executor) {
            (Some(custom), _) => custom.clone(),
            (None, ExecutorKind::Local) => local,
            #[cfg(feature = "temporal")]
            (None, ExecutorKind::Temporal) => {
                crate::temporal::start(&self.config, &self.worker_id, local).await?
            }
            #[cfg(not(feature = "temporal"))]
            (None, ExecutorKind::Temporal) => {
                return Err(Error::Executor(
                    "exo was built without the `temporal` feature".into(),
                ));
            }
        };
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            config: self.config.clone(),
            worker_id: self.worker_id.clone(),
            hostname: self.hostname.clone(),
            started_at: exo_broker::now_seconds(),
            registry: Registry::default(),
            last_heartbeat: Mutex::new(std::time::Instant::now()),
            pause: tokio::sync::watch::channel(false).0,
            processed: Default::default(),
            failed: Default::default(),
            draining: AtomicBool::new(false),
            force: self.force.clone(),
        });
        tracing::info!(
            worker_id = self.worker_id,
            queue = self.config.queue_name,
            concurrency = self.config.concurrency,
            redis = broker.masked_url(),
            "worker started"
        );
        for warning in broker.server_warnings().await {
            tracing::warn!("{warning}");
        }
        // The first heartbeat lands before the first claim, so the reaper
        // of another worker never mistakes this one's tasks for orphans.
        let mut attempt = 0;
        let mut conflict_since: Option<std::time::Instant> = None;
        loop {
            match heartbeat_once(&shared).await {
                Beat::Landed => break,
                Beat::Conflict => {
                    // The hash may be a leftover of this same id's previous
                    // process (SIGKILLed, OOM-killed): it expires within a
                    // TTL. Only a hash that outlives that is a live process.
                    let since = *conflict_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed()
                        > self.config.heartbeat_ttl + heartbeat_interval(&self.config)
                    {
                        broker.close().await;
                        return Err(exo_broker::Error::WorkerIdInUse {
                            worker_id: self.worker_id.clone(),
                        }
                        .into());
                    }
                    tracing::warn!(
                        worker_id = self.worker_id,
                        "a heartbeat of this worker id is still in Redis; waiting for it to expire"
                    );
                }
                Beat::Failed => {}
            }
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff(attempt)) => {}
                () = self.shutdown.cancelled() => {
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, broker.close()).await;
                    return Ok(());
                }
            }
        }
        // Subscribe to cancel signals before the first claim, so a task
        // cancelled right after it starts hears of it at once. If the
        // subscription fails, the loop keeps trying and the heartbeat still
        // finds cancels.
        let cancels = match broker.cancel_listener().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to cancel signals yet; retrying in the background");
                None
            }
        };
        let background = CancellationToken::new();
        let mut loops = JoinSet::new();
        {
            let (shared, stop, status) = (shared.clone(), background.clone(), self.status.clone());
            let shutdown = self.shutdown.clone();
            loops.spawn(async move {
                let end = supervise(shared.clone(), "heartbeat", stop.clone(), move || {
                    heartbeat_loop(shared.clone(), stop.clone(), status.clone())
                })
                .await;
                if end == LoopEnd::Conflict {
                    // Another process took this worker id: stop claiming.
                    shutdown.cancel();
                }
                end
            });
        }
        {
            let (shared, stop) = (shared.clone(), background.clone());
            loops.spawn(supervise(
                shared.clone(),
                "reaper",
                stop.clone(),
                move || reaper_loop(shared.clone(), stop.clone()),
            ));
        }
        {
            let (shared, stop) = (shared.clone(), background.clone());
            let mut first = Some(cancels);
            loops.spawn(supervise(
                shared.clone(),
                "cancel",
                stop.clone(),
                move || cancel_loop(shared.clone(), stop.clone(), first.take().flatten()),
            ));
        }
        if !self.config.stats_interval.is_zero() {
            let (shared, stop) = (shared.clone(), background.clone());
            loops.spawn(supervise(
                shared.clone(),
                "stats",
                stop.clone(),
                move || stats_loop(shared.clone(), stop.clone()),
            ));
        }

        let mut tasks = JoinSet::new();
        self.claim_loop(&shared, &executor, &mut tasks).await;

        // Drain.
        shared.draining.store(true, Ordering::Relaxed);
        self.status.draining.store(true, Ordering::Relaxed);
        tracing::info!(running = tasks.len(), timeout = ?self.config.drain_timeout, "draining");
        // Once Redis has not answered one step of the shutdown, the steps
        // that only tidy up are skipped: the heartbeat expires by itself and
        // the reaper of another worker recovers what is left.
        let mut redis_away = heartbeat_once(&shared).await != Beat::Landed;
        let drained = tokio::select! {
            () = wait_all(&mut tasks) => true,
            () = tokio::time::sleep(self.config.drain_timeout) => false,
            () = self.force.cancelled() => false,
        };
        if !drained {
            let leases = shared.registry.leases();
            tracing::warn!(
                tasks = leases.len(),
                "drain deadline passed; stopping the remaining tasks and handing them back"
            );
            self.force.cancel();
            for task in shared.registry.running().values() {
                task.stop(StopReason::Shutdown);
            }
            tasks.abort_all();
            wait_all(&mut tasks).await;
            match tokio::time::timeout(SHUTDOWN_STEP * 5, broker.release(&leases)).await {
                Ok(Ok(count)) => tracing::info!(count, "handed tasks back to the queue"),
                Ok(Err(error)) => {
                    let tasks: Vec<_> = leases.iter().map(|lease| lease.task_id.as_str()).collect();
                    tracing::warn!(%error, ?tasks, "could not hand these tasks back; the reaper of another worker will")
                }
                Err(_) => {
                    let tasks: Vec<_> = leases.iter().map(|lease| lease.task_id.as_str()).collect();
                    tracing::warn!(
                        ?tasks,
                        "Redis did not answer; the reaper of another worker will recover these tasks"
                    )
                }
            }
        }
        background.cancel();
        let mut conflict = false;
        // A loop waiting on a Redis that does not answer is not waited for
        // long: its pass is abandoned.
        let joined = tokio::time::timeout(SHUTDOWN_STEP, async {
            while let Some(end) = loops.join_next().await {
                conflict |= matches!(end, Ok(LoopEnd::Conflict));
            }
        })
        .await;
        if joined.is_err() {
            loops.abort_all();
            while loops.join_next().await.is_some() {}
        }
        executor.shutdown().await;
        // Each step is bounded: a worker told to stop while Redis is away
        // exits within seconds.
        if !redis_away {
            match tokio::time::timeout(SHUTDOWN_STEP, broker.remove_worker(&self.worker_id)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not remove the heartbeat"),
                Err(_) => {
                    redis_away = true;
                    tracing::warn!("Redis did not answer; the heartbeat will expire by itself");
                }
            }
        } else {
            tracing::warn!("Redis is not answering; the heartbeat will expire by itself");
        }
        if !redis_away {
            let _ = tokio::time::timeout(SHUTDOWN_STEP, broker.close()).await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_STEP, self.memory.close()).await;
        self.status.connected.store(false, Ordering::Relaxed);
        tracing::info!(worker_id = self.worker_id, "worker stopped");
        if conflict {
            return Err(exo_broker::Error::WorkerIdInUse {
                worker_id: self.worker_id.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Connects, retrying with backoff while Redis is unreachable. `None`
    /// when shut down before a connection was made.
    async fn connect(&self) -> Result<Option<Broker>> {
        let mut attempt = 0u32;
        loop {
            match Broker::connect(self.broker_config()).await {
                Ok(broker) => return Ok(Some(broker)),
                Err(error) if error.is_unreachable() => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "Redis unreachable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        () = self.shutdown.cancelled() => return Ok(None),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn claim_loop(
        &self,
        shared: &Arc<Shared>,
        executor: &Arc<dyn Executor>,
        tasks: &mut JoinSet<()>,
    ) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut claimer = shared.broker.claimer(self.worker_id.clone());
        let mut failures = 0u32;
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            if self.shutdown.is_cancelled() {
                break;
            }
            // A worker cut off from Redis takes no new work.
            if shared.paused() {
                drop(first);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = self.shutdown.cancelled() => break,
                }
                continue;
            }
            let free = 1 + slots.available_permits();
            let claiming = claimer.claim(free, self.config.claim_block);
            tokio::pin!(claiming);
            let claimed = tokio::select! {
                claimed = &mut claiming => claimed,
                () = self.shutdown.cancelled() => {
                    // Give a claim under way a moment to land (its tasks are
                    // then handed back below); past that, Redis is away.
                    match tokio::time::timeout(Duration::from_secs(1), &mut claiming).await {
                        Ok(claimed) => claimed,
                        Err(_) => break,
                    }
                }
            };
            let claim = match claimed {
                Ok(claim) => {
                    failures = 0;
                    self.status.connected.store(true, Ordering::Relaxed);
                    claim
                }
                Err(error) => {
                    drop(first);
                    failures += 1;
                    if error.is_unreachable() {
                        self.status.connected.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(%error, failures, "claim failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            for rejected in &claim.rejected {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    entry = rejected.entry_id,
                    reason = rejected.reason,
                    "queue entry dead-lettered"
                );
            }
            if self.shutdown.is_cancelled() && !claim.tasks.is_empty() {
                let leases: Vec<_> = claim.tasks.iter().map(|task| task.lease.clone()).collect();
                if let Err(error) = shared.broker.release(&leases).await {
                    tracing::warn!(%error, "could not hand back tasks claimed during shutdown");
                }
                break;
            }
            let mut first = Some(first);
            for task in claim.tasks {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            tracing::error!(
                                task_id = task.lease.task_id,
                                "claimed more tasks than free slots; handing it back"
                            );
                            let _ = shared
                                .broker
                                .release(std::slice::from_ref(&task.lease))
                                .await;
                            continue;
                        }
                    },
                };
                record::task_started(
                    TaskLabels::new(&self.config.queue_name, &self.worker_id),
                    task.payload.created_at,
                    exo_broker::now_seconds(),
                );
                let shared = shared.clone();
                let executor = executor.clone();
                let hooks = self.hooks.clone();
                // Executors that retry internally have used the budget.
                tasks.spawn(async move {
                    run_task(shared, executor, hooks, task).await;
                    drop(permit);
                });
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_STEP, claimer.close()).await;
    }
}

/// The longest one step of a shutdown waits for Redis.
const SHUTDOWN_STEP: Duration = Duration::from_secs(1);

async fn wait_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

fn backoff(attempt: u32) -> Duration {
    use rand::RngExt;
    let base = (100u64 << attempt.min(6)).min(5_000);
    Duration::from_millis(base / 2 + rand::rng().random_range(0..=base / 2))
}

/// What one heartbeat call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// It landed; leases are renewed.
    Landed,
    /// It failed or timed out.
    Failed,
    /// Another live process uses this worker id.
    Conflict,
}

/// The heartbeat's fixed rate: a third of the TTL, as the reference writes
/// it.
pub(crate) fn heartbeat_interval(config: &WorkerConfig) -> Duration {
    (key_ttl(config) / 3).max(Duration::from_millis(200))
}

/// The TTL the heartbeat key really gets: whole seconds (EXPIRE), at least
/// one.
fn key_ttl(config: &WorkerConfig) -> Duration {
    Duration::from_secs(config.heartbeat_ttl.as_secs().max(1))
}

/// How long one heartbeat call may take: below the interval, so a slow
/// call never delays the next one.
fn heartbeat_call_timeout(config: &WorkerConfig) -> Duration {
    heartbeat_interval(config).mul_f64(0.8)
}

/// How long after the send of the last heartbeat that landed the worker
/// pauses its runs: one interval before its key can expire (the key's TTL
/// started no earlier than that send), so no run starts a model or tool call
/// once another worker may take its task over. With the reference's
/// interval of a third of the TTL, that is after one heartbeat failed and
/// the next has not landed yet.
pub(crate) fn pause_after(config: &WorkerConfig) -> Duration {
    let interval = heartbeat_interval(config);
    key_ttl(config).saturating_sub(interval).max(interval * 2)
}

async fn heartbeat_once(shared: &Shared) -> Beat {
    let health = shared.health();
    let leases = shared.registry.leases();
    let sent = std::time::Instant::now();
    let call = shared
        .broker
        .heartbeat(&health, shared.config.heartbeat_ttl, &leases);
    let result = match tokio::time::timeout(heartbeat_call_timeout(&shared.config), call).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                timeout = ?heartbeat_call_timeout(&shared.config),
                "heartbeat timed out"
            );
            record::loop_error(&shared.worker_id, "heartbeat");
            return Beat::Failed;
        }
    };
    match result {
        Ok(report) => {
            shared.heartbeat_landed(sent);
            let attempt_of = |task_id: &str| {
                leases
                    .iter()
                    .find(|lease| lease.task_id == task_id)
                    .map(|lease| lease.attempt)
            };
            for task_id in report.cancelled {
                if let Some(attempt) = attempt_of(&task_id)
                    && shared
                        .registry
                        .stop_attempt(&task_id, attempt, StopReason::Cancelled)
                {
                    tracing::info!(task_id, "cancel found by the heartbeat");
                }
            }
            for task_id in report.lost {
                if let Some(attempt) = attempt_of(&task_id)
                    && shared
                        .registry
                        .stop_attempt(&task_id, attempt, StopReason::Lost)
                {
                    tracing::warn!(
                        task_id,
                        "task was reclaimed by another worker; stopping this attempt"
                    );
                }
            }
            if report.handed_back > 0 {
                tracing::warn!(
                    count = report.handed_back,
                    "handed back tasks whose claim reply was lost"
                );
            }
            // Lost attempts are stopped first; the others may go on.
            if shared.paused() {
                let _ = shared.pause.send(false);
                tracing::info!("heartbeat landed again; resuming the paused runs");
            }
            Beat::Landed
        }
        Err(exo_broker::Error::WorkerIdInUse { worker_id }) => {
            tracing::error!(
                worker_id,
                "another live process heartbeats under this worker id; give each process its own id"
            );
            Beat::Conflict
        }
        Err(error) => {
            tracing::warn!(%error, "heartbeat failed");
            record::loop_error(&shared.worker_id, "heartbeat");
            Beat::Failed
        }
    }
}

/// Heartbeats at a fixed rate. When none has landed for [`pause_after`]
/// (measured from its send), the worker pauses its runs: they start no new
/// model or tool call until a heartbeat lands again and says which of them
/// the worker still owns (those lost are stopped, the others resume). A
/// Redis stall therefore costs time, not work, and a worker cut off from
/// Redis stops spending before another may take its tasks. Returns when
/// stopped, or on a worker-id conflict (the caller stops the worker).
async fn heartbeat_loop(
    shared: Arc<Shared>,
    stop: CancellationToken,
    status: Arc<WorkerStatus>,
) -> LoopEnd {
    let interval = heartbeat_interval(&shared.config);
    let pause_after = pause_after(&shared.config);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let pause_at = tokio::time::Instant::from_std(shared.last_landed_send() + pause_after);
        let paused = shared.paused();
        tokio::select! {
            biased;
            () = stop.cancelled() => return LoopEnd::Stopped,
            () = tokio::time::sleep_until(pause_at), if !paused => {
                let running = shared.registry.running().len();
                tracing::warn!(
                    since = ?shared.last_landed_send().elapsed(),
                    running,
                    "no heartbeat has landed for too long; pausing the runs until Redis answers"
                );
                let _ = shared.pause.send(true);
            }
            _ = ticker.tick() => {
                let beat = heartbeat_once(&shared).await;
                status.connected.store(beat == Beat::Landed, Ordering::Relaxed);
                if beat == Beat::Conflict {
                    for task in shared.registry.running().values() {
                        task.stop(StopReason::Lost);
                    }
                    return LoopEnd::Conflict;
                }
            }
        }
    }
}

/// How a background loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    /// Told to stop.
    Stopped,
    /// The worker id is in use by another process: the worker must stop.
    Conflict,
}

/// Runs a background loop, restarting it (with a warning and a metric)
/// when it ends without being told to or panics, so a worker never goes on
/// claiming without its heartbeat or reaper.
async fn supervise<F, Fut>(
    shared: Arc<Shared>,
    name: &'static str,
    stop: CancellationToken,
    mut start: F,
) -> LoopEnd
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = LoopEnd> + Send + 'static,
{
    /// Aborts the loop's task when the supervisor is dropped (aborted at
    /// shutdown), so no loop outlives its worker.
    struct AbortOnDrop(tokio::task::JoinHandle<LoopEnd>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut restarts = 0u32;
    loop {
        let mut running = AbortOnDrop(tokio::spawn(start()));
        let ended = (&mut running.0).await;
        match ended {
            Ok(LoopEnd::Conflict) => return LoopEnd::Conflict,
            Ok(LoopEnd::Stopped) if stop.is_cancelled() => return LoopEnd::Stopped,
            Ok(LoopEnd::Stopped) => {
                tracing::warn!(name, "background loop ended by itself; restarting it");
            }
            Err(join) => {
                tracing::error!(name, error = %join, "background loop panicked; restarting it");
            }
        }
        if stop.is_cancelled() {
            return LoopEnd::Stopped;
        }
        record::loop_error(&shared.worker_id, name);
        restarts += 1;
        tokio::select! {
            () = tokio::time::sleep(backoff(restarts)) => {}
            () = stop.cancelled() => return LoopEnd::Stopped,
        }
    }
}

async fn reaper_loop(shared: Arc<Shared>, stop: CancellationToken) -> LoopEnd {
    use rand::RngExt;
    loop {
        let jitter = rand::rng().random_range(0.8..1.2);
        let wait = shared.config.reap_interval.mul_f64(jitter);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return LoopEnd::Stopped,
        }
        // A worker cut off from Redis does not judge others.
        if shared.paused() {
            continue;
        }
        match shared.broker.reap(&shared.worker_id, 100).await {
            Ok(report) => {
                if report.requeued + report.failed + report.reconciled > 0 {
                    record::tasks_reclaimed(
                        TaskLabels::new(&shared.config.queue_name, &shared.worker_id),
                        report.requeued + report.failed,
                    );
                    tracing::warn!(
                        requeued = report.requeued,
                        failed = report.failed,
                        reconciled = report.reconciled,
                        "reclaimed stuck tasks"
                    );
                }
                if report.quiet {
                    tracing::info!(
                        "the fleet clock saw a stall; reclaiming nothing for one heartbeat TTL"
                    );
                }
            }
            Err(error) => {
                record::loop_error(&shared.worker_id, "reaper");
                tracing::warn!(%error, "reaper pass failed");
            }
        }
    }
}

/// Measures the queue (and the fleet) from Redis for the depth gauges.
async fn stats_loop(shared: Arc<Shared>, stop: CancellationToken) -> LoopEnd {
    loop {
        match shared.broker.queue_stats().await {
            Ok(stats) => record::queue_measured(
                &shared.config.queue_name,
                &QueueSample {
                    depth: stats.depth(),
                    lag: stats.lag,
                    pending: stats.pending,
                    delayed: stats.delayed,
                    dead_letter: stats.dead_letter,
                },
            ),
            Err(error) => {
                record::loop_error(&shared.worker_id, "stats");
                tracing::debug!(%error, "queue stats failed");
            }
        }
        record::redis_round_trips(&shared.worker_id, shared.broker.round_trips());
        if let Ok(fleet) = shared.broker.fleet().await {
            let now = exo_broker::now_seconds();
            record::workers_alive(fleet.iter().filter(|entry| entry.alive(now)).count() as u64);
        }
        tokio::select! {
            () = tokio::time::sleep(shared.config.stats_interval) => {}
            () = stop.cancelled() => return LoopEnd::Stopped,
        }
    }
}

async fn cancel_loop(
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut first: Option<exo_broker::CancelListener>,
) -> LoopEnd {
    let mut attempt = 0;
    loop {
        let listener = match first.take() {
            Some(listener) => Ok(listener),
            None => tokio::select! {
                listener = shared.broker.cancel_listener() => listener,
                () = stop.cancelled() => return LoopEnd::Stopped,
            },
        };
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(error) => {
                attempt += 1;
                tracing::warn!(%error, "cannot subscribe to cancel signals; the heartbeat still checks for cancels");
                tokio::select! {
                    () = tokio::time::sleep(backoff(attempt)) => continue,
                    () = stop.cancelled() => return LoopEnd::Stopped,
                }
            }
        };
        attempt = 0;
        loop {
            tokio::select! {
                task_id = listener.recv() => match task_id {
                    Some(task_id) => {
                        if shared.registry.stop_task(&task_id, StopReason::Cancelled) {
                            tracing::info!(task_id, "cancel signal received");
                        } else {
                            // Perhaps claimed here but not registered yet.
                            shared.registry.remember_cancel(&task_id);
                        }
                    }
                    None => break,
                },
                () = stop.cancelled() => {
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, listener.close()).await;
                    return LoopEnd::Stopped;
                }
            }
        }
    }
}

/// Runs one attempt and ends it: the run (in its own tokio task, so a panic
/// fails the task, not the worker), then the fenced final write, then the
/// hook.
async fn run_task(
    shared: Arc<Shared>,
    executor: Arc<dyn Executor>,
    hooks: Arc<dyn TaskHooks>,
    task: ClaimedTask,
) {
    let task_id = task.lease.task_id.clone();
    let running = Arc::new(RunningTask {
        lease: task.lease.clone(),
        cancel: CancellationToken::new(),
        stop: Mutex::new(None),
        started: std::time::Instant::now(),
    });
    shared.registry.register(running.clone());
    // The payload's deadline, capped by the worker.
    let timeout = Duration::try_from_secs_f64(task.payload.timeout_seconds.max(0.001))
        .unwrap_or(Duration::MAX)
        .min(shared.config.max_task_timeout);
    let control = RunControl {
        cancel: running.cancel.clone(),
        deadline: Instant::now() + timeout,
        pause: Some(shared.pause.subscribe()),
    };
    let span = tracing::info_span!(
        "exo.task.execute",
        task_id,
        attempt = task.lease.attempt,
        worker_id = shared.worker_id,
        queue = shared.config.queue_name
    );
    exo_observability::set_parent_from(&span, &task.payload.trace_context());
    let execution = {
        let executor = executor.clone();
        let task = task.clone();
        async move {
            std::panic::AssertUnwindSafe(executor.execute(&task, control))
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
            retries_used: 0,
        },
    };
    let stop = running.stop_reason();
    match stop {
        Some(StopReason::Lost) => {
            tracing::warn!(
                task_id,
                "attempt lost to another worker; its result is dropped"
            );
            shared.registry.unregister(&running);
            return;
        }
        Some(StopReason::Shutdown) => {
            // Handed back by the drain; nothing to write.
            shared.registry.unregister(&running);
            return;
        }
        _ => {}
    }
    let ran_for = running.started.elapsed();
    // The task stays registered until its final write lands, so the
    // heartbeat keeps renewing its lease while that write is retried.
    finish(
        &shared,
        &hooks,
        &task,
        execution,
        stop == Some(StopReason::Cancelled),
        timeout,
        ran_for,
    )
    .await;
    shared.registry.unregister(&running);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
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
) -> (Outcome<'a>, StreamEvent) {
    let agent_name = outcome.agent_name.as_str();
    match outcome.status {
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
    }
}

async fn finish(
    shared: &Shared,
    hooks: &Arc<dyn TaskHooks>,
    task: &ClaimedTask,
    execution: Execution,
    cancelled: bool,
    timeout: Duration,
    ran_for: Duration,
) {
    let outcome = execution.outcome;
    let agent_name = outcome.agent_name.clone();
    let timeout_text = timeout_message(timeout);
    let (result, terminal) = settlement(&outcome, cancelled, &timeout_text);
    let events = execution.unsent_events;
    let retries_used = execution.retries_used;
    let mut finished = write_outcome(
        shared,
        task,
        result,
        events.clone(),
        &terminal,
        retries_used,
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
            events,
            &terminal,
            retries_used,
        )
        .await;
    }
    let Some(finished) = finished else { return };
    let (status, output, error) = match &finished {
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
            return;
        }
        Finished::CancelRequested => return,
    };
    let recorded = match &finished {
        Finished::Retrying { .. } => TaskStatus::Retrying,
        _ => status,
    };
    record::task_finished(
        TaskLabels::new(&shared.config.queue_name, &shared.worker_id),
        recorded,
        ran_for,
    );
    record::redis_round_trips(&shared.worker_id, shared.broker.round_trips());
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
}

/// The fenced final write, retried while Redis is unreachable or answers
/// with a passing error (loading, busy, a read-only replica after a
/// failover, resharding): the result must not be lost. Until a forced
/// shutdown.
async fn write_outcome(
    shared: &Shared,
    task: &ClaimedTask,
    outcome: Outcome<'_>,
    events: Vec<String>,
    terminal: &StreamEvent,
    retries_used: u32,
) -> Option<Finished> {
    let mut attempt = 0;
    loop {
        match shared
            .broker
            .finish_with_retries(task, outcome, events.clone(), terminal, retries_used)
            .await
        {
            Ok(finished) => return Some(finished),
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
                    .broker
                    .finish_with_retries(
                        task,
                        Outcome::Failed {
                            error: &reason,
                            retryable: true,
                        },
                        Vec::new(),
                        &terminal,
                        retries_used,
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
        for (outcome, cancelled, recorded, terminal) in cases {
            let (result, event) = settlement(outcome, *cancelled, "timed out after 0.5 s");
            let recorded_now = match result {
                Outcome::Completed { output } => format!("completed: {output}"),
                Outcome::Cancelled => "cancelled".to_owned(),
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
