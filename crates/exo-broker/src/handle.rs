//! The client's handle on a submitted task.

use exo_proto::TaskResult;

use crate::{
    client::{CancelOutcome, Client, Submitted},
    error::{Error, Result},
    events::EventStream,
};

/// A submitted task: wait for its result, follow its events, read its
/// status, or cancel it.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    client: Client,
    task_id: String,
    submitted: Submitted,
}

impl TaskHandle {
    pub(crate) fn new(client: Client, task_id: String, submitted: Submitted) -> Self {
        TaskHandle {
            client,
            task_id,
            submitted,
        }
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Whether the submit created the task or found an earlier one with the
    /// same idempotency key.
    pub fn submitted(&self) -> Submitted {
        self.submitted
    }

    /// The task's events from the start; see [`EventStream`].
    pub fn events(&self) -> EventStream {
        self.client.events(&self.task_id, None)
    }

    /// The task hash now.
    pub async fn status(&self) -> Result<TaskResult> {
        self.client
            .get(&self.task_id)
            .await?
            .ok_or_else(|| Error::NotFound(self.task_id.clone()))
    }

    /// Cancels the task.
    pub async fn cancel(&self) -> Result<CancelOutcome> {
        self.client.cancel(&self.task_id).await
    }

    /// Waits until the task ends and returns its final hash. It follows the
    /// event stream (blocking reads, no polling loop) until the terminal
    /// event, so it returns as soon as the task ends.
    pub async fn result(&self) -> Result<TaskResult> {
        let mut events = self.events();
        while let Some(item) = events.next().await {
            match item {
                Ok(_) => {}
                Err(error) if error.is_unreachable() => {
                    tracing::debug!(%error, "event stream interrupted; resuming");
                }
                Err(error) => return Err(error),
            }
        }
        events.close().await;
        loop {
            let task = self.status().await?;
            if task.status.is_terminal() {
                return Ok(task);
            }
            // The terminal event is written in the same script as the final
            // status, so this only happens for a cancel still being applied.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
