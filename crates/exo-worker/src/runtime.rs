//! Running a worker: connect, the first heartbeat, the claim loop that
//! fills the slots, and the drain at shutdown. The background work is in
//! `background.rs`, the end of each attempt in `attempt.rs`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use exo_broker::Broker;
use exo_observability::record;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    attempt::Held,
    background::{Beat, LoopEnd, background, heartbeat_interval, heartbeat_once, supervise},
    builder::Worker,
    config::ExecutorKind,
    error::Result,
    execute::{Executor, LocalExecutor},
    slot::run_slot,
    state::{Registry, Shared, StopReason},
};

impl Worker {
    /// Runs until [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown) is called, then drains. Redis
    /// outages are ridden out with backoff; only invalid settings end it
    /// early.
    pub async fn run(self) -> Result<()> {
        if self.config.shards > 1 && self.slots.is_none() {
            return self.run_shards().await;
        }
        self.run_one().await
    }

    /// A sharded worker: one runtime per shard (each with its own
    /// connection, heartbeat, reaper and cancel subscription, under the same
    /// worker id), all on one pool of slots.
    async fn run_shards(self) -> Result<()> {
        if self.executor.is_none() && self.config.executor == ExecutorKind::Temporal {
            return Err(crate::error::Error::Config(
                "a sharded worker runs tasks locally; --shards does not go with --executor temporal"
                    .into(),
            ));
        }
        let slots = Arc::new(crate::state::Slots::new(
            self.config.concurrency,
            self.config.shards,
        ));
        let mut runs = JoinSet::new();
        for index in 0..self.config.shards {
            let mut config = self.config.clone();
            config.broker.keys = self.config.broker.keys.shard(index);
            config.shards = 1;
            let shard = Worker {
                config,
                worker_id: self.worker_id.clone(),
                hostname: self.hostname.clone(),
                runner: self.runner.clone(),
                memory: self.memory.clone(),
                hooks: self.hooks.clone(),
                executor: self.executor.clone(),
                shutdown: self.shutdown.clone(),
                force: self.force.clone(),
                status: self.status.clone(),
                slots: Some(slots.clone()),
                shard: index as usize,
                limits_keys: Some(self.config.broker.keys.clone()),
            };
            runs.spawn(shard.run_one());
        }
        let mut result = Ok(());
        while let Some(joined) = runs.join_next().await {
            let ended = joined.unwrap_or_else(|error| {
                Err(crate::error::Error::Executor(format!(
                    "a shard's runtime panicked: {error}"
                )))
            });
            if let Err(error) = ended {
                // One shard cannot go on (a worker id in use, bad settings):
                // the others stop too.
                self.shutdown.cancel();
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_STEP, self.memory.close()).await;
        result
    }

    async fn run_one(self) -> Result<()> {
        let broker = match self.connect().await? {
            Some(broker) => broker,
            None => return Ok(()),
        };
        self.status.connected.store(true, Ordering::Relaxed);
        broker.on_publish(Arc::new(|_events, took| record::events_published(took)));
        let session = broker.worker_session(self.worker_id.clone());
        let mut local = LocalExecutor::new(
            session.clone(),
            self.runner.clone(),
            self.memory.clone(),
            self.config.deadline_grace,
        );
        if !self.config.prices.models.is_empty() {
            local = local.with_prices(Arc::new(self.config.prices.clone()));
        }
        if !self.config.model_limits.is_empty() {
            // A sharded worker counts every shard's calls under shard 0's
            // rules: the limits are the fleet's, not a shard's.
            let counting = match &self.limits_keys {
                Some(keys) if keys != broker.keys() => broker.with_keys(keys.clone()).await?,
                _ => broker.clone(),
            };
            local = local.with_gate(Arc::new(crate::limits::RedisGate::new(
                counting.limits(),
                self.config.model_limits.clone(),
                self.config.credential_aliases.clone(),
            )));
        }
        let local = Arc::new(local);
        let executor: Arc<dyn Executor> = match (&self.executor, self.config.executor) {
            (Some(custom), _) => custom.clone(),
            (None, ExecutorKind::Local) => local,
            #[cfg(feature = "temporal")]
            (None, ExecutorKind::Temporal) => {
                crate::temporal::start(&self.config, &self.worker_id, local).await?
            }
            #[cfg(not(feature = "temporal"))]
            (None, ExecutorKind::Temporal) => {
                return Err(crate::error::Error::Executor(
                    "exo was built without the `temporal` feature".into(),
                ));
            }
        };
        let shared = Arc::new(Shared {
            slots: self
                .slots
                .clone()
                .unwrap_or_else(|| Arc::new(crate::state::Slots::new(self.config.concurrency, 1))),
            shard: self.shard,
            broker: broker.clone(),
            session: session.clone(),
            finisher: session.finisher(),
            config: self.config.clone(),
            worker_id: self.worker_id.clone(),
            hostname: self.hostname.clone(),
            started_at: exo_proto::time::now_seconds(),
            registry: Registry::default(),
            last_heartbeat: Mutex::new(std::time::Instant::now()),
            pause: tokio::sync::watch::channel(false).0,
            processed: Default::default(),
            failed: Default::default(),
            draining: AtomicBool::new(false),
            force: self.force.clone(),
            shutdown: self.shutdown.clone(),
            fleet_scan: Mutex::new(exo_broker::FleetScan::incremental(
                crate::state::FLEET_SCAN_PAGES,
            )),
        });
        tracing::info!(
            worker_id = self.worker_id,
            queue = self.config.broker.keys.queue(),
            concurrency = self.config.concurrency,
            redis = broker.masked_url(),
            "worker started"
        );
        for warning in broker.server_warnings().await {
            tracing::warn!("{warning}");
        }
        // The first heartbeat lands before the first claim, so the reaper
        // of another worker never mistakes this one's tasks for orphans.
        let mut attempt = 0;
        let mut conflict_since: Option<std::time::Instant> = None;
        loop {
            match heartbeat_once(&shared).await {
                Beat::Landed => break,
                Beat::Conflict => {
                    // The hash may be a leftover of this same id's previous
                    // process (SIGKILLed, OOM-killed): it expires within a
                    // TTL. Only a hash that outlives that is a live process.
                    let since = *conflict_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed()
                        > self.config.broker.heartbeat_ttl + heartbeat_interval(&self.config)
                    {
                        broker.close().await;
                        return Err(exo_broker::Error::WorkerIdInUse {
                            worker_id: self.worker_id.clone(),
                        }
                        .into());
                    }
                    tracing::warn!(
                        worker_id = self.worker_id,
                        "a heartbeat of this worker id is still in Redis; waiting for it to expire"
                    );
                }
                Beat::Failed => {}
            }
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff(attempt)) => {}
                () = self.shutdown.cancelled() => {
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, broker.close()).await;
                    return Ok(());
                }
            }
        }
        // Subscribe to cancel signals before the first claim, so a task
        // cancelled right after it starts hears of it at once. If the
        // subscription fails, the loop keeps trying and the heartbeat still
        // finds cancels.
        let cancels = match session.cancel_listener().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to cancel signals yet; retrying in the background");
                None
            }
        };
        let background_stop = CancellationToken::new();
        let mut loops = JoinSet::new();
        {
            let (shared, stop, status) =
                (shared.clone(), background_stop.clone(), self.status.clone());
            let shutdown = self.shutdown.clone();
            let mut first = Some(cancels);
            loops.spawn(async move {
                let end = supervise(shared.clone(), "background", stop.clone(), move || {
                    background(
                        shared.clone(),
                        stop.clone(),
                        status.clone(),
                        first.take().flatten(),
                    )
                })
                .await;
                if end == LoopEnd::Conflict {
                    // Another process took this worker id: stop claiming.
                    shutdown.cancel();
                }
                end
            });
        }

        let mut tasks = JoinSet::new();
        self.claim_loop(&shared, &executor, &mut tasks).await;

        // Drain.
        shared.draining.store(true, Ordering::Relaxed);
        self.status.draining.store(true, Ordering::Relaxed);
        tracing::info!(running = tasks.len(), timeout = ?self.config.drain_timeout, "draining");
        // Once Redis has not answered one step of the shutdown, the steps
        // that only tidy up are skipped: the heartbeat expires by itself and
        // the reaper of another worker recovers what is left.
        let mut redis_away = heartbeat_once(&shared).await != Beat::Landed;
        let drained = tokio::select! {
            () = wait_all(&mut tasks) => true,
            () = tokio::time::sleep(self.config.drain_timeout) => false,
            () = self.force.cancelled() => false,
        };
        if !drained {
            let leases = shared.registry.leases();
            tracing::warn!(
                tasks = leases.len(),
                "drain deadline passed; stopping the remaining tasks and handing them back"
            );
            self.force.cancel();
            for task in shared.registry.running().values() {
                task.stop(StopReason::Shutdown);
            }
            tasks.abort_all();
            wait_all(&mut tasks).await;
            match tokio::time::timeout(SHUTDOWN_STEP * 5, session.release(&leases)).await {
                Ok(Ok(count)) => {
                    record::tasks_handed_back(
                        record::TaskLabels::new(
                            shared.config.broker.keys.queue(),
                            &shared.worker_id,
                        ),
                        count,
                    );
                    tracing::info!(count, "handed tasks back to the queue");
                }
                Ok(Err(error)) => {
                    let tasks: Vec<_> = leases.iter().map(|lease| lease.task_id.as_str()).collect();
                    tracing::warn!(%error, ?tasks, "could not hand these tasks back; the reaper of another worker will")
                }
                Err(_) => {
                    let tasks: Vec<_> = leases.iter().map(|lease| lease.task_id.as_str()).collect();
                    tracing::warn!(
                        ?tasks,
                        "Redis did not answer; the reaper of another worker will recover these tasks"
                    )
                }
            }
        }
        background_stop.cancel();
        let mut conflict = false;
        // A loop waiting on a Redis that does not answer is not waited for
        // long: its pass is abandoned.
        let joined = tokio::time::timeout(SHUTDOWN_STEP, async {
            while let Some(end) = loops.join_next().await {
                conflict |= matches!(end, Ok(LoopEnd::Conflict));
            }
        })
        .await;
        if joined.is_err() {
            loops.abort_all();
            while loops.join_next().await.is_some() {}
        }
        executor.shutdown().await;
        // Each step is bounded: a worker told to stop while Redis is away
        // exits within seconds.
        if !redis_away {
            match tokio::time::timeout(SHUTDOWN_STEP, session.deregister()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not remove the heartbeat"),
                Err(_) => {
                    redis_away = true;
                    tracing::warn!("Redis did not answer; the heartbeat will expire by itself");
                }
            }
        } else {
            tracing::warn!("Redis is not answering; the heartbeat will expire by itself");
        }
        if !redis_away {
            let _ = tokio::time::timeout(SHUTDOWN_STEP, broker.close()).await;
        }
        if self.slots.is_none() {
            // A sharded worker closes it once every shard has stopped.
            let _ = tokio::time::timeout(SHUTDOWN_STEP, self.memory.close()).await;
        }
        self.status.connected.store(false, Ordering::Relaxed);
        tracing::info!(worker_id = self.worker_id, "worker stopped");
        if conflict {
            return Err(exo_broker::Error::WorkerIdInUse {
                worker_id: self.worker_id.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Connects, retrying with backoff while Redis is unreachable. `None`
    /// when shut down before a connection was made.
    async fn connect(&self) -> Result<Option<Broker>> {
        let mut attempt = 0u32;
        loop {
            match Broker::connect(self.broker_config()).await {
                Ok(broker) => return Ok(Some(broker)),
                Err(error) if error.is_unreachable() => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "Redis unreachable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        () = self.shutdown.cancelled() => return Ok(None),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn claim_loop(
        &self,
        shared: &Arc<Shared>,
        executor: &Arc<dyn Executor>,
        tasks: &mut JoinSet<()>,
    ) {
        let slots = shared.slots.semaphore.clone();
        let mut claimer = shared.session.claimer();
        let mut failures = 0u32;
        // Slots shared with other shards' loops: the last look with every
        // free slot found nothing, so the next one waits for a task with
        // one slot only (the others stay free for the other shards).
        let mut quiet = false;
        loop {
            while tasks.try_join_next().is_some() {}
            shared.slots.set_waiting(shared.shard, true);
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            shared.slots.set_waiting(shared.shard, false);
            if self.shutdown.is_cancelled() {
                break;
            }
            // A worker cut off from Redis takes no new work.
            if shared.paused() {
                drop(first);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = self.shutdown.cancelled() => break,
                }
                continue;
            }
            // The free slots this claim may fill are taken before it runs:
            // another shard's loop may claim for them meanwhile.
            let mut extra = Vec::new();
            if !(quiet && shared.slots.shared()) {
                while let Ok(permit) = slots.clone().try_acquire_owned() {
                    extra.push(permit);
                }
            }
            let look_only = shared.slots.shared() && !extra.is_empty();
            let block = if look_only {
                Duration::ZERO
            } else {
                self.config.claim_block
            };
            let claiming = claimer.claim(1 + extra.len(), block);
            tokio::pin!(claiming);
            let claimed = tokio::select! {
                claimed = &mut claiming => claimed,
                () = self.shutdown.cancelled() => {
                    // Give a claim under way a moment to land (its tasks are
                    // then handed back below); past that, Redis is away.
                    match tokio::time::timeout(Duration::from_secs(1), &mut claiming).await {
                        Ok(claimed) => claimed,
                        Err(_) => break,
                    }
                }
            };
            let claim = match claimed {
                Ok(claim) => {
                    failures = 0;
                    self.status.connected.store(true, Ordering::Relaxed);
                    claim
                }
                Err(error) => {
                    drop(first);
                    failures += 1;
                    if error.is_unreachable() {
                        self.status.connected.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(%error, failures, "claim failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            quiet = look_only && claim.tasks.is_empty();
            shared.note_rejected(&claim.rejected);
            if self.shutdown.is_cancelled() && !claim.tasks.is_empty() {
                let leases: Vec<_> = claim.tasks.iter().map(|task| task.lease.clone()).collect();
                if let Err(error) = shared.session.release(&leases).await {
                    tracing::warn!(%error, "could not hand back tasks claimed during shutdown");
                }
                break;
            }
            let mut first = Some(first);
            for task in claim.tasks {
                let permit = match first.take().or_else(|| extra.pop()) {
                    Some(permit) => permit,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            tracing::error!(
                                task_id = task.lease.task_id,
                                "claimed more tasks than free slots; handing it back"
                            );
                            let _ = shared
                                .session
                                .release(std::slice::from_ref(&task.lease))
                                .await;
                            continue;
                        }
                    },
                };
                let first = Held::register(shared, task);
                let shared = shared.clone();
                let executor = executor.clone();
                let hooks = self.hooks.clone();
                // The slot runs its task, then the tasks its final writes
                // claim, until none come.
                let held = shared.slots.held_by(shared.shard);
                tasks.spawn(async move {
                    run_slot(shared, executor, hooks, first).await;
                    drop(held);
                    drop(permit);
                });
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_STEP, claimer.close()).await;
    }
}

/// The longest one step of a shutdown waits for Redis.
pub(crate) const SHUTDOWN_STEP: Duration = Duration::from_secs(1);

async fn wait_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// The wait before retrying a write Redis did not take: 100 ms doubling to
/// 5 s, each wait between half and all of that.
pub(crate) fn backoff(attempt: u32) -> Duration {
    use rand::RngExt;
    exo_proto::Backoff {
        base: Duration::from_millis(100),
        multiplier: 2,
        max: Duration::from_secs(5),
        jitter: exo_proto::Jitter::UpperHalf,
    }
    .jittered(attempt, rand::rng().random_range(0.0..=1.0))
}
