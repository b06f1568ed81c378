//! Runs an agent or a swarm from its config: the step loop, tools, MCP,
//! the event sequence, cancellation and deadlines.
//!
//! `exo-worker` depends on this crate to execute a task, and so does any
//! program that embeds a worker and compiles its own tools in. It sits on
//! `exo-models` (for providers) and `exo-proto` (for configs, messages and
//! events). It must never know that Redis exists: it knows nothing of
//! queues, task hashes, retries or where events go. Events leave through a
//! channel, and the caller decides what a failure means for the task.
//!
//! # Main types
//!
//! - [`Runner`]: built once per worker from a [`exo_models::ProviderFactory`],
//!   a [`ToolRegistry`] and an [`McpPolicy`]; [`Runner::run`] runs one task.
//! - [`RunOptions`]: `detailed`, the cancel token and the deadline.
//! - [`RunEvent`]: what the run sends while it goes: stream events, and
//!   conversation messages for memory persistence.
//! - [`RunOutcome`] (from `exo-proto`, re-exported here): how it ended
//!   (completed, failed, cancelled, timed out), the output, usage totals,
//!   the error and its [`exo_proto::ErrorType`], and whether a retry may
//!   help; [`RunOutcome::terminal_event`] builds the task's last event.
//! - [`Tool`] and [`ToolRegistry`]: tools the embedding program provides;
//!   [`builtin`] has demo and test tools.
//!
//! ```no_run
//! use std::sync::Arc;
//! use exo_agent::{McpPolicy, RunOptions, Runner, ToolRegistry};
//! use exo_proto::AgentSpec;
//!
//! # async fn example(spec: AgentSpec) {
//! let runner = Runner::new(
//!     exo_models::default_factory(),
//!     Arc::new(ToolRegistry::with_builtins()),
//!     McpPolicy::deny_all(),
//! );
//! let (events, mut received) = tokio::sync::mpsc::channel(256);
//! let forward = tokio::spawn(async move {
//!     while let Some(event) = received.recv().await {
//!         // Publish stream events, persist messages.
//!         let _ = event;
//!     }
//! });
//! let outcome = runner
//!     .run(&spec, "Weather in Paris?", Vec::new(), RunOptions::default(), events)
//!     .await;
//! forward.await.unwrap();
//! let last_event = outcome.terminal_event();
//! # let _ = last_event;
//! # }
//! ```
//!
//! # The step loop
//!
//! As the reference runs it: the system message is `instructions` when not
//! empty, then the history, then the input as the user message. Each step
//! streams the model's answer and assembles tool calls by index. A step
//! without tool calls ends the run. Otherwise the step's tool calls run
//! concurrently, their results are appended in call order, and the loop
//! goes on, up to `max_steps`; reaching it fails the run (non-retryable)
//! with a message that says so. The output is all text of the run.
//!
//! Bad model output is data: arguments that are not a JSON object, and
//! unknown tool names (`Tool 'x' not found`), go back to the model as tool
//! error results. A tool's own error does too. A panic inside a tool is
//! caught; it fails the run (`error_type` `ToolPanic`, non-retryable), and
//! the worker lives on. `injected_tool_args` are added to every tool's
//! schema and removed from the arguments before the tool runs.
//!
//! # Events
//!
//! In the order of `tool_run_detailed.events.jsonl`: `status(starting)`,
//! then per step `step(started)`, `reasoning*`/`text*`/`tool_call_delta*`
//! in stream order, `usage`, then either `step(completed)` (final step) or
//! `tool_call*`, `tool_result*`, `step(completed)`. A non-detailed run
//! emits only `text`, `tool_call` and `error` (plus `mcp_progress` when
//! the agent's `emit_mcp_progress` is set). A failure emits one `error`
//! event. The run never emits the terminal `status`; the caller writes
//! [`RunOutcome::terminal_event`] atomically with the task's final state.
//!
//! # Failures
//!
//! | cause | status | `error_type` | retryable |
//! |---|---|---|---|
//! | unresolvable tool, refused MCP server, bad model string, invalid config | failed before start | `ConfigError` | no |
//! | model error | failed | the [`exo_models::Error::error_type`], e.g. `RuntimeError` for `scripted:fail` | [`exo_models::Error::is_retryable`] |
//! | `max_steps` reached | failed | `MaxStepsExceeded` | no |
//! | `max_handoffs` exceeded | failed | `MaxHandoffsExceeded` | no |
//! | a tool panicked | failed | `ToolPanic` | no |
//! | anything else panicked | failed | `Panic` | no |
//! | cancel token | cancelled | `CancelledError` | no |
//! | deadline | timed out (terminal status `error`) | `TimeoutError` | yes |
//!
//! # MCP
//!
//! MCP tool objects (`__mcp_tool__`) run on their servers over stdio or
//! streamable HTTP, through the official `rmcp` SDK (feature `mcp`). A
//! server is connected at its first call, shared by the rest of the run,
//! and closed when the run ends, in every outcome. [`McpPolicy`] decides
//! which commands may be launched and whether HTTP servers may be called;
//! the default allows nothing.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `mcp` | off | MCP tools over stdio and streamable HTTP (`rmcp`). Without it, an MCP tool in a config fails the run before it starts. |
//! | `http` | off | [`HttpTool`] (`http_request`): HTTP endpoints under the prefixes the operator allows, with the call's idempotency key. |

mod agent_loop;
pub mod builtin;
mod error;
mod gate;
#[cfg(feature = "http")]
mod http_tool;
mod mcp;
#[cfg(feature = "mcp")]
mod mcp_client;
mod outcome;
mod runner;
pub mod swarm;
mod tool;

pub use error::{Error, Result};
pub use exo_proto::ToolOutput;
pub use gate::{DEFAULT_OUTPUT_ESTIMATE, GateDecision, GatePermit, ModelGate, estimate_tokens};
#[cfg(feature = "http")]
pub use http_tool::HttpTool;
pub use mcp::McpPolicy;
pub use outcome::{OutcomeStatus, RunEvent, RunOptions, RunOutcome};
pub use runner::Runner;
pub use tool::{FnTool, Tool, ToolContext, ToolFuture, ToolRegistry};
