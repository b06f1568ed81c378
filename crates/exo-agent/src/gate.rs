//! Admission of model calls against limits shared beyond one process (a
//! fleet-wide requests- and tokens-per-minute budget). The runner asks a
//! [`ModelGate`] before every model call it sends (never for a replayed
//! one), waits while the gate says so (cancel and the deadline still end
//! the run), and tells the gate what the call used.

use std::{
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use async_trait::async_trait;
use exo_models::ModelRequest;

/// What a gate says about one model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// No limit covers the model: send the call.
    Open,
    /// Reserved: send the call, then [`ModelGate::settle`] the permit.
    Granted(GatePermit),
    /// Not now: ask again after `retry_in`.
    Wait {
        /// When capacity is expected.
        retry_in: Duration,
        /// The rule that holds the call.
        rule: String,
        /// Which of its limits (`requests`, `tokens`, `paused`).
        reason: String,
    },
    /// The call can never be admitted (it alone exceeds the rule); the
    /// message says why.
    Refused(String),
}

/// A reservation a gate granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePermit {
    /// The model string of the call it admitted (the gate knows which of
    /// its rules cover it).
    pub model: String,
    /// The reservation's id.
    pub reservation: String,
}

/// Limits model calls (see the module docs).
#[async_trait]
pub trait ModelGate: Send + Sync + std::fmt::Debug {
    /// Asks to send a call to `model` (the agent's model string) that is
    /// estimated to use `tokens` (input plus output). An error fails the
    /// attempt as retryable.
    async fn admit(&self, model: &str, tokens: u64) -> Result<GateDecision, String>;

    /// Reports the tokens an admitted call used (input plus output).
    async fn settle(&self, permit: &GatePermit, tokens: u64);

    /// The provider refused a call to `model` for its rate limit and asked
    /// to wait `retry_after`: hold every call to it for that long.
    async fn back_off(&self, model: &str, retry_after: Duration);
}

/// Output tokens assumed for a call that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

/// A call's tokens, estimated on the high side so a budget holds: the
/// request's messages and tool definitions at three bytes of JSON per
/// token, plus its `max_tokens` (or [`DEFAULT_OUTPUT_ESTIMATE`]).
pub fn estimate_tokens(request: &ModelRequest) -> u64 {
    let tools: usize = request
        .tools
        .iter()
        .map(|tool| tool.name.len() + tool.description.len() + tool.parameters.to_string().len())
        .sum();
    let bytes = serde_json::to_string(&request.messages).map_or(0, |text| text.len()) + tools;
    (bytes as u64).div_ceil(3)
        + request
            .max_tokens
            .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from)
}

/// `retry_in` plus up to a tenth of it (at most 250 ms) at random, so calls
/// that wait for the same moment do not all ask at once.
pub(crate) fn with_jitter(retry_in: Duration) -> Duration {
    let spread = (retry_in / 10).min(Duration::from_millis(250));
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(0);
    if spread_ms == 0 {
        return retry_in;
    }
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    retry_in + Duration::from_millis(random % (spread_ms + 1))
}

#[cfg(test)]
mod tests {
    use exo_proto::Message;

    use super::*;

    #[test]
    fn estimates_cover_the_request_and_the_output() {
        let mut request = ModelRequest::new(vec![Message::user("x".repeat(300))]);
        let base = estimate_tokens(&request);
        assert!(base >= 100 + DEFAULT_OUTPUT_ESTIMATE, "{base}");
        request.max_tokens = Some(10);
        assert_eq!(
            estimate_tokens(&request),
            base - DEFAULT_OUTPUT_ESTIMATE + 10
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..100 {
            let waited = with_jitter(Duration::from_secs(1));
            assert!(waited >= Duration::from_secs(1));
            assert!(waited <= Duration::from_millis(1100));
        }
        assert_eq!(
            with_jitter(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
    }
}
