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
async fn the_fleet_lists_live_and_dead_workers_in_one_round_trip() {
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
    assert_eq!(broker.round_trips() - start, 1);
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
}
