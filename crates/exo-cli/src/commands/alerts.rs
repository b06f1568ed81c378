//! `exo alerts check`: the guide's alert rules against live Redis.

use crate::output::outln;
use std::process::ExitCode;

use exo_observability::{alerts_exit_code, apply_overrides, default_rules, evaluate};
use serde_json::json;

use crate::{
    Failure, Outcome,
    args::{AlertsCommand, Global},
    commands::{connect_shards, print_json},
};

pub(crate) async fn run(global: Global, command: AlertsCommand) -> Outcome {
    let AlertsCommand::Check { thresholds } = command;
    let mut rules = default_rules();
    apply_overrides(&mut rules, &thresholds)
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    let shards = connect_shards(&global).await?;
    let mut snapshot = exo_gateway::alert_snapshot(shards.first()).await?;
    // A sharded queue: depth adds up; a worker heartbeats on every shard,
    // so the most any shard sees live; the worst rate and wait.
    for broker in &shards.brokers()[1..] {
        let shard = exo_gateway::alert_snapshot(broker).await?;
        snapshot.queue_depth += shard.queue_depth;
        snapshot.workers_alive = snapshot.workers_alive.max(shard.workers_alive);
        snapshot.failure_rate = match (snapshot.failure_rate, shard.failure_rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        snapshot.oldest_wait_seconds =
            match (snapshot.oldest_wait_seconds, shard.oldest_wait_seconds) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
    }
    let firing = evaluate(&rules, &snapshot);
    let code = alerts_exit_code(&firing);
    if global.json {
        print_json(&json!({
            "snapshot": {
                "queue_depth": snapshot.queue_depth,
                "workers_alive": snapshot.workers_alive,
                "failure_rate": snapshot.failure_rate,
                "oldest_wait_seconds": snapshot.oldest_wait_seconds,
            },
            "firing": firing,
            "exit_code": code,
        }));
    } else if firing.is_empty() {
        outln!(
            "OK: no alert fires (queue depth {}, {} live workers, failure rate {}, oldest wait {})",
            snapshot.queue_depth,
            snapshot.workers_alive,
            snapshot
                .failure_rate
                .map_or_else(|| "n/a".to_owned(), |rate| format!("{:.1}%", rate * 100.0)),
            snapshot
                .oldest_wait_seconds
                .map_or_else(|| "n/a".to_owned(), |wait| format!("{wait:.0} s")),
        );
    } else {
        for alert in &firing {
            outln!("{}", alert.message);
        }
    }
    Ok(ExitCode::from(code))
}
