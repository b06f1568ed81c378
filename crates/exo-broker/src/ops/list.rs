//! `list.lua`: a page of tasks, newest first.

use exo_proto::{TaskResult, TaskStatus};
use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply, reply::Parts};
use crate::{client::TaskPage, error::Result};

pub(crate) const LUA: &str = include_str!("list.lua");

/// `ARGV[7...]` of list.lua.
#[derive(Debug)]
pub(crate) struct ListCall<'a> {
    pub(crate) status: Option<TaskStatus>,
    pub(crate) tenant: &'a str,
    pub(crate) agent: &'a str,
    pub(crate) limit: usize,
    pub(crate) cursor: u64,
}

impl Operation for ListCall<'_> {
    type Reply = TaskPage;
    const NAME: &'static str = "list";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.list
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.extend([
            self.status
                .map(|status| status.as_str().to_owned())
                .unwrap_or_default(),
            self.limit.to_string(),
            self.cursor.to_string(),
            // How many timeline entries one call examines at most.
            (self.limit * 20).clamp(1000, 5000).to_string(),
            self.tenant.to_owned(),
            self.agent.to_owned(),
        ]);
    }

    fn parse(&self, value: Value) -> Result<TaskPage> {
        let mut parts = Parts::new(Self::NAME, value)?;
        let next = parts.integer()?;
        let rows = parts.array()?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in rows {
            match TaskResult::from_hash(reply::pairs(Self::NAME, row)?) {
                Ok(task) => tasks.push(task),
                Err(error) => tracing::warn!(%error, "skipping an unreadable task hash"),
            }
        }
        Ok(TaskPage {
            tasks,
            next_cursor: (next >= 0).then_some(next as u64),
        })
    }
}
