//! Everything exo keeps in Redis: the queue, the task store, event streams,
//! cancel signals, heartbeats and the client's task handle.
//!
//! Depend on this crate to submit tasks and follow them ([`Broker::submit`],
//! [`TaskHandle`]), or to build a worker ([`Broker::claimer`],
//! [`Broker::finish`], [`Broker::heartbeat`], [`Broker::reap`]). It is the
//! only crate that talks to Redis, and it never runs agents.
//!
//! Every state transition is one round trip: a Lua script per operation
//! (`src/scripts/*.lua`, each opening with its KEYS/ARGV/return contract).
//! Claiming a task bumps its attempt number, and every later write for that
//! attempt is fenced on it, so a worker that was presumed dead cannot
//! overwrite the outcome of the attempt that replaced it. A task's event
//! stream always ends with exactly one terminal `status` event.
//!
//! Main types: [`Broker`] (one connection, cheap to clone), [`BrokerConfig`],
//! [`Claimer`], [`ClaimedTask`], [`EventPublisher`], [`EventStream`],
//! [`TaskHandle`].
//!
//! # Feature flags
//!
//! None. Standalone, Sentinel (`redis+sentinel://`) and Cluster
//! (`redis+cluster://`) are chosen by the URL at run time; `rediss://` uses
//! TLS (rustls).

mod broker;
mod config;
mod error;
mod events;
mod handle;
mod queue;
mod scripts;
mod url;

pub use broker::{
    Broker, CancelOutcome, DeadLetter, FleetEntry, PublishObserver, QueueStats, Submitted,
    TaskPage, now_seconds,
};
pub use config::{BrokerConfig, RetryPolicy};
pub use error::{Error, RedisCode, Result};
pub use events::{EventPublisher, EventStream, StreamItem};
pub use handle::TaskHandle;
pub use queue::{
    CancelListener, Claim, ClaimedTask, Claimer, Finished, Lease, LeaseReport, Outcome, ReapReport,
    Rejected,
};
pub use url::{RedisUrl, Servers, mask_url};
