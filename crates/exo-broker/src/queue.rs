//! The worker's side of the queue: claim, finish, heartbeat and lease,
//! reaping stuck tasks, handing tasks back, cancel signals.

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
    scripts::reply,
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
}

impl Broker {
    /// A claimer for one worker's claim loop. It owns a second connection
    /// for blocking reads, so the shared connection is never blocked.
    pub fn claimer(&self, worker_id: impl Into<String>) -> Claimer {
        Claimer {
            broker: self.clone(),
            consumer: worker_id.into(),
            blocking: None,
            found_work: true,
            next_due_at: None,
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
    ) -> Result<Finished> {
        self.finish_with_retries(task, outcome, events, terminal, 0)
            .await
    }

    /// [`Broker::finish`] for an executor that retried inside the attempt
    /// (Temporal): `retries_used` is added to the task's `retries`, so the
    /// hash reads the same whichever executor ran the task.
    pub async fn finish_with_retries(
        &self,
        task: &ClaimedTask,
        outcome: Outcome<'_>,
        events: Vec<String>,
        terminal: &StreamEvent,
        retries_used: u32,
    ) -> Result<Finished> {
        let policy = self.config().retry;
        let backoff = policy.backoff(task.retries);
        let (kind, text, retryable) = match outcome {
            Outcome::Completed { output } => (
                "completed",
                serde_json::json!({ "output": output }).to_string(),
                false,
            ),
            Outcome::Failed { error, retryable } => ("failed", error.to_owned(), retryable),
            Outcome::Cancelled => ("cancelled", String::new(), false),
        };
        let retry_event = StreamEvent::status(
            RunStatus::Running,
            terminal.agent_name(),
            format!(
                "attempt {} failed: {}; retry {} of {} starts in {:.1}s",
                task.lease.attempt,
                text,
                task.retries + 1,
                task.max_retries,
                backoff.as_secs_f64()
            ),
        );
        let mut args = vec![
            task.lease.task_id.clone(),
            task.lease.entry_id.clone(),
            task.lease.fence(),
            kind.to_owned(),
            text,
            if retryable { "1" } else { "0" }.to_owned(),
            backoff.as_millis().to_string(),
            // Only a failure needs the payload (for the retry or the dead
            // letter), and only when its queue entry is gone.
            if matches!(outcome, Outcome::Failed { .. }) {
                task.raw_payload.clone()
            } else {
                String::new()
            },
            terminal.to_json(),
            retry_event.to_json(),
            policy.max_retries.to_string(),
            retries_used.to_string(),
        ];
        args.extend(events);
        let value = self.eval_durable(&self.inner.scripts.finish, args).await?;
        let parts = reply::array("finish", value)?;
        let word = parts
            .first()
            .map(|value| reply::string("finish", value))
            .transpose()?
            .unwrap_or_default();
        Ok(match word.as_str() {
            "completed" => Finished::Completed,
            "cancelled" => Finished::Cancelled,
            "failed" => Finished::Failed,
            "retrying" => Finished::Retrying {
                retry: parts
                    .get(1)
                    .map(|value| reply::integer("finish", value))
                    .transpose()?
                    .unwrap_or(0) as u32,
                delay: backoff,
            },
            "cancel_requested" => Finished::CancelRequested,
            "stale" => Finished::Stale {
                status: parts
                    .get(1)
                    .map(|value| reply::string("finish", value))
                    .transpose()?
                    .unwrap_or_default(),
                attempt: parts
                    .get(2)
                    .map(|value| reply::string("finish", value))
                    .transpose()?
                    .unwrap_or_default(),
            },
            other => {
                return Err(Error::Reply {
                    what: "finish",
                    detail: format!("unknown outcome `{other}`"),
                });
            }
        })
    }

    /// Appends a batch of events (JSON strings) to a task's stream and
    /// publishes them, in one round trip.
    pub async fn publish_events(&self, task_id: &str, events: &[String]) -> Result<()> {
        self.publish_events_fenced(task_id, None, events)
            .await
            .map(|_| ())
    }

    /// [`Broker::publish_events`], refused (`Ok(false)`) when `lease` is
    /// given and no longer holds the task, or the task's stream has ended: a
    /// worker cut off from Redis must not mix its events into the next
    /// attempt's stream.
    pub async fn publish_events_fenced(
        &self,
        task_id: &str,
        lease: Option<&Lease>,
        events: &[String],
    ) -> Result<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        let mut args = Vec::with_capacity(events.len() + 2);
        args.push(task_id.to_owned());
        args.push(lease.map(Lease::fence).unwrap_or_default());
        args.extend(events.iter().cloned());
        let written = self.eval(&self.inner.scripts.publish, args).await?;
        Ok(reply::integer("publish", &written)? >= 0)
    }

    /// Writes the worker's heartbeat, renews the leases of its running
    /// tasks and reports which were cancelled or lost, in one round trip.
    pub async fn heartbeat(
        &self,
        health: &WorkerHealth,
        ttl: Duration,
        running: &[Lease],
    ) -> Result<LeaseReport> {
        let fields = health.to_hash_fields();
        // An entry pending here that the worker does not run, idle this
        // long, is an orphan (a claim whose reply never arrived).
        let orphan_after = (self.config().lease / 2).max(self.config().command_timeout * 2);
        let mut args = vec![
            health.worker_id.clone(),
            ttl.as_secs().max(1).to_string(),
            orphan_after.as_millis().to_string(),
            self.inner.nonce.clone(),
            fields.len().to_string(),
        ];
        for (name, value) in fields {
            args.push(name.to_owned());
            args.push(value);
        }
        for lease in running {
            args.push(lease.entry_id.clone());
            args.push(lease.task_id.clone());
            args.push(lease.fence());
        }
        let value = self.eval(&self.inner.scripts.heartbeat, args).await?;
        let mut parts = reply::array("heartbeat", value)?.into_iter();
        let cancelled = parts
            .next()
            .map(|value| reply::strings("heartbeat", value))
            .transpose()?
            .unwrap_or_default();
        let lost = parts
            .next()
            .map(|value| reply::strings("heartbeat", value))
            .transpose()?
            .unwrap_or_default();
        let handed_back = parts
            .next()
            .map(|value| reply::integer("heartbeat", &value))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64;
        let verdict = parts
            .next()
            .map(|value| reply::string("heartbeat", &value))
            .transpose()?
            .unwrap_or_default();
        if verdict == "conflict" {
            return Err(Error::WorkerIdInUse {
                worker_id: health.worker_id.clone(),
            });
        }
        Ok(LeaseReport {
            cancelled,
            lost,
            handed_back,
        })
    }

    /// Removes a stopping worker: its heartbeat hash, its fleet entry, and
    /// its consumer when nothing is pending on it (pending entries stay for
    /// the reaper). A worker that stops this way is gone from the fleet; one
    /// that crashes is listed as dead until it has been silent for an hour.
    pub async fn remove_worker(&self, worker_id: &str) -> Result<()> {
        // Only this process's own heartbeat is deleted: another live
        // process with the same id keeps its own.
        let _ = self
            .eval(
                &self.inner.scripts.deregister,
                vec![worker_id.to_owned(), self.inner.nonce.clone()],
            )
            .await?;
        Ok(())
    }

    /// One reaper pass: promotes due retries and recovers tasks of dead
    /// workers or expired leases (at most `limit` entries).
    pub async fn reap(&self, worker_id: &str, limit: usize) -> Result<ReapReport> {
        match self.reap_once(worker_id, limit).await {
            Err(error) if is_missing_group(&error) => {
                self.ensure_group().await?;
                self.reap_once(worker_id, limit).await
            }
            result => result,
        }
    }

    async fn reap_once(&self, worker_id: &str, limit: usize) -> Result<ReapReport> {
        let config = self.config();
        let value = self
            .eval(
                &self.inner.scripts.reap,
                vec![
                    worker_id.to_owned(),
                    config.lease.as_millis().to_string(),
                    limit.max(1).to_string(),
                    config.retry.max_retries.to_string(),
                    // A dead worker's entry must have been idle this long:
                    // a freshly claimed one may belong to a worker whose
                    // heartbeat is only late.
                    config.dead_worker_idle.as_millis().to_string(),
                    config.heartbeat_ttl.as_millis().max(1).to_string(),
                ],
            )
            .await?;
        let parts = reply::array("reap", value)?;
        let number = |index: usize| -> Result<u64> {
            Ok(parts
                .get(index)
                .map(|value| reply::integer("reap", value))
                .transpose()?
                .unwrap_or(0)
                .max(0) as u64)
        };
        Ok(ReapReport {
            promoted: number(0)?,
            requeued: number(1)?,
            failed: number(2)?,
            cleaned: number(3)?,
            reconciled: number(4)?,
            quiet: number(5)? == 1,
        })
    }

    /// Hands tasks back to the queue (a worker shutting down). Returns how
    /// many were handed back; a task no longer on its lease is left alone.
    pub async fn release(&self, leases: &[Lease]) -> Result<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        let mut args = Vec::with_capacity(leases.len() * 3);
        for lease in leases {
            args.push(lease.entry_id.clone());
            args.push(lease.task_id.clone());
            args.push(lease.fence());
        }
        let value = self.eval(&self.inner.scripts.release, args).await?;
        Ok(reply::integer("release", &value)?.max(0) as u64)
    }

    /// Subscribes to every task's cancel channel on one connection.
    pub async fn cancel_listener(&self) -> Result<CancelListener> {
        let base = build_client(&self.inner.config, &self.inner.url)?;
        let subscriber: SubscriberClient = Builder::from_config(base.client_config())
            .with_performance_config(|performance| {
                performance.default_command_timeout = self.inner.config.command_timeout;
                performance.broadcast_channel_capacity = 1024;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = self.inner.config.connect_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_subscriber_client()
            .map_err(|error| Error::Config(error.to_string()))?;
        match tokio::time::timeout(self.inner.config.connect_timeout, subscriber.init()).await {
            Ok(result) => {
                result?;
            }
            Err(_) => {
                return Err(Error::unreachable(format!(
                    "{}: no connection",
                    self.masked_url()
                )));
            }
        }
        let mut receiver = subscriber.message_rx();
        let manager = subscriber.manage_subscriptions();
        self.count();
        subscriber.psubscribe(self.keys().cancel_pattern()).await?;
        // A refused subscription (an ACL without the pattern, say) is not
        // always reported; prove the channel works with a probe.
        let probe = self
            .keys()
            .cancel_channel(&format!("probe-{}", uuid::Uuid::new_v4().simple()));
        let deadline = tokio::time::Instant::now()
            + self
                .inner
                .config
                .command_timeout
                .min(std::time::Duration::from_secs(3));
        let mut received = false;
        while !received && tokio::time::Instant::now() < deadline {
            self.count();
            let _: Value = self.inner.client.publish(probe.as_str(), "probe").await?;
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
                self.keys().cancel_pattern()
            )));
        }
        Ok(CancelListener {
            subscriber,
            receiver,
            manager,
            keys: self.keys().clone(),
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
    broker: Broker,
    consumer: String,
    blocking: Option<Client>,
    found_work: bool,
    next_due_at: Option<tokio::time::Instant>,
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
                self.broker.ensure_group().await?;
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
        let ids = self.blocking_read(max, block).await?;
        if ids.is_empty() {
            return Ok(Claim::default());
        }
        let claim = self.run_script(max, &ids).await?;
        self.found_work = true;
        Ok(claim)
    }

    async fn run_script(&mut self, max: usize, ids: &[String]) -> Result<Claim> {
        let broker = &self.broker;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let config = broker.config();
        let mut args = vec![
            self.consumer.clone(),
            max.to_string(),
            config.retry.max_retries.to_string(),
            config.max_retries_cap.to_string(),
            token.clone(),
        ];
        args.extend(ids.iter().cloned());
        // Claims do not wait for replicas: a claim a failover loses is
        // handed out again with a new token, which fences the first holder
        // off (see `Lease::token`).
        let value = broker.eval(&broker.inner.scripts.claim, args).await?;
        let mut parts = reply::array("claim", value)?.into_iter();
        let next_due = parts
            .next()
            .map(|value| reply::integer("claim", &value))
            .transpose()?
            .unwrap_or(-1);
        let rows = parts
            .next()
            .map(|value| reply::array("claim", value))
            .transpose()?
            .unwrap_or_default();
        let rejected = parts
            .next()
            .map(|value| reply::strings("claim", value))
            .transpose()?
            .unwrap_or_default();
        // The due time is on the server's clock; so is the time it sent.
        let server_now = parts
            .next()
            .map(|value| reply::integer("claim", &value))
            .transpose()?
            .unwrap_or(0);
        self.next_due_at = (next_due >= 0).then(|| {
            tokio::time::Instant::now()
                + Duration::from_millis((next_due - server_now).max(0) as u64)
        });
        let mut claim = Claim {
            tasks: Vec::new(),
            rejected: rejected
                .chunks(3)
                .filter(|triple| triple.len() == 3)
                .map(|triple| Rejected {
                    entry_id: triple[0].clone(),
                    task_id: (!triple[1].is_empty()).then(|| triple[1].clone()),
                    reason: triple[2].clone(),
                })
                .collect(),
        };
        for row in rows.chunks(6) {
            let [entry_id, task_id, raw, attempt, retries, max_retries] = row else {
                continue;
            };
            let entry_id = reply::string("claim", entry_id)?;
            let task_id = reply::string("claim", task_id)?;
            let lease = Lease {
                task_id: task_id.clone(),
                entry_id: entry_id.clone(),
                attempt: reply::integer("claim", attempt)?.max(0) as u32,
                token: token.clone(),
            };
            let retries = reply::integer("claim", retries)?.max(0) as u32;
            let max_retries = reply::integer("claim", max_retries)
                .map(|max| max.max(0) as u32)
                .unwrap_or(config.retry.max_retries);
            // A payload that is not UTF-8 is refused as it is, never
            // rewritten: the dead letter keeps its exact bytes.
            let (raw, decoded) = match reply::utf8("claim", raw)? {
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
                    retries,
                    max_retries,
                }),
                Err(reason) => {
                    let task = ClaimedTask {
                        lease,
                        payload: TaskPayload::new(task_id.clone(), Default::default(), ""),
                        raw_payload: raw,
                        retries: 0,
                        max_retries: 0,
                    };
                    let terminal = StreamEvent::status(RunStatus::Error, "", reason.clone());
                    let error_event = StreamEvent::Error(exo_proto::ErrorEvent {
                        error: reason.clone(),
                        error_type: "InvalidPayload".to_owned(),
                        agent_name: String::new(),
                        step_number: None,
                        recoverable: false,
                    });
                    // The other tasks of this claim are running now; a failed
                    // write here must not lose them. The reaper finishes
                    // this one (it cannot decode either) if this write fails.
                    if let Err(error) = broker
                        .finish(
                            &task,
                            Outcome::Failed {
                                error: &reason,
                                retryable: false,
                            },
                            vec![error_event.to_json()],
                            &terminal,
                        )
                        .await
                    {
                        tracing::warn!(%error, task_id, "could not fail an undecodable task");
                    }
                    claim.rejected.push(Rejected {
                        entry_id: entry_id.clone(),
                        task_id: Some(task_id.clone()),
                        reason,
                    });
                }
            }
        }
        Ok(claim)
    }

    async fn blocking_read(&mut self, max: usize, block: Duration) -> Result<Vec<String>> {
        if self.blocking.is_none() {
            self.blocking = Some(self.broker.dedicated_client().await?);
        }
        let Some(client) = &self.blocking else {
            return Ok(Vec::new());
        };
        let keys = self.broker.keys();
        let options = Options {
            timeout: Some(block + self.broker.config().command_timeout),
            ..Options::default()
        };
        self.broker.count();
        let value: Value = client
            .with_options(&options)
            .xreadgroup(
                keys.group(),
                self.consumer.as_str(),
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

/// The entry ids of an XREADGROUP reply.
fn entry_ids(value: Value) -> Result<Vec<String>> {
    Ok(reply::stream_entries("XREADGROUP", value)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}
