//! The one error type of this crate.

use std::time::Duration;

/// A boxed error from a database driver, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong with memory: configuration, policy, and the
/// stores themselves.
///
/// Messages never contain a password: DSNs are shown redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `metadata.memory` (or a part of it) does not have the expected shape.
    #[error("invalid metadata.memory: {0}")]
    InvalidConfig(String),

    /// A backend name that this crate does not know.
    #[error("unknown memory backend `{name}` (expected short_term, sqlite or postgres)")]
    UnknownBackend {
        /// The name as given.
        name: String,
    },

    /// A backend that exists but was not compiled into this binary.
    #[error(
        "memory backend `{backend}` is not compiled into this binary; \
         rebuild with the cargo feature `{feature}` of exo-memory"
    )]
    BackendNotCompiled {
        /// The backend name, e.g. `postgres`.
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },

    /// A DSN that cannot be used for its backend.
    #[error("invalid {backend} DSN `{dsn}`: {reason}")]
    InvalidDsn {
        /// The backend the DSN was meant for.
        backend: &'static str,
        /// The DSN, with any password redacted.
        dsn: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A `name=dsn` store definition that does not parse, or a duplicate name.
    #[error("invalid memory store definition `{spec}`: {reason}")]
    InvalidStoreSpec {
        /// The definition, with any password redacted.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A payload named a store the worker does not have.
    #[error("unknown memory store `{name}`; this worker has {known}")]
    UnknownStore {
        /// The name the payload asked for.
        name: String,
        /// The configured names, as a readable list.
        known: String,
    },

    /// A DSN in a task payload, refused by the worker's policy.
    #[error(
        "metadata.memory.dsn is refused: a DSN in a task payload picks a file or database \
         on the worker, and anyone who can write to the queue chose it. Configure the store \
         on the worker (`--memory-store NAME=DSN`) and refer to it with \"store\": \"NAME\", \
         or start the worker with `--allow-payload-dsn`"
    )]
    PayloadDsnRefused,

    /// The payload asks for a backend but says neither which store nor
    /// which DSN, and the worker has no single store of that backend.
    #[error("{0}")]
    StoreNotChosen(String),

    /// Connecting to a store failed.
    #[error("could not open the {backend} memory store at {target}: {source}")]
    Connect {
        /// The backend.
        backend: &'static str,
        /// Where, with any password redacted.
        target: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// Connecting to a store took longer than the connect timeout.
    #[error(
        "could not open the {backend} memory store at {target}: no connection within {timeout:?} \
         (is the server up and reachable?)"
    )]
    ConnectTimeout {
        /// The backend.
        backend: &'static str,
        /// Where, with any password redacted.
        target: String,
        /// The timeout that passed.
        timeout: Duration,
    },

    /// A query failed.
    #[error("{backend} memory store: {operation} failed: {source}")]
    Database {
        /// The backend.
        backend: &'static str,
        /// What was being done, e.g. `add`.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A stored row that cannot be read back as a memory item.
    #[error("memory item `{id}` cannot be read: {reason}")]
    InvalidRow {
        /// The row's id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An item that cannot be stored, e.g. with an empty id.
    #[error("invalid memory item: {0}")]
    InvalidItem(String),

    /// The store was closed.
    #[error("the {backend} memory store is closed")]
    Closed {
        /// The backend.
        backend: &'static str,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
