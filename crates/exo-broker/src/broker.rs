//! The connection: one multiplexed client, its scripts and settings, and
//! the role handles it hands out ([`Client`], [`WorkerSession`], [`Admin`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use exo_proto::{Backoff, Jitter, Keys};
use fred::{
    prelude::{Client as RedisClient, *},
    types::{Value, config::TlsConnector},
};

use crate::{
    admin::Admin,
    client::Client,
    config::BrokerConfig,
    error::{Error, Result},
    ops::{ScriptContext, Scripts},
    session::WorkerSession,
    url::{RedisUrl, mask_url},
};

/// A connection to the exo keys of one Redis deployment. Cheap to clone:
/// clones share one multiplexed connection (commands from concurrent tasks
/// are pipelined on it).
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: RedisClient,
    pub(crate) config: BrokerConfig,
    pub(crate) context: ScriptContext,
    pub(crate) url: RedisUrl,
    pub(crate) scripts: Scripts,
    round_trips: AtomicU64,
    /// Operations run as functions (`FCALL`) rather than scripts.
    pub(crate) functions: std::sync::atomic::AtomicBool,
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

impl Broker {
    /// Connects, checks the key layout, creates the consumer group
    /// (`XGROUP CREATE ... MKSTREAM`, BUSYGROUP ignored) and loads the
    /// operations' function library (`FUNCTION LOAD`; a server that has
    /// this library already answers at once).
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
        let functions = config.functions;
        let broker = Broker {
            inner: Arc::new(Inner {
                client,
                context: ScriptContext::new(&config),
                config,
                url,
                scripts: Scripts::new(),
                round_trips: AtomicU64::new(0),
                functions: std::sync::atomic::AtomicBool::new(functions),
                nonce: uuid::Uuid::new_v4().simple().to_string(),
                publish_observer: std::sync::OnceLock::new(),
            }),
        };
        broker.ensure_group().await?;
        broker.load_library_at_connect().await?;
        Ok(broker)
    }

    /// A broker for other keys (a shard of this queue) on this broker's
    /// connection; creates that queue's consumer group.
    pub async fn with_keys(&self, keys: Keys) -> Result<Broker> {
        let mut config = self.inner.config.clone();
        if self.inner.url.is_cluster() {
            keys.check_single_slot().map_err(Error::Config)?;
        }
        config.keys = keys;
        let broker = Broker {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                context: ScriptContext::new(&config),
                config,
                url: self.inner.url.clone(),
                scripts: Scripts::new(),
                round_trips: AtomicU64::new(0),
                functions: std::sync::atomic::AtomicBool::new(
                    self.inner
                        .functions
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                nonce: self.inner.nonce.clone(),
                publish_observer: std::sync::OnceLock::new(),
            }),
        };
        broker.ensure_group().await?;
        Ok(broker)
    }

    /// Whether a task's hash exists.
    pub(crate) async fn task_exists(&self, task_id: &str) -> Result<bool> {
        self.count();
        let found: i64 = self.inner.client.exists(self.keys().task(task_id)).await?;
        Ok(found > 0)
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

    /// Every element of a list (`LRANGE 0 -1`), in one round trip.
    pub(crate) async fn read_list(&self, key: &str) -> Result<Vec<String>> {
        self.count();
        Ok(self.inner.client.lrange(key, 0, -1).await?)
    }

    /// `HGETALL` of a key, for the readers of the crate.
    pub(crate) async fn read_hash(
        &self,
        key: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        self.count();
        Ok(self.inner.client.hgetall(key).await?)
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
    pub(crate) async fn dedicated_client(&self) -> Result<RedisClient> {
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

    /// The client's operations: submit, read, list, cancel, follow.
    pub fn client(&self) -> Client {
        Client::new(self.clone())
    }

    /// The operations of one worker (`worker_id` is also its consumer name
    /// in the queue's group): claim, finish, publish, heartbeat, reap,
    /// release, deregister, cancel signals.
    pub fn worker_session(&self, worker_id: impl Into<String>) -> WorkerSession {
        WorkerSession::new(self.clone(), worker_id.into())
    }

    /// The operator's operations: the fleet, queue numbers, the dead letter.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// Fleet-wide rate limits of model calls.
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits::new(self.clone())
    }

    /// Cron schedules: add, list, remove, and fire the due ones.
    pub fn schedules(&self) -> crate::schedules::Schedules {
        crate::schedules::Schedules::new(self.clone())
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
pub(crate) fn build_client(config: &BrokerConfig, url: &RedisUrl) -> Result<RedisClient> {
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
    RECONNECT.delay(attempt)
}

/// The wait between attempts while Redis is unreachable: 100 ms doubling
/// to 5 s.
pub(crate) const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    multiplier: 2,
    max: Duration::from_secs(5),
    jitter: Jitter::None,
};
