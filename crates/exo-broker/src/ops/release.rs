//! `release.lua`: hand tasks back to the queue.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply};
use crate::{error::Result, session::Lease};

pub(crate) const LUA: &str = include_str!("release.lua");

/// `ARGV[7...]` of release.lua: the leases to hand back.
#[derive(Debug)]
pub(crate) struct ReleaseCall<'a> {
    pub(crate) leases: &'a [Lease],
}

impl Operation for ReleaseCall<'_> {
    /// How many tasks were handed back.
    type Reply = u64;
    const NAME: &'static str = "release";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.release
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        for lease in self.leases {
            argv.extend([lease.entry_id.clone(), lease.task_id.clone(), lease.fence()]);
        }
    }

    fn parse(&self, value: Value) -> Result<u64> {
        Ok(reply::integer(Self::NAME, &value)?.max(0) as u64)
    }
}
