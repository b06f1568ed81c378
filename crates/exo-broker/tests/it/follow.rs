//! The multiplexed follower against a real redis-server: many streams over
//! a few connections, live and replayed, resumed, a slow consumer that holds
//! up nobody, streams that end without a terminal event, unknown tasks.

use std::time::Duration;

use crate::common::*;
use exo_broker::{Broker, FollowedEvent, Following, PublishOptions};
use exo_proto::{RunStatus, StreamEvent, TextEvent};
use exo_testkit::TestRedis;

fn text(index: usize) -> String {
    StreamEvent::Text(TextEvent {
        text: format!("chunk {index}"),
        agent_name: "helper".into(),
    })
    .to_json()
}

async fn publish(broker: &Broker, task_id: &str, events: &[String]) {
    broker
        .worker_session("publisher")
        .publish(task_id, events, PublishOptions::default())
        .await
        .unwrap();
}

async fn collect(mut following: Following) -> Vec<FollowedEvent> {
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(20), following.next())
        .await
        .expect("an event within 20 s")
    {
        items.push(item.unwrap());
    }
    items
}

fn texts(items: &[FollowedEvent]) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| match &item.event {
            StreamEvent::Text(text) => Some(text.text.clone()),
            _ => None,
        })
        .collect()
}

async fn eventually_following(follower: &exo_broker::Follower, count: usize) {
    for _ in 0..200 {
        if follower.following() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(follower.following(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_over_two_readers_lose_and_repeat_nothing() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let follower = broker.follower(2).await.unwrap();
    assert_eq!(follower.readers(), 2);
    let tasks: Vec<String> = (0..200)
        .map(|index| format!("{}-{index}", new_id()))
        .collect();
    // Half the streams have events before anyone follows them.
    for task_id in tasks.iter().step_by(2) {
        publish(&broker, task_id, &[text(0), text(1)]).await;
    }
    let mut readers = tokio::task::JoinSet::new();
    for task_id in &tasks {
        let following = follower.follow(task_id, None).await.unwrap();
        let task_id = task_id.clone();
        readers.spawn(async move { (task_id, collect(following).await) });
    }
    // The readers count what they follow as they take streams in.
    eventually_following(&follower, 200).await;
    for round in 2..12 {
        for task_id in &tasks {
            publish(&broker, task_id, &[text(round)]).await;
        }
    }
    for task_id in &tasks {
        publish(&broker, task_id, &[completed("helper").to_json()]).await;
    }
    let mut done = 0;
    while let Some(result) = readers.join_next().await {
        let (task_id, items) = result.unwrap();
        let index: usize = task_id.rsplit('-').next().unwrap().parse().unwrap();
        let first = if index.is_multiple_of(2) { 0 } else { 2 };
        let expected: Vec<String> = (first..12).map(|round| format!("chunk {round}")).collect();
        assert_eq!(texts(&items), expected, "{task_id}");
        assert!(items.last().unwrap().event.is_terminal());
        let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(ids, sorted, "{task_id}: no id twice");
        assert!(
            items
                .iter()
                .all(|item| !item.id.is_empty() && item.json.contains("\"type\""))
        );
        done += 1;
    }
    assert_eq!(done, 200);
    eventually_following(&follower, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_up_no_other_stream_and_loses_nothing() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let follower = broker.follower(1).await.unwrap();
    let (slow_id, quick_id) = (new_id(), new_id());
    let mut slow = follower.follow(&slow_id, None).await.unwrap();
    let quick = follower.follow(&quick_id, None).await.unwrap();
    // Far more than the slow consumer's buffer, which nobody reads yet.
    let batch: Vec<String> = (0..2000).map(text).collect();
    for chunk in batch.chunks(200) {
        publish(&broker, &slow_id, chunk).await;
    }
    publish(&broker, &slow_id, &[completed("helper").to_json()]).await;
    // The other stream on the same reader flows meanwhile.
    publish(
        &broker,
        &quick_id,
        &[text(0), completed("helper").to_json()],
    )
    .await;
    let quick = tokio::time::timeout(Duration::from_secs(5), collect(quick))
        .await
        .expect("the quick stream is not held up by the slow one");
    assert_eq!(texts(&quick), ["chunk 0"]);
    // Now the slow consumer reads everything, in order.
    let first = slow.next().await.unwrap().unwrap();
    let mut items = vec![first];
    items.extend(collect(slow).await);
    let expected: Vec<String> = (0..2000).map(|index| format!("chunk {index}")).collect();
    assert_eq!(texts(&items), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_an_id_latest_and_bad_ids() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let follower = broker.follower(1).await.unwrap();
    let task_id = new_id();
    publish(&broker, &task_id, &[text(0), text(1), text(2)]).await;
    let all: Vec<FollowedEvent> = {
        let mut following = follower.follow(&task_id, None).await.unwrap();
        let mut items = Vec::new();
        for _ in 0..3 {
            items.push(following.next().await.unwrap().unwrap());
        }
        items
    };
    // Three consumers of one stream at three positions, on one reader:
    // each gets exactly the entries after its own.
    let everything = follower.follow(&task_id, None).await.unwrap();
    let resumed = follower.follow(&task_id, Some(&all[0].id)).await.unwrap();
    let latest = follower.follow(&task_id, Some("$")).await.unwrap();
    publish(&broker, &task_id, &[text(3), completed("helper").to_json()]).await;
    assert_eq!(
        texts(&collect(resumed).await),
        ["chunk 1", "chunk 2", "chunk 3"]
    );
    assert_eq!(texts(&collect(latest).await), ["chunk 3"]);
    assert_eq!(
        texts(&collect(everything).await),
        ["chunk 0", "chunk 1", "chunk 2", "chunk 3"]
    );
    for bad in ["yesterday", "1-2-3", "-1"] {
        let error = follower.follow(&task_id, Some(bad)).await.unwrap_err();
        assert!(
            matches!(error, exo_broker::Error::Refused { .. }),
            "{bad}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_terminal_event_end_from_the_task_hash_and_unknown_tasks_fail() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let client = raw(&redis).await;
    use fred::prelude::*;
    let follower = broker.follower(1).await.unwrap();
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
    publish(&broker, &task_id, &[text(0)]).await;
    let started = std::time::Instant::now();
    let items = collect(follower.follow(&task_id, None).await.unwrap()).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].id, "", "made up from the hash");
    assert_eq!(
        items[1].event,
        StreamEvent::status(RunStatus::Completed, "helper", "Task completed")
    );

    let mut unknown = follower.follow("no-such-task", None).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(8), unknown.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, exo_broker::Error::NotFound(_)), "{error}");
    assert!(unknown.next().await.is_none());
}
