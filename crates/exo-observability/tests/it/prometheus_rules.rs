//! `deploy/prometheus/exo-alerts.yml` says what `exo alerts check` says.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{record_one_of_everything, render_with, samples};
use exo_observability::{AlertRule, default_rules};
use serde::Deserialize;

const RULES_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/prometheus/exo-alerts.yml"
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    rules: Vec<PromRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn load() -> Vec<PromRule> {
    let text = std::fs::read_to_string(RULES_FILE)
        .unwrap_or_else(|error| panic!("cannot read {RULES_FILE}: {error}"));
    let file: RuleFile = serde_norway::from_str(&text)
        .unwrap_or_else(|error| panic!("{RULES_FILE} is not a rules file: {error}"));
    assert_eq!(file.groups.len(), 1);
    assert_eq!(file.groups[0].name, "exo");
    file.groups
        .into_iter()
        .flat_map(|group| group.rules)
        .collect()
}

/// Every series name exo renders, with the `_bucket`/`_sum`/`_count`
/// series of histograms.
fn rendered_names() -> BTreeSet<String> {
    let (_, text) = render_with(record_one_of_everything);
    samples(&text)
        .into_iter()
        .map(|sample| sample.name)
        .collect()
}

/// The metric names an expression mentions: every `exo_...` identifier.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("exo_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The number the expression compares with, after the rule's operator.
fn threshold(expr: &str, rule: &AlertRule) -> f64 {
    let expr = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let operator = format!(" {} ", rule.comparison.symbol());
    let positions: Vec<usize> = expr.match_indices(&operator).map(|(at, _)| at).collect();
    assert_eq!(positions.len(), 1, "`{operator}` once in {expr}");
    let number = expr[positions[0] + operator.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    number
        .parse()
        .unwrap_or_else(|_| panic!("`{number}` after `{operator}` in {expr} is not a number"))
}

fn check(prometheus: &PromRule, rule: &AlertRule, rendered: &BTreeSet<String>) {
    let name = &prometheus.alert;
    assert_eq!(
        prometheus.labels.get("severity").map(String::as_str),
        Some(rule.severity.as_str()),
        "{name}: severity"
    );
    assert_eq!(
        threshold(&prometheus.expr, rule),
        rule.threshold,
        "{name}: threshold"
    );
    let metrics = referenced_metrics(&prometheus.expr);
    assert!(!metrics.is_empty(), "{name} names no exo metric");
    for metric in metrics {
        assert!(
            rendered.contains(&metric),
            "{name} uses `{metric}`, which exo does not export; exported: {rendered:#?}"
        );
    }
    assert!(
        prometheus.alert.starts_with("Exo"),
        "{name}: alert names start with Exo"
    );
    assert!(
        prometheus.for_duration.is_some(),
        "{name}: a `for` duration"
    );
    for annotation in ["summary", "description"] {
        assert!(
            prometheus.annotations.contains_key(annotation),
            "{name}: {annotation}"
        );
    }
}

#[test]
fn prometheus_rules_match_the_default_rules() {
    let prometheus_rules = load();
    let rendered = rendered_names();
    let defaults = default_rules();
    assert_eq!(
        prometheus_rules.len(),
        defaults.len(),
        "one Prometheus rule per default rule"
    );
    for rule in &defaults {
        let matching: Vec<&PromRule> = prometheus_rules
            .iter()
            .filter(|prometheus| prometheus.labels.get("exo_rule") == Some(&rule.name))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one rule labelled exo_rule={}",
            rule.name
        );
        check(matching[0], rule, &rendered);
    }
}

#[test]
fn the_checker_itself_catches_drift() {
    let rendered = rendered_names();
    let rule = &default_rules()[0];
    let drifted = |expr: &str, severity: &str| PromRule {
        alert: "ExoDrifted".into(),
        expr: expr.into(),
        for_duration: Some("1m".into()),
        labels: BTreeMap::from([("severity".into(), severity.into())]),
        annotations: BTreeMap::from([
            ("summary".into(), "s".into()),
            ("description".into(), "d".into()),
        ]),
    };
    let cases = [
        ("exo_distributed_queue_depth > 150", "warning", "threshold"),
        ("exo_distributed_queue_depth > 100", "critical", "severity"),
        (
            "exo_distributed_queue_length > 100",
            "warning",
            "does not export",
        ),
    ];
    for (expr, severity, complaint) in cases {
        let prometheus = drifted(expr, severity);
        let panic =
            std::panic::catch_unwind(|| check(&prometheus, rule, &rendered)).expect_err(expr);
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_default();
        assert!(message.contains(complaint), "{expr}: {message}");
    }
}
