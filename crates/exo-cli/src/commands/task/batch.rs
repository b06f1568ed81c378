//! `exo task submit --batch FILE|-`: one task payload per JSON line,
//! submitted with a bounded number in flight, one JSON line out per task as
//! soon as Redis acknowledges it.
//!
//! Results come out in the order Redis answers, each with its input line
//! number. A line that cannot be submitted (not JSON, not a payload, an
//! invalid agent, a refused submit) prints an error line and the others go
//! on; the exit status is then 1. Blank lines are skipped.

use std::{path::Path, pin::Pin, process::ExitCode};

use anyhow::Context;
use exo_broker::{Shards, Submitted};
use exo_proto::TaskPayload;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_stream::wrappers::LinesStream;

use crate::{Failure, Outcome, output::outln};

/// The lines to read: stdin for `-`, else the file.
pub(crate) type Input = Pin<Box<dyn AsyncRead + Send>>;

/// Opens the batch source.
pub(crate) async fn open(source: &Path) -> Result<Input, Failure> {
    if source == Path::new("-") {
        return Ok(Box::pin(tokio::io::stdin()));
    }
    let file = tokio::fs::File::open(source)
        .await
        .with_context(|| format!("cannot read the batch file {}", source.display()))
        .map_err(Failure::invalid)?;
    Ok(Box::pin(file))
}

/// Submits every line of `input`, at most `in_flight` at once.
pub(crate) async fn submit(broker: &Shards, input: Input, in_flight: usize) -> Outcome {
    let lines = LinesStream::new(BufReader::new(input).lines());
    let mut results = std::pin::pin!(submissions(broker, lines, in_flight));
    let mut failed = 0u64;
    while let Some(result) = results.next().await {
        if result.get("error").is_some() {
            failed += 1;
        }
        outln!("{result}");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One result line per non-blank input line, as Redis answers.
fn submissions<'a>(
    broker: &'a Shards,
    lines: impl Stream<Item = std::io::Result<String>> + Send + 'a,
    in_flight: usize,
) -> impl Stream<Item = Value> + 'a {
    lines
        .enumerate()
        .filter_map(|(index, line)| async move {
            match line {
                Ok(line) if line.trim().is_empty() => None,
                line => Some((index + 1, line)),
            }
        })
        .map(move |(number, line)| async move {
            let outcome = match line {
                Ok(line) => submit_line(broker, &line).await,
                Err(error) => Err(format!("cannot read the line: {error}")),
            };
            match outcome {
                Ok((task_id, submitted)) => json!({
                    "line": number,
                    "task_id": task_id,
                    "created": submitted == Submitted::Created,
                    "time": exo_proto::time::now_seconds(),
                }),
                Err(error) => json!({"line": number, "error": error}),
            }
        })
        .buffer_unordered(in_flight.max(1))
}

/// Parses one line into a payload and submits it.
async fn submit_line(shards: &Shards, line: &str) -> Result<(String, Submitted), String> {
    let payload = parse_line(line)?;
    let broker = shards.for_payload(&payload);
    exo_observability::record::task_submitted(broker.keys().queue());
    let handle = broker
        .client()
        .submit(payload)
        .await
        .map_err(|error| error.to_string())?;
    Ok((handle.task_id().to_owned(), handle.submitted()))
}

/// A task payload from one JSON line: the payload's own field names, with
/// a fresh task id when the line has none. The agent config is checked as
/// a worker will read it.
pub(crate) fn parse_line(line: &str) -> Result<TaskPayload, String> {
    let mut value: Value =
        serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("a line must hold a JSON object (a task payload)".to_owned());
    };
    if !object.contains_key("task_id") {
        object.insert(
            "task_id".to_owned(),
            Value::String(uuid::Uuid::new_v4().simple().to_string()),
        );
    }
    let payload: TaskPayload =
        exo_proto::decode_value("task payload", value).map_err(|error| error.to_string())?;
    exo_proto::check_task_id(&payload.task_id).map_err(|error| error.to_string())?;
    super::check_agent(&payload).map_err(|error| error.to_string())?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn lines_become_payloads_or_say_why_not() {
        let cases = [
            (
                r#"{"agent_config": {"name": "a", "model": "scripted:echo"}, "input": "hi"}"#,
                "ok input=hi",
            ),
            (
                r#"{"task_id": "t-1", "agent_config": {"name": "a"}, "model": "scripted:echo"}"#,
                "ok task_id=t-1",
            ),
            ("not json", "not JSON"),
            ("[1, 2]", "a line must hold a JSON object"),
            (
                r#"{"agent_config": {"name": "a", "model": "scripted:echo"}, "input": 5}"#,
                "input",
            ),
            (
                r#"{"task_id": "a b", "agent_config": {"name": "a"}}"#,
                "task_id",
            ),
        ];
        for (line, expected) in cases {
            let actual = match parse_line(line) {
                Ok(payload) => format!("ok input={} task_id={}", payload.input, payload.task_id),
                Err(error) => error,
            };
            if let Some(expected) = expected.strip_prefix("ok ") {
                assert!(actual.starts_with("ok "), "{line}: {actual}");
                for part in expected.split(' ') {
                    assert!(actual.contains(part), "{line}: `{part}` not in `{actual}`");
                }
                assert!(
                    actual
                        .split("task_id=")
                        .nth(1)
                        .is_some_and(|id| !id.is_empty()),
                    "{line}: no task id in `{actual}`"
                );
            } else {
                assert!(
                    actual.contains(expected),
                    "{line}: `{expected}` not in `{actual}`"
                );
            }
        }
    }
}
