//! The recording functions, rendered by a local Prometheus registry.

use std::{collections::BTreeSet, time::Duration};

use crate::common::{record_one_of_everything, render_with, samples, value};
use exo_observability::{QueueSample, TaskLabels, record};
use exo_proto::TaskStatus;

const QUEUE: &str = "exo:tasks";
const WORKER: &str = "web01-1234-a1b2c3d4";

fn labels() -> TaskLabels<'static> {
    TaskLabels::new(QUEUE, WORKER)
}

/// Records `completed` completions and `failed` failures and checks the
/// counters and the duration and wait-time histograms.
fn check_task_counts(completed: u64, failed: u64) {
    let (_, text) = render_with(|| {
        for index in 0..completed {
            record::task_started(labels(), 1000.0, 1000.0 + index as f64);
            record::task_finished(labels(), TaskStatus::Completed, Duration::from_secs(2));
        }
        for _ in 0..failed {
            record::task_started(labels(), 1000.0, 1030.0);
            record::task_finished(labels(), TaskStatus::Failed, Duration::from_millis(300));
        }
    });
    let task = [("queue", QUEUE), ("worker_id", WORKER)];
    let count = |name: &str, status: &str| {
        value(
            &text,
            name,
            &[("queue", QUEUE), ("worker_id", WORKER), ("status", status)],
        )
    };
    if completed > 0 {
        assert_eq!(
            value(&text, "exo_distributed_tasks_completed_total", &task),
            completed as f64
        );
        assert_eq!(
            count("exo_distributed_task_duration_seconds_count", "completed"),
            completed as f64
        );
        assert_eq!(
            count("exo_distributed_task_duration_seconds_sum", "completed"),
            2.0 * completed as f64
        );
    }
    if failed > 0 {
        assert_eq!(
            value(&text, "exo_distributed_tasks_failed_total", &task),
            failed as f64
        );
        assert_eq!(
            count("exo_distributed_task_duration_seconds_count", "failed"),
            failed as f64
        );
        // 0.3 s falls in the 0.5 s bucket, not in the 0.25 s one.
        let bucket = |le: &str| {
            value(
                &text,
                "exo_distributed_task_duration_seconds_bucket",
                &[("status", "failed"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.25"), 0.0);
        assert_eq!(bucket("0.5"), failed as f64);
        assert_eq!(bucket("+Inf"), failed as f64);
    }
    if completed + failed > 0 {
        assert_eq!(
            value(&text, "exo_distributed_task_wait_time_seconds_count", &task),
            (completed + failed) as f64
        );
    }
    assert!(
        text.contains("# TYPE exo_distributed_task_duration_seconds histogram"),
        "{text}"
    );
}

#[test]
fn counters_and_histograms_count_every_task() {
    check_task_counts(1, 0);
    check_task_counts(0, 1);
    check_task_counts(7, 3);
    check_task_counts(250, 25);
}

#[test]
fn every_ending_counts_where_it_belongs() {
    let (_, text) = render_with(|| {
        for status in TaskStatus::ALL {
            record::task_finished(labels(), status, Duration::from_secs(1));
        }
    });
    for name in [
        "exo_distributed_tasks_completed_total",
        "exo_distributed_tasks_failed_total",
        "exo_distributed_tasks_cancelled_total",
        "exo_distributed_tasks_retried_total",
    ] {
        assert_eq!(value(&text, name, &[("worker_id", WORKER)]), 1.0, "{name}");
    }
    let statuses: BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|sample| sample.name == "exo_distributed_task_duration_seconds_count")
        .map(|sample| sample.labels["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["cancelled", "completed", "failed", "retrying"].map(String::from)),
        "pending and running are not endings"
    );
}

#[test]
fn wait_time_ignores_unknown_submission_times_and_clock_skew() {
    let (_, text) = render_with(|| {
        record::task_started(labels(), 0.0, 1_800_000_000.0);
        record::task_started(labels(), f64::NAN, 1_800_000_000.0);
        record::task_started(labels(), 1_800_000_010.0, 1_800_000_000.0);
    });
    let task = [("queue", QUEUE), ("worker_id", WORKER)];
    assert_eq!(
        value(&text, "exo_distributed_task_wait_time_seconds_count", &task),
        1.0
    );
    assert_eq!(
        value(&text, "exo_distributed_task_wait_time_seconds_sum", &task),
        0.0
    );
}

#[test]
fn queue_gauges_follow_the_measurements_down_to_zero() {
    // One registry, rendered after each measurement.
    let render_each = |samples: &[QueueSample]| {
        let recorder = exo_observability::MetricsRecorder::new();
        let handle = recorder.handle();
        let mut renders = Vec::new();
        metrics::with_local_recorder(&recorder, || {
            for sample in samples {
                record::queue_measured(QUEUE, sample);
                renders.push(handle.render());
            }
        });
        renders
    };
    let measurements = [
        QueueSample {
            depth: 7,
            lag: Some(5),
            pending: 3,
            delayed: 2,
            dead_letter: 1,
        },
        QueueSample {
            depth: 2,
            lag: None,
            pending: 1,
            delayed: 0,
            dead_letter: 1,
        },
        QueueSample::default(),
    ];
    let renders = render_each(&measurements);
    let queue = [("queue", QUEUE)];
    let expected = [
        // depth, lag, pending, delayed, dead letter
        [7.0, 5.0, 3.0, 2.0, 1.0],
        [2.0, 5.0, 1.0, 0.0, 1.0],
        [0.0, 5.0, 0.0, 0.0, 0.0],
    ];
    for (text, expected) in renders.iter().zip(expected) {
        let read = [
            "exo_distributed_queue_depth",
            "exo_distributed_queue_lag",
            "exo_distributed_queue_pending",
            "exo_distributed_queue_delayed",
            "exo_distributed_queue_dead_letter",
        ]
        .map(|name| value(text, name, &queue));
        assert_eq!(read, expected, "{text}");
    }
}

#[test]
fn fleet_reclaims_and_events() {
    let (_, text) = render_with(|| {
        record::workers_alive(3);
        record::workers_alive(0);
        record::tasks_reclaimed(labels(), 2);
        record::tasks_reclaimed(labels(), 0);
        record::tasks_reclaimed(labels(), 1);
        record::task_submitted(QUEUE);
        record::task_submitted(QUEUE);
        for _ in 0..5 {
            record::event_emitted("text");
            record::events_published(Duration::from_micros(700));
        }
        record::event_emitted("status");
        record::events_published(Duration::from_millis(30));
    });
    assert_eq!(value(&text, "exo_distributed_workers_alive", &[]), 0.0);
    assert_eq!(
        value(
            &text,
            "exo_distributed_tasks_reclaimed_total",
            &[("worker_id", WORKER)]
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "exo_distributed_tasks_submitted_total",
            &[("queue", QUEUE)]
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "exo_stream_events_emitted_total",
            &[("event_type", "text")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            "exo_stream_events_emitted_total",
            &[("event_type", "status")]
        ),
        1.0
    );
    let publish_bucket = |le: &str| {
        value(
            &text,
            "exo_stream_event_publish_duration_seconds_bucket",
            &[("le", le)],
        )
    };
    assert_eq!(publish_bucket("0.0005"), 0.0);
    assert_eq!(publish_bucket("0.001"), 5.0);
}

#[test]
fn help_lines_carry_the_descriptions() {
    let (_, text) = render_with(record_one_of_everything);
    for spec in record::METRICS {
        assert!(
            text.contains(spec.description),
            "no HELP for {} in:\n{text}",
            spec.name
        );
    }
}

/// The rendered name of every metric, which the Prometheus rules are
/// written against.
#[test]
fn rendered_names_are_the_prometheus_conventions() {
    let (_, text) = render_with(record_one_of_everything);
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(str::to_owned)
        .collect();
    let expected = [
        "exo_distributed_queue_dead_letter gauge",
        "exo_distributed_queue_delayed gauge",
        "exo_distributed_queue_depth gauge",
        "exo_distributed_queue_lag gauge",
        "exo_distributed_queue_pending gauge",
        "exo_distributed_task_duration_seconds histogram",
        "exo_distributed_task_wait_time_seconds histogram",
        "exo_distributed_tasks_cancelled_total counter",
        "exo_distributed_tasks_completed_total counter",
        "exo_distributed_tasks_failed_total counter",
        "exo_distributed_tasks_handed_back_total counter",
        "exo_distributed_tasks_reclaimed_total counter",
        "exo_distributed_tasks_retried_total counter",
        "exo_distributed_tasks_submitted_total counter",
        "exo_distributed_worker_loop_errors_total counter",
        "exo_distributed_workers_alive gauge",
        "exo_model_calls_admitted_total counter",
        "exo_model_calls_waited_total counter",
        "exo_model_cost_micro_usd_total counter",
        "exo_model_tokens_total counter",
        "exo_redis_round_trips_total counter",
        "exo_stream_event_publish_duration_seconds histogram",
        "exo_stream_events_emitted_total counter",
    ];
    assert_eq!(
        families,
        BTreeSet::from(expected.map(String::from)),
        "{text}"
    );
    assert_eq!(families.len(), record::METRICS.len());
}

/// A task id on a metric gives every task its own series. No recording
/// function takes one, and nothing that is recorded carries one.
#[test]
fn no_metric_carries_a_task_id() {
    let allowed = BTreeSet::from([
        "queue",
        "worker_id",
        "status",
        "event_type",
        "le",
        "loop",
        "rule",
        "reason",
        "model",
        "kind",
    ]);
    let (_, text) = render_with(record_one_of_everything);
    for sample in samples(&text) {
        for (key, value) in &sample.labels {
            assert!(
                allowed.contains(key.as_str()),
                "label `{key}` on {}",
                sample.name
            );
            let looks_like_task_id =
                value.len() == 32 && value.chars().all(|c| c.is_ascii_hexdigit());
            assert!(!looks_like_task_id, "task id `{value}` on {}", sample.name);
        }
    }
    for spec in record::METRICS {
        for label in spec.labels {
            assert!(
                allowed.contains(label),
                "{} declares label `{label}`",
                spec.name
            );
        }
    }
    // The recording module never names a task id: no parameter, no label.
    let source = include_str!("../../src/record.rs");
    for forbidden in ["task_id", "\"task\"", "taskid"] {
        assert!(
            !source.to_lowercase().contains(forbidden),
            "src/record.rs mentions `{forbidden}`"
        );
    }
}

#[test]
fn with_no_recorder_recording_is_a_no_op() {
    // No global recorder is installed in this test binary.
    record_one_of_everything();
}
