//! Key and channel names. Every Redis name exo uses is built here.
//!
//! The task keys use `prefix` (default `exo:`); only the queue stream and
//! the keys that belong to it follow `queue` (default `exo:tasks`).
//!
//! Under Redis Cluster every key must live in one hash slot, because the Lua
//! scripts touch the queue, the task hash and the event stream together.
//! That holds when the prefix carries a hash tag and the queue the same tag,
//! e.g. prefix `{exo}:` with queue `{exo}:tasks`; see
//! [`Keys::check_single_slot`].

/// Builds every key and channel name from a prefix and a queue name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    queue: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(Keys::DEFAULT_PREFIX, Keys::DEFAULT_QUEUE)
    }
}

impl Keys {
    /// The reference prefix.
    pub const DEFAULT_PREFIX: &'static str = "exo:";
    /// The reference queue name.
    pub const DEFAULT_QUEUE: &'static str = "exo:tasks";

    /// Keys for this prefix and queue.
    pub fn new(prefix: impl Into<String>, queue: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            queue: queue.into(),
        }
    }

    /// Keys for this prefix, with the queue `{prefix}tasks`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let queue = format!("{prefix}tasks");
        Keys::new(prefix, queue)
    }

    /// The prefix of the task keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue stream, one entry per submission.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The consumer group on the queue.
    pub fn group(&self) -> String {
        format!("{}:group", self.queue)
    }

    /// Extension: the sorted set of tasks waiting for a retry, scored by due time.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.queue)
    }

    /// Extension: the payloads of tasks waiting for a retry, by task id.
    pub fn delayed_payloads(&self) -> String {
        format!("{}:delayed:payloads", self.queue)
    }

    /// Extension: the dead-letter stream.
    pub fn dead_letter(&self) -> String {
        format!("{}:dead", self.queue)
    }

    /// Extension: the tasks not yet ended, scored by their last transition
    /// (ms), which the reaper's reconciliation walks.
    pub fn active(&self) -> String {
        format!("{}:active", self.queue)
    }

    /// Extension: where the reconciliation walk of [`Keys::active`] resumes.
    pub fn active_sweep(&self) -> String {
        format!("{}:active:sweep", self.queue)
    }

    /// Extension: the server time (ms) of the fleet's last heartbeat.
    pub fn fleet_beat(&self) -> String {
        format!("{}fleet:beat", self.prefix)
    }

    /// Extension: until when (ms) the reaper reclaims nothing, after the
    /// fleet's heartbeats stalled.
    pub fn fleet_quiet_until(&self) -> String {
        format!("{}fleet:quiet_until", self.prefix)
    }

    /// The task hash.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}task:{task_id}", self.prefix)
    }

    /// The prefix of task hashes: scripts that find task ids as they go get
    /// it as a key and append the id.
    pub fn task_prefix(&self) -> String {
        format!("{}task:", self.prefix)
    }

    /// The set of task ids (a set, as reference readers expect).
    pub fn task_index(&self) -> String {
        format!("{}task:index", self.prefix)
    }

    /// Extension: task ids scored by submission time, for O(limit) listing.
    pub fn task_timeline(&self) -> String {
        format!("{}task:timeline", self.prefix)
    }

    /// The pub/sub channel of a task's events.
    pub fn events_channel(&self, task_id: &str) -> String {
        format!("{}events:{task_id}", self.prefix)
    }

    /// The prefix of event channels (see [`Keys::task_prefix`]).
    pub fn events_channel_prefix(&self) -> String {
        format!("{}events:", self.prefix)
    }

    /// The stream of a task's events.
    pub fn event_stream(&self, task_id: &str) -> String {
        format!("{}stream:{task_id}", self.prefix)
    }

    /// The prefix of event streams (see [`Keys::task_prefix`]).
    pub fn event_stream_prefix(&self) -> String {
        format!("{}stream:", self.prefix)
    }

    /// The pub/sub channel of a task's cancel signal.
    pub fn cancel_channel(&self, task_id: &str) -> String {
        format!("{}cancel:{task_id}", self.prefix)
    }

    /// The prefix of cancel channels (see [`Keys::task_prefix`]).
    pub fn cancel_channel_prefix(&self) -> String {
        format!("{}cancel:", self.prefix)
    }

    /// The pattern matching every cancel channel.
    pub fn cancel_pattern(&self) -> String {
        format!("{}cancel:*", self.prefix)
    }

    /// The task id in a cancel channel name.
    pub fn task_id_of_cancel_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("cancel:")
    }

    /// A worker's heartbeat hash.
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}workers:{worker_id}", self.prefix)
    }

    /// The prefix of heartbeat hashes (see [`Keys::task_prefix`]).
    pub fn worker_prefix(&self) -> String {
        format!("{}workers:", self.prefix)
    }

    /// Extension: the set of worker ids that have sent a heartbeat.
    pub fn worker_registry(&self) -> String {
        format!("{}workers", self.prefix)
    }

    /// Extension: maps an idempotency key to the first task submitted with it.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    /// The prefix of idempotency keys (see [`Keys::task_prefix`]).
    pub fn idempotency_prefix(&self) -> String {
        format!("{}idem:", self.prefix)
    }

    /// Extension: the sorted set of tasks waiting for a person's decision
    /// on a tool call, scored by the wait's deadline (ms).
    pub fn approvals(&self) -> String {
        format!("{}:approvals", self.queue)
    }

    /// Extension: one task's step journal (a list of JSON records).
    pub fn journal(&self, task_id: &str) -> String {
        format!("{}journal:{task_id}", self.prefix)
    }

    /// The family prefix of [`Keys::journal`].
    pub fn journal_prefix(&self) -> String {
        format!("{}journal:", self.prefix)
    }

    /// Extension: the model-call reservations of one fleet-wide rate-limit
    /// rule (a sorted set: reservation id by when it was made, ms); the
    /// rule's tokens per reservation are `{key}:tokens` (a hash) and a
    /// provider's back-off is `{key}:paused` (until when, ms).
    pub fn limit(&self, rule: &str) -> String {
        format!("{}limits:{rule}", self.prefix)
    }

    /// The family prefix of [`Keys::limit`].
    pub fn limit_prefix(&self) -> String {
        format!("{}limits:", self.prefix)
    }

    /// Extension: the cron schedules (a hash: name → the schedule as JSON).
    pub fn schedules(&self) -> String {
        format!("{}schedules", self.prefix)
    }

    /// Extension: when each schedule fires next (a sorted set: name by
    /// Unix ms).
    pub fn schedules_due(&self) -> String {
        format!("{}schedules:due", self.prefix)
    }

    /// Extension: tasks that carry a priority and wait for a free slot (a sorted set,
    /// scored by run order; see `docs/protocol.md`).
    pub fn prioritized(&self) -> String {
        format!("{}:prioritized", self.queue)
    }

    /// Extension: the keys of one concurrency key: `{concurrency_prefix}{key}:running`
    /// (a set of the tasks that hold its slots) and `...:waiting` (a list of
    /// the tasks held back).
    pub fn concurrency(&self, key: &str) -> String {
        format!("{}:ckey:{key}", self.queue)
    }

    /// The prefix of [`Keys::concurrency`].
    pub fn concurrency_prefix(&self) -> String {
        format!("{}:ckey:", self.queue)
    }

    /// Extension: concurrency keys with tasks held back, and their limit (a hash).
    pub fn concurrency_waiting(&self) -> String {
        format!("{}:ckeys", self.queue)
    }

    /// Extension: one bucket of the usage ledger (a hash of counters,
    /// `{dimension}|{name}|{metric}`): `m:{unix minute}` or `h:{unix hour}`.
    pub fn usage_bucket(&self, bucket: &str) -> String {
        format!("{}usage:{bucket}", self.prefix)
    }

    /// The prefix of [`Keys::usage_bucket`].
    pub fn usage_prefix(&self) -> String {
        format!("{}usage:", self.prefix)
    }

    /// Extension: the wake-up stream of one multiplexed event reader (a
    /// reader blocks on it with the task streams it follows, and an entry
    /// added to it ends the block so the reader picks up new streams).
    pub fn follow_wake(&self, reader_id: &str) -> String {
        format!("{}follow:wake:{reader_id}", self.prefix)
    }

    /// A sample of every kind of key and channel, for slot checks: every
    /// name this type builds appears here once.
    pub fn all_sample(&self) -> Vec<String> {
        let id = "0123456789abcdef0123456789abcdef";
        vec![
            self.queue.clone(),
            self.group(),
            self.delayed(),
            self.delayed_payloads(),
            self.dead_letter(),
            self.active(),
            self.active_sweep(),
            self.fleet_beat(),
            self.fleet_quiet_until(),
            self.task(id),
            self.task_prefix(),
            self.task_index(),
            self.task_timeline(),
            self.follow_wake(id),
            self.event_stream(id),
            self.event_stream_prefix(),
            self.events_channel(id),
            self.events_channel_prefix(),
            self.cancel_channel(id),
            self.cancel_channel_prefix(),
            self.worker("w"),
            self.worker_prefix(),
            self.worker_registry(),
            self.idempotency("k"),
            self.idempotency_prefix(),
            self.approvals(),
            self.journal(id),
            self.journal_prefix(),
            self.limit("openai:gpt-4o"),
            self.limit_prefix(),
            self.schedules(),
            self.schedules_due(),
            self.prioritized(),
            self.concurrency("tenant-a"),
            self.concurrency_prefix(),
            self.concurrency_waiting(),
            self.usage_bucket("m:29000000"),
            self.usage_prefix(),
        ]
    }

    /// Extension: the keys of queue shard `index`. Shard 0 is these keys
    /// (the reference's); shard `i` puts `:i` inside the hash tag that the
    /// prefix and the queue share (`{exo}:` becomes `{exo:2}:`), so each
    /// shard is its own hash slot and, under Redis Cluster, may live on its
    /// own node. Names without a shared hash tag get `i:` after the prefix
    /// and `:i` after the queue.
    pub fn shard(&self, index: u32) -> Keys {
        if index == 0 {
            return self.clone();
        }
        if let Some(tag) = hash_tag(&self.prefix) {
            let from = format!("{{{tag}}}");
            if self.queue.contains(&from) {
                let to = format!("{{{tag}:{index}}}");
                return Keys::new(
                    self.prefix.replacen(&from, &to, 1),
                    self.queue.replacen(&from, &to, 1),
                );
            }
        }
        Keys::new(
            format!("{}{index}:", self.prefix),
            format!("{}:{index}", self.queue),
        )
    }

    /// Checks that every key lands in one Redis Cluster hash slot. Returns
    /// the slot, or a message that says how to fix the names.
    pub fn check_single_slot(&self) -> Result<u16, String> {
        let keys = self.all_sample();
        let first = cluster_slot(&keys[0]);
        for key in &keys[1..] {
            if cluster_slot(key) != first {
                return Err(format!(
                    "under Redis Cluster every exo key must share one hash slot, but `{}` and `{key}` do not; \
                     use a hash-tagged prefix and queue, e.g. --key-prefix '{{exo}}:' --queue '{{exo}}:tasks'",
                    keys[0]
                ));
            }
        }
        Ok(first)
    }
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of the hash tag or
/// the whole key, modulo 16384).
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&byte| byte == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&byte| byte == b'}') {
            Some(length) if length > 0 => &bytes[open + 1..open + 1 + length],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash tag of a key (what Redis Cluster hashes): the text between the
/// first `{` and the next `}`, when not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// Extension: which of `count` queue shards a task goes to, by its routing
/// key (see [`crate::TaskPayload::routing_key`]): FNV-1a of the key, modulo
/// `count`. Stable across versions and languages.
pub fn shard_of(routing_key: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in routing_key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names() {
        let keys = Keys::default();
        assert_eq!(keys.queue(), "exo:tasks");
        assert_eq!(keys.group(), "exo:tasks:group");
        assert_eq!(keys.task("abc"), "exo:task:abc");
        assert_eq!(keys.task_index(), "exo:task:index");
        assert_eq!(keys.events_channel("abc"), "exo:events:abc");
        assert_eq!(keys.event_stream("abc"), "exo:stream:abc");
        assert_eq!(keys.cancel_channel("abc"), "exo:cancel:abc");
        assert_eq!(keys.worker("w1"), "exo:workers:w1");
        assert_eq!(
            keys.task_id_of_cancel_channel("exo:cancel:abc"),
            Some("abc")
        );
        let custom = Keys::new("exo:", "jobs");
        assert_eq!(custom.group(), "jobs:group");
        assert_eq!(custom.task("abc"), "exo:task:abc");
    }

    #[test]
    fn slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("user1000")
        );
        // An empty tag hashes the whole key.
        assert_eq!(cluster_slot("{}.x"), 7237);
        assert_eq!(cluster_slot("123456789"), 0x31C3);
    }

    #[test]
    fn default_layout_is_not_cluster_safe_but_tagged_layout_is() {
        assert!(Keys::default().check_single_slot().is_err());
        assert!(Keys::with_prefix("{exo}:").check_single_slot().is_ok());
        assert!(
            Keys::new("{exo}:", "exo:tasks")
                .check_single_slot()
                .is_err()
        );
    }

    #[test]
    fn shards_are_hash_slots_of_their_own() {
        let keys = Keys::with_prefix("{exo}:");
        assert_eq!(keys.shard(0), keys);
        let second = keys.shard(2);
        assert_eq!(second.prefix(), "{exo:2}:");
        assert_eq!(second.queue(), "{exo:2}:tasks");
        let slots: std::collections::BTreeSet<u16> = (0..6)
            .map(|index| keys.shard(index).check_single_slot().unwrap())
            .collect();
        assert_eq!(
            slots.len(),
            6,
            "each shard is one slot, and no two share one"
        );
        let plain = Keys::default().shard(3);
        assert_eq!(plain.prefix(), "exo:3:");
        assert_eq!(plain.queue(), "exo:tasks:3");
        assert_eq!(plain.task("t"), "exo:3:task:t");
    }

    #[test]
    fn routing_is_stable_and_spreads() {
        assert_eq!(shard_of("anything", 1), 0);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(shard_of("a", 7), (0xaf63_dc4c_8601_ec8c_u64 % 7) as u32);
        let mut counts = [0u32; 3];
        for index in 0..3000 {
            counts[shard_of(&format!("task-{index}"), 3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|count| (800..1200).contains(count)),
            "{counts:?}"
        );
    }
}
