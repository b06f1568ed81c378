//! The guide's alert rules as data, and their evaluation over a snapshot of
//! the system.
//!
//! The five default rules are the reference's: queue depth above 100
//! (warning) and above 500 (critical), task failure rate above 10%
//! (warning), no live workers (critical), and task wait time above 60 s
//! (warning). Thresholds can be overridden with `name=value` strings, e.g.
//! `queue_depth_high=200`, `task_failure_rate_high=25%` or
//! `task_wait_time_high=120s`.
//!
//! The caller fills an [`AlertSnapshot`] (the CLI reads it from Redis
//! through the broker), [`evaluate`] returns the alerts that fire, and
//! [`alerts_exit_code`] turns them into the exit status of
//! `exo alerts check`: **0** when nothing fires, **1** when only warnings
//! fire, **2** when any critical alert fires. Cron jobs and Kubernetes
//! probes can act on that status directly.
//!
//! The same rules, against the exported metrics, are in
//! `deploy/prometheus/exo-alerts.yml`; a test keeps the two in step.

use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};

/// How bad a firing alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// `warning` or `critical`, as in the Prometheus rules' `severity` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        })
    }
}

/// The measurement a rule looks at; each is a field of [`AlertSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Tasks waiting to start.
    QueueDepth,
    /// Failed tasks over finished tasks, from 0 to 1.
    FailureRate,
    /// Workers with a recent heartbeat.
    WorkersAlive,
    /// Seconds the oldest waiting task has waited.
    WaitTime,
}

impl AlertMetric {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::QueueDepth => "queue_depth",
            AlertMetric::FailureRate => "failure_rate",
            AlertMetric::WorkersAlive => "workers_alive",
            AlertMetric::WaitTime => "wait_time",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            AlertMetric::QueueDepth => "queue depth",
            AlertMetric::FailureRate => "task failure rate",
            AlertMetric::WorkersAlive => "live workers",
            AlertMetric::WaitTime => "task wait time",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            AlertMetric::QueueDepth | AlertMetric::WorkersAlive => format!("{value:.0}"),
            AlertMetric::FailureRate => format!("{:.1}%", value * 100.0),
            AlertMetric::WaitTime => format!("{value:.1}s"),
        }
    }
}

/// How a measurement is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Fires when the value is above the threshold.
    GreaterThan,
    /// Fires when the value is below the threshold.
    LessThan,
    /// Fires when the value equals the threshold.
    Equal,
}

impl Comparison {
    /// The operator as PromQL writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::GreaterThan => ">",
            Comparison::LessThan => "<",
            Comparison::Equal => "==",
        }
    }

    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThan => value > threshold,
            Comparison::LessThan => value < threshold,
            Comparison::Equal => value == threshold,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Comparison::GreaterThan => "above",
            Comparison::LessThan => "below",
            Comparison::Equal => "at",
        }
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRule {
    /// The snake_case identifier used for overrides, e.g. `queue_depth_high`.
    pub name: String,
    /// What the rule means, in one sentence.
    pub description: String,
    /// The measurement it looks at.
    pub metric: AlertMetric,
    /// How the measurement is compared.
    pub comparison: Comparison,
    /// The threshold; a fraction from 0 to 1 for the failure rate, seconds
    /// for the wait time.
    pub threshold: f64,
    /// How bad it is when it fires.
    pub severity: Severity,
}

impl AlertRule {
    fn new(
        name: &str,
        description: &str,
        metric: AlertMetric,
        comparison: Comparison,
        threshold: f64,
        severity: Severity,
    ) -> Self {
        AlertRule {
            name: name.to_owned(),
            description: description.to_owned(),
            metric,
            comparison,
            threshold,
            severity,
        }
    }
}

/// The guide's five rules with their default thresholds.
pub fn default_rules() -> Vec<AlertRule> {
    use AlertMetric::*;
    use Comparison::*;
    use Severity::*;
    vec![
        AlertRule::new(
            "queue_depth_high",
            "More tasks are waiting than the workers are keeping up with.",
            QueueDepth,
            GreaterThan,
            100.0,
            Warning,
        ),
        AlertRule::new(
            "queue_depth_critical",
            "The queue is far behind; add workers.",
            QueueDepth,
            GreaterThan,
            500.0,
            Critical,
        ),
        AlertRule::new(
            "task_failure_rate_high",
            "Too many tasks fail.",
            FailureRate,
            GreaterThan,
            0.10,
            Warning,
        ),
        AlertRule::new(
            "worker_count_zero",
            "No worker is alive; nothing will run.",
            WorkersAlive,
            Equal,
            0.0,
            Critical,
        ),
        AlertRule::new(
            "task_wait_time_high",
            "Tasks wait too long before they start; add capacity.",
            WaitTime,
            GreaterThan,
            60.0,
            Warning,
        ),
    ]
}

/// Applies threshold overrides of the form `name=value` to `rules`.
///
/// The value is a number; a failure-rate rule also takes a percentage
/// (`25%`) and a wait-time rule a number of seconds with an `s` suffix
/// (`120s`). Each override must name an existing rule.
///
/// Either every override applies or, on the first bad one, none does.
pub fn apply_overrides<S: AsRef<str>>(rules: &mut [AlertRule], overrides: &[S]) -> Result<()> {
    let mut updated = rules.to_vec();
    for input in overrides {
        let input = input.as_ref();
        let invalid = |reason: String| Error::InvalidThreshold {
            input: input.to_owned(),
            reason,
        };
        let (name, value) = input
            .split_once('=')
            .ok_or_else(|| invalid("expected `name=value`".to_owned()))?;
        let name = name.trim();
        let names: Vec<&str> = updated.iter().map(|rule| rule.name.as_str()).collect();
        let known = names.join(", ");
        let rule = updated
            .iter_mut()
            .find(|rule| rule.name == name)
            .ok_or_else(|| invalid(format!("no rule named `{name}`; the rules are {known}")))?;
        rule.threshold = parse_threshold(rule.metric, value.trim()).map_err(invalid)?;
    }
    rules.clone_from_slice(&updated);
    Ok(())
}

fn parse_threshold(metric: AlertMetric, text: &str) -> Result<f64, String> {
    let (number, scale) = match metric {
        AlertMetric::FailureRate => match text.strip_suffix('%') {
            Some(percent) => (percent, 0.01),
            None => (text, 1.0),
        },
        AlertMetric::WaitTime => (text.strip_suffix('s').unwrap_or(text), 1.0),
        AlertMetric::QueueDepth | AlertMetric::WorkersAlive => (text, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    let value = value * scale;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{text}` must be a finite, non-negative number"));
    }
    if metric == AlertMetric::FailureRate && value > 1.0 {
        return Err(format!(
            "`{text}` is above 100%; write a fraction (0.25) or a percentage (25%)"
        ));
    }
    Ok(value)
}

/// What the system looks like now; the input of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct AlertSnapshot {
    /// Tasks waiting to start (`QueueStats::depth` in the broker).
    pub queue_depth: u64,
    /// Workers with a recent heartbeat.
    pub workers_alive: u64,
    /// Failed over finished tasks, from 0 to 1; `None` when nothing has
    /// finished yet (see [`failure_rate`]).
    pub failure_rate: Option<f64>,
    /// Seconds since the oldest still-waiting task was submitted; `None`
    /// when nothing waits.
    pub oldest_wait_seconds: Option<f64>,
}

impl AlertSnapshot {
    fn value(&self, metric: AlertMetric) -> Option<f64> {
        match metric {
            AlertMetric::QueueDepth => Some(self.queue_depth as f64),
            AlertMetric::WorkersAlive => Some(self.workers_alive as f64),
            AlertMetric::FailureRate => self.failure_rate,
            AlertMetric::WaitTime => self.oldest_wait_seconds,
        }
        .filter(|value| value.is_finite())
    }
}

/// The failure rate from task counts: `failed / (completed + failed)`, or
/// `None` when no task has finished.
pub fn failure_rate(completed: u64, failed: u64) -> Option<f64> {
    let finished = completed.saturating_add(failed);
    (finished > 0).then(|| failed as f64 / finished as f64)
}

/// A rule that fires, with the value that made it fire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiringAlert {
    /// The rule's name.
    pub rule: String,
    /// The rule's severity.
    pub severity: Severity,
    /// The measurement.
    pub metric: AlertMetric,
    /// The measured value.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// One line for a human, e.g.
    /// `CRITICAL queue_depth_critical: queue depth is 600, above 500`.
    pub message: String,
}

/// The alerts that fire for `snapshot`, critical ones first, each group in
/// rule order. A rule whose measurement is unknown (`None`) does not fire.
pub fn evaluate(rules: &[AlertRule], snapshot: &AlertSnapshot) -> Vec<FiringAlert> {
    let mut firing: Vec<FiringAlert> = rules
        .iter()
        .filter_map(|rule| {
            let value = snapshot.value(rule.metric)?;
            rule.comparison
                .holds(value, rule.threshold)
                .then(|| FiringAlert {
                    rule: rule.name.clone(),
                    severity: rule.severity,
                    metric: rule.metric,
                    value,
                    threshold: rule.threshold,
                    message: format!(
                        "{} {}: {} is {}, {} {}",
                        rule.severity,
                        rule.name,
                        rule.metric.describe(),
                        rule.metric.format(value),
                        rule.comparison.words(),
                        rule.metric.format(rule.threshold),
                    ),
                })
        })
        .collect();
    firing.sort_by_key(|alert| std::cmp::Reverse(alert.severity));
    firing
}

/// The exit status for a set of firing alerts: 0 when none fire, 1 when
/// only warnings fire, 2 when any critical alert fires.
pub fn alerts_exit_code(firing: &[FiringAlert]) -> u8 {
    match firing.iter().map(|alert| alert.severity).max() {
        None => 0,
        Some(Severity::Warning) => 1,
        Some(Severity::Critical) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: AlertSnapshot = AlertSnapshot {
        queue_depth: 3,
        workers_alive: 2,
        failure_rate: Some(0.01),
        oldest_wait_seconds: Some(1.5),
    };

    fn check(snapshot: AlertSnapshot, expected: &[&str], exit: u8) {
        check_with(&default_rules(), snapshot, expected, exit);
    }

    fn check_with(rules: &[AlertRule], snapshot: AlertSnapshot, expected: &[&str], exit: u8) {
        let firing = evaluate(rules, &snapshot);
        let names: Vec<&str> = firing.iter().map(|alert| alert.rule.as_str()).collect();
        assert_eq!(names, expected, "for {snapshot:?}: {firing:#?}");
        assert_eq!(alerts_exit_code(&firing), exit, "for {snapshot:?}");
    }

    #[test]
    fn default_rules_fire_as_the_guide_says() {
        check(HEALTHY, &[], 0);
        check(
            AlertSnapshot {
                workers_alive: 0,
                ..HEALTHY
            },
            &["worker_count_zero"],
            2,
        );
        check(
            AlertSnapshot {
                queue_depth: 600,
                ..HEALTHY
            },
            &["queue_depth_critical", "queue_depth_high"],
            2,
        );
        check(
            AlertSnapshot {
                queue_depth: 150,
                ..HEALTHY
            },
            &["queue_depth_high"],
            1,
        );
        check(
            AlertSnapshot {
                queue_depth: 100,
                ..HEALTHY
            },
            &[],
            0,
        );
        check(
            AlertSnapshot {
                failure_rate: Some(0.2),
                ..HEALTHY
            },
            &["task_failure_rate_high"],
            1,
        );
        check(
            AlertSnapshot {
                oldest_wait_seconds: Some(61.0),
                ..HEALTHY
            },
            &["task_wait_time_high"],
            1,
        );
        check(
            AlertSnapshot {
                failure_rate: None,
                oldest_wait_seconds: None,
                ..HEALTHY
            },
            &[],
            0,
        );
        check(
            AlertSnapshot {
                queue_depth: 501,
                workers_alive: 0,
                failure_rate: Some(1.0),
                oldest_wait_seconds: Some(3600.0),
            },
            &[
                "queue_depth_critical",
                "worker_count_zero",
                "queue_depth_high",
                "task_failure_rate_high",
                "task_wait_time_high",
            ],
            2,
        );
    }

    #[test]
    fn messages_say_what_and_how_much() {
        let firing = evaluate(
            &default_rules(),
            &AlertSnapshot {
                queue_depth: 600,
                failure_rate: Some(0.2),
                oldest_wait_seconds: Some(61.0),
                workers_alive: 0,
            },
        );
        let messages: Vec<&str> = firing.iter().map(|alert| alert.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "CRITICAL queue_depth_critical: queue depth is 600, above 500",
                "CRITICAL worker_count_zero: live workers is 0, at 0",
                "WARNING queue_depth_high: queue depth is 600, above 100",
                "WARNING task_failure_rate_high: task failure rate is 20.0%, above 10.0%",
                "WARNING task_wait_time_high: task wait time is 61.0s, above 60.0s",
            ]
        );
    }

    #[test]
    fn overrides_change_thresholds() {
        let mut rules = default_rules();
        apply_overrides(
            &mut rules,
            &[
                "queue_depth_high=200",
                " task_failure_rate_high = 25% ",
                "task_wait_time_high=120s",
                "queue_depth_critical=1000",
            ],
        )
        .expect("valid overrides");
        let snapshot = AlertSnapshot {
            queue_depth: 150,
            failure_rate: Some(0.2),
            oldest_wait_seconds: Some(90.0),
            ..HEALTHY
        };
        check_with(&rules, snapshot, &[], 0);
        check_with(
            &rules,
            AlertSnapshot {
                queue_depth: 201,
                failure_rate: Some(0.26),
                ..snapshot
            },
            &["queue_depth_high", "task_failure_rate_high"],
            1,
        );
        let rate = rules
            .iter()
            .find(|rule| rule.name == "task_failure_rate_high");
        assert_eq!(rate.map(|rule| rule.threshold), Some(0.25));
    }

    #[test]
    fn bad_overrides_are_rejected_with_the_reason() {
        let cases = [
            ("queue_depth_high", "expected `name=value`"),
            (
                "no_such_rule=3",
                "no rule named `no_such_rule`; the rules are queue_depth_high",
            ),
            ("queue_depth_high=lots", "`lots` is not a number"),
            ("queue_depth_high=-1", "non-negative"),
            ("task_failure_rate_high=150%", "above 100%"),
            ("task_wait_time_high=NaN", "finite"),
        ];
        for (input, reason) in cases {
            let mut rules = default_rules();
            let error =
                apply_overrides(&mut rules, &["queue_depth_critical=900", input]).expect_err(input);
            let text = error.to_string();
            assert!(text.contains(reason), "{input}: {text}");
            assert_eq!(rules, default_rules(), "{input} changed the rules");
        }
    }

    #[test]
    fn failure_rate_from_counts() {
        assert_eq!(failure_rate(0, 0), None);
        assert_eq!(failure_rate(9, 1), Some(0.1));
        assert_eq!(failure_rate(0, 4), Some(1.0));
    }

    #[test]
    fn firing_alerts_serialize_for_json_output() {
        let firing = evaluate(
            &default_rules(),
            &AlertSnapshot {
                workers_alive: 0,
                ..HEALTHY
            },
        );
        let json = serde_json::to_value(&firing).expect("serializable");
        assert_eq!(json[0]["rule"], "worker_count_zero");
        assert_eq!(json[0]["severity"], "critical");
        assert_eq!(json[0]["metric"], "workers_alive");
    }
}
