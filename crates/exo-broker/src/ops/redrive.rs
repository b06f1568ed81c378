//! `redrive.lua`: put a dead-letter entry back on the queue.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply};
use crate::error::{Error, Result};

pub(crate) const LUA: &str = include_str!("redrive.lua");

/// `ARGV[7]` of redrive.lua.
#[derive(Debug)]
pub(crate) struct RedriveCall<'a> {
    pub(crate) entry_id: &'a str,
}

impl Operation for RedriveCall<'_> {
    /// The task id queued again.
    type Reply = String;
    const NAME: &'static str = "redrive";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.redrive
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.push(self.entry_id.to_owned());
    }

    fn parse(&self, value: Value) -> Result<String> {
        let parts = reply::strings(Self::NAME, value)?;
        match parts.as_slice() {
            [task_id] if !task_id.is_empty() => Ok(task_id.clone()),
            [_, reason] => Err(Error::Refused {
                reason: reason.clone(),
            }),
            _ => Err(Error::Reply {
                what: Self::NAME,
                detail: format!("{parts:?}"),
            }),
        }
    }
}
