//! Every metric exo records: its name, unit, labels and description, and one
//! small function per kind of sample.
//!
//! The worker and the CLI call these functions instead of the `metrics`
//! macros, so that a metric's name and label set are written down once, here.
//! Each function records through the `metrics` facade: with no recorder
//! installed it does nothing.
//!
//! Labels are bounded: the queue name, the worker id, the task status and the
//! event type. A task's identifier is never a label. The reference puts it on
//! its metrics, which gives every task its own time series and makes the
//! series count grow without bound; a task is found through its hash and its
//! event stream instead.

use std::time::Duration;

use exo_proto::TaskStatus;
use metrics::Unit;

/// Tasks submitted to the queue (counter).
pub const TASKS_SUBMITTED: &str = "exo.distributed.tasks.submitted";
/// Tasks that finished with a result (counter).
pub const TASKS_COMPLETED: &str = "exo.distributed.tasks.completed";
/// Tasks that failed with no retries left (counter).
pub const TASKS_FAILED: &str = "exo.distributed.tasks.failed";
/// Tasks that were cancelled while running (counter).
pub const TASKS_CANCELLED: &str = "exo.distributed.tasks.cancelled";
/// Attempts that failed and were scheduled to run again (counter).
pub const TASKS_RETRIED: &str = "exo.distributed.tasks.retried";
/// Tasks taken over from a worker presumed dead (counter).
pub const TASKS_RECLAIMED: &str = "exo.distributed.tasks.reclaimed";
/// Tasks a worker handed back to the queue without charging a retry: held
/// ahead behind a task that ran long, or still held or running when it
/// drained (counter).
pub const TASKS_HANDED_BACK: &str = "exo.distributed.tasks.handed_back";
/// Background loops of a worker (heartbeat, reaper, cancel, stats) that
/// failed a pass or ended and were restarted (counter, label `loop`).
pub const WORKER_LOOP_ERRORS: &str = "exo.distributed.worker.loop_errors";
/// Tasks waiting to start: undelivered entries plus delayed retries (gauge).
pub const QUEUE_DEPTH: &str = "exo.distributed.queue.depth";
/// Queue entries not yet delivered to any worker (gauge).
pub const QUEUE_LAG: &str = "exo.distributed.queue.lag";
/// Queue entries claimed and not yet acknowledged (gauge).
pub const QUEUE_PENDING: &str = "exo.distributed.queue.pending";
/// Tasks waiting for their next retry (gauge).
pub const QUEUE_DELAYED: &str = "exo.distributed.queue.delayed";
/// Entries in the dead-letter stream (gauge).
pub const QUEUE_DEAD_LETTER: &str = "exo.distributed.queue.dead_letter";
/// Workers whose heartbeat is recent (gauge).
pub const WORKERS_ALIVE: &str = "exo.distributed.workers.alive";
/// Round trips this process made to Redis (counter).
pub const REDIS_ROUND_TRIPS: &str = "exo.redis.round_trips";
/// How long a task ran, per attempt, in seconds (histogram).
pub const TASK_DURATION: &str = "exo.distributed.task.duration";
/// Time from submission to the start of execution, in seconds (histogram).
pub const TASK_WAIT_TIME: &str = "exo.distributed.task.wait_time";
/// Events published to task event streams (counter).
pub const EVENTS_EMITTED: &str = "exo.stream.events.emitted";
/// How long publishing one event took, in seconds (histogram).
pub const EVENT_PUBLISH_DURATION: &str = "exo.stream.event.publish_duration";

/// Model calls admitted under a fleet-wide rate-limit rule (counter, label
/// `rule`).
pub const MODEL_CALLS_ADMITTED: &str = "exo.model.calls.admitted";
/// Times a model call was told to wait for capacity under a fleet-wide
/// rate-limit rule (counter, labels `rule` and `reason`).
pub const MODEL_CALLS_WAITED: &str = "exo.model.calls.waited";
/// Tokens the model calls sent by this worker used, as the providers
/// reported them (counter, labels `model` and `kind`: `input` or
/// `output`).
pub const MODEL_TOKENS: &str = "exo.model.tokens";
/// What those calls cost by the worker's price table, in millionths of a
/// US dollar (counter, label `model`).
pub const MODEL_COST: &str = "exo.model.cost_micro_usd";

/// The label holding a model string.
pub const LABEL_MODEL: &str = "model";
/// The label saying which tokens (`input` or `output`).
pub const LABEL_KIND: &str = "kind";
/// The label holding the queue (stream) name.
pub const LABEL_QUEUE: &str = "queue";
/// The label holding the worker id.
pub const LABEL_WORKER: &str = "worker_id";
/// The label naming a worker's background loop.
pub const LABEL_LOOP: &str = "loop";
/// The label holding a task status (`completed`, `failed`, ...).
pub const LABEL_STATUS: &str = "status";
/// The label holding an event type (`text`, `tool_call`, ...).
pub const LABEL_EVENT_TYPE: &str = "event_type";
/// The label naming a rate-limit rule (a model, as configured by the
/// operator: bounded).
pub const LABEL_RULE: &str = "rule";
/// The label naming the limit that held a call (`requests`, `tokens`,
/// `paused`).
pub const LABEL_REASON: &str = "reason";

/// The three kinds of metric the facade knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonically increasing count.
    Counter,
    /// A value that is set, and may go down.
    Gauge,
    /// A distribution of samples.
    Histogram,
}

/// Everything known about one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    /// The dotted name, e.g. `exo.distributed.tasks.completed`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit, which also picks the Prometheus name suffix.
    pub unit: Unit,
    /// One sentence for the `# HELP` line.
    pub description: &'static str,
    /// Every label the metric may carry.
    pub labels: &'static [&'static str],
    /// Histogram bucket bounds (seconds); empty for counters and gauges.
    pub buckets: &'static [f64],
}

/// Buckets for task run and wait times: agent tasks take from a fraction of
/// a second to many minutes.
pub const TASK_SECONDS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Buckets for one event publish: a Redis round trip, from well under a
/// millisecond to a second when Redis is struggling.
pub const PUBLISH_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

const TASK_LABELS: &[&str] = &[LABEL_QUEUE, LABEL_WORKER];

/// Every metric exo records.
pub const METRICS: &[MetricSpec] = &[
    counter(
        REDIS_ROUND_TRIPS,
        "Round trips this process made to Redis (each Lua script call is one), by queue shard.",
        &[LABEL_WORKER, LABEL_QUEUE],
    ),
    counter(
        WORKER_LOOP_ERRORS,
        "Passes of a worker's background loops (heartbeat, reaper, cancel, stats) that failed, and loops restarted after they ended.",
        &[LABEL_WORKER, LABEL_LOOP],
    ),
    counter(
        TASKS_SUBMITTED,
        "Tasks submitted to the queue.",
        &[LABEL_QUEUE],
    ),
    counter(
        TASKS_COMPLETED,
        "Tasks that finished with a result.",
        TASK_LABELS,
    ),
    counter(
        TASKS_FAILED,
        "Tasks that failed with no retries left.",
        TASK_LABELS,
    ),
    counter(
        TASKS_CANCELLED,
        "Tasks cancelled while running.",
        TASK_LABELS,
    ),
    counter(
        TASKS_RETRIED,
        "Task attempts that failed and were scheduled to run again.",
        TASK_LABELS,
    ),
    counter(
        TASKS_RECLAIMED,
        "Tasks taken over from a worker presumed dead.",
        TASK_LABELS,
    ),
    counter(
        TASKS_HANDED_BACK,
        "Tasks a worker handed back to the queue without charging a retry (held ahead behind a long task, or at a drain).",
        TASK_LABELS,
    ),
    gauge(
        QUEUE_DEPTH,
        "Tasks waiting to start: undelivered queue entries plus delayed retries.",
    ),
    gauge(QUEUE_LAG, "Queue entries not yet delivered to any worker."),
    gauge(
        QUEUE_PENDING,
        "Queue entries claimed by a worker and not yet acknowledged.",
    ),
    gauge(QUEUE_DELAYED, "Tasks waiting for their next retry."),
    gauge(QUEUE_DEAD_LETTER, "Entries in the dead-letter stream."),
    MetricSpec {
        name: WORKERS_ALIVE,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        description: "Workers whose last heartbeat is recent.",
        labels: &[],
        buckets: &[],
    },
    MetricSpec {
        name: TASK_DURATION,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        description: "How long one task attempt ran, by final status.",
        labels: &[LABEL_QUEUE, LABEL_WORKER, LABEL_STATUS],
        buckets: TASK_SECONDS_BUCKETS,
    },
    MetricSpec {
        name: TASK_WAIT_TIME,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        description: "Time from submission to the start of execution.",
        labels: TASK_LABELS,
        buckets: TASK_SECONDS_BUCKETS,
    },
    counter(
        EVENTS_EMITTED,
        "Events published to task event streams.",
        &[LABEL_EVENT_TYPE],
    ),
    counter(
        MODEL_CALLS_ADMITTED,
        "Model calls admitted under a fleet-wide rate-limit rule.",
        &[LABEL_RULE],
    ),
    counter(
        MODEL_CALLS_WAITED,
        "Times a model call was told to wait for capacity under a fleet-wide rate-limit rule.",
        &[LABEL_RULE, LABEL_REASON],
    ),
    counter(
        MODEL_TOKENS,
        "Tokens the model calls sent by this worker used, as the providers reported them.",
        &[LABEL_MODEL, LABEL_KIND],
    ),
    counter(
        MODEL_COST,
        "What the model calls sent by this worker cost by its price table, in millionths of a US dollar.",
        &[LABEL_MODEL],
    ),
    MetricSpec {
        name: EVENT_PUBLISH_DURATION,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        description: "How long publishing one batch of events to a task's stream took (one round trip).",
        labels: &[],
        buckets: PUBLISH_SECONDS_BUCKETS,
    },
];

const fn counter(
    name: &'static str,
    description: &'static str,
    labels: &'static [&'static str],
) -> MetricSpec {
    MetricSpec {
        name,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        description,
        labels,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, description: &'static str) -> MetricSpec {
    MetricSpec {
        name,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        description,
        labels: &[LABEL_QUEUE],
        buckets: &[],
    }
}

/// Registers the description and unit of every metric with the installed
/// recorder. [`install`](crate::install) calls it; call it again only after
/// installing a recorder of your own.
pub fn describe_metrics() {
    for spec in METRICS {
        match spec.kind {
            MetricKind::Counter => {
                metrics::describe_counter!(spec.name, spec.unit, spec.description);
            }
            MetricKind::Gauge => metrics::describe_gauge!(spec.name, spec.unit, spec.description),
            MetricKind::Histogram => {
                metrics::describe_histogram!(spec.name, spec.unit, spec.description);
            }
        }
    }
}

/// Where a task ran: the labels of the worker-side task metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLabels<'a> {
    /// The queue stream the task came from.
    pub queue: &'a str,
    /// The worker that ran it.
    pub worker_id: &'a str,
}

impl<'a> TaskLabels<'a> {
    /// Labels for this queue and worker.
    pub fn new(queue: &'a str, worker_id: &'a str) -> Self {
        TaskLabels { queue, worker_id }
    }

    fn pairs(self) -> [(&'static str, String); 2] {
        [
            (LABEL_QUEUE, self.queue.to_owned()),
            (LABEL_WORKER, self.worker_id.to_owned()),
        ]
    }
}

/// The queue's numbers at one moment, as the worker measures them from
/// Redis on an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueSample {
    /// Tasks waiting to start (undelivered, delayed, prioritized and held).
    pub depth: u64,
    /// Entries not yet delivered, when Redis can tell.
    pub lag: Option<u64>,
    /// Entries claimed and not yet acknowledged.
    pub pending: u64,
    /// Tasks waiting for a retry.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letter: u64,
}

/// A client submitted a task to `queue`.
pub fn task_submitted(queue: &str) {
    metrics::counter!(TASKS_SUBMITTED, LABEL_QUEUE => queue.to_owned()).increment(1);
}

/// A worker started a task that was submitted at `created_at` (Unix
/// seconds); records the wait time up to `now`.
///
/// A payload without a submission time (`created_at` of zero, the reference
/// default) records nothing, and clock skew that would make the wait
/// negative records zero.
pub fn task_started(labels: TaskLabels<'_>, created_at: f64, now: f64) {
    if !(created_at.is_finite() && now.is_finite()) || created_at <= 0.0 {
        return;
    }
    let waited = (now - created_at).max(0.0);
    metrics::histogram!(TASK_WAIT_TIME, &labels.pairs()).record(waited);
}

/// A task attempt ended with `status` after running for `ran_for`.
///
/// `completed`, `failed` and `cancelled` count towards their counters and
/// `retrying` towards [`TASKS_RETRIED`]; every one of them records the
/// attempt's duration, labelled with the status. `pending` and `running` are
/// not endings and record nothing.
pub fn task_finished(labels: TaskLabels<'_>, status: TaskStatus, ran_for: Duration) {
    let counter_name = match status {
        TaskStatus::Completed => TASKS_COMPLETED,
        TaskStatus::Failed => TASKS_FAILED,
        TaskStatus::Cancelled => TASKS_CANCELLED,
        TaskStatus::Retrying => TASKS_RETRIED,
        TaskStatus::Pending | TaskStatus::Running => return,
    };
    metrics::counter!(counter_name, &labels.pairs()).increment(1);
    metrics::histogram!(
        TASK_DURATION,
        LABEL_QUEUE => labels.queue.to_owned(),
        LABEL_WORKER => labels.worker_id.to_owned(),
        LABEL_STATUS => status.as_str(),
    )
    .record(ran_for.as_secs_f64());
}

/// A worker took over `count` tasks from workers presumed dead.
pub fn tasks_reclaimed(labels: TaskLabels<'_>, count: u64) {
    if count > 0 {
        metrics::counter!(TASKS_RECLAIMED, &labels.pairs()).increment(count);
    }
}

/// A worker handed `count` tasks back to the queue without charging a
/// retry.
pub fn tasks_handed_back(labels: TaskLabels<'_>, count: u64) {
    if count > 0 {
        metrics::counter!(TASKS_HANDED_BACK, &labels.pairs()).increment(count);
    }
}

/// A pass of a worker's background loop failed (or the loop ended and was
/// restarted).
pub fn loop_error(worker_id: &str, loop_name: &'static str) {
    metrics::counter!(WORKER_LOOP_ERRORS, LABEL_WORKER => worker_id.to_owned(), LABEL_LOOP => loop_name)
        .increment(1);
}

/// The queue was measured; sets the queue gauges. The lag gauge is left
/// alone when Redis could not tell the lag.
pub fn queue_measured(queue: &str, sample: &QueueSample) {
    let set = |name: &'static str, value: u64| {
        metrics::gauge!(name, LABEL_QUEUE => queue.to_owned()).set(value as f64);
    };
    set(QUEUE_DEPTH, sample.depth);
    if let Some(lag) = sample.lag {
        set(QUEUE_LAG, lag);
    }
    set(QUEUE_PENDING, sample.pending);
    set(QUEUE_DELAYED, sample.delayed);
    set(QUEUE_DEAD_LETTER, sample.dead_letter);
}

/// The fleet was measured: `count` workers have a recent heartbeat.
pub fn workers_alive(count: u64) {
    metrics::gauge!(WORKERS_ALIVE).set(count as f64);
}

/// The process has made `total` round trips to Redis so far for `queue`
/// (one count per queue shard a worker consumes).
pub fn redis_round_trips(worker_id: &str, queue: &str, total: u64) {
    metrics::counter!(
        REDIS_ROUND_TRIPS,
        LABEL_WORKER => worker_id.to_owned(),
        LABEL_QUEUE => queue.to_owned()
    )
    .absolute(total);
}

/// One event of type `event_type` (see `StreamEvent::kind`) was emitted
/// to a task's stream.
///
/// The type is a `&'static str` so that only the fixed set of event types
/// can become label values.
pub fn event_emitted(event_type: &'static str) {
    metrics::counter!(EVENTS_EMITTED, LABEL_EVENT_TYPE => event_type).increment(1);
}

/// A batch of events went to a task's stream in one round trip that took
/// `took`.
pub fn events_published(took: Duration) {
    metrics::histogram!(EVENT_PUBLISH_DURATION).record(took.as_secs_f64());
}

/// A model call was admitted under the rate-limit rule `rule`.
pub fn model_call_admitted(rule: &str) {
    metrics::counter!(MODEL_CALLS_ADMITTED, LABEL_RULE => rule.to_owned()).increment(1);
}

/// Model calls of `model` used these tokens and cost this much (millionths
/// of a dollar; 0 without a price).
pub fn model_usage(model: &str, input_tokens: u64, output_tokens: u64, cost_micros: u64) {
    metrics::counter!(MODEL_TOKENS, LABEL_MODEL => model.to_owned(), LABEL_KIND => "input")
        .increment(input_tokens);
    metrics::counter!(MODEL_TOKENS, LABEL_MODEL => model.to_owned(), LABEL_KIND => "output")
        .increment(output_tokens);
    if cost_micros > 0 {
        metrics::counter!(MODEL_COST, LABEL_MODEL => model.to_owned()).increment(cost_micros);
    }
}

/// A model call was told to wait under `rule`, held by `reason`
/// (`requests`, `tokens` or `paused`).
pub fn model_call_waited(rule: &str, reason: &'static str) {
    metrics::counter!(MODEL_CALLS_WAITED, LABEL_RULE => rule.to_owned(), LABEL_REASON => reason)
        .increment(1);
}
