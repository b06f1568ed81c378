//! The operator's handle: the fleet, the queue's numbers, the dead letter.

use exo_proto::WorkerHealth;
use fred::{
    prelude::*,
    types::{Value, scan::ScanType},
};

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

/// How far [`Admin::fleet_scanning`] looks for heartbeat hashes that no
/// exo worker registered (workers of the Python reference write only their
/// hash): a `SCAN` cursor kept between calls, and how many `SCAN` pages of
/// [`FleetScan::PAGE_KEYS`] keys one call may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetScan {
    cursor: String,
    pages_per_call: usize,
}

impl FleetScan {
    /// Keys one `SCAN` page examines (its `COUNT`).
    pub const PAGE_KEYS: u32 = 1000;
    /// The most pages [`Admin::fleet`] reads: a keyspace of ten million
    /// keys is walked whole.
    pub const FULL_PAGES: usize = 10_000;

    /// A whole pass per call, from the start (bounded by
    /// [`FleetScan::FULL_PAGES`]).
    pub fn full() -> Self {
        FleetScan {
            cursor: "0".to_owned(),
            pages_per_call: Self::FULL_PAGES,
        }
    }

    /// At most `pages` pages per call, going on where the last call
    /// stopped: a loop that lists the fleet every few seconds spreads one
    /// pass over its calls. A worker found once stays registered.
    pub fn incremental(pages: usize) -> Self {
        FleetScan {
            cursor: "0".to_owned(),
            pages_per_call: pages.max(1),
        }
    }
}

/// A glob pattern matching exactly the keys that start with `prefix`.
fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for character in prefix.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('*');
    pattern
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
    /// Tasks with a priority waiting beside the stream.
    pub prioritized: u64,
    /// Tasks held back by their concurrency key (summed over at most
    /// 1,000 keys).
    pub held: u64,
}

impl QueueStats {
    /// Seconds the oldest undelivered task has waited.
    pub fn oldest_wait(&self, now: f64) -> Option<f64> {
        self.oldest_waiting_created_at
            .map(|created| (now - created).max(0.0))
    }

    /// Tasks waiting to start: undelivered entries, delayed tasks,
    /// prioritized tasks and tasks held back by their concurrency key.
    pub fn depth(&self) -> u64 {
        let waiting = self
            .lag
            .unwrap_or_else(|| self.stream_length.saturating_sub(self.pending));
        waiting + self.delayed + self.prioritized + self.held
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
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    pub(crate) fn new(broker: Broker) -> Self {
        Admin { broker }
    }

    /// Every worker seen in the last hour, with its heartbeat if it is still
    /// there: exo's workers, and workers that write only their heartbeat
    /// hash (the Python reference's), found by a `SCAN` of the heartbeat
    /// keys (one round trip per [`FleetScan::PAGE_KEYS`] keys of the
    /// keyspace) and by the queue's consumer group. Then one round trip.
    pub async fn fleet(&self) -> Result<Vec<FleetEntry>> {
        self.fleet_scanning(&mut FleetScan::full()).await
    }

    /// [`Admin::fleet`] with a bounded `SCAN`: `scan` says how many pages
    /// this call may read and keeps the cursor for the next call.
    pub async fn fleet_scanning(&self, scan: &mut FleetScan) -> Result<Vec<FleetEntry>> {
        let discovered = self.heartbeat_ids(scan).await?;
        self.broker
            .call(&FleetCall {
                keep_seconds: 3600,
                discovered: &discovered,
            })
            .await
    }

    /// Worker ids of the heartbeat hashes `SCAN` finds, up to
    /// `scan.pages_per_call` pages from `scan.cursor`. Under Redis Cluster
    /// the pattern's hash tag sends it to the node that holds them.
    async fn heartbeat_ids(&self, scan: &mut FleetScan) -> Result<Vec<String>> {
        let prefix = self.broker.keys().worker_prefix();
        let pattern = prefix_pattern(&prefix);
        let mut ids = Vec::new();
        for _ in 0..scan.pages_per_call {
            self.broker.count();
            let page: Value = self
                .broker
                .inner
                .client
                .scan_page(
                    scan.cursor.clone(),
                    pattern.clone(),
                    Some(FleetScan::PAGE_KEYS),
                    Some(ScanType::Hash),
                )
                .await?;
            let mut parts = reply::array("SCAN", page)?.into_iter();
            let (Some(cursor), Some(keys)) = (parts.next(), parts.next()) else {
                return Err(crate::error::Error::reply("SCAN: a malformed page"));
            };
            scan.cursor = reply::string("SCAN", &cursor)?;
            ids.extend(
                reply::strings("SCAN", keys)?
                    .into_iter()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
                    .filter(|id| !id.is_empty()),
            );
            if scan.cursor == "0" {
                break;
            }
        }
        Ok(ids)
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

#[cfg(test)]
mod tests {
    use super::prefix_pattern;

    #[test]
    fn the_pattern_matches_the_prefix_literally() {
        for (prefix, pattern) in [
            ("exo:workers:", "exo:workers:*"),
            ("{exo}:workers:", "{exo}:workers:*"),
            ("a*b?[c]\\:", "a\\*b\\?\\[c\\]\\\\:*"),
        ] {
            assert_eq!(prefix_pattern(prefix), pattern);
        }
    }
}
