//! Final writes of several slots in one call ([`exo_broker::Finisher`]):
//! every attempt is answered on its own, the claimed tasks go to the slots
//! that asked, the queue and the active set are left clean, the worker's
//! counters count every ending and its busy slots follow, and an attempt
//! that meets an error fails alone.

use std::{collections::BTreeSet, time::Duration};

use crate::common::*;
use exo_broker::{ClaimedTask, FinishOptions, Finished, Outcome, RedisCode};
use exo_testkit::TestRedis;
use fred::prelude::*;
use futures::future::join_all;

const WORKER: &str = "w-batch";

async fn finish_all(
    finisher: &exo_broker::Finisher,
    tasks: &[ClaimedTask],
    next: usize,
) -> Vec<exo_broker::Result<(Finished, exo_broker::Claim)>> {
    let terminal = completed("helper");
    join_all(tasks.iter().map(|task| {
        finisher.finish_then_claim(
            task,
            Outcome::Completed { output: "done" },
            vec![],
            &terminal,
            FinishOptions::default(),
            next,
        )
    }))
    .await
}

/// Every task of `task_ids` completed, with one terminal event; the queue
/// and the active set are empty.
async fn completed_once_and_queue_clean<'a>(
    broker: &exo_broker::Broker,
    raw: &fred::prelude::Client,
    task_ids: impl IntoIterator<Item = &'a String>,
) {
    for task_id in task_ids {
        let status: Option<String> = raw
            .hget(broker.keys().task(task_id), "status")
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("completed"), "task {task_id}");
        let events: u64 = raw.xlen(broker.keys().event_stream(task_id)).await.unwrap();
        assert_eq!(events, 1, "task {task_id}");
    }
    let queued: u64 = raw.xlen(broker.keys().queue()).await.unwrap();
    assert_eq!(queued, 0);
    let active: u64 = raw.zcard(broker.keys().active()).await.unwrap();
    assert_eq!(active, 0);
}

#[tokio::test]
async fn attempts_that_end_together_share_calls_and_each_gets_its_next_task() {
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    let session = broker.worker_session(WORKER);
    let idle = exo_proto::WorkerHealth {
        active_tasks: Some(0),
        ..health(WORKER)
    };
    session
        .heartbeat(&idle, Duration::from_secs(30), &[])
        .await
        .unwrap();
    let slots = 16;
    let mut submitted = BTreeSet::new();
    for index in 0..slots * 2 + 3 {
        let task = payload(&index.to_string());
        submitted.insert(task.task_id.clone());
        broker.client().submit(task).await.unwrap();
    }
    let first = claim_all(&broker, WORKER, slots).await;
    assert_eq!(first.len(), slots);
    // The worker's hash shows its busy slots before its next heartbeat.
    let busy = async || -> Option<u64> {
        raw.hget(broker.keys().worker(WORKER), "active_tasks")
            .await
            .unwrap()
    };
    assert_eq!(busy().await, Some(slots as u64));
    let finisher = session.finisher();

    // Every slot ends at once and asks for its next task.
    let before = broker.round_trips();
    let ended = finish_all(&finisher, &first, 1).await;
    let calls = broker.round_trips() - before;
    assert!(
        calls < slots as u64,
        "{slots} final writes took {calls} round trips; they were not sent together"
    );
    let mut second = Vec::new();
    for result in ended {
        let (finished, claim) = result.unwrap();
        assert_eq!(finished, Finished::Completed);
        assert!(
            claim.tasks.len() <= 1,
            "a slot got {} tasks",
            claim.tasks.len()
        );
        second.extend(claim.tasks);
    }
    // Each slot that asked got a task of its own, never one that ran.
    assert_eq!(second.len(), slots);
    let first_ids: BTreeSet<_> = first.iter().map(|task| &task.lease.task_id).collect();
    let second_ids: BTreeSet<_> = second.iter().map(|task| &task.lease.task_id).collect();
    assert_eq!(second_ids.len(), slots);
    assert!(first_ids.is_disjoint(&second_ids));

    // The second wave finds only three tasks left: three slots get one,
    // the rest none.
    let third: Vec<ClaimedTask> = finish_all(&finisher, &second, 1)
        .await
        .into_iter()
        .flat_map(|result| {
            let (finished, claim) = result.unwrap();
            assert_eq!(finished, Finished::Completed);
            claim.tasks
        })
        .collect();
    assert_eq!(third.len(), 3);
    assert_eq!(busy().await, Some(3));
    for result in finish_all(&finisher, &third, 1).await {
        let (finished, claim) = result.unwrap();
        assert_eq!(finished, Finished::Completed);
        assert!(claim.tasks.is_empty());
    }

    // Every task completed once, with one terminal event; the queue, its
    // pending list and the active set are empty.
    completed_once_and_queue_clean(&broker, &raw, &submitted).await;
    let pending: Value = raw
        .xpending(broker.keys().queue(), broker.keys().group(), ())
        .await
        .unwrap();
    let pending = pending.into_array();
    assert_eq!(pending.first().and_then(Value::as_u64), Some(0));
    // The worker's hash counted every ending.
    let processed: Option<u64> = raw
        .hget(broker.keys().worker(WORKER), "tasks_processed")
        .await
        .unwrap();
    assert_eq!(processed, Some(submitted.len() as u64));
    assert_eq!(busy().await, Some(0));
}

#[tokio::test]
async fn an_attempt_that_meets_an_error_fails_alone() {
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    for index in 0..3 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let tasks = claim_all(&broker, WORKER, 3).await;
    assert_eq!(tasks.len(), 3);
    // The middle task's hash is replaced by a key of another type.
    let broken = &tasks[1].lease.task_id;
    let _: () = raw.del(broker.keys().task(broken)).await.unwrap();
    let _: () = raw
        .set(broker.keys().task(broken), "not a hash", None, None, false)
        .await
        .unwrap();
    let finisher = broker.worker_session(WORKER).finisher();
    let ended = finish_all(&finisher, &tasks, 1).await;
    for (task, result) in tasks.iter().zip(ended) {
        if &task.lease.task_id == broken {
            let error = result.expect_err("a hash of the wrong type cannot be finished");
            assert_eq!(error.redis_code(), Some(&RedisCode::WrongType), "{error}");
        } else {
            let (finished, claim) = result.unwrap();
            assert_eq!(finished, Finished::Completed);
            assert!(claim.tasks.is_empty());
            let status: Option<String> = raw
                .hget(broker.keys().task(&task.lease.task_id), "status")
                .await
                .unwrap();
            assert_eq!(status.as_deref(), Some("completed"));
        }
    }
    // The others' entries are acknowledged; the broken one's stays pending
    // for the reaper.
    let pending: Value = raw
        .xpending(broker.keys().queue(), broker.keys().group(), ())
        .await
        .unwrap();
    assert_eq!(
        pending.into_array().first().and_then(Value::as_u64),
        Some(1)
    );
}

#[tokio::test]
async fn usage_of_attempts_that_end_together_is_counted_for_each() {
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    for index in 0..5 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let tasks = claim_all(&broker, WORKER, 5).await;
    assert_eq!(tasks.len(), 5);
    let finisher = broker.worker_session(WORKER).finisher();
    let terminal = completed("helper");
    let spent = vec![exo_broker::ModelSpend {
        model: "openai:gpt-4o".into(),
        usage: exo_proto::Usage {
            input_tokens: 10,
            output_tokens: 3,
            ..Default::default()
        },
        calls: 1,
        cost_micros: 7,
    }];
    let ended = join_all(tasks.iter().map(|task| {
        finisher.finish_then_claim(
            task,
            Outcome::Completed { output: "done" },
            vec![],
            &terminal,
            FinishOptions {
                spent: spent.clone(),
                ..FinishOptions::default()
            },
            0,
        )
    }))
    .await;
    for (task, result) in tasks.iter().zip(ended) {
        assert_eq!(result.unwrap().0, Finished::Completed);
        let input: Option<String> = raw
            .hget(
                broker.keys().task(&task.lease.task_id),
                "usage_input_tokens",
            )
            .await
            .unwrap();
        assert_eq!(input.as_deref(), Some("10"));
    }
    let report = broker
        .admin()
        .usage(Duration::from_secs(3600), exo_broker::UsageDimension::Model)
        .await
        .unwrap();
    let rows: Vec<_> = report
        .rows
        .into_iter()
        .map(|row| {
            (
                row.name,
                row.input_tokens,
                row.output_tokens,
                row.calls,
                row.cost_micros,
            )
        })
        .collect();
    assert_eq!(rows, vec![("openai:gpt-4o".to_owned(), 50, 15, 5, 35)]);
}

#[tokio::test]
async fn a_worker_hash_redis_refuses_fails_no_final_write() {
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    for index in 0..3 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let tasks = claim_all(&broker, WORKER, 3).await;
    assert_eq!(tasks.len(), 3);
    // The worker's heartbeat hash is a key of another type: counting the
    // endings there fails, the endings stand.
    let _: () = raw
        .set(
            broker.keys().worker(WORKER),
            "not a hash",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let finisher = broker.worker_session(WORKER).finisher();
    for result in finish_all(&finisher, &tasks, 1).await {
        assert_eq!(result.unwrap().0, Finished::Completed);
    }
    for task in &tasks {
        let status: Option<String> = raw
            .hget(broker.keys().task(&task.lease.task_id), "status")
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("completed"));
    }
    let pending: Value = raw
        .xpending(broker.keys().queue(), broker.keys().group(), ())
        .await
        .unwrap();
    assert_eq!(
        pending.into_array().first().and_then(Value::as_u64),
        Some(0)
    );
}

#[tokio::test]
async fn writes_that_pile_up_behind_a_call_go_in_a_second_one() {
    let mut redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    let slots = 21;
    for index in 0..slots + 4 {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let first = claim_all(&broker, WORKER, slots).await;
    assert_eq!(first.len(), slots);
    let finisher = broker.worker_session(WORKER).finisher();

    // One slot's write goes out alone and hangs at a frozen server; the
    // other twenty pile up behind it, and a second call carries them while
    // the first is still under way. Each slot asks for its next task.
    let server = redis.server().expect("a dedicated server");
    let pid = server.pid().expect("a running server");
    server.freeze();
    let before = broker.round_trips();
    let lone = finish_all(&finisher, &first[..1], 1);
    let piled = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        finish_all(&finisher, &first[1..], 1).await
    };
    let thaw = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()
            .unwrap();
    };
    let (lone, piled, ()) = tokio::join!(lone, piled, thaw);
    let calls = broker.round_trips() - before;
    assert!(calls <= 3, "21 final writes took {calls} round trips");

    // Every write was answered, and the four tasks left went to four
    // slots, one each, none of them a task that ran.
    let mut next = Vec::new();
    for result in lone.into_iter().chain(piled) {
        let (finished, claim) = result.unwrap();
        assert_eq!(finished, Finished::Completed);
        assert!(claim.tasks.len() <= 1);
        next.extend(claim.tasks);
    }
    assert_eq!(next.len(), 4);
    let ran: BTreeSet<_> = first.iter().map(|task| &task.lease.task_id).collect();
    assert!(next.iter().all(|task| !ran.contains(&task.lease.task_id)));
    for result in finish_all(&finisher, &next, 0).await {
        assert_eq!(result.unwrap().0, Finished::Completed);
    }
    let task_ids: Vec<String> = first
        .iter()
        .chain(&next)
        .map(|task| task.lease.task_id.clone())
        .collect();
    completed_once_and_queue_clean(&broker, &raw, &task_ids).await;
}
