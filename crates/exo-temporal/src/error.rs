/// What can go wrong between exo and a Temporal server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot work (a bad variable, an invalid URL).
    #[error("invalid Temporal configuration: {0}")]
    Config(String),
    /// The server could not be reached, or refused the namespace.
    #[error("Temporal server {host} (namespace `{namespace}`) is unusable: {reason}")]
    Unreachable {
        /// The address tried.
        host: String,
        /// The namespace asked for.
        namespace: String,
        /// Why it failed.
        reason: String,
    },
    /// A call to the server failed.
    #[error("Temporal: {0}")]
    Rpc(String),
    /// The Temporal worker (poller) could not be created or stopped with
    /// an error.
    #[error("Temporal worker: {0}")]
    Worker(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
