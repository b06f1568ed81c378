//! `reap.lua`: one reaper pass.

use std::time::Duration;

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{error::Result, session::ReapReport};

pub(crate) const LUA: &str = include_str!("reap.lua");

/// `ARGV[7...]` of reap.lua.
#[derive(Debug)]
pub(crate) struct ReapCall<'a> {
    pub(crate) worker_id: &'a str,
    pub(crate) lease: Duration,
    pub(crate) limit: usize,
    pub(crate) default_max_retries: u32,
    /// A dead worker's entry must have been idle this long: a freshly
    /// claimed one may belong to a worker whose heartbeat is only late.
    pub(crate) dead_worker_idle: Duration,
    pub(crate) heartbeat_ttl: Duration,
}

impl Operation for ReapCall<'_> {
    type Reply = ReapReport;
    const NAME: &'static str = "reap";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.reap
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.extend([
            self.worker_id.to_owned(),
            self.lease.as_millis().to_string(),
            self.limit.max(1).to_string(),
            self.default_max_retries.to_string(),
            self.dead_worker_idle.as_millis().to_string(),
            self.heartbeat_ttl.as_millis().max(1).to_string(),
        ]);
    }

    fn parse(&self, value: Value) -> Result<ReapReport> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(ReapReport {
            promoted: parts.count()?,
            requeued: parts.count()?,
            failed: parts.count()?,
            cleaned: parts.count()?,
            reconciled: parts.count()?,
            quiet: parts.count()? == 1,
            approvals_expired: parts.count()?,
        })
    }
}
