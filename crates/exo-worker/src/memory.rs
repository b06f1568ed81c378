//! Memory hydration, in the guide's order: open (or reuse) the store the
//! task names, save the input as a human item, load prior history for the
//! scope and put it before the payload's messages, persist each assistant
//! turn and tool result as the run produces them, and release the store in
//! every outcome.

use std::sync::Arc;

use exo_memory::{
    MemoryConfig, MemoryItem, MemoryMetadata, MemoryPolicy, MemoryStore, RegistryConfig,
    StoreRegistry, messages_from_items,
};
use exo_proto::{Message, TaskPayload};

use crate::config::MemorySettings;

/// The worker's memory setup: which stores payloads may use, and one
/// registry that shares a pool per database within the process.
#[derive(Debug, Clone)]
pub struct Memory {
    policy: Arc<MemoryPolicy>,
    registry: Arc<StoreRegistry>,
    history_limit: usize,
}

impl Memory {
    /// The stores `settings` allows; payload DSNs are refused unless it
    /// says otherwise.
    pub fn new(settings: &MemorySettings) -> exo_memory::Result<Self> {
        Ok(Memory {
            policy: Arc::new(MemoryPolicy::new(
                settings.stores.iter().cloned(),
                settings.allow_payload_dsn,
            )?),
            registry: Arc::new(StoreRegistry::new(RegistryConfig::default())),
            history_limit: settings.history_limit,
        })
    }

    /// Closes every pool (at worker shutdown).
    pub async fn close(&self) {
        self.registry.close_all().await;
    }
}

/// A task's open memory: where its items go.
#[derive(Debug)]
pub(crate) struct MemorySession {
    store: Arc<dyn MemoryStore>,
    metadata: MemoryMetadata,
}

/// Why memory could not be set up for a task.
#[derive(Debug)]
pub(crate) struct MemoryFailure {
    pub(crate) message: String,
    pub(crate) retryable: bool,
}

fn failure(error: exo_memory::Error) -> MemoryFailure {
    use exo_memory::Error;
    let retryable = matches!(
        error,
        Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Database { .. }
            | Error::Closed { .. }
    );
    MemoryFailure {
        message: format!("memory: {error}"),
        retryable,
    }
}

impl MemorySession {
    /// Steps 1 to 3: opens the store, saves the input, and returns the prior
    /// history (oldest first, without the input just saved). `None` when the
    /// task asks for no memory.
    pub(crate) async fn open(
        memory: &Memory,
        payload: &TaskPayload,
    ) -> Result<Option<(MemorySession, Vec<Message>)>, MemoryFailure> {
        let Some(config) = MemoryConfig::from_task_metadata(&payload.metadata).map_err(failure)?
        else {
            return Ok(None);
        };
        // Boxed: the store's calls make a large future, which a run that
        // asks for no memory (most) would otherwise carry and copy.
        Box::pin(Self::open_store(memory, payload, config))
            .await
            .map(Some)
    }

    async fn open_store(
        memory: &Memory,
        payload: &TaskPayload,
        config: MemoryConfig,
    ) -> Result<(MemorySession, Vec<Message>), MemoryFailure> {
        let store = memory
            .registry
            .open_for_task(&memory.policy, &config)
            .await
            .map_err(failure)?;
        let metadata = config.metadata_for_task(&payload.task_id);
        let prior = store
            .history(&config.history_scope(), memory.history_limit)
            .await
            .map_err(failure)?;
        // An earlier attempt (a retry, a resume after an approval, the
        // previous step on Temporal) saved the input and its messages
        // already; its journal gives the run those messages back. The
        // history is then what came before the task's first item.
        let own = |item: &MemoryItem| item.metadata.task_id.as_deref() == Some(&payload.task_id);
        let history = match prior.iter().position(own) {
            Some(first) => messages_from_items(prior[..first].iter()),
            None => {
                let input = MemoryItem::from_message(
                    &Message::user(payload.input.as_str()),
                    metadata.clone(),
                );
                store.add(&input).await.map_err(failure)?;
                messages_from_items(prior.iter().filter(|item| item.id != input.id))
            }
        };
        Ok((MemorySession { store, metadata }, history))
    }

    /// Deletes what this task wrote to memory (its input and messages): a
    /// later task of its conversation rolled it back. Returns how many
    /// items went.
    pub(crate) async fn roll_back(&self, task_id: &str) -> Result<u64, MemoryFailure> {
        let scope = exo_memory::MemoryScope::new().with_task_id(task_id);
        self.store.clear(&scope).await.map_err(failure)
    }

    /// Step 4: persists one message of the run.
    pub(crate) async fn save(&self, agent_name: &str, message: &Message) {
        let mut metadata = self.metadata.clone();
        if metadata.agent_id.is_none() && !agent_name.is_empty() {
            metadata.agent_id = Some(agent_name.to_owned());
        }
        let item = MemoryItem::from_message(message, metadata);
        if let Err(error) = self.store.add(&item).await {
            tracing::warn!(%error, "could not save a message to memory");
        }
    }
}
