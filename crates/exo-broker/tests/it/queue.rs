//! The queue against a real redis-server: submit, claim, finish, retries,
//! fencing, cancel, dead letter.

use std::{collections::HashMap, time::Duration};

use crate::common::*;
use exo_broker::{CancelOutcome, Finished, Outcome, Submitted};
use exo_proto::{StreamEvent, TaskStatus};
use exo_testkit::TestRedis;
use fred::prelude::*;

#[tokio::test]
async fn submit_claim_complete_in_three_round_trips() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let payload = payload("hi");
    let task_id = payload.task_id.clone();

    let before = broker.round_trips();
    let handle = broker.client().submit(payload).await.unwrap();
    assert_eq!(handle.submitted(), Submitted::Created);
    let task = broker.client().get(&task_id).await.unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Pending,
        "queued tasks are listed as pending"
    );

    let mut claimer = broker.worker_session("w1").claimer();
    let start = broker.round_trips();
    let claim = claimer.claim(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(
        broker.round_trips() - start,
        1,
        "a claim under load is one round trip"
    );
    let claimed = &claim.tasks[0];
    assert_eq!(claimed.lease.attempt, 1);
    let running = broker.client().get(&task_id).await.unwrap().unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.worker_id.as_deref(), Some("w1"));
    assert!(running.started_at.is_some());

    let start = broker.round_trips();
    let finished = finish(
        &broker,
        claimed,
        Outcome::Completed { output: "hello" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert_eq!(finished, Finished::Completed);
    assert_eq!(broker.round_trips() - start, 1);
    // submit, claim, finish, plus the two reads in between.
    assert_eq!(broker.round_trips() - before, 5);

    let done = broker.client().get(&task_id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.output(), Some("hello"));
    assert!(done.completed_at.is_some());
    let keys = broker.keys();
    let length: u64 = client.xlen(keys.queue()).await.unwrap();
    assert_eq!(length, 0, "acknowledged entries are removed from the queue");
    let pending: Vec<Value> = client
        .custom(
            fred::cmd!("XPENDING"),
            vec![
                keys.queue().to_owned(),
                keys.group(),
                "-".into(),
                "+".into(),
                "10".into(),
            ],
        )
        .await
        .unwrap();
    assert!(pending.is_empty());
    let events = broker
        .client()
        .events(&task_id, None)
        .collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].event.is_terminal());
    claimer.close().await;
}

#[tokio::test]
async fn the_reference_wire_shapes_hold() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let keys = broker.keys().clone();
    let payload = payload("hi");
    broker.client().submit(payload.clone()).await.unwrap();

    let entries: Vec<(String, HashMap<String, String>)> =
        client.xrange(keys.queue(), "-", "+", None).await.unwrap();
    assert_eq!(
        entries[0].1.keys().collect::<Vec<_>>(),
        ["payload"],
        "the queue field is `payload`"
    );
    let decoded = exo_proto::TaskPayload::from_json(entries[0].1["payload"].as_bytes()).unwrap();
    assert_eq!(decoded.task_id, payload.task_id);
    let kind: String = client
        .custom(fred::cmd!("TYPE"), vec![keys.task_index()])
        .await
        .unwrap();
    assert_eq!(kind, "set", "the index stays a set for reference readers");
    let members: Vec<String> = client.smembers(keys.task_index()).await.unwrap();
    assert_eq!(members, std::slice::from_ref(&payload.task_id));
    let ttl: i64 = client.ttl(keys.task(&payload.task_id)).await.unwrap();
    assert!(ttl > 86_000, "task hashes live 24 h, got {ttl}");

    let claimed = claim_all(&broker, "w1", 1).await;
    let publisher = broker
        .worker_session("publisher")
        .publisher(&payload.task_id, Default::default());
    publisher
        .publish(&StreamEvent::Text(exo_proto::TextEvent {
            text: "x".into(),
            agent_name: "helper".into(),
        }))
        .await;
    let rest = publisher.close().await;
    finish(
        &broker,
        &claimed[0],
        Outcome::Completed { output: "x" },
        rest,
        &completed("helper"),
    )
    .await;
    let events: Vec<(String, HashMap<String, String>)> = client
        .xrange(keys.event_stream(&payload.task_id), "-", "+", None)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .all(|(_, fields)| fields.keys().collect::<Vec<_>>() == ["event"]),
        "the stream field is `event`"
    );
    let ttl: i64 = client
        .ttl(keys.event_stream(&payload.task_id))
        .await
        .unwrap();
    assert!(
        (3000..=3600).contains(&ttl),
        "event streams live 1 h, got {ttl}"
    );
}

#[tokio::test]
async fn a_reference_client_submission_is_claimed() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let raw_payload = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../exo-proto/test_data/tool_run_detailed.payload.raw"
    ))
    .unwrap();
    // The reference client only XADDs; there is no hash until a worker claims.
    let _: String = raw_xadd(&client, &broker, &raw_payload).await;
    let claimed = claim_all(&broker, "w1", 1).await;
    assert_eq!(claimed.len(), 1);
    let task = broker
        .client()
        .get("ac935881935045c2ac078d3b09511aa8")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.agent_name.as_deref(), Some("helper"));
    assert_eq!(task.created_at, Some(1795902648.9115512));
    assert_eq!(claimed[0].payload.messages.len(), 2);
}

#[tokio::test]
async fn two_workers_start_each_task_exactly_once() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut ids = Vec::new();
    for index in 0..200 {
        let payload = payload(&format!("task {index}"));
        ids.push(payload.task_id.clone());
        broker.client().submit(payload).await.unwrap();
    }
    let run = |worker: &'static str| {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut claimer = broker.worker_session(worker).claimer();
            let mut started = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let claim = claimer.claim(4, Duration::from_millis(50)).await.unwrap();
                if claim.tasks.is_empty() {
                    idle += 1;
                }
                for task in claim.tasks {
                    started.push(task.lease.task_id.clone());
                    finish(
                        &broker,
                        &task,
                        Outcome::Completed { output: worker },
                        vec![],
                        &completed("helper"),
                    )
                    .await;
                }
            }
            claimer.close().await;
            started
        })
    };
    let (first, second) = tokio::join!(run("w1"), run("w2"));
    let mut all: Vec<String> = first.unwrap().into_iter().chain(second.unwrap()).collect();
    all.sort();
    ids.sort();
    assert_eq!(all, ids, "every task started exactly once");
    let stats = broker.admin().queue_stats().await.unwrap();
    assert_eq!(
        (stats.stream_length, stats.pending, stats.depth()),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_cancel_before_claim_means_the_task_never_starts() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let doomed = payload("doomed");
    let kept = payload("kept");
    broker.client().submit(doomed.clone()).await.unwrap();
    broker.client().submit(kept.clone()).await.unwrap();
    assert_eq!(
        broker.client().cancel(&doomed.task_id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        broker.client().cancel(&doomed.task_id).await.unwrap(),
        CancelOutcome::AlreadyFinished(TaskStatus::Cancelled)
    );
    assert_eq!(
        broker.client().cancel("nope").await.unwrap(),
        CancelOutcome::NotFound
    );
    let claimed = claim_all(&broker, "w1", 2).await;
    assert_eq!(
        claimed
            .iter()
            .map(|task| task.lease.task_id.clone())
            .collect::<Vec<_>>(),
        [kept.task_id]
    );
    let events = broker
        .client()
        .events(&doomed.task_id, None)
        .collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{:?}", texts(&events));
    assert_eq!(
        events[0].event,
        cancelled_event("helper", "Task cancelled before it started")
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
    assert_eq!(
        broker.admin().queue_stats().await.unwrap().stream_length,
        1,
        "only the running task's entry is left"
    );
}

fn cancelled_event(agent: &str, message: &str) -> StreamEvent {
    StreamEvent::status(exo_proto::RunStatus::Cancelled, agent, message)
}

#[tokio::test]
async fn a_cancel_while_running_is_finished_by_the_worker() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let claimed = claim_all(&broker, "w1", 1).await;
    let mut listener = broker
        .worker_session("listener")
        .cancel_listener()
        .await
        .unwrap();
    assert_eq!(
        broker.client().cancel(&payload.task_id).await.unwrap(),
        CancelOutcome::Cancelling
    );
    let signalled = tokio::time::timeout(Duration::from_secs(2), listener.recv())
        .await
        .unwrap();
    assert_eq!(signalled.as_deref(), Some(payload.task_id.as_str()));
    listener.close().await;

    let refused = finish(
        &broker,
        &claimed[0],
        Outcome::Completed { output: "late" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert_eq!(refused, Finished::CancelRequested);
    let done = finish(
        &broker,
        &claimed[0],
        Outcome::Cancelled,
        vec![],
        &cancelled("helper"),
    )
    .await;
    assert_eq!(done, Finished::Cancelled);
    let again = finish(
        &broker,
        &claimed[0],
        Outcome::Cancelled,
        vec![],
        &cancelled("helper"),
    )
    .await;
    assert_eq!(again, Finished::Cancelled, "finishing twice is harmless");
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
    assert_eq!(broker.admin().queue_stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let mut statuses = Vec::new();
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let claimed = claim_all(&broker, "w1", 1).await;
        assert_eq!(
            claimed.len(),
            1,
            "attempt {} was not claimed",
            attempts.len() + 1
        );
        attempts.push(claimed[0].lease.attempt);
        let finished = finish(
            &broker,
            &claimed[0],
            Outcome::Failed {
                error: "provider down",
                retryable: true,
            },
            vec![],
            &errored("helper", "provider down"),
        )
        .await;
        let task = broker
            .client()
            .get(&payload.task_id)
            .await
            .unwrap()
            .unwrap();
        statuses.push((task.status, task.retries, finished.clone()));
    }
    assert_eq!(attempts, [1, 2, 3, 4]);
    let expected_retries = [Some(1), Some(2), Some(3), Some(3)];
    for (index, (status, retries, finished)) in statuses.iter().enumerate() {
        assert_eq!(*retries, expected_retries[index]);
        if index < 3 {
            assert_eq!(*status, TaskStatus::Retrying);
            assert!(
                matches!(finished, Finished::Retrying { retry, .. } if *retry == index as u32 + 1)
            );
        } else {
            assert_eq!(*status, TaskStatus::Failed);
            assert_eq!(*finished, Finished::Failed);
        }
    }
    let letters = broker.admin().dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].task_id, payload.task_id);
    assert_eq!(letters[0].reason, "provider down");
    assert_eq!(letters[0].attempts, 4);
    let events = broker
        .client()
        .events(&payload.task_id, None)
        .collect()
        .await
        .unwrap();
    let terminal: Vec<_> = events
        .iter()
        .filter(|item| item.event.is_terminal())
        .collect();
    assert_eq!(terminal.len(), 1, "{:?}", texts(&events));
    assert!(events.last().unwrap().event.is_terminal());
    assert_eq!(
        events.len(),
        4,
        "three retry notices and one terminal event"
    );

    // Re-drive: the task runs again with a fresh budget.
    let task_id = broker.admin().redrive(&letters[0].entry_id).await.unwrap();
    assert_eq!(task_id, payload.task_id);
    assert!(broker.admin().dead_letters(10).await.unwrap().is_empty());
    let claimed = claim_all(&broker, "w2", 1).await;
    assert_eq!(claimed.len(), 1);
    finish(
        &broker,
        &claimed[0],
        Outcome::Completed { output: "ok" },
        vec![],
        &completed("helper"),
    )
    .await;
    let task = broker
        .client()
        .get(&payload.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (task.status, task.output()),
        (TaskStatus::Completed, Some("ok"))
    );
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let claimed = claim_all(&broker, "w1", 1).await;
    let finished = finish(
        &broker,
        &claimed[0],
        Outcome::Failed {
            error: "bad config",
            retryable: false,
        },
        vec![],
        &errored("helper", "bad config"),
    )
    .await;
    assert_eq!(finished, Finished::Failed);
    assert_eq!(broker.admin().dead_letters(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_payload_may_set_its_retry_budget() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut payload = payload("x");
    payload.max_retries = Some(0);
    broker.client().submit(payload.clone()).await.unwrap();
    let claimed = claim_all(&broker, "w1", 1).await;
    assert_eq!(claimed[0].max_retries, 0);
    let finished = finish(
        &broker,
        &claimed[0],
        Outcome::Failed {
            error: "boom",
            retryable: true,
        },
        vec![],
        &errored("helper", "boom"),
    )
    .await;
    assert_eq!(finished, Finished::Failed);
}

#[tokio::test]
async fn undecodable_payloads_go_to_the_dead_letter_and_the_queue_keeps_serving() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let queue = broker.keys().queue().to_owned();
    let bad_role = r#"{"task_id": "badrole", "agent_config": {"name": "a"}, "messages": [{"role": "robot", "content": "x"}]}"#;
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("payload", "{not json", None, "not valid JSON"),
        ("payload", r#"{"input": "no id"}"#, None, "no task_id"),
        ("other", "x", None, "no `payload` field"),
        (
            "payload",
            bad_role,
            Some("badrole"),
            "unknown message role `robot`",
        ),
    ];
    for (field, value, _, _) in cases {
        let _: String = client
            .xadd(&queue, false, None, "*", vec![(*field, *value)])
            .await
            .unwrap();
    }
    let good = payload("fine");
    broker.client().submit(good.clone()).await.unwrap();

    let mut claimer = broker.worker_session("w1").claimer();
    let claim = claimer.claim(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(claim.tasks.len(), 1);
    assert_eq!(claim.tasks[0].lease.task_id, good.task_id);
    assert_eq!(claim.rejected.len(), cases.len());
    let letters = broker.admin().dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), cases.len());
    for (_, value, task_id, reason) in cases {
        let letter = letters
            .iter()
            .find(|letter| letter.reason.contains(reason))
            .unwrap_or_else(|| panic!("no dead letter says `{reason}`: {letters:?}"));
        if *value != "x" {
            assert_eq!(letter.payload, *value, "the raw bytes are kept");
        }
        if let Some(task_id) = task_id {
            let task = broker.client().get(task_id).await.unwrap().unwrap();
            assert_eq!(task.status, TaskStatus::Failed);
            assert!(task.error.unwrap().contains(reason));
            let events = broker
                .client()
                .events(task_id, None)
                .collect()
                .await
                .unwrap();
            assert!(events.last().unwrap().event.is_terminal());
        }
    }
    assert_eq!(
        broker.admin().queue_stats().await.unwrap().pending,
        1,
        "only the good task is pending"
    );
    claimer.close().await;
}

#[tokio::test]
async fn an_oversized_payload_is_refused_at_submit_and_at_claim() {
    let redis = TestRedis::new();
    let mut config = config(&redis);
    config.max_payload_bytes = 1000;
    let broker = exo_broker::Broker::connect(config).await.unwrap();
    let big = payload(&"x".repeat(2000));
    let error = broker.client().submit(big.clone()).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("exceeds the limit of 1000 bytes"),
        "{error}"
    );
    let client = raw(&redis).await;
    let _: String = raw_xadd(&client, &broker, &big.to_json()).await;
    let claim = broker
        .worker_session("w1")
        .claimer()
        .claim(1, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(claim.tasks.is_empty());
    assert!(claim.rejected[0].reason.contains("exceeds the limit"));
    assert_eq!(
        broker
            .client()
            .get(&big.task_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Failed
    );
}

#[tokio::test]
async fn idempotent_submits_return_the_first_task() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut first = payload("x");
    first.idempotency_key = Some("order-42".into());
    let mut second = payload("x");
    second.idempotency_key = Some("order-42".into());
    let one = broker.client().submit(first.clone()).await.unwrap();
    let two = broker.client().submit(second).await.unwrap();
    assert_eq!(two.task_id(), first.task_id);
    assert_eq!(
        (one.submitted(), two.submitted()),
        (Submitted::Created, Submitted::Duplicate)
    );
    assert_eq!(broker.admin().queue_stats().await.unwrap().stream_length, 1);
}

#[tokio::test]
async fn listing_filters_by_status_and_pages() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut ids = Vec::new();
    for index in 0..25 {
        let mut payload = payload(&index.to_string());
        payload.created_at = 1_000.0 + index as f64;
        ids.push(payload.task_id.clone());
        broker.client().submit(payload).await.unwrap();
    }
    for task in claim_all(&broker, "w1", 5).await {
        finish(
            &broker,
            &task,
            Outcome::Completed { output: "" },
            vec![],
            &completed("helper"),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = broker.client().list(None, 10, cursor).await.unwrap();
        seen.extend(page.tasks.iter().map(|task| task.task_id.clone()));
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let completed = broker
        .client()
        .list(Some(TaskStatus::Completed), 100, 0)
        .await
        .unwrap();
    assert_eq!(completed.tasks.len(), 5);
    let pending = broker
        .client()
        .list(Some(TaskStatus::Pending), 3, 0)
        .await
        .unwrap();
    assert_eq!(pending.tasks.len(), 3);
    assert!(
        pending
            .tasks
            .iter()
            .all(|task| task.status == TaskStatus::Pending)
    );
    let start = broker.round_trips();
    broker
        .client()
        .list(Some(TaskStatus::Pending), 20, 0)
        .await
        .unwrap();
    assert_eq!(broker.round_trips() - start, 1, "a page is one round trip");
}

#[tokio::test]
async fn a_repeated_submit_never_resets_a_task() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    let again = broker.client().submit(payload.clone()).await.unwrap();
    assert_eq!(again.submitted(), Submitted::Duplicate);
    assert_eq!(
        broker
            .client()
            .get(&payload.task_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Running
    );
    assert_eq!(
        broker.admin().queue_stats().await.unwrap().stream_length,
        1,
        "no second entry"
    );
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "" },
        vec![],
        &completed("helper"),
    )
    .await;
    broker.client().submit(payload.clone()).await.unwrap();
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
}

#[tokio::test]
async fn only_failed_tasks_can_be_redriven() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut payload = payload("x");
    payload.max_retries = Some(0);
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    finish(
        &broker,
        &task,
        Outcome::Failed {
            error: "boom",
            retryable: true,
        },
        vec![],
        &errored("helper", "boom"),
    )
    .await;
    let letter = broker.admin().dead_letters(1).await.unwrap().remove(0);
    broker.admin().redrive(&letter.entry_id).await.unwrap();
    // Dead-lettered again while it is pending: the copy cannot be re-driven.
    use fred::prelude::*;
    let client = raw(&redis).await;
    let _: String = client
        .xadd(
            broker.keys().dead_letter(),
            false,
            None,
            "*",
            vec![
                ("task_id", payload.task_id.as_str()),
                ("payload", payload.to_json().as_str()),
                ("reason", "copy"),
            ],
        )
        .await
        .unwrap();
    let copy = broker.admin().dead_letters(1).await.unwrap().remove(0);
    let error = broker.admin().redrive(&copy.entry_id).await.unwrap_err();
    assert!(error.to_string().contains("only failed tasks"), "{error}");
}

#[tokio::test]
async fn a_superseded_attempt_cannot_publish() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    let event = completed("helper").to_json();
    assert!(
        broker
            .worker_session("publisher")
            .publish(
                &payload.task_id,
                std::slice::from_ref(&event),
                exo_broker::PublishOptions {
                    fence: Some(&task.lease)
                }
            )
            .await
            .unwrap()
    );
    assert!(
        !broker
            .worker_session("publisher")
            .publish(
                &payload.task_id,
                std::slice::from_ref(&event),
                exo_broker::PublishOptions {
                    fence: Some(&exo_broker::Lease {
                        attempt: task.lease.attempt + 1,
                        ..task.lease.clone()
                    })
                }
            )
            .await
            .unwrap()
    );
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "" },
        vec![],
        &completed("helper"),
    )
    .await;
    assert!(
        !broker
            .worker_session("publisher")
            .publish(
                &payload.task_id,
                &[event],
                exo_broker::PublishOptions {
                    fence: Some(&task.lease)
                }
            )
            .await
            .unwrap(),
        "nothing after the terminal event"
    );
}

#[tokio::test]
async fn a_task_submitted_for_later_waits_then_runs_and_can_be_cancelled_meanwhile() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = broker.client();
    let due = exo_proto::time::now_seconds() + 1.5;
    let mut later = payload("later");
    later.run_at = Some(due);
    let later_id = later.task_id.clone();
    client.submit(later).await.unwrap();
    let mut cancelled = payload("never");
    cancelled.run_at = Some(due);
    let cancelled_id = cancelled.task_id.clone();
    client.submit(cancelled).await.unwrap();
    // In the past: at once.
    let mut now = payload("now");
    now.run_at = Some(1.0);
    let now_id = now.task_id.clone();
    client.submit(now).await.unwrap();

    let waiting = client.get(&later_id).await.unwrap().unwrap();
    assert_eq!(waiting.status, TaskStatus::Pending);
    assert!(
        (waiting.scheduled_for.unwrap() - due).abs() < 0.01,
        "{waiting:?}"
    );
    let claimed = claim_all(&broker, "w1", 3).await;
    let ids: Vec<&str> = claimed
        .iter()
        .map(|task| task.lease.task_id.as_str())
        .collect();
    assert_eq!(ids, [now_id.as_str()], "only the task due now runs now");
    assert_eq!(
        client.cancel(&cancelled_id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let ended = client.get(&cancelled_id).await.unwrap().unwrap();
    assert_eq!(ended.status, TaskStatus::Cancelled);
    assert_eq!(
        ended.scheduled_for, None,
        "a cancelled task is due for nothing"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let claimed = claim_all(&broker, "w1", 2).await;
    let ids: Vec<&str> = claimed
        .iter()
        .map(|task| task.lease.task_id.as_str())
        .collect();
    assert_eq!(ids, [later_id.as_str()], "the cancelled one never runs");
    let running = client.get(&later_id).await.unwrap().unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.scheduled_for, None);

    let mut too_late = payload("too late");
    too_late.run_at = Some(exo_proto::time::now_seconds() + 2.0 * 86_400.0);
    let error = client
        .submit(too_late)
        .await
        .expect_err("past the task TTL");
    assert!(error.to_string().contains("task TTL"), "{error}");
}

/// A claim reads a payload's fields from the task's hash, without decoding
/// the payload, only when the hash vouches for it: exo checked the payload
/// (`payload_checked`) and queued it in this very entry (`entry`). Each case
/// queues a payload asking for 2 retries, with a hash written by hand; the
/// retries the claim grants show which side it read (the hash has no
/// `max_retries`, so trusting it gives the default, 3).
#[tokio::test]
async fn a_claim_trusts_the_hash_only_for_its_own_checked_entry() {
    struct Case {
        name: &'static str,
        checked: bool,
        own_entry: bool,
        concurrency_key: bool,
        decoded: bool,
    }
    let cases = [
        Case {
            name: "checked, its own entry",
            checked: true,
            own_entry: true,
            concurrency_key: false,
            decoded: false,
        },
        Case {
            name: "not checked",
            checked: false,
            own_entry: true,
            concurrency_key: false,
            decoded: true,
        },
        Case {
            name: "another entry",
            checked: true,
            own_entry: false,
            concurrency_key: false,
            decoded: true,
        },
        Case {
            name: "a concurrency key",
            checked: true,
            own_entry: true,
            concurrency_key: true,
            decoded: true,
        },
    ];
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    for case in cases {
        let mut payload = payload(case.name);
        payload.max_retries = Some(2);
        if case.concurrency_key {
            payload.concurrency_key = Some("conversation-1".to_owned());
        }
        let entry = raw_xadd(&client, &broker, &payload.to_json()).await;
        let key = broker.keys().task(&payload.task_id);
        let mut fields = vec![
            ("task_id", payload.task_id.clone()),
            ("status", "pending".to_owned()),
            ("created_at", format!("{:.6}", payload.created_at)),
            ("agent_name", "helper".to_owned()),
            (
                "entry",
                if case.own_entry {
                    entry.clone()
                } else {
                    "1-1".to_owned()
                },
            ),
        ];
        if case.checked {
            fields.push(("payload_checked", "1".to_owned()));
        }
        if case.concurrency_key {
            fields.push(("concurrency_key", "conversation-1".to_owned()));
        }
        let _: () = client.hset(&key, fields).await.unwrap();

        let claimed = claim_all(&broker, "w1", 1).await;
        assert_eq!(claimed.len(), 1, "{}: claimed", case.name);
        assert_eq!(claimed[0].lease.task_id, payload.task_id, "{}", case.name);
        let expected = if case.decoded { 2 } else { 3 };
        assert_eq!(
            claimed[0].max_retries, expected,
            "{}: max retries",
            case.name
        );
        let hash: HashMap<String, String> = client.hgetall(&key).await.unwrap();
        assert_eq!(hash["status"], "running", "{}", case.name);
        assert_eq!(hash["max_retries"], expected.to_string(), "{}", case.name);
        assert_eq!(
            hash["payload_checked"], "1",
            "{}: checked from now on",
            case.name
        );
        finish(
            &broker,
            &claimed[0],
            Outcome::Completed { output: "ok" },
            vec![],
            &completed("helper"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_claim_refreshes_the_hash_ttl_only_for_a_task_older_than_ten_minutes() {
    // (task, its age at the claim in seconds, whether the claim sets the
    // whole TTL again). Every write since a fresh task's creation set the
    // whole TTL, so its claim leaves it; an older task's claim sets it. The
    // final write sets it for both.
    let cases = [("fresh", 0.0, false), ("an-hour-old", 3600.0, true)];
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    let keys = broker.keys().clone();
    let mut tasks = Vec::new();
    for (name, age, _) in cases {
        let task = payload(name);
        broker.client().submit(task.clone()).await.unwrap();
        let key = keys.task(&task.task_id);
        if age > 0.0 {
            let created: f64 = client.hget(&key, "created_at").await.unwrap();
            let _: () = client
                .hset(&key, ("created_at", format!("{:.3}", created - age)))
                .await
                .unwrap();
        }
        // As if most of the TTL had run down since the last write.
        let _: () = client.pexpire(&key, 100_000, None).await.unwrap();
        tasks.push(task);
    }
    let claimed = claim_all(&broker, "w1", cases.len()).await;
    assert_eq!(claimed.len(), cases.len());
    for ((name, _, refreshed), task) in cases.iter().zip(&tasks) {
        let ttl: i64 = client.pttl(keys.task(&task.task_id)).await.unwrap();
        if *refreshed {
            assert!(
                ttl > 86_000_000,
                "{name}: the claim set the whole TTL, got {ttl} ms"
            );
        } else {
            assert!(
                (0..=100_000).contains(&ttl),
                "{name}: the claim left the TTL, got {ttl} ms"
            );
        }
    }
    for task in &claimed {
        finish(
            &broker,
            task,
            Outcome::Completed { output: "x" },
            vec![],
            &completed("helper"),
        )
        .await;
        let ttl: i64 = client.pttl(keys.task(&task.lease.task_id)).await.unwrap();
        assert!(
            ttl > 86_000_000,
            "the final write set the whole TTL, got {ttl} ms"
        );
    }
}
