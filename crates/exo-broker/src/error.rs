//! The broker's error type, and Redis error codes parsed once.

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
    #[error("Redis is unreachable: {message}")]
    Unreachable {
        /// What happened.
        message: String,
        /// The client's error, when there was one.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// Redis answered with an error.
    #[error("Redis error: {message}")]
    Redis {
        /// The reply's code, parsed once; decisions match on it.
        code: RedisCode,
        /// The whole message.
        message: String,
        /// The client's error, when there was one.
        #[source]
        source: Option<fred::error::Error>,
    },
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
    /// Redis refused the operation for a reason the caller can fix (a
    /// redrive of a task that is not failed, say).
    #[error("refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
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

/// The code of a Redis error reply (`WRONGTYPE ...`, `OOM ...`), parsed once
/// from the reply so that retry and transience decisions never read message
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisCode {
    /// The server is loading its dataset.
    Loading,
    /// A script runs too long.
    Busy,
    /// A replica (after a failover).
    ReadOnly,
    /// A cluster slot is moving.
    TryAgain,
    /// The cluster is down.
    ClusterDown,
    /// The replica's primary is down.
    MasterDown,
    /// The script cache lost a script.
    NoScript,
    /// The function library is not loaded (`ERR Function not found`: a
    /// new or flushed server).
    NoFunction,
    /// Out of memory under `noeviction`.
    Oom,
    /// A background save failed and writes are refused.
    Misconf,
    /// Too few replicas for `min-replicas-to-write` (or a short `WAIT`).
    NoReplicas,
    /// The consumer group does not exist.
    NoGroup,
    /// The consumer group exists already.
    BusyGroup,
    /// A key holds a value of another type.
    WrongType,
    /// The user may not run the command or touch the key.
    NoPerm,
    /// Authentication is needed or failed.
    NoAuth,
    /// A generic `ERR` reply.
    Generic,
    /// Any other code.
    Other(String),
}

impl RedisCode {
    /// Reads the code off a reply (or a client error's details, which may
    /// carry a prefix such as `Unknown Error: `).
    pub fn parse(message: &str) -> Self {
        let known = |word: &str| {
            Some(match word {
                "LOADING" => RedisCode::Loading,
                "BUSY" => RedisCode::Busy,
                "READONLY" => RedisCode::ReadOnly,
                "TRYAGAIN" => RedisCode::TryAgain,
                "CLUSTERDOWN" => RedisCode::ClusterDown,
                "MASTERDOWN" => RedisCode::MasterDown,
                "NOSCRIPT" => RedisCode::NoScript,
                "OOM" => RedisCode::Oom,
                "MISCONF" => RedisCode::Misconf,
                "NOREPLICAS" => RedisCode::NoReplicas,
                "NOGROUP" => RedisCode::NoGroup,
                "BUSYGROUP" => RedisCode::BusyGroup,
                "WRONGTYPE" => RedisCode::WrongType,
                "NOPERM" => RedisCode::NoPerm,
                "NOAUTH" | "WRONGPASS" => RedisCode::NoAuth,
                _ => return None,
            })
        };
        let words: Vec<&str> = message
            .split(|character: char| character.is_whitespace() || character == ':')
            .filter(|word| !word.is_empty())
            .take(8)
            .collect();
        if let Some(code) = words.iter().find_map(|word| known(word)) {
            return code;
        }
        if message.contains("Function not found") {
            return RedisCode::NoFunction;
        }
        match words
            .iter()
            .find(|word| word.chars().all(|c| c.is_ascii_uppercase()) && word.len() > 1)
        {
            Some(&"ERR") => RedisCode::Generic,
            Some(word) => RedisCode::Other((*word).to_owned()),
            None => RedisCode::Generic,
        }
    }

    /// True for codes that pass by themselves: loading, busy with a script,
    /// a read-only replica after a failover, a resharding cluster, a lost
    /// script, and out of memory, a failed save or too few replicas (all
    /// pass once the operator or the server fixes them, and a final write
    /// must outlive them).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RedisCode::Loading
                | RedisCode::Busy
                | RedisCode::ReadOnly
                | RedisCode::TryAgain
                | RedisCode::ClusterDown
                | RedisCode::MasterDown
                | RedisCode::NoScript
                | RedisCode::NoFunction
                | RedisCode::Oom
                | RedisCode::Misconf
                | RedisCode::NoReplicas
        )
    }
}

impl Error {
    /// Redis could not be reached.
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Error::Unreachable {
            message: message.into(),
            source: None,
        }
    }

    /// Redis answered with this error (a reply exo made itself, or one read
    /// off text).
    pub(crate) fn reply(message: impl Into<String>) -> Self {
        let message = message.into();
        Error::Redis {
            code: RedisCode::parse(&message),
            message,
            source: None,
        }
    }

    /// The Redis error code, when Redis answered with an error.
    pub fn redis_code(&self) -> Option<&RedisCode> {
        match self {
            Error::Redis { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when Redis could not be reached (as opposed to answering with an
    /// error); callers retry these with backoff.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// True for failures that pass by themselves: Redis unreachable, or a
    /// transient code ([`RedisCode::is_transient`]). Writes that must not be
    /// lost are retried on these.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Redis { code, .. } => code.is_transient(),
            _ => false,
        }
    }
}

impl Error {
    /// The same error for another caller of a call that several shared:
    /// its kind, code and message (the client's error stays with the first).
    pub(crate) fn copy(&self) -> Error {
        match self {
            Error::Unreachable { message, .. } => Error::unreachable(message.clone()),
            Error::Redis { code, message, .. } => Error::Redis {
                code: code.clone(),
                message: message.clone(),
                source: None,
            },
            other => Error::Reply {
                what: "finish",
                detail: other.to_string(),
            },
        }
    }
}

impl From<fred::error::Error> for Error {
    fn from(error: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        let message = error.to_string();
        match error.kind() {
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Tls
            | ErrorKind::Cluster
            | ErrorKind::Sentinel => Error::Unreachable {
                message,
                source: Some(error),
            },
            _ => Error::Redis {
                code: RedisCode::parse(error.details()),
                message,
                source: Some(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, RedisCode};

    #[test]
    fn codes_are_read_once_from_the_reply() {
        let cases = [
            ("WRONGTYPE Operation against a key", RedisCode::WrongType),
            (
                "Unknown Error: ERR The user executing the script can't run this command",
                RedisCode::Generic,
            ),
            (
                "NOGROUP No such key 'exo:tasks' or consumer group",
                RedisCode::NoGroup,
            ),
            (
                "BUSYGROUP Consumer Group name already exists",
                RedisCode::BusyGroup,
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                RedisCode::Oom,
            ),
            ("NOSCRIPT No matching script.", RedisCode::NoScript),
            ("ERR Function not found", RedisCode::NoFunction),
            (
                "CROSSSLOT Keys in request don't hash to the same slot",
                RedisCode::Other("CROSSSLOT".into()),
            ),
            ("no code at all", RedisCode::Generic),
        ];
        for (message, code) in cases {
            assert_eq!(RedisCode::parse(message), code, "{message}");
        }
    }

    #[test]
    fn transient_errors() {
        let cases = [
            (Error::unreachable("gone"), true),
            (
                Error::reply("LOADING Redis is loading the dataset in memory"),
                true,
            ),
            (
                Error::reply(
                    "Redis Error - kind: Unknown, details: BUSY Redis is busy running a script",
                ),
                true,
            ),
            (
                Error::reply("READONLY You can't write against a read only replica."),
                true,
            ),
            (
                Error::reply("TRYAGAIN Multiple keys request during rehashing of slot"),
                true,
            ),
            (
                Error::reply("BUSYGROUP Consumer Group name already exists"),
                false,
            ),
            (Error::reply("NOPERM this user has no permissions"), false),
            (
                Error::reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
                false,
            ),
            (
                Error::reply("OOM command not allowed when used memory > 'maxmemory'."),
                true,
            ),
            (
                Error::reply("MISCONF Redis is configured to save RDB snapshots"),
                true,
            ),
            (
                Error::reply("NOREPLICAS Not enough good replicas to write."),
                true,
            ),
            (Error::NotFound("t".into()), false),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
