//! The one error type of this crate.

use std::time::Duration;

use exo_proto::ErrorType;

/// Everything that can go wrong when resolving or calling a model.
///
/// Each error says whether it is transient ([`Error::is_retryable`]): a
/// transient error may go away if the same request is sent again later.
/// Providers retry transient errors themselves only while nothing of the
/// response has been read; once a stream has started, an error surfaces.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API key was refused (HTTP 401 or 403).
    #[error("{provider}: authentication failed (HTTP {status}): {message}")]
    Auth {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// Too many requests (HTTP 429).
    #[error("{provider}: rate limited (HTTP 429): {message}")]
    RateLimited {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// How long the provider asked us to wait, from `retry-after`.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// The provider failed (HTTP 5xx, or an overload reported in the stream).
    #[error("{provider}: server error (HTTP {status}): {message}")]
    Server {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The conversation does not fit the model's context window.
    #[error("{provider}: the request exceeds the model's context length: {message}")]
    ContextLength {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// The provider's message.
        message: String,
    },
    /// The provider rejected the request (another HTTP 4xx).
    #[error("{provider}: bad request (HTTP {status}): {message}")]
    BadRequest {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The request failed before any byte of the response arrived:
    /// connection refused or reset, DNS, TLS, or a timeout.
    #[error("{provider}: connection failed: {message}")]
    Transport {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// What happened.
        message: String,
    },
    /// The response stream broke off before the model finished, for example
    /// because the connection dropped mid-stream.
    #[error("{provider}: the response stream ended before the model finished: {message}")]
    Interrupted {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// What happened.
        message: String,
    },
    /// The provider answered something this crate cannot read.
    #[error("{provider}: invalid response: {message}")]
    InvalidResponse {
        /// The provider, e.g. `openai`.
        provider: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A model string or provider setting that cannot work: an unknown
    /// provider, a missing API key, a bad script.
    #[error("{0}")]
    Config(String),
    /// A failure the scripted provider was told to produce. It stands for a
    /// provider outage, so it counts as transient.
    #[error("{0}")]
    Scripted(String),
}

impl Error {
    /// True when the same request may succeed if sent again later: rate
    /// limits, server errors, connection failures, interrupted streams and
    /// scripted failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Transport { .. }
                | Error::Interrupted { .. }
                | Error::Scripted(_)
        )
    }

    /// True for errors in the configuration rather than in a call: sending
    /// anything again cannot help.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// The wait the provider asked for, when it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error's kind as the `error_type` of an `error` event. The names
    /// follow the exception classes the reference reports, so a scripted
    /// failure is a `RuntimeError`.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Error::Auth { .. } => ErrorType::Authentication,
            Error::RateLimited { .. } => ErrorType::RateLimit,
            Error::Server { .. } => ErrorType::InternalServer,
            Error::ContextLength { .. } => ErrorType::ContextLengthExceeded,
            Error::BadRequest { .. } => ErrorType::BadRequest,
            Error::Transport { .. } => ErrorType::ApiConnection,
            Error::Interrupted { .. } => ErrorType::StreamInterrupted,
            Error::InvalidResponse { .. } => ErrorType::ApiResponseValidation,
            Error::Config(_) => ErrorType::Config,
            Error::Scripted(_) => ErrorType::Runtime,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
