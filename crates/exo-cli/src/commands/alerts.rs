//! `exo alerts check`: the guide's alert rules against live Redis.

use crate::output::outln;
use std::process::ExitCode;

use exo_observability::{
    AlertSnapshot, alerts_exit_code, apply_overrides, default_rules, evaluate, failure_rate,
};
use exo_proto::TaskStatus;
use serde_json::json;

use crate::{
    Failure, Outcome,
    args::{AlertsCommand, Global},
    commands::{connect, print_json},
};

/// How many recent tasks the failure rate is computed over.
const RECENT_TASKS: usize = 500;

pub(crate) async fn run(global: Global, command: AlertsCommand) -> Outcome {
    let AlertsCommand::Check { thresholds } = command;
    let mut rules = default_rules();
    apply_overrides(&mut rules, &thresholds)
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    let broker = connect(&global).await?;
    let now = exo_proto::time::now_seconds();
    let stats = broker.admin().queue_stats().await?;
    let fleet = broker.admin().fleet().await?;
    let recent = broker.client().list(None, RECENT_TASKS, 0).await?;
    let count = |status: TaskStatus| {
        recent
            .tasks
            .iter()
            .filter(|task| task.status == status)
            .count() as u64
    };
    let snapshot = AlertSnapshot {
        queue_depth: stats.depth(),
        workers_alive: fleet.iter().filter(|entry| entry.alive(now)).count() as u64,
        failure_rate: failure_rate(count(TaskStatus::Completed), count(TaskStatus::Failed)),
        oldest_wait_seconds: stats.oldest_wait(now),
    };
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
