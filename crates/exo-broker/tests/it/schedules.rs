//! Cron schedules on a real Redis: many callers firing the same due tick
//! make one task; ticks missed during an outage fire once, as the latest;
//! put, list and remove.

use std::time::Duration;

use exo_proto::TaskPayload;
use exo_testkit::TestRedis;
use fred::prelude::*;
use serde_json::json;

use crate::common::{broker, raw};

fn template() -> TaskPayload {
    let config = json!({"name": "ticker", "model": "scripted:echo"});
    TaskPayload::new(String::new(), config.as_object().unwrap().clone(), "tick")
}

#[tokio::test]
async fn many_workers_fire_a_due_tick_once() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let schedules = broker.schedules();
    let schedule = schedules
        .put("every-second", "* * * * * *", template())
        .await
        .unwrap();
    assert_eq!(
        schedules.list().await.unwrap(),
        std::slice::from_ref(&schedule)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let calls = (0..8).map(|_| {
        let schedules = broker.schedules();
        tokio::spawn(async move { schedules.fire_due().await.unwrap() })
    });
    let mut fired = Vec::new();
    for call in calls {
        fired.extend(call.await.unwrap());
    }
    let created: Vec<_> = fired.iter().filter(|tick| tick.created).collect();
    assert_eq!(created.len(), 1, "{fired:?}");
    let task = broker
        .client()
        .get(&created[0].task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.agent_name.as_deref(), Some("ticker"));
    assert!(created[0].task_id.starts_with("sched.every-second."));
    let after = &schedules.list().await.unwrap()[0];
    assert!(after.next_at > created[0].tick, "{after:?}");
    assert_eq!(after.last_tick, Some(created[0].tick));
}

#[tokio::test]
async fn ticks_missed_in_an_outage_fire_once_as_the_latest() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let schedules = broker.schedules();
    schedules
        .put("often", "* * * * * *", template())
        .await
        .unwrap();
    // Nobody fired for ten seconds.
    let client = raw(&redis).await;
    let due_key = broker.keys().schedules_due();
    let long_ago = exo_proto::time::now_seconds() as i64 * 1000 - 10_000;
    let _: () = client
        .zadd(
            &due_key,
            None,
            None,
            false,
            false,
            (long_ago as f64, "often"),
        )
        .await
        .unwrap();
    let fired = schedules.fire_due().await.unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
    let now = exo_proto::time::now_seconds();
    assert!(
        now - fired[0].tick < 2.0,
        "the latest tick, not the oldest: {fired:?}"
    );
    assert!(
        schedules.fire_due().await.unwrap().is_empty(),
        "nothing more is due"
    );
}

#[tokio::test]
async fn bad_names_and_expressions_are_refused_and_remove_works() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let schedules = broker.schedules();
    let error = schedules
        .put("nightly", "every night", template())
        .await
        .expect_err("not cron");
    assert!(
        error.to_string().contains("not a cron expression"),
        "{error}"
    );
    for name in ["", "has space", "a/b"] {
        assert!(
            schedules.put(name, "0 0 * * *", template()).await.is_err(),
            "`{name}`"
        );
    }
    schedules
        .put("nightly", "0 0 * * *", template())
        .await
        .unwrap();
    assert!(schedules.remove("nightly").await.unwrap());
    assert!(!schedules.remove("nightly").await.unwrap());
    assert!(schedules.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn only_the_schedules_queue_fires_it_and_a_template_key_is_dropped() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let mut other = crate::common::config(&redis);
    other.keys = exo_proto::Keys::new(redis.prefix(), format!("{}other", redis.prefix()));
    let other = exo_broker::Broker::connect(other).await.unwrap();
    let mut keyed = template();
    keyed.idempotency_key = Some("once".into());
    let schedule = broker
        .schedules()
        .put("mine", "* * * * * *", keyed)
        .await
        .unwrap();
    assert_eq!(schedule.queue, broker.keys().queue());
    assert_eq!(schedule.payload.idempotency_key, None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        other.schedules().fire_due().await.unwrap().is_empty(),
        "another queue's worker does not fire it"
    );
    let fired = broker.schedules().fire_due().await.unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
}
