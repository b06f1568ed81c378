//! `exo worker list` and `exo worker health`.

use crate::output::outln;
use std::process::ExitCode;

use comfy_table::Cell;
use serde_json::json;

use crate::{
    Outcome,
    args::{Global, WorkerCommand},
    commands::{connect_shards, print_json},
    render,
};

pub(crate) async fn run(global: Global, command: WorkerCommand) -> Outcome {
    let shards = connect_shards(&global).await?;
    let broker = shards.first().clone();
    match command {
        WorkerCommand::List => list(&global, &shards).await,
        WorkerCommand::Health { worker_id } => health(&global, &broker, &worker_id).await,
    }
}

async fn list(global: &Global, shards: &exo_broker::Shards) -> Outcome {
    let now = exo_proto::time::now_seconds();
    // A worker of a sharded queue heartbeats on every shard: one row each.
    let mut fleet = shards.fleet().await?;
    fleet.sort_by(|left, right| left.worker_id.cmp(&right.worker_id));
    if global.json {
        let rows: Vec<_> = fleet
            .iter()
            .map(|entry| {
                let health = entry.health.as_ref();
                json!({
                    "worker_id": entry.worker_id,
                    "alive": entry.alive(now),
                    "status": health.map(|health| health.status.as_str()).unwrap_or("dead"),
                    "hostname": health.map(|health| health.hostname.as_str()),
                    "tasks_processed": health.map(|health| health.tasks_processed),
                    "tasks_failed": health.map(|health| health.tasks_failed),
                    "current_task_id": health.and_then(|health| health.current_task_id.clone()),
                    "concurrency": health.map(|health| health.concurrency),
                    "last_heartbeat": health.map_or(entry.last_seen, |health| health.last_heartbeat),
                })
            })
            .collect();
        print_json(&json!(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if fleet.is_empty() {
        outln!("No workers.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&[
        "Worker ID",
        "Status",
        "Hostname",
        "Tasks",
        "Failed",
        "Current Task",
        "Concurrency",
        "Last Heartbeat",
    ]);
    for entry in &fleet {
        let alive = entry.alive(now);
        let row = match &entry.health {
            Some(health) => vec![
                Cell::new(&entry.worker_id),
                if alive {
                    Cell::new(&health.status)
                } else {
                    render::red("dead")
                },
                Cell::new(&health.hostname),
                Cell::new(health.tasks_processed),
                Cell::new(health.tasks_failed),
                Cell::new(health.current_task_id.as_deref().unwrap_or("-")),
                Cell::new(health.concurrency),
                Cell::new(render::utc(health.last_heartbeat)),
            ],
            None => vec![
                render::red(&entry.worker_id),
                render::red("dead"),
                Cell::new("-"),
                Cell::new("-"),
                Cell::new("-"),
                Cell::new("-"),
                Cell::new("-"),
                Cell::new(render::utc(entry.last_seen)),
            ],
        };
        table.add_row(row);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 healthy, 1 degraded, 2 unhealthy.
async fn health(global: &Global, broker: &exo_broker::Broker, worker_id: &str) -> Outcome {
    let now = exo_proto::time::now_seconds();
    let heartbeat = broker.admin().worker(worker_id).await?;
    let report = exo_observability::worker_health(worker_id, heartbeat.as_ref(), now);
    if global.json {
        print_json(&exo_observability::health_json(worker_id, &report));
    } else {
        outln!("{}", exo_observability::format_health(worker_id, &report));
    }
    Ok(ExitCode::from(exo_observability::health_exit_code(
        report.health,
    )))
}
