//! Fleet-wide rate limits of model calls: every worker of a queue reserves
//! a call's requests and tokens in Redis before it sends the call
//! (`admit.lua`, one round trip), so the fleet together stays under a
//! provider's requests-per-minute and tokens-per-minute limits. A call is
//! reserved against every rule that covers it (a model's and its
//! provider's, say) at once: in all of them or in none.

use std::time::Duration;

use crate::{
    broker::Broker,
    error::Result,
    ops::admit::{AdmitCall, Mode},
};

/// One rule: limits over a sliding window, kept under its name. Which calls
/// a rule covers (a model, a provider, a credential) is the caller's
/// business; the broker only counts.
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
        /// When capacity frees up (or the back-off ends) in every rule.
        retry_in: Duration,
        /// Which limit holds the call.
        reason: LimitReason,
        /// The rule that frees up last.
        rule: String,
    },
    /// The call alone needs more tokens than a rule allows per window.
    Never {
        /// The rule's tokens per window.
        tokens: u64,
        /// The rule.
        rule: String,
    },
}

/// What an admitted call used, to replace its estimate in the rules it was
/// reserved under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The names of the rules it was reserved under.
    pub rules: Vec<String>,
    /// The reservation's id.
    pub reservation: String,
    /// The tokens the call used (input plus output).
    pub tokens: u64,
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

    /// Reserves one call of `tokens` (an estimate) as `reservation` (a
    /// unique id) under every one of `rules`, if each window has room; else
    /// under none. No rules: granted without a round trip.
    pub async fn admit(
        &self,
        rules: &[LimitRule],
        reservation: &str,
        tokens: u64,
    ) -> Result<Admission> {
        self.admit_settling(rules, reservation, tokens, &[]).await
    }

    /// [`Limits::admit`], settling earlier calls first in the same round
    /// trip: a worker that sends calls one after another settles each
    /// with the next one's reservation.
    pub async fn admit_settling(
        &self,
        rules: &[LimitRule],
        reservation: &str,
        tokens: u64,
        settlements: &[Settlement],
    ) -> Result<Admission> {
        if rules.is_empty() {
            if !settlements.is_empty() {
                self.settle_all(settlements).await?;
            }
            return Ok(Admission::Granted);
        }
        let reply = self
            .broker
            .call(&AdmitCall {
                mode: Mode::Admit,
                rules,
                settlements,
                reservation,
                tokens,
                pause: Duration::ZERO,
            })
            .await?;
        Ok(reply.admission())
    }

    /// Replaces a reservation's estimate with the tokens the call used, in
    /// every one of `rules`. Returns how many still held it (a reservation
    /// that left its window counts no more).
    pub async fn settle(&self, rules: &[LimitRule], reservation: &str, tokens: u64) -> Result<u64> {
        self.settle_all(&[Settlement {
            rules: rules.iter().map(|rule| rule.name.clone()).collect(),
            reservation: reservation.to_owned(),
            tokens,
        }])
        .await
    }

    /// Settles several calls in one round trip. Returns how many
    /// (reservation, rule) pairs were still in their window.
    pub async fn settle_all(&self, settlements: &[Settlement]) -> Result<u64> {
        if settlements
            .iter()
            .all(|settlement| settlement.rules.is_empty())
        {
            return Ok(0);
        }
        let reply = self
            .broker
            .call(&AdmitCall {
                mode: Mode::Settle,
                rules: &[],
                settlements,
                reservation: "",
                tokens: 0,
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
                rules: std::slice::from_ref(rule),
                settlements: &[],
                reservation: "",
                tokens: 0,
                pause,
            })
            .await?;
        Ok(())
    }
}
