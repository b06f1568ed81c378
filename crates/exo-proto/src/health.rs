//! The heartbeat hash `exo:workers:{id}` and the health rules built on it.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A worker whose last heartbeat is older than this is dead.
pub const DEAD_AFTER_SECONDS: f64 = 60.0;

/// One worker's heartbeat, as read from its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerHealth {
    /// The worker id (from the key name).
    pub worker_id: String,
    /// `running`, or `draining` while shutting down.
    pub status: String,
    /// Tasks completed.
    pub tasks_processed: u64,
    /// Tasks failed.
    pub tasks_failed: u64,
    /// The task being run, if any.
    pub current_task_id: Option<String>,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds.
    pub last_heartbeat: f64,
    /// Task slots.
    pub concurrency: u32,
    /// The machine.
    pub hostname: String,
    /// Extension: the heartbeat TTL in seconds.
    pub heartbeat_ttl: Option<u32>,
    /// Extension: the number of tasks running now.
    pub active_tasks: Option<u32>,
    /// Extension: the queue the worker serves.
    pub queue: Option<String>,
}

/// The verdict of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heartbeats arrive on time.
    Healthy,
    /// Heartbeats are late, or the worker is draining.
    Degraded,
    /// No heartbeat, or none for [`DEAD_AFTER_SECONDS`].
    Unhealthy,
}

impl Health {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A health verdict with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// The verdict.
    pub health: Health,
    /// Seconds since the last heartbeat, when there is one.
    pub heartbeat_age: Option<f64>,
    /// Why.
    pub message: String,
}

impl WorkerHealth {
    /// Reads a heartbeat hash. Missing counters read as zero; unknown fields
    /// are ignored.
    pub fn from_hash<K, V, I>(worker_id: &str, fields: I) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = (K, V)>,
    {
        const WHAT: &str = "heartbeat hash";
        let fields: BTreeMap<String, String> = fields
            .into_iter()
            .filter(|(_, value)| !value.as_ref().is_empty())
            .map(|(key, value)| (key.as_ref().to_owned(), value.as_ref().to_owned()))
            .collect();
        fn number<T: std::str::FromStr>(
            fields: &BTreeMap<String, String>,
            name: &str,
        ) -> Result<Option<T>> {
            fields
                .get(name)
                .map(|text| {
                    text.parse::<T>()
                        .map_err(|_| Error::field(WHAT, name, format!("`{text}` is not a number")))
                })
                .transpose()
        }
        Ok(WorkerHealth {
            worker_id: worker_id.to_owned(),
            status: fields
                .get("status")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            tasks_processed: number(&fields, "tasks_processed")?.unwrap_or(0),
            tasks_failed: number(&fields, "tasks_failed")?.unwrap_or(0),
            current_task_id: fields.get("current_task_id").cloned(),
            started_at: number(&fields, "started_at")?.unwrap_or(0.0),
            last_heartbeat: number(&fields, "last_heartbeat")?.unwrap_or(0.0),
            concurrency: number(&fields, "concurrency")?.unwrap_or(1),
            hostname: fields.get("hostname").cloned().unwrap_or_default(),
            heartbeat_ttl: number(&fields, "heartbeat_ttl")?,
            active_tasks: number(&fields, "active_tasks")?,
            queue: fields.get("queue").cloned(),
        })
    }

    /// The hash fields, reference fields first.
    pub fn to_hash_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("status", self.status.clone()),
            ("tasks_processed", self.tasks_processed.to_string()),
            ("tasks_failed", self.tasks_failed.to_string()),
            (
                "current_task_id",
                self.current_task_id.clone().unwrap_or_default(),
            ),
            ("started_at", self.started_at.to_string()),
            ("last_heartbeat", self.last_heartbeat.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("hostname", self.hostname.clone()),
        ];
        if let Some(ttl) = self.heartbeat_ttl {
            fields.push(("heartbeat_ttl", ttl.to_string()));
        }
        if let Some(active) = self.active_tasks {
            fields.push(("active_tasks", active.to_string()));
        }
        if let Some(queue) = &self.queue {
            fields.push(("queue", queue.clone()));
        }
        fields
    }

    /// Seconds since the last heartbeat.
    pub fn heartbeat_age(&self, now: f64) -> f64 {
        (now - self.last_heartbeat).max(0.0)
    }

    /// False when the last heartbeat is older than [`DEAD_AFTER_SECONDS`].
    pub fn alive(&self, now: f64) -> bool {
        self.heartbeat_age(now) < DEAD_AFTER_SECONDS
    }

    /// The health check: unhealthy when dead, degraded when the heartbeat is
    /// older than 80% of its TTL (the key is about to expire) or the worker
    /// is draining, healthy otherwise.
    pub fn check(&self, now: f64) -> HealthReport {
        let age = self.heartbeat_age(now);
        let ttl = f64::from(self.heartbeat_ttl.unwrap_or(30));
        let (health, message) = if !self.alive(now) {
            (
                Health::Unhealthy,
                format!("last heartbeat {age:.1}s ago (dead after {DEAD_AFTER_SECONDS:.0}s)"),
            )
        } else if age >= 0.8 * ttl {
            (
                Health::Degraded,
                format!("last heartbeat {age:.1}s ago, over 80% of its {ttl:.0}s TTL"),
            )
        } else if self.status != "running" {
            (Health::Degraded, format!("status is `{}`", self.status))
        } else {
            (Health::Healthy, format!("last heartbeat {age:.1}s ago"))
        };
        HealthReport {
            health,
            heartbeat_age: Some(age),
            message,
        }
    }

    /// The report for a worker with no heartbeat hash at all.
    pub fn missing(worker_id: &str) -> HealthReport {
        HealthReport {
            health: Health::Unhealthy,
            heartbeat_age: None,
            message: format!(
                "no heartbeat for worker `{worker_id}` (never started, stopped, or its key expired)"
            ),
        }
    }
}
