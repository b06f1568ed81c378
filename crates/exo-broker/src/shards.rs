//! Sharded queues: one queue split over N hash slots, so that under Redis
//! Cluster it spreads over N nodes instead of filling one.
//!
//! Shard `i` uses [`Keys::shard`]`(i)` (shard 0 is the unsharded keys, the
//! reference's). A task goes to the shard of its routing key
//! ([`TaskPayload::routing_key`], [`shard_of`]); every script still touches
//! one shard's keys, so one slot. Reads by task id try the shard its id
//! routes to, then the others (a task routed by a concurrency or
//! idempotency key lives elsewhere). Listings and counts are merged.

use exo_proto::{Keys, TaskPayload, TaskResult, TaskStatus, shard_of};

use crate::{
    admin::{FleetEntry, QueueStats},
    broker::Broker,
    client::{CancelOutcome, TaskPage},
    config::BrokerConfig,
    error::Result,
    handle::TaskHandle,
};

/// One broker per shard of a queue, sharing one connection.
#[derive(Debug, Clone)]
pub struct Shards {
    brokers: Vec<Broker>,
}

impl Shards {
    /// Connects to shards `0..count` of `config.keys` (at least one).
    pub async fn connect(config: BrokerConfig, count: u32) -> Result<Self> {
        let first = Broker::connect(config).await?;
        Shards::of(first, count).await
    }

    /// Shards `0..count` of `first`'s keys, on `first`'s connection.
    pub async fn of(first: Broker, count: u32) -> Result<Self> {
        let mut brokers = vec![first.clone()];
        for index in 1..count.max(1) {
            brokers.push(first.with_keys(first.keys().shard(index)).await?);
        }
        Ok(Shards { brokers })
    }

    /// How many shards.
    pub fn count(&self) -> u32 {
        self.brokers.len() as u32
    }

    /// Every shard's broker, shard 0 first.
    pub fn brokers(&self) -> &[Broker] {
        &self.brokers
    }

    /// Shard 0: the unsharded keys.
    pub fn first(&self) -> &Broker {
        &self.brokers[0]
    }

    /// The broker of the shard a routing key goes to.
    pub fn route(&self, routing_key: &str) -> &Broker {
        &self.brokers[shard_of(routing_key, self.count()) as usize]
    }

    /// The broker of the shard a payload goes to.
    pub fn for_payload(&self, payload: &TaskPayload) -> &Broker {
        self.route(payload.routing_key())
    }

    /// Submits a task to its shard.
    pub async fn submit(&self, payload: TaskPayload) -> Result<TaskHandle> {
        self.for_payload(&payload).client().submit(payload).await
    }

    /// The shard that holds a task: the one its id routes to, else the
    /// first other shard that has its hash. `None` when none has it.
    pub async fn locate(&self, task_id: &str) -> Result<Option<&Broker>> {
        let routed = shard_of(task_id, self.count()) as usize;
        let order = std::iter::once(routed).chain((0..self.brokers.len()).filter(|&i| i != routed));
        for index in order {
            let broker = &self.brokers[index];
            if broker.task_exists(task_id).await? {
                return Ok(Some(broker));
            }
        }
        Ok(None)
    }

    /// The shard that holds a task, or the one its id routes to when none
    /// has it (so that "not found" reads come from there).
    pub async fn holder(&self, task_id: &str) -> Result<&Broker> {
        match self.locate(task_id).await? {
            Some(broker) => Ok(broker),
            None => Ok(self.route(task_id)),
        }
    }

    /// A task's state, from whichever shard holds it.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskResult>> {
        match self.locate(task_id).await? {
            Some(broker) => broker.client().get(task_id).await,
            None => Ok(None),
        }
    }

    /// Cancels a task on whichever shard holds it.
    pub async fn cancel(&self, task_id: &str) -> Result<CancelOutcome> {
        self.holder(task_id).await?.client().cancel(task_id).await
    }

    /// The newest tasks of every shard, newest first, at most `limit` (one
    /// page: no cursor).
    pub async fn list(&self, status: Option<TaskStatus>, limit: usize) -> Result<TaskPage> {
        let mut tasks = Vec::new();
        for broker in &self.brokers {
            tasks.extend(broker.client().list(status, limit, 0).await?.tasks);
        }
        tasks.sort_by(|a, b| {
            b.created_at
                .unwrap_or(0.0)
                .total_cmp(&a.created_at.unwrap_or(0.0))
        });
        tasks.truncate(limit);
        Ok(TaskPage {
            tasks,
            next_cursor: None,
        })
    }

    /// Every shard's queue counters, added up (the oldest waiting task is
    /// the oldest of any shard; pending counts per worker are summed).
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        let mut sum = self.first().admin().queue_stats().await?;
        for broker in &self.brokers[1..] {
            let stats = broker.admin().queue_stats().await?;
            sum.stream_length += stats.stream_length;
            sum.lag = sum.lag.zip(stats.lag).map(|(a, b)| a + b);
            sum.pending += stats.pending;
            for (consumer, count) in stats.pending_by_consumer {
                match sum
                    .pending_by_consumer
                    .iter_mut()
                    .find(|(name, _)| *name == consumer)
                {
                    Some((_, total)) => *total += count,
                    None => sum.pending_by_consumer.push((consumer, count)),
                }
            }
            sum.delayed += stats.delayed;
            sum.dead_letter += stats.dead_letter;
            sum.oldest_waiting_created_at = match (
                sum.oldest_waiting_created_at,
                stats.oldest_waiting_created_at,
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            sum.prioritized += stats.prioritized;
            sum.held += stats.held;
        }
        Ok(sum)
    }

    /// The workers of every shard, one entry per worker id: a worker that
    /// consumes several shards heartbeats on each; its newest heartbeat
    /// is shown, with the counters of all.
    pub async fn fleet(&self) -> Result<Vec<FleetEntry>> {
        let mut merged: Vec<FleetEntry> = Vec::new();
        for broker in &self.brokers {
            for entry in broker.admin().fleet().await? {
                match merged
                    .iter_mut()
                    .find(|known| known.worker_id == entry.worker_id)
                {
                    Some(known) => merge_worker(known, entry),
                    None => merged.push(entry),
                }
            }
        }
        Ok(merged)
    }
}

impl Shards {
    /// The newest `count` dead letters of every shard, newest first.
    pub async fn dead_letters(&self, count: u64) -> Result<Vec<crate::admin::DeadLetter>> {
        let mut letters = Vec::new();
        for broker in &self.brokers {
            letters.extend(broker.admin().dead_letters(count).await?);
        }
        letters.sort_by(|a, b| b.failed_at.total_cmp(&a.failed_at));
        letters.truncate(usize::try_from(count).unwrap_or(usize::MAX));
        Ok(letters)
    }

    /// Re-drives a dead-letter entry from whichever shard holds it (onto
    /// that shard's queue). Returns the task id.
    pub async fn redrive(&self, entry_id: &str) -> Result<String> {
        let mut refused = None;
        for broker in &self.brokers {
            match broker.admin().redrive(entry_id).await {
                Err(crate::error::Error::Refused { reason })
                    if reason.starts_with("no dead-letter entry") =>
                {
                    refused.get_or_insert(crate::error::Error::Refused { reason });
                }
                other => return other,
            }
        }
        Err(refused.unwrap_or_else(|| crate::error::Error::Refused {
            reason: format!("no dead-letter entry {entry_id}"),
        }))
    }

    /// The usage ledger of every shard, added up by name (each shard's
    /// final writes count into its own ledger).
    pub async fn usage(
        &self,
        since: std::time::Duration,
        by: crate::usage::UsageDimension,
    ) -> Result<crate::usage::UsageReport> {
        let mut sum = self.first().admin().usage(since, by).await?;
        for broker in &self.brokers[1..] {
            let report = broker.admin().usage(since, by).await?;
            sum.from = sum.from.min(report.from);
            sum.to = sum.to.max(report.to);
            for row in report.rows {
                match sum.rows.iter_mut().find(|known| known.name == row.name) {
                    Some(known) => {
                        known.input_tokens += row.input_tokens;
                        known.output_tokens += row.output_tokens;
                        known.calls += row.calls;
                        known.cost_micros += row.cost_micros;
                    }
                    None => sum.rows.push(row),
                }
            }
        }
        sum.rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(sum)
    }
}

/// Adds one shard's view of a worker to what the other shards said.
fn merge_worker(known: &mut FleetEntry, other: FleetEntry) {
    let newer = other.last_seen > known.last_seen;
    known.last_seen = known.last_seen.max(other.last_seen);
    match (&mut known.health, other.health) {
        (Some(mine), Some(theirs)) => {
            let processed = mine.tasks_processed + theirs.tasks_processed;
            let failed = mine.tasks_failed + theirs.tasks_failed;
            if newer {
                *mine = theirs;
            }
            mine.tasks_processed = processed;
            mine.tasks_failed = failed;
        }
        (slot @ None, theirs @ Some(_)) => *slot = theirs,
        _ => {}
    }
}

/// `Keys` of a queue's shards, for code that builds names itself.
pub fn shard_keys(keys: &Keys, count: u32) -> Vec<Keys> {
    (0..count.max(1)).map(|index| keys.shard(index)).collect()
}
