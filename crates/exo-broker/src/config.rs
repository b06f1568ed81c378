//! Broker settings.

use std::time::Duration;

use exo_proto::{Backoff, Jitter, Keys};
use rand::RngExt;

/// How a broker connects and how long things live in Redis.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://`.
    pub redis_url: String,
    /// Key names (prefix and queue).
    pub keys: Keys,
    /// TTL of task hashes, refreshed on every write (reference: 24 h).
    pub task_ttl: Duration,
    /// TTL of event streams, refreshed on every batch (reference: 1 h).
    pub event_ttl: Duration,
    /// Cap on the entries of one task's event stream.
    pub event_stream_max_len: u64,
    /// Cap on the dead-letter stream.
    pub dead_letter_max_len: u64,
    /// Largest payload accepted, in bytes (0 for no limit).
    pub max_payload_bytes: usize,
    /// Timeout of every Redis command.
    pub command_timeout: Duration,
    /// Timeout of the first connection.
    pub connect_timeout: Duration,
    /// Retry budget and backoff.
    pub retry: RetryPolicy,
    /// A running task whose lease is not renewed for this long is reclaimed.
    pub lease: Duration,
    /// A task of a worker whose heartbeat is gone is reclaimed once its
    /// entry has been idle this long (sooner than the lease).
    pub dead_worker_idle: Duration,
    /// PEM file with extra CA certificates for `rediss://` (self-signed
    /// servers).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Replicas that must acknowledge a submit, a final write or a cancel
    /// before it returns (`WAIT`, pipelined with the write, so still one
    /// round trip). With Sentinel, 1 means an acknowledged write survives
    /// the failover of its primary. 0 (the default) does not wait.
    pub replica_acks: u32,
    /// How long to wait for those acknowledgements.
    pub replica_ack_timeout: Duration,
    /// The workers' heartbeat TTL: the reaper's fleet clock treats a gap of
    /// half of it without any heartbeat as a stall of the server (or of the
    /// whole fleet) and reclaims nothing for one TTL after it.
    pub heartbeat_ttl: Duration,
    /// The most retries a payload may ask for (`max_retries` above this is
    /// capped).
    pub max_retries_cap: u32,
    /// Limits of concurrency keys this worker applies when it claims.
    pub concurrency: ConcurrencyRules,
    /// Runs the Lua operations as one function library (`FUNCTION LOAD`
    /// once, then `FCALL`), which saves the server the prelude's set-up on
    /// every call. A server without functions (before Redis 7) or a user
    /// whose ACL lacks `FCALL` or `FUNCTION LOAD` gets `EVALSHA` instead,
    /// as does every call when this is false.
    pub functions: bool,
}

/// How many tasks of one concurrency key (a tenant, a user, a
/// conversation) may hold a slot at a time, fleet-wide. A claim applies the
/// claiming worker's rules: a rule for the key, else the payload's
/// `concurrency_limit`, else `default`; never more than `max`. A key with
/// no limit from any of them is not limited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcurrencyRules {
    /// The limit of a key no rule names and no payload sets.
    pub default: Option<u32>,
    /// The most any key may have, whatever a payload asks.
    pub max: Option<u32>,
    /// Limits of named keys.
    pub keys: std::collections::BTreeMap<String, u32>,
}

impl ConcurrencyRules {
    /// The rules as the claim script reads them ("" when there are none).
    pub fn to_json(&self) -> String {
        if *self == ConcurrencyRules::default() {
            return String::new();
        }
        let mut rules = serde_json::Map::new();
        if let Some(default) = self.default.filter(|limit| *limit > 0) {
            rules.insert("default".into(), default.into());
        }
        if let Some(max) = self.max.filter(|limit| *limit > 0) {
            rules.insert("max".into(), max.into());
        }
        if !self.keys.is_empty() {
            let keys: serde_json::Map<String, serde_json::Value> = self
                .keys
                .iter()
                .map(|(key, limit)| (key.clone(), (*limit).max(1).into()))
                .collect();
            rules.insert("keys".into(), keys.into());
        }
        serde_json::Value::Object(rules).to_string()
    }
}

impl BrokerConfig {
    /// The defaults, for this URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        BrokerConfig {
            redis_url: redis_url.into(),
            keys: Keys::default(),
            task_ttl: Duration::from_secs(24 * 3600),
            event_ttl: Duration::from_secs(3600),
            event_stream_max_len: 10_000,
            dead_letter_max_len: 100_000,
            max_payload_bytes: 8 * 1024 * 1024,
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(60),
            dead_worker_idle: Duration::from_secs(5),
            tls_ca_file: None,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(30),
            max_retries_cap: 25,
            concurrency: ConcurrencyRules::default(),
            functions: true,
        }
    }

    /// The same config with other keys.
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = keys;
        self
    }
}

/// How failed tasks are retried: up to `max_retries` times (so a task runs at
/// most `1 + max_retries` times), after an exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries when a payload does not say (reference: 3).
    pub max_retries: u32,
    /// Backoff before the first retry.
    pub base_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Random spread, as a fraction of the backoff (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retries + 1`.
    pub fn backoff(&self, retries: u32) -> Duration {
        Backoff {
            base: self.base_backoff,
            multiplier: 2,
            max: self.max_backoff,
            jitter: Jitter::Proportional(self.jitter),
        }
        .jittered(retries, rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: 0.0,
        };
        let millis: Vec<u128> = (0..6)
            .map(|retry| policy.backoff(retry).as_millis())
            .collect();
        assert_eq!(millis, [100, 200, 400, 800, 1000, 1000]);
        let jittered = RetryPolicy {
            jitter: 0.2,
            ..policy
        };
        for _ in 0..100 {
            let backoff = jittered.backoff(1).as_millis();
            assert!((160..=240).contains(&backoff), "{backoff}");
        }
    }
}
