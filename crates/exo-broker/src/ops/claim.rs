//! `claim.lua`: take up to `count` tasks for a worker and mark them running.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply, reply::Parts};
use crate::{error::Result, session::Rejected};

pub(crate) const LUA: &str = include_str!("claim.lua");

/// `ARGV[7...]` of claim.lua.
#[derive(Debug)]
pub(crate) struct ClaimCall<'a> {
    pub(crate) consumer: &'a str,
    pub(crate) count: usize,
    pub(crate) default_max_retries: u32,
    /// The most retries a payload may ask for.
    pub(crate) max_retries_cap: u32,
    /// This claim's random token (see `Lease::token`).
    pub(crate) token: &'a str,
    /// The worker's concurrency rules as JSON ("" for none).
    pub(crate) concurrency_rules: &'a str,
    /// Entries a blocking XREADGROUP already read; empty to let the script
    /// read new entries itself.
    pub(crate) entry_ids: &'a [String],
}

/// One task the script marked running.
#[derive(Debug)]
pub(crate) struct ClaimedRow {
    pub(crate) entry_id: String,
    pub(crate) task_id: String,
    /// The payload exactly as queued; `None` when its bytes are not UTF-8.
    pub(crate) payload: Option<String>,
    pub(crate) attempt: u32,
    pub(crate) retries: u32,
    pub(crate) max_retries: Option<u32>,
}

/// What the script did.
#[derive(Debug)]
pub(crate) struct ClaimReply {
    /// Server time (ms) of the next delayed retry, if any.
    pub(crate) next_due_ms: Option<i64>,
    pub(crate) rows: Vec<ClaimedRow>,
    pub(crate) rejected: Vec<Rejected>,
    /// The server's clock when it replied (ms), to read `next_due_ms` by.
    pub(crate) server_now_ms: i64,
}

impl Operation for ClaimCall<'_> {
    type Reply = ClaimReply;
    const NAME: &'static str = "claim";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.claim
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.reserve(6 + self.entry_ids.len());
        argv.extend([
            self.consumer.to_owned(),
            self.count.to_string(),
            self.default_max_retries.to_string(),
            self.max_retries_cap.to_string(),
            self.token.to_owned(),
            self.concurrency_rules.to_owned(),
        ]);
        argv.extend(self.entry_ids.iter().cloned());
    }

    fn parse(&self, value: Value) -> Result<ClaimReply> {
        Self::read(value)
    }
}

impl ClaimCall<'_> {
    /// Reads a claim reply (claim.lua's, or the one finish.lua appends).
    pub(crate) fn read(value: Value) -> Result<ClaimReply> {
        const NAME: &str = "claim";
        let mut parts = Parts::new(NAME, value)?;
        let next_due = parts.integer()?;
        let rows = parts.array()?;
        let rejected = parts.strings()?;
        let server_now_ms = parts.integer()?;
        let mut claimed = Vec::with_capacity(rows.len() / 6);
        for row in rows.chunks(6) {
            let [entry_id, task_id, payload, attempt, retries, max_retries] = row else {
                continue;
            };
            claimed.push(ClaimedRow {
                entry_id: reply::string(NAME, entry_id)?,
                task_id: reply::string(NAME, task_id)?,
                payload: reply::utf8(NAME, payload)?,
                attempt: reply::integer(NAME, attempt)?.max(0) as u32,
                retries: reply::integer(NAME, retries)?.max(0) as u32,
                max_retries: reply::integer(NAME, max_retries)
                    .ok()
                    .map(|max| max.max(0) as u32),
            });
        }
        Ok(ClaimReply {
            next_due_ms: (next_due >= 0).then_some(next_due),
            rows: claimed,
            rejected: rejected
                .chunks(3)
                .filter(|triple| triple.len() == 3)
                .map(|triple| Rejected {
                    entry_id: triple[0].clone(),
                    task_id: (!triple[1].is_empty()).then(|| triple[1].clone()),
                    reason: triple[2].clone(),
                })
                .collect(),
            server_now_ms,
        })
    }
}
