//! The exo wire model: everything that crosses Redis, as plain serde types.
//!
//! Depend on this crate to read or write what exo puts in Redis: the queue's
//! [`TaskPayload`], the task hash ([`TaskResult`]), the event stream
//! ([`StreamEvent`]), conversation history ([`Message`]), agent and swarm
//! configs ([`AgentSpec`]), the heartbeat hash ([`WorkerHealth`]), the key
//! names ([`Keys`]). It is byte-compatible with the Python reference system,
//! so a value captured from either side parses here and re-serializes to the
//! same JSON. It also holds how a run ended ([`RunOutcome`], with the failure
//! kinds of [`ErrorType`]), the one type every layer above passes upward and
//! Temporal carries between processes.
//!
//! It also holds the two small pure utilities every layer shares, so that
//! each exists once: [`time`] (the clock and ISO-8601 timestamps) and
//! [`Backoff`] (the waits between retries).
//!
//! This crate does no I/O beyond reading the system clock
//! ([`time::now_seconds`]) and knows nothing of tokio or any Redis client.
//! Decoding never panics: malformed input becomes an [`Error`] that names the
//! field at fault and says why.
//!
//! # Feature flags
//!
//! None. The crate is always the same small, pure model.

mod agent;
mod backoff;
mod error;
mod error_type;
mod event;
mod health;
mod journal;
mod keys;
mod message;
mod outcome;
mod task;
pub mod time;

pub use agent::{
    AgentConfig, AgentSpec, FlowStage, McpServerConfig, McpToolSpec, SwarmConfig, SwarmMode,
    ToolSpec, parse_flow,
};
pub use backoff::{Backoff, Jitter};
pub use error::{Error, Result};
pub use error_type::ErrorType;
pub use event::{
    ContextEvent, ErrorEvent, McpProgressEvent, ReasoningEvent, RunStatus, StatusEvent, StepEvent,
    StepStatus, StreamEvent, TextEvent, ToolCallDeltaEvent, ToolCallEvent, ToolOutput,
    ToolResultEvent, UsageEvent,
};
pub use health::{DEAD_AFTER_SECONDS, Health, HealthReport, WorkerHealth};
pub use journal::{
    ApprovalRequest, DecisionRecord, Journal, JournalRecord, ModelRecord, StepKey, ToolRecord,
};
pub use keys::{Keys, cluster_slot, shard_of};
pub use message::{Content, Message, ToolCall};
pub use outcome::{OutcomeStatus, RunOutcome};
pub use task::{
    Budget, MAX_NESTING, MultitaskStrategy, Price, PriceTable, RESERVED_TASK_IDS, TaskPayload,
    TaskResult, TaskStatus, TaskUsage, Usage, check_concurrency_key, check_task_id,
};

/// Decodes JSON bytes into `T`, naming the offending field on failure.
///
/// Valid input is decoded once, without tracking the path (which costs
/// about as much as the decoding itself, on every task a worker claims);
/// input that fails is decoded again with the path tracked, for the
/// message.
pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| Error::decode(what, error))?;
    deserializer.end().map_err(|error| Error::Decode {
        what,
        path: ".".to_owned(),
        message: error.to_string(),
    })?;
    Ok(value)
}

/// Decodes an already parsed JSON value into `T`, naming the offending field
/// on failure.
pub fn decode_value<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|error| Error::decode(what, error))
}
