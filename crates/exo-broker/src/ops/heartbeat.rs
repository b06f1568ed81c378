//! `heartbeat.lua`: a worker's periodic tick.

use std::time::Duration;

use exo_proto::WorkerHealth;
use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{
    error::{Error, Result},
    session::{Lease, LeaseReport},
};

pub(crate) const LUA: &str = include_str!("heartbeat.lua");

/// `ARGV[7...]` of heartbeat.lua.
#[derive(Debug)]
pub(crate) struct HeartbeatCall<'a> {
    pub(crate) health: &'a WorkerHealth,
    pub(crate) ttl: Duration,
    /// An entry pending on this worker that it does not run, idle this
    /// long, is an orphan (a claim whose reply never arrived).
    pub(crate) orphan_after: Duration,
    pub(crate) nonce: &'a str,
    pub(crate) running: &'a [Lease],
}

impl Operation for HeartbeatCall<'_> {
    type Reply = LeaseReport;
    const NAME: &'static str = "heartbeat";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.heartbeat
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        let fields = self.health.to_hash_fields();
        argv.extend([
            self.health.worker_id.clone(),
            self.ttl.as_secs().max(1).to_string(),
            self.orphan_after.as_millis().to_string(),
            self.nonce.to_owned(),
            fields.len().to_string(),
        ]);
        for (name, value) in fields {
            argv.push(name.to_owned());
            argv.push(value);
        }
        for lease in self.running {
            argv.extend([lease.entry_id.clone(), lease.task_id.clone(), lease.fence()]);
        }
    }

    fn parse(&self, value: Value) -> Result<LeaseReport> {
        let mut parts = Parts::new(Self::NAME, value)?;
        let report = LeaseReport {
            cancelled: parts.strings()?,
            lost: parts.strings()?,
            handed_back: parts.count()?,
        };
        if parts.string()? == "conflict" {
            return Err(Error::WorkerIdInUse {
                worker_id: self.health.worker_id.clone(),
            });
        }
        Ok(report)
    }
}
