//! The usage ledger: what model calls used, by model, tenant and agent.
//!
//! Every final write adds what its attempt's model calls used (tokens,
//! calls, cost) to the bucket of its minute (kept two days) and of its hour
//! (kept 35 days), a hash of counters named `{dimension}|{name}|{metric}`
//! (`finish.lua`). A report sums the buckets of a period: minute buckets
//! for periods up to three hours, hour buckets beyond, read in one round
//! trip.

use std::{collections::BTreeMap, time::Duration};

use fred::prelude::*;

use crate::{admin::Admin, error::Result};

/// What a ledger report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageDimension {
    /// The agent's model string.
    Model,
    /// The task's tenant (`""` for tasks without one).
    Tenant,
    /// The agent's (or swarm's) name.
    Agent,
}

impl UsageDimension {
    /// `model`, `tenant` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageDimension::Model => "model",
            UsageDimension::Tenant => "tenant",
            UsageDimension::Agent => "agent",
        }
    }
}

/// One line of a ledger report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// The model, tenant or agent.
    pub name: String,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Model calls.
    pub calls: u64,
    /// Cost by the workers' price tables, in millionths of a US dollar.
    pub cost_micros: u64,
}

/// A ledger report: its rows and the period its buckets cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// One row per name, by name.
    pub rows: Vec<UsageRow>,
    /// The start of the first bucket read (Unix seconds): the period is
    /// rounded down to the bucket's minute or hour.
    pub from: u64,
    /// The server's time of the report (Unix seconds).
    pub to: u64,
}

/// The longest period read from minute buckets.
const MINUTE_BUCKETS_UP_TO: Duration = Duration::from_secs(3 * 3600);
/// The longest period the ledger keeps.
pub const USAGE_KEPT: Duration = Duration::from_secs(35 * 86400);

impl Admin {
    /// What model calls used over the last `since` (at most 35 days),
    /// grouped by `by`, by the server's clock.
    pub async fn usage(&self, since: Duration, by: UsageDimension) -> Result<UsageReport> {
        let broker = self.broker();
        let client = &broker.inner.client;
        broker.count();
        let time: Vec<u64> = client
            .custom(fred::cmd!("TIME"), Vec::<String>::new())
            .await?;
        let seconds = time.first().copied().unwrap_or_default();
        let since = since.min(USAGE_KEPT);
        let (kind, width) = if since <= MINUTE_BUCKETS_UP_TO {
            ("m", 60)
        } else {
            ("h", 3600)
        };
        let last = seconds / width;
        let first = seconds.saturating_sub(since.as_secs()) / width;
        let keys = broker.keys();
        let pipeline = client.pipeline();
        for bucket in first..=last {
            let _: () = pipeline
                .hgetall(keys.usage_bucket(&format!("{kind}:{bucket}")))
                .await?;
        }
        broker.count();
        let buckets: Vec<std::collections::HashMap<String, u64>> = pipeline.all().await?;
        let prefix = format!("{}|", by.as_str());
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        for bucket in buckets {
            for (field, value) in bucket {
                let Some(rest) = field.strip_prefix(&prefix) else {
                    continue;
                };
                let Some((name, metric)) = rest.rsplit_once('|') else {
                    continue;
                };
                let row = rows.entry(name.to_owned()).or_insert_with(|| UsageRow {
                    name: name.to_owned(),
                    ..UsageRow::default()
                });
                match metric {
                    "input" => row.input_tokens += value,
                    "output" => row.output_tokens += value,
                    "calls" => row.calls += value,
                    "cost" => row.cost_micros += value,
                    _ => {}
                }
            }
        }
        Ok(UsageReport {
            rows: rows.into_values().collect(),
            from: first * width,
            to: seconds,
        })
    }
}
