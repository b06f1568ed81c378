//! The worker's background work, in one task: the heartbeat (and the
//! pause when none lands), the reaper, the queue measurements and the cancel
//! signals, as one `select!` over a closed [`Tick`] enum. Calls to Redis run
//! as futures the loop polls, at most one of each kind at a time, so a slow
//! reaper pass never delays a heartbeat, and a panic in one fails that call,
//! not the loop.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use exo_broker::CancelListener;
use exo_observability::record::{self, QueueSample, TaskLabels};
use futures::{FutureExt, future::BoxFuture};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    builder::WorkerStatus,
    config::WorkerConfig,
    runtime::{SHUTDOWN_STEP, backoff},
    state::{Shared, StopReason},
};

/// What one heartbeat call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// It landed; leases are renewed.
    Landed,
    /// It failed or timed out.
    Failed,
    /// Another live process uses this worker id.
    Conflict,
}

/// The heartbeat's fixed rate: a third of the TTL, as the reference writes
/// it.
pub(crate) fn heartbeat_interval(config: &WorkerConfig) -> Duration {
    (key_ttl(config) / 3).max(Duration::from_millis(200))
}

/// The TTL the heartbeat key really gets: whole seconds (EXPIRE), at least
/// one.
fn key_ttl(config: &WorkerConfig) -> Duration {
    Duration::from_secs(config.broker.heartbeat_ttl.as_secs().max(1))
}

/// How long one heartbeat call may take: below the interval, so a slow
/// call never delays the next one.
fn heartbeat_call_timeout(config: &WorkerConfig) -> Duration {
    heartbeat_interval(config).mul_f64(0.8)
}

/// How long after the send of the last heartbeat that landed the worker
/// pauses its runs: one interval before its key can expire (the key's TTL
/// started no earlier than that send), so no run starts a model or tool call
/// once another worker may take its task over. With the reference's
/// interval of a third of the TTL, that is after one heartbeat failed and
/// the next has not landed yet.
pub(crate) fn pause_after(config: &WorkerConfig) -> Duration {
    let interval = heartbeat_interval(config);
    key_ttl(config).saturating_sub(interval).max(interval * 2)
}

pub(crate) async fn heartbeat_once(shared: &Shared) -> Beat {
    let health = shared.health();
    let leases = shared.registry.leases();
    let sent = std::time::Instant::now();
    let call = shared
        .session
        .heartbeat(&health, shared.config.broker.heartbeat_ttl, &leases);
    let result = match tokio::time::timeout(heartbeat_call_timeout(&shared.config), call).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                timeout = ?heartbeat_call_timeout(&shared.config),
                "heartbeat timed out"
            );
            record::loop_error(&shared.worker_id, "heartbeat");
            return Beat::Failed;
        }
    };
    match result {
        Ok(report) => {
            shared.heartbeat_landed(sent);
            let attempt_of = |task_id: &str| {
                leases
                    .iter()
                    .find(|lease| lease.task_id == task_id)
                    .map(|lease| lease.attempt)
            };
            for task_id in report.cancelled {
                if let Some(attempt) = attempt_of(&task_id)
                    && shared
                        .registry
                        .stop_attempt(&task_id, attempt, StopReason::Cancelled)
                {
                    tracing::info!(task_id, "cancel found by the heartbeat");
                }
            }
            for task_id in report.lost {
                if let Some(attempt) = attempt_of(&task_id)
                    && shared
                        .registry
                        .stop_attempt(&task_id, attempt, StopReason::Lost)
                {
                    tracing::warn!(
                        task_id,
                        "task was reclaimed by another worker; stopping this attempt"
                    );
                }
            }
            if report.handed_back > 0 {
                tracing::warn!(
                    count = report.handed_back,
                    "handed back tasks whose claim reply was lost"
                );
            }
            // Lost attempts are stopped first; the others may go on.
            if shared.paused() {
                // `send_replace`, not `send`: `send` leaves the value as it
                // is when no run holds a receiver, and the worker would
                // then stay paused (claiming nothing) for good.
                shared.pause.send_replace(false);
                tracing::info!("heartbeat landed again; resuming the paused runs");
            }
            Beat::Landed
        }
        Err(exo_broker::Error::WorkerIdInUse { worker_id }) => {
            tracing::error!(
                worker_id,
                "another live process heartbeats under this worker id; give each process its own id"
            );
            Beat::Conflict
        }
        Err(error) => {
            tracing::warn!(%error, "heartbeat failed");
            record::loop_error(&shared.worker_id, "heartbeat");
            Beat::Failed
        }
    }
}

/// What the background loop does next. Closed: every kind of background
/// work is a variant here and one arm of [`background`].
#[derive(Debug)]
enum Tick {
    /// Told to stop.
    Stop,
    /// Time for a heartbeat.
    Heartbeat,
    /// A heartbeat call came back.
    HeartbeatDone(Beat),
    /// No heartbeat has landed for [`pause_after`]: pause the runs.
    Pause,
    /// Time for a reaper pass.
    Reap,
    /// A reaper pass came back.
    ReapDone,
    /// Time to fire the due cron schedules.
    Schedules,
    /// The schedules pass came back.
    SchedulesDone,
    /// Time to measure the queue.
    Stats,
    /// The measurement came back.
    StatsDone,
    /// A cancel signal for a task; `None` when the subscription closed.
    Cancel(Option<String>),
    /// A (re)subscription to cancel signals came back.
    Subscribed(Option<CancelListener>),
    /// Time to subscribe again after a failure.
    Resubscribe,
}

/// One call to Redis in flight, polled by the loop.
type InFlight<T> = Option<BoxFuture<'static, T>>;

/// Waits for the call in `slot`, then empties it; never returns while the
/// slot is empty.
async fn landed<T>(slot: &mut InFlight<T>) -> T {
    match slot {
        Some(call) => {
            let value = call.await;
            *slot = None;
            value
        }
        None => std::future::pending().await,
    }
}

/// Runs `call`, turning a panic into `on_panic` (with a log line and a
/// metric) so one failed call never ends the loop.
fn guarded<T: Send + 'static>(
    shared: &Arc<Shared>,
    name: &'static str,
    call: impl std::future::Future<Output = T> + Send + 'static,
    on_panic: T,
) -> BoxFuture<'static, T> {
    let worker_id = shared.worker_id.clone();
    async move {
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(value) => value,
            Err(_) => {
                tracing::error!(name, "background call panicked");
                record::loop_error(&worker_id, name);
                on_panic
            }
        }
    }
    .boxed()
}

/// The reaper's wait: its interval with ±20 % jitter, so the fleet's passes
/// spread out.
fn reap_wait(config: &WorkerConfig) -> Duration {
    use rand::RngExt;
    config
        .reap_interval
        .mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The worker's background work until `stop` (or a worker-id conflict, when
/// the caller stops the worker). Heartbeats go at a fixed rate; when none has
/// landed for [`pause_after`] (measured from its send), the worker pauses its
/// runs: they start no new model or tool call until a heartbeat lands again
/// and says which of them the worker still owns (those lost are stopped, the
/// others resume). A Redis stall therefore costs time, not work, and a
/// worker cut off from Redis stops spending before another may take its
/// tasks. A paused worker does not reap: it does not judge others.
pub(crate) async fn background(
    shared: Arc<Shared>,
    stop: CancellationToken,
    status: Arc<WorkerStatus>,
    first_listener: Option<CancelListener>,
) -> LoopEnd {
    let config = shared.config.clone();
    let interval = heartbeat_interval(&config);
    let pause_after = pause_after(&config);
    let mut heartbeat_ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    heartbeat_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let measure = !config.stats_interval.is_zero();
    let mut next_reap = Instant::now() + reap_wait(&config);
    let mut next_stats = Instant::now();
    let mut heartbeat: InFlight<Beat> = None;
    let mut reap: InFlight<()> = None;
    let mut stats: InFlight<()> = None;
    let fire_schedules = !config.schedule_interval.is_zero();
    let mut next_schedules = Instant::now() + config.schedule_interval;
    let mut schedules: InFlight<()> = None;
    let mut subscribe: InFlight<Option<CancelListener>> = None;
    let mut listener = first_listener;
    let mut subscribe_failures = 0u32;
    let mut resubscribe_at = listener.is_none().then(|| Instant::now() + backoff(0));
    loop {
        let pause_at = Instant::from_std(shared.last_landed_send() + pause_after);
        let paused = shared.paused();
        let tick = tokio::select! {
            biased;
            () = stop.cancelled() => Tick::Stop,
            beat = landed(&mut heartbeat) => Tick::HeartbeatDone(beat),
            () = tokio::time::sleep_until(pause_at), if !paused => Tick::Pause,
            _ = heartbeat_ticker.tick(), if heartbeat.is_none() => Tick::Heartbeat,
            task_id = async { listener.as_mut()?.recv().await }, if listener.is_some() => {
                Tick::Cancel(task_id)
            }
            subscribed = landed(&mut subscribe) => Tick::Subscribed(subscribed),
            () = tokio::time::sleep_until(resubscribe_at.unwrap_or_else(Instant::now)),
                if resubscribe_at.is_some() && subscribe.is_none() => Tick::Resubscribe,
            () = landed(&mut reap) => Tick::ReapDone,
            () = tokio::time::sleep_until(next_reap), if reap.is_none() => Tick::Reap,
            () = landed(&mut schedules) => Tick::SchedulesDone,
            () = tokio::time::sleep_until(next_schedules),
                if fire_schedules && schedules.is_none() => Tick::Schedules,
            () = landed(&mut stats) => Tick::StatsDone,
            () = tokio::time::sleep_until(next_stats), if measure && stats.is_none() => Tick::Stats,
        };
        match tick {
            Tick::Stop => {
                if let Some(listener) = listener.take() {
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, listener.close()).await;
                }
                return LoopEnd::Stopped;
            }
            Tick::Heartbeat => {
                let call = {
                    let shared = shared.clone();
                    async move { heartbeat_once(&shared).await }
                };
                heartbeat = Some(guarded(&shared, "heartbeat", call, Beat::Failed));
            }
            Tick::HeartbeatDone(beat) => {
                status
                    .connected
                    .store(beat == Beat::Landed, Ordering::Relaxed);
                if beat == Beat::Conflict {
                    for task in shared.registry.running().values() {
                        task.stop(StopReason::Lost);
                    }
                    if let Some(listener) = listener.take() {
                        let _ = tokio::time::timeout(SHUTDOWN_STEP, listener.close()).await;
                    }
                    return LoopEnd::Conflict;
                }
            }
            Tick::Pause => {
                tracing::warn!(
                    since = ?shared.last_landed_send().elapsed(),
                    running = shared.registry.running().len(),
                    "no heartbeat has landed for too long; pausing the runs until Redis answers"
                );
                shared.pause.send_replace(true);
            }
            Tick::Reap => {
                if shared.paused() {
                    next_reap = Instant::now() + reap_wait(&config);
                } else {
                    let call = {
                        let shared = shared.clone();
                        async move { reap_once(&shared).await }
                    };
                    reap = Some(guarded(&shared, "reaper", call, ()));
                }
            }
            Tick::ReapDone => next_reap = Instant::now() + reap_wait(&config),
            Tick::Schedules => {
                if shared.paused() {
                    next_schedules = Instant::now() + config.schedule_interval;
                } else {
                    let call = {
                        let shared = shared.clone();
                        async move { fire_schedules_once(&shared).await }
                    };
                    schedules = Some(guarded(&shared, "schedules", call, ()));
                }
            }
            Tick::SchedulesDone => next_schedules = Instant::now() + config.schedule_interval,
            Tick::Stats => {
                let call = {
                    let shared = shared.clone();
                    async move { measure_once(&shared).await }
                };
                stats = Some(guarded(&shared, "stats", call, ()));
            }
            Tick::StatsDone => next_stats = Instant::now() + config.stats_interval,
            Tick::Cancel(Some(task_id)) => {
                if shared.registry.stop_task(&task_id, StopReason::Cancelled) {
                    tracing::info!(task_id, "cancel signal received");
                } else {
                    // Perhaps claimed here but not registered yet.
                    shared.registry.remember_cancel(&task_id);
                }
            }
            Tick::Cancel(None) => {
                tracing::warn!("the cancel subscription closed; subscribing again");
                listener = None;
                resubscribe_at = Some(Instant::now());
            }
            Tick::Resubscribe => {
                resubscribe_at = None;
                let call = {
                    let session = shared.session.clone();
                    async move {
                        match session.cancel_listener().await {
                            Ok(listener) => Some(listener),
                            Err(error) => {
                                tracing::warn!(%error, "cannot subscribe to cancel signals; the heartbeat still checks for cancels");
                                None
                            }
                        }
                    }
                };
                subscribe = Some(guarded(&shared, "cancel", call, None));
            }
            Tick::Subscribed(Some(subscribed)) => {
                subscribe_failures = 0;
                listener = Some(subscribed);
            }
            Tick::Subscribed(None) => {
                subscribe_failures += 1;
                record::loop_error(&shared.worker_id, "cancel");
                resubscribe_at = Some(Instant::now() + backoff(subscribe_failures));
            }
        }
    }
}

/// Fires the cron schedules that are due, logged.
async fn fire_schedules_once(shared: &Shared) {
    match shared.broker.schedules().fire_due().await {
        Ok(fired) => {
            for tick in fired.iter().filter(|tick| tick.created) {
                tracing::info!(
                    schedule = tick.schedule,
                    tick = tick.tick,
                    task_id = tick.task_id,
                    "fired a scheduled task"
                );
            }
        }
        Err(error) => {
            record::loop_error(&shared.worker_id, "schedules");
            tracing::warn!(%error, "firing the due schedules failed");
        }
    }
}

/// One reaper pass, logged.
async fn reap_once(shared: &Shared) {
    match shared.session.reap(100).await {
        Ok(report) => {
            if report.requeued + report.failed + report.reconciled > 0 {
                record::tasks_reclaimed(
                    TaskLabels::new(shared.config.broker.keys.queue(), &shared.worker_id),
                    report.requeued + report.failed,
                );
                tracing::warn!(
                    requeued = report.requeued,
                    failed = report.failed,
                    reconciled = report.reconciled,
                    "reclaimed stuck tasks"
                );
            }
            if report.quiet {
                tracing::info!(
                    "the fleet clock saw a stall; reclaiming nothing for one heartbeat TTL"
                );
            }
        }
        Err(error) => {
            record::loop_error(&shared.worker_id, "reaper");
            tracing::warn!(%error, "reaper pass failed");
        }
    }
}

/// Measures the queue (and the fleet) from Redis for the depth gauges.
async fn measure_once(shared: &Shared) {
    let admin = shared.broker.admin();
    match admin.queue_stats().await {
        Ok(stats) => record::queue_measured(
            shared.config.broker.keys.queue(),
            &QueueSample {
                depth: stats.depth(),
                lag: stats.lag,
                pending: stats.pending,
                delayed: stats.delayed,
                dead_letter: stats.dead_letter,
            },
        ),
        Err(error) => {
            record::loop_error(&shared.worker_id, "stats");
            tracing::debug!(%error, "queue stats failed");
        }
    }
    record::redis_round_trips(
        &shared.worker_id,
        shared.broker.keys().queue(),
        shared.broker.round_trips(),
    );
    let mut scan = shared
        .fleet_scan
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let fleet = admin.fleet_scanning(&mut scan).await;
    *shared
        .fleet_scan
        .lock()
        .unwrap_or_else(|poison| poison.into_inner()) = scan;
    if let Ok(fleet) = fleet {
        let now = exo_proto::time::now_seconds();
        record::workers_alive(fleet.iter().filter(|entry| entry.alive(now)).count() as u64);
    }
}

/// How a background loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoopEnd {
    /// Told to stop.
    Stopped,
    /// The worker id is in use by another process: the worker must stop.
    Conflict,
}

/// Runs a background loop, restarting it (with a warning and a metric)
/// when it ends without being told to or panics, so a worker never goes on
/// claiming without its heartbeat or reaper.
pub(crate) async fn supervise<F, Fut>(
    shared: Arc<Shared>,
    name: &'static str,
    stop: CancellationToken,
    mut start: F,
) -> LoopEnd
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = LoopEnd> + Send + 'static,
{
    /// Aborts the loop's task when the supervisor is dropped (aborted at
    /// shutdown), so no loop outlives its worker.
    struct AbortOnDrop(tokio::task::JoinHandle<LoopEnd>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut restarts = 0u32;
    loop {
        let mut running = AbortOnDrop(tokio::spawn(start()));
        let ended = (&mut running.0).await;
        match ended {
            Ok(LoopEnd::Conflict) => return LoopEnd::Conflict,
            Ok(LoopEnd::Stopped) if stop.is_cancelled() => return LoopEnd::Stopped,
            Ok(LoopEnd::Stopped) => {
                tracing::warn!(name, "background loop ended by itself; restarting it");
            }
            Err(join) => {
                tracing::error!(name, error = %join, "background loop panicked; restarting it");
            }
        }
        if stop.is_cancelled() {
            return LoopEnd::Stopped;
        }
        record::loop_error(&shared.worker_id, name);
        restarts += 1;
        tokio::select! {
            () = tokio::time::sleep(backoff(restarts)) => {}
            () = stop.cancelled() => return LoopEnd::Stopped,
        }
    }
}
