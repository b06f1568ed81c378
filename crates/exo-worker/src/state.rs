//! State shared by a worker's loops and its running tasks.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use exo_broker::{Broker, Finisher, Lease, WorkerSession};
use exo_proto::WorkerHealth;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;

/// Why a running task was stopped from outside its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// A client cancelled it.
    Cancelled,
    /// Another worker took it over; its writes would be refused.
    Lost,
    /// The worker is shutting down and the drain deadline passed.
    Shutdown,
}

/// One task this worker runs.
#[derive(Debug)]
pub(crate) struct RunningTask {
    pub(crate) lease: Lease,
    pub(crate) cancel: CancellationToken,
    pub(crate) stop: Mutex<Option<StopReason>>,
    pub(crate) started: Instant,
}

impl RunningTask {
    pub(crate) fn stop(&self, reason: StopReason) {
        let mut stop = self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if stop.is_none() {
            *stop = Some(reason);
        }
        drop(stop);
        self.cancel.cancel();
    }

    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        *self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The tasks running in this worker, by task id, and the cancels that
/// arrived before their task registered.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    running: Mutex<HashMap<String, Arc<RunningTask>>>,
    /// Cancel signals for tasks not (yet) running here: a signal can arrive
    /// between the claim and the task's registration.
    early_cancels: Mutex<HashMap<String, Instant>>,
}

impl Registry {
    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RunningTask>>> {
        self.running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.running()
            .values()
            .map(|task| task.lease.clone())
            .collect()
    }

    /// Registers a task as running here; stops it at once if its cancel
    /// came first. An older attempt of the same task still registered here
    /// (reclaimed, then claimed again by this very worker) is stopped as
    /// lost: only the newest attempt may write.
    pub(crate) fn register(&self, task: Arc<RunningTask>) {
        let task_id = task.lease.task_id.clone();
        let older = self.running().insert(task_id.clone(), task.clone());
        if let Some(older) = older {
            older.stop(StopReason::Lost);
        }
        let cancelled_early = self
            .early_cancels
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&task_id)
            .is_some();
        if cancelled_early {
            task.stop(StopReason::Cancelled);
        }
    }

    /// Unregisters a task, unless a newer attempt of it has taken its place.
    pub(crate) fn unregister(&self, task: &Arc<RunningTask>) {
        let mut running = self.running();
        if running
            .get(&task.lease.task_id)
            .is_some_and(|current| Arc::ptr_eq(current, task))
        {
            running.remove(&task.lease.task_id);
        }
    }

    /// Stops whichever attempt of the task runs here.
    pub(crate) fn stop_task(&self, task_id: &str, reason: StopReason) -> bool {
        let task = self.running().get(task_id).cloned();
        match task {
            Some(task) => {
                task.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Stops the registered task if it is still on `attempt`.
    pub(crate) fn stop_attempt(&self, task_id: &str, attempt: u32, reason: StopReason) -> bool {
        let task = self.running().get(task_id).cloned();
        match task {
            Some(task) if task.lease.attempt == attempt => {
                task.stop(reason);
                true
            }
            _ => false,
        }
    }

    /// Remembers a cancel for a task that is not running here (yet), for a
    /// minute.
    pub(crate) fn remember_cancel(&self, task_id: &str) {
        let mut early = self
            .early_cancels
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        early.retain(|_, seen| seen.elapsed() < std::time::Duration::from_secs(60));
        early.insert(task_id.to_owned(), Instant::now());
    }
}

/// Counters and flags the heartbeat and readiness report.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    /// The slots (shared by every shard's loop of a sharded worker), and
    /// this loop's shard.
    pub(crate) slots: Arc<Slots>,
    pub(crate) shard: usize,
    /// This worker's operations on the queue.
    pub(crate) session: WorkerSession,
    /// The slots' final writes, sent together when they end together.
    pub(crate) finisher: Finisher,
    pub(crate) config: WorkerConfig,
    pub(crate) worker_id: String,
    pub(crate) hostname: String,
    pub(crate) started_at: f64,
    pub(crate) registry: Registry,
    /// When the last heartbeat that landed was sent (its key's TTL started
    /// no earlier than this).
    pub(crate) last_heartbeat: Mutex<Instant>,
    /// `true` while the worker's runs are paused (cut off from Redis).
    pub(crate) pause: tokio::sync::watch::Sender<bool>,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) draining: AtomicBool,
    /// Set once the drain deadline passed or a second signal came.
    pub(crate) force: CancellationToken,
    /// Set once a shutdown was asked for: no more claims.
    pub(crate) shutdown: CancellationToken,
    /// Where the workers-alive measurement's search for heartbeat hashes
    /// (of reference workers) goes on.
    pub(crate) fleet_scan: Mutex<exo_broker::FleetScan>,
}

/// A worker's task slots, and which shards' claim loops wait for one.
#[derive(Debug)]
pub(crate) struct Slots {
    pub(crate) semaphore: Arc<tokio::sync::Semaphore>,
    /// Tasks the slots hold or have coming beyond each one's next task
    /// (the lookahead, which `WorkerConfig::lookahead` caps for the whole
    /// worker).
    ahead: std::sync::atomic::AtomicUsize,
    slots: usize,
    waiting: Vec<AtomicBool>,
    /// Slots each shard's tasks hold.
    held: Vec<std::sync::atomic::AtomicUsize>,
}

impl Slots {
    pub(crate) fn new(slots: usize, shards: u32) -> Self {
        Slots {
            semaphore: Arc::new(tokio::sync::Semaphore::new(slots)),
            ahead: std::sync::atomic::AtomicUsize::new(0),
            slots,
            waiting: (0..shards.max(1)).map(|_| AtomicBool::new(false)).collect(),
            held: (0..shards.max(1))
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// Whether the loops of several shards share these slots.
    /// The worker's tasks ahead, over all slots.
    pub(crate) fn ahead(&self) -> usize {
        self.ahead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One slot's share of the tasks ahead went from `before` to `now`.
    pub(crate) fn count_ahead(&self, before: usize, now: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if now > before {
            self.ahead.fetch_add(now - before, Relaxed);
        } else if before > now {
            self.ahead.fetch_sub(before - now, Relaxed);
        }
    }

    pub(crate) fn shared(&self) -> bool {
        self.waiting.len() > 1
    }

    /// Marks shard `shard`'s loop as waiting for a slot (or not).
    pub(crate) fn set_waiting(&self, shard: usize, waiting: bool) {
        if let Some(flag) = self.waiting.get(shard) {
            flag.store(waiting, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A slot runs shard `shard`'s tasks until the value is dropped.
    pub(crate) fn held_by(self: &Arc<Self>, shard: usize) -> HeldSlot {
        if let Some(count) = self.held.get(shard) {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        HeldSlot {
            slots: self.clone(),
            shard,
        }
    }

    /// Whether shard `shard` should hand a slot that frees back to the
    /// pool: another shard's loop waits for one, and this shard holds more
    /// than its share (the slots over the shards).
    fn yields(&self, shard: usize) -> bool {
        let others_wait =
            self.waiting.iter().enumerate().any(|(index, flag)| {
                index != shard && flag.load(std::sync::atomic::Ordering::Relaxed)
            });
        let held = self
            .held
            .get(shard)
            .map_or(0, |count| count.load(std::sync::atomic::Ordering::Relaxed));
        others_wait && held * self.held.len() > self.slots
    }
}

/// A slot counted as running one shard's tasks (see [`Slots::held_by`]).
#[derive(Debug)]
pub(crate) struct HeldSlot {
    slots: Arc<Slots>,
    shard: usize,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        if let Some(count) = self.slots.held.get(self.shard) {
            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// `SCAN` pages (of 1000 keys) each fleet measurement reads while looking
/// for heartbeat hashes no exo worker registered.
pub(crate) const FLEET_SCAN_PAGES: usize = 10;

impl Shared {
    /// Records a heartbeat that landed, sent at `sent`.
    pub(crate) fn heartbeat_landed(&self, sent: Instant) {
        let mut last = self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if sent > *last {
            *last = sent;
        }
    }

    /// True while this worker may take new tasks: not shutting down, not
    /// paused.
    pub(crate) fn may_claim(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.paused()
    }

    /// Whether a slot that frees may go on to this shard's next task in
    /// the same round trip: not when another shard's loop waits for a slot
    /// while this shard holds more than its share (the slot goes back to
    /// the pool, and the shards take turns).
    pub(crate) fn may_claim_next(&self) -> bool {
        self.may_claim() && !self.slots.yields(self.shard)
    }

    /// Logs queue entries a claim sent to the dead letter, and counts them
    /// as failed.
    pub(crate) fn note_rejected(&self, rejected: &[exo_broker::Rejected]) {
        for rejected in rejected {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                entry = rejected.entry_id,
                reason = rejected.reason,
                "queue entry dead-lettered"
            );
        }
    }

    /// When the last heartbeat that landed was sent.
    pub(crate) fn last_landed_send(&self) -> Instant {
        *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// True while runs are paused.
    pub(crate) fn paused(&self) -> bool {
        *self.pause.borrow()
    }

    /// The task the heartbeat shows as current once `ending` has ended:
    /// the newest other task running here, or `""`.
    pub(crate) fn current_task_besides(&self, ending: &str) -> String {
        self.registry
            .running()
            .values()
            .filter(|task| task.lease.task_id != ending)
            .max_by_key(|task| task.started)
            .map(|task| task.lease.task_id.clone())
            .unwrap_or_default()
    }

    pub(crate) fn health(&self) -> WorkerHealth {
        let running = self.registry.running();
        let current = running
            .values()
            .max_by_key(|task| task.started)
            .map(|task| task.lease.task_id.clone());
        let active = running.len() as u32;
        drop(running);
        WorkerHealth {
            worker_id: self.worker_id.clone(),
            status: if self.draining.load(Ordering::Relaxed) {
                "draining".to_owned()
            } else {
                "running".to_owned()
            },
            tasks_processed: self.processed.load(Ordering::Relaxed),
            tasks_failed: self.failed.load(Ordering::Relaxed),
            current_task_id: current,
            started_at: self.started_at,
            last_heartbeat: exo_proto::time::now_seconds(),
            concurrency: self.config.concurrency as u32,
            hostname: self.hostname.clone(),
            heartbeat_ttl: Some(self.config.broker.heartbeat_ttl.as_secs() as u32),
            active_tasks: Some(active),
            queue: Some(self.config.broker.keys.queue().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use exo_broker::Lease;
    use tokio_util::sync::CancellationToken;

    use super::{Registry, RunningTask, StopReason};

    fn task(attempt: u32) -> Arc<RunningTask> {
        Arc::new(RunningTask {
            lease: Lease {
                task_id: "t".into(),
                entry_id: format!("{attempt}-0"),
                attempt,
                token: String::new(),
            },
            cancel: CancellationToken::new(),
            stop: Mutex::new(None),
            started: std::time::Instant::now(),
        })
    }

    #[test]
    fn a_newer_attempt_of_a_task_stops_the_older_and_survives_its_end() {
        let registry = Registry::default();
        let first = task(1);
        let second = task(3);
        registry.register(first.clone());
        registry.register(second.clone());
        assert_eq!(first.stop_reason(), Some(StopReason::Lost));
        assert_eq!(second.stop_reason(), None);
        assert!(
            !registry.stop_attempt("t", 1, StopReason::Lost),
            "a report about attempt 1 spares attempt 3"
        );
        registry.unregister(&first);
        assert_eq!(
            registry.leases().len(),
            1,
            "the older attempt's end must not unregister the newer"
        );
        registry.unregister(&second);
        assert!(registry.leases().is_empty());
    }

    #[test]
    fn a_cancel_that_comes_before_registration_is_kept() {
        let registry = Registry::default();
        assert!(!registry.stop_task("t", StopReason::Cancelled));
        registry.remember_cancel("t");
        let late = task(1);
        registry.register(late.clone());
        assert_eq!(late.stop_reason(), Some(StopReason::Cancelled));
        assert!(late.cancel.is_cancelled());
    }
}
