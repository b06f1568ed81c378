//! A queue split into shards, on a real 3-primary Redis Cluster: routing,
//! finding a task whatever shard it is on, cancel, and the merged listing,
//! queue counters and fleet.

use std::time::Duration;

use crate::common::*;
use exo_broker::{BrokerConfig, CancelOutcome, Shards};
use exo_proto::{Keys, TaskStatus, WorkerHealth, shard_of};
use exo_testkit::RedisCluster;

fn health(worker_id: &str, processed: u64, last_heartbeat: f64) -> WorkerHealth {
    WorkerHealth {
        worker_id: worker_id.to_owned(),
        status: "running".into(),
        tasks_processed: processed,
        tasks_failed: 0,
        current_task_id: None,
        started_at: last_heartbeat - 10.0,
        last_heartbeat,
        concurrency: 4,
        hostname: "web01".into(),
        heartbeat_ttl: Some(30),
        active_tasks: Some(0),
        queue: None,
    }
}

#[tokio::test]
async fn a_sharded_queue_routes_finds_cancels_and_adds_up_across_its_shards() {
    let cluster = RedisCluster::start(3);
    let config = BrokerConfig::new(cluster.url()).with_keys(Keys::with_prefix("{shq}:"));
    let shards = Shards::connect(config, 3).await.unwrap();
    assert_eq!(shards.count(), 3);
    let nodes: std::collections::BTreeSet<u16> = shards
        .brokers()
        .iter()
        .map(|broker| cluster.owner_of(broker.keys().queue()))
        .collect();
    assert!(nodes.len() >= 2, "3 shards on {} node(s)", nodes.len());

    // Tasks go to the shard of their id...
    let mut ids = Vec::new();
    for index in 0..30 {
        let task = payload(&format!("task {index}"));
        let handle = shards.submit(task.clone()).await.unwrap();
        ids.push(handle.task_id().to_owned());
    }
    let mut per_shard = [0usize; 3];
    for (index, broker) in shards.brokers().iter().enumerate() {
        let page = broker.client().list(None, 100, 0).await.unwrap();
        per_shard[index] = page.tasks.len();
        for task in &page.tasks {
            assert_eq!(shard_of(&task.task_id, 3) as usize, index);
        }
    }
    assert_eq!(per_shard.iter().sum::<usize>(), 30, "{per_shard:?}");
    assert!(per_shard.iter().all(|&count| count > 0), "{per_shard:?}");

    // ...unless they carry a concurrency key: a key's tasks share a shard,
    // so its limit and its order hold. Reads by id still find them.
    let mut keyed = Vec::new();
    for index in 0..6 {
        let mut task = payload(&format!("keyed {index}"));
        task.concurrency_key = Some("tenant-a".into());
        keyed.push(task.task_id.clone());
        shards.submit(task).await.unwrap();
    }
    let home = shard_of("tenant-a", 3) as usize;
    for task_id in &keyed {
        let holder = shards.locate(task_id).await.unwrap().unwrap();
        assert_eq!(holder.keys(), shards.brokers()[home].keys());
        assert_eq!(
            shards.get(task_id).await.unwrap().unwrap().status,
            TaskStatus::Pending
        );
    }
    let away = keyed
        .iter()
        .find(|task_id| shard_of(task_id, 3) as usize != home)
        .expect("one of six ids routes elsewhere");
    assert_eq!(shards.cancel(away).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(
        shards.get(away).await.unwrap().unwrap().status,
        TaskStatus::Cancelled
    );
    assert!(shards.get("no-such-task").await.unwrap().is_none());
    assert!(matches!(
        shards.cancel("no-such-task").await,
        Ok(CancelOutcome::NotFound) | Err(_)
    ));

    // The cancelled task's entry waits on its stream until a claim drops it.
    let stats = shards.queue_stats().await.unwrap();
    assert_eq!((stats.stream_length, stats.depth()), (36, 36), "{stats:?}");
    let listed = shards.list(None, 100).await.unwrap();
    assert_eq!(listed.tasks.len(), 36);
    assert!(
        listed
            .tasks
            .windows(2)
            .all(|pair| pair[0].created_at >= pair[1].created_at),
        "newest first across shards"
    );
    assert_eq!(shards.list(None, 10).await.unwrap().tasks.len(), 10);

    // A worker of a sharded queue heartbeats on each shard: one fleet row,
    // its counters added up.
    let now = exo_proto::time::now_seconds();
    for (index, broker) in shards.brokers().iter().enumerate() {
        broker
            .worker_session("web01-1")
            .heartbeat(
                &health("web01-1", 10 * (index as u64 + 1), now - index as f64),
                Duration::from_secs(30),
                &[],
            )
            .await
            .unwrap();
    }
    let fleet = shards.fleet().await.unwrap();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert_eq!(fleet[0].health.as_ref().unwrap().tasks_processed, 60);
    assert!((fleet[0].last_seen - now).abs() < 1.0);
}
