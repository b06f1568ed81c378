//! `schedule.lua`: cron schedules in Redis.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::error::Result;

pub(crate) const LUA: &str = include_str!("schedule.lua");

/// What the call does.
#[derive(Debug)]
pub(crate) enum ScheduleCall<'a> {
    /// Writes a schedule and when it fires next.
    Put {
        name: &'a str,
        json: String,
        next_ms: u64,
    },
    /// Deletes a schedule.
    Remove { name: &'a str },
    /// The schedules due now (at most `limit`).
    Due { limit: usize },
    /// Moves a schedule from the tick it was read at to its next one.
    Advance {
        name: &'a str,
        json: String,
        next_ms: u64,
        read_ms: u64,
    },
}

/// A due schedule as the script returns it.
#[derive(Debug)]
pub(crate) struct DueSchedule {
    pub(crate) name: String,
    pub(crate) json: String,
    pub(crate) due_ms: u64,
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum ScheduleReply {
    /// `put`, `remove` and `advance`: whether it changed something.
    Changed(bool),
    /// `due`: the server's time and the due schedules.
    Due {
        now_ms: u64,
        schedules: Vec<DueSchedule>,
    },
}

impl Operation for ScheduleCall<'_> {
    type Reply = ScheduleReply;
    const NAME: &'static str = "schedule";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.schedule
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        let (mode, name, json, next, read, limit) = match self {
            ScheduleCall::Put {
                name,
                json,
                next_ms,
            } => ("put", *name, json.clone(), *next_ms, 0, 0),
            ScheduleCall::Remove { name } => ("remove", *name, String::new(), 0, 0, 0),
            ScheduleCall::Due { limit } => ("due", "", String::new(), 0, 0, *limit),
            ScheduleCall::Advance {
                name,
                json,
                next_ms,
                read_ms,
            } => ("advance", *name, json.clone(), *next_ms, *read_ms, 0),
        };
        argv.extend([
            mode.to_owned(),
            name.to_owned(),
            json,
            next.to_string(),
            read.to_string(),
            limit.to_string(),
        ]);
    }

    fn parse(&self, value: Value) -> Result<ScheduleReply> {
        let mut parts = Parts::new(Self::NAME, value)?;
        if !matches!(self, ScheduleCall::Due { .. }) {
            return Ok(ScheduleReply::Changed(parts.integer()? == 1));
        }
        let now_ms = parts.count()?;
        let mut schedules = Vec::new();
        loop {
            let name = parts.string()?;
            if name.is_empty() {
                break;
            }
            let json = parts.string()?;
            let due_ms = parts.count()?;
            schedules.push(DueSchedule { name, json, due_ms });
        }
        Ok(ScheduleReply::Due { now_ms, schedules })
    }
}
