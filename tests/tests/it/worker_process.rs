//! The `exo` binary end to end: workers as processes, tasks through the CLI,
//! signals, and a SIGKILL mid-task.

use std::time::Duration;

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::TestRedis;
use serde_json::{Value, json};

#[test]
fn submit_follow_status_list_and_sigterm() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "helper", "model": "scripted:weather", "tools": ["fixtools.tools.get_weather"]}),
    );
    let mut worker = target.start_worker(&["--concurrency", "2"]);

    let output = target.run(&[
        "task",
        "submit",
        "--agent",
        agent.to_str().unwrap(),
        "--input",
        "Weather in Paris?",
        "--detailed",
        "--follow",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    let task_id = shown.lines().next().unwrap().trim().to_owned();
    for needle in [
        "Let me check.",
        "→ get_weather({\"city\": \"Paris\"})",
        "← get_weather: sunny in Paris",
        "It is sunny in Paris.",
        "usage: 10 in, 5 out",
        "● completed",
    ] {
        assert!(shown.contains(needle), "`{needle}` missing from:\n{shown}");
    }

    let status = target.status(&task_id);
    assert_eq!(status["status"], "completed");
    assert_eq!(
        status["result"],
        json!({"output": "Let me check. It is sunny in Paris."})
    );
    assert_eq!(status["worker_id"], json!(worker.worker_id));

    // JSON events, replayed after the fact.
    let output = target
        .command()
        .args(["task", "events", &task_id, "--json"])
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 15, "the detailed fixture has 15 events");
    assert_eq!(events.last().unwrap()["event"]["status"], "completed");

    let workers = target.json(&["worker", "list"]);
    let listed: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|worker| worker["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [worker.worker_id.as_str()]);
    assert_eq!(workers[0]["alive"], true);
    let health = target.run(&["worker", "health", &worker.worker_id]);
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );

    worker.signal("TERM");
    assert!(
        worker.wait(Duration::from_secs(15)).success(),
        "{}",
        worker.stderr()
    );
    let workers = target.json(&["worker", "list"]);
    assert_eq!(workers, json!([]), "the worker is gone after SIGTERM");
    let health = target.run(&["worker", "health", &worker.worker_id]);
    assert_eq!(health.status.code(), Some(2));
}

#[test]
fn two_worker_processes_share_200_tasks_each_run_once() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "echoer", "model": "scripted:echo"}),
    );
    let first = target.start_worker(&["--concurrency", "4"]);
    let second = target.start_worker(&["--concurrency", "4"]);
    let mut ids = Vec::new();
    for index in 0..200 {
        let submitted = target.json(&[
            "task",
            "submit",
            "--agent",
            agent.to_str().unwrap(),
            "--input",
            &format!("task number {index}"),
        ]);
        ids.push(submitted["task_id"].as_str().unwrap().to_owned());
    }
    let tasks = eventually(Duration::from_secs(120), "200 completed tasks", || {
        let tasks = target.json(&["task", "list", "--status", "completed", "--limit", "500"]);
        (tasks.as_array().unwrap().len() == 200).then_some(tasks)
    });
    let mut by_worker = std::collections::BTreeMap::new();
    for task in tasks.as_array().unwrap() {
        assert_eq!(task["attempt"], 1, "a task ran more than once: {task}");
        assert_eq!(task["retries"], 0);
        *by_worker
            .entry(task["worker_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    let mut listed: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["task_id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_eq!(by_worker.values().sum::<i32>(), 200);
    assert!(
        by_worker.contains_key(&first.worker_id) && by_worker.contains_key(&second.worker_id),
        "both workers took tasks: {by_worker:?}"
    );
}

#[test]
fn a_task_of_a_sigkilled_worker_completes_on_the_other() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "slow", "model": "scripted:slow:2500"}),
    );
    let fast_failover = [
        "--concurrency",
        "1",
        "--heartbeat-ttl",
        "2",
        "--lease",
        "10",
    ];
    let victim = target.start_worker(&fast_failover);
    let task_id = target.submit(&agent, "x");
    eventually(
        Duration::from_secs(10),
        "the task to start on the victim",
        || {
            let status = target.status(&task_id);
            (status["status"] == "running" && status["worker_id"] == json!(victim.worker_id))
                .then_some(())
        },
    );
    victim.signal("KILL");
    let survivor = target.start_worker(&fast_failover);
    let status = eventually(
        Duration::from_secs(30),
        "the task to complete on the survivor",
        || {
            let status = target.status(&task_id);
            (status["status"] == "completed").then_some(status)
        },
    );
    assert_eq!(status["worker_id"], json!(survivor.worker_id));
    assert_eq!(status["retries"], 1, "the lost attempt counts as a retry");
    let output = target
        .command()
        .args(["task", "events", &task_id, "--json"])
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| {
            line["event"]["type"] == "status"
                && ["completed", "error", "cancelled"]
                    .contains(&line["event"]["status"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(terminal, 1, "exactly one terminal event");
    let workers = target.json(&["worker", "list"]);
    let victim_row = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["worker_id"] == json!(victim.worker_id));
    assert!(
        victim_row.is_none_or(|row| row["alive"] == false),
        "the killed worker is dead or gone: {workers}"
    );
}

#[test]
fn cancel_through_the_cli_stops_a_running_task() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "slow", "model": "scripted:slow:60000"}),
    );
    let _worker = target.start_worker(&[]);
    let task_id = target.submit(&agent, "x");
    target.wait_for_status(&task_id, "running", Duration::from_secs(10));
    let cancelled = target.json(&["task", "cancel", &task_id]);
    assert_eq!(cancelled["result"], "cancelling");
    let started = std::time::Instant::now();
    let output = target.run(&["task", "events", &task_id, "--follow"]);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&output.stdout).contains("● cancelled"));
    assert_eq!(target.status(&task_id)["status"], "cancelled");
}

#[test]
fn a_task_submitted_with_a_delay_starts_when_due() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "echoer", "model": "scripted:echo"}),
    );
    let _worker = target.start_worker(&["--concurrency", "1"]);
    let submitted = target.json(&[
        "task",
        "submit",
        "--agent",
        agent.to_str().unwrap(),
        "--input",
        "later",
        "--delay",
        "2",
    ]);
    let task_id = submitted["task_id"].as_str().unwrap();
    let waiting = target.status(task_id);
    assert_eq!(waiting["status"], "pending");
    let created = waiting["created_at"].as_f64().unwrap();
    let due = waiting["scheduled_for"].as_f64().unwrap();
    assert!((due - created - 2.0).abs() < 0.5, "{waiting}");
    let done = target.wait_for_status(task_id, "completed", Duration::from_secs(20));
    let started = done["started_at"].as_f64().unwrap();
    assert!(started >= due - 0.01, "started {started} before {due}");
    assert_eq!(done["scheduled_for"], Value::Null);
}

#[test]
fn each_cron_tick_runs_once_across_three_workers_one_of_them_killed() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "ticker", "model": "scripted:slow:1500"}),
    );
    let fast_failover = [
        "--concurrency",
        "2",
        "--heartbeat-ttl",
        "2",
        "--lease",
        "10",
    ];
    let mut workers: Vec<_> = (0..3)
        .map(|_| target.start_worker(&fast_failover))
        .collect();
    let added = target.json(&[
        "schedule",
        "add",
        "--name",
        "every-2s",
        "--cron",
        "*/2 * * * * *",
        "--agent",
        agent.to_str().unwrap(),
        "--input",
        "tick",
    ]);
    assert_eq!(added["name"], "every-2s");
    std::thread::sleep(Duration::from_secs(9));
    // One worker dies mid-run; the others go on firing and take over its task.
    let victim = workers.remove(0);
    victim.signal("KILL");
    std::thread::sleep(Duration::from_secs(9));
    let removed = target.json(&["schedule", "remove", "every-2s"]);
    assert_eq!(removed["removed"], true);
    assert_eq!(target.json(&["schedule", "list"]), json!([]));

    let tasks = eventually(Duration::from_secs(60), "every tick's task to end", || {
        let tasks = target.json(&["task", "list", "--limit", "100"]);
        tasks
            .as_array()
            .unwrap()
            .iter()
            .all(|task| task["status"] == "completed")
            .then_some(tasks)
    });
    let mut ticks: Vec<i64> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            let id = task["task_id"].as_str().unwrap();
            id.strip_prefix("sched.every-2s.")
                .unwrap_or_else(|| panic!("not a tick's task: {id}"))
                .parse()
                .unwrap()
        })
        .collect();
    ticks.sort_unstable();
    assert!(ticks.len() >= 7, "about nine ticks in 18 s: {ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 2, "a tick missed or doubled: {ticks:?}");
    }
}
