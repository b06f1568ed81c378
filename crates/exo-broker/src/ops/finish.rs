//! `finish.lua`: end one attempt, fenced.

use std::time::Duration;

use exo_proto::{RunStatus, StreamEvent};
use fred::types::{Value, scripts::Script};

use super::{
    Operation, Scripts,
    claim::{ClaimCall, ClaimReply},
    reply::{self, Parts},
};
use crate::{
    error::{Error, Result},
    session::{ClaimedTask, Finished, ModelSpend, Outcome},
};

pub(crate) const LUA: &str = include_str!("finish.lua");

/// `ARGV[7...]` of finish.lua.
#[derive(Debug)]
pub(crate) struct FinishCall<'a> {
    pub(crate) task: &'a ClaimedTask,
    pub(crate) outcome: Outcome<'a>,
    /// Events of the run not yet published; they go before the terminal one.
    pub(crate) events: Vec<String>,
    /// The terminal status event, used when the task ends.
    pub(crate) terminal: &'a StreamEvent,
    /// The backoff before the retry, when the failure is retried.
    pub(crate) backoff: Duration,
    /// The default retry budget, for a task whose hash has none.
    pub(crate) default_max_retries: u32,
    /// Retries the executor spent inside this attempt.
    pub(crate) inner_retries: u32,
    /// Tasks to claim for the same worker once this attempt has ended.
    pub(crate) claim_next: Option<ClaimNext<'a>>,
    /// The worker whose heartbeat hash counts the ending.
    pub(crate) worker_id: &'a str,
    /// What that hash shows as `current_task_id` afterwards, if anything.
    pub(crate) current_task_after: Option<&'a str>,
    /// Step-journal records not yet written.
    pub(crate) journal: &'a [String],
    /// What the attempt's model calls used.
    pub(crate) spent: &'a [ModelSpend],
}

/// finish.lua's `ARGV[27]`: `[[model, input, output, calls, cost], ...]`.
fn spent_json(spent: &[ModelSpend]) -> String {
    if spent.is_empty() {
        return String::new();
    }
    serde_json::Value::Array(
        spent
            .iter()
            .map(|spend| {
                serde_json::json!([
                    spend.model,
                    spend.usage.input_tokens,
                    spend.usage.output_tokens,
                    spend.calls,
                    spend.cost_micros
                ])
            })
            .collect(),
    )
    .to_string()
}

/// The claim that follows a final write in the same round trip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimNext<'a> {
    pub(crate) count: usize,
    pub(crate) consumer: &'a str,
    pub(crate) token: &'a str,
    pub(crate) max_retries_cap: u32,
    /// The worker's concurrency rules as JSON ("" for none).
    pub(crate) concurrency_rules: &'a str,
}

/// What the final write did, and what the claim after it took.
#[derive(Debug)]
pub(crate) struct FinishReply {
    pub(crate) finished: Finished,
    pub(crate) claimed: Option<ClaimReply>,
}

impl FinishCall<'_> {
    /// The outcome's word, and its text (the result JSON or the error).
    fn kind(&self) -> (&'static str, String, bool) {
        match self.outcome {
            Outcome::Completed { output } => (
                "completed",
                serde_json::json!({ "output": output }).to_string(),
                false,
            ),
            Outcome::Failed { error, retryable } => ("failed", error.to_owned(), retryable),
            Outcome::Cancelled => ("cancelled", String::new(), false),
            Outcome::Waiting { approval, .. } => ("waiting", approval.to_owned(), false),
        }
    }

    /// The status event that announces a retry.
    fn retry_event(&self, error: &str) -> StreamEvent {
        let task = self.task;
        StreamEvent::status(
            RunStatus::Running,
            self.terminal.agent_name(),
            format!(
                "attempt {} failed: {}; retry {} of {} starts in {:.1}s",
                task.lease.attempt,
                error,
                task.retries + 1,
                task.max_retries,
                self.backoff.as_secs_f64()
            ),
        )
    }
}

impl Operation for FinishCall<'_> {
    type Reply = FinishReply;
    const NAME: &'static str = "finish";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.finish
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        let (kind, text, retryable) = self.kind();
        let failed = matches!(self.outcome, Outcome::Failed { .. });
        let retry_event = if failed {
            self.retry_event(&text).to_json()
        } else {
            String::new()
        };
        let lease = &self.task.lease;
        argv.reserve(20 + self.journal.len() + self.events.len());
        argv.extend([
            lease.task_id.clone(),
            lease.entry_id.clone(),
            lease.fence(),
            kind.to_owned(),
            text,
            if retryable { "1" } else { "0" }.to_owned(),
            match self.outcome {
                Outcome::Waiting { wait, .. } => wait.as_millis().to_string(),
                _ => self.backoff.as_millis().to_string(),
            },
            // Only a failure (for the retry or the dead letter) and a wait
            // (parked until the decision) need the payload, and only when
            // its queue entry is gone.
            if failed || matches!(self.outcome, Outcome::Waiting { .. }) {
                self.task.raw_payload.clone()
            } else {
                String::new()
            },
            match self.outcome {
                Outcome::Waiting { event, .. } => event.to_owned(),
                _ => self.terminal.to_json(),
            },
            retry_event,
            self.default_max_retries.to_string(),
            self.inner_retries.to_string(),
        ]);
        match self.claim_next {
            Some(next) if next.count > 0 => argv.extend([
                next.count.to_string(),
                next.consumer.to_owned(),
                next.token.to_owned(),
                next.max_retries_cap.to_string(),
            ]),
            _ => argv.extend(["0".to_owned(), String::new(), String::new(), String::new()]),
        }
        argv.extend([
            self.worker_id.to_owned(),
            self.current_task_after.unwrap_or_default().to_owned(),
            if self.current_task_after.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        ]);
        argv.push(
            self.claim_next
                .map(|next| next.concurrency_rules.to_owned())
                .unwrap_or_default(),
        );
        argv.push(spent_json(self.spent));
        argv.push(self.journal.len().to_string());
        argv.extend(self.journal.iter().cloned());
        argv.extend(self.events.iter().cloned());
    }

    fn parse(&self, value: Value) -> Result<FinishReply> {
        if self.claim_next.is_some_and(|next| next.count > 0) {
            let mut parts = reply::array(Self::NAME, value)?.into_iter();
            let finished = self.outcome(parts.next().unwrap_or(Value::Null))?;
            let claimed = parts.next().map(ClaimCall::read).transpose()?;
            return Ok(FinishReply { finished, claimed });
        }
        Ok(FinishReply {
            finished: self.outcome(value)?,
            claimed: None,
        })
    }
}

impl FinishCall<'_> {
    /// Reads the outcome part of the reply.
    fn outcome(&self, value: Value) -> Result<Finished> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(match parts.string()?.as_str() {
            "completed" => Finished::Completed,
            "cancelled" => Finished::Cancelled,
            "failed" => Finished::Failed,
            "waiting" => Finished::Waiting,
            "retrying" => Finished::Retrying {
                retry: parts.count()? as u32,
                delay: self.backoff,
            },
            "cancel_requested" => Finished::CancelRequested,
            "stale" => Finished::Stale {
                status: parts.string()?,
                attempt: parts.string()?,
            },
            other => {
                return Err(Error::Reply {
                    what: Self::NAME,
                    detail: format!("unknown outcome `{other}`"),
                });
            }
        })
    }
}
