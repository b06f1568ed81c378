/// Everything that can go wrong between exo and Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Redis URL that cannot be used. The URL in the message is masked.
    #[error("invalid Redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with its password masked.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Settings that cannot work together.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// Redis did not answer, or the connection broke.
    #[error("Redis is unreachable: {0}")]
    Unreachable(String),
    /// Redis answered with an error.
    #[error("Redis error: {0}")]
    Redis(String),
    /// Redis answered with something exo did not expect.
    #[error("unexpected reply from Redis to {what}: {detail}")]
    Reply {
        /// The operation.
        what: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// Data in Redis (or given to exo) that is not valid wire data.
    #[error(transparent)]
    Wire(#[from] exo_proto::Error),
    /// No such task.
    #[error("task `{0}` not found")]
    NotFound(String),
    /// A payload larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when Redis could not be reached (as opposed to answering with an
    /// error); callers retry these with backoff.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable(_))
    }
}

impl From<fred::error::Error> for Error {
    fn from(error: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        match error.kind() {
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Tls
            | ErrorKind::Cluster
            | ErrorKind::Sentinel => Error::Unreachable(error.to_string()),
            _ => Error::Redis(error.to_string()),
        }
    }
}
