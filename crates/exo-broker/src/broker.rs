//! The connection and the operations every client needs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use exo_proto::{Keys, TaskPayload, TaskResult, TaskStatus, WorkerHealth};
use fred::{
    prelude::*,
    types::{Value, config::TlsConnector, scripts::Script},
};

use crate::{
    config::BrokerConfig,
    error::{Error, Result},
    handle::TaskHandle,
    scripts::{Scripts, reply},
    url::{RedisUrl, mask_url},
};

/// Unix seconds now, as the reference writes timestamps.
pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// A connection to the exo keys of one Redis deployment. Cheap to clone:
/// clones share one multiplexed connection (commands from concurrent tasks
/// are pipelined on it).
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: BrokerConfig,
    pub(crate) url: RedisUrl,
    pub(crate) scripts: Scripts,
    round_trips: AtomicU64,
    /// Tells this process's heartbeats from another's with the same id.
    pub(crate) nonce: String,
    pub(crate) publish_observer: std::sync::OnceLock<PublishObserver>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Broker")
            .field("url", &mask_url(&self.config.redis_url))
            .field("keys", &self.config.keys)
            .finish_non_exhaustive()
    }
}

/// Called after each event batch is written: how many events, and how long
/// the round trip took. Lets the worker record metrics without this crate
/// knowing about them.
pub type PublishObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// What submitting a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new task was queued.
    Created,
    /// The idempotency key was seen before; the handle is the earlier task.
    Duplicate,
}

/// One page of a task listing.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<TaskResult>,
    /// Pass this to get the next page; `None` at the end.
    pub next_cursor: Option<u64>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or waiting for a retry; it will never start.
    Cancelled,
    /// The task is running; its worker was signalled and will stop it.
    Cancelling,
    /// The task had already ended with this status.
    AlreadyFinished(TaskStatus),
    /// No such task.
    NotFound,
}

/// A worker as the fleet listing sees it.
#[derive(Debug, Clone)]
pub struct FleetEntry {
    /// The worker id.
    pub worker_id: String,
    /// When its last heartbeat was recorded.
    pub last_seen: f64,
    /// Its heartbeat hash, or `None` once the hash has expired.
    pub health: Option<WorkerHealth>,
}

impl FleetEntry {
    /// False when the heartbeat is gone or older than 60 s.
    pub fn alive(&self, now: f64) -> bool {
        self.health.as_ref().is_some_and(|health| health.alive(now))
    }
}

/// The queue's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// Entries in the queue stream (waiting plus claimed).
    pub stream_length: u64,
    /// Entries not yet delivered to any worker, when Redis can tell.
    pub lag: Option<u64>,
    /// Entries claimed and not yet acknowledged.
    pub pending: u64,
    /// Pending entries per consumer (worker id).
    pub pending_by_consumer: Vec<(String, u64)>,
    /// Tasks waiting for a retry.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letter: u64,
    /// Submission time of the oldest task not yet delivered to a worker.
    pub oldest_waiting_created_at: Option<f64>,
}

impl QueueStats {
    /// Seconds the oldest undelivered task has waited.
    pub fn oldest_wait(&self, now: f64) -> Option<f64> {
        self.oldest_waiting_created_at
            .map(|created| (now - created).max(0.0))
    }

    /// Tasks waiting to start: undelivered entries plus delayed retries.
    pub fn depth(&self) -> u64 {
        let waiting = self
            .lag
            .unwrap_or_else(|| self.stream_length.saturating_sub(self.pending));
        waiting + self.delayed
    }
}

/// A task that failed for good, as kept in the dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The dead-letter entry id (pass it to [`Broker::redrive`]).
    pub entry_id: String,
    /// The task id ("" when the payload had none).
    pub task_id: String,
    /// Why it failed.
    pub reason: String,
    /// How many attempts it had.
    pub attempts: u32,
    /// When it failed.
    pub failed_at: f64,
    /// The raw payload.
    pub payload: String,
}

impl Broker {
    /// Connects, checks the key layout, loads the scripts and creates the
    /// consumer group (`XGROUP CREATE ... MKSTREAM`, BUSYGROUP ignored).
    pub async fn connect(config: BrokerConfig) -> Result<Self> {
        let url = RedisUrl::parse(&config.redis_url)?;
        if url.is_cluster() {
            config.keys.check_single_slot().map_err(Error::Config)?;
            if config.replica_acks > 0 {
                return Err(Error::Config(
                    "replica acknowledgements (WAIT) are not supported with Redis Cluster; set them to 0".into(),
                ));
            }
        }
        let client = build_client(&config, &url)?;
        let masked = mask_url(&config.redis_url);
        match tokio::time::timeout(config.connect_timeout, client.init()).await {
            Ok(Ok(_connection_task)) => {}
            Ok(Err(error)) => {
                let _ = client.quit().await;
                return Err(Error::unreachable(format!("{masked}: {error}")));
            }
            Err(_) => {
                let _ = client.quit().await;
                return Err(Error::unreachable(format!(
                    "{masked}: no connection within {:?}",
                    config.connect_timeout
                )));
            }
        }
        let broker = Broker {
            inner: Arc::new(Inner {
                client,
                config,
                url,
                scripts: Scripts::new(),
                round_trips: AtomicU64::new(0),
                nonce: uuid::Uuid::new_v4().simple().to_string(),
                publish_observer: std::sync::OnceLock::new(),
            }),
        };
        broker.ensure_group().await?;
        Ok(broker)
    }

    pub(crate) async fn ensure_group(&self) -> Result<()> {
        let keys = self.keys();
        self.count();
        let created: std::result::Result<Value, _> = self
            .inner
            .client
            .xgroup_create(keys.queue(), keys.group(), "0", true)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error)
                if crate::error::RedisCode::parse(error.details())
                    == crate::error::RedisCode::BusyGroup =>
            {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Sets the observer of event batches (once; later calls are ignored).
    pub fn on_publish(&self, observer: PublishObserver) {
        let _ = self.inner.publish_observer.set(observer);
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.inner.config.keys
    }

    /// The settings in use.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The Redis URL with its password masked.
    pub fn masked_url(&self) -> String {
        mask_url(&self.inner.config.redis_url)
    }

    /// Round trips to Redis made through this broker (and its clones).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self) {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.client.is_connected()
    }

    /// What in the server's settings voids exo's guarantees, as sentences
    /// for the log: an eviction policy other than `noeviction` (heartbeats,
    /// task hashes or the queue itself may be evicted), and persistence that
    /// is off or does not sync every write (acknowledged writes can be lost
    /// in a crash). Empty when all is well or the server does not say.
    pub async fn server_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let info = |section: &'static str| async move {
            self.count();
            let text: std::result::Result<String, _> = self
                .inner
                .client
                .custom(fred::cmd!("INFO"), vec![section])
                .await;
            text.unwrap_or_default()
        };
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        };
        let memory = info("memory").await;
        if let Some(policy) = field(&memory, "maxmemory_policy")
            && policy != "noeviction"
        {
            warnings.push(format!(
                "Redis evicts keys under memory pressure (maxmemory-policy {policy}): heartbeats, task hashes and queue entries may vanish, so live workers look dead and tasks are lost; set maxmemory-policy noeviction"
            ));
        }
        let persistence = info("persistence").await;
        let aof = field(&persistence, "aof_enabled").as_deref() == Some("1");
        if !persistence.is_empty() && !aof {
            warnings.push(
                "Redis has no append-only file (appendonly no): a restart loses every acknowledged submit, cancel and result since the last snapshot; set appendonly yes with appendfsync always for no loss".to_owned(),
            );
        } else if aof {
            self.count();
            let fsync: std::result::Result<Vec<String>, _> = self
                .inner
                .client
                .custom(fred::cmd!("CONFIG"), vec!["GET", "appendfsync"])
                .await;
            if let Ok(values) = fsync
                && let Some(mode) = values.get(1)
                && mode != "always"
            {
                warnings.push(format!(
                    "Redis syncs its append-only file with appendfsync {mode}: a host crash can lose the last second of acknowledged writes (see docs/operations.md); set appendfsync always for no loss"
                ));
            }
        }
        warnings
    }

    /// Sends PING.
    pub async fn ping(&self) -> Result<()> {
        self.count();
        let _: Value = self.inner.client.ping(None).await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.inner.client.quit().await;
    }

    /// A second connection with the same settings, for blocking reads.
    pub(crate) async fn dedicated_client(&self) -> Result<Client> {
        let client = build_client(&self.inner.config, &self.inner.url)?;
        match tokio::time::timeout(self.inner.config.connect_timeout, client.init()).await {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Error::unreachable(format!(
                "{}: no connection within {:?}",
                self.masked_url(),
                self.inner.config.connect_timeout
            ))),
        }
    }

    /// Runs a script that records something a client was promised (a
    /// submit, a final write, a cancel). With `replica_acks` set, a `WAIT`
    /// is pipelined after it, so the write is on a replica before this
    /// returns; still one round trip.
    pub(crate) async fn eval_durable(&self, script: &Script, args: Vec<String>) -> Result<Value> {
        let acks = self.inner.config.replica_acks;
        if acks == 0 {
            return self.eval(script, args).await;
        }
        let (keys, args) = self.script_arguments(args);
        let timeout = self.inner.config.replica_ack_timeout.as_millis().max(1) as i64;
        for attempt in 0..2 {
            let pipeline = self.inner.client.pipeline();
            let mut evalsha: Vec<String> = Vec::with_capacity(2 + keys.len() + args.len());
            evalsha.push(script.sha1().to_string());
            evalsha.push(keys.len().to_string());
            evalsha.extend(keys.iter().cloned());
            evalsha.extend(args.iter().cloned());
            let _: () = pipeline.custom(fred::cmd!("EVALSHA"), evalsha).await?;
            let _: () = pipeline.wait(i64::from(acks), timeout).await?;
            self.count();
            let mut results = pipeline.try_all::<Value>().await.into_iter();
            let written = results.next().unwrap_or(Ok(Value::Null));
            let acknowledged = results.next();
            match written {
                Err(error)
                    if crate::error::RedisCode::parse(error.details())
                        == crate::error::RedisCode::NoScript
                        && attempt == 0 =>
                {
                    self.count();
                    script.load(&self.inner.client).await?;
                }
                Err(error) => return Err(error.into()),
                Ok(value) => {
                    return match acknowledged {
                        Some(Ok(Value::Integer(count))) if count >= i64::from(acks) => Ok(value),
                        other => {
                            // Durability was asked for and not given: the
                            // caller must not be told the write is safe. The
                            // error is transient, so final writes are retried
                            // (they are idempotent); a submit reports it.
                            tracing::warn!(
                                wanted = acks,
                                got = ?other,
                                "a write was not acknowledged by enough replicas in time; it is on the primary only"
                            );
                            Err(Error::reply(format!(
                                "NOREPLICAS the write reached the primary but {acks} replica acknowledgement(s) did not arrive within {:?}",
                                self.inner.config.replica_ack_timeout
                            )))
                        }
                    };
                }
            }
        }
        Err(Error::reply("the script could not be loaded"))
    }

    fn script_arguments(&self, args: Vec<String>) -> (Vec<String>, Vec<String>) {
        let keys = self.keys();
        let config = &self.inner.config;
        let key_list = vec![
            keys.queue().to_owned(),
            keys.delayed(),
            format!("{}:payloads", keys.delayed()),
            keys.dead_letter(),
            keys.task_index(),
            keys.task_timeline(),
            keys.worker_registry(),
        ];
        let mut all_args = Vec::with_capacity(7 + args.len());
        all_args.push(config.max_payload_bytes.to_string());
        all_args.push(keys.prefix().to_owned());
        all_args.push(keys.group());
        all_args.push(config.task_ttl.as_secs().max(1).to_string());
        all_args.push(config.event_ttl.as_secs().max(1).to_string());
        all_args.push(config.event_stream_max_len.to_string());
        all_args.push(config.dead_letter_max_len.to_string());
        all_args.extend(args);
        (key_list, all_args)
    }

    /// Runs a script with the common key and argument header.
    pub(crate) async fn eval(&self, script: &Script, args: Vec<String>) -> Result<Value> {
        let (key_list, all_args) = self.script_arguments(args);
        self.count();
        let value: Value = script
            .evalsha_with_reload(&self.inner.client, key_list, all_args)
            .await?;
        Ok(value)
    }

    /// Queues a task in one round trip and returns its handle. The payload's
    /// `created_at` is set when it is zero.
    pub async fn submit(&self, mut payload: TaskPayload) -> Result<TaskHandle> {
        if payload.created_at <= 0.0 {
            payload.created_at = now_seconds();
        }
        payload.validate()?;
        let json = payload.to_json();
        let limit = self.inner.config.max_payload_bytes;
        if limit > 0 && json.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: json.len(),
                limit,
            });
        }
        let agent_name = payload
            .agent_spec()
            .map(|spec| spec.name())
            .unwrap_or_default();
        let value = self
            .eval_durable(
                &self.inner.scripts.submit,
                vec![
                    payload.task_id.clone(),
                    json,
                    agent_name,
                    payload
                        .max_retries
                        .map(|retries| retries.to_string())
                        .unwrap_or_default(),
                    payload.idempotency_key.clone().unwrap_or_default(),
                ],
            )
            .await?;
        let parts = reply::array("submit", value)?;
        let task_id = parts
            .first()
            .map(|id| reply::string("submit", id))
            .transpose()?
            .unwrap_or_default();
        let created = parts
            .get(1)
            .map(|flag| reply::integer("submit", flag))
            .transpose()?;
        Ok(TaskHandle::new(
            self.clone(),
            task_id,
            if created == Some(1) {
                Submitted::Created
            } else {
                Submitted::Duplicate
            },
        ))
    }

    /// A handle on an existing task.
    pub fn handle(&self, task_id: impl Into<String>) -> TaskHandle {
        TaskHandle::new(self.clone(), task_id.into(), Submitted::Created)
    }

    /// Reads a task hash.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskResult>> {
        self.count();
        let fields: Vec<(String, String)> = reply::pairs(
            "HGETALL",
            self.inner.client.hgetall(self.keys().task(task_id)).await?,
        )?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(TaskResult::from_hash(fields)?))
    }

    /// A page of tasks, newest first, optionally of one status. Costs one
    /// round trip per page, however many tasks were ever submitted.
    pub async fn list(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        cursor: u64,
    ) -> Result<TaskPage> {
        let limit = limit.clamp(1, 10_000);
        let value = self
            .eval(
                &self.inner.scripts.list,
                vec![
                    status
                        .map(|status| status.as_str().to_owned())
                        .unwrap_or_default(),
                    limit.to_string(),
                    cursor.to_string(),
                    (limit * 20).clamp(1000, 5000).to_string(),
                ],
            )
            .await?;
        let mut parts = reply::array("list", value)?.into_iter();
        let next = parts
            .next()
            .map(|value| reply::integer("list", &value))
            .transpose()?
            .unwrap_or(-1);
        let rows = parts
            .next()
            .map(|rows| reply::array("list", rows))
            .transpose()?
            .unwrap_or_default();
        let mut tasks = Vec::with_capacity(rows.len());
        for row in rows {
            let fields = reply::pairs("list", row)?;
            match TaskResult::from_hash(fields) {
                Ok(task) => tasks.push(task),
                Err(error) => tracing::warn!(%error, "skipping an unreadable task hash"),
            }
        }
        Ok(TaskPage {
            tasks,
            next_cursor: (next >= 0).then_some(next as u64),
        })
    }

    /// Cancels a task: a queued task never starts, a running one is
    /// signalled and stops within a bounded time.
    pub async fn cancel(&self, task_id: &str) -> Result<CancelOutcome> {
        let value = self
            .eval_durable(&self.inner.scripts.cancel, vec![task_id.to_owned()])
            .await?;
        let parts = reply::strings("cancel", value)?;
        Ok(match parts.first().map(String::as_str) {
            Some("cancelled") => CancelOutcome::Cancelled,
            Some("cancelling") => CancelOutcome::Cancelling,
            Some("already") => CancelOutcome::AlreadyFinished(
                parts
                    .get(1)
                    .map(String::as_str)
                    .unwrap_or("cancelled")
                    .parse()?,
            ),
            _ => CancelOutcome::NotFound,
        })
    }

    /// Every worker seen in the last hour, with its heartbeat if it is still
    /// there. One round trip.
    pub async fn fleet(&self) -> Result<Vec<FleetEntry>> {
        let value = self
            .eval(&self.inner.scripts.fleet, vec!["3600".to_owned()])
            .await?;
        let items = reply::array("fleet", value)?;
        let mut fleet = Vec::new();
        for row in items.chunks(3) {
            let [worker_id, last_seen, fields] = row else {
                continue;
            };
            let worker_id = reply::string("fleet", worker_id)?;
            let last_seen: f64 = reply::string("fleet", last_seen)?.parse().unwrap_or(0.0);
            let fields = reply::pairs("fleet", fields.clone())?;
            let health = if fields.is_empty() {
                None
            } else {
                Some(WorkerHealth::from_hash(&worker_id, fields)?)
            };
            fleet.push(FleetEntry {
                worker_id,
                last_seen,
                health,
            });
        }
        Ok(fleet)
    }

    /// One worker's heartbeat.
    pub async fn worker(&self, worker_id: &str) -> Result<Option<WorkerHealth>> {
        self.count();
        let fields = reply::pairs(
            "HGETALL",
            self.inner
                .client
                .hgetall(self.keys().worker(worker_id))
                .await?,
        )?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(WorkerHealth::from_hash(worker_id, fields)?))
    }

    /// Queue depth, lag, pending per consumer, delayed and dead letters, in
    /// one round trip.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        let value = self.eval(&self.inner.scripts.stats, Vec::new()).await?;
        let parts = reply::array("stats", value)?;
        let number = |index: usize| -> Result<i64> {
            parts
                .get(index)
                .map(|value| reply::integer("stats", value))
                .unwrap_or(Ok(0))
        };
        let consumers = parts
            .get(3)
            .cloned()
            .map(|value| reply::strings("stats", value))
            .transpose()?
            .unwrap_or_default();
        let lag = number(1)?;
        Ok(QueueStats {
            stream_length: number(0)?.max(0) as u64,
            lag: (lag >= 0).then_some(lag as u64),
            pending: number(2)?.max(0) as u64,
            pending_by_consumer: consumers
                .chunks(2)
                .filter(|pair| pair.len() == 2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect(),
            delayed: number(4)?.max(0) as u64,
            dead_letter: number(5)?.max(0) as u64,
            oldest_waiting_created_at: parts
                .get(6)
                .map(|value| reply::string("stats", value))
                .transpose()?
                .and_then(|text| text.parse().ok()),
        })
    }

    /// The newest dead-letter entries.
    pub async fn dead_letters(&self, count: u64) -> Result<Vec<DeadLetter>> {
        self.count();
        let value: Value = self
            .inner
            .client
            .xrevrange(self.keys().dead_letter(), "+", "-", Some(count))
            .await?;
        let mut letters = Vec::new();
        for entry in reply::array("XREVRANGE", value)? {
            let mut parts = reply::array("XREVRANGE", entry)?.into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let fields: std::collections::HashMap<String, String> =
                reply::pairs("XREVRANGE", fields)?.into_iter().collect();
            let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
            letters.push(DeadLetter {
                entry_id: reply::string("XREVRANGE", &id)?,
                task_id: field("task_id"),
                reason: field("reason"),
                attempts: field("attempts").parse().unwrap_or(0),
                failed_at: field("failed_at").parse().unwrap_or(0.0),
                payload: field("payload"),
            });
        }
        Ok(letters)
    }

    /// Puts a dead-letter entry back on the queue with a fresh retry budget.
    /// Returns the task id.
    pub async fn redrive(&self, entry_id: &str) -> Result<String> {
        let value = self
            .eval(&self.inner.scripts.redrive, vec![entry_id.to_owned()])
            .await?;
        let parts = reply::strings("redrive", value)?;
        match parts.as_slice() {
            [task_id] if !task_id.is_empty() => Ok(task_id.clone()),
            [_, reason] => Err(Error::Config(reason.clone())),
            _ => Err(Error::Reply {
                what: "redrive",
                detail: format!("{parts:?}"),
            }),
        }
    }
}

/// True for the error Redis gives when the consumer group is missing (the
/// server lost its data, e.g. a restart without persistence).
pub(crate) fn is_missing_group(error: &Error) -> bool {
    error.redis_code() == Some(&crate::error::RedisCode::NoGroup)
}

/// Builds a fred client: every command has a timeout, reconnects back off
/// exponentially, and a command is written at most once (callers retry the
/// idempotent ones).
pub(crate) fn build_client(config: &BrokerConfig, url: &RedisUrl) -> Result<Client> {
    let mut fred_config = Config {
        server: url.server_config(),
        username: url.username.clone(),
        password: url.password.clone(),
        database: url.database,
        ..Config::default()
    };
    if url.tls {
        fred_config.tls = Some(tls_connector(config)?.into());
    }
    let command_timeout = config.command_timeout;
    let connect_timeout = config.connect_timeout;
    Builder::from_config(fred_config)
        .with_performance_config(|performance| {
            performance.default_command_timeout = command_timeout;
        })
        .with_connection_config(|connection| {
            connection.connection_timeout = connect_timeout;
            connection.internal_command_timeout = command_timeout;
            connection.max_command_attempts = 1;
            connection.tcp.nodelay = Some(true);
            // A connection to a frozen or partitioned server is closed and
            // made again (through Sentinel, to the new primary) instead of
            // timing out forever: no reply for a command timeout (blocking
            // commands excepted), or unacknowledged data past it.
            connection.tcp.user_timeout = Some(command_timeout);
            connection.tcp.keepalive = Some(
                socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(10))
                    .with_interval(Duration::from_secs(5))
                    .with_retries(3),
            );
            connection.unresponsive = fred::types::config::UnresponsiveConfig {
                max_timeout: Some(command_timeout),
                interval: (command_timeout / 4)
                    .clamp(Duration::from_millis(50), Duration::from_secs(1)),
            };
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
        .map_err(|error| Error::Config(error.to_string()))
}

fn tls_connector(config: &BrokerConfig) -> Result<TlsConnector> {
    let tls_error = |reason: String| Error::Config(format!("TLS: {reason}"));
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for certificate in native.certs {
        let _ = roots.add(certificate);
    }
    if let Some(path) = &config.tls_ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|error| tls_error(format!("cannot read {}: {error}", path.display())))?;
        for certificate in certificates {
            let certificate = certificate.map_err(|error| {
                tls_error(format!("bad certificate in {}: {error}", path.display()))
            })?;
            roots.add(certificate).map_err(|error| {
                tls_error(format!(
                    "unusable certificate in {}: {error}",
                    path.display()
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(client_config))
}

/// How long to wait between attempts when Redis is unreachable.
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}
