//! Everything exo keeps in Redis: the queue, the task store, event streams,
//! cancel signals, heartbeats and the client's task handle.
//!
//! Depend on this crate to submit tasks and follow them ([`Client`],
//! [`TaskHandle`]), to build a worker ([`WorkerSession`]: claim, finish,
//! heartbeat, reap), or to operate a fleet ([`Admin`]). [`Broker`] is the
//! connection and hands out these three role handles. It is the only crate
//! that talks to Redis, and it never runs agents.
//!
//! Every state transition is one round trip: a Lua script per operation,
//! each with its own typed module (`src/ops/<op>.rs` and `<op>.lua`: the
//! call's arguments next to the script's header, one typed reply).
//! Claiming a task bumps its attempt number, and every later write for that
//! attempt is fenced on it, so a worker that was presumed dead cannot
//! overwrite the outcome of the attempt that replaced it. A task's event
//! stream always ends with exactly one terminal `status` event.
//!
//! Main types: [`Broker`] (one connection, cheap to clone), [`BrokerConfig`],
//! [`Client`], [`WorkerSession`], [`Admin`], [`Claimer`], [`ClaimedTask`],
//! [`EventPublisher`], [`EventStream`], [`TaskHandle`].
//!
//! # Submit a task and follow it
//!
//! ```no_run
//! use exo_broker::{Broker, BrokerConfig};
//! use exo_proto::{StreamEvent, TaskPayload};
//! use serde_json::json;
//!
//! # async fn submit_and_follow() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = Broker::connect(BrokerConfig::new("redis://localhost:6379")).await?;
//! let agent = json!({"name": "helper", "model": "openai:gpt-4o-mini"});
//! let payload = TaskPayload::new(
//!     uuid::Uuid::new_v4().simple().to_string(),
//!     agent.as_object().cloned().unwrap_or_default(),
//!     "Weather in Paris?",
//! );
//! let handle = broker.client().submit(payload).await?;
//! // Every event as the worker writes it, up to the one terminal event.
//! let mut events = handle.events();
//! while let Some(item) = events.next().await {
//!     if let StreamEvent::Text(text) = item?.event {
//!         print!("{}", text.text);
//!     }
//! }
//! let task = handle.result().await?;
//! println!("\n{}: {:?}", task.status, task.output());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None. Standalone, Sentinel (`redis+sentinel://`) and Cluster
//! (`redis+cluster://`) are chosen by the URL at run time; `rediss://` uses
//! TLS (rustls).

mod admin;
mod broker;
mod client;
mod config;
mod error;
mod events;
mod finisher;
mod follow;
mod handle;
mod limits;
mod ops;
mod schedules;
mod session;
mod shards;
mod url;
mod usage;

pub use admin::{Admin, DeadLetter, FleetEntry, FleetScan, QueueStats};
pub use broker::{Broker, PublishObserver};
pub use client::{CancelOutcome, Client, Decided, Decision, Submitted, TaskPage, TaskQuery};
pub use config::{BrokerConfig, ConcurrencyRules, RetryPolicy};
pub use error::{Error, RedisCode, Result};
pub use events::{EventPublisher, EventStream, StreamItem, Unsent};
pub use finisher::Finisher;
pub use follow::{FollowedEvent, Follower, Following};
pub use handle::TaskHandle;
pub use limits::{Admission, DEFAULT_WINDOW, LimitReason, LimitRule, Limits, Settlement};
pub use schedules::{Fired, Schedule, Schedules, parse_cron, schedule_json, tick_task_id};
pub use session::{
    CancelListener, Claim, ClaimedTask, Claimer, FinishOptions, Finished, Lease, LeaseReport,
    ModelSpend, Outcome, PublishOptions, ReapReport, Rejected, WorkerSession,
};
pub use shards::{Shards, shard_keys};
pub use url::{RedisUrl, Servers, mask_url};
pub use usage::{USAGE_KEPT, UsageDimension, UsageReport, UsageRow};
