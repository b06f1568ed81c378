//! Human output: tables, times, durations, and live event rendering.

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL};
use exo_proto::{StreamEvent, TaskResult, ToolOutput, time::CivilTime};
use serde_json::{Value, json};

use crate::output;

/// A table with the guide's look.
pub(crate) fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.iter().map(|header| Cell::new(*header)));
    if output::colour() {
        // The table colours a terminal by itself; CLICOLOR_FORCE asks for
        // colour in a pipe too.
        table.enforce_styling();
    }
    table
}

/// A red cell (dead workers, failed tasks); plain when colour is off (see
/// [`output::colour`]).
pub(crate) fn red(text: impl ToString) -> Cell {
    let cell = Cell::new(text);
    if output::colour() {
        cell.fg(Color::Red)
    } else {
        cell
    }
}

/// Unix seconds as `2026-02-17 10:30:15 UTC`.
pub(crate) fn utc(seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".to_owned();
    }
    let CivilTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    } = CivilTime::from_unix_seconds(seconds.floor() as i64);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// A duration for people: `850 ms`, `4.2 s`, `3 m 05 s`, `2 h 01 m`.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let whole = seconds as u64;
        format!("{} m {:02} s", whole / 60, whole % 60)
    } else {
        let whole = seconds as u64;
        format!("{} h {:02} m", whole / 3600, whole % 3600 / 60)
    }
}

/// A task hash as JSON.
pub(crate) fn task_json(task: &TaskResult) -> Value {
    json!({
        "task_id": task.task_id,
        "status": task.status.as_str(),
        "agent_name": task.agent_name,
        "worker_id": task.worker_id,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "completed_at": task.completed_at,
        "duration_seconds": task_duration(task),
        "result": task.result,
        "error": task.error,
        "retries": task.retries.unwrap_or(0),
        "max_retries": task.max_retries,
        "attempt": task.attempt,
        "waiting_for": task.waiting_for,
        "approval": task.approval,
        "approval_deadline": task.approval_deadline,
        "scheduled_for": task.scheduled_for,
        "usage": task.usage,
    })
}

/// How long the latest attempt ran (or has been running).
pub(crate) fn task_duration(task: &TaskResult) -> Option<f64> {
    let started = task.started_at?;
    let ended = if task.status.is_terminal() || task.status == exo_proto::TaskStatus::Retrying {
        task.completed_at?
    } else {
        exo_proto::time::now_seconds()
    };
    Some((ended - started).max(0.0))
}

/// Renders events in a terminal as they stream: text inline, tool calls and
/// results on their own lines, usage, errors and the final status.
#[derive(Debug, Default)]
pub(crate) struct EventPrinter {
    mid_line: bool,
}

impl EventPrinter {
    fn line(&mut self, text: &str) {
        if self.mid_line {
            output::line(format_args!(""));
            self.mid_line = false;
        }
        output::line(format_args!("{text}"));
    }

    pub(crate) fn print(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Text(text) => {
                output::text(format_args!("{}", text.text));
                self.mid_line = !text.text.ends_with('\n');
            }
            StreamEvent::Reasoning(reasoning) => {
                self.line(&format!("  (thinking) {}", reasoning.text))
            }
            StreamEvent::ToolCall(call) => {
                self.line(&format!("→ {}({})", call.tool_name, call.arguments))
            }
            StreamEvent::ToolCallDelta(_) => {}
            StreamEvent::ToolResult(result) => {
                let body = match &result.result {
                    ToolOutput::Text(text) => text.clone(),
                    ToolOutput::Blocks(blocks) => Value::from(blocks.clone()).to_string(),
                };
                match &result.error {
                    Some(error) => self.line(&format!("✗ {} failed: {error}", result.tool_name)),
                    None => self.line(&format!(
                        "← {}: {body} ({:.0} ms)",
                        result.tool_name, result.duration_ms
                    )),
                }
            }
            StreamEvent::Step(step) => {
                if step.status == exo_proto::StepStatus::Started && step.step_number > 1 {
                    self.line(&format!("── step {} ──", step.step_number));
                }
            }
            StreamEvent::Usage(usage) => self.line(&format!(
                "  [usage: {} in, {} out, {} total{}]",
                usage.usage.input_tokens,
                usage.usage.output_tokens,
                usage.usage.total_tokens,
                if usage.model.is_empty() {
                    String::new()
                } else {
                    format!(", {}", exo_models::short_model_name(&usage.model))
                }
            )),
            StreamEvent::Error(error) => self.line(&format!(
                "error{}: {}",
                if error.error_type.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", error.error_type)
                },
                error.error
            )),
            StreamEvent::Status(status) => {
                if status.status.is_terminal() {
                    self.line(&format!("● {}: {}", status.status.as_str(), status.message));
                } else if !status.message.is_empty() {
                    self.line(&format!(
                        "  [{}] {}",
                        status.status.as_str(),
                        status.message
                    ));
                }
            }
            StreamEvent::McpProgress(progress) => self.line(&format!(
                "  [{}: {}{}] {}",
                progress.tool_name,
                progress.progress,
                progress
                    .total
                    .map(|total| format!("/{total}"))
                    .unwrap_or_default(),
                progress.message
            )),
            StreamEvent::Context(context) => self.line(&format!(
                "  [context {}: {} → {} messages]",
                context.action, context.before_count, context.after_count
            )),
        }
    }

    pub(crate) fn finish(&mut self) {
        if self.mid_line {
            output::line(format_args!(""));
            self.mid_line = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        let cases = [
            (0.0, "-"),
            (1_771_324_215.0, "2026-02-17 10:30:15 UTC"),
            (951_782_400.0, "2000-02-29 00:00:00 UTC"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(utc(seconds), expected);
        }
        let cases = [
            (0.85, "850 ms"),
            (4.24, "4.2 s"),
            (185.0, "3 m 05 s"),
            (7260.0, "2 h 01 m"),
            (-1.0, "-"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(duration(seconds), expected);
        }
    }
}
