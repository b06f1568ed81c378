//! The end-to-end suite on every deployment shape: standalone (or the Redis
//! named by `EXO_E2E_REDIS_URL`), Redis Cluster, Sentinel with a failover
//! mid-run, a least-privilege ACL user, and TLS with a private CA. Workers
//! and clients are the real `exo` binary. `cargo xtask e2e` runs this file.

use std::time::{Duration, Instant};

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::{AclRedis, RedisCluster, RedisSentinelSet, TestRedis, TlsRedis};
use serde_json::{Value, json};

/// Submit and follow a tool run, drain a batch, cancel a running task,
/// check the fleet, the queue and the alerts, then stop the workers.
fn suite(target: &Target, shape: &str) {
    let dir = tempfile::tempdir().unwrap();
    let weather = agent_file(
        dir.path(),
        "weather.json",
        &json!({"name": "helper", "model": "scripted:weather", "tools": ["get_weather"]}),
    );
    let echo = agent_file(
        dir.path(),
        "echo.json",
        &json!({"name": "echoer", "model": "scripted:echo"}),
    );
    let slow = agent_file(
        dir.path(),
        "slow.json",
        &json!({"name": "slow", "model": "scripted:slow:60000"}),
    );
    let mut first = target.start_worker(&["--concurrency", "2"]);
    let mut second = target.start_worker(&["--concurrency", "2"]);

    let output = target.run(&[
        "task",
        "submit",
        "--agent",
        weather.to_str().unwrap(),
        "--input",
        "Weather?",
        "--detailed",
        "--follow",
    ]);
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shape}: {shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        shown.contains("It is sunny in Paris.") && shown.contains("● completed"),
        "{shape}: {shown}"
    );

    let mut ids = Vec::new();
    for index in 0..20 {
        let submitted = target.json(&[
            "task",
            "submit",
            "--agent",
            echo.to_str().unwrap(),
            "--input",
            &format!("echo {index}"),
        ]);
        ids.push(submitted["task_id"].as_str().unwrap().to_owned());
    }
    eventually(
        Duration::from_secs(60),
        &format!("{shape}: 21 completed tasks"),
        || {
            let tasks = target.json(&["task", "list", "--status", "completed", "--limit", "100"]);
            (tasks.as_array().unwrap().len() == 21).then_some(())
        },
    );

    let slow_id = target.submit(&slow, "x");
    eventually(
        Duration::from_secs(20),
        &format!("{shape}: the slow task to run"),
        || (target.json(&["task", "status", &slow_id])["status"] == "running").then_some(()),
    );
    assert_eq!(
        target.json(&["task", "cancel", &slow_id])["result"],
        "cancelling"
    );
    eventually(
        Duration::from_secs(10),
        &format!("{shape}: the cancel"),
        || (target.json(&["task", "status", &slow_id])["status"] == "cancelled").then_some(()),
    );
    let output = target.run(&["task", "events", &slow_id, "--follow"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("● cancelled"),
        "{shape}"
    );

    let workers = target.json(&["worker", "list"]);
    assert_eq!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .filter(|worker| worker["alive"] == true)
            .count(),
        2,
        "{shape}: {workers}"
    );
    let stats = target.json(&["queue", "stats"]);
    assert_eq!(
        (stats["depth"].clone(), stats["pending"].clone()),
        (json!(0), json!(0)),
        "{shape}: {stats}\n{}\n{}",
        first.stderr(),
        second.stderr()
    );
    let alerts = target.run(&["alerts", "check"]);
    assert_eq!(
        alerts.status.code(),
        Some(0),
        "{shape}: {}",
        String::from_utf8_lossy(&alerts.stdout)
    );

    for worker in [&mut first, &mut second] {
        worker.signal("TERM");
        assert!(
            worker.wait(Duration::from_secs(20)).success(),
            "{shape}: {}",
            worker.stderr()
        );
    }
    assert_eq!(target.json(&["worker", "list"]), json!([]), "{shape}");
}

#[test]
fn standalone() {
    match std::env::var("EXO_E2E_REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let prefix = exo_testkit::unique_name("exoe2e");
            suite(
                &Target::new(&url, &format!("{prefix}:"), &format!("{prefix}:tasks")),
                "given Redis",
            );
        }
        _ => {
            let redis = TestRedis::new();
            suite(&Target::of(&redis), "standalone");
        }
    }
}

#[test]
fn cluster() {
    let cluster = RedisCluster::start(3);
    // One hash tag for every key: the queue and all its task keys share a slot.
    suite(
        &Target::new(&cluster.url(), "{exo}:", "{exo}:tasks"),
        "cluster",
    );
    // The reference layout is refused with a message saying how to fix it.
    let target = Target::new(&cluster.url(), "exo:", "exo:tasks");
    let output = target.run(&["queue", "stats"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("hash slot"));
}

#[test]
fn cluster_with_a_sharded_queue() {
    let cluster = RedisCluster::start(3);
    // Three shards, each its own hash tag, so their keys spread over the
    // nodes; every command and worker is told the same count.
    let shards: Vec<exo_proto::Keys> = (0..3)
        .map(|index| exo_proto::Keys::with_prefix("{exo}:").shard(index))
        .collect();
    let nodes: std::collections::BTreeSet<u16> = shards
        .iter()
        .map(|keys| cluster.owner_of(keys.queue()))
        .collect();
    assert!(
        nodes.len() >= 2,
        "the shards live on {} node(s)",
        nodes.len()
    );
    let target = Target::new(&cluster.url(), "{exo}:", "{exo}:tasks").with_env("EXO_SHARDS", "3");
    suite(&target, "cluster, 3 shards");
    // Each shard got some of the 22 tasks (a task goes by its id's hash).
    for keys in &shards {
        let shard = Target::new(&cluster.url(), keys.prefix(), keys.queue());
        let tasks = shard.json(&["task", "list", "--limit", "100"]);
        assert!(
            !tasks.as_array().unwrap().is_empty(),
            "shard {} has no task",
            keys.queue()
        );
    }
    let all = target.json(&["task", "list", "--limit", "100"]);
    assert_eq!(all.as_array().unwrap().len(), 22, "{all}");
}

#[test]
fn acl_least_privilege_user() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/acl/exo.acl"
    ))
    .unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("user exo "))
        .unwrap()
        .to_owned();
    let server = AclRedis::start(&[&line]);
    suite(
        &Target::new(
            &server.url_for("exo", "change-me-exo-password"),
            "exo:",
            "exo:tasks",
        ),
        "acl",
    );
}

#[test]
fn tls_with_a_private_ca() {
    let server = TlsRedis::start();
    let target = Target::new(&server.url(), "exo:", "exo:tasks")
        .with_env("EXO_REDIS_CA_FILE", server.ca_file().to_str().unwrap());
    suite(&target, "tls");
    let untrusted = Target::new(&server.url(), "exo:", "exo:tasks");
    assert_eq!(
        untrusted.run(&["queue", "stats"]).status.code(),
        Some(3),
        "an unknown CA is refused"
    );
}

#[test]
fn sentinel_failover_mid_run_loses_nothing() {
    let mut set = RedisSentinelSet::start();
    let target = Target::new(&set.url(), "exo:", "exo:tasks").with_env("EXO_REPLICA_ACKS", "1");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "slow.json",
        &json!({"name": "slow", "model": "scripted:slow:300"}),
    );
    let flags = [
        "--concurrency",
        "2",
        "--heartbeat-ttl",
        "3",
        "--lease",
        "10",
    ];
    let _first = target.start_worker(&flags);
    let _second = target.start_worker(&flags);
    // Why submits were refused, for the assertion's message.
    let refused = std::cell::RefCell::new(Vec::<String>::new());
    let submit = |ids: &mut Vec<String>| {
        // A submit during the failover may fail (exit 3); only acknowledged ones count.
        let output = target
            .command()
            .args([
                "task",
                "submit",
                "--agent",
                agent.to_str().unwrap(),
                "--input",
                "x",
                "--json",
            ])
            .output()
            .unwrap();
        if output.status.success() {
            let value: Value = serde_json::from_slice(&output.stdout).unwrap();
            ids.push(value["task_id"].as_str().unwrap().to_owned());
        } else {
            refused
                .borrow_mut()
                .push(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
    };
    let mut ids = Vec::new();
    for _ in 0..10 {
        submit(&mut ids);
    }
    std::thread::sleep(Duration::from_millis(400));
    let took = set.fail_over(Duration::from_secs(30));
    set.primary().restart();
    // With replica acknowledgements a write counts only once a replica has
    // it: the submits resume once the old primary is the new one's replica.
    let new_primary = set.replica().port();
    let old_primary = set.primary().port();
    let replica_online = || {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &new_primary.to_string(), "INFO", "replication"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .any(|line| line.starts_with("slave0:") && line.contains("state=online"))
            .then_some(())
    };
    // The sentinels turn the returning primary into a replica of the new
    // one. How soon is Redis's business, not exo's; on a loaded machine it
    // can take long, so after 30 s the test does what the sentinels would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica_online().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if replica_online().is_none() {
        let _ = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &old_primary.to_string(),
                "REPLICAOF",
                "127.0.0.1",
                &new_primary.to_string(),
            ])
            .output();
    }
    eventually(
        Duration::from_secs(60),
        "the old primary to replicate from the new one",
        replica_online,
    );
    // Under load the sentinels may still name the old primary (now a
    // replica) for a while: fred refuses it ("Invalid role"), and a client
    // retries, as this one does, for up to 30 s in all.
    let retry_until = Instant::now() + Duration::from_secs(30);
    for _ in 0..10 {
        let before = ids.len();
        submit(&mut ids);
        while ids.len() == before && Instant::now() < retry_until {
            std::thread::sleep(Duration::from_millis(500));
            submit(&mut ids);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ids.len() >= 15,
        "most submits were acknowledged ({} of 20); refused: {:?}",
        ids.len(),
        refused.borrow()
    );
    eventually(
        Duration::from_secs(90),
        "every acknowledged task to complete after the failover",
        || {
            let states: Vec<String> = ids
                .iter()
                .map(|id| {
                    target.json(&["task", "status", id])["status"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect();
            states
                .iter()
                .all(|state| state == "completed")
                .then_some(())
        },
    );
    let stats = target.json(&["queue", "stats"]);
    assert_eq!(
        (stats["depth"].clone(), stats["pending"].clone()),
        (json!(0), json!(0)),
        "nothing left running: {stats} (failover took {took:?})"
    );
    let running = target.json(&["task", "list", "--status", "running"]);
    assert_eq!(running, json!([]));
}
