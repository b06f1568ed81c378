//! `admit.lua`: reservations under fleet-wide model rate limits.

use std::time::Duration;

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{
    error::{Error, Result},
    limits::{Admission, LimitReason, LimitRule, Settlement},
};

pub(crate) const LUA: &str = include_str!("admit.lua");

/// What the call does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Admit,
    Settle,
    Pause,
}

/// `ARGV[7...]` of admit.lua.
#[derive(Debug)]
pub(crate) struct AdmitCall<'a> {
    pub(crate) mode: Mode,
    /// Every rule that covers the call (the first only, for a pause).
    pub(crate) rules: &'a [LimitRule],
    /// Earlier calls' reservations to settle first (any mode).
    pub(crate) settlements: &'a [Settlement],
    pub(crate) reservation: &'a str,
    pub(crate) tokens: u64,
    pub(crate) pause: Duration,
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum AdmitReply {
    Admission(Admission),
    Settled(u64),
    Paused,
}

impl AdmitReply {
    pub(crate) fn admission(self) -> Admission {
        match self {
            AdmitReply::Admission(admission) => admission,
            _ => Admission::Granted,
        }
    }

    /// How many settlements were still in their window.
    pub(crate) fn settled(self) -> u64 {
        match self {
            AdmitReply::Settled(count) => count,
            _ => 0,
        }
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

impl Operation for AdmitCall<'_> {
    type Reply = AdmitReply;
    const NAME: &'static str = "admit";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.admit
    }

    fn arguments(&self, argv: &mut Vec<String>) {
        argv.extend([
            match self.mode {
                Mode::Admit => "admit",
                Mode::Settle => "settle",
                Mode::Pause => "pause",
            }
            .to_owned(),
            self.reservation.to_owned(),
            self.tokens.to_string(),
            millis(self.pause),
            self.rules.len().to_string(),
        ]);
        for rule in self.rules {
            argv.extend([
                rule.name.clone(),
                rule.requests.to_string(),
                rule.tokens.to_string(),
                millis(rule.window),
            ]);
        }
        for settlement in self.settlements {
            for rule in &settlement.rules {
                argv.extend([
                    rule.clone(),
                    settlement.reservation.clone(),
                    settlement.tokens.to_string(),
                ]);
            }
        }
    }

    fn parse(&self, value: Value) -> Result<AdmitReply> {
        let mut parts = Parts::new(Self::NAME, value)?;
        Ok(match parts.string()?.as_str() {
            "granted" => AdmitReply::Admission(Admission::Granted),
            "wait" => {
                let retry_in = Duration::from_millis(parts.count()?);
                let reason = match parts.string()?.as_str() {
                    "paused" => LimitReason::Paused,
                    "requests" => LimitReason::Requests,
                    _ => LimitReason::Tokens,
                };
                let rule = parts.string()?;
                AdmitReply::Admission(Admission::Wait {
                    retry_in,
                    reason,
                    rule,
                })
            }
            "never" => AdmitReply::Admission(Admission::Never {
                tokens: parts.count()?,
                rule: parts.string()?,
            }),
            "settled" => AdmitReply::Settled(parts.count()?),
            "paused" => AdmitReply::Paused,
            other => {
                return Err(Error::Reply {
                    what: Self::NAME,
                    detail: format!("an answer `{other}`"),
                });
            }
        })
    }
}
