//! Where the Temporal server is and how tasks run on it.

use std::time::Duration;

use crate::error::{Error, Result};

/// The settings of the Temporal side of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct TemporalConfig {
    /// The frontend address: `host:port` (plain gRPC), or a URL
    /// (`http://...`, or `https://...` for TLS with the system's roots).
    pub host: String,
    /// The namespace (it must exist).
    pub namespace: String,
    /// The task queue the workflow and its activity run on.
    pub task_queue: String,
    /// An activity attempt that has not heartbeated for this long is
    /// presumed dead (its worker crashed) and retried elsewhere.
    pub heartbeat_timeout: Duration,
    /// How often a running activity heartbeats. It also bounds how long a
    /// workflow cancel takes to reach a running agent.
    pub heartbeat_interval: Duration,
    /// Added to `timeout_seconds` for the activity's start-to-close timeout,
    /// so the run's own deadline (and its grace) fires first and the
    /// activity still has time to publish its last events.
    pub timeout_margin: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Activities this process runs at once.
    pub max_concurrent_activities: usize,
    /// How long a workflow task waits on this process's sticky queue before
    /// any worker may take it (short, so a dead worker's workflows move on
    /// quickly).
    pub sticky_queue_timeout: Duration,
    /// How this process names itself to the server (default
    /// `{pid}@{hostname}`).
    pub identity: Option<String>,
}

impl Default for TemporalConfig {
    fn default() -> Self {
        let heartbeat_timeout = Duration::from_secs(20);
        TemporalConfig {
            host: "localhost:7233".to_owned(),
            namespace: "default".to_owned(),
            task_queue: "exo-agents".to_owned(),
            heartbeat_timeout,
            heartbeat_interval: default_heartbeat_interval(heartbeat_timeout),
            timeout_margin: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_concurrent_activities: 1,
            sticky_queue_timeout: Duration::from_secs(5),
            identity: None,
        }
    }
}

/// A quarter of the heartbeat timeout, at most 2 s and at least 100 ms.
fn default_heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

impl TemporalConfig {
    /// The defaults, overridden by `TEMPORAL_HOST`, `TEMPORAL_NAMESPACE`,
    /// `EXO_TEMPORAL_TASK_QUEUE` and `EXO_TEMPORAL_HEARTBEAT_TIMEOUT`
    /// (seconds, fractions allowed). Empty variables count as unset.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`TemporalConfig::from_env`], reading variables through
    /// `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let mut config = TemporalConfig::default();
        if let Some(host) = read("TEMPORAL_HOST") {
            config.host = host.trim().to_owned();
        }
        if let Some(namespace) = read("TEMPORAL_NAMESPACE") {
            config.namespace = namespace.trim().to_owned();
        }
        if let Some(task_queue) = read("EXO_TEMPORAL_TASK_QUEUE") {
            config.task_queue = task_queue.trim().to_owned();
        }
        if let Some(timeout) = read("EXO_TEMPORAL_HEARTBEAT_TIMEOUT") {
            let seconds: f64 = timeout.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "EXO_TEMPORAL_HEARTBEAT_TIMEOUT must be a number of seconds, not `{timeout}`"
                ))
            })?;
            if !(seconds.is_finite() && (1.0..=86_400.0).contains(&seconds)) {
                return Err(Error::Config(format!(
                    "EXO_TEMPORAL_HEARTBEAT_TIMEOUT must be from 1 to 86400 seconds, not {seconds}"
                )));
            }
            config.heartbeat_timeout = Duration::from_secs_f64(seconds);
            config.heartbeat_interval = default_heartbeat_interval(config.heartbeat_timeout);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.namespace.is_empty() {
            return Err(Error::Config("the namespace must not be empty".into()));
        }
        if self.task_queue.is_empty() {
            return Err(Error::Config("the task queue must not be empty".into()));
        }
        if self.heartbeat_timeout < Duration::from_secs(1) {
            return Err(Error::Config(
                "the activity heartbeat timeout must be at least 1 s".into(),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.heartbeat_timeout
        {
            return Err(Error::Config(format!(
                "the heartbeat interval ({:?}) must be positive and at most half the heartbeat timeout ({:?})",
                self.heartbeat_interval, self.heartbeat_timeout
            )));
        }
        if self.max_concurrent_activities == 0 {
            return Err(Error::Config(
                "at least one concurrent activity is needed".into(),
            ));
        }
        self.url()?;
        Ok(())
    }

    /// The frontend URL: `host` with `http://` added when it has no scheme.
    pub fn url(&self) -> Result<temporalio_client::Url> {
        let text = if self.host.contains("://") {
            self.host.clone()
        } else {
            format!("http://{}", self.host)
        };
        let url = temporalio_client::Url::parse(&text)
            .map_err(|error| Error::Config(format!("TEMPORAL_HOST `{}`: {error}", self.host)))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(Error::Config(format!(
                    "TEMPORAL_HOST `{}`: unsupported scheme `{other}` (use host:port, http:// or https://)",
                    self.host
                )));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "TEMPORAL_HOST `{}` names no host",
                self.host
            )));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(variables: &[(&str, &str)], expected: std::result::Result<TemporalConfig, &str>) {
        let lookup = |name: &str| {
            variables
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        match (TemporalConfig::from_lookup(lookup), expected) {
            (Ok(config), Ok(expected)) => assert_eq!(config, expected, "{variables:?}"),
            (Err(error), Err(needle)) => {
                assert!(error.to_string().contains(needle), "{variables:?}: {error}")
            }
            (result, expected) => panic!("{variables:?}: {result:?} vs {expected:?}"),
        }
    }

    #[test]
    fn settings_come_from_the_environment() {
        let defaults = TemporalConfig::default();
        check(&[], Ok(defaults.clone()));
        check(&[("TEMPORAL_HOST", "  ")], Ok(defaults.clone()));
        check(
            &[
                ("TEMPORAL_HOST", "temporal:7233"),
                ("TEMPORAL_NAMESPACE", "agents"),
                ("EXO_TEMPORAL_TASK_QUEUE", "gpu"),
                ("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "3"),
            ],
            Ok(TemporalConfig {
                host: "temporal:7233".into(),
                namespace: "agents".into(),
                task_queue: "gpu".into(),
                heartbeat_timeout: Duration::from_secs(3),
                heartbeat_interval: Duration::from_millis(750),
                ..defaults.clone()
            }),
        );
        check(
            &[("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "60")],
            Ok(TemporalConfig {
                heartbeat_timeout: Duration::from_secs(60),
                heartbeat_interval: Duration::from_secs(2),
                ..defaults
            }),
        );
        check(
            &[("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "soon")],
            Err("number of seconds"),
        );
        check(
            &[("EXO_TEMPORAL_HEARTBEAT_TIMEOUT", "0.5")],
            Err("from 1 to 86400 seconds"),
        );
        check(
            &[("TEMPORAL_HOST", "redis://temporal:7233")],
            Err("unsupported scheme"),
        );
    }

    #[test]
    fn urls() {
        let cases = [
            ("localhost:7233", Ok("http://localhost:7233/")),
            ("http://127.0.0.1:7233", Ok("http://127.0.0.1:7233/")),
            (
                "https://ns.tmprl.cloud:7233",
                Ok("https://ns.tmprl.cloud:7233/"),
            ),
            ("http://", Err("TEMPORAL_HOST")),
        ];
        for (host, expected) in cases {
            let config = TemporalConfig {
                host: host.into(),
                ..TemporalConfig::default()
            };
            match (config.url(), expected) {
                (Ok(url), Ok(expected)) => assert_eq!(url.as_str(), expected),
                (Err(error), Err(needle)) => assert!(error.to_string().contains(needle), "{error}"),
                (result, expected) => panic!("{host}: {result:?} vs {expected:?}"),
            }
        }
    }
}
