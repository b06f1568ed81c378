//! Event publishing and lossless reading against a real redis-server.

use std::time::Duration;

use crate::common::*;
use exo_broker::Outcome;
use exo_proto::{RunStatus, StreamEvent, TextEvent};
use exo_testkit::TestRedis;

fn text(index: usize) -> StreamEvent {
    StreamEvent::Text(TextEvent {
        text: format!("chunk {index}"),
        agent_name: "helper".into(),
    })
}

#[tokio::test]
async fn late_and_resuming_readers_see_every_event_in_order() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);

    let publisher = broker
        .worker_session("publisher")
        .publisher(&payload.task_id, Default::default());
    let before = broker.round_trips();
    for index in 0..100 {
        publisher.publish(&text(index)).await;
    }
    let rest = publisher.close().await;
    let publish_round_trips = broker.round_trips() - before;
    assert!(
        publish_round_trips < 100,
        "events are batched ({publish_round_trips} round trips for 100 events)"
    );
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "" },
        rest,
        &completed("helper"),
    )
    .await;

    let all = broker
        .client()
        .events(&payload.task_id, None)
        .collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 101);
    for (index, item) in all.iter().take(100).enumerate() {
        assert_eq!(item.event, text(index));
    }
    assert!(all[100].event.is_terminal());

    let resumed = broker
        .client()
        .events(&payload.task_id, Some(&all[49].id))
        .collect()
        .await
        .unwrap();
    assert_eq!(
        resumed,
        all[50..].to_vec(),
        "resuming after an id misses nothing"
    );
}

#[tokio::test]
async fn a_live_reader_gets_events_as_they_come_and_stops_at_the_end() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    let reader = {
        let broker = broker.clone();
        let task_id = payload.task_id.clone();
        tokio::spawn(async move { broker.client().events(&task_id, None).collect().await })
    };
    let publisher = broker
        .worker_session("publisher")
        .publisher(&payload.task_id, Default::default());
    for index in 0..5 {
        publisher.publish(&text(index)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let rest = publisher.close().await;
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "" },
        rest,
        &completed("helper"),
    )
    .await;
    let events = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 6);
    assert!(events[5].event.is_terminal());
}

#[tokio::test]
async fn a_reader_never_hangs_on_a_stream_without_a_terminal_event() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    use fred::prelude::*;
    // A task ended by a writer that sends no terminal event (as a reference
    // worker does for non-detailed runs).
    let task_id = new_id();
    let _: () = client
        .hset(
            broker.keys().task(&task_id),
            vec![
                ("task_id", task_id.as_str()),
                ("status", "completed"),
                ("agent_name", "helper"),
            ],
        )
        .await
        .unwrap();
    let _: String = client
        .xadd(
            broker.keys().event_stream(&task_id),
            false,
            None,
            "*",
            vec![("event", text(0).to_json())],
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let events = broker
        .client()
        .events(&task_id, None)
        .with_block(Duration::from_millis(100))
        .collect()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].id, "",
        "the terminal event is made up from the hash"
    );
    assert_eq!(
        events[1].event,
        StreamEvent::status(RunStatus::Completed, "helper", "Task completed")
    );

    let error = broker
        .client()
        .events("no-such-task", None)
        .collect()
        .await
        .unwrap_err();
    assert!(matches!(error, exo_broker::Error::NotFound(_)), "{error}");
}

#[tokio::test]
async fn the_handle_waits_for_the_result_without_polling() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let handle = broker.client().submit(payload("x")).await.unwrap();
    let waiter = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.result().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    let before = broker.round_trips();
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "done" },
        vec![],
        &completed("helper"),
    )
    .await;
    let result = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.output(), Some("done"));
    assert!(broker.round_trips() - before < 10, "no polling loop");
}
