//! The in-process store: one per worker process, shared by all its tasks.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;

use crate::{
    error::Result,
    item::{
        CONVERSATION_TYPES, MemoryItem, MemoryMetadata, MemoryScope, MemoryStatus, decode_kind,
    },
    store::{Backend, MemoryStore, SearchQuery},
};

/// The bounds of a [`ShortTermStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortTermConfig {
    /// The most items kept per conversation scope (user, session and agent);
    /// the oldest go first. Soft-deleted items count until they are evicted.
    pub max_items_per_scope: usize,
    /// The most conversation scopes kept; the one written least recently
    /// goes first.
    pub max_scopes: usize,
}

impl Default for ShortTermConfig {
    fn default() -> Self {
        ShortTermConfig {
            max_items_per_scope: 1_000,
            max_scopes: 10_000,
        }
    }
}

/// The conversation a stored item belongs to: user, session and agent.
/// Tasks are left out so that a session's history spans its tasks.
type PartitionKey = (Option<String>, Option<String>, Option<String>);

fn partition_key(metadata: &MemoryMetadata) -> PartitionKey {
    (
        metadata.user_id.clone(),
        metadata.session_id.clone(),
        metadata.agent_id.clone(),
    )
}

/// True when items of partition `key` can be in `scope`.
fn partition_may_match(key: &PartitionKey, scope: &MemoryScope) -> bool {
    scope.filters().all(|(field, wanted)| match field {
        "user_id" => key.0.as_deref() == Some(wanted),
        "session_id" => key.1.as_deref() == Some(wanted),
        "agent_id" => key.2.as_deref() == Some(wanted),
        _ => true,
    })
}

#[derive(Debug)]
struct Entry {
    item: MemoryItem,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Partition {
    /// Items by their insertion number, which an upsert keeps.
    entries: BTreeMap<u64, Entry>,
    /// The write counter at the last write, for eviction.
    last_write: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The next insertion number.
    next_sequence: u64,
    /// Counts writes, to find the least recently written partition.
    writes: u64,
    partitions: HashMap<PartitionKey, Partition>,
    /// Where each item is: its partition and insertion number.
    index: HashMap<String, (PartitionKey, u64)>,
}

impl State {
    fn upsert(&mut self, item: &MemoryItem, config: &ShortTermConfig) {
        self.writes += 1;
        let key = partition_key(&item.metadata);
        let mut stored = item.clone();
        let sequence = match self.index.remove(&item.id) {
            Some((old_key, sequence)) => {
                let old = self
                    .partitions
                    .get_mut(&old_key)
                    .and_then(|partition| partition.entries.remove(&sequence))
                    .expect("the index points at a stored item");
                if self
                    .partitions
                    .get(&old_key)
                    .is_some_and(|partition| partition.entries.is_empty())
                {
                    self.partitions.remove(&old_key);
                }
                // As in the SQL stores: memory_type and created_at keep their
                // first values, and the version goes up.
                if old.item.memory_type() != item.memory_type()
                    && let Ok((kind, content)) = decode_kind(
                        old.item.memory_type(),
                        item.content_text(),
                        item.extra_json(),
                    )
                {
                    stored.kind = kind;
                    stored.content = content;
                }
                stored.created_at = old.item.created_at;
                stored.version = old.item.version + 1;
                sequence
            }
            None => {
                stored.version = 1;
                self.next_sequence += 1;
                self.next_sequence
            }
        };
        let partition = self.partitions.entry(key.clone()).or_default();
        partition.last_write = self.writes;
        partition.entries.insert(
            sequence,
            Entry {
                item: stored,
                deleted: false,
            },
        );
        self.index.insert(item.id.clone(), (key.clone(), sequence));
        while partition.entries.len() > config.max_items_per_scope.max(1) {
            if let Some((_, evicted)) = partition.entries.pop_first() {
                self.index.remove(&evicted.item.id);
            }
        }
        while self.partitions.len() > config.max_scopes.max(1) {
            let oldest = self
                .partitions
                .iter()
                .filter(|(candidate, _)| **candidate != key)
                .min_by_key(|(_, partition)| partition.last_write)
                .map(|(candidate, _)| candidate.clone());
            let Some(oldest) = oldest else { break };
            if let Some(evicted) = self.partitions.remove(&oldest) {
                for entry in evicted.entries.values() {
                    self.index.remove(&entry.item.id);
                }
            }
        }
    }

    /// Live entries that can be in `scope`, with their insertion numbers.
    fn live_in_scope<'a>(
        &'a self,
        scope: &'a MemoryScope,
    ) -> impl Iterator<Item = (u64, &'a MemoryItem)> + 'a {
        self.partitions
            .iter()
            .filter(move |(key, _)| partition_may_match(key, scope))
            .flat_map(|(_, partition)| partition.entries.iter())
            .filter(move |(_, entry)| !entry.deleted && scope.matches(&entry.item.metadata))
            .map(|(sequence, entry)| (*sequence, &entry.item))
    }
}

/// In-process memory: items live as long as the process, bounded by
/// [`ShortTermConfig`]. One store is meant to be shared by every task of a
/// worker process (see [`crate::StoreRegistry`]), so the tasks of one
/// session that land on the same worker see each other's history.
#[derive(Debug, Default)]
pub struct ShortTermStore {
    config: ShortTermConfig,
    state: Mutex<State>,
}

impl ShortTermStore {
    /// An empty store with these bounds.
    pub fn new(config: ShortTermConfig) -> Self {
        ShortTermStore {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The bounds of this store.
    pub fn config(&self) -> &ShortTermConfig {
        &self.config
    }

    /// How many items are held, soft-deleted ones included.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// True when no item is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that breaks later readers, so a poisoned lock is reused.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl MemoryStore for ShortTermStore {
    fn backend(&self) -> Backend {
        Backend::ShortTerm
    }

    async fn add(&self, item: &MemoryItem) -> Result<()> {
        item.validate()?;
        self.lock().upsert(item, &self.config);
        Ok(())
    }

    async fn add_many(&self, items: &[MemoryItem]) -> Result<()> {
        for item in items {
            item.validate()?;
        }
        let mut state = self.lock();
        for item in items {
            state.upsert(item, &self.config);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<MemoryItem>> {
        let state = self.lock();
        let Some((key, sequence)) = state.index.get(id) else {
            return Ok(None);
        };
        Ok(state
            .partitions
            .get(key)
            .and_then(|partition| partition.entries.get(sequence))
            .filter(|entry| !entry.deleted)
            .map(|entry| entry.item.clone()))
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<MemoryItem>> {
        let needle = query.query.to_lowercase();
        let state = self.lock();
        let mut found: Vec<(u64, &MemoryItem)> = state
            .live_in_scope(&query.scope)
            .filter(|(_, item)| {
                query
                    .memory_type
                    .as_deref()
                    .is_none_or(|wanted| item.memory_type() == wanted)
                    && query.status.is_none_or(|wanted| item.status == wanted)
                    && (needle.is_empty() || item.content_text().to_lowercase().contains(&needle))
            })
            .collect();
        found.sort_by(|(left_sequence, left), (right_sequence, right)| {
            (&right.created_at, right_sequence).cmp(&(&left.created_at, left_sequence))
        });
        Ok(found
            .into_iter()
            .take(query.limit)
            .map(|(_, item)| item.clone())
            .collect())
    }

    async fn history(&self, scope: &MemoryScope, limit: usize) -> Result<Vec<MemoryItem>> {
        let state = self.lock();
        let mut found: Vec<(u64, &MemoryItem)> = state
            .live_in_scope(scope)
            .filter(|(_, item)| {
                CONVERSATION_TYPES.contains(&item.memory_type())
                    && item.status != MemoryStatus::Discard
            })
            .collect();
        found.sort_by(|(left_sequence, left), (right_sequence, right)| {
            (&left.created_at, left_sequence).cmp(&(&right.created_at, right_sequence))
        });
        let skip = found.len().saturating_sub(limit);
        Ok(found
            .into_iter()
            .skip(skip)
            .map(|(_, item)| item.clone())
            .collect())
    }

    async fn clear(&self, scope: &MemoryScope) -> Result<u64> {
        let mut state = self.lock();
        let mut cleared = 0;
        for (key, partition) in &mut state.partitions {
            if !partition_may_match(key, scope) {
                continue;
            }
            for entry in partition.entries.values_mut() {
                if !entry.deleted && scope.matches(&entry.item.metadata) {
                    entry.deleted = true;
                    cleared += 1;
                }
            }
        }
        Ok(cleared)
    }

    /// Does nothing: the store lives as long as the process, and other tasks
    /// may be using it.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ShortTermConfig, ShortTermStore};
    use crate::{MemoryItem, MemoryScope, MemoryStore};

    fn in_session(session: &str) -> crate::MemoryMetadata {
        MemoryScope::new()
            .with_user_id("u")
            .with_session_id(session)
            .to_metadata()
    }

    #[tokio::test]
    async fn keeps_at_most_the_configured_items_per_scope() {
        let store = ShortTermStore::new(ShortTermConfig {
            max_items_per_scope: 3,
            max_scopes: 10,
        });
        for turn in 0..5 {
            store
                .add(&MemoryItem::human(format!("turn {turn}"), in_session("s")))
                .await
                .unwrap();
        }
        let history = store
            .history(&MemoryScope::new().with_session_id("s"), 10)
            .await
            .unwrap();
        let texts: Vec<String> = history.iter().map(|item| item.content_text()).collect();
        assert_eq!(texts, ["turn 2", "turn 3", "turn 4"]);
        assert_eq!(store.len(), 3);
    }

    #[tokio::test]
    async fn evicts_the_scope_written_least_recently() {
        let store = ShortTermStore::new(ShortTermConfig {
            max_items_per_scope: 10,
            max_scopes: 2,
        });
        for session in ["a", "b", "a", "c"] {
            store
                .add(&MemoryItem::human(session, in_session(session)))
                .await
                .unwrap();
        }
        let sessions_left = history_sizes(&store, &["a", "b", "c"]).await;
        assert_eq!(sessions_left, [2, 0, 1]);
    }

    async fn history_sizes(store: &ShortTermStore, sessions: &[&str]) -> Vec<usize> {
        let mut counts = Vec::new();
        for session in sessions {
            let scope = MemoryScope::new().with_session_id(*session);
            counts.push(store.history(&scope, 100).await.unwrap().len());
        }
        counts
    }

    #[tokio::test]
    async fn an_upsert_that_moves_an_item_to_another_scope_keeps_its_place() {
        let store = ShortTermStore::default();
        let first = MemoryItem::human("first", in_session("s"));
        let second = MemoryItem::human("second", in_session("s"));
        store.add(&first).await.unwrap();
        store.add(&second).await.unwrap();
        let mut moved = first.clone().with_status(crate::MemoryStatus::Draft);
        moved.metadata = in_session("t");
        store.add(&moved).await.unwrap();
        let in_t = store
            .history(&MemoryScope::new().with_session_id("t"), 10)
            .await
            .unwrap();
        assert_eq!(in_t.len(), 1);
        assert_eq!(in_t[0].version, 2);
        let in_s = store
            .history(&MemoryScope::new().with_session_id("s"), 10)
            .await
            .unwrap();
        assert_eq!(in_s.len(), 1);
        assert_eq!(in_s[0].id, second.id);
        assert_eq!(store.len(), 2);
    }
}
