//! `exo queue stats`, `exo usage` and `exo dlq list|redrive`.

use crate::output::outln;
use std::process::ExitCode;

use comfy_table::Cell;
use serde_json::json;

use crate::{
    Failure, Outcome,
    args::{DlqCommand, Global, QueueCommand, UsageArgs, UsageBy},
    commands::{connect_shards, print_json},
    render,
};

pub(crate) async fn run(global: Global, command: QueueCommand) -> Outcome {
    let shards = connect_shards(&global).await?;
    let broker = shards.first();
    match command {
        QueueCommand::Stats => {
            // Every shard's, added up.
            let stats = shards.queue_stats().await?;
            if global.json {
                print_json(&json!({
                    "queue": broker.keys().queue(),
                    "shards": shards.count(),
                    "depth": stats.depth(),
                    "stream_length": stats.stream_length,
                    "lag": stats.lag,
                    "pending": stats.pending,
                    "pending_by_consumer": stats.pending_by_consumer.iter().map(|(consumer, count)| json!({"consumer": consumer, "pending": count})).collect::<Vec<_>>(),
                    "delayed": stats.delayed,
                    "prioritized": stats.prioritized,
                    "held": stats.held,
                    "dead_letter": stats.dead_letter,
                }));
                return Ok(ExitCode::SUCCESS);
            }
            outln!("Queue        {}", broker.keys().queue());
            if shards.count() > 1 {
                outln!("Shards       {}", shards.count());
            }
            outln!(
                "Depth        {} (waiting to start: the stream's, delayed, prioritized and held)",
                stats.depth()
            );
            outln!(
                "Lag          {}",
                stats
                    .lag
                    .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string())
            );
            outln!("Pending      {} (claimed, running)", stats.pending);
            outln!(
                "Delayed      {} (waiting for a retry or their time)",
                stats.delayed
            );
            outln!(
                "Prioritized  {} (waiting beside the stream)",
                stats.prioritized
            );
            outln!("Held         {} (by their concurrency key)", stats.held);
            outln!("Dead letter  {}", stats.dead_letter);
            if !stats.pending_by_consumer.is_empty() {
                let mut table = render::table(&["Worker", "Pending"]);
                for (consumer, count) in &stats.pending_by_consumer {
                    table.add_row(vec![Cell::new(consumer), Cell::new(count)]);
                }
                outln!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn run_usage(global: Global, args: UsageArgs) -> Outcome {
    let shards = connect_shards(&global).await?;
    let by = match args.by {
        UsageBy::Model => exo_broker::UsageDimension::Model,
        UsageBy::Tenant => exo_broker::UsageDimension::Tenant,
        UsageBy::Agent => exo_broker::UsageDimension::Agent,
    };
    // Every shard's ledger, added up.
    let report = shards.usage(args.since, by).await?;
    if global.json {
        print_json(&json!({
            "by": by.as_str(),
            "from": report.from,
            "to": report.to,
            "rows": report.rows.iter().map(|row| json!({
                by.as_str(): row.name,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "calls": row.calls,
                "cost_usd": row.cost_micros as f64 / 1e6,
            })).collect::<Vec<_>>(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let heading = match args.by {
        UsageBy::Model => "Model",
        UsageBy::Tenant => "Tenant",
        UsageBy::Agent => "Agent",
    };
    let mut table = render::table(&[
        heading,
        "Calls",
        "Input tokens",
        "Output tokens",
        "Cost (USD)",
    ]);
    for row in &report.rows {
        table.add_row(vec![
            Cell::new(if row.name.is_empty() {
                "(none)"
            } else {
                &row.name
            }),
            Cell::new(row.calls),
            Cell::new(row.input_tokens),
            Cell::new(row.output_tokens),
            Cell::new(format!("{:.6}", row.cost_micros as f64 / 1e6)),
        ]);
    }
    outln!("{table}");
    outln!(
        "from {} to {} (server time)",
        render::utc(report.from as f64),
        render::utc(report.to as f64)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_dlq(global: Global, command: DlqCommand) -> Outcome {
    // Every shard's dead letters (one stream when the queue is not sharded).
    let shards = connect_shards(&global).await?;
    match command {
        DlqCommand::List { limit } => {
            let letters = shards.dead_letters(limit).await?;
            if global.json {
                print_json(&json!(
                    letters
                        .iter()
                        .map(|letter| json!({
                            "entry_id": letter.entry_id,
                            "task_id": letter.task_id,
                            "reason": letter.reason,
                            "attempts": letter.attempts,
                            "failed_at": letter.failed_at,
                            "payload_bytes": letter.payload.len(),
                        }))
                        .collect::<Vec<_>>()
                ));
                return Ok(ExitCode::SUCCESS);
            }
            if letters.is_empty() {
                outln!("The dead-letter stream is empty.");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = render::table(&["Entry", "Task ID", "Attempts", "Failed", "Reason"]);
            for letter in &letters {
                table.add_row(vec![
                    Cell::new(&letter.entry_id),
                    Cell::new(if letter.task_id.is_empty() {
                        "-"
                    } else {
                        &letter.task_id
                    }),
                    Cell::new(letter.attempts),
                    Cell::new(render::utc(letter.failed_at)),
                    Cell::new(&letter.reason),
                ]);
            }
            outln!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { entry_id } => match shards.redrive(&entry_id).await {
            Ok(task_id) => {
                if global.json {
                    print_json(&json!({"entry_id": entry_id, "task_id": task_id}));
                } else {
                    outln!("{task_id}: back on the queue");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(exo_broker::Error::Config(reason)) => {
                Err(Failure::invalid(anyhow::anyhow!(reason)))
            }
            Err(error) => Err(error.into()),
        },
    }
}
