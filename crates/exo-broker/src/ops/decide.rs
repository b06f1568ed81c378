//! `decide.lua`: a person's decision on the tool call a task waits at.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{
    client::{Decided, Decision},
    error::Result,
};

pub(crate) const LUA: &str = include_str!("decide.lua");

/// `ARGV[7...]` of decide.lua.
#[derive(Debug)]
pub(crate) struct DecideCall<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) decision: &'a Decision,
}

impl Operation for DecideCall<'_> {
    type Reply = Decided;
    const NAME: &'static str = "decide";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.decide
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        let decision = self.decision;
        argv.extend([
            self.task_id.to_owned(),
            if decision.approved { "approve" } else { "deny" }.to_owned(),
            decision.by.clone(),
            decision.reason.clone().unwrap_or_default(),
            decision
                .arguments
                .as_ref()
                .map(|arguments| serde_json::Value::Object(arguments.clone()).to_string())
                .unwrap_or_default(),
            decision.tool_call_id.clone().unwrap_or_default(),
        ]);
    }

    fn parse(&self, value: Value) -> Result<Decided> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(match parts.string()?.as_str() {
            "resumed" => Decided::Resumed {
                tool_name: parts.string()?,
            },
            "not_waiting" => {
                let status = parts.string()?;
                Decided::NotWaiting(if status.is_empty() {
                    None
                } else {
                    Some(status.parse()?)
                })
            }
            _ => Decided::NotFound,
        })
    }
}
