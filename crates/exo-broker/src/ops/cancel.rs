//! `cancel.lua`: cancel a task, whatever state it is in.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{client::CancelOutcome, error::Result};

pub(crate) const LUA: &str = include_str!("cancel.lua");

/// `ARGV[7]` of cancel.lua.
#[derive(Debug)]
pub(crate) struct CancelCall<'a> {
    pub(crate) task_id: &'a str,
}

impl Operation for CancelCall<'_> {
    type Reply = CancelOutcome;
    const NAME: &'static str = "cancel";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.cancel
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.push(self.task_id.to_owned());
    }

    fn parse(&self, value: Value) -> Result<CancelOutcome> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(match parts.string()?.as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "cancelling" => CancelOutcome::Cancelling,
            "already" => {
                let status = parts.string()?;
                CancelOutcome::AlreadyFinished(if status.is_empty() {
                    exo_proto::TaskStatus::Cancelled
                } else {
                    status.parse()?
                })
            }
            _ => CancelOutcome::NotFound,
        })
    }
}
