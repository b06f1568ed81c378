//! `submit.lua`: queue a task.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use exo_proto::MultitaskStrategy;

use crate::error::Result;

pub(crate) const LUA: &str = include_str!("submit.lua");

/// `ARGV[7...]` of submit.lua.
#[derive(Debug)]
pub(crate) struct SubmitCall<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) payload_json: String,
    pub(crate) agent_name: String,
    pub(crate) max_retries: Option<u32>,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) tenant: &'a str,
    /// Not before this time (Unix seconds).
    pub(crate) run_at: Option<f64>,
    pub(crate) priority: Option<u8>,
    pub(crate) concurrency_key: Option<&'a str>,
    pub(crate) multitask_strategy: Option<MultitaskStrategy>,
}

/// The task that holds the submission, and whether this call created it.
#[derive(Debug)]
pub(crate) struct SubmitReply {
    pub(crate) task_id: String,
    pub(crate) outcome: Submission,
}

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submission {
    Created,
    /// The idempotency key or the task id was seen before.
    Duplicate,
    /// The conversation is busy and its strategy is `reject`; the reply's
    /// task id is the busy task.
    Busy,
}

impl Operation for SubmitCall<'_> {
    type Reply = SubmitReply;
    const NAME: &'static str = "submit";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.submit
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.extend([
            self.task_id.to_owned(),
            self.payload_json.clone(),
            self.agent_name.clone(),
            self.max_retries
                .map(|retries| retries.to_string())
                .unwrap_or_default(),
            self.idempotency_key.unwrap_or_default().to_owned(),
            self.tenant.to_owned(),
            self.run_at
                .map(|seconds| format!("{:.0}", seconds * 1000.0))
                .unwrap_or_default(),
            self.priority
                .map(|priority| priority.to_string())
                .unwrap_or_default(),
            self.concurrency_key.unwrap_or_default().to_owned(),
            self.multitask_strategy
                .map(|strategy| strategy.as_str().to_owned())
                .unwrap_or_default(),
        ]);
    }

    fn parse(&self, value: Value) -> Result<SubmitReply> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(SubmitReply {
            task_id: parts.string()?,
            outcome: match parts.integer()? {
                1 => Submission::Created,
                2 => Submission::Busy,
                _ => Submission::Duplicate,
            },
        })
    }
}
