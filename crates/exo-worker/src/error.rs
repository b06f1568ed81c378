/// What can stop a worker from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot work.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// A Redis failure the worker could not ride out.
    #[error(transparent)]
    Broker(#[from] exo_broker::Error),
    /// The requested executor is not compiled in or not usable.
    #[error("executor: {0}")]
    Executor(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
