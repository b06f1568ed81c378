//! The client's handle: submit tasks, read and list them, cancel them,
//! follow their events.

use exo_proto::{TaskPayload, TaskResult, TaskStatus};
use fred::{prelude::*, types::Value};

use crate::{
    broker::Broker,
    error::{Error, Result},
    events::{EventStream, StreamItem},
    handle::TaskHandle,
    ops::{
        cancel::CancelCall,
        decide::DecideCall,
        list::ListCall,
        reply,
        submit::{Submission, SubmitCall},
    },
};

/// Submits and follows tasks. Cheap to clone; get one from
/// [`Broker::client`].
#[derive(Debug, Clone)]
pub struct Client {
    broker: Broker,
}

/// What submitting a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new task was queued.
    Created,
    /// The idempotency key was seen before; the handle is the earlier task.
    Duplicate,
}

/// One page of a task listing.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<TaskResult>,
    /// Pass this to get the next page; `None` at the end.
    pub next_cursor: Option<u64>,
}

/// Which tasks [`Client::query`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks with this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this tenant.
    pub tenant: Option<String>,
    /// Only tasks of this agent (or swarm) name.
    pub agent: Option<String>,
    /// The page size (1 to 10,000; 0 counts as 1).
    pub limit: usize,
    /// Where to start: 0 for the newest, or the previous page's
    /// `next_cursor`.
    pub cursor: u64,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or waiting for a retry; it will never start.
    Cancelled,
    /// The task is running; its worker was signalled and will stop it.
    Cancelling,
    /// The task had already ended with this status.
    AlreadyFinished(TaskStatus),
    /// No such task.
    NotFound,
}

/// A person's decision on the tool call a task waits at (a tool named in
/// the agent's `hitl_tools`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Approve (the tool runs) or deny (the model is told why).
    pub approved: bool,
    /// Who decides; recorded in the journal and the task's events.
    pub by: String,
    /// Why (shown to the model on a denial).
    pub reason: Option<String>,
    /// Arguments that replace the model's (approval only).
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
    /// The call the decision is for; `None` for whichever call waits.
    pub tool_call_id: Option<String>,
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// The decision was recorded; the task is back on the queue and goes on
    /// from its journal on any worker.
    Resumed {
        /// The tool the decision was about.
        tool_name: String,
    },
    /// The task waits for no decision (it has this status).
    NotWaiting(Option<TaskStatus>),
    /// No such task.
    NotFound,
}

impl Client {
    pub(crate) fn new(broker: Broker) -> Self {
        Client { broker }
    }

    /// The connection this handle uses.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Queues a task in one round trip and returns its handle. The payload's
    /// `created_at` is set when it is zero.
    pub async fn submit(&self, mut payload: TaskPayload) -> Result<TaskHandle> {
        if payload.created_at <= 0.0 {
            payload.created_at = exo_proto::time::now_seconds();
        }
        payload.validate()?;
        let json = payload.to_json();
        let limit = self.broker.config().max_payload_bytes;
        if limit > 0 && json.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: json.len(),
                limit,
            });
        }
        if let Some(run_at) = payload.run_at {
            let ttl = self.broker.config().task_ttl.as_secs_f64();
            if run_at - exo_proto::time::now_seconds() > ttl {
                return Err(Error::Refused {
                    reason: format!(
                        "run_at is more than the task TTL ({ttl} s) away: the task would expire before it runs"
                    ),
                });
            }
        }
        let agent_name = payload
            .agent_spec()
            .map(|spec| spec.name())
            .unwrap_or_default();
        let submitted = self
            .broker
            .call(&SubmitCall {
                task_id: &payload.task_id,
                payload_json: json,
                agent_name,
                max_retries: payload.max_retries,
                idempotency_key: payload.idempotency_key.as_deref(),
                tenant: payload.tenant().unwrap_or_default(),
                run_at: payload.run_at,
                priority: payload.priority,
                concurrency_key: payload.concurrency_key.as_deref(),
                multitask_strategy: payload.multitask_strategy,
            })
            .await?;
        let submitted_as = match submitted.outcome {
            Submission::Created => Submitted::Created,
            Submission::Duplicate => Submitted::Duplicate,
            Submission::Busy => {
                return Err(Error::Refused {
                    reason: format!(
                        "conversation `{}` is busy: task {} has not ended (multitask_strategy reject)",
                        payload.concurrency_key.as_deref().unwrap_or_default(),
                        submitted.task_id
                    ),
                });
            }
        };
        Ok(TaskHandle::new(
            self.clone(),
            submitted.task_id,
            submitted_as,
        ))
    }

    /// A handle on an existing task.
    pub fn handle(&self, task_id: impl Into<String>) -> TaskHandle {
        TaskHandle::new(self.clone(), task_id.into(), Submitted::Created)
    }

    /// Reads a task hash.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskResult>> {
        self.broker.count();
        let value: Value = self
            .broker
            .inner
            .client
            .hgetall(self.broker.keys().task(task_id))
            .await?;
        let fields = reply::pairs("HGETALL", value)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(TaskResult::from_hash(fields)?))
    }

    /// A page of tasks, newest first, optionally of one status. Costs one
    /// round trip per page, however many tasks were ever submitted.
    pub async fn list(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        cursor: u64,
    ) -> Result<TaskPage> {
        self.query(&TaskQuery {
            status,
            limit,
            cursor,
            ..TaskQuery::default()
        })
        .await
    }

    /// A page of the tasks that match every filter of `query`, newest
    /// first, in one round trip. One call examines a bounded number of
    /// tasks, so a page of a rare filter may come back short (or empty) with
    /// a cursor to go on from.
    pub async fn query(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.broker
            .call(&ListCall {
                status: query.status,
                tenant: query.tenant.as_deref().unwrap_or_default(),
                agent: query.agent.as_deref().unwrap_or_default(),
                limit: query.limit.clamp(1, 10_000),
                cursor: query.cursor,
            })
            .await
    }

    /// Cancels a task: a queued task never starts, a running one is
    /// signalled and stops within a bounded time.
    pub async fn cancel(&self, task_id: &str) -> Result<CancelOutcome> {
        self.broker.call(&CancelCall { task_id }).await
    }

    /// Records a decision on the tool call `task_id` waits at, and puts the
    /// task back on the queue (one round trip).
    pub async fn decide(&self, task_id: &str, decision: &Decision) -> Result<Decided> {
        self.broker.call(&DecideCall { task_id, decision }).await
    }

    /// The events of a task, after `from` (`None` or "0" for all); see
    /// [`EventStream`].
    pub fn events(&self, task_id: &str, from: Option<&str>) -> EventStream {
        EventStream::new(self.broker.clone(), task_id, from)
    }

    /// The events in a task's stream now, after `from` (exclusive), without
    /// waiting; at most `count`.
    pub async fn read_events(
        &self,
        task_id: &str,
        from: Option<&str>,
        count: u64,
    ) -> Result<Vec<StreamItem>> {
        let start = match from.filter(|id| !id.is_empty() && *id != "0" && *id != "0-0") {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        self.broker.count();
        let value: Value = self
            .broker
            .inner
            .client
            .xrange(
                self.broker.keys().event_stream(task_id),
                start,
                "+",
                Some(count),
            )
            .await?;
        let mut items = Vec::new();
        for entry in reply::array("XRANGE", value)? {
            let mut parts = reply::array("XRANGE", entry)?.into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let id = reply::string("XRANGE", &id)?;
            if let Some((_, json)) = reply::pairs("XRANGE", fields)?
                .into_iter()
                .find(|(field, _)| field == "event")
            {
                items.push(StreamItem {
                    id,
                    event: exo_proto::decode("event", json.as_bytes())?,
                });
            }
        }
        Ok(items)
    }
}
