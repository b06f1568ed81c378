//! The operator's handle: the fleet, the queue's numbers, the dead letter.

use exo_proto::WorkerHealth;
use fred::{prelude::*, types::Value};

use crate::{
    broker::Broker,
    error::Result,
    ops::{fleet::FleetCall, redrive::RedriveCall, reply, stats::StatsCall},
};

/// Reads the fleet and the queue, and manages the dead letter. Cheap to
/// clone; get one from [`Broker::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    broker: Broker,
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
    /// The dead-letter entry id (pass it to [`Admin::redrive`]).
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

impl Admin {
    pub(crate) fn new(broker: Broker) -> Self {
        Admin { broker }
    }

    /// Every worker seen in the last hour, with its heartbeat if it is still
    /// there. One round trip.
    pub async fn fleet(&self) -> Result<Vec<FleetEntry>> {
        self.broker.call(&FleetCall { keep_seconds: 3600 }).await
    }

    /// One worker's heartbeat.
    pub async fn worker(&self, worker_id: &str) -> Result<Option<WorkerHealth>> {
        self.broker.count();
        let value: Value = self
            .broker
            .inner
            .client
            .hgetall(self.broker.keys().worker(worker_id))
            .await?;
        let fields = reply::pairs("HGETALL", value)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(WorkerHealth::from_hash(worker_id, fields)?))
    }

    /// Queue depth, lag, pending per consumer, delayed and dead letters, in
    /// one round trip.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        self.broker.call(&StatsCall).await
    }

    /// The newest dead-letter entries.
    pub async fn dead_letters(&self, count: u64) -> Result<Vec<DeadLetter>> {
        self.broker.count();
        let value: Value = self
            .broker
            .inner
            .client
            .xrevrange(self.broker.keys().dead_letter(), "+", "-", Some(count))
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
        self.broker.call(&RedriveCall { entry_id }).await
    }
}
