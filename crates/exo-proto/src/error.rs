/// Everything that can be wrong with wire data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// JSON that does not parse, or parses into the wrong shape.
    #[error("invalid {what}: at `{path}`: {message}")]
    Decode {
        /// What was being decoded, e.g. "task payload".
        what: &'static str,
        /// The path of the field at fault, e.g. `messages[2].role`.
        path: String,
        /// Why it is wrong.
        message: String,
    },
    /// An agent or swarm config that parses but cannot run.
    #[error("invalid agent config: {0}")]
    InvalidConfig(String),
    /// A swarm `flow` expression that does not parse or names unknown agents.
    #[error("invalid swarm flow `{flow}`: {reason}")]
    InvalidFlow {
        /// The flow expression as given.
        flow: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A Redis hash field with a value of the wrong format.
    #[error("invalid field `{field}` in {what}: {reason}")]
    InvalidField {
        /// What was being read, e.g. "task hash".
        what: &'static str,
        /// The field name.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn decode<E: std::fmt::Display>(
        what: &'static str,
        error: serde_path_to_error::Error<E>,
    ) -> Self {
        let path = error.path().to_string();
        Error::Decode {
            what,
            path,
            message: error.inner().to_string(),
        }
    }

    pub(crate) fn field(what: &'static str, field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidField {
            what,
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
