use std::net::SocketAddr;

/// Everything that can go wrong while setting up or serving telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A log filter (`RUST_LOG` or the configured one) that does not parse.
    #[error("invalid log filter `{filter}`: {reason}")]
    InvalidLogFilter {
        /// The filter as given.
        filter: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A process-wide component was already installed; `install` runs once
    /// per process.
    #[error("a global {0} is already installed")]
    AlreadyInstalled(&'static str),
    /// OTLP export was requested but this build has no `otlp` feature.
    #[error("OTLP export was requested but exo-observability was built without the `otlp` feature")]
    OtlpUnavailable,
    /// The OTLP exporter could not be configured.
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// Flushing telemetry at shutdown failed.
    #[error("telemetry shutdown: {0}")]
    Shutdown(String),
    /// The HTTP endpoint could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// An alert threshold override that does not parse or names no rule.
    #[error("invalid alert threshold `{input}`: {reason}")]
    InvalidThreshold {
        /// The override as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
