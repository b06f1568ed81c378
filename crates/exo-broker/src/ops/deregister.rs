//! `deregister.lua`: remove a stopping worker.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::error::Result;

pub(crate) const LUA: &str = include_str!("deregister.lua");

/// `ARGV[7...]` of deregister.lua.
#[derive(Debug)]
pub(crate) struct DeregisterCall<'a> {
    pub(crate) worker_id: &'a str,
    pub(crate) nonce: &'a str,
}

/// What deregistering removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deregistered {
    /// The heartbeat hash was this process's own and is gone.
    pub(crate) heartbeat: bool,
    /// The consumer had nothing pending and is gone.
    pub(crate) consumer: bool,
}

impl Operation for DeregisterCall<'_> {
    type Reply = Deregistered;
    const NAME: &'static str = "deregister";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.deregister
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.extend([self.worker_id.to_owned(), self.nonce.to_owned()]);
    }

    fn parse(&self, value: Value) -> Result<Deregistered> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(Deregistered {
            heartbeat: parts.integer()? == 1,
            consumer: parts.integer()? == 1,
        })
    }
}
