//! Fleet-wide rate limits of model calls: every worker of a queue reserves
//! a call's requests and tokens in Redis before it sends the call
//! (`admit.lua`, one round trip), so the fleet together stays under a
//! provider's requests-per-minute and tokens-per-minute limits.

use std::time::Duration;

use crate::{
    broker::Broker,
    error::Result,
    ops::admit::{AdmitCall, Mode},
};

/// One rule: the limits of a model (as an agent names it), over a sliding
/// window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// The rule's name, also its key (`{prefix}limits:{name}`): no
    /// whitespace, at most 200 bytes.
    pub name: String,
    /// Calls per window; 0 for no limit.
    pub requests: u32,
    /// Tokens (input plus output) per window; 0 for no limit.
    pub tokens: u64,
    /// The sliding window. A minute plus a margin for the time between a
    /// reservation and the request's arrival at the provider.
    pub window: Duration,
}

/// The default window: a minute, plus a second for the time a request
/// takes to reach the provider after its reservation.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(61);

/// Why a call must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// The provider asked the fleet to back off (a 429 with `retry-after`).
    Paused,
    /// The window's calls are used up.
    Requests,
    /// The window's tokens are used up.
    Tokens,
}

impl LimitReason {
    /// `paused`, `requests` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::Paused => "paused",
            LimitReason::Requests => "requests",
            LimitReason::Tokens => "tokens",
        }
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: send the call.
    Granted,
    /// Not now: ask again after `retry_in`.
    Wait {
        /// When capacity frees up (or the back-off ends).
        retry_in: Duration,
        /// Which limit holds the call.
        reason: LimitReason,
    },
    /// The call alone needs more tokens than the rule allows per window.
    Never {
        /// The rule's tokens per window.
        tokens: u64,
    },
}

/// The rate-limit operations of a broker (see [`Broker::limits`]).
#[derive(Debug, Clone)]
pub struct Limits {
    broker: Broker,
}

impl Limits {
    pub(crate) fn new(broker: Broker) -> Self {
        Limits { broker }
    }

    /// Reserves one call of `tokens` (an estimate) under `rule`, as
    /// `reservation` (a unique id), if the window has room.
    pub async fn admit(
        &self,
        rule: &LimitRule,
        reservation: &str,
        tokens: u64,
    ) -> Result<Admission> {
        let reply = self
            .broker
            .call(&AdmitCall {
                mode: Mode::Admit,
                rule,
                reservation,
                tokens,
                pause: Duration::ZERO,
            })
            .await?;
        Ok(reply.admission())
    }

    /// Replaces a reservation's estimate with the tokens the call used.
    /// Returns false when the reservation already left the window.
    pub async fn settle(&self, rule: &LimitRule, reservation: &str, tokens: u64) -> Result<bool> {
        let reply = self
            .broker
            .call(&AdmitCall {
                mode: Mode::Settle,
                rule,
                reservation,
                tokens,
                pause: Duration::ZERO,
            })
            .await?;
        Ok(reply.settled())
    }

    /// Holds every call under `rule`, fleet-wide, for `pause` (a provider's
    /// `retry-after`). A longer pause already set stays.
    pub async fn pause(&self, rule: &LimitRule, pause: Duration) -> Result<()> {
        self.broker
            .call(&AdmitCall {
                mode: Mode::Pause,
                rule,
                reservation: "",
                tokens: 0,
                pause,
            })
            .await?;
        Ok(())
    }
}
