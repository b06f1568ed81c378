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
    error::{Error, RedisCode, Result},
    session::{ClaimedTask, Finished, ModelSpend, Outcome},
};

pub(crate) const LUA: &str = include_str!("finish.lua");

/// One attempt's end: a block of finish.lua's arguments.
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
    /// Retries the executor spent inside this attempt.
    pub(crate) inner_retries: u32,
    /// Tasks to claim for the slot once this attempt has ended.
    pub(crate) next: usize,
    /// Step-journal records not yet written.
    pub(crate) journal: &'a [String],
    /// What the attempt's model calls used.
    pub(crate) spent: &'a [ModelSpend],
}

/// A block of finish.lua's arguments, built by [`FinishCall::block`]: owned,
/// so that attempts of several slots can share one call.
#[derive(Debug, Clone)]
pub(crate) struct FinishBlock {
    args: Vec<String>,
    /// The backoff the retry announced, for the reply.
    backoff: Duration,
    /// Tasks asked for the slot.
    pub(crate) next: usize,
}

/// finish.lua: the attempts that end, and the claim after them.
#[derive(Debug)]
pub(crate) struct FinishBatch<'a> {
    pub(crate) blocks: &'a [FinishBlock],
    /// Who claims the slots' next tasks, when a block asks for any.
    pub(crate) claim: Option<ClaimNext<'a>>,
    /// The default retry budget, for a task whose hash has none.
    pub(crate) default_max_retries: u32,
    /// The worker whose heartbeat hash counts the endings.
    pub(crate) worker_id: &'a str,
    /// What that hash shows as `current_task_id` afterwards, if anything.
    pub(crate) current_task_after: Option<&'a str>,
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
    pub(crate) consumer: &'a str,
    pub(crate) token: &'a str,
    pub(crate) max_retries_cap: u32,
    /// The worker's concurrency rules as JSON ("" for none).
    pub(crate) concurrency_rules: &'a str,
}

/// What the final writes did, block by block, and what the claim after
/// them took.
#[derive(Debug)]
pub(crate) struct FinishReply {
    /// Each block's outcome, or the error that block met (the others are
    /// not affected by it).
    pub(crate) finished: Vec<Result<Finished>>,
    /// The claim, when a block asked for tasks.
    pub(crate) claimed: Option<ClaimReply>,
    /// Why the claim failed, when it did (the attempts ended all the same).
    pub(crate) claim_error: Option<String>,
    /// How many of the claimed tasks are each block's, in block order.
    pub(crate) asked: Vec<usize>,
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

    /// The block's fields, as finish.lua's header lists them.
    pub(crate) fn block(&self) -> FinishBlock {
        let (kind, text, retryable) = self.kind();
        let failed = matches!(self.outcome, Outcome::Failed { .. });
        let retry_event = if failed {
            self.retry_event(&text).to_json()
        } else {
            String::new()
        };
        let lease = &self.task.lease;
        let mut args = Vec::with_capacity(14 + self.journal.len() + self.events.len());
        args.extend([
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
            self.inner_retries.to_string(),
            spent_json(self.spent),
            self.next.to_string(),
            self.journal.len().to_string(),
        ]);
        args.extend(self.journal.iter().cloned());
        args.extend(self.events.iter().cloned());
        FinishBlock {
            args,
            backoff: self.backoff,
            next: self.next,
        }
    }
}

impl Operation for FinishBatch<'_> {
    type Reply = FinishReply;
    const NAME: &'static str = "finish";
    const DURABLE: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.finish
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        let size: usize = self.blocks.iter().map(|block| block.args.len() + 1).sum();
        argv.reserve(9 + size);
        argv.push(self.blocks.len().to_string());
        match self.claim {
            Some(next) => argv.extend([
                next.consumer.to_owned(),
                next.token.to_owned(),
                next.max_retries_cap.to_string(),
                next.concurrency_rules.to_owned(),
            ]),
            None => argv.extend([String::new(), String::new(), "0".to_owned(), String::new()]),
        }
        argv.extend([
            self.default_max_retries.to_string(),
            self.worker_id.to_owned(),
            self.current_task_after.unwrap_or_default().to_owned(),
            if self.current_task_after.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        ]);
        for block in self.blocks {
            argv.push(block.args.len().to_string());
            argv.extend(block.args.iter().cloned());
        }
    }

    fn parse(&self, value: Value) -> Result<FinishReply> {
        let mut parts = reply::array(Self::NAME, value)?.into_iter();
        let replies = reply::array(Self::NAME, parts.next().unwrap_or(Value::Null))?;
        if replies.len() != self.blocks.len() {
            return Err(Error::Reply {
                what: Self::NAME,
                detail: format!(
                    "{} outcomes for {} attempts",
                    replies.len(),
                    self.blocks.len()
                ),
            });
        }
        let finished = replies
            .into_iter()
            .zip(self.blocks)
            .map(|(value, block)| outcome(value, block.backoff))
            .collect::<Result<Vec<_>>>()?;
        let (claimed, claim_error) = match parts.next() {
            Some(Value::Array(mut items)) => {
                let error = if items.len() > 4 {
                    items
                        .pop()
                        .map(|message| reply::string(Self::NAME, &message))
                        .transpose()?
                } else {
                    None
                };
                (Some(ClaimCall::read(Value::Array(items))?), error)
            }
            _ => (None, None),
        };
        let asked = reply::array(Self::NAME, parts.next().unwrap_or(Value::Null))?
            .iter()
            .map(|count| reply::integer(Self::NAME, count).map(|count| count.max(0) as usize))
            .collect::<Result<Vec<_>>>()?;
        Ok(FinishReply {
            finished,
            claimed,
            claim_error,
            asked,
        })
    }
}

/// Reads one block's outcome.
fn outcome(value: Value, backoff: Duration) -> Result<Result<Finished>> {
    const NAME: &str = FinishBatch::NAME;
    // An outcome of one word comes as that word, not as an array.
    let value = match value {
        word @ (Value::String(_) | Value::Bytes(_)) => Value::Array(vec![word]),
        other => other,
    };
    let mut parts = Parts::new(NAME, value)?;
    Ok(Ok(match parts.string()?.as_str() {
        "completed" => Finished::Completed,
        "cancelled" => Finished::Cancelled,
        "failed" => Finished::Failed,
        "waiting" => Finished::Waiting,
        "retrying" => Finished::Retrying {
            retry: parts.count()? as u32,
            delay: backoff,
        },
        "cancel_requested" => Finished::CancelRequested,
        "stale" => Finished::Stale {
            status: parts.string()?,
            attempt: parts.string()?,
        },
        "error" => {
            let message = parts.string()?;
            return Ok(Err(Error::Redis {
                code: RedisCode::parse(&message),
                message,
                source: None,
            }));
        }
        other => {
            return Err(Error::Reply {
                what: NAME,
                detail: format!("unknown outcome `{other}`"),
            });
        }
    }))
}
