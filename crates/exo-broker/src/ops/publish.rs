//! `publish.lua`: append a batch of events to a task's stream.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply};
use crate::{error::Result, session::Lease};

pub(crate) const LUA: &str = include_str!("publish.lua");

/// `ARGV[7...]` of publish.lua.
#[derive(Debug)]
pub(crate) struct PublishCall<'a> {
    pub(crate) task_id: &'a str,
    /// Refuse the batch unless this lease still holds the task.
    pub(crate) fence: Option<&'a Lease>,
    pub(crate) events: &'a [String],
    /// Step-journal records, appended in the same round trip.
    pub(crate) journal: &'a [String],
}

impl Operation for PublishCall<'_> {
    /// False when the batch was refused (the lease is gone, or the stream
    /// has ended).
    type Reply = bool;
    const NAME: &'static str = "publish";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.publish
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.reserve(self.events.len() + self.journal.len() + 3);
        argv.push(self.task_id.to_owned());
        argv.push(self.fence.map(Lease::fence).unwrap_or_default());
        argv.push(self.journal.len().to_string());
        argv.extend(self.journal.iter().cloned());
        argv.extend(self.events.iter().cloned());
    }

    fn parse(&self, value: Value) -> Result<bool> {
        Ok(reply::integer(Self::NAME, &value)? >= 0)
    }
}
