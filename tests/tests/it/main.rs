//! End-to-end tests of the real `exo` binary against real services, in one
//! test binary (one link, one `exo` lookup). Each module was a test binary
//! of its own; run one with `cargo test -p exo-e2e --test it -- <module>::`.

mod cli_habits;
mod dashboard;
mod deploy_commands;
mod deployments;
mod flow_control;
mod gateway;
mod journal;
mod mixed_fleet;
mod observability;
mod rate_limits;
#[cfg(feature = "temporal")]
mod temporal;
mod usage_ledger;
mod worker_process;
