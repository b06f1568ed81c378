//! `exo task list|status|cancel|submit|events`.

mod batch;

use crate::output::outln;
use std::process::ExitCode;

use anyhow::Context;
use comfy_table::Cell;
use exo_broker::{Broker, CancelOutcome, Decided, Decision, Shards, Submitted};
use exo_proto::{Message, TaskPayload, TaskStatus};
use serde_json::{Map, Value, json};

use crate::{
    Failure, Outcome,
    args::{Global, SubmitArgs, TaskCommand},
    commands::{connect_shards, print_json},
    render,
};

pub(crate) async fn run(global: Global, command: TaskCommand) -> Outcome {
    // Validate what can be validated before connecting.
    let status_filter = match &command {
        TaskCommand::List {
            status: Some(status),
            ..
        } => Some(status.parse::<TaskStatus>().map_err(|_| {
            let valid: Vec<&str> = TaskStatus::ALL
                .iter()
                .map(|status| status.as_str())
                .collect();
            Failure::invalid(anyhow::anyhow!(
                "invalid status `{status}`; valid statuses: {}",
                valid.join(", ")
            ))
        })?),
        _ => None,
    };
    if let TaskCommand::Submit(args) = &command
        && let Some(source) = &args.batch
    {
        let input = batch::open(source).await?;
        let shards = connect_shards(&global).await?;
        return batch::submit(&shards, input, usize::from(args.in_flight)).await;
    }
    let prepared = match &command {
        TaskCommand::Submit(args) => Some(prepare_payload(args)?),
        _ => None,
    };
    let shards = connect_shards(&global).await?;
    // The shard that holds the task a command names (the only one when the
    // queue is not sharded).
    let broker = match &command {
        TaskCommand::Status { task_id }
        | TaskCommand::Cancel { task_id }
        | TaskCommand::Approve { task_id, .. }
        | TaskCommand::Deny { task_id, .. }
        | TaskCommand::Events { task_id, .. } => shards.holder(task_id).await?.clone(),
        TaskCommand::Submit(_) => match &prepared {
            Some(payload) => shards.for_payload(payload).clone(),
            None => shards.first().clone(),
        },
        TaskCommand::List { .. } => shards.first().clone(),
    };
    match command {
        TaskCommand::List { limit, .. } => list(&global, &shards, status_filter, limit).await,
        TaskCommand::Status { task_id } => status(&global, &broker, &task_id).await,
        TaskCommand::Cancel { task_id } => cancel(&global, &broker, &task_id).await,
        TaskCommand::Approve {
            task_id,
            args,
            by,
            call,
        } => {
            let arguments = match args
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
            {
                None => None,
                Some(Ok(serde_json::Value::Object(arguments))) => Some(arguments),
                Some(Ok(_)) => {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "--args must be a JSON object"
                    )));
                }
                Some(Err(error)) => {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "--args is not valid JSON: {error}"
                    )));
                }
            };
            let decision = Decision {
                approved: true,
                by: decider(by),
                reason: None,
                arguments,
                tool_call_id: call,
            };
            decide(&global, &broker, &task_id, &decision).await
        }
        TaskCommand::Deny {
            task_id,
            reason,
            by,
            call,
        } => {
            let decision = Decision {
                approved: false,
                by: decider(by),
                reason: Some(reason),
                arguments: None,
                tool_call_id: call,
            };
            decide(&global, &broker, &task_id, &decision).await
        }
        TaskCommand::Submit(args) => {
            let payload =
                prepared.ok_or_else(|| Failure::invalid(anyhow::anyhow!("no payload")))?;
            submit(&global, &broker, payload, args.follow).await
        }
        TaskCommand::Events {
            task_id,
            follow,
            from,
        } => events(&global, &broker, &task_id, follow, from.as_deref()).await,
    }
}

async fn list(
    global: &Global,
    shards: &Shards,
    status: Option<TaskStatus>,
    limit: usize,
) -> Outcome {
    let page = shards.list(status, limit).await?;
    if global.json {
        print_json(&json!(
            page.tasks.iter().map(render::task_json).collect::<Vec<_>>()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if page.tasks.is_empty() {
        outln!(
            "No tasks{}.",
            status
                .map(|status| format!(" with status {status}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&[
        "Task ID", "Status", "Agent", "Worker", "Retries", "Created", "Duration",
    ]);
    for task in &page.tasks {
        let status_cell = match task.status {
            TaskStatus::Failed => render::red(task.status),
            _ => Cell::new(task.status),
        };
        table.add_row(vec![
            Cell::new(&task.task_id),
            status_cell,
            Cell::new(task.agent_name.as_deref().unwrap_or("-")),
            Cell::new(task.worker_id.as_deref().unwrap_or("-")),
            Cell::new(task.retries.unwrap_or(0)),
            Cell::new(render::utc(task.created_at.unwrap_or(0.0))),
            Cell::new(
                render::task_duration(task)
                    .map(render::duration)
                    .unwrap_or_else(|| "-".into()),
            ),
        ]);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn status(global: &Global, broker: &Broker, task_id: &str) -> Outcome {
    let Some(task) = broker.client().get(task_id).await? else {
        return Err(Failure::invalid(anyhow::anyhow!(
            "task `{task_id}` not found"
        )));
    };
    if global.json {
        print_json(&render::task_json(&task));
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = vec![
        ("Task", task.task_id.clone()),
        ("Status", task.status.to_string()),
    ];
    let mut push = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            lines.push((name, value));
        }
    };
    push("Agent", task.agent_name.clone());
    push("Worker", task.worker_id.clone());
    push("Created", task.created_at.map(render::utc));
    push("Started", task.started_at.map(render::utc));
    push(
        "Completed",
        task.completed_at
            .filter(|_| task.status.is_terminal())
            .map(render::utc),
    );
    push(
        "Duration",
        render::task_duration(&task).map(render::duration),
    );
    push(
        "Waited",
        match (task.created_at, task.started_at) {
            (Some(created), Some(started)) if started >= created => {
                Some(render::duration(started - created))
            }
            _ => None,
        },
    );
    push(
        "Retries",
        Some(format!(
            "{} of {}",
            task.retries.unwrap_or(0),
            task.max_retries.map_or("-".into(), |max| max.to_string())
        )),
    );
    push("Attempt", task.attempt.map(|attempt| attempt.to_string()));
    if task.waiting_for.is_some() {
        let call = task.approval.as_ref().map(|approval| {
            format!(
                "{}({})",
                approval["tool_name"].as_str().unwrap_or("?"),
                approval["arguments"].as_str().unwrap_or("")
            )
        });
        push(
            "Waiting",
            Some(format!(
                "for approval of {}",
                call.unwrap_or_else(|| "a tool call".to_owned())
            )),
        );
        push("Deadline", task.approval_deadline.map(render::utc));
    }
    push("Scheduled", task.scheduled_for.map(render::utc));
    push(
        "Usage",
        task.usage.map(|usage| {
            let cost = if usage.cost_micros > 0 {
                format!(", ${:.6}", usage.cost_micros as f64 / 1e6)
            } else {
                String::new()
            };
            let calls = if usage.calls == 1 { "call" } else { "calls" };
            format!(
                "{} model {calls}, {} input + {} output tokens{cost}",
                usage.calls, usage.input_tokens, usage.output_tokens
            )
        }),
    );
    push("Error", task.error.clone());
    push("Output", task.output().map(str::to_owned));
    for (name, value) in lines {
        outln!("{name:<10} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(global: &Global, broker: &Broker, task_id: &str) -> Outcome {
    let outcome = broker.client().cancel(task_id).await?;
    let (word, message, code) = match outcome {
        CancelOutcome::Cancelled => ("cancelled", "cancelled before it started".to_owned(), 0),
        CancelOutcome::Cancelling => (
            "cancelling",
            "the running task was signalled and will stop".to_owned(),
            0,
        ),
        CancelOutcome::AlreadyFinished(status) => {
            ("already_finished", format!("already {status}"), 0)
        }
        CancelOutcome::NotFound => ("not_found", "not found".to_owned(), 1),
    };
    if global.json {
        print_json(&json!({"task_id": task_id, "result": word}));
    } else {
        outln!("{task_id}: {message}");
    }
    Ok(ExitCode::from(code))
}

/// Who decides: `--by`, else the login name.
fn decider(by: Option<String>) -> String {
    by.filter(|by| !by.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|user| !user.is_empty()))
        .unwrap_or_else(|| "cli".to_owned())
}

async fn decide(global: &Global, broker: &Broker, task_id: &str, decision: &Decision) -> Outcome {
    let verdict = if decision.approved {
        "approved"
    } else {
        "denied"
    };
    let (word, message, code) = match broker.client().decide(task_id, decision).await? {
        Decided::Resumed { tool_name } => (
            verdict,
            format!("{verdict} the call to `{tool_name}`; the task is queued again"),
            0,
        ),
        Decided::NotWaiting(status) => (
            "not_waiting",
            format!(
                "waits for no approval (status {})",
                status.map_or_else(|| "unknown".to_owned(), |status| status.to_string())
            ),
            1,
        ),
        Decided::NotFound => ("not_found", "not found".to_owned(), 1),
    };
    if global.json {
        print_json(&json!({"task_id": task_id, "result": word}));
    } else {
        outln!("{task_id}: {message}");
    }
    Ok(ExitCode::from(code))
}

/// Reads the agent file and builds the payload, validating the config.
fn prepare_payload(args: &SubmitArgs) -> Result<TaskPayload, Failure> {
    let Some(agent) = &args.agent else {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!("--agent FILE (or --batch FILE) is required"),
        ));
    };
    let config = read_agent_file(agent)?;
    let mut payload = TaskPayload::new(
        uuid::Uuid::new_v4().simple().to_string(),
        config,
        args.input.clone(),
    );
    payload.model = args.model.clone();
    payload.detailed = args.detailed;
    payload.timeout_seconds = args.timeout;
    payload.max_retries = args.max_retries;
    payload.idempotency_key = args.idempotency_key.clone();
    payload.run_at = match (args.delay, args.run_at) {
        (Some(delay), _) if !delay.is_finite() || delay < 0.0 => {
            return Err(Failure::with_code(
                2,
                anyhow::anyhow!("--delay must be a number of seconds, 0 or more"),
            ));
        }
        (Some(delay), _) => Some(exo_proto::time::now_seconds() + delay),
        (None, run_at) => run_at,
    };
    if args.budget_tokens.is_some() || args.budget_cost.is_some() {
        payload.budget = Some(exo_proto::Budget {
            max_tokens: args.budget_tokens,
            max_cost: args.budget_cost,
        });
    }
    payload.priority = args.priority;
    payload.concurrency_key = args.concurrency_key.clone();
    payload.concurrency_limit = args.concurrency_limit;
    if let Some(strategy) = &args.multitask_strategy {
        payload.multitask_strategy =
            Some(strategy.parse().map_err(|error: exo_proto::Error| {
                Failure::with_code(2, anyhow::Error::new(error))
            })?);
    }
    if let Some(metadata) = &args.metadata {
        payload.metadata = serde_json::from_str::<Map<String, Value>>(metadata)
            .context("--metadata must be a JSON object")
            .map_err(Failure::invalid)?;
    }
    if let Some(messages) = &args.messages {
        let text = match messages.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {path}"))
                .map_err(Failure::invalid)?,
            None => messages.clone(),
        };
        payload.messages = exo_proto::decode::<Vec<Message>>("messages", text.as_bytes())
            .map_err(Failure::invalid)?;
    }
    check_agent(&payload).map_err(Failure::invalid)?;
    Ok(payload)
}

/// Validates the payload's agent config as a worker will read it (with the
/// payload's fallback model when the config names none).
pub(crate) fn check_agent(payload: &TaskPayload) -> Result<(), exo_proto::Error> {
    let mut checked = payload.clone();
    if checked.model.is_some() && !checked.agent_config.contains_key("model") {
        checked.agent_config.insert(
            "model".into(),
            Value::String(checked.model.clone().unwrap_or_default()),
        );
    }
    checked.agent_spec().map(|_| ())
}

async fn submit(
    global: &Global,
    broker: &Broker,
    mut payload: TaskPayload,
    follow: bool,
) -> Outcome {
    let span = tracing::info_span!(
        "exo.task.submit",
        task_id = payload.task_id,
        queue = broker.keys().queue()
    );
    let handle = {
        let _entered = span.enter();
        exo_observability::inject_trace_context(&mut payload.metadata);
        tracing::Instrument::instrument(broker.client().submit(payload), span.clone()).await?
    };
    exo_observability::record::task_submitted(broker.keys().queue());
    let duplicate = handle.submitted() == Submitted::Duplicate;
    if global.json && !follow {
        print_json(&json!({"task_id": handle.task_id(), "duplicate": duplicate}));
        return Ok(ExitCode::SUCCESS);
    }
    if !global.json {
        if duplicate {
            eprintln!(
                "duplicate submit: following the earlier task {}",
                handle.task_id()
            );
        }
        outln!("{}", handle.task_id());
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    events(global, broker, handle.task_id(), true, None).await
}

async fn events(
    global: &Global,
    broker: &Broker,
    task_id: &str,
    follow: bool,
    from: Option<&str>,
) -> Outcome {
    let mut printer = render::EventPrinter::default();
    let print = |printer: &mut render::EventPrinter, id: &str, event: &exo_proto::StreamEvent| {
        if global.json {
            outln!(
                "{}",
                json!({"id": id, "event": serde_json::to_value(event).unwrap_or(Value::Null)})
            );
        } else {
            printer.print(event);
        }
    };
    if !follow {
        let items = broker.client().read_events(task_id, from, 100_000).await?;
        if items.is_empty() && broker.client().get(task_id).await?.is_none() {
            return Err(Failure::invalid(anyhow::anyhow!(
                "task `{task_id}` not found"
            )));
        }
        for item in &items {
            print(&mut printer, &item.id, &item.event);
        }
        printer.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = broker.client().events(task_id, from);
    let mut last_terminal = None;
    while let Some(item) = stream.next().await {
        let item = match item {
            Ok(item) => item,
            Err(exo_broker::Error::NotFound(_)) => {
                return Err(Failure::invalid(anyhow::anyhow!(
                    "task `{task_id}` not found"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        print(&mut printer, &item.id, &item.event);
        if item.event.is_terminal() {
            last_terminal = Some(item.event.clone());
        }
    }
    printer.finish();
    stream.close().await;
    Ok(match last_terminal {
        Some(exo_proto::StreamEvent::Status(status))
            if status.status == exo_proto::RunStatus::Completed =>
        {
            ExitCode::SUCCESS
        }
        Some(_) => ExitCode::from(1),
        None => ExitCode::SUCCESS,
    })
}

/// An agent (or swarm) config from a JSON or YAML file.
pub(crate) fn read_agent_file(agent: &std::path::Path) -> Result<Map<String, Value>, Failure> {
    let text = std::fs::read_to_string(agent)
        .with_context(|| format!("cannot read the agent file {}", agent.display()))
        .map_err(Failure::invalid)?;
    let is_yaml = agent
        .extension()
        .is_some_and(|extension| extension == "yaml" || extension == "yml");
    let config: Value = if is_yaml {
        serde_norway::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", agent.display()))
            .map_err(Failure::invalid)?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", agent.display()))
            .map_err(Failure::invalid)?
    };
    let Value::Object(config) = config else {
        return Err(Failure::invalid(anyhow::anyhow!(
            "the agent file must hold an object"
        )));
    };
    Ok(config)
}
