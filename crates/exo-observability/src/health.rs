//! The verdict of `exo worker health <id>`: healthy, degraded or unhealthy,
//! with the heartbeat's age, a message and an exit status.
//!
//! The rules themselves live with the heartbeat hash in `exo-proto`
//! ([`WorkerHealth::check`]); this module turns a possibly missing heartbeat
//! into a report and the report into text, JSON and an exit status.

use exo_proto::{Health, HealthReport, WorkerHealth};
use serde_json::{Value, json};

/// The health of `worker_id`, given its heartbeat hash (`None` when the hash
/// is gone) and the current time in Unix seconds.
pub fn worker_health(worker_id: &str, heartbeat: Option<&WorkerHealth>, now: f64) -> HealthReport {
    match heartbeat {
        Some(heartbeat) => heartbeat.check(now),
        None => WorkerHealth::missing(worker_id),
    }
}

/// The exit status for a verdict: 0 healthy, 1 degraded, 2 unhealthy.
pub fn health_exit_code(health: Health) -> u8 {
    match health {
        Health::Healthy => 0,
        Health::Degraded => 1,
        Health::Unhealthy => 2,
    }
}

/// One line for a terminal, e.g.
/// `worker web01-1: healthy (heartbeat 3.2s ago): last heartbeat 3.2s ago`.
pub fn format_health(worker_id: &str, report: &HealthReport) -> String {
    let age = match report.heartbeat_age {
        Some(age) => format!("heartbeat {age:.1}s ago"),
        None => "no heartbeat".to_owned(),
    };
    format!(
        "worker {worker_id}: {} ({age}): {}",
        report.health.as_str(),
        report.message
    )
}

/// The report as JSON for `--json`: `worker_id`, `status`, `heartbeat_age`
/// (seconds or null), `message` and `exit_code`.
pub fn health_json(worker_id: &str, report: &HealthReport) -> Value {
    json!({
        "worker_id": worker_id,
        "status": report.health.as_str(),
        "heartbeat_age": report.heartbeat_age,
        "message": report.message,
        "exit_code": health_exit_code(report.health),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn heartbeat(age: f64, status: &str) -> WorkerHealth {
        WorkerHealth::from_hash(
            "web01-1",
            [
                ("status", status.to_owned()),
                ("last_heartbeat", (NOW - age).to_string()),
                ("heartbeat_ttl", "30".to_owned()),
            ],
        )
        .expect("a valid heartbeat hash")
    }

    fn check(heartbeat: Option<WorkerHealth>, health: Health, exit: u8, line_contains: &str) {
        let report = worker_health("web01-1", heartbeat.as_ref(), NOW);
        assert_eq!(report.health, health, "{report:?}");
        assert_eq!(health_exit_code(report.health), exit);
        let line = format_health("web01-1", &report);
        assert!(
            line.contains(line_contains),
            "{line:?} lacks {line_contains:?}"
        );
        let json = health_json("web01-1", &report);
        assert_eq!(json["status"], health.as_str());
        assert_eq!(json["exit_code"], exit);
    }

    #[test]
    fn verdicts_and_exit_codes() {
        check(
            Some(heartbeat(3.0, "running")),
            Health::Healthy,
            0,
            "healthy (heartbeat 3.0s ago)",
        );
        check(Some(heartbeat(25.0, "running")), Health::Degraded, 1, "80%");
        check(
            Some(heartbeat(2.0, "draining")),
            Health::Degraded,
            1,
            "draining",
        );
        check(
            Some(heartbeat(61.0, "running")),
            Health::Unhealthy,
            2,
            "dead after 60s",
        );
        check(None, Health::Unhealthy, 2, "unhealthy (no heartbeat)");
    }

    #[test]
    fn missing_heartbeat_has_null_age_in_json() {
        let report = worker_health("gone", None, NOW);
        assert_eq!(health_json("gone", &report)["heartbeat_age"], Value::Null);
    }
}
