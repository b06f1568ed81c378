//! Worker settings, with the reference's defaults.

use std::time::Duration;

use exo_broker::RetryPolicy;

/// Where tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// In this process (the default).
    #[default]
    Local,
    /// As a durable Temporal workflow (needs the `temporal` feature).
    Temporal,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "local" => Ok(ExecutorKind::Local),
            "temporal" => Ok(ExecutorKind::Temporal),
            other => Err(format!(
                "unknown executor `{other}` (expected local or temporal)"
            )),
        }
    }
}

/// Everything a worker needs to know besides its tools and providers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Redis URL (required).
    pub redis_url: String,
    /// The worker id; `{hostname}-{pid}-{8 hex}` when unset.
    pub worker_id: Option<String>,
    /// Task slots (reference default 1).
    pub concurrency: usize,
    /// The queue stream (reference default `exo:tasks`).
    pub queue_name: String,
    /// The prefix of task keys (reference default `exo:`).
    pub key_prefix: String,
    /// Heartbeat TTL; the heartbeat is written every third of it.
    pub heartbeat_ttl: Duration,
    /// Where tasks run.
    pub executor: ExecutorKind,
    /// How long running tasks may finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long one claim waits for a task.
    pub claim_block: Duration,
    /// How often this worker looks for stuck tasks of dead workers.
    pub reap_interval: Duration,
    /// A task whose worker stops renewing its lease this long is reclaimed.
    pub lease: Duration,
    /// How often queue depth is measured for metrics (zero: never).
    pub stats_interval: Duration,
    /// Retry budget and backoff.
    pub retry: RetryPolicy,
    /// Extra time a run gets past its deadline to stop by itself before it
    /// is aborted.
    pub deadline_grace: Duration,
    /// How long `on_task_done` may take.
    pub hook_timeout: Duration,
    /// Extra CA certificates for `rediss://`.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Memory stores payloads may name, as `NAME=DSN`.
    pub memory_stores: Vec<String>,
    /// Accept a memory DSN written in a payload (off by default: a payload
    /// DSN is a path or credential chosen by whoever can write to the queue).
    pub allow_payload_dsn: bool,
    /// Prior messages loaded per task at most.
    pub memory_history_limit: usize,
    /// Replicas that must acknowledge each final write (see
    /// `exo_broker::BrokerConfig::replica_acks`).
    pub replica_acks: u32,
    /// The most retries a payload's `max_retries` may ask for.
    pub max_retries_cap: u32,
    /// The longest deadline a payload's `timeout_seconds` may ask for.
    pub max_task_timeout: Duration,
    /// How long a task hash is kept after its last write (reference: 24 h).
    pub task_ttl: Duration,
    /// How long a task's event stream is kept after its last event
    /// (reference: 1 h).
    pub event_ttl: Duration,
}

impl WorkerConfig {
    /// The defaults for this Redis URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        WorkerConfig {
            redis_url: redis_url.into(),
            worker_id: None,
            concurrency: 1,
            queue_name: "exo:tasks".to_owned(),
            key_prefix: "exo:".to_owned(),
            heartbeat_ttl: Duration::from_secs(30),
            executor: ExecutorKind::Local,
            drain_timeout: Duration::from_secs(30),
            claim_block: Duration::from_secs(2),
            reap_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            stats_interval: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            deadline_grace: Duration::from_secs(5),
            hook_timeout: Duration::from_secs(30),
            tls_ca_file: None,
            memory_stores: Vec::new(),
            allow_payload_dsn: false,
            memory_history_limit: 200,
            replica_acks: 0,
            max_retries_cap: 25,
            max_task_timeout: Duration::from_secs(24 * 3600),
            task_ttl: Duration::from_secs(24 * 3600),
            event_ttl: Duration::from_secs(3600),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.redis_url.trim().is_empty() {
            return Err("a Redis URL is required (--redis-url or EXO_REDIS_URL)".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if self.queue_name.is_empty() {
            return Err("the queue name must not be empty".into());
        }
        if self.heartbeat_ttl < Duration::from_secs(1) {
            return Err("the heartbeat TTL must be at least 1 s".into());
        }
        if self.task_ttl < Duration::from_secs(1) || self.event_ttl < Duration::from_secs(1) {
            return Err("the task and event TTLs must be at least 1 s".into());
        }
        if self.max_task_timeout.is_zero() {
            return Err("the task timeout cap must be positive".into());
        }
        if self.retry.max_retries > self.max_retries_cap {
            return Err(format!(
                "the default retry budget ({}) is above the cap on payload budgets ({})",
                self.retry.max_retries, self.max_retries_cap
            ));
        }
        if self.lease < self.heartbeat_ttl {
            return Err(format!(
                "the lease ({:?}) must be at least the heartbeat TTL ({:?}): the lease path would reclaim tasks of live workers before the dead-worker path, and before they pause",
                self.lease, self.heartbeat_ttl
            ));
        }
        if self.lease < (self.heartbeat_ttl / 3) * 2 {
            return Err(format!(
                "the lease ({:?}) must be at least two heartbeat intervals ({:?} each), or running tasks would be reclaimed",
                self.lease,
                self.heartbeat_ttl / 3
            ));
        }
        Ok(())
    }
}

/// `{hostname}-{pid}-{8 hex chars}`, as the reference names workers.
pub fn default_worker_id(hostname: &str) -> String {
    use rand::RngExt;
    let suffix: u32 = rand::rng().random();
    format!("{hostname}-{}-{suffix:08x}", std::process::id())
}

/// This machine's host name.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_follow_the_reference_shape() {
        let id = default_worker_id("web01");
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts[0], "web01");
        assert_eq!(parts[1], std::process::id().to_string());
        assert_eq!(parts[2].len(), 8);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn validation() {
        let cases: &[(fn(&mut WorkerConfig), Option<&str>)] = &[
            (|_| {}, None),
            (
                |config| config.redis_url.clear(),
                Some("Redis URL is required"),
            ),
            (|config| config.concurrency = 0, Some("concurrency")),
            (
                |config| config.lease = Duration::from_secs(5),
                Some("lease"),
            ),
        ];
        for (change, expected) in cases {
            let mut config = WorkerConfig::new("redis://localhost");
            change(&mut config);
            match (config.validate(), expected) {
                (Ok(()), None) => {}
                (Err(error), Some(needle)) => assert!(error.contains(needle), "{error}"),
                (result, expected) => panic!("{result:?} vs {expected:?}"),
            }
        }
    }
}
