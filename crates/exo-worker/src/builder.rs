//! Building a worker: [`WorkerBuilder`], the [`Worker`] it builds, and the
//! handles on a running worker ([`WorkerStatus`], [`ShutdownHandle`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use exo_agent::{McpPolicy, Runner, ToolRegistry};
use exo_broker::BrokerConfig;
use exo_models::ProviderFactory;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ExecutorKind, WorkerConfig, default_worker_id, hostname},
    error::{Error, Result},
    execute::Executor,
    hooks::{NoHooks, TaskHooks},
    memory::Memory,
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

    /// Tasks the worker may hold ahead, after short tasks (default 8; 0:
    /// none). See [`WorkerConfig::lookahead`].
    pub fn lookahead(mut self, lookahead: usize) -> Self {
        self.config.lookahead = lookahead;
        self
    }

    /// Queue shards to consume (default 1: the queue is not sharded).
    pub fn shards(mut self, shards: u32) -> Self {
        self.config.shards = shards.max(1);
        self
    }

    /// The key prefix and queue stream (default `exo:` and `exo:tasks`).
    pub fn keys(mut self, keys: exo_proto::Keys) -> Self {
        self.config.broker.keys = keys;
        self
    }

    /// The heartbeat TTL (default 30 s).
    pub fn heartbeat_ttl(mut self, ttl: Duration) -> Self {
        self.config.broker.heartbeat_ttl = ttl;
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
        let memory =
            Memory::new(&self.config.memory).map_err(|error| Error::Config(error.to_string()))?;
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
            slots: None,
            shard: 0,
            limits_keys: None,
        })
    }
}

/// Whether a running worker is connected and whether it is draining, for
/// readiness probes.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    pub(crate) connected: AtomicBool,
    pub(crate) draining: AtomicBool,
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
    pub(crate) config: WorkerConfig,
    pub(crate) worker_id: String,
    pub(crate) hostname: String,
    pub(crate) runner: Arc<Runner>,
    pub(crate) memory: Memory,
    pub(crate) hooks: Arc<dyn TaskHooks>,
    pub(crate) executor: Option<Arc<dyn Executor>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) force: CancellationToken,
    pub(crate) status: Arc<WorkerStatus>,
    /// The slots, when shared with the other shards of a sharded worker.
    pub(crate) slots: Option<Arc<crate::state::Slots>>,
    /// Which shard this runtime consumes, in a sharded worker.
    pub(crate) shard: usize,
    /// The keys whose rate-limit counters a sharded worker's shards share
    /// (the queue's shard 0).
    pub(crate) limits_keys: Option<exo_proto::Keys>,
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
        self.config.broker.clone()
    }
}
