//! Worker settings, with the reference's defaults.

use std::time::Duration;

use exo_broker::BrokerConfig;
use exo_memory::NamedStore;

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
    /// How the worker reaches Redis and how long things live there: the URL,
    /// keys, retry policy, lease, heartbeat TTL, TTLs, TLS and replica
    /// acknowledgements. Each setting has one default, in
    /// [`BrokerConfig::new`].
    pub broker: BrokerConfig,
    /// The worker id; `{hostname}-{pid}-{8 hex}` when unset.
    pub worker_id: Option<String>,
    /// Task slots (reference default 1).
    pub concurrency: usize,
    /// Tasks the worker may hold, claimed, beyond what its slots run and
    /// each slot's next task (0: none). A slot takes them only with the
    /// final write of a task that ran shorter than `lookahead_window`, so
    /// it runs them one by one, each while the previous one's final write
    /// is under way. Held tasks are `running` for this worker: when the
    /// task before them runs longer than `lookahead_window`, or the worker
    /// drains, they go back to the queue (a new attempt, no retry charged)
    /// for another slot or worker.
    pub lookahead: usize,
    /// See `lookahead`.
    pub lookahead_window: Duration,
    /// Queue shards this worker consumes (1: the queue is not sharded).
    /// The slots are shared: a shard whose slot frees keeps it for its next
    /// task unless another shard waits for one. See `exo_broker::Shards`.
    pub shards: u32,
    /// Where tasks run.
    pub executor: ExecutorKind,
    /// How long running tasks may finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long one claim waits for a task.
    pub claim_block: Duration,
    /// How often this worker looks for stuck tasks of dead workers.
    pub reap_interval: Duration,
    /// How often queue depth is measured for metrics (zero: never).
    pub stats_interval: Duration,
    /// How often this worker fires the cron schedules that are due (zero:
    /// never). Every worker does; each tick still becomes one task.
    pub schedule_interval: Duration,
    /// Extra time a run gets past its deadline to stop by itself before it
    /// is aborted.
    pub deadline_grace: Duration,
    /// How long `on_task_done` may take.
    pub hook_timeout: Duration,
    /// The longest deadline a payload's `timeout_seconds` may ask for.
    pub max_task_timeout: Duration,
    /// Which memory stores payloads may use.
    pub memory: MemorySettings,
    /// How long a task may wait for a decision on a call to one of its
    /// agent's `hitl_tools` (a payload's `metadata.approval_timeout_seconds`
    /// may ask for less). At the deadline the call counts as denied and the
    /// run goes on. At most the task TTL.
    pub approval_timeout: Duration,
    /// Fleet-wide rate limits of model calls. A rule's name says what it
    /// covers: `provider:*` (every model of a provider), `provider:model`,
    /// or a bare `model` (under any provider). A call counts against every
    /// rule that covers it. Every worker of the queue with the same rules
    /// (and credential alias) shares them. Empty: no limits.
    pub model_limits: Vec<exo_broker::LimitRule>,
    /// Provider → the alias of the credential (API key) this worker uses
    /// for it: rules count per alias, so workers with different keys of
    /// one provider keep apart counts. No alias: one count per rule.
    pub credential_aliases: std::collections::BTreeMap<String, String>,
    /// Prices of models, in US dollars per million tokens: the usage
    /// ledger and `budget.max_cost` count cost by them. Empty: no cost.
    pub prices: exo_proto::PriceTable,
}

/// Which memory stores a worker's payloads may use, and how much history a
/// task loads.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// Stores payloads may name (`"store": "<name>"`).
    pub stores: Vec<NamedStore>,
    /// Accept a memory DSN written in a payload (off by default: a payload
    /// DSN is a path or credential chosen by whoever can write to the queue).
    pub allow_payload_dsn: bool,
    /// Prior messages loaded per task at most.
    pub history_limit: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            stores: Vec::new(),
            allow_payload_dsn: false,
            history_limit: 200,
        }
    }
}

impl WorkerConfig {
    /// The defaults for this Redis URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        WorkerConfig {
            broker: BrokerConfig::new(redis_url),
            worker_id: None,
            concurrency: 1,
            lookahead: 8,
            lookahead_window: Duration::from_millis(20),
            shards: 1,
            executor: ExecutorKind::Local,
            drain_timeout: Duration::from_secs(30),
            claim_block: Duration::from_secs(2),
            reap_interval: Duration::from_secs(5),
            stats_interval: Duration::from_secs(10),
            schedule_interval: Duration::from_secs(1),
            deadline_grace: Duration::from_secs(5),
            hook_timeout: Duration::from_secs(30),
            max_task_timeout: Duration::from_secs(24 * 3600),
            memory: MemorySettings::default(),
            approval_timeout: Duration::from_secs(3600),
            model_limits: Vec::new(),
            credential_aliases: std::collections::BTreeMap::new(),
            prices: exo_proto::PriceTable::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.broker.redis_url.trim().is_empty() {
            return Err("a Redis URL is required".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if self.broker.keys.queue().is_empty() {
            return Err("the queue name must not be empty".into());
        }
        if self.broker.heartbeat_ttl < Duration::from_secs(1) {
            return Err("the heartbeat TTL must be at least 1 s".into());
        }
        if self.broker.task_ttl < Duration::from_secs(1)
            || self.broker.event_ttl < Duration::from_secs(1)
        {
            return Err("the task and event TTLs must be at least 1 s".into());
        }
        if self.approval_timeout.is_zero() || self.approval_timeout > self.broker.task_ttl {
            return Err(format!(
                "the approval timeout must be more than 0 and at most the task TTL ({} s)",
                self.broker.task_ttl.as_secs()
            ));
        }
        for rule in &self.model_limits {
            if rule.name.is_empty()
                || rule.name.len() > 200
                || rule
                    .name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
                || rule.name.ends_with(":tokens")
                || rule.name.ends_with(":paused")
            {
                return Err(format!(
                    "a model rate-limit rule needs a name of 1 to 200 bytes without spaces, not ending in `:tokens` or `:paused`, not `{}`",
                    rule.name
                ));
            }
            if rule.requests == 0 && rule.tokens == 0 {
                return Err(format!(
                    "the model rate-limit rule `{}` limits neither requests nor tokens",
                    rule.name
                ));
            }
            if rule.window < Duration::from_secs(1) {
                return Err(format!(
                    "the window of the model rate-limit rule `{}` must be at least 1 s",
                    rule.name
                ));
            }
        }
        for (provider, alias) in &self.credential_aliases {
            let valid = |text: &str| {
                !text.is_empty()
                    && text.len() <= 64
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !valid(provider) || !valid(alias) {
                return Err(format!(
                    "a credential alias takes PROVIDER=ALIAS, each 1 to 64 letters, digits, `-`, `_` or `.`, not `{provider}={alias}`"
                ));
            }
        }
        if self.max_task_timeout.is_zero() {
            return Err("the task timeout cap must be positive".into());
        }
        if self.broker.retry.max_retries > self.broker.max_retries_cap {
            return Err(format!(
                "the default retry budget ({}) is above the cap on payload budgets ({})",
                self.broker.retry.max_retries, self.broker.max_retries_cap
            ));
        }
        if self.broker.lease < self.broker.heartbeat_ttl {
            return Err(format!(
                "the lease ({:?}) must be at least the heartbeat TTL ({:?}): the lease path would reclaim tasks of live workers before the dead-worker path, and before they pause",
                self.broker.lease, self.broker.heartbeat_ttl
            ));
        }
        if self.broker.lease < (self.broker.heartbeat_ttl / 3) * 2 {
            return Err(format!(
                "the lease ({:?}) must be at least two heartbeat intervals ({:?} each), or running tasks would be reclaimed",
                self.broker.lease,
                self.broker.heartbeat_ttl / 3
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
                |config| config.broker.redis_url.clear(),
                Some("Redis URL is required"),
            ),
            (|config| config.concurrency = 0, Some("concurrency")),
            (
                |config| config.broker.lease = Duration::from_secs(5),
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
