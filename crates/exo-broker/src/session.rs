//! The worker's handle on the queue: claim, finish, publish, heartbeat and
//! lease, reaping stuck tasks, handing tasks back, cancel signals.

use std::time::Duration;

use exo_proto::{RunStatus, StreamEvent, TaskPayload, WorkerHealth};
use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{Message, Value},
};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    broker::{Broker, build_client, is_missing_group},
    error::{Error, Result},
    events::EventPublisher,
    ops::{
        Operation,
        claim::{ClaimCall, ClaimReply},
        deregister::DeregisterCall,
        finish::{ClaimNext, FinishBatch, FinishBlock, FinishCall},
        heartbeat::HeartbeatCall,
        publish::PublishCall,
        reap::ReapCall,
        release::ReleaseCall,
        reply,
    },
};

/// The right to write one attempt of one task: its queue entry and its
/// attempt number (the fencing token). A write with a lease that is no
/// longer current is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task id.
    pub task_id: String,
    /// The queue entry id.
    pub entry_id: String,
    /// The attempt number.
    pub attempt: u32,
    /// The random token of the claim that gave this attempt: with it, an
    /// attempt number Redis handed out twice (a claim lost in a crash or a
    /// failover) still fences the first holder off.
    pub token: String,
}

impl Lease {
    /// What the scripts compare: `<attempt>:<token>`.
    pub fn fence(&self) -> String {
        format!("{}:{}", self.attempt, self.token)
    }
}

/// A task claimed for running.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    /// What fences this attempt.
    pub lease: Lease,
    /// The decoded payload.
    pub payload: TaskPayload,
    /// The payload exactly as queued (used for the retry or dead letter).
    pub raw_payload: String,
    /// Retries used before this attempt.
    pub retries: u32,
    /// The retry budget.
    pub max_retries: u32,
}

/// A queue entry that could not become a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The queue entry id.
    pub entry_id: String,
    /// The task id, when one could be read.
    pub task_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// The result of one claim.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// Tasks now `running` for this worker.
    pub tasks: Vec<ClaimedTask>,
    /// Entries sent to the dead letter instead.
    pub rejected: Vec<Rejected>,
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The run finished; `output` is all its text.
    Completed {
        /// The run's output.
        output: &'a str,
    },
    /// The run failed.
    Failed {
        /// The error message.
        error: &'a str,
        /// False for failures a retry cannot fix (bad config).
        retryable: bool,
    },
    /// The run stopped on a cancel.
    Cancelled,
    /// The run stopped at a tool call that needs a person's approval: the
    /// task waits (`pending`, with no queue entry) until a decision or the
    /// deadline, and the slot is free.
    Waiting {
        /// The [`exo_proto::ApprovalRequest`] as JSON.
        approval: &'a str,
        /// The `status` event (`waiting_for_tool`, with extension fields)
        /// that says so in the task's stream.
        event: &'a str,
        /// How long the wait may last before the call counts as denied.
        wait: Duration,
    },
}

/// What finishing an attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The task is `completed`.
    Completed,
    /// The task is `cancelled`.
    Cancelled,
    /// The task is `failed` and in the dead letter.
    Failed,
    /// The task is `retrying`; it runs again after `delay`.
    Retrying {
        /// The retry number.
        retry: u32,
        /// The backoff.
        delay: Duration,
    },
    /// The task waits for a person's decision on a tool call.
    Waiting,
    /// Refused: a client cancelled the task; finish it as cancelled.
    CancelRequested,
    /// Refused: the attempt is no longer current (the task was reclaimed).
    Stale {
        /// The task's status now.
        status: String,
        /// The task's attempt now.
        attempt: String,
    },
}

/// What the heartbeat learned about the worker's running tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    /// Tasks a client cancelled (in case the signal was missed).
    pub cancelled: Vec<String>,
    /// Tasks no longer on this worker's attempt (reclaimed elsewhere); stop
    /// them, their writes would be refused.
    pub lost: Vec<String>,
    /// Orphans (claimed here, never run: the claim's reply was lost) handed
    /// back to the queue without charging a retry.
    pub handed_back: u64,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Retries whose backoff had elapsed, put back on the queue.
    pub promoted: u64,
    /// Stuck tasks put back on the queue as a new attempt.
    pub requeued: u64,
    /// Stuck tasks out of retries, failed into the dead letter.
    pub failed: u64,
    /// Entries of tasks already finished, or stray copies, acknowledged.
    pub cleaned: u64,
    /// Tasks no entry carried any more (trimmed or evicted), ended with the
    /// reason.
    pub reconciled: u64,
    /// True when the pass reclaimed nothing because the fleet clock saw a
    /// stall (see [`crate::BrokerConfig::heartbeat_ttl`]).
    pub quiet: bool,
    /// Waits for approval that passed their deadline, ended as denied.
    pub approvals_expired: u64,
}

/// Options of [`WorkerSession::finish`].
///
/// The final write also keeps the worker's heartbeat hash right at once
/// (when the hash exists): the ending counts in `tasks_processed` or
/// `tasks_failed`, and `current_task_id` moves on (see
/// [`FinishOptions::current_task_after`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishOptions {
    /// Retries an executor spent inside this attempt (Temporal retries
    /// activities itself); added to the task's `retries`, so the hash reads
    /// the same whichever executor ran the task.
    pub inner_retries: u32,
    /// What the worker's heartbeat hash shows as `current_task_id` once
    /// the attempt has ended: a task the worker still runs, or `""` when
    /// it runs none. `None` leaves the field to the next heartbeat. A task
    /// claimed in the same round trip ([`Claimer::finish_then_claim`])
    /// takes its place.
    pub current_task_after: Option<String>,
    /// Step-journal records (JSON) of the attempt not yet written; kept
    /// when the task will run again (a retry, a wait for approval) and
    /// dropped with the journal when it ends.
    pub journal: Vec<String>,
    /// What the attempt's model calls used, by model: written to the task
    /// hash and the usage ledger with the final write.
    pub spent: Vec<ModelSpend>,
}

/// What one model's calls of an attempt used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSpend {
    /// The model string.
    pub model: String,
    /// Tokens, as the provider reported them.
    pub usage: exo_proto::Usage,
    /// Calls sent.
    pub calls: u64,
    /// Their cost in millionths of a US dollar (0 without a price).
    pub cost_micros: u64,
}

/// Options of [`WorkerSession::publish`] and [`WorkerSession::publisher`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    /// Refuse the events once this lease no longer holds the task: a worker
    /// cut off from Redis must not mix its events into the next attempt's
    /// stream. Without it, only an ended stream refuses them.
    pub fence: Option<&'a Lease>,
}

/// One worker's operations on the queue. It holds the worker id, which is
/// also the worker's consumer name in the queue's group. Cheap to clone;
/// get one from [`Broker::worker_session`].
#[derive(Debug, Clone)]
pub struct WorkerSession {
    broker: Broker,
    worker_id: String,
}

impl WorkerSession {
    pub(crate) fn new(broker: Broker, worker_id: String) -> Self {
        WorkerSession { broker, worker_id }
    }

    /// The worker id (and consumer name).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The connection this session uses.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// A claimer for this worker's claim loop. It owns a second connection
    /// for blocking reads, so the shared connection is never blocked.
    pub fn claimer(&self) -> Claimer {
        Claimer {
            session: self.clone(),
            blocking: None,
            found_work: true,
            next_due_at: None,
            concurrency_rules: self.broker.config().concurrency.to_json(),
        }
    }

    /// Ends an attempt in one round trip: writes the hash, acknowledges the
    /// queue entry, appends `events` and, when the task ends, `terminal`.
    /// A failure with retries left goes to `retrying` with backoff instead,
    /// and one past its budget to the dead letter. Fenced: refused when the
    /// attempt is no longer current.
    pub async fn finish(
        &self,
        task: &ClaimedTask,
        outcome: Outcome<'_>,
        events: Vec<String>,
        terminal: &StreamEvent,
        options: FinishOptions,
    ) -> Result<Finished> {
        let block = self.block(task, outcome, events, terminal, &options, 0);
        let ended = self
            .finish_blocks(
                std::slice::from_ref(&block),
                options.current_task_after.as_deref(),
                "",
            )
            .await?;
        only(ended).map(|(finished, _)| finished)
    }

    /// finish.lua's block for one attempt.
    pub(crate) fn block(
        &self,
        task: &ClaimedTask,
        outcome: Outcome<'_>,
        events: Vec<String>,
        terminal: &StreamEvent,
        options: &FinishOptions,
        next: usize,
    ) -> FinishBlock {
        let policy = self.broker.config().retry;
        FinishCall {
            task,
            outcome,
            events,
            terminal,
            backoff: policy.backoff(task.retries),
            inner_retries: options.inner_retries,
            next,
            journal: &options.journal,
            spent: &options.spent,
        }
        .block()
    }

    /// Ends the attempts of `blocks` in one round trip and claims the tasks
    /// they ask for. Each block's outcome (or the error it met), and each
    /// block's claimed tasks, in block order.
    pub(crate) async fn finish_blocks(
        &self,
        blocks: &[FinishBlock],
        current_task_after: Option<&str>,
        concurrency_rules: &str,
    ) -> Result<(Vec<Result<Finished>>, Vec<Claim>)> {
        let config = self.broker.config();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let asked = blocks.iter().any(|block| block.next > 0);
        let reply = self
            .broker
            .call(&FinishBatch {
                blocks,
                claim: asked.then_some(ClaimNext {
                    consumer: &self.worker_id,
                    token: &token,
                    max_retries_cap: config.max_retries_cap,
                    concurrency_rules,
                }),
                default_max_retries: config.retry.max_retries,
                worker_id: &self.worker_id,
                current_task_after,
            })
            .await?;
        if let Some(error) = &reply.claim_error {
            tracing::warn!(error, "the claim after a final write failed");
        }
        let claim = match reply.claimed {
            Some(claimed) => self.claimed_tasks(&token, claimed).await,
            None => Claim::default(),
        };
        // The claimed tasks go to the blocks that asked, in order; rejected
        // entries are reported once.
        let mut tasks = claim.tasks.into_iter();
        let mut rejected = Some(claim.rejected);
        let claims = (0..blocks.len())
            .map(|index| Claim {
                tasks: tasks
                    .by_ref()
                    .take(reply.asked.get(index).copied().unwrap_or(0))
                    .collect(),
                rejected: rejected.take().unwrap_or_default(),
            })
            .collect();
        let left: Vec<Lease> = tasks.map(|task| task.lease).collect();
        if !left.is_empty() {
            // Not expected: the script gives each row to a block.
            let _ = self.release(&left).await;
        }
        Ok((reply.finished, claims))
    }

    /// Turns what a claim marked running into claimed tasks; a payload exo
    /// cannot decode fails its task instead.
    async fn claimed_tasks(&self, token: &str, reply: ClaimReply) -> Claim {
        let session = self;
        let default_max_retries = session.broker.config().retry.max_retries;
        let mut claim = Claim {
            tasks: Vec::with_capacity(reply.rows.len()),
            rejected: reply.rejected,
        };
        for row in reply.rows {
            let lease = Lease {
                task_id: row.task_id.clone(),
                entry_id: row.entry_id.clone(),
                attempt: row.attempt,
                token: token.to_owned(),
            };
            // A payload that is not UTF-8 is refused as it is, never
            // rewritten: the dead letter keeps its exact bytes.
            let (raw, decoded) = match row.payload {
                Some(raw) => {
                    let decoded =
                        TaskPayload::from_json(raw.as_bytes()).map_err(|error| error.to_string());
                    (raw, decoded)
                }
                None => (String::new(), Err("payload is not valid UTF-8".to_owned())),
            };
            match decoded {
                Ok(payload) => claim.tasks.push(ClaimedTask {
                    lease,
                    payload,
                    raw_payload: raw,
                    retries: row.retries,
                    max_retries: row.max_retries.unwrap_or(default_max_retries),
                }),
                Err(reason) => {
                    session.fail_undecodable(lease, raw, &reason).await;
                    claim.rejected.push(Rejected {
                        entry_id: row.entry_id,
                        task_id: Some(row.task_id),
                        reason,
                    });
                }
            }
        }
        claim
    }

    /// Appends a batch of events (JSON strings) to a task's stream and
    /// publishes them, in one round trip. `Ok(false)` when the batch was
    /// refused (see [`PublishOptions::fence`]; an ended stream refuses
    /// every batch).
    pub async fn publish(
        &self,
        task_id: &str,
        events: &[String],
        options: PublishOptions<'_>,
    ) -> Result<bool> {
        self.publish_with_journal(task_id, events, &[], options)
            .await
    }

    /// [`WorkerSession::publish`] with step-journal records (JSON), appended
    /// to the task's journal in the same round trip and under the same
    /// fence.
    pub async fn publish_with_journal(
        &self,
        task_id: &str,
        events: &[String],
        journal: &[String],
        options: PublishOptions<'_>,
    ) -> Result<bool> {
        if events.is_empty() && journal.is_empty() {
            return Ok(true);
        }
        self.broker
            .call(&PublishCall {
                task_id,
                fence: options.fence,
                events,
                journal,
            })
            .await
    }

    /// The step journal of a task: the records its earlier attempts wrote,
    /// in order (one `LRANGE`; empty when there is none).
    pub async fn journal(&self, task_id: &str) -> Result<Vec<String>> {
        let key = self.broker.config().keys.journal(task_id);
        self.broker.read_list(&key).await
    }

    /// Whether a later task of the conversation asked to roll this one
    /// back (`multitask_strategy` `rollback`): its run deletes what it
    /// wrote to memory once it has stopped. One `HGET`.
    pub async fn rollback_requested(&self, task_id: &str) -> Result<bool> {
        self.broker.count();
        let value: Option<String> = self
            .broker
            .inner
            .client
            .hget(self.broker.keys().task(task_id), "rollback")
            .await?;
        Ok(value.as_deref() == Some("1"))
    }

    /// A batching publisher for one task's events.
    pub fn publisher(&self, task_id: &str, options: PublishOptions<'_>) -> EventPublisher {
        EventPublisher::new(self.clone(), task_id, options.fence.cloned())
    }

    /// Writes the worker's heartbeat, renews the leases of its running
    /// tasks and reports which were cancelled or lost, in one round trip.
    pub async fn heartbeat(
        &self,
        health: &WorkerHealth,
        ttl: Duration,
        running: &[Lease],
    ) -> Result<LeaseReport> {
        let config = self.broker.config();
        self.broker
            .call(&HeartbeatCall {
                health,
                ttl,
                orphan_after: (config.lease / 2).max(config.command_timeout * 2),
                nonce: &self.broker.inner.nonce,
                running,
            })
            .await
    }

    /// Removes this stopping worker: its heartbeat hash (only when it is
    /// this process's own: another live process with the same id keeps its
    /// own), its fleet entry, and its consumer when nothing is pending on it
    /// (pending entries stay for the reaper). A worker that stops this way
    /// is gone from the fleet; one that crashes is listed as dead until it
    /// has been silent for an hour.
    pub async fn deregister(&self) -> Result<()> {
        self.broker
            .call(&DeregisterCall {
                worker_id: &self.worker_id,
                nonce: &self.broker.inner.nonce,
            })
            .await?;
        Ok(())
    }

    /// One reaper pass: promotes due retries and recovers tasks of dead
    /// workers or expired leases (at most `limit` entries).
    pub async fn reap(&self, limit: usize) -> Result<ReapReport> {
        match self.reap_once(limit).await {
            Err(error) if is_missing_group(&error) => {
                self.broker.ensure_group().await?;
                self.reap_once(limit).await
            }
            result => result,
        }
    }

    async fn reap_once(&self, limit: usize) -> Result<ReapReport> {
        let config = self.broker.config();
        self.broker
            .call(&ReapCall {
                worker_id: &self.worker_id,
                lease: config.lease,
                limit,
                default_max_retries: config.retry.max_retries,
                dead_worker_idle: config.dead_worker_idle,
                heartbeat_ttl: config.heartbeat_ttl,
            })
            .await
    }

    /// Hands tasks back to the queue (a worker shutting down). Returns how
    /// many were handed back; a task no longer on its lease is left alone.
    pub async fn release(&self, leases: &[Lease]) -> Result<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        self.broker.call(&ReleaseCall { leases }).await
    }

    /// Fails a claimed task whose payload Lua could decode but exo cannot
    /// (not UTF-8, or not a valid payload): not retryable, with the reason.
    /// The other tasks of the claim are running; a failed write here must
    /// not lose them. The reaper finishes this one (it cannot decode either)
    /// if this write fails.
    async fn fail_undecodable(&self, lease: Lease, raw_payload: String, reason: &str) {
        let task_id = lease.task_id.clone();
        let task = ClaimedTask {
            lease,
            payload: TaskPayload::new(task_id.clone(), Default::default(), ""),
            raw_payload,
            retries: 0,
            max_retries: 0,
        };
        let terminal = StreamEvent::status(RunStatus::Error, "", reason);
        let error_event = StreamEvent::Error(exo_proto::ErrorEvent {
            error: reason.to_owned(),
            error_type: exo_proto::ErrorType::InvalidPayload.as_str().to_owned(),
            agent_name: String::new(),
            step_number: None,
            recoverable: false,
        });
        let outcome = Outcome::Failed {
            error: reason,
            retryable: false,
        };
        // Boxed: a finish may claim, and a claim may come here.
        let finishing = Box::pin(self.finish(
            &task,
            outcome,
            vec![error_event.to_json()],
            &terminal,
            FinishOptions::default(),
        ));
        if let Err(error) = finishing.await {
            tracing::warn!(%error, task_id, "could not fail an undecodable task");
        }
    }

    /// Subscribes to every task's cancel channel on one connection.
    pub async fn cancel_listener(&self) -> Result<CancelListener> {
        let base = build_client(&self.broker.inner.config, &self.broker.inner.url)?;
        let subscriber: SubscriberClient = Builder::from_config(base.client_config())
            .with_performance_config(|performance| {
                performance.default_command_timeout = self.broker.inner.config.command_timeout;
                performance.broadcast_channel_capacity = 1024;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = self.broker.inner.config.connect_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_subscriber_client()
            .map_err(|error| Error::Config(error.to_string()))?;
        match tokio::time::timeout(self.broker.inner.config.connect_timeout, subscriber.init())
            .await
        {
            Ok(result) => {
                result?;
            }
            Err(_) => {
                return Err(Error::unreachable(format!(
                    "{}: no connection",
                    self.broker.masked_url()
                )));
            }
        }
        let mut receiver = subscriber.message_rx();
        let manager = subscriber.manage_subscriptions();
        self.broker.count();
        subscriber
            .psubscribe(self.broker.keys().cancel_pattern())
            .await?;
        // A refused subscription (an ACL without the pattern, say) is not
        // always reported; prove the channel works with a probe.
        let probe = self
            .broker
            .keys()
            .cancel_channel(&format!("probe-{}", uuid::Uuid::new_v4().simple()));
        let deadline = tokio::time::Instant::now()
            + self
                .broker
                .config()
                .command_timeout
                .min(std::time::Duration::from_secs(3));
        let mut received = false;
        while !received && tokio::time::Instant::now() < deadline {
            self.broker.count();
            let _: Value = self
                .broker
                .inner
                .client
                .publish(probe.as_str(), "probe")
                .await?;
            let wait = tokio::time::timeout(std::time::Duration::from_millis(300), async {
                loop {
                    match receiver.recv().await {
                        Ok(message) if message.channel == probe => return true,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return false,
                    }
                }
            });
            received = wait.await.unwrap_or(false);
        }
        if !received {
            manager.abort();
            let _ = subscriber.quit().await;
            return Err(Error::reply(format!(
                "subscribed to {} but a probe message never arrived; check that the Redis user may PSUBSCRIBE that pattern",
                self.broker.keys().cancel_pattern()
            )));
        }
        Ok(CancelListener {
            subscriber,
            receiver,
            manager,
            keys: self.broker.keys().clone(),
        })
    }
}

/// Cancel signals for every task, on one pub/sub connection per worker.
#[derive(Debug)]
pub struct CancelListener {
    subscriber: SubscriberClient,
    receiver: tokio::sync::broadcast::Receiver<Message>,
    manager: tokio::task::JoinHandle<()>,
    keys: exo_proto::Keys,
}

impl CancelListener {
    /// The next cancelled task id; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            match self.receiver.recv().await {
                Ok(message) => {
                    if let Some(task_id) = self.keys.task_id_of_cancel_channel(&message.channel)
                        && !task_id.starts_with("probe-")
                    {
                        return Some(task_id.to_owned());
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::warn!(
                        skipped,
                        "cancel signals were dropped; the heartbeat will catch them"
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Closes the subscription.
    pub async fn close(self) {
        self.manager.abort();
        let _ = self.subscriber.quit().await;
    }
}

/// One worker's claim loop state: which read to try first, and its
/// blocking connection.
#[derive(Debug)]
pub struct Claimer {
    session: WorkerSession,
    blocking: Option<fred::clients::Client>,
    found_work: bool,
    next_due_at: Option<tokio::time::Instant>,
    /// The worker's concurrency rules, as the claim script reads them.
    concurrency_rules: String,
}

impl Claimer {
    /// Claims up to `max` tasks, waiting up to `block` for one to arrive.
    ///
    /// Under load this is one round trip (a script reads the queue and marks
    /// the tasks running); when the queue is empty it blocks on its own
    /// connection and then marks what arrived (two round trips).
    pub async fn claim(&mut self, max: usize, block: Duration) -> Result<Claim> {
        match self.claim_once(max, block).await {
            Err(error) if is_missing_group(&error) => {
                tracing::warn!(
                    "the consumer group is missing (Redis lost its data?); creating it again"
                );
                self.session.broker.ensure_group().await?;
                self.claim_once(max, block).await
            }
            result => result,
        }
    }

    async fn claim_once(&mut self, max: usize, block: Duration) -> Result<Claim> {
        if max == 0 {
            return Ok(Claim::default());
        }
        let now = tokio::time::Instant::now();
        let retry_due = self.next_due_at.is_some_and(|due| due <= now);
        if self.found_work || retry_due || block.is_zero() {
            let claim = self.run_script(max, &[]).await?;
            self.found_work = !claim.tasks.is_empty() || !claim.rejected.is_empty();
            if self.found_work || block.is_zero() {
                return Ok(claim);
            }
        }
        let block = match self.next_due_at {
            Some(due) => block.min(
                due.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            ),
            None => block,
        };
        let ids = match self.blocking_read(max, block).await {
            Ok(ids) => ids,
            Err(error) => {
                // The blocking connection may be broken or hold on to a
                // server that is no longer the primary (a failover): it is
                // made anew, and the next claim runs the script first,
                // through the connection that follows the primary.
                self.found_work = true;
                if let Some(client) = self.blocking.take() {
                    let timeout = self.session.broker.config().command_timeout;
                    let _ = tokio::time::timeout(timeout, client.quit()).await;
                }
                return Err(error);
            }
        };
        if ids.is_empty() {
            // Nothing arrived on the stream; tasks that wait beside it
            // (prioritized ones, held ones let through) are looked at by
            // the next call's script.
            self.found_work = true;
            return Ok(Claim::default());
        }
        let claim = self.run_script(max, &ids).await?;
        self.found_work = true;
        Ok(claim)
    }

    /// Ends an attempt ([`WorkerSession::finish`]) and, once it has ended,
    /// claims up to `next` tasks for this worker in the same round trip, so
    /// a slot goes on to its next task without a claim of its own. Ask for
    /// none (`next` 0) when repeating a call whose reply was lost: a
    /// repeated claim would take tasks whose reply never arrives (the
    /// heartbeat hands those back, after a while).
    pub async fn finish_then_claim(
        &mut self,
        task: &ClaimedTask,
        outcome: Outcome<'_>,
        events: Vec<String>,
        terminal: &StreamEvent,
        options: FinishOptions,
        next: usize,
    ) -> Result<(Finished, Claim)> {
        let session = self.session.clone();
        let block = session.block(task, outcome, events, terminal, &options, next);
        only(
            session
                .finish_blocks(
                    std::slice::from_ref(&block),
                    options.current_task_after.as_deref(),
                    &self.concurrency_rules,
                )
                .await?,
        )
    }

    async fn run_script(&mut self, max: usize, ids: &[String]) -> Result<Claim> {
        let session = &self.session;
        let config = session.broker.config();
        let token = uuid::Uuid::new_v4().simple().to_string();
        // Claims do not wait for replicas: a claim a failover loses is
        // handed out again with a new token, which fences the first holder
        // off (see `Lease::token`).
        let reply = session
            .broker
            .call(&ClaimCall {
                consumer: &session.worker_id,
                count: max,
                default_max_retries: config.retry.max_retries,
                max_retries_cap: config.max_retries_cap,
                token: &token,
                concurrency_rules: &self.concurrency_rules,
                entry_ids: ids,
            })
            .await?;
        Ok(self.accept(&token, reply).await)
    }

    /// Turns what a claim script marked running into claimed tasks, and
    /// notes when the next retry is due.
    async fn accept(&mut self, token: &str, reply: ClaimReply) -> Claim {
        // The due time is on the server's clock; so is the time it sent.
        self.next_due_at = reply.next_due_ms.map(|due| {
            tokio::time::Instant::now()
                + Duration::from_millis((due - reply.server_now_ms).max(0) as u64)
        });
        self.session.claimed_tasks(token, reply).await
    }

    async fn blocking_read(&mut self, max: usize, block: Duration) -> Result<Vec<String>> {
        if self.blocking.is_none() {
            self.blocking = Some(self.session.broker.dedicated_client().await?);
        }
        let Some(client) = &self.blocking else {
            return Ok(Vec::new());
        };
        let broker = &self.session.broker;
        let keys = broker.keys();
        let options = Options {
            timeout: Some(block + broker.config().command_timeout),
            ..Options::default()
        };
        broker.count();
        let value: Value = client
            .with_options(&options)
            .xreadgroup(
                keys.group(),
                self.session.worker_id.as_str(),
                Some(max as u64),
                Some(block.as_millis().max(1) as u64),
                false,
                keys.queue(),
                ">",
            )
            .await?;
        entry_ids(value)
    }

    /// Closes the blocking connection.
    pub async fn close(&mut self) {
        if let Some(client) = self.blocking.take() {
            let _ = client.quit().await;
        }
    }
}

/// The outcome and claim of a call that ended one attempt.
pub(crate) fn only(
    (finished, claims): (Vec<Result<Finished>>, Vec<Claim>),
) -> Result<(Finished, Claim)> {
    let claim = claims.into_iter().next().unwrap_or_default();
    match finished.into_iter().next() {
        Some(finished) => finished.map(|finished| (finished, claim)),
        None => Err(Error::Reply {
            what: FinishBatch::NAME,
            detail: "no outcome".into(),
        }),
    }
}

/// The entry ids of an XREADGROUP reply.
fn entry_ids(value: Value) -> Result<Vec<String>> {
    Ok(reply::stream_entries("XREADGROUP", value)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}
