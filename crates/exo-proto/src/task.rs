//! The queue entry (`TaskPayload`) and the task hash (`TaskResult`).

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    agent::AgentSpec,
    error::{Error, Result},
    message::Message,
};

/// What a client puts on the queue: the `payload` field of a stream entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPayload {
    /// 32 lowercase hex characters.
    pub task_id: String,
    /// A serialized agent, or a swarm when it has an `agents` key. Kept as
    /// JSON so that an invalid config becomes a task error, not a lost task;
    /// see [`TaskPayload::agent_spec`].
    #[serde(default)]
    pub agent_config: Map<String, Value>,
    /// The user input.
    #[serde(default)]
    pub input: String,
    /// Prior conversation history.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Fallback model for the provider factory.
    #[serde(default)]
    pub model: Option<String>,
    /// Emit the rich event set.
    #[serde(default)]
    pub detailed: bool,
    /// Free-form; `memory` and `trace_context` are reserved keys.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Submission time, Unix seconds.
    #[serde(default)]
    pub created_at: f64,
    /// Execution deadline in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Extension: the retry budget of this task (the worker's default when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Extension: a submit with the same key returns the first task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Extension: do not start before this time (Unix seconds). The task
    /// waits in the delayed set until then; a time in the past starts it
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<f64>,
    /// Extension: what the run may spend; the run stops with
    /// `BudgetExceeded` once it is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Extension: 1 (first) to 10. A task with a priority waits among the
    /// prioritized ones, in the order of its arrival plus a minute per
    /// level after the first; tasks without one go first (see
    /// `docs/protocol.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Extension: the tenant, user or conversation whose tasks share a
    /// limit of tasks running at once, fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Extension: that limit, unless the worker's rules set one (capped by
    /// the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Extension: makes the concurrency key a conversation (one task at a
    /// time) and says what a new task does while an earlier one has not
    /// ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask_strategy: Option<MultitaskStrategy>,
}

/// What a new task of a busy conversation does (a conversation's tasks
/// share a concurrency key and run one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultitaskStrategy {
    /// Refuse the new task.
    Reject,
    /// Run it after the earlier ones.
    Enqueue,
    /// Cancel the earlier ones; what they wrote to memory stays.
    Interrupt,
    /// Cancel the earlier ones and delete what they wrote to memory.
    Rollback,
}

impl MultitaskStrategy {
    /// The strategy's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MultitaskStrategy::Reject => "reject",
            MultitaskStrategy::Enqueue => "enqueue",
            MultitaskStrategy::Interrupt => "interrupt",
            MultitaskStrategy::Rollback => "rollback",
        }
    }
}

impl FromStr for MultitaskStrategy {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "reject" => Ok(MultitaskStrategy::Reject),
            "enqueue" => Ok(MultitaskStrategy::Enqueue),
            "interrupt" => Ok(MultitaskStrategy::Interrupt),
            "rollback" => Ok(MultitaskStrategy::Rollback),
            other => Err(Error::field(
                "task payload",
                "multitask_strategy",
                format!("`{other}` is not one of reject, enqueue, interrupt, rollback"),
            )),
        }
    }
}

/// Checks a concurrency key: 1 to 128 ASCII letters, digits, `_`, `.`,
/// `:`, `@`, `/` or `-` (the broker's scripts check the same).
pub fn check_concurrency_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 128
        || !key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.:@/-".contains(&byte))
    {
        return Err(Error::field(
            "task payload",
            "concurrency_key",
            format!(
                "`{}` must be 1 to 128 ASCII letters, digits, `_`, `.`, `:`, `@`, `/` or `-`",
                key.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// What one task's run may spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Tokens (input plus output, over every model call of the run,
    /// replayed calls included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Cost in US dollars (over every model call of the run, replayed calls
    /// included), by the worker's price table; a model without a price
    /// counts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
}

/// What a model's tokens cost, in US dollars per million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input: f64,
    /// Per million output (completion) tokens.
    pub output: f64,
}

/// Prices by model: a model string (`openai:gpt-4o`) or the name after
/// its provider prefix (`gpt-4o`, which covers every provider's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Prices by model name.
    pub models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The price of a model, if the table has one.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.models.get(model).copied().or_else(|| {
            let bare = model.split_once(':').map(|(_, name)| name)?;
            self.models.get(bare).copied()
        })
    }

    /// What `usage` of `model` cost, in millionths of a dollar (0 for a
    /// model without a price).
    pub fn cost_micros(&self, model: &str, usage: &Usage) -> u64 {
        self.price(model).map_or(0, |price| {
            (usage.input_tokens as f64 * price.input + usage.output_tokens as f64 * price.output)
                .round()
                .max(0.0) as u64
        })
    }
}

fn default_timeout() -> f64 {
    300.0
}

/// The deepest JSON nesting a submitted payload may have.
pub const MAX_NESTING: usize = 100;

/// Task ids the key layout uses for its own keys (`{prefix}task:index`,
/// `{prefix}task:timeline`).
pub const RESERVED_TASK_IDS: &[&str] = &["index", "timeline"];

/// Checks a task id: 1 to 128 ASCII letters, digits, `_`, `-`, `.` or `:`,
/// and not a reserved name. The reference writes 32 lowercase hex characters; the same
/// rule is enforced by the broker's scripts.
pub fn check_task_id(task_id: &str) -> Result<()> {
    let problem = if task_id.is_empty() {
        Some("must not be empty".to_owned())
    } else if task_id.len() > 128 {
        Some(format!("is {} characters long; at most 128", task_id.len()))
    } else if !task_id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.' | b':'))
    {
        Some("may hold only ASCII letters, digits, `_`, `-`, `.` and `:`".to_owned())
    } else if RESERVED_TASK_IDS.contains(&task_id) {
        Some(format!("`{task_id}` is reserved for the queue's own keys"))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::field("task payload", "task_id", problem)),
        None => Ok(()),
    }
}

/// The nesting depth of a JSON value, counted up to `limit + 1`.
fn json_depth(value: &Value, limit: usize) -> usize {
    fn walk(value: &Value, depth: usize, limit: usize) -> usize {
        if depth > limit {
            return depth;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .map(|item| walk(item, depth + 1, limit))
                .max()
                .unwrap_or(depth + 1),
            Value::Object(map) => map
                .values()
                .map(|item| walk(item, depth + 1, limit))
                .max()
                .unwrap_or(depth + 1),
            _ => depth,
        }
    }
    walk(value, 1, limit)
}

impl TaskPayload {
    /// What picks the queue shard of the task (see [`crate::shard_of`]):
    /// its concurrency key, so that a key's limit and a conversation's order
    /// hold on one shard; else its idempotency key, so that a repeated
    /// submit meets the first; else its id.
    pub fn routing_key(&self) -> &str {
        self.concurrency_key
            .as_deref()
            .or(self.idempotency_key.as_deref())
            .unwrap_or(&self.task_id)
    }

    /// The tenant the task belongs to: `metadata.tenant` when it is a
    /// non-empty string.
    pub fn tenant(&self) -> Option<&str> {
        self.metadata
            .get("tenant")
            .and_then(Value::as_str)
            .filter(|tenant| !tenant.is_empty())
    }

    /// A payload with the reference defaults for everything but the id,
    /// config and input.
    pub fn new(
        task_id: impl Into<String>,
        agent_config: Map<String, Value>,
        input: impl Into<String>,
    ) -> Self {
        TaskPayload {
            task_id: task_id.into(),
            agent_config,
            input: input.into(),
            messages: Vec::new(),
            model: None,
            detailed: false,
            metadata: Map::new(),
            created_at: 0.0,
            timeout_seconds: default_timeout(),
            max_retries: None,
            idempotency_key: None,
            run_at: None,
            budget: None,
            priority: None,
            concurrency_key: None,
            concurrency_limit: None,
            multitask_strategy: None,
        }
    }

    /// Decodes a payload from the queue entry's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let payload: TaskPayload = crate::decode("task payload", bytes)?;
        payload.check()?;
        Ok(payload)
    }

    /// Encodes the payload for the queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a payload is plain JSON")
    }

    /// Checks what the queue needs of a payload before it is submitted: a
    /// valid task id (see [`check_task_id`]), a positive finite timeout, and
    /// JSON nested at most [`MAX_NESTING`] levels (the workers' decoders
    /// must be able to read it).
    pub fn validate(&self) -> Result<()> {
        self.check()?;
        let too_deep = |value: &Value| json_depth(value, MAX_NESTING) > MAX_NESTING;
        for (field, deep) in [
            ("agent_config", self.agent_config.values().any(too_deep)),
            ("metadata", self.metadata.values().any(too_deep)),
        ] {
            if deep {
                return Err(Error::field(
                    "task payload",
                    field,
                    format!("is nested deeper than {MAX_NESTING} levels"),
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        check_task_id(&self.task_id)?;
        if let Some(run_at) = self.run_at
            && (!run_at.is_finite() || run_at < 0.0)
        {
            return Err(Error::field(
                "task payload",
                "run_at",
                format!("must be a time in Unix seconds, got {run_at}"),
            ));
        }
        if let Some(max_cost) = self.budget.and_then(|budget| budget.max_cost)
            && (!max_cost.is_finite() || max_cost <= 0.0)
        {
            return Err(Error::field(
                "task payload",
                "budget",
                format!("max_cost must be a positive number of dollars, got {max_cost}"),
            ));
        }
        if let Some(priority) = self.priority
            && !(1..=10).contains(&priority)
        {
            return Err(Error::field(
                "task payload",
                "priority",
                format!("must be 1 (first) to 10, got {priority}"),
            ));
        }
        if let Some(key) = &self.concurrency_key {
            check_concurrency_key(key)?;
        }
        if self.concurrency_limit == Some(0) {
            return Err(Error::field(
                "task payload",
                "concurrency_limit",
                "must be at least 1",
            ));
        }
        if self.multitask_strategy.is_some() && self.concurrency_key.is_none() {
            return Err(Error::field(
                "task payload",
                "multitask_strategy",
                "needs a concurrency_key (the conversation)",
            ));
        }
        if !self.timeout_seconds.is_finite() || self.timeout_seconds <= 0.0 {
            return Err(Error::field(
                "task payload",
                "timeout_seconds",
                format!(
                    "must be a positive number of seconds, got {}",
                    self.timeout_seconds
                ),
            ));
        }
        Ok(())
    }

    /// Parses and validates `agent_config` into an agent or a swarm.
    pub fn agent_spec(&self) -> Result<AgentSpec> {
        AgentSpec::from_map(&self.agent_config)
    }

    /// The W3C trace context carried in `metadata.trace_context`, if any.
    pub fn trace_context(&self) -> BTreeMap<String, String> {
        self.metadata
            .get("trace_context")
            .and_then(Value::as_object)
            .map(|carrier| {
                carrier
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The status field of the task hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued, not yet claimed.
    Pending,
    /// Claimed and running.
    Running,
    /// Finished with a result.
    Completed,
    /// Failed with no retries left (or failed before it could run).
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// Failed, waiting for its next attempt.
    Retrying,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Retrying,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Retrying => "retrying",
        }
    }

    /// True for `completed`, `failed` and `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                let valid: Vec<&str> = TaskStatus::ALL
                    .iter()
                    .map(|status| status.as_str())
                    .collect();
                Error::field(
                    "task status",
                    "status",
                    format!("unknown status `{text}`; valid: {}", valid.join(", ")),
                )
            })
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Their sum, as the provider reported it.
    #[serde(default)]
    pub total_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// Extension: what a task's model calls used, summed over its attempts
/// (the task hash's `usage_*` fields, written by exo workers' final
/// writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Model calls sent (replayed calls are not).
    pub calls: u64,
    /// Cost by the workers' price tables, in millionths of a US dollar.
    pub cost_micros: u64,
}

/// The task hash `exo:task:{id}`: the state of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// The task id.
    pub task_id: String,
    /// The current status.
    pub status: TaskStatus,
    /// The worker that ran (or runs) the latest attempt.
    pub worker_id: Option<String>,
    /// When the latest attempt started.
    pub started_at: Option<f64>,
    /// When the task (or its latest attempt) ended.
    pub completed_at: Option<f64>,
    /// The result object, `{"output": "<all text of the run>"}`.
    pub result: Option<Value>,
    /// The error message of the latest failure.
    pub error: Option<String>,
    /// Retries used so far.
    pub retries: Option<u32>,
    /// Extension: the attempt number, a fencing token incremented per claim.
    pub attempt: Option<u32>,
    /// Extension: the retry budget.
    pub max_retries: Option<u32>,
    /// Extension: when the task was submitted.
    pub created_at: Option<f64>,
    /// Extension: the agent (or swarm) name.
    pub agent_name: Option<String>,
    /// Extension: the tenant the task belongs to (the payload's
    /// `metadata.tenant`), when it has one.
    pub tenant: Option<String>,
    /// Extension: `approval` while the task waits for a person's decision
    /// on a tool call (`status` is then `pending`): the call
    /// ([`crate::ApprovalRequest`]).
    pub waiting_for: Option<String>,
    /// Extension: the call that waits, as JSON.
    pub approval: Option<Value>,
    /// Extension: when the wait ends with a denial (Unix seconds).
    pub approval_deadline: Option<f64>,
    /// Extension: when a task submitted with `run_at` is due (Unix
    /// seconds), while it waits for that time.
    pub scheduled_for: Option<f64>,
    /// Extension: what its model calls used so far (attempts that ended).
    pub usage: Option<TaskUsage>,
}

/// A hash field parsed as `T`; `None` when absent, an error naming the field
/// (and what it should be) when it does not parse.
fn parsed_field<T: FromStr>(
    fields: &BTreeMap<String, String>,
    what: &'static str,
    name: &str,
    kind: &str,
) -> Result<Option<T>> {
    fields
        .get(name)
        .map(|text| {
            text.parse::<T>()
                .map_err(|_| Error::field(what, name, format!("`{text}` is not {kind}")))
        })
        .transpose()
}

impl TaskResult {
    /// A hash holding only an id and a status.
    pub fn new(task_id: impl Into<String>, status: TaskStatus) -> Self {
        TaskResult {
            task_id: task_id.into(),
            status,
            worker_id: None,
            started_at: None,
            completed_at: None,
            result: None,
            error: None,
            retries: None,
            attempt: None,
            max_retries: None,
            created_at: None,
            agent_name: None,
            tenant: None,
            waiting_for: None,
            approval: None,
            approval_deadline: None,
            scheduled_for: None,
            usage: None,
        }
    }

    /// The `output` of the result object.
    pub fn output(&self) -> Option<&str> {
        self.result.as_ref()?.get("output")?.as_str()
    }

    /// Reads a task hash. Values are strings, an empty string means unset,
    /// and unknown fields are ignored.
    pub fn from_hash<K, V, I>(fields: I) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = (K, V)>,
    {
        const WHAT: &str = "task hash";
        let fields: BTreeMap<String, String> = fields
            .into_iter()
            .filter(|(_, value)| !value.as_ref().is_empty())
            .map(|(key, value)| (key.as_ref().to_owned(), value.as_ref().to_owned()))
            .collect();
        let task_id = fields
            .get("task_id")
            .cloned()
            .ok_or_else(|| Error::field(WHAT, "task_id", "missing"))?;
        let status: TaskStatus = fields
            .get("status")
            .ok_or_else(|| Error::field(WHAT, "status", "missing"))?
            .parse()?;
        let float = |name: &str| parsed_field::<f64>(&fields, WHAT, name, "a number");
        let integer = |name: &str| parsed_field::<u32>(&fields, WHAT, name, "a whole number");
        let count = |name: &str| parsed_field::<u64>(&fields, WHAT, name, "a whole number");
        let result = fields
            .get("result")
            .map(|text| {
                serde_json::from_str::<Value>(text)
                    .map_err(|error| Error::field(WHAT, "result", format!("not JSON: {error}")))
            })
            .transpose()?;
        Ok(TaskResult {
            started_at: float("started_at")?,
            completed_at: float("completed_at")?,
            created_at: float("created_at")?,
            retries: integer("retries")?,
            attempt: integer("attempt")?,
            max_retries: integer("max_retries")?,
            worker_id: fields.get("worker_id").cloned(),
            error: fields.get("error").cloned(),
            agent_name: fields.get("agent_name").cloned(),
            tenant: fields.get("tenant").cloned(),
            waiting_for: fields.get("waiting_for").cloned(),
            // Shown as it is; text that is not JSON is left out.
            approval: fields
                .get("approval")
                .and_then(|text| serde_json::from_str(text).ok()),
            approval_deadline: float("approval_deadline")?,
            scheduled_for: float("scheduled_for")?,
            usage: {
                let parts = [
                    count("usage_input_tokens")?,
                    count("usage_output_tokens")?,
                    count("usage_calls")?,
                    count("usage_cost_micros")?,
                ];
                parts.iter().any(Option::is_some).then(|| TaskUsage {
                    input_tokens: parts[0].unwrap_or(0),
                    output_tokens: parts[1].unwrap_or(0),
                    calls: parts[2].unwrap_or(0),
                    cost_micros: parts[3].unwrap_or(0),
                })
            },
            result,
            task_id,
            status,
        })
    }

    /// The hash fields to write, leaving out unset ones.
    pub fn to_hash_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("task_id", self.task_id.clone()),
            ("status", self.status.as_str().to_owned()),
        ];
        let mut push = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                fields.push((name, value));
            }
        };
        push("worker_id", self.worker_id.clone());
        push("started_at", self.started_at.map(|time| time.to_string()));
        push(
            "completed_at",
            self.completed_at.map(|time| time.to_string()),
        );
        push("result", self.result.as_ref().map(Value::to_string));
        push("error", self.error.clone());
        push("retries", self.retries.map(|count| count.to_string()));
        push("attempt", self.attempt.map(|count| count.to_string()));
        push(
            "max_retries",
            self.max_retries.map(|count| count.to_string()),
        );
        push("created_at", self.created_at.map(|time| time.to_string()));
        push("agent_name", self.agent_name.clone());
        push("tenant", self.tenant.clone());
        fields
    }
}
