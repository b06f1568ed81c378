//! `stats.lua`: the queue's numbers.

use fred::types::{Value, scripts::Script};

use super::{Operation, Scripts, reply::Parts};
use crate::{admin::QueueStats, error::Result};

pub(crate) const LUA: &str = include_str!("stats.lua");

/// stats.lua takes no arguments of its own.
#[derive(Debug)]
pub(crate) struct StatsCall;

impl Operation for StatsCall {
    type Reply = QueueStats;
    const NAME: &'static str = "stats";

    fn script(scripts: &Scripts) -> &Script {
        &scripts.stats
    }

    fn arguments(&self, _argv: &mut Vec<String>) {}

    fn parse(&self, value: Value) -> Result<QueueStats> {
        let mut parts = Parts::new(Self::NAME, value)?;
        let stream_length = parts.count()?;
        let lag = parts.integer()?;
        let pending = parts.count()?;
        let consumers = parts.strings()?;
        Ok(QueueStats {
            stream_length,
            lag: (lag >= 0).then_some(lag as u64),
            pending,
            pending_by_consumer: consumers
                .chunks(2)
                .filter(|pair| pair.len() == 2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect(),
            delayed: parts.count()?,
            dead_letter: parts.count()?,
            oldest_waiting_created_at: parts.string()?.parse().ok(),
            prioritized: parts.count()?,
            held: parts.count()?,
        })
    }
}
