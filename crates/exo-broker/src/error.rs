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
    /// Another live process heartbeats under this worker id.
    #[error(
        "worker id `{worker_id}` is in use by another live process; give each process its own id"
    )]
    WorkerIdInUse {
        /// The worker id.
        worker_id: String,
    },
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

    /// True for failures that pass by themselves: Redis unreachable, or
    /// answering that it is loading, busy with a script, a read-only
    /// replica after a failover, or a cluster being resharded. Writes that
    /// must not be lost are retried on these.
    pub fn is_transient(&self) -> bool {
        const TRANSIENT: &[&str] = &[
            "LOADING",
            "BUSY",
            "READONLY",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
            "NOSCRIPT",
            // Out of memory under `noeviction`, a failed background save, or
            // too few replicas: all pass once the operator or the server
            // fixes them, and a final write must outlive them.
            "OOM",
            "MISCONF",
            "NOREPLICAS",
        ];
        match self {
            Error::Unreachable(_) => true,
            Error::Redis(message) => message
                .split(|character: char| !character.is_ascii_alphanumeric())
                .any(|word| TRANSIENT.contains(&word)),
            _ => false,
        }
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

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn transient_errors() {
        let cases = [
            (Error::Unreachable("gone".into()), true),
            (
                Error::Redis("LOADING Redis is loading the dataset in memory".into()),
                true,
            ),
            (
                Error::Redis(
                    "Redis Error - kind: Unknown, details: BUSY Redis is busy running a script"
                        .into(),
                ),
                true,
            ),
            (
                Error::Redis("READONLY You can't write against a read only replica.".into()),
                true,
            ),
            (
                Error::Redis("TRYAGAIN Multiple keys request during rehashing of slot".into()),
                true,
            ),
            (
                Error::Redis("BUSYGROUP Consumer Group name already exists".into()),
                false,
            ),
            (
                Error::Redis("NOPERM this user has no permissions".into()),
                false,
            ),
            (
                Error::Redis(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                ),
                false,
            ),
            (
                Error::Redis("OOM command not allowed when used memory > 'maxmemory'.".into()),
                true,
            ),
            (
                Error::Redis("MISCONF Redis is configured to save RDB snapshots".into()),
                true,
            ),
            (
                Error::Redis("NOREPLICAS Not enough good replicas to write.".into()),
                true,
            ),
            (Error::NotFound("t".into()), false),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
