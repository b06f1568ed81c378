//! Event publishing (batched, worker side) and lossless event reading
//! (client side).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use exo_proto::{RunStatus, StreamEvent, TaskStatus};
use fred::{prelude::*, types::Value};
use tokio::sync::{Notify, Semaphore};

use crate::{
    broker::{Broker, reconnect_delay},
    error::{Error, Result},
    ops::reply,
    session::{Lease, PublishOptions, WorkerSession},
};

/// Events buffered per task before `publish` waits for Redis.
const BUFFER_LIMIT: usize = 4096;
/// Events sent in one round trip at most.
const BATCH_LIMIT: usize = 512;
/// How long step-journal records with no event to ride with wait before
/// they are written on their own. A run that emits events writes them in
/// the events' round trip; a run that ends within this time hands them to
/// its final write instead (which drops them when the task ends), so a
/// short run pays no round trip for its journal. A crash within this time
/// repeats the step it did not record.
const JOURNAL_LINGER: std::time::Duration = std::time::Duration::from_millis(200);
/// Quiet reads (of the block time each) a reader waits for a worker to end
/// the stream of a cancelled running task before it ends it from the hash;
/// longer than a lease and a reaper pass, so a dead worker's task is ended
/// by the reaper first.
const WAIT_FOR_WORKER_READS: u32 = 120;

/// Publishes one task's events in batches: whatever was produced while the
/// previous batch was in flight goes in the next round trip. Events are
/// never dropped: when Redis is unreachable they wait in the buffer (and
/// `publish` waits once the buffer is full), and [`EventPublisher::close`]
/// hands back whatever is left so it can go out with the task's final write.
#[derive(Debug)]
pub struct EventPublisher {
    shared: Arc<Shared>,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

/// A buffered event or step-journal record.
#[derive(Debug)]
enum Item {
    Event(String),
    Journal(String),
}

/// What a closed publisher had not yet written, for the task's final write.
#[derive(Debug, Default)]
pub struct Unsent {
    /// Event JSON, in order.
    pub events: Vec<String>,
    /// Step-journal records, in order.
    pub journal: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<VecDeque<Item>>,
    wakeup: Notify,
    room: Semaphore,
    closed: std::sync::atomic::AtomicBool,
    published: std::sync::atomic::AtomicU64,
}

impl EventPublisher {
    /// A publisher for one task's events; with `lease`, once the lease no
    /// longer holds the task (or the stream has ended), its batches are
    /// dropped instead of mixing into the next attempt's stream.
    pub(crate) fn new(session: WorkerSession, task_id: &str, lease: Option<Lease>) -> Self {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(VecDeque::new()),
            wakeup: Notify::new(),
            room: Semaphore::new(BUFFER_LIMIT),
            closed: std::sync::atomic::AtomicBool::new(false),
            published: std::sync::atomic::AtomicU64::new(0),
        });
        // Boxed: a flusher starts with every task, and spawning its (large)
        // future unboxed copies it whole several times.
        let flusher = tokio::spawn(Box::pin(flush_loop(
            session,
            task_id.to_owned(),
            lease,
            shared.clone(),
        )));
        EventPublisher {
            shared,
            flusher: Some(flusher),
        }
    }
}

async fn flush_loop(
    session: WorkerSession,
    task_id: String,
    lease: Option<Lease>,
    shared: Arc<Shared>,
) {
    use std::sync::atomic::Ordering;
    let mut failures = 0;
    let mut lingered = false;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let only_journal = {
            let buffer = shared
                .buffer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            !buffer.is_empty() && buffer.iter().all(|item| matches!(item, Item::Journal(_)))
        };
        if only_journal && !lingered {
            lingered = true;
            tokio::select! {
                () = shared.wakeup.notified() => {}
                () = tokio::time::sleep(JOURNAL_LINGER) => {}
            }
            continue;
        }
        lingered = false;
        let batch: Vec<Item> = {
            let mut buffer = shared
                .buffer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let take = buffer.len().min(BATCH_LIMIT);
            buffer.drain(..take).collect()
        };
        if batch.is_empty() {
            shared.wakeup.notified().await;
            continue;
        }
        let started = std::time::Instant::now();
        let options = PublishOptions {
            fence: lease.as_ref(),
        };
        let (mut events, mut journal) = (Vec::new(), Vec::new());
        for item in &batch {
            match item {
                Item::Event(json) => events.push(json.clone()),
                Item::Journal(json) => journal.push(json.clone()),
            }
        }
        match session
            .publish_with_journal(&task_id, &events, &journal, options)
            .await
        {
            Ok(false) => {
                // The attempt was superseded: this worker's events no
                // longer belong in the stream.
                tracing::debug!(
                    task_id,
                    events = batch.len(),
                    "event batch refused: the attempt is no longer current"
                );
                shared.room.add_permits(batch.len());
            }
            Ok(true) => {
                if let Some(observer) = session.broker().inner.publish_observer.get() {
                    observer(events.len(), started.elapsed());
                }
                failures = 0;
                shared
                    .published
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                shared.room.add_permits(batch.len());
            }
            Err(error) => {
                tracing::warn!(%error, task_id, events = batch.len(), "event batch not published; will retry");
                {
                    let mut buffer = shared
                        .buffer
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner());
                    for event in batch.into_iter().rev() {
                        buffer.push_front(event);
                    }
                }
                failures += 1;
                tokio::select! {
                    () = tokio::time::sleep(reconnect_delay(failures)) => {}
                    () = shared.wakeup.notified() => {}
                }
            }
        }
    }
}

impl EventPublisher {
    /// Queues an event for publishing. Waits only when the buffer is full.
    pub async fn publish(&self, event: &StreamEvent) {
        self.publish_json(event.to_json()).await;
    }

    /// Queues an event already serialized to JSON.
    pub async fn publish_json(&self, json: String) {
        self.push(Item::Event(json)).await;
    }

    /// Queues a step-journal record (JSON): it goes to the task's journal
    /// in the same round trip as the events around it, under the same
    /// fence.
    pub async fn journal(&self, record: String) {
        self.push(Item::Journal(record)).await;
    }

    async fn push(&self, item: Item) {
        if let Ok(permit) = self.shared.room.acquire().await {
            permit.forget();
        }
        // A journal record alone does not start a round trip: it waits for
        // an event to ride with, or for JOURNAL_LINGER.
        let wake = matches!(item, Item::Event(_));
        let was_empty = {
            let mut buffer = self
                .shared
                .buffer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let was_empty = buffer.is_empty();
            buffer.push_back(item);
            was_empty
        };
        if wake || was_empty {
            self.shared.wakeup.notify_one();
        }
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.shared
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the background flusher after its batch in flight and returns
    /// the events not yet published, in order, for the task's final write.
    pub async fn close(self) -> Vec<String> {
        self.close_all().await.events
    }

    /// [`EventPublisher::close`], also handing back the step-journal records
    /// not yet written.
    pub async fn close_all(mut self) -> Unsent {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wakeup.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.await;
        }
        let mut unsent = Unsent::default();
        for item in self
            .shared
            .buffer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .drain(..)
        {
            match item {
                Item::Event(json) => unsent.events.push(json),
                Item::Journal(json) => unsent.journal.push(json),
            }
        }
        unsent
    }
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
    }
}

/// One event read from a task's stream, with its stream id (resume after it
/// with [`Client::events`](crate::Client::events)).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamItem {
    /// The stream entry id; empty for a terminal event made up from the
    /// task hash because the stream itself had expired.
    pub id: String,
    /// The event.
    pub event: StreamEvent,
}

/// The task hash fields [`quiet_verdict`] reads.
pub(crate) const QUIET_FIELDS: [&str; 5] = [
    "status",
    "ended",
    "cancel_requested_at",
    "agent_name",
    "error",
];

/// What the task hash says about a task whose stream has gone quiet.
#[derive(Debug)]
pub(crate) enum QuietVerdict {
    /// Keep reading.
    Wait,
    /// The task ended and its stream has no terminal event (it expired, or
    /// its writer never sends one): end with this one, made up from the hash.
    End(StreamEvent),
    /// There is no task hash: the caller checks whether the stream exists.
    NoTask,
}

/// Decides, from the [`QUIET_FIELDS`] of a task hash and the number of
/// quiet reads so far, whether a reader waits on or ends the stream.
pub(crate) fn quiet_verdict(state: &[Option<String>], quiet_reads: u32) -> QuietVerdict {
    let field = |index: usize| {
        state
            .get(index)
            .cloned()
            .flatten()
            .filter(|value| !value.is_empty())
    };
    match field(0).map(|status| status.parse::<TaskStatus>()) {
        Some(Ok(status)) if status.is_terminal() => {
            // The terminal event is due from a worker (or the reaper) when
            // a running task was cancelled and nobody ended its stream yet:
            // wait for it, within a bound. Otherwise (the stream lost its
            // terminal event, or a writer never sends one) end now.
            let awaited = field(1).is_none() && field(2).is_some();
            let patience = if awaited { WAIT_FOR_WORKER_READS } else { 2 };
            if quiet_reads < patience {
                return QuietVerdict::Wait;
            }
            let (run_status, message) = match status {
                TaskStatus::Completed => (RunStatus::Completed, "Task completed".to_owned()),
                TaskStatus::Cancelled => (RunStatus::Cancelled, "Task cancelled".to_owned()),
                _ => (
                    RunStatus::Error,
                    field(4).unwrap_or_else(|| "Task failed".to_owned()),
                ),
            };
            QuietVerdict::End(StreamEvent::status(
                run_status,
                field(3).as_deref().unwrap_or(""),
                message,
            ))
        }
        Some(_) => QuietVerdict::Wait,
        None => QuietVerdict::NoTask,
    }
}

/// Reads a task's events in order with `XREAD BLOCK`, from the start or
/// after a given id. The same read serves replay and live events, so nothing
/// falls between them. It ends after the terminal status event; if the
/// stream has no terminal event but the task hash says the task ended, it
/// ends with a terminal event made up from the hash, so it never hangs.
#[derive(Debug)]
pub struct EventStream {
    broker: Broker,
    client: Option<Client>,
    task_id: String,
    last_id: String,
    block: Duration,
    pending: VecDeque<StreamItem>,
    finished: bool,
    quiet_reads: u32,
    skipped: u64,
}

impl EventStream {
    /// The events of a task, after `from` (`None` or "0" for all).
    pub(crate) fn new(broker: Broker, task_id: &str, from: Option<&str>) -> Self {
        EventStream {
            broker,
            client: None,
            task_id: task_id.to_owned(),
            last_id: from.filter(|id| !id.is_empty()).unwrap_or("0-0").to_owned(),
            block: Duration::from_secs(1),
            pending: VecDeque::new(),
            finished: false,
            quiet_reads: 0,
            skipped: 0,
        }
    }
}

impl EventStream {
    /// How long one XREAD blocks before the task hash is checked.
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// The id of the last event returned.
    pub fn last_id(&self) -> &str {
        &self.last_id
    }

    /// The next event; `None` after the terminal event.
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.event.is_terminal() {
                    self.finished = true;
                    self.pending.clear();
                }
                if !item.id.is_empty() {
                    self.last_id = item.id.clone();
                }
                return Some(Ok(item));
            }
            if self.finished {
                return None;
            }
            match self.read().await {
                Ok(()) => {}
                Err(error) => {
                    if error.is_unreachable() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    return Some(Err(error));
                }
            }
        }
    }

    /// Events skipped so far because they could not be decoded.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Collects every remaining event.
    pub async fn collect(mut self) -> Result<Vec<StreamItem>> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            items.push(item?);
        }
        Ok(items)
    }

    async fn read(&mut self) -> Result<()> {
        if self.client.is_none() {
            self.client = Some(self.broker.dedicated_client().await?);
        }
        let Some(client) = &self.client else {
            return Ok(());
        };
        let key = self.broker.keys().event_stream(&self.task_id);
        let options = Options {
            timeout: Some(self.block + self.broker.config().command_timeout),
            ..Options::default()
        };
        self.broker.count();
        let value: Value = client
            .with_options(&options)
            .xread(
                Some(256),
                Some(self.block.as_millis().max(1) as u64),
                key,
                self.last_id.as_str(),
            )
            .await?;
        let entries = stream_entries(value)?;
        if !entries.is_empty() {
            self.quiet_reads = 0;
            for (id, json) in entries {
                match exo_proto::decode::<StreamEvent>("event", json.as_bytes()) {
                    Ok(event) => self.pending.push_back(StreamItem { id, event }),
                    Err(error) => {
                        // One event this version cannot read (a newer or
                        // foreign writer, or garbage) must not wedge the
                        // reader: skip it and move past it.
                        tracing::warn!(task_id = self.task_id, entry = id, %error, "skipping an event that cannot be decoded");
                        self.skipped += 1;
                        self.last_id = id;
                    }
                }
            }
            return Ok(());
        }
        self.quiet_reads += 1;
        // Nothing new: has the task ended without a terminal event in the
        // stream (expired stream, or a writer that does not send one)?
        self.broker.count();
        let state: Vec<Option<String>> = self
            .broker
            .inner
            .client
            .hmget(
                self.broker.keys().task(&self.task_id),
                QUIET_FIELDS.to_vec(),
            )
            .await?;
        match quiet_verdict(&state, self.quiet_reads) {
            QuietVerdict::Wait => {}
            QuietVerdict::End(event) => self.pending.push_back(StreamItem {
                id: String::new(),
                event,
            }),
            QuietVerdict::NoTask => {
                self.broker.count();
                let exists: i64 = self
                    .broker
                    .inner
                    .client
                    .exists(self.broker.keys().event_stream(&self.task_id))
                    .await?;
                if exists == 0 {
                    return Err(Error::NotFound(self.task_id.clone()));
                }
            }
        }
        Ok(())
    }

    /// Closes the stream's connection.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.quit().await;
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// `(id, event json)` pairs of an XREAD reply.
fn stream_entries(value: Value) -> Result<Vec<(String, String)>> {
    reply::stream_entries("XREAD", value)?
        .into_iter()
        .map(event_json)
        .collect()
}

/// The `event` field of a task stream entry, with the entry's id.
pub(crate) fn event_json((id, fields): reply::StreamEntry) -> Result<(String, String)> {
    let event = fields
        .into_iter()
        .find(|(field, _)| field == "event")
        .map(|(_, json)| json)
        .ok_or_else(|| Error::Reply {
            what: "XREAD",
            detail: format!("stream entry {id} has no `event` field"),
        })?;
    Ok((id, event))
}
