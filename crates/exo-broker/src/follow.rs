//! Following many task streams over a few connections.
//!
//! An [`EventStream`](crate::EventStream) holds one connection for its
//! blocking reads, which is right for one follower and wrong for a server
//! that relays thousands of streams at once. A [`Follower`] runs a fixed
//! number of readers; each holds one connection and blocks in one `XREAD`
//! over every stream it follows (each from its own last id), so a new event
//! on any of them wakes it. A reader also blocks on its own wake-up stream:
//! [`Follower::follow`] adds an entry there after handing the reader a new
//! stream, so the reader's current block ends and the next one includes the
//! new stream. Nothing is lost in between: every stream is read from the id
//! after the last event delivered.
//!
//! A follower whose consumer is slow is left out of the reads until its
//! buffer has room again; its events wait in Redis, not in memory, and the
//! other streams go on.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use exo_proto::StreamEvent;
use fred::{clients::Client as RedisClient, prelude::*, types::Value};
use tokio::sync::mpsc;

use crate::{
    broker::Broker,
    error::{Error, Result},
    events::{QUIET_FIELDS, QuietVerdict, event_json, quiet_verdict},
    ops::reply,
};

/// Events buffered per followed stream before its reader leaves it out.
const BUFFER: usize = 256;
/// Events read per stream in one `XREAD` at most.
const READ_COUNT: u64 = 128;
/// How long one `XREAD` blocks when nothing wakes it.
const BLOCK: Duration = Duration::from_secs(5);
/// How long a reader blocks while some stream is left out for a slow
/// consumer, so it comes back soon after the consumer catches up.
const BLOCK_WHILE_PAUSED: Duration = Duration::from_millis(20);
/// A stream quiet this long has its task hash checked (then less often).
const FIRST_CHECK: Duration = Duration::from_secs(2);
/// The longest time between two checks of a quiet stream's task hash.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How long a reader's wake-up stream outlives the reader (refreshed while
/// it runs).
const WAKE_TTL_SECONDS: i64 = 3600;

/// Follows the event streams of many tasks over a fixed number of
/// connections. Cheap to clone; every clone shares the readers, which stop
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Follower {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    broker: Broker,
    readers: Vec<ReaderHandle>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct ReaderHandle {
    wake_key: String,
    new_streams: mpsc::UnboundedSender<Followed>,
    following: Arc<AtomicUsize>,
}

/// One followed stream, as its reader keeps it.
#[derive(Debug)]
struct Followed {
    task_id: String,
    key: String,
    last_id: String,
    sender: mpsc::Sender<Result<FollowedEvent>>,
    last_event: Instant,
    next_check: Instant,
    quiet_checks: u32,
}

/// One event as a [`Follower`] delivers it: the event and its JSON exactly
/// as the stream holds it (extension fields included).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowedEvent {
    /// The stream entry id; empty for a terminal event made up from the
    /// task hash (see [`StreamItem`](crate::StreamItem)).
    pub id: String,
    /// The event.
    pub event: StreamEvent,
    /// The event's JSON as written.
    pub json: String,
}

/// The events of one task, as a [`Follower`] delivers them. Ends after the
/// terminal event (or one made up from the task hash when the stream has
/// none), like [`EventStream`](crate::EventStream).
#[derive(Debug)]
pub struct Following {
    receiver: mpsc::Receiver<Result<FollowedEvent>>,
    done: bool,
}

impl Following {
    /// The next event; `None` after the terminal event, or when the task
    /// does not exist (after an [`Error::NotFound`]).
    pub async fn next(&mut self) -> Option<Result<FollowedEvent>> {
        if self.done {
            return None;
        }
        let item = self.receiver.recv().await;
        match &item {
            Some(Ok(item)) if item.event.is_terminal() => self.done = true,
            Some(Err(_)) | None => self.done = true,
            Some(Ok(_)) => {}
        }
        item
    }
}

impl Broker {
    /// Starts `readers` multiplexed readers (at least one), one connection
    /// each, that follow any number of task streams. See [`Follower`].
    pub async fn follower(&self, readers: usize) -> Result<Follower> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut handles = Vec::new();
        for index in 0..readers.max(1) {
            let connection = self.dedicated_client().await?;
            let wake_key = self.keys().follow_wake(&format!("{id}-{index}"));
            self.count();
            let wake_id: String = self
                .inner
                .client
                .xadd(
                    &wake_key,
                    false,
                    ("MAXLEN", "~", 64),
                    "*",
                    vec![("wake", "1")],
                )
                .await?;
            let _: i64 = self
                .inner
                .client
                .expire(&wake_key, WAKE_TTL_SECONDS, None)
                .await?;
            let (sender, receiver) = mpsc::unbounded_channel();
            let following = Arc::new(AtomicUsize::new(0));
            let reader = Reader {
                broker: self.clone(),
                connection,
                wake_key: wake_key.clone(),
                wake_id,
                new_streams: receiver,
                streams: HashMap::new(),
                following: following.clone(),
                next_key: 0,
                wake_refreshed: Instant::now(),
            };
            tokio::spawn(reader.run());
            handles.push(ReaderHandle {
                wake_key,
                new_streams: sender,
                following,
            });
        }
        Ok(Follower {
            inner: Arc::new(Shared {
                broker: self.clone(),
                readers: handles,
                next: AtomicUsize::new(0),
            }),
        })
    }
}

impl Follower {
    /// Follows a task's events after `from`: `None` or `"0"` for all of
    /// them, `"$"` for only those that come next, or a stream id (a
    /// `Last-Event-ID`) to resume after it.
    pub async fn follow(&self, task_id: &str, from: Option<&str>) -> Result<Following> {
        let broker = &self.inner.broker;
        let key = broker.keys().event_stream(task_id);
        let last_id = match from.filter(|id| !id.is_empty()) {
            None | Some("0") => "0-0".to_owned(),
            Some("$") => {
                broker.count();
                let latest: Vec<(String, HashMap<String, String>)> = broker
                    .inner
                    .client
                    .xrevrange_values(&key, "+", "-", Some(1))
                    .await?;
                latest
                    .into_iter()
                    .next()
                    .map(|(id, _)| id)
                    .unwrap_or_else(|| "0-0".to_owned())
            }
            Some(id) => {
                if !valid_stream_id(id) {
                    return Err(Error::Refused {
                        reason: format!("`{id}` is not a stream id"),
                    });
                }
                id.to_owned()
            }
        };
        let (sender, receiver) = mpsc::channel(BUFFER);
        // The reader with the fewest streams takes it (ties in turn).
        let readers = &self.inner.readers;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let reader = (0..readers.len())
            .map(|offset| &readers[(start + offset) % readers.len()])
            .min_by_key(|reader| reader.following.load(Ordering::Relaxed))
            .ok_or_else(|| Error::Refused {
                reason: "a follower without readers".to_owned(),
            })?;
        let now = Instant::now();
        reader
            .new_streams
            .send(Followed {
                task_id: task_id.to_owned(),
                key,
                last_id,
                sender,
                last_event: now,
                next_check: now + FIRST_CHECK,
                quiet_checks: 0,
            })
            .map_err(|_| Error::Refused {
                reason: "the follower has stopped".to_owned(),
            })?;
        broker.count();
        let _: String = broker
            .inner
            .client
            .xadd(
                &reader.wake_key,
                false,
                ("MAXLEN", "~", 64),
                "*",
                vec![("wake", "1")],
            )
            .await?;
        Ok(Following {
            receiver,
            done: false,
        })
    }

    /// Streams followed now, over all readers.
    pub fn following(&self) -> usize {
        self.inner
            .readers
            .iter()
            .map(|reader| reader.following.load(Ordering::Relaxed))
            .sum()
    }

    /// The number of readers, each with one connection of its own.
    pub fn readers(&self) -> usize {
        self.inner.readers.len()
    }
}

fn valid_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let number = |part: Option<&str>| {
        part.is_some_and(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
    };
    let first = parts.next();
    let second = parts.next();
    number(first) && (second.is_none() || number(second))
}

/// A stream id as numbers, for ordering ("0" and ids Redis gave; anything
/// else sorts first).
fn stream_id_order(id: &str) -> (u64, u64) {
    let mut parts = id.splitn(2, '-');
    let milliseconds = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
    let sequence = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
    (milliseconds, sequence)
}

struct Reader {
    broker: Broker,
    connection: RedisClient,
    wake_key: String,
    wake_id: String,
    new_streams: mpsc::UnboundedReceiver<Followed>,
    streams: HashMap<u64, Followed>,
    following: Arc<AtomicUsize>,
    next_key: u64,
    wake_refreshed: Instant,
}

impl Reader {
    async fn run(mut self) {
        loop {
            if !self.take_new_streams() {
                break;
            }
            self.streams
                .retain(|_, followed| !followed.sender.is_closed());
            self.following.store(self.streams.len(), Ordering::Relaxed);
            if self.streams.is_empty() {
                match self.new_streams.recv().await {
                    Some(followed) => self.add(followed),
                    None => break,
                }
                continue;
            }
            if let Err(error) = self.read().await {
                tracing::warn!(%error, "a multiplexed event read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if let Err(error) = self.check_quiet().await {
                tracing::warn!(%error, "checking quiet task streams failed; retrying");
            }
            if self.wake_refreshed.elapsed() > Duration::from_secs(60) {
                self.wake_refreshed = Instant::now();
                let _: std::result::Result<i64, _> = self
                    .connection
                    .expire(&self.wake_key, WAKE_TTL_SECONDS, None)
                    .await;
            }
        }
        self.following.store(0, Ordering::Relaxed);
        let _: std::result::Result<i64, _> = self.connection.del(&self.wake_key).await;
        let _ = self.connection.quit().await;
    }

    /// Takes the streams handed over since the last read; false once the
    /// follower is gone.
    fn take_new_streams(&mut self) -> bool {
        loop {
            match self.new_streams.try_recv() {
                Ok(followed) => self.add(followed),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return !self.streams.is_empty(),
            }
        }
    }

    fn add(&mut self, followed: Followed) {
        self.next_key += 1;
        self.streams.insert(self.next_key, followed);
    }

    async fn read(&mut self) -> Result<()> {
        let mut keys = vec![self.wake_key.clone()];
        let mut ids = vec![self.wake_id.clone()];
        // Several consumers may follow one stream (two tabs on one task):
        // the stream is read once, from the earliest of their positions,
        // and each consumer gets the entries after its own.
        let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
        let mut from: HashMap<String, String> = HashMap::new();
        let mut paused = false;
        for (number, followed) in &self.streams {
            // A consumer with a full buffer is left out until it has room.
            if followed.sender.capacity() < BUFFER / 4 {
                paused = true;
                continue;
            }
            by_key
                .entry(followed.key.clone())
                .or_default()
                .push(*number);
            from.entry(followed.key.clone())
                .and_modify(|earliest| {
                    if stream_id_order(&followed.last_id) < stream_id_order(earliest) {
                        earliest.clone_from(&followed.last_id);
                    }
                })
                .or_insert_with(|| followed.last_id.clone());
        }
        for (key, id) in from {
            keys.push(key);
            ids.push(id);
        }
        let block = if paused { BLOCK_WHILE_PAUSED } else { BLOCK };
        let options = Options {
            timeout: Some(block + self.broker.config().command_timeout),
            ..Options::default()
        };
        self.broker.count();
        let value: Value = self
            .connection
            .with_options(&options)
            .xread(Some(READ_COUNT), Some(block.as_millis() as u64), keys, ids)
            .await?;
        let now = Instant::now();
        let mut ended = Vec::new();
        for (key, entries) in reply::keyed_stream_entries("XREAD", value)? {
            if key == self.wake_key {
                if let Some((id, _)) = entries.last() {
                    self.wake_id = id.clone();
                }
                continue;
            }
            let Some(numbers) = by_key.get(&key) else {
                continue;
            };
            let task_id = numbers
                .first()
                .and_then(|number| self.streams.get(number))
                .map(|followed| followed.task_id.clone())
                .unwrap_or_default();
            // Decoded once for every consumer of the stream.
            let mut decoded = Vec::with_capacity(entries.len());
            for entry in entries {
                match event_json(entry) {
                    Ok((id, json)) => {
                        let event = exo_proto::decode::<StreamEvent>("event", json.as_bytes());
                        if let Err(error) = &event {
                            // Like EventStream: one unreadable event must
                            // not wedge the stream.
                            tracing::warn!(task_id, entry = id, %error, "skipping an event that cannot be decoded");
                        }
                        decoded.push((id, json, event.ok()));
                    }
                    Err(error) => {
                        tracing::warn!(task_id, %error, "skipping a stream entry without an event");
                    }
                }
            }
            for number in numbers {
                let Some(followed) = self.streams.get_mut(number) else {
                    continue;
                };
                followed.last_event = now;
                followed.quiet_checks = 0;
                followed.next_check = now + FIRST_CHECK;
                let after = stream_id_order(&followed.last_id);
                for (id, json, event) in &decoded {
                    if stream_id_order(id) <= after {
                        continue;
                    }
                    let Some(event) = event else {
                        followed.last_id.clone_from(id);
                        continue;
                    };
                    let terminal = event.is_terminal();
                    match followed.sender.try_send(Ok(FollowedEvent {
                        id: id.clone(),
                        event: event.clone(),
                        json: json.clone(),
                    })) {
                        Ok(()) => followed.last_id.clone_from(id),
                        // Full: the rest is read again from `last_id` later.
                        Err(mpsc::error::TrySendError::Full(_)) => break,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            ended.push(*number);
                            break;
                        }
                    }
                    if terminal {
                        ended.push(*number);
                        break;
                    }
                }
            }
        }
        for number in ended {
            self.streams.remove(&number);
        }
        Ok(())
    }

    /// Checks the task hashes of streams that have been quiet a while, in
    /// one pipelined round trip, and ends those whose task ended without a
    /// terminal event in its stream (or that have no task at all).
    async fn check_quiet(&mut self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, followed)| followed.next_check <= now)
            .map(|(number, _)| *number)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let pipeline = self.connection.pipeline();
        for number in &due {
            let followed = &self.streams[number];
            let _: () = pipeline
                .hmget(
                    self.broker.keys().task(&followed.task_id),
                    QUIET_FIELDS.to_vec(),
                )
                .await?;
            let _: () = pipeline.exists(&followed.key).await?;
        }
        self.broker.count();
        let replies: Vec<Value> = pipeline.all().await?;
        let mut replies = replies.into_iter();
        for number in due {
            let (Some(state), Some(exists)) = (replies.next(), replies.next()) else {
                break;
            };
            let state: Vec<Option<String>> = state.convert().unwrap_or_default();
            let exists: i64 = exists.convert().unwrap_or(1);
            let Some(followed) = self.streams.get_mut(&number) else {
                continue;
            };
            followed.quiet_checks += 1;
            let interval = (FIRST_CHECK * followed.quiet_checks).min(MAX_CHECK_INTERVAL);
            followed.next_check = now + interval;
            // Seconds of quiet play the part of EventStream's one-second
            // reads.
            let quiet = followed.last_event.elapsed().as_secs() as u32;
            let outcome = match quiet_verdict(&state, quiet) {
                QuietVerdict::Wait => None,
                QuietVerdict::End(event) => Some(Ok(FollowedEvent {
                    id: String::new(),
                    json: serde_json::to_string(&event).unwrap_or_default(),
                    event,
                })),
                QuietVerdict::NoTask if exists == 0 => {
                    Some(Err(Error::NotFound(followed.task_id.clone())))
                }
                QuietVerdict::NoTask => None,
            };
            if let Some(outcome) = outcome {
                // A full buffer means events are still to come: retry later.
                if followed.sender.try_send(outcome).is_ok() || followed.sender.is_closed() {
                    self.streams.remove(&number);
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Reader")
            .field("wake_key", &self.wake_key)
            .field("streams", &self.streams.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{stream_id_order, valid_stream_id};

    #[test]
    fn stream_ids_order_by_their_numbers() {
        assert!(stream_id_order("0") < stream_id_order("0-1"));
        assert!(stream_id_order("9-5") < stream_id_order("10-0"));
        assert!(stream_id_order("1700000000000-2") < stream_id_order("1700000000000-10"));
        assert_eq!(stream_id_order("0-0"), stream_id_order("0"));
    }

    #[test]
    fn stream_ids() {
        for (id, valid) in [
            ("0", true),
            ("0-0", true),
            ("1700000000000-12", true),
            ("", false),
            ("-", false),
            ("1-", false),
            ("a-1", false),
            ("1-2-3", false),
            ("$", false),
        ] {
            assert_eq!(valid_stream_id(id), valid, "{id}");
        }
    }
}
