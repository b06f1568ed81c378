//! The broker on every deployment shape: Redis Cluster (one hash slot per
//! queue, so no script can ever touch two slots), Sentinel, TLS with a
//! private CA, and a least-privilege ACL user.

use std::time::Duration;

use crate::common::*;
use exo_broker::{Broker, BrokerConfig, Error, Outcome};
use exo_proto::{Keys, TaskStatus};
use exo_testkit::{RedisCluster, RedisSentinelSet, TlsRedis};

/// Every broker operation once: submit, claim, publish, finish, cancel,
/// read events, list, stats, fleet, reap, release, dead letter, redrive.
async fn lifecycle(broker: &Broker) {
    let first = payload("one");
    let second = payload("two");
    let doomed = payload("doomed");
    for task in [&first, &second, &doomed] {
        broker.client().submit(task.clone()).await.unwrap();
    }
    broker.client().cancel(&doomed.task_id).await.unwrap();
    let claimed = claim_all(broker, "w1", 2).await;
    assert_eq!(claimed.len(), 2);
    let publisher = broker
        .worker_session("publisher")
        .publisher(&claimed[0].lease.task_id, Default::default());
    publisher.publish(&completed("helper")).await;
    let rest = publisher.close().await;
    finish(
        broker,
        &claimed[0],
        Outcome::Completed { output: "ok" },
        rest,
        &completed("helper"),
    )
    .await;
    finish(
        broker,
        &claimed[1],
        Outcome::Failed {
            error: "boom",
            retryable: false,
        },
        vec![],
        &errored("helper", "boom"),
    )
    .await;
    let events = broker
        .client()
        .events(&claimed[0].lease.task_id, None)
        .collect()
        .await
        .unwrap();
    assert!(events.last().unwrap().event.is_terminal());
    assert_eq!(
        broker
            .client()
            .list(Some(TaskStatus::Completed), 10, 0)
            .await
            .unwrap()
            .tasks
            .len(),
        1
    );
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead_letter), (0, 1));
    broker.admin().fleet().await.unwrap();
    broker.worker_session("w1").reap(10).await.unwrap();
    let letters = broker.admin().dead_letters(5).await.unwrap();
    broker.admin().redrive(&letters[0].entry_id).await.unwrap();
    let again = claim_all(broker, "w2", 1).await;
    assert_eq!(
        broker
            .worker_session("releaser")
            .release(&[again[0].lease.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        broker
            .client()
            .get(&doomed.task_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Cancelled
    );
}

#[tokio::test]
async fn cluster_needs_one_slot_and_then_runs_everything() {
    let cluster = RedisCluster::start(3);
    // The reference key names spread over slots: refused before any script runs.
    let error = Broker::connect(BrokerConfig::new(cluster.url()))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(error.to_string().contains("hash slot"), "{error}");

    let keys = Keys::with_prefix("{exo}:");
    let broker = Broker::connect(BrokerConfig::new(cluster.url()).with_keys(keys.clone()))
        .await
        .unwrap();
    lifecycle(&broker).await;
    let slot = keys.check_single_slot().unwrap();
    let owners: std::collections::BTreeSet<u16> = keys
        .all_sample()
        .iter()
        .map(|key| cluster.owner_of(key))
        .collect();
    assert_eq!(
        owners.len(),
        1,
        "every key of slot {slot} lives on one node"
    );
}

#[tokio::test]
async fn sentinel_urls_reach_the_primary() {
    let set = RedisSentinelSet::start();
    let broker = Broker::connect(BrokerConfig::new(set.url())).await.unwrap();
    lifecycle(&broker).await;
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let server = TlsRedis::start();
    let mut config = BrokerConfig::new(server.url());
    config.connect_timeout = Duration::from_secs(3);
    let error = Broker::connect(config.clone()).await.unwrap_err();
    assert!(
        error.is_unreachable(),
        "an untrusted certificate is refused: {error}"
    );
    config.tls_ca_file = Some(server.ca_file());
    let broker = Broker::connect(config).await.unwrap();
    lifecycle(&broker).await;
}

/// The ACL user of `deploy/acl/exo.acl`, with its password.
fn acl_line() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/acl/exo.acl"
    ))
    .unwrap();
    text.lines()
        .find(|line| line.starts_with("user exo "))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_least_privilege_acl_user_runs_everything_and_nothing_more() {
    let line = acl_line();
    let server = exo_testkit::AclRedis::start(&[&line]);
    let url = server.url_for("exo", "change-me-exo-password");
    let broker = Broker::connect(BrokerConfig::new(url.clone()))
        .await
        .unwrap();
    lifecycle(&broker).await;
    let listener = broker
        .worker_session("listener")
        .cancel_listener()
        .await
        .unwrap();
    listener.close().await;
    // Without the literal pattern PSUBSCRIBE is refused, and the listener
    // says so instead of waiting for signals that never come.
    let narrower = line.replace(" &exo:cancel:*", "");
    let strict = exo_testkit::AclRedis::start(&[&narrower]);
    let strict_broker = Broker::connect(BrokerConfig::new(
        strict.url_for("exo", "change-me-exo-password"),
    ))
    .await
    .unwrap();
    let error = strict_broker
        .worker_session("listener")
        .cancel_listener()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("PSUBSCRIBE"), "{error}");

    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    for (command, args) in [
        ("FLUSHALL", vec![]),
        ("KEYS", vec!["*"]),
        ("CONFIG", vec!["GET", "*"]),
        ("SET", vec!["other:key", "x"]),
    ] {
        let result: Result<fred::types::Value, _> = client.custom(fred::cmd!(command), args).await;
        let error = result.expect_err(command);
        assert!(
            error.to_string().contains("NOPERM") || error.to_string().contains("permission"),
            "{command}: {error}"
        );
    }
}

/// Retries an operation while Redis is unreachable (a failover in
/// progress), up to `timeout`.
async fn through_failover<T, F, Fut>(timeout: Duration, mut operation: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = exo_broker::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing_free_sleep(&error).await;
            }
            Err(error) => panic!("still failing after {timeout:?}: {error}"),
        }
    }
}

async fn tracing_free_sleep(_error: &exo_broker::Error) {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_sentinel_failover() {
    let mut set = RedisSentinelSet::start();
    let mut config = BrokerConfig::new(set.url());
    config.replica_acks = 1;
    config.command_timeout = Duration::from_secs(2);
    let broker = Broker::connect(config).await.unwrap();
    let mut acknowledged = Vec::new();
    for index in 0..10 {
        let task = payload(&format!("before {index}"));
        broker.client().submit(task.clone()).await.unwrap();
        acknowledged.push(task.task_id);
    }
    let claimed = claim_all(&broker, "w1", 3).await;
    for task in &claimed {
        finish(
            &broker,
            task,
            Outcome::Completed { output: "before" },
            vec![],
            &completed("helper"),
        )
        .await;
    }
    let took = set.fail_over(Duration::from_secs(30));
    // The old primary comes back; the sentinels make it a replica of the new one.
    set.primary().restart();
    for index in 0..5 {
        let task = payload(&format!("after {index}"));
        let client = broker.client();
        through_failover(Duration::from_secs(30), || client.submit(task.clone())).await;
        acknowledged.push(task.task_id);
    }
    let mut done = claimed
        .iter()
        .map(|task| task.lease.task_id.clone())
        .collect::<Vec<_>>();
    let mut claimer = broker.worker_session("w2").claimer();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done.len() < acknowledged.len() && tokio::time::Instant::now() < deadline {
        let claim = match claimer.claim(20, Duration::from_millis(200)).await {
            Ok(claim) => claim,
            Err(_) => continue,
        };
        let terminal = completed("helper");
        let session = broker.worker_session("w2");
        for task in claim.tasks {
            through_failover(Duration::from_secs(10), || {
                session.finish(
                    &task,
                    Outcome::Completed { output: "after" },
                    vec![],
                    &terminal,
                    exo_broker::FinishOptions::default(),
                )
            })
            .await;
            done.push(task.lease.task_id.clone());
        }
    }
    done.sort();
    acknowledged.sort();
    assert_eq!(
        done, acknowledged,
        "every acknowledged task ran once (failover took {took:?})"
    );
    for task_id in &acknowledged {
        assert_eq!(
            broker.client().get(task_id).await.unwrap().unwrap().status,
            TaskStatus::Completed
        );
    }
}

#[tokio::test]
async fn f6_a_frozen_primary_is_left_and_the_failover_followed() {
    // The primary freezes (SIGSTOP: its sockets stay open, nothing answers)
    // and Sentinel promotes the replica. The broker's connection to the
    // frozen primary must be given up and made again through Sentinel,
    // not waited out until the old primary wakes.
    let mut set = RedisSentinelSet::start();
    let mut config = BrokerConfig::new(set.url());
    config.command_timeout = Duration::from_secs(2);
    let broker = Broker::connect(config).await.unwrap();
    broker.client().submit(payload("before")).await.unwrap();
    let old = set.primary().port();
    set.primary().freeze();
    let frozen_at = std::time::Instant::now();
    while set.primary_port() == Some(old) {
        assert!(
            frozen_at.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let task = payload("after");
    let client = broker.client();
    through_failover(Duration::from_secs(20), || client.submit(task.clone())).await;
    let took = frozen_at.elapsed();
    assert!(
        broker.client().get(&task.task_id).await.unwrap().is_some(),
        "the submit did not reach the new primary"
    );
    set.primary().thaw();
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// `calls` of one `INFO commandstats` line (`cmdstat_fcall`, ...).
fn calls(server: &exo_testkit::RedisServer, command: &str) -> u64 {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "INFO", "commandstats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|rest| rest.split(',').find_map(|part| part.strip_prefix("calls=")))
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn operations_run_as_functions_loaded_once_and_again_after_a_flush() {
    let server = exo_testkit::RedisServer::start();
    let broker = Broker::connect(BrokerConfig::new(server.url()))
        .await
        .unwrap();
    lifecycle(&broker).await;
    assert!(calls(&server, "fcall") > 10);
    assert_eq!(calls(&server, "evalsha"), 0);
    assert_eq!(calls(&server, "function|load"), 1);
    // Another connection finds the library there.
    let second = Broker::connect(BrokerConfig::new(server.url()))
        .await
        .unwrap();
    second.admin().queue_stats().await.unwrap();
    // A server that lost its functions (a restart without persistence, a
    // FUNCTION FLUSH) gets the library again at the next call.
    assert_eq!(server.command(&["FUNCTION", "FLUSH"]).unwrap(), "+OK");
    let loads = calls(&server, "function|load");
    let task = payload("again");
    broker.client().submit(task.clone()).await.unwrap();
    assert_eq!(calls(&server, "function|load"), loads + 1);
    assert_eq!(calls(&server, "evalsha"), 0);
    let fcalls = calls(&server, "fcall");
    assert_eq!(
        second.client().cancel(&task.task_id).await.unwrap(),
        exo_broker::CancelOutcome::Cancelled
    );
    assert_eq!(calls(&server, "fcall"), fcalls + 1);
}

/// The key counts of the `FCALL`s in the server's slow log (every command,
/// with `slowlog-log-slower-than 0`), oldest first.
async fn fcall_key_counts(client: &fred::prelude::Client) -> Vec<String> {
    use fred::prelude::*;
    let log: Value = client
        .custom(fred::cmd!("SLOWLOG"), vec!["GET", "100"])
        .await
        .unwrap();
    let mut counts: Vec<String> = log
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let args = entry.into_array().into_iter().nth(3)?.into_array();
            let args: Vec<String> = args
                .into_iter()
                .filter_map(|arg| arg.into_string())
                .collect();
            (args.first()? == "FCALL")
                .then(|| args.get(2).cloned())
                .flatten()
        })
        .collect();
    counts.reverse();
    counts
}

#[tokio::test]
async fn a_call_names_two_keys_once_the_server_has_the_layout() {
    use fred::prelude::*;
    let server = exo_testkit::RedisServer::start();
    let broker = Broker::connect(BrokerConfig::new(server.url()))
        .await
        .unwrap();
    let raw = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1000"),
    ] {
        assert_eq!(
            server.command(&["CONFIG", "SET", name, value]).unwrap(),
            "+OK"
        );
    }
    let reset = || async {
        let _: Value = raw
            .custom(fred::cmd!("SLOWLOG"), vec!["RESET"])
            .await
            .unwrap();
    };
    reset().await;
    // The first call gives every key; the next ones name the layout.
    broker.admin().queue_stats().await.unwrap();
    broker.admin().queue_stats().await.unwrap();
    broker.client().submit(payload("one")).await.unwrap();
    assert_eq!(fcall_key_counts(&raw).await, ["26", "2", "2"]);

    // A server whose library was loaded again (so it lost what it knew)
    // refuses a call that names the layout, and the broker sends it again
    // with every key: the call lands once, and the next ones are short.
    assert_eq!(server.command(&["FUNCTION", "FLUSH"]).unwrap(), "+OK");
    reset().await;
    let task = payload("two");
    broker.client().submit(task.clone()).await.unwrap();
    broker.admin().queue_stats().await.unwrap();
    assert_eq!(fcall_key_counts(&raw).await, ["2", "2", "26", "2"]);
    let stored = broker.client().get(&task.task_id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Pending);
    assert_eq!(broker.admin().queue_stats().await.unwrap().stream_length, 2);

    // Another connection's broker, new to the layout, gives every key once;
    // the server knows it already, so nothing is refused.
    let second = Broker::connect(BrokerConfig::new(server.url()))
        .await
        .unwrap();
    reset().await;
    second.admin().queue_stats().await.unwrap();
    second.admin().queue_stats().await.unwrap();
    assert_eq!(fcall_key_counts(&raw).await, ["26", "2"]);
}

#[tokio::test]
async fn a_restarted_server_that_kept_the_library_is_given_the_layout_again() {
    use fred::prelude::*;
    // The library is persisted with the data (the append-only file), so a
    // restarted server has it loaded but knows no key layout: the first
    // call that names only the layout is refused (NOLAYOUT) and goes again
    // with every key, and nothing is lost.
    let mut server = exo_testkit::RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "1000",
    ]);
    let broker = Broker::connect(BrokerConfig::new(server.url()))
        .await
        .unwrap();
    let first = payload("before");
    broker.client().submit(first.clone()).await.unwrap();
    broker.admin().queue_stats().await.unwrap();

    server.restart();
    assert!(
        server
            .command(&["FUNCTION", "LIST"])
            .unwrap()
            .starts_with("*1"),
        "the restarted server loaded the library from its append-only file"
    );
    let raw = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    // The broker's connection comes back on its own.
    let mut stats = broker.admin().queue_stats().await;
    for _ in 0..50 {
        if stats.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = broker.admin().queue_stats().await;
    }
    assert_eq!(stats.unwrap().stream_length, 1);
    let second = payload("after");
    broker.client().submit(second.clone()).await.unwrap();
    // Refused once with two keys, sent again with every key, then short.
    assert_eq!(fcall_key_counts(&raw).await, ["2", "26", "2"]);
    for task in [&first, &second] {
        let stored = broker.client().get(&task.task_id).await.unwrap().unwrap();
        assert_eq!(stored.status, TaskStatus::Pending, "{}", task.task_id);
    }
    assert_eq!(broker.admin().queue_stats().await.unwrap().stream_length, 2);
}

#[tokio::test]
async fn without_functions_the_same_operations_run_as_scripts() {
    // A user whose ACL lacks FCALL and FUNCTION LOAD (as an ACL written for
    // an earlier exo, or a server before Redis 7): scripts, found out once.
    let line = acl_line().replace(" +fcall +function|load", "");
    assert!(!line.contains("fcall"));
    let server = exo_testkit::AclRedis::start(&[&line]);
    let broker = Broker::connect(BrokerConfig::new(
        server.url_for("exo", "change-me-exo-password"),
    ))
    .await
    .unwrap();
    lifecycle(&broker).await;
    let admin = server.server();
    assert!(calls(admin, "evalsha") > 10);
    assert!(calls(admin, "fcall") <= 1, "FCALL was tried once at most");

    // And when the configuration says so.
    let plain = exo_testkit::RedisServer::start();
    let mut config = BrokerConfig::new(plain.url());
    config.functions = false;
    let broker = Broker::connect(config).await.unwrap();
    lifecycle(&broker).await;
    assert!(calls(&plain, "evalsha") > 10);
    assert_eq!(calls(&plain, "fcall"), 0);
    assert_eq!(calls(&plain, "function|load"), 0);
}
