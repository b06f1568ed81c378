//! Stuck-task recovery, leases, fencing, hand-back and reconnects against a
//! real redis-server.

use std::time::Duration;

use crate::common::*;
use exo_broker::{Broker, Finished, Lease, Outcome};
use exo_proto::TaskStatus;
use exo_testkit::TestRedis;

async fn short_lease_broker(redis: &TestRedis, lease: Duration) -> Broker {
    let mut config = config(redis);
    config.lease = lease;
    Broker::connect(config).await.unwrap()
}

#[tokio::test]
async fn a_dead_workers_task_is_reclaimed_and_its_late_write_is_refused() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    broker
        .worker_session("zombie")
        .heartbeat(&health("zombie"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    let zombie_task = claim_all(&broker, "zombie", 1).await.remove(0);

    broker
        .worker_session("alive")
        .heartbeat(&health("alive"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(report.requeued, 0, "the zombie still has a heartbeat");

    // The zombie's heartbeat expires (SIGKILL); a live worker reaps its task.
    broker.worker_session("zombie").deregister().await.unwrap();
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(report.requeued, 1);
    let task = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Retrying);
    assert_eq!(
        task.retries,
        Some(1),
        "a lost attempt counts against the budget"
    );
    assert!(
        task.error
            .unwrap()
            .contains("zombie stopped sending heartbeats")
    );

    let rerun = claim_all(&broker, "alive", 1).await.remove(0);
    assert!(rerun.lease.attempt > zombie_task.lease.attempt);
    let finished = finish(
        &broker,
        &rerun,
        Outcome::Completed { output: "second" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert_eq!(finished, Finished::Completed);

    let late = finish(
        &broker,
        &zombie_task,
        Outcome::Completed { output: "zombie" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert!(matches!(late, Finished::Stale { .. }), "{late:?}");
    let late = finish(
        &broker,
        &zombie_task,
        Outcome::Failed {
            error: "zombie",
            retryable: true,
        },
        vec![],
        &errored("helper", "zombie"),
    )
    .await;
    assert!(matches!(late, Finished::Stale { .. }), "{late:?}");

    let task = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (task.status, task.output()),
        (TaskStatus::Completed, Some("second"))
    );
    let events = broker
        .client()
        .events(&payload.task_id, None)
        .collect()
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|item| item.event.is_terminal())
            .count(),
        1
    );
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!((stats.pending, stats.stream_length), (0, 0));
    assert!(
        !stats
            .pending_by_consumer
            .iter()
            .any(|(consumer, _)| consumer == "zombie")
    );
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_but_a_renewed_one_is_not() {
    let redis = TestRedis::new();
    let broker = short_lease_broker(&redis, Duration::from_millis(300)).await;
    let renewed = payload("renewed");
    let neglected = payload("neglected");
    broker.client().submit(renewed.clone()).await.unwrap();
    broker.client().submit(neglected.clone()).await.unwrap();
    let tasks = claim_all(&broker, "slow", 2).await;
    let renewed_lease = tasks
        .iter()
        .find(|task| task.lease.task_id == renewed.task_id)
        .unwrap()
        .lease
        .clone();

    // The worker stays alive and renews one lease for 1.2 s (4 leases long).
    for _ in 0..12 {
        let report = broker
            .worker_session("slow")
            .heartbeat(
                &health("slow"),
                Duration::from_secs(30),
                std::slice::from_ref(&renewed_lease),
            )
            .await
            .unwrap();
        assert!(report.lost.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.worker_session("reaper").reap(100).await.unwrap();
    }
    assert_eq!(
        broker
            .client()
            .get(&renewed.task_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Running
    );
    let task = broker
        .client()
        .get(&neglected.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Retrying);
    assert!(task.error.unwrap().contains("did not renew its lease"));

    // The heartbeat tells the slow worker it lost the neglected task.
    let neglected_lease = tasks
        .iter()
        .find(|task| task.lease.task_id == neglected.task_id)
        .unwrap()
        .lease
        .clone();
    let report = broker
        .worker_session("slow")
        .heartbeat(
            &health("slow"),
            Duration::from_secs(30),
            &[renewed_lease, neglected_lease],
        )
        .await
        .unwrap();
    assert_eq!(report.lost, std::slice::from_ref(&neglected.task_id));
}

#[tokio::test]
async fn the_heartbeat_reports_cancels_the_signal_may_have_missed() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    broker.client().cancel(&payload.task_id).await.unwrap();
    let report = broker
        .worker_session("w1")
        .heartbeat(
            &health("w1"),
            Duration::from_secs(30),
            std::slice::from_ref(&task.lease),
        )
        .await
        .unwrap();
    assert_eq!(report.cancelled, std::slice::from_ref(&payload.task_id));
}

#[tokio::test]
async fn a_reclaimed_task_out_of_retries_fails_into_the_dead_letter() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut payload = payload("x");
    payload.max_retries = Some(0);
    broker.client().submit(payload.clone()).await.unwrap();
    claim_all(&broker, "gone", 1).await;
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!((report.requeued, report.failed), (0, 1));
    let task = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let letters = broker.admin().dead_letters(5).await.unwrap();
    assert!(
        letters[0]
            .reason
            .contains("gone stopped sending heartbeats")
    );
    let events = broker
        .client()
        .events(&payload.task_id, None)
        .collect()
        .await
        .unwrap();
    assert!(events.last().unwrap().event.is_terminal());
}

#[tokio::test]
async fn released_tasks_go_back_to_the_queue() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    for index in 0..3 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let tasks = claim_all(&broker, "leaving", 3).await;
    let leases: Vec<Lease> = tasks.iter().map(|task| task.lease.clone()).collect();
    assert_eq!(
        broker
            .worker_session("releaser")
            .release(&leases)
            .await
            .unwrap(),
        3
    );
    for task in &tasks {
        let state = broker
            .client()
            .get(&task.lease.task_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.status, TaskStatus::Pending);
        assert_eq!(state.retries, None, "a hand-back is not a retry");
    }
    let again = claim_all(&broker, "other", 3).await;
    assert_eq!(again.len(), 3);
    let late = finish(
        &broker,
        &tasks[0],
        Outcome::Completed { output: "" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert!(matches!(late, Finished::Stale { .. }));
}

#[tokio::test]
async fn the_broker_survives_a_redis_restart() {
    let mut redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    broker.client().submit(payload("before")).await.unwrap();
    redis.server().unwrap().kill();
    let error = broker.client().submit(payload("during")).await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    redis.server().unwrap().restart();
    // The server lost everything (no persistence), scripts included: the
    // next calls reconnect and reload the scripts.
    let mut submitted = None;
    for _ in 0..50 {
        match broker.client().submit(payload("after")).await {
            Ok(handle) => {
                submitted = Some(handle);
                break;
            }
            Err(error) => {
                assert!(
                    error.is_unreachable() || error.to_string().contains("NOGROUP"),
                    "{error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let handle = submitted.expect("submit after restart");
    assert_eq!(handle.status().await.unwrap().status, TaskStatus::Pending);
}

#[tokio::test]
async fn a_late_heartbeat_does_not_cost_freshly_claimed_tasks() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.dead_worker_idle = Duration::from_millis(600);
    let broker = Broker::connect(config).await.unwrap();
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    claim_all(&broker, "late", 1).await;
    // No heartbeat key for `late`: only an entry idle long enough is taken.
    assert_eq!(
        broker
            .worker_session("alive")
            .reap(100)
            .await
            .unwrap()
            .requeued,
        0
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        broker
            .worker_session("alive")
            .reap(100)
            .await
            .unwrap()
            .requeued,
        1
    );
}

#[tokio::test]
async fn a_stray_entry_never_touches_its_task() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let owner = claim_all(&broker, "owner", 1).await.remove(0);
    broker
        .worker_session("owner")
        .heartbeat(
            &health("owner"),
            Duration::from_secs(30),
            std::slice::from_ref(&owner.lease),
        )
        .await
        .unwrap();
    // A second entry for the same task (a reference client resubmitting,
    // say), claimed by a worker that then dies.
    let _: String = raw_xadd(&client, &broker, &payload.to_json()).await;
    let skipped = claim_all(&broker, "gone", 1).await;
    assert!(
        skipped.is_empty(),
        "a running task's duplicate entry is skipped at claim"
    );
    let _: String = raw_xadd(&client, &broker, &payload.to_json()).await;
    read_without_marking(&client, &broker, "gone").await;
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(
        (report.requeued, report.failed, report.cleaned),
        (0, 0, 1),
        "{report:?}"
    );
    let state = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.status, state.attempt),
        (TaskStatus::Running, Some(owner.lease.attempt)),
        "the owner's attempt stands"
    );
    let finished = finish(
        &broker,
        &owner,
        Outcome::Completed { output: "ok" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert_eq!(finished, Finished::Completed);
}

#[tokio::test]
async fn an_orphaned_claim_is_handed_back_by_the_heartbeat_without_a_retry() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(400);
    config.command_timeout = Duration::from_millis(200);
    let broker = Broker::connect(config).await.unwrap();
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    // Claimed, but the worker never learned of it (the reply was lost).
    claim_all(&broker, "w1", 1).await;
    let report = broker
        .worker_session("w1")
        .heartbeat(&health("w1"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    assert_eq!(report.handed_back, 0, "not idle long enough yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = broker
        .worker_session("w1")
        .heartbeat(&health("w1"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    assert_eq!(report.handed_back, 1);
    let state = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.status, state.retries),
        (TaskStatus::Pending, None),
        "handed back, no retry charged"
    );
    assert_eq!(claim_all(&broker, "w2", 1).await.len(), 1);
}

#[tokio::test]
async fn an_entry_read_but_never_marked_is_handed_back_not_dropped() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(400);
    config.command_timeout = Duration::from_millis(200);
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    // A blocking claim read the entry, then the marking script failed.
    read_without_marking(&client, &broker, "w1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = broker
        .worker_session("w1")
        .heartbeat(&health("w1"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    assert_eq!(report.handed_back, 1);
    assert_eq!(
        broker
            .client()
            .get(&payload.task_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Pending
    );
    let claimed = claim_all(&broker, "w2", 1).await;
    assert_eq!(claimed.len(), 1, "the task was not lost");
    assert_eq!(claimed[0].retries, 0);
}
