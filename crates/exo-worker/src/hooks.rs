//! The post-task callback.

use exo_proto::{TaskPayload, TaskStatus};

/// Called after every task attempt this worker finishes, whatever the
/// outcome (`Completed`, `Failed` — also for a failure that will be retried —
/// or `Cancelled`). Errors and panics are logged and never stop the worker.
///
/// ```
/// use exo_worker::TaskHooks;
/// use exo_proto::{TaskPayload, TaskStatus};
///
/// #[derive(Debug)]
/// struct Billing;
///
/// #[async_trait::async_trait]
/// impl TaskHooks for Billing {
///     async fn on_task_done(
///         &self,
///         task: &TaskPayload,
///         status: TaskStatus,
///         _result: Option<&str>,
///         _error: Option<&str>,
///     ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///         println!("bill {} as {status}", task.task_id);
///         Ok(())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait TaskHooks: Send + Sync + std::fmt::Debug {
    /// The task's payload, its status, its output (on success) and its error
    /// message (on failure).
    async fn on_task_done(
        &self,
        task: &TaskPayload,
        status: TaskStatus,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = (task, status, result, error);
        Ok(())
    }
}

/// The default hooks: nothing.
#[derive(Debug, Default)]
pub struct NoHooks;

impl TaskHooks for NoHooks {}
