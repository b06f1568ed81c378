//! A mixed fleet, the way a team migrates: a worker of the Python reference
//! (which writes only its heartbeat hash) next to an `exo` worker process.
//! `exo worker list`, `exo worker health`, the workers-alive metric and the
//! "worker count zero" alert see both; and the exo worker's counters are
//! right as soon as a task ends, long before its next heartbeat.

use std::{path::Path, process::Command, time::Duration};

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::{TestProcess, TestRedis, free_port, http_get};
use serde_json::{Value, json};

const REFERENCE_ID: &str = "vm-4242-0badcafe";

/// Starts the reference-format heartbeat writer
/// (`tests/reference/heartbeat_worker.py`) and waits for its first beat.
fn reference_worker(target: &Target) -> TestProcess {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/heartbeat_worker.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args([
            &target.redis_url,
            &target.prefix,
            &target.queue,
            REFERENCE_ID,
            "0.5",
        ])
        .stdin(std::process::Stdio::null());
    let mut process = TestProcess::start("the reference worker", command);
    process.wait_for_output(
        Duration::from_secs(20),
        "its first heartbeat",
        |stdout, _| stdout.contains("ready").then_some(()),
    );
    process
}

fn fleet(target: &Target) -> Vec<Value> {
    target.json(&["worker", "list"]).as_array().unwrap().clone()
}

fn entry<'a>(fleet: &'a [Value], worker_id: &str) -> Option<&'a Value> {
    fleet.iter().find(|worker| worker["worker_id"] == worker_id)
}

fn alerts(target: &Target) -> (Vec<String>, u64) {
    let output = target
        .command()
        .args(["alerts", "check", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "alerts check: not JSON ({error}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let rules = report["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["rule"].as_str().unwrap_or_default().to_owned())
        .collect();
    (rules, report["snapshot"]["workers_alive"].as_u64().unwrap())
}

#[test]
fn reference_and_exo_workers_share_the_fleet_view_and_the_alerts() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "helper", "model": "scripted:echo"}),
    );
    let mut reference = reference_worker(&target);
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    // A long heartbeat period: what the listing shows after a task comes
    // from the final write, not from a heartbeat.
    let mut worker = target.start_worker(&[
        "--concurrency",
        "1",
        "--heartbeat-ttl",
        "300",
        "--lease",
        "600",
        "--metrics-addr",
        &address,
        "--stats-interval",
        "0.2",
    ]);

    let listed = eventually(Duration::from_secs(10), "both workers listed", || {
        let fleet = fleet(&target);
        (entry(&fleet, REFERENCE_ID).is_some() && entry(&fleet, &worker.worker_id).is_some())
            .then_some(fleet)
    });
    let python = entry(&listed, REFERENCE_ID).unwrap();
    assert_eq!(python["alive"], true, "{python}");
    assert_eq!(python["hostname"], "vm", "{python}");
    assert_eq!(python["concurrency"], 4, "{python}");
    assert_eq!(entry(&listed, &worker.worker_id).unwrap()["alive"], true);

    let health = target.run(&["worker", "health", REFERENCE_ID]);
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    eventually(
        Duration::from_secs(20),
        "the metric to count both workers",
        || {
            let (_, text) = http_get(port, "/metrics").ok()?;
            text.lines()
                .any(|line| {
                    line.starts_with("exo_distributed_workers_alive") && line.ends_with(" 2")
                })
                .then_some(())
        },
    );
    let (firing, alive) = alerts(&target);
    assert_eq!(alive, 2);
    assert!(
        !firing.iter().any(|rule| rule == "worker_count_zero"),
        "{firing:?}"
    );

    // The exo worker's counters, right after a task ends.
    let task_id = target.submit(&agent, "hello");
    target.wait_for_status(&task_id, "completed", Duration::from_secs(20));
    let fleet_now = fleet(&target);
    let exo = entry(&fleet_now, &worker.worker_id).unwrap();
    assert_eq!(exo["tasks_processed"], 1, "{exo}");
    assert_eq!(exo["tasks_failed"], 0, "{exo}");
    assert!(
        exo["current_task_id"].is_null() || exo["current_task_id"] == "",
        "{exo}"
    );

    // The exo worker stops; the reference worker still serves: no alert.
    worker.signal("TERM");
    worker.wait(Duration::from_secs(30));
    let (firing, alive) = alerts(&target);
    assert_eq!(alive, 1);
    assert!(
        !firing.iter().any(|rule| rule == "worker_count_zero"),
        "{firing:?}"
    );

    // The reference worker stops too: now the alert fires.
    reference.terminate();
    reference.wait(Duration::from_secs(10));
    let (firing, alive) = alerts(&target);
    assert_eq!(alive, 0);
    assert!(
        firing.iter().any(|rule| rule == "worker_count_zero"),
        "{firing:?}"
    );
    let fleet_after = fleet(&target);
    assert_eq!(
        entry(&fleet_after, REFERENCE_ID).map(|python| python["alive"].clone()),
        Some(Value::Bool(false)),
        "a stopped reference worker stays listed, as dead"
    );
}

/// Colour follows `NO_COLOR` and the terminal (`CLICOLOR_FORCE` stands in
/// for a terminal here): a dead worker's row is red only when colour is on.
#[test]
fn table_colours_follow_no_color_and_the_terminal() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let mut reference = reference_worker(&target);
    eventually(
        Duration::from_secs(10),
        "the reference worker listed",
        || entry(&fleet(&target), REFERENCE_ID).map(|_| ()),
    );
    reference.terminate();
    reference.wait(Duration::from_secs(10));
    let table = |env: &[(&str, &str)]| {
        let output = target
            .command()
            .args(["worker", "list"])
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let plain = table(&[]);
    assert!(plain.contains(REFERENCE_ID), "{plain}");
    assert!(!plain.contains('\u{1b}'), "no colour in a pipe: {plain:?}");
    let forced = table(&[("CLICOLOR_FORCE", "1")]);
    assert!(
        forced.contains('\u{1b}'),
        "CLICOLOR_FORCE colours: {forced:?}"
    );
    let refused = table(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]);
    assert!(!refused.contains('\u{1b}'), "NO_COLOR wins: {refused:?}");
}
