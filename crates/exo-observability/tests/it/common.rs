//! Helpers shared by the test binaries.

use std::{collections::BTreeMap, time::Duration};

use exo_observability::{MetricsHandle, MetricsRecorder, QueueSample, TaskLabels, record};

/// Runs `body` with a fresh registry as the thread's recorder and returns
/// the rendered text.
pub(crate) fn render_with(body: impl FnOnce()) -> (MetricsHandle, String) {
    let recorder = MetricsRecorder::new();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, body);
    let text = handle.render();
    (handle, text)
}

/// Calls every recording function once, with realistic arguments.
pub(crate) fn record_one_of_everything() {
    let labels = TaskLabels::new("exo:tasks", "web01-1234-a1b2c3d4");
    record::task_submitted("exo:tasks");
    record::redis_round_trips("web01-1234-a1b2c3d4", "exo:tasks", 42);
    record::task_started(labels, 1_800_000_000.0, 1_800_000_002.5);
    for status in exo_proto::TaskStatus::ALL {
        record::task_finished(labels, status, Duration::from_millis(1200));
    }
    record::tasks_reclaimed(labels, 2);
    record::tasks_handed_back(labels, 3);
    record::queue_measured(
        "exo:tasks",
        &QueueSample {
            depth: 4,
            lag: Some(3),
            pending: 1,
            delayed: 1,
            dead_letter: 0,
        },
    );
    record::workers_alive(2);
    record::event_emitted("text");
    record::events_published(Duration::from_micros(800));
    record::loop_error("web01-1234-a1b2c3d4", "reaper");
    record::model_call_admitted("openai:gpt-4o-mini");
    record::model_call_waited("openai:gpt-4o-mini", "tokens");
    record::model_usage("openai:gpt-4o-mini", 100, 20, 27);
}

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses the sample lines (not `#` lines) of the Prometheus text format.
pub(crate) fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    (name.to_owned(), parse_labels(body))
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label key");
        let end = after.find('"').expect("closing quote");
        labels.insert(key.to_owned(), after[..end].to_owned());
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The value of the one sample named `name` whose labels include `labels`.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<Sample> = samples(text)
        .into_iter()
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .collect();
    assert_eq!(found.len(), 1, "expected one {name} {labels:?} in:\n{text}");
    found[0].value
}

/// The variable that tells a re-run of this test binary which test runs in
/// it.
const OWN_PROCESS: &str = "EXO_TEST_OWN_PROCESS";

/// For tests of process-global state (the tracing subscriber, the metrics
/// recorder, the OpenTelemetry providers), which must be the first and only
/// install in their process.
///
/// Called first in the test `test` (its path, e.g. `install::name`): in the
/// test runner's process it runs this test binary again with only that test
/// and `EXO_TEST_OWN_PROCESS` set, checks the test passed there, and returns
/// false (the caller returns); in that child process it returns true (the
/// caller goes on with the test itself).
pub(crate) fn in_own_process(test: &str) -> bool {
    if std::env::var(OWN_PROCESS).as_deref() == Ok(test) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(OWN_PROCESS, test)
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} in its own process ({}):\n{stdout}\n{stderr}",
        output.status
    );
    false
}
