//! Heartbeats, fleet status, health and queue numbers against a real
//! redis-server.

use std::time::Duration;

use crate::common::*;
use exo_proto::time::now_seconds;
use exo_proto::{Health, WorkerHealth};
use exo_testkit::TestRedis;
use fred::prelude::*;

fn health(worker_id: &str, last_heartbeat: f64) -> WorkerHealth {
    WorkerHealth {
        worker_id: worker_id.to_owned(),
        status: "running".into(),
        tasks_processed: 42,
        tasks_failed: 2,
        current_task_id: None,
        started_at: last_heartbeat - 100.0,
        last_heartbeat,
        concurrency: 4,
        hostname: "web01".into(),
        heartbeat_ttl: Some(30),
        active_tasks: Some(0),
        queue: Some("exo:tasks".into()),
    }
}

#[tokio::test]
async fn the_fleet_lists_live_and_dead_workers_with_one_scan_page_and_one_script() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let now = now_seconds();
    broker
        .worker_session("web01-1-aaaaaaaa")
        .heartbeat(
            &health("web01-1-aaaaaaaa", now),
            Duration::from_secs(30),
            &[],
        )
        .await
        .unwrap();
    broker
        .worker_session("web02-2-bbbbbbbb")
        .heartbeat(
            &health("web02-2-bbbbbbbb", now),
            Duration::from_secs(30),
            &[],
        )
        .await
        .unwrap();
    let ttl: i64 = client
        .ttl(broker.keys().worker("web01-1-aaaaaaaa"))
        .await
        .unwrap();
    assert!((29..=30).contains(&ttl));

    // web02 crashes: its heartbeat hash expires, its fleet entry stays.
    let _: () = client
        .del(broker.keys().worker("web02-2-bbbbbbbb"))
        .await
        .unwrap();
    let start = broker.round_trips();
    let fleet = broker.admin().fleet().await.unwrap();
    assert_eq!(
        broker.round_trips() - start,
        2,
        "one SCAN page and the script"
    );
    assert_eq!(fleet.len(), 2);
    let live = fleet
        .iter()
        .find(|entry| entry.worker_id == "web01-1-aaaaaaaa")
        .unwrap();
    assert!(live.alive(now));
    assert_eq!(live.health.as_ref().unwrap().tasks_processed, 42);
    let dead = fleet
        .iter()
        .find(|entry| entry.worker_id == "web02-2-bbbbbbbb")
        .unwrap();
    assert!(
        dead.health.is_none() && !dead.alive(now),
        "a stopped worker is listed as dead"
    );

    let one = broker
        .admin()
        .worker("web01-1-aaaaaaaa")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.check(now).health, Health::Healthy);
    assert_eq!(one.check(now + 25.0).health, Health::Degraded);
    assert_eq!(one.check(now + 61.0).health, Health::Unhealthy);
    assert!(broker.admin().worker("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn queue_stats_count_waiting_pending_delayed_and_dead() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.retry.base_backoff = Duration::from_secs(60);
    config.retry.max_backoff = Duration::from_secs(60);
    let broker = exo_broker::Broker::connect(config).await.unwrap();
    for index in 0..6 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let claimed = claim_all(&broker, "w1", 2).await;
    finish(
        &broker,
        &claimed[0],
        exo_broker::Outcome::Failed {
            error: "x",
            retryable: true,
        },
        vec![],
        &errored("helper", "x"),
    )
    .await;
    finish(
        &broker,
        &claimed[1],
        exo_broker::Outcome::Failed {
            error: "y",
            retryable: false,
        },
        vec![],
        &errored("helper", "y"),
    )
    .await;
    broker.client().submit(payload("claimed")).await.unwrap();
    claim_all(&broker, "w2", 1).await;
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.pending_by_consumer, [("w2".to_owned(), 1)]);
    assert_eq!(stats.delayed, 1);
    assert_eq!(stats.dead_letter, 1);
    assert_eq!(stats.lag, Some(4));
    assert_eq!(stats.depth(), 5, "4 waiting plus 1 delayed");
    let waited = stats
        .oldest_wait(now_seconds())
        .expect("the oldest waiting task is known");
    assert!((0.0..5.0).contains(&waited), "{waited}");

    // Tasks waiting beside the stream count in the depth too: two
    // prioritized (tasks wait on the stream already) and, of three tasks of
    // a key limited to one, the two held back once the first is claimed.
    for _ in 0..2 {
        let mut task = payload("prioritized");
        task.priority = Some(3);
        broker.client().submit(task).await.unwrap();
    }
    for _ in 0..3 {
        let mut task = payload("keyed");
        task.concurrency_key = Some("tenant-a".to_owned());
        task.concurrency_limit = Some(1);
        broker.client().submit(task).await.unwrap();
    }
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!((stats.prioritized, stats.held), (2, 0));
    assert_eq!(
        stats.depth(),
        4 + 1 + 2 + 3,
        "waiting, delayed, prioritized, keyed"
    );
    let taken = claim_all(&broker, "w3", 100).await;
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!(
        (stats.prioritized, stats.held),
        (0, 2),
        "{} claimed",
        taken.len()
    );
    assert_eq!(stats.depth(), 1 + 2, "1 delayed plus 2 held");
}

/// A reference worker writes only its heartbeat hash (the captured fixture's
/// fields); the fleet lists it next to exo's own workers, alive, and as
/// dead once its hash is gone.
#[tokio::test]
async fn the_fleet_lists_reference_workers_that_write_only_their_hash() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let now = now_seconds();
    broker
        .worker_session("exo-1")
        .heartbeat(&health("exo-1", now), Duration::from_secs(30), &[])
        .await
        .unwrap();

    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../../../exo-proto/test_data/worker_heartbeat.hash.json"
    ))
    .unwrap();
    let mut fields: Vec<(String, String)> = fixture["fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
        .collect();
    for (name, value) in &mut fields {
        if name == "last_heartbeat" || name == "started_at" {
            *value = now.to_string();
        }
    }
    let reference = broker.keys().worker("vm-4242-0badcafe");
    let _: () = client.hset(&reference, fields).await.unwrap();
    let _: () = client.expire(&reference, 30, None).await.unwrap();
    // A consumer of the queue's group with a heartbeat hash is found too
    // (here it read an entry, so Redis created the consumer).
    broker.client().submit(payload("read")).await.unwrap();
    let consumer = broker.keys().worker("vm-4343-0ddba11");
    let _: () = client
        .hset(&consumer, [("last_heartbeat", now.to_string())])
        .await
        .unwrap();
    let _: Value = client
        .custom(
            fred::cmd!("XREADGROUP"),
            vec![
                "GROUP".to_owned(),
                broker.keys().group(),
                "vm-4343-0ddba11".to_owned(),
                "COUNT".to_owned(),
                "1".to_owned(),
                "STREAMS".to_owned(),
                broker.keys().queue().to_owned(),
                ">".to_owned(),
            ],
        )
        .await
        .unwrap();

    let start = broker.round_trips();
    let fleet = broker.admin().fleet().await.unwrap();
    assert_eq!(
        broker.round_trips() - start,
        2,
        "one SCAN page (a small keyspace) and the script"
    );
    let mut ids: Vec<&str> = fleet.iter().map(|entry| entry.worker_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["exo-1", "vm-4242-0badcafe", "vm-4343-0ddba11"]);
    let python = fleet
        .iter()
        .find(|entry| entry.worker_id == "vm-4242-0badcafe")
        .unwrap();
    assert!(python.alive(now));
    let python_health = python.health.as_ref().unwrap();
    assert_eq!(python_health.concurrency, 4);
    assert_eq!(python_health.hostname, "vm");

    // It stops: still listed, as dead.
    let _: () = client.del(&reference).await.unwrap();
    let fleet = broker.admin().fleet().await.unwrap();
    let python = fleet
        .iter()
        .find(|entry| entry.worker_id == "vm-4242-0badcafe")
        .expect("a stopped reference worker stays listed");
    assert!(!python.alive(now));
}
