//! Regression tests for the reliability review (F1–F21), each against a
//! real redis-server: poison entries, lost retries, trimmed entries,
//! stalls, duplicate worker ids, unbounded keys, bad bytes.

use std::time::Duration;

use crate::common::*;
use exo_broker::{Broker, Error, Finished, Outcome};
use exo_proto::{TaskPayload, TaskStatus};
use exo_testkit::TestRedis;
use fred::{
    prelude::*,
    types::{Value, streams::XCap},
};
use serde_json::json;

/// `XADD {queue} * payload <bytes>`, as any reference client (or attacker)
/// can.
async fn raw_xadd(client: &Client, broker: &Broker, payload: impl Into<Value>) -> String {
    client
        .custom(
            fred::cmd!("XADD"),
            vec![
                Value::from(broker.keys().queue()),
                Value::from("*"),
                Value::from("payload"),
                payload.into(),
            ],
        )
        .await
        .unwrap()
}

async fn dead_reasons(broker: &Broker) -> Vec<String> {
    broker
        .admin()
        .dead_letters(100)
        .await
        .unwrap()
        .into_iter()
        .map(|letter| letter.reason)
        .collect()
}

async fn status(broker: &Broker, task_id: &str) -> Option<TaskStatus> {
    broker
        .client()
        .get(task_id)
        .await
        .unwrap()
        .map(|task| task.status)
}

#[tokio::test]
async fn f1_reserved_and_malformed_ids_are_refused_at_submit() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    for bad in ["index", "timeline", "a b", "x/y", "", &"a".repeat(129)] {
        let payload = TaskPayload::new(bad, Default::default(), "x");
        let error = broker.client().submit(payload).await.err();
        assert!(
            matches!(error, Some(Error::Wire(_))),
            "`{bad}` was accepted: {error:?}"
        );
    }
    // The index is still a set and the queue still works.
    let client = raw(&redis).await;
    let kind: String = client
        .custom(fred::cmd!("TYPE"), vec![broker.keys().task_index()])
        .await
        .unwrap();
    assert_ne!(kind, "hash");
    broker.client().submit(payload("ok")).await.unwrap();
    assert_eq!(claim_all(&broker, "w1", 1).await.len(), 1);
}

#[tokio::test]
async fn f1_a_poison_id_on_the_queue_is_dead_lettered_and_stops_nothing() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(400);
    config.command_timeout = Duration::from_millis(2000);
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    let first = payload("first");
    broker.client().submit(first.clone()).await.unwrap();
    for poison in [
        json!({"task_id": "index"}),
        json!({"task_id": "timeline", "input": "x"}),
        json!({"task_id": "has space"}),
        json!({"task_id": 42}),
    ] {
        raw_xadd(&client, &broker, poison.to_string()).await;
    }
    // A key of the wrong type under a valid id: every write to it fails
    // with WRONGTYPE, inside the script.
    let wrong = new_id();
    let _: () = client
        .set(broker.keys().task(&wrong), "not a hash", None, None, false)
        .await
        .unwrap();
    raw_xadd(&client, &broker, json!({"task_id": wrong}).to_string()).await;
    let later = payload("later");
    broker.client().submit(later.clone()).await.unwrap();

    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(10, Duration::from_millis(100)).await.unwrap();
    claimer.close().await;
    let claimed: Vec<_> = claim.tasks.iter().map(|task| &task.lease.task_id).collect();
    assert_eq!(claimed, [&first.task_id, &later.task_id]);
    assert_eq!(claim.rejected.len(), 5, "{:?}", claim.rejected);
    let reasons = dead_reasons(&broker).await;
    assert_eq!(reasons.len(), 5);
    assert!(
        reasons
            .iter()
            .filter(|reason| reason.contains("not a valid task id"))
            .count()
            >= 3,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|reason| reason.contains("WRONGTYPE")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|reason| reason.contains("no task_id")));

    // Heartbeat and reap keep working.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker
        .worker_session("w1")
        .heartbeat(&health("w1"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    broker.worker_session("w2").reap(100).await.unwrap();
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!(stats.dead_letter, 5);
}

#[tokio::test]
async fn f3_a_promoted_retry_read_by_a_dead_claimer_is_not_lost() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    let first = claim_all(&broker, "w1", 1).await.remove(0);
    let finished = finish(
        &broker,
        &first,
        Outcome::Failed {
            error: "boom",
            retryable: true,
        },
        vec![],
        &errored("helper", "boom"),
    )
    .await;
    assert!(
        matches!(finished, Finished::Retrying { .. }),
        "{finished:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.worker_session("alive").reap(100).await.unwrap(); // promotes the retry
    // A blocking claimer reads the promoted entry and dies before marking it.
    read_without_marking(&client, &broker, "gone").await;
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(report.requeued, 1, "{report:?}");
    let again = claim_all(&broker, "w2", 1).await;
    assert_eq!(again.len(), 1, "the retry was lost: {report:?}");
    assert_eq!(again[0].retries, 1, "no retry charged for the dead claimer");
}

#[tokio::test]
async fn f3_a_handed_back_task_read_by_a_dead_claimer_is_not_lost() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    let first = claim_all(&broker, "w1", 1).await.remove(0);
    assert_eq!(
        broker
            .worker_session("releaser")
            .release(std::slice::from_ref(&first.lease))
            .await
            .unwrap(),
        1
    );
    read_without_marking(&client, &broker, "gone").await;
    broker.worker_session("alive").reap(100).await.unwrap();
    let again = claim_all(&broker, "w2", 1).await;
    assert_eq!(again.len(), 1, "the handed-back task was lost");
    assert_eq!(again[0].retries, 0);
}

#[tokio::test]
async fn f3_a_fresh_task_read_by_a_dead_claimer_costs_no_retry() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let mut task = payload("x");
    task.max_retries = Some(0);
    broker.client().submit(task.clone()).await.unwrap();
    read_without_marking(&client, &broker, "gone").await;
    broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(
        status(&broker, &task.task_id).await,
        Some(TaskStatus::Pending)
    );
    let again = claim_all(&broker, "w2", 1).await;
    assert_eq!(
        again.len(),
        1,
        "a task with no retries failed without running"
    );
}

#[tokio::test]
async fn f7_deep_payloads_are_refused_at_submit_and_dead_lettered_at_claim() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let mut deep = json!("leaf");
    for _ in 0..1001 {
        deep = json!([deep]);
    }
    let mut too_deep = payload("x");
    too_deep.metadata.insert("x".into(), deep.clone());
    assert!(matches!(
        broker.client().submit(too_deep.clone()).await,
        Err(Error::Wire(_))
    ));

    // The same payload on the queue from another writer: Lua cannot decode
    // it, reads its id off the text and fails its task.
    let text = serde_json::to_string(&too_deep).unwrap();
    raw_xadd(&client, &broker, text.clone()).await;
    // A second copy naming a task that another entry carries never touches
    // that task.
    let victim = payload("victim");
    broker.client().submit(victim.clone()).await.unwrap();
    let mut forged = too_deep.clone();
    forged.task_id = victim.task_id.clone();
    raw_xadd(&client, &broker, serde_json::to_string(&forged).unwrap()).await;

    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(10, Duration::from_millis(100)).await.unwrap();
    claimer.close().await;
    assert_eq!(claim.rejected.len(), 2, "{:?}", claim.rejected);
    assert_eq!(claim.tasks.len(), 1);
    assert_eq!(claim.tasks[0].lease.task_id, victim.task_id);
    let failed = broker
        .client()
        .get(&too_deep.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(failed.error.unwrap().contains("not valid JSON"));
    let events = broker
        .client()
        .events(&too_deep.task_id, None)
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
}

#[tokio::test]
async fn f8_tasks_whose_entries_were_trimmed_end_with_the_reason() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(300);
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    let tasks: Vec<_> = (0..3).map(|_| payload("x")).collect();
    for task in &tasks {
        broker.client().submit(task.clone()).await.unwrap();
    }
    assert_eq!(claim_all(&broker, "w1", 1).await.len(), 1);
    let _: Value = client
        .xtrim(
            broker.keys().queue(),
            XCap::try_from(("MAXLEN", "=", 0)).unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut reconciled = 0;
    for _ in 0..3 {
        reconciled += broker
            .worker_session("alive")
            .reap(100)
            .await
            .unwrap()
            .reconciled;
    }
    assert_eq!(reconciled, 3);
    for task in &tasks {
        let state = broker.client().get(&task.task_id).await.unwrap().unwrap();
        assert_eq!(state.status, TaskStatus::Failed, "{}", task.task_id);
        assert!(state.error.unwrap().contains("queue entry was removed"));
    }
}

#[tokio::test]
async fn f9_an_oversized_entry_is_dead_lettered_without_its_bulk() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.max_payload_bytes = 100 * 1024;
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    let mut big = payload(&"x".repeat(200 * 1024));
    big.created_at = 1.0;
    raw_xadd(&client, &broker, serde_json::to_string(&big).unwrap()).await;
    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(10, Duration::from_millis(100)).await.unwrap();
    claimer.close().await;
    assert_eq!(claim.rejected.len(), 1);
    assert!(claim.rejected[0].reason.contains("exceeds the limit"));
    let letter = broker.admin().dead_letters(1).await.unwrap().remove(0);
    assert_eq!(letter.payload.len(), 65536);
    assert_eq!(letter.task_id, big.task_id);
    assert_eq!(
        status(&broker, &big.task_id).await,
        Some(TaskStatus::Failed)
    );
}

#[tokio::test]
async fn f10_payload_budgets_are_capped_and_long_runs_keep_their_hash() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.task_ttl = Duration::from_secs(2);
    config.max_retries_cap = 5;
    let broker = Broker::connect(config).await.unwrap();
    let mut task = payload("x");
    task.max_retries = Some(1_000_000_000);
    broker.client().submit(task.clone()).await.unwrap();
    let claimed = claim_all(&broker, "w1", 1).await.remove(0);
    assert_eq!(claimed.max_retries, 5);
    // Renewed for 3 s, longer than the task TTL.
    for _ in 0..10 {
        let report = broker
            .worker_session("w1")
            .heartbeat(
                &health("w1"),
                Duration::from_secs(30),
                std::slice::from_ref(&claimed.lease),
            )
            .await
            .unwrap();
        assert!(report.lost.is_empty(), "the running task's hash expired");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let finished = finish(
        &broker,
        &claimed,
        Outcome::Completed { output: "done" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert_eq!(finished, Finished::Completed);
}

#[tokio::test]
async fn f11_a_second_process_with_the_same_worker_id_is_refused() {
    let redis = TestRedis::new();
    let first = broker(&redis).await;
    let second = broker(&redis).await;
    first
        .worker_session("same")
        .heartbeat(&health("same"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    let refused = second
        .worker_session("same")
        .heartbeat(&health("same"), Duration::from_secs(30), &[])
        .await;
    assert!(
        matches!(refused, Err(Error::WorkerIdInUse { .. })),
        "{refused:?}"
    );
    // The second one's clean stop leaves the first one's heartbeat alone.
    second.worker_session("same").deregister().await.unwrap();
    assert!(first.admin().worker("same").await.unwrap().is_some());
    first.worker_session("same").deregister().await.unwrap();
    assert!(first.admin().worker("same").await.unwrap().is_none());
}

#[tokio::test]
async fn f12_idle_dead_consumers_and_expired_index_ids_are_removed() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(300);
    config.task_ttl = Duration::from_secs(1);
    config.max_payload_bytes = 100;
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    // 20 workers killed while idle leave their consumers behind.
    for index in 0..20 {
        read_without_marking(&client, &broker, &format!("ghost-{index}")).await;
    }
    // 20 payloads too large to run, with ids: rejected into failed hashes.
    for _ in 0..20 {
        let task = payload(&"y".repeat(200));
        raw_xadd(&client, &broker, serde_json::to_string(&task).unwrap()).await;
    }
    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(50, Duration::from_millis(100)).await.unwrap();
    claimer.close().await;
    assert_eq!(claim.rejected.len(), 20);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    broker.worker_session("w1").reap(100).await.unwrap();
    let consumers: Vec<Value> = client
        .custom(
            fred::cmd!("XINFO"),
            vec![
                "CONSUMERS".to_owned(),
                broker.keys().queue().to_owned(),
                broker.keys().group(),
            ],
        )
        .await
        .unwrap();
    assert!(consumers.len() <= 1, "{} consumers left", consumers.len());
    let members: u64 = client.scard(broker.keys().task_index()).await.unwrap();
    assert_eq!(members, 0);
}

#[tokio::test]
async fn f13_nothing_is_appended_after_the_terminal_event() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    broker.client().cancel(&task.task_id).await.unwrap();
    broker
        .worker_session("publisher")
        .publish(
            &task.task_id,
            &[r#"{"type":"text","text":"late"}"#.to_owned()],
            exo_broker::PublishOptions::default(),
        )
        .await
        .unwrap();
    let events = broker
        .client()
        .events(&task.task_id, None)
        .collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].event.is_terminal());
}

#[tokio::test]
async fn f15_an_undecodable_event_is_skipped_not_fatal() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    let stream = broker.keys().event_stream(&task.task_id);
    for event in [r#"{"type":"citation"}"#, "not json"] {
        let _: Value = client
            .custom(
                fred::cmd!("XADD"),
                vec![stream.as_str(), "*", "event", event],
            )
            .await
            .unwrap();
    }
    broker.client().cancel(&task.task_id).await.unwrap();
    let mut events = broker.client().events(&task.task_id, None);
    let mut seen = Vec::new();
    while let Some(item) = events.next().await {
        seen.push(item.unwrap());
    }
    assert_eq!(events.skipped(), 2);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].event.is_terminal());
    assert_eq!(
        broker
            .client()
            .handle(&task.task_id)
            .result()
            .await
            .unwrap()
            .status,
        TaskStatus::Cancelled
    );
}

#[tokio::test]
async fn f16_a_payload_that_is_not_utf8_is_refused_with_its_bytes_kept() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    // Replace the queued entry with one whose input holds a 0xff byte.
    let _: Value = client
        .xtrim(
            broker.keys().queue(),
            XCap::try_from(("MAXLEN", "=", 0)).unwrap(),
        )
        .await
        .unwrap();
    let text = serde_json::to_string(&task).unwrap();
    let mut bytes = text
        .replace("\"input\":\"x\"", "\"input\":\"x\u{1}\"")
        .into_bytes();
    let at = bytes.iter().position(|byte| *byte == 1).unwrap();
    bytes[at] = 0xff;
    let entry = raw_xadd(&client, &broker, Value::Bytes(bytes.clone().into())).await;
    let _: () = client
        .hset(broker.keys().task(&task.task_id), ("entry", entry.as_str()))
        .await
        .unwrap();
    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(10, Duration::from_millis(100)).await.unwrap();
    claimer.close().await;
    assert!(claim.tasks.is_empty());
    assert_eq!(claim.rejected.len(), 1);
    assert!(claim.rejected[0].reason.contains("UTF-8"));
    let state = broker.client().get(&task.task_id).await.unwrap().unwrap();
    assert_eq!(state.status, TaskStatus::Failed);
    let letters: Value = client
        .xrevrange(broker.keys().dead_letter(), "+", "-", Some(1))
        .await
        .unwrap();
    let stored = format!("{letters:?}");
    assert!(
        stored.contains("x\\xff"),
        "the dead letter does not hold the original bytes: {stored}"
    );
}

#[tokio::test]
async fn f18_timestamps_come_from_the_server_clock() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    let client = raw(&redis).await;
    let time: Vec<String> = client
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    let server_now: f64 = time[0].parse().unwrap();
    let created: String = client
        .hget(broker.keys().task(&task.task_id), "created_at")
        .await
        .unwrap();
    let created: f64 = created.parse().unwrap();
    assert!(
        (server_now - created).abs() < 5.0,
        "{created} vs {server_now}"
    );
}

#[tokio::test]
async fn f2_a_redis_stall_longer_than_the_ttl_reclaims_nothing() {
    let mut redis = TestRedis::dedicated();
    let mut config = config(&redis);
    config.heartbeat_ttl = Duration::from_secs(2);
    config.command_timeout = Duration::from_millis(500);
    let broker = Broker::connect(config).await.unwrap();
    let mut task = payload("x");
    task.max_retries = Some(0);
    broker.client().submit(task.clone()).await.unwrap();
    broker
        .worker_session("w1")
        .heartbeat(&health("w1"), Duration::from_secs(2), &[])
        .await
        .unwrap();
    let claimed = claim_all(&broker, "w1", 1).await.remove(0);
    broker
        .worker_session("w1")
        .heartbeat(
            &health("w1"),
            Duration::from_secs(2),
            std::slice::from_ref(&claimed.lease),
        )
        .await
        .unwrap();

    let server = redis.server().unwrap();
    server.freeze();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.thaw();
    // Whoever's write lands first after the stall, the reaper's pass sees
    // every heartbeat expired; it must take nothing.
    let mut report = None;
    for _ in 0..20 {
        match broker.worker_session("w2").reap(100).await {
            Ok(pass) => {
                report = Some(pass);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let report = report.expect("Redis answers again");
    assert!(report.quiet, "{report:?}");
    assert_eq!(report.requeued + report.failed, 0);
    let renewed = broker
        .worker_session("w1")
        .heartbeat(
            &health("w1"),
            Duration::from_secs(2),
            std::slice::from_ref(&claimed.lease),
        )
        .await
        .unwrap();
    assert!(renewed.lost.is_empty());
    assert_eq!(
        finish(
            &broker,
            &claimed,
            Outcome::Completed { output: "ok" },
            vec![],
            &completed("helper")
        )
        .await,
        Finished::Completed
    );
}

#[tokio::test]
async fn f4_a_claim_lost_with_redis_data_never_fences_in_two_workers() {
    // Redis loses the claim (emulated: a snapshot from before it, then a
    // crash), so the next claim hands out the same attempt number. The
    // claim token still tells the two holders apart.
    let mut redis = TestRedis::dedicated();
    let broker_a = broker(&redis).await;
    let task = payload("x");
    broker_a.client().submit(task.clone()).await.unwrap();
    let raw_client = raw(&redis).await;
    let _: Value = raw_client
        .custom(fred::cmd!("SAVE"), Vec::<String>::new())
        .await
        .unwrap();
    let held_by_a = claim_all(&broker_a, "w1", 1).await.remove(0);
    let text = |body: &str| format!(r#"{{"type":"text","text":"{body}"}}"#);
    assert!(
        broker_a
            .worker_session("publisher")
            .publish(
                &task.task_id,
                &[text("A")],
                exo_broker::PublishOptions {
                    fence: Some(&held_by_a.lease)
                }
            )
            .await
            .unwrap()
    );
    let server = redis.server().unwrap();
    server.kill();
    server.restart();

    let broker_b = broker(&redis).await;
    let held_by_b = claim_all(&broker_b, "w2", 1).await.remove(0);
    assert_eq!(held_by_b.lease.attempt, held_by_a.lease.attempt);
    assert_ne!(held_by_b.lease.token, held_by_a.lease.token);
    // A (reconnected) is refused everywhere; B goes on.
    let mut refused = None;
    for _ in 0..50 {
        match broker_a
            .worker_session("publisher")
            .publish(
                &task.task_id,
                &[text("A2")],
                exo_broker::PublishOptions {
                    fence: Some(&held_by_a.lease),
                },
            )
            .await
        {
            Ok(accepted) => {
                refused = Some(!accepted);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        refused,
        Some(true),
        "the first holder's events were accepted"
    );
    let report = broker_a
        .worker_session("w1")
        .heartbeat(
            &health("w1"),
            Duration::from_secs(30),
            std::slice::from_ref(&held_by_a.lease),
        )
        .await
        .unwrap();
    assert_eq!(report.lost, std::slice::from_ref(&task.task_id));
    let late = finish(
        &broker_a,
        &held_by_a,
        Outcome::Completed { output: "A" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert!(matches!(late, Finished::Stale { .. }), "{late:?}");
    assert!(
        broker_b
            .worker_session("publisher")
            .publish(
                &task.task_id,
                &[text("B")],
                exo_broker::PublishOptions {
                    fence: Some(&held_by_b.lease)
                }
            )
            .await
            .unwrap()
    );
    assert_eq!(
        finish(
            &broker_b,
            &held_by_b,
            Outcome::Completed { output: "B" },
            vec![],
            &completed("helper")
        )
        .await,
        Finished::Completed
    );
    let state = broker_b.client().get(&task.task_id).await.unwrap().unwrap();
    assert_eq!(state.output(), Some("B"));
}

#[tokio::test]
async fn f8_reconciliation_never_ends_a_task_that_something_carries() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.lease = Duration::from_millis(300);
    let broker = Broker::connect(config).await.unwrap();
    let client = raw(&redis).await;
    // A task re-queued by a writer that does not keep `entry` (a reference
    // worker, an older exo): the entry its hash names is gone, a copy
    // carries it.
    let requeued = payload("requeued");
    broker.client().submit(requeued.clone()).await.unwrap();
    let _: Value = client
        .xtrim(
            broker.keys().queue(),
            XCap::try_from(("MAXLEN", "=", 0)).unwrap(),
        )
        .await
        .unwrap();
    raw_xadd(&client, &broker, serde_json::to_string(&requeued).unwrap()).await;
    let _: () = client
        .hset(
            broker.keys().task(&requeued.task_id),
            ("status", "retrying"),
        )
        .await
        .unwrap();
    // A running task of a live worker whose entry was trimmed.
    let running = payload("running");
    broker.client().submit(running.clone()).await.unwrap();
    broker
        .worker_session("alive")
        .heartbeat(&health("alive"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    let mut claimer = broker.worker_session("alive").claimer();
    let mut held = None;
    for _ in 0..5 {
        let claim = claimer.claim(1, Duration::from_millis(100)).await.unwrap();
        if let Some(task) = claim
            .tasks
            .into_iter()
            .find(|task| task.lease.task_id == running.task_id)
        {
            held = Some(task);
            break;
        }
    }
    claimer.close().await;
    let held = held.expect("the running task was claimed");
    let entry = held.lease.entry_id.clone();
    let _: Value = client
        .xdel(broker.keys().queue(), entry.as_str())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker
        .worker_session("alive")
        .heartbeat(&health("alive"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    let mut reconciled = 0;
    for _ in 0..3 {
        reconciled += broker
            .worker_session("reaper")
            .reap(100)
            .await
            .unwrap()
            .reconciled;
    }
    assert_eq!(reconciled, 0);
    assert_eq!(
        status(&broker, &running.task_id).await,
        Some(TaskStatus::Running)
    );
    let again = claim_all(&broker, "w2", 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.task_id, requeued.task_id);
}

#[tokio::test]
async fn f1_a_passing_error_leaves_entries_where_they_are() {
    // Redis refuses writes (OOM) while the reaper handles a stuck entry:
    // the pass fails, and the entry is neither dead-lettered nor deleted.
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let task = payload("x");
    broker.client().submit(task.clone()).await.unwrap();
    read_without_marking(&client, &broker, "gone").await;
    let set = |value: &'static str| {
        let client = client.clone();
        async move {
            let _: Value = client
                .custom(fred::cmd!("CONFIG"), vec!["SET", "maxmemory", value])
                .await
                .unwrap();
        }
    };
    set("1").await;
    let refused = broker.worker_session("alive").reap(100).await;
    set("0").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(broker.admin().queue_stats().await.unwrap().dead_letter, 0);
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(report.requeued, 1, "{report:?}");
    assert_eq!(claim_all(&broker, "w2", 1).await.len(), 1);
}

#[tokio::test]
async fn f1_poison_read_by_a_dead_claimer_is_dead_lettered_by_the_reaper() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    raw_xadd(&client, &broker, json!({"task_id": "index"}).to_string()).await;
    read_without_marking(&client, &broker, "gone").await;
    let report = broker.worker_session("alive").reap(100).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let reasons = dead_reasons(&broker).await;
    assert!(reasons[0].contains("not a valid task id"), "{reasons:?}");
    assert_eq!(broker.admin().queue_stats().await.unwrap().pending, 0);
}
