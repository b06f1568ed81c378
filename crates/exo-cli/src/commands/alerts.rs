//! `exo alerts check`: the guide's alert rules against live Redis.

use crate::output::outln;
use std::process::ExitCode;

use exo_observability::{alerts_exit_code, apply_overrides, default_rules, evaluate};
use serde_json::json;

use crate::{
    Failure, Outcome,
    args::{AlertsCommand, Global},
    commands::{connect, print_json},
};

pub(crate) async fn run(global: Global, command: AlertsCommand) -> Outcome {
    let AlertsCommand::Check { thresholds } = command;
    let mut rules = default_rules();
    apply_overrides(&mut rules, &thresholds)
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    let broker = connect(&global).await?;
    let snapshot = exo_gateway::alert_snapshot(&broker).await?;
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
