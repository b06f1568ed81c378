//! The exo worker runtime: claims tasks from the Redis queue, runs their
//! agents, streams their events, and records their outcome.
//!
//! Depend on this crate to run a worker inside your own program (with your
//! own tools, provider factory and post-task hook); the `exo` binary is one
//! such program. It is the only crate that joins the queue, the agent
//! runtime and memory. It never parses command-line flags and never
//! installs a log subscriber or metrics exporter.
//!
//! A worker has `concurrency` task slots and one claim loop that never takes
//! more tasks than it has free slots. A task's final write claims the
//! slot's next task; after a short task it claims up to
//! [`WorkerConfig::lookahead`] more, which the slot holds and runs one by
//! one (each while the previous write is under way) or hands back to the
//! queue when the task before them runs long. A panic fails its task (and
//! the retry rules apply), never the worker.
//! Cancels arrive on one pub/sub subscription per process (and, as a safety
//! net, through the heartbeat); `timeout_seconds` is enforced. On shutdown
//! the worker stops claiming, lets running tasks finish within the drain
//! timeout, hands the rest back to the queue, and removes its heartbeat.
//!
//! Main types: [`WorkerBuilder`], [`Worker`], [`WorkerConfig`],
//! [`TaskHooks`], [`Executor`] (with the `temporal` feature also
//! `TemporalExecutor`).
//!
//! # Embed a worker with your own tool
//!
//! ```no_run
//! use exo_agent::{FnTool, ToolRegistry};
//! use exo_proto::ToolOutput;
//! use serde_json::{Value, json};
//!
//! # async fn embed() -> Result<(), Box<dyn std::error::Error>> {
//! let mut tools = ToolRegistry::new();
//! tools.register(FnTool::new(
//!     "word_count",
//!     "Counts the words of a text.",
//!     json!({"type": "object", "properties": {"text": {"type": "string"}}}),
//!     |arguments, _context| {
//!         Box::pin(async move {
//!             let text = arguments.get("text").and_then(Value::as_str).unwrap_or("");
//!             Ok(ToolOutput::Text(text.split_whitespace().count().to_string()))
//!         })
//!     },
//! ));
//! let worker = exo_worker::Worker::builder("redis://localhost:6379")
//!     .concurrency(8)
//!     .tools(tools)
//!     .build()?;
//! // SIGTERM handling is the program's: call `shutdown()` on this handle to
//! // drain (running tasks finish, the rest go back to the queue).
//! let shutdown = worker.shutdown_handle();
//! # drop(shutdown);
//! worker.run().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A complete program, built the way a user of the published crates builds
//! it, is `examples/embedded-worker` in the repository.
//!
//! # Durable execution on Temporal
//!
//! With the `temporal` feature, a worker can run each task as a Temporal
//! workflow: a worker that dies mid-task hands the run to another through
//! Temporal's retries instead of the queue's. The Temporal server is read
//! from `TEMPORAL_HOST` (default `localhost:7233`), `TEMPORAL_NAMESPACE` and
//! `EXO_TEMPORAL_TASK_QUEUE`.
//!
//! ```no_run
//! use exo_worker::ExecutorKind;
//!
//! # async fn durable() -> Result<(), Box<dyn std::error::Error>> {
//! // Without the `temporal` feature, `build` refuses this executor.
//! exo_worker::Worker::builder("redis://localhost:6379")
//!     .executor(ExecutorKind::Temporal)
//!     .build()?
//!     .run()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` | SQLite memory stores |
//! | `postgres` | PostgreSQL memory stores |
//! | `mcp` | MCP tools in agents |
//! | `temporal` | `ExecutorKind::Temporal`: tasks run as durable Temporal workflows (`exo-temporal`) |

mod attempt;
mod background;
mod builder;
mod config;
mod error;
mod execute;
mod hooks;
mod limits;
mod memory;
mod runtime;
mod slot;
mod state;
#[cfg(feature = "temporal")]
mod temporal;

pub use builder::{ShutdownHandle, Worker, WorkerBuilder, WorkerStatus};
pub use config::{ExecutorKind, MemorySettings, WorkerConfig, default_worker_id, hostname};
pub use error::{Error, Result};
pub use execute::{Execution, Executor, LocalExecutor, RunControl};
/// A memory store a worker allows, parsed from `NAME=DSN`.
pub use exo_memory::NamedStore;
/// The Temporal settings a worker reads from its environment.
#[cfg(feature = "temporal")]
pub use exo_temporal::TemporalConfig;
pub use hooks::{NoHooks, TaskHooks};
pub use memory::Memory;
#[cfg(feature = "temporal")]
pub use temporal::TemporalExecutor;
