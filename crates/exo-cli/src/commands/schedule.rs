//! `exo schedule add|list|remove`.

use crate::output::outln;
use std::process::ExitCode;

use comfy_table::Cell;
use exo_proto::TaskPayload;
use serde_json::{Map, Value, json};

use crate::{
    Failure, Outcome,
    args::{Global, ScheduleCommand},
    commands::{connect, print_json, task::read_agent_file},
    render,
};

pub(crate) async fn run(global: Global, command: ScheduleCommand) -> Outcome {
    let broker = connect(&global).await?;
    let schedules = broker.schedules();
    match command {
        ScheduleCommand::Add {
            name,
            cron,
            agent,
            input,
            detailed,
            timeout,
            metadata,
        } => {
            let config = read_agent_file(&agent)?;
            let mut payload = TaskPayload::new(String::new(), config, input);
            payload.detailed = detailed;
            payload.timeout_seconds = timeout;
            if let Some(metadata) = metadata {
                payload.metadata =
                    serde_json::from_str::<Map<String, Value>>(&metadata).map_err(|error| {
                        Failure::invalid(anyhow::anyhow!(
                            "--metadata must be a JSON object: {error}"
                        ))
                    })?;
            }
            payload.agent_spec().map_err(|error| {
                Failure::invalid(anyhow::anyhow!("not a valid agent configuration: {error}"))
            })?;
            let schedule = schedules
                .put(&name, &cron, payload)
                .await
                .map_err(|error| Failure::invalid(anyhow::Error::new(error)))?;
            if global.json {
                print_json(&exo_broker::schedule_json(&schedule));
            } else {
                outln!(
                    "schedule {}: `{}`, next at {}",
                    schedule.name,
                    schedule.cron,
                    render::utc(schedule.next_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::List => {
            let listed = schedules.list().await?;
            if global.json {
                print_json(&json!(
                    listed
                        .iter()
                        .map(exo_broker::schedule_json)
                        .collect::<Vec<_>>()
                ));
                return Ok(ExitCode::SUCCESS);
            }
            if listed.is_empty() {
                outln!("No schedules.");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = render::table(&["Name", "Cron", "Agent", "Next", "Last tick"]);
            for schedule in &listed {
                table.add_row(vec![
                    Cell::new(&schedule.name),
                    Cell::new(&schedule.cron),
                    Cell::new(
                        schedule
                            .payload
                            .agent_spec()
                            .map(|spec| spec.name())
                            .unwrap_or_default(),
                    ),
                    Cell::new(render::utc(schedule.next_at)),
                    Cell::new(schedule.last_tick.map_or("-".to_owned(), render::utc)),
                ]);
            }
            outln!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Remove { name } => {
            let removed = schedules.remove(&name).await?;
            if global.json {
                print_json(&json!({"name": name, "removed": removed}));
            } else if removed {
                outln!("schedule {name} removed");
            } else {
                outln!("no schedule {name}");
            }
            Ok(if removed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
