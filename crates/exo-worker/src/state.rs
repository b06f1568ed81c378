//! State shared by a worker's loops and its running tasks.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use exo_broker::{Broker, Lease};
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

/// Counters and flags the heartbeat and readiness report.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) config: WorkerConfig,
    pub(crate) worker_id: String,
    pub(crate) hostname: String,
    pub(crate) started_at: f64,
    pub(crate) running: Mutex<HashMap<String, Arc<RunningTask>>>,
    /// Cancel signals for tasks not (yet) running here: a signal can arrive
    /// between the claim and the task's registration.
    pub(crate) early_cancels: Mutex<HashMap<String, Instant>>,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) draining: AtomicBool,
    /// Set once the drain deadline passed or a second signal came.
    pub(crate) force: CancellationToken,
}

impl Shared {
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

    /// Remembers a cancel for a task that is not running here (yet).
    pub(crate) fn remember_cancel(&self, task_id: &str) {
        let mut early = self
            .early_cancels
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        early.retain(|_, seen| seen.elapsed() < std::time::Duration::from_secs(60));
        early.insert(task_id.to_owned(), Instant::now());
    }

    /// Registers a task as running here; stops it at once if its cancel
    /// came first.
    pub(crate) fn register(&self, task: Arc<RunningTask>) {
        let task_id = task.lease.task_id.clone();
        self.running().insert(task_id.clone(), task.clone());
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

    pub(crate) fn health(&self) -> WorkerHealth {
        let running = self.running();
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
            last_heartbeat: exo_broker::now_seconds(),
            concurrency: self.config.concurrency as u32,
            hostname: self.hostname.clone(),
            heartbeat_ttl: Some(self.config.heartbeat_ttl.as_secs() as u32),
            active_tasks: Some(active),
            queue: Some(self.config.queue_name.clone()),
        }
    }
}
