//! `fleet.lua`: every known worker with its heartbeat.

use exo_proto::WorkerHealth;
use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply};
use crate::{admin::FleetEntry, error::Result};

pub(crate) const LUA: &str = include_str!("fleet.lua");

/// `ARGV[7...]` of fleet.lua.
#[derive(Debug)]
pub(crate) struct FleetCall<'a> {
    /// Seconds a worker without a heartbeat stays listed (as dead).
    pub(crate) keep_seconds: u64,
    /// Ids of heartbeat hashes found by SCAN.
    pub(crate) discovered: &'a [String],
}

impl Operation for FleetCall<'_> {
    type Reply = Vec<FleetEntry>;
    const NAME: &'static str = "fleet";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.fleet
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.push(self.keep_seconds.to_string());
        argv.extend(self.discovered.iter().cloned());
    }

    fn parse(&self, value: Value) -> Result<Vec<FleetEntry>> {
        let items = reply::array(Self::NAME, value)?;
        let mut fleet = Vec::with_capacity(items.len() / 3);
        for row in items.chunks(3) {
            let [worker_id, last_seen, fields] = row else {
                continue;
            };
            let worker_id = reply::string(Self::NAME, worker_id)?;
            let last_seen: f64 = reply::string(Self::NAME, last_seen)?.parse().unwrap_or(0.0);
            let fields = reply::pairs(Self::NAME, fields.clone())?;
            let health = if fields.is_empty() {
                None
            } else {
                Some(WorkerHealth::from_hash(&worker_id, fields)?)
            };
            fleet.push(FleetEntry {
                worker_id,
                last_seen,
                health,
            });
        }
        Ok(fleet)
    }
}
