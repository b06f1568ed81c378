//! The JSON shapes of the API (with their OpenAPI schemas).

use exo_broker::{DeadLetter, FleetEntry, QueueStats};
use exo_proto::{TaskResult, WorkerHealth};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// A task as the API shows it (the task hash, typed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TaskView {
    task_id: String,
    /// pending, running, completed, failed, cancelled or retrying.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<f64>,
    /// `{"output": "<all text of the run>"}` once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    /// The attempt number (a fencing token, one per claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// `approval` while the task waits for a decision on a tool call.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
    /// The call that waits: `agent_name`, `tool_name`, `tool_call_id`,
    /// `arguments` (JSON text), `scope`, `call`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    approval: Option<Value>,
    /// When the wait ends with a denial (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_deadline: Option<f64>,
    /// When a task submitted for later is due (Unix seconds), while it
    /// waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_for: Option<f64>,
    /// What the task's model calls used, summed over the attempts that
    /// ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageView>,
}

/// A task's model usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct UsageView {
    input_tokens: u64,
    output_tokens: u64,
    calls: u64,
    /// Cost by the workers' price tables, in millionths of a US dollar.
    cost_micros: u64,
}

impl From<TaskResult> for TaskView {
    fn from(task: TaskResult) -> Self {
        TaskView {
            task_id: task.task_id,
            status: task.status.as_str().to_owned(),
            worker_id: task.worker_id,
            created_at: task.created_at,
            started_at: task.started_at,
            completed_at: task.completed_at,
            result: task.result,
            error: task.error,
            retries: task.retries,
            attempt: task.attempt,
            max_retries: task.max_retries,
            agent_name: task.agent_name,
            tenant: task.tenant,
            waiting_for: task.waiting_for,
            approval: task.approval,
            approval_deadline: task.approval_deadline,
            scheduled_for: task.scheduled_for,
            usage: task.usage.map(|usage| UsageView {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                calls: usage.calls,
                cost_micros: usage.cost_micros,
            }),
        }
    }
}

/// The body of `POST /v1/tasks/{task_id}/approve`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    /// Arguments that replace the model's.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) arguments: Option<serde_json::Map<String, Value>>,
    /// Only if this is the call that waits.
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
}

/// The body of `POST /v1/tasks/{task_id}/deny`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenyBody {
    /// Why; the model is told.
    pub(crate) reason: String,
    /// Only if this is the call that waits.
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
}

/// What a decision did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DecisionView {
    pub(crate) task_id: String,
    /// `approved` or `denied`: recorded, and the task is queued again.
    pub(crate) outcome: String,
    /// The tool the decision was about.
    pub(crate) tool_name: String,
    /// Who decided (the token's name).
    pub(crate) by: String,
}

/// The body of `POST /v1/tasks`: the task payload's own field names, so a
/// reference payload can be posted as it is, plus `agent` to name one of
/// the gateway's agents instead of giving `agent_config`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskSubmission {
    /// The task id; one is made up when missing.
    #[serde(default)]
    pub(crate) task_id: Option<String>,
    /// The agent's serialized configuration.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) agent_config: Option<Map<String, Value>>,
    /// The name of an agent from the gateway's configuration.
    #[serde(default)]
    pub(crate) agent: Option<String>,
    /// The user input.
    #[serde(default)]
    pub(crate) input: Option<String>,
    /// Prior conversation messages (`{"role", "content", ...}`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) messages: Option<Vec<Value>>,
    /// Overrides the agent's model.
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// Stream detailed events (tool call deltas, usage per step).
    #[serde(default)]
    pub(crate) detailed: Option<bool>,
    /// Free-form metadata; `tenant` is set from the token's tenant.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) metadata: Option<Map<String, Value>>,
    /// Seconds the run may take.
    #[serde(default)]
    pub(crate) timeout_seconds: Option<f64>,
    /// Retries after a failure.
    #[serde(default)]
    pub(crate) max_retries: Option<u32>,
    /// Submission time (Unix seconds); now when missing.
    #[serde(default)]
    pub(crate) created_at: Option<f64>,
    /// Start no sooner than this time (Unix seconds).
    #[serde(default)]
    pub(crate) run_at: Option<f64>,
    /// Start no sooner than this many seconds from now (instead of
    /// `run_at`).
    #[serde(default)]
    pub(crate) delay_seconds: Option<f64>,
    /// What the run may spend: `{"max_tokens": N}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) budget: Option<Map<String, Value>>,
    /// 1 (first) to 10; tasks without a priority go first.
    #[serde(default)]
    pub(crate) priority: Option<u8>,
    /// The tenant, user or conversation whose tasks share a limit of tasks
    /// running at once.
    #[serde(default)]
    pub(crate) concurrency_key: Option<String>,
    /// That limit (unless the workers' rules set one).
    #[serde(default)]
    pub(crate) concurrency_limit: Option<u32>,
    /// Makes the key a conversation: `reject`, `enqueue`, `interrupt` or
    /// `rollback` a new task while an earlier one has not ended.
    #[serde(default)]
    pub(crate) multitask_strategy: Option<String>,
}

/// What `POST /v1/tasks` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubmittedView {
    pub(crate) task_id: String,
    /// False when the `Idempotency-Key` (or the task id) was seen before:
    /// `task_id` is then the earlier task.
    pub(crate) created: bool,
}

/// The query of `GET /v1/tasks`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only tasks with this status.
    pub(crate) status: Option<String>,
    /// Only tasks of this agent name.
    pub(crate) agent: Option<String>,
    /// The `next_cursor` of the previous page.
    pub(crate) cursor: Option<u64>,
    /// Page size, 1 to 500 (default 50).
    pub(crate) limit: Option<usize>,
    /// Ignored here (the auth layer reads it).
    #[serde(default)]
    #[param(ignore)]
    #[allow(dead_code)]
    pub(crate) access_token: Option<String>,
}

/// A page of tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TaskPageView {
    /// Newest first.
    pub(crate) tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; null at the end.
    pub(crate) next_cursor: Option<u64>,
}

/// What a cancel did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CancelView {
    pub(crate) task_id: String,
    /// `cancelled` (it will never start), `cancelling` (its worker was
    /// signalled) or `already_finished`.
    pub(crate) outcome: String,
    /// The status it had ended with, for `already_finished`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HealthView {
    worker_id: String,
    /// `running`, or `draining` while shutting down.
    status: String,
    tasks_processed: u64,
    tasks_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_task_id: Option<String>,
    started_at: f64,
    last_heartbeat: f64,
    /// Task slots.
    concurrency: u32,
    hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_ttl: Option<u32>,
    /// Tasks running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    active_tasks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
}

impl From<WorkerHealth> for HealthView {
    fn from(health: WorkerHealth) -> Self {
        HealthView {
            worker_id: health.worker_id,
            status: health.status,
            tasks_processed: health.tasks_processed,
            tasks_failed: health.tasks_failed,
            current_task_id: health.current_task_id,
            started_at: health.started_at,
            last_heartbeat: health.last_heartbeat,
            concurrency: health.concurrency,
            hostname: health.hostname,
            heartbeat_ttl: health.heartbeat_ttl,
            active_tasks: health.active_tasks,
            queue: health.queue,
        }
    }
}

/// A worker in the fleet listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WorkerView {
    worker_id: String,
    /// A heartbeat arrived within its TTL.
    alive: bool,
    /// When the last heartbeat was recorded (Unix seconds).
    last_seen: f64,
    /// Its heartbeat hash; null once it expired.
    health: Option<HealthView>,
}

impl WorkerView {
    pub(crate) fn new(entry: FleetEntry, now: f64) -> Self {
        WorkerView {
            alive: entry.alive(now),
            worker_id: entry.worker_id,
            last_seen: entry.last_seen,
            health: entry.health.map(HealthView::from),
        }
    }
}

/// The fleet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WorkersView {
    pub(crate) workers: Vec<WorkerView>,
}

/// One worker's health and the verdict on it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WorkerHealthView {
    pub(crate) worker_id: String,
    /// healthy, degraded or unhealthy.
    pub(crate) verdict: String,
    /// Why.
    pub(crate) message: String,
    pub(crate) health: HealthView,
}

/// The queue's numbers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct QueueView {
    /// Entries in the queue stream (waiting plus claimed).
    stream_length: u64,
    /// Entries not yet delivered to any worker, when Redis can tell.
    lag: Option<u64>,
    /// Entries claimed and not yet acknowledged.
    pending: u64,
    /// Pending entries per worker.
    pending_by_consumer: Vec<(String, u64)>,
    /// Tasks waiting for a retry.
    delayed: u64,
    /// Entries in the dead-letter stream.
    dead_letter: u64,
    /// Tasks with a priority waiting beside the stream.
    prioritized: u64,
    /// Tasks held back by their concurrency key.
    held: u64,
    /// Tasks waiting to start (the stream's, delayed, prioritized, held).
    depth: u64,
    oldest_waiting_created_at: Option<f64>,
    /// Seconds the oldest undelivered task has waited.
    oldest_wait_seconds: Option<f64>,
}

impl QueueView {
    pub(crate) fn new(stats: QueueStats, now: f64) -> Self {
        QueueView {
            depth: stats.depth(),
            oldest_wait_seconds: stats.oldest_wait(now),
            stream_length: stats.stream_length,
            lag: stats.lag,
            pending: stats.pending,
            pending_by_consumer: stats.pending_by_consumer,
            delayed: stats.delayed,
            dead_letter: stats.dead_letter,
            prioritized: stats.prioritized,
            held: stats.held,
            oldest_waiting_created_at: stats.oldest_waiting_created_at,
        }
    }
}

/// A task that failed for good.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    /// Pass it to the redrive endpoint.
    entry_id: String,
    task_id: String,
    reason: String,
    attempts: u32,
    failed_at: f64,
    /// The raw payload.
    payload: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        DeadLetterView {
            entry_id: letter.entry_id,
            task_id: letter.task_id,
            reason: letter.reason,
            attempts: letter.attempts,
            failed_at: letter.failed_at,
            payload: letter.payload,
        }
    }
}

/// The dead-letter stream, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DeadLettersView {
    pub(crate) dead_letters: Vec<DeadLetterView>,
}

/// What a redrive queued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RedriveView {
    pub(crate) task_id: String,
}

/// The caller, as its token says.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct MeView {
    /// False when the gateway runs without tokens (loopback only).
    pub(crate) auth: bool,
    pub(crate) name: Option<String>,
    pub(crate) scopes: Vec<crate::auth::Scope>,
    pub(crate) tenant: Option<String>,
}

/// The queue over the last 15 minutes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HistoryView {
    pub(crate) interval_seconds: f64,
    pub(crate) samples: Vec<crate::history::Sample>,
}

/// The alert rules' verdict now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AlertsView {
    /// What was measured.
    #[schema(value_type = Object)]
    pub(crate) snapshot: Value,
    /// The rules that fire, critical first.
    #[schema(value_type = Vec<Object>)]
    pub(crate) firing: Value,
}
