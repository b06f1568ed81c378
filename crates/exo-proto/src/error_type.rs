//! The kinds of failure, as the `error_type` of an `error` event and of a
//! run's outcome.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares [`ErrorType`] from one table: each named kind, its wire string
/// and its fixed retryability, so the three never drift apart.
macro_rules! error_types {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident => $wire:literal, retryable: $retryable:expr;
    )*) => {
        /// A kind of failure, written on the wire as the reference's
        /// string (`"ConfigError"`, `"TimeoutError"`, ...).
        ///
        /// The reference writes any exception class name here, so a string
        /// this enum does not name parses as [`ErrorType::Other`] and is
        /// written back exactly as it came. [`ErrorType::as_str`] and
        /// `Display` give the wire string.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorType {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("On the wire: `", $wire, "`.")]
                $variant,
            )*
            /// Any other kind, e.g. a Python exception name such as
            /// `ValueError`, kept as written.
            Other(String),
        }

        impl ErrorType {
            /// Every named kind, in declaration order.
            #[cfg(test)]
            const NAMED: &'static [ErrorType] = &[$(ErrorType::$variant),*];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorType::$variant => $wire,)*
                    ErrorType::Other(name) => name,
                }
            }

            /// Whether running the task again can help, when the kind alone
            /// decides it: `Some(false)` for kinds a retry never fixes,
            /// `Some(true)` for kinds about the attempt rather than the
            /// task. `None` when whoever raises the failure decides (model
            /// errors are judged by `exo-models`, panics and memory
            /// failures by where they happen).
            pub fn retryable(&self) -> Option<bool> {
                match self {
                    $(ErrorType::$variant => $retryable,)*
                    ErrorType::Other(_) => None,
                }
            }

            /// The named kind written as `wire`, if any.
            fn named(wire: &str) -> Option<ErrorType> {
                match wire {
                    $($wire => Some(ErrorType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_types! {
    /// The agent config, the payload or a model string cannot work.
    Config => "ConfigError", retryable: Some(false);
    /// A failure of no more specific kind; a scripted provider failure.
    Runtime => "RuntimeError", retryable: None;
    /// The run passed its deadline.
    Timeout => "TimeoutError", retryable: Some(true);
    /// The run was cancelled.
    Cancelled => "CancelledError", retryable: Some(false);
    /// Something panicked outside a tool.
    Panic => "Panic", retryable: None;
    /// A tool panicked.
    ToolPanic => "ToolPanic", retryable: Some(false);
    /// The agent reached `max_steps` without a final answer.
    MaxStepsExceeded => "MaxStepsExceeded", retryable: Some(false);
    /// The task spent its token budget (`budget.max_tokens`).
    BudgetExceeded => "BudgetExceeded", retryable: Some(false);
    /// A handoff swarm handed off more than `max_handoffs` times.
    MaxHandoffsExceeded => "MaxHandoffsExceeded", retryable: Some(false);
    /// The conversation memory could not be read.
    Memory => "MemoryError", retryable: None;
    /// An event could not be serialized.
    Serialization => "SerializationError", retryable: None;
    /// The model provider refused the credentials.
    Authentication => "AuthenticationError", retryable: None;
    /// The model provider rate-limited the call.
    RateLimit => "RateLimitError", retryable: None;
    /// The model provider failed on its side.
    InternalServer => "InternalServerError", retryable: None;
    /// The request did not fit the model's context window.
    ContextLengthExceeded => "ContextLengthExceededError", retryable: None;
    /// The model provider rejected the request.
    BadRequest => "BadRequestError", retryable: None;
    /// The model provider could not be reached.
    ApiConnection => "APIConnectionError", retryable: None;
    /// The model's answer stopped mid-stream.
    StreamInterrupted => "StreamInterruptedError", retryable: None;
    /// The model provider's answer could not be read.
    ApiResponseValidation => "APIResponseValidationError", retryable: None;
    /// Temporal could not start the task's workflow or report its end.
    Temporal => "TemporalError", retryable: Some(true);
    /// The worker running a Temporal attempt shut down.
    WorkerShutdown => "WorkerShutdown", retryable: Some(true);
    /// A Temporal attempt stopped heartbeating.
    HeartbeatTimeout => "HeartbeatTimeout", retryable: Some(true);
    /// The task's Temporal workflow was terminated.
    WorkflowTerminated => "WorkflowTerminated", retryable: Some(false);
    /// The queued payload cannot be decoded (written by the broker).
    InvalidPayload => "InvalidPayload", retryable: Some(false);
    /// The worker holding the task stopped renewing its lease (written by
    /// the reaper).
    WorkerLost => "WorkerLost", retryable: Some(true);
    /// The task's payload is gone from the queue (written by the broker).
    LostPayload => "LostPayload", retryable: Some(false);
    /// The task's queue entry is gone (written by the reaper).
    LostEntry => "LostEntry", retryable: Some(false);
}

impl fmt::Display for ErrorType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl From<&str> for ErrorType {
    fn from(wire: &str) -> Self {
        ErrorType::named(wire).unwrap_or_else(|| ErrorType::Other(wire.to_owned()))
    }
}

impl From<String> for ErrorType {
    fn from(wire: String) -> Self {
        ErrorType::named(&wire).unwrap_or(ErrorType::Other(wire))
    }
}

impl Serialize for ErrorType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ErrorType::from)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorType;

    #[test]
    fn every_kind_has_its_wire_string() {
        let cases = [
            (ErrorType::Config, "ConfigError"),
            (ErrorType::Runtime, "RuntimeError"),
            (ErrorType::Timeout, "TimeoutError"),
            (ErrorType::Cancelled, "CancelledError"),
            (ErrorType::Panic, "Panic"),
            (ErrorType::ToolPanic, "ToolPanic"),
            (ErrorType::MaxStepsExceeded, "MaxStepsExceeded"),
            (ErrorType::BudgetExceeded, "BudgetExceeded"),
            (ErrorType::MaxHandoffsExceeded, "MaxHandoffsExceeded"),
            (ErrorType::Memory, "MemoryError"),
            (ErrorType::Serialization, "SerializationError"),
            (ErrorType::Authentication, "AuthenticationError"),
            (ErrorType::RateLimit, "RateLimitError"),
            (ErrorType::InternalServer, "InternalServerError"),
            (
                ErrorType::ContextLengthExceeded,
                "ContextLengthExceededError",
            ),
            (ErrorType::BadRequest, "BadRequestError"),
            (ErrorType::ApiConnection, "APIConnectionError"),
            (ErrorType::StreamInterrupted, "StreamInterruptedError"),
            (
                ErrorType::ApiResponseValidation,
                "APIResponseValidationError",
            ),
            (ErrorType::Temporal, "TemporalError"),
            (ErrorType::WorkerShutdown, "WorkerShutdown"),
            (ErrorType::HeartbeatTimeout, "HeartbeatTimeout"),
            (ErrorType::WorkflowTerminated, "WorkflowTerminated"),
            (ErrorType::InvalidPayload, "InvalidPayload"),
            (ErrorType::WorkerLost, "WorkerLost"),
            (ErrorType::LostPayload, "LostPayload"),
            (ErrorType::LostEntry, "LostEntry"),
        ];
        assert_eq!(
            cases.len(),
            ErrorType::NAMED.len(),
            "every named kind has a row here"
        );
        for (kind, wire) in cases {
            assert_eq!(kind.as_str(), wire);
            assert_eq!(kind.to_string(), wire);
            assert_eq!(ErrorType::from(wire), kind);
            assert_eq!(ErrorType::from(wire.to_owned()), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<ErrorType>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn unknown_kinds_round_trip_exactly() {
        for wire in [
            "ValueError",
            "KeyError",
            "",
            "configerror",
            "ConfigError ",
            "é",
        ] {
            let kind = ErrorType::from(wire);
            assert_eq!(kind, ErrorType::Other(wire.to_owned()), "{wire:?}");
            assert_eq!(kind.as_str(), wire);
            assert_eq!(kind.retryable(), None);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, serde_json::to_string(wire).unwrap());
            assert_eq!(serde_json::from_str::<ErrorType>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn fixed_retryability() {
        let cases = [
            (ErrorType::Config, Some(false)),
            (ErrorType::Cancelled, Some(false)),
            (ErrorType::MaxStepsExceeded, Some(false)),
            (ErrorType::Timeout, Some(true)),
            (ErrorType::WorkerLost, Some(true)),
            (ErrorType::Runtime, None),
            (ErrorType::Panic, None),
            (ErrorType::RateLimit, None),
        ];
        for (kind, retryable) in cases {
            assert_eq!(kind.retryable(), retryable, "{kind}");
        }
    }
}
