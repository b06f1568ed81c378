//! The broker against real redis-servers, one test binary.

mod batched;
mod common;
mod events;
mod fleet;
mod follow;
mod limits;
mod queue;
mod recovery;
mod reliability;
mod round_trips;
mod schedules;
mod shards;
mod topologies;
mod transitions;
mod usage;
