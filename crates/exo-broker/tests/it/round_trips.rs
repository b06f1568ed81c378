//! Round trips per task lifecycle, counted by the client and cross-checked
//! with the server's `INFO commandstats`. The numbers are printed for the
//! record; the assertions hold the targets (≤ 3 round trips per no-op task,
//! ≤ 1 per event batch).

#![allow(clippy::print_stdout)]

use std::{collections::BTreeMap, time::Duration};

use crate::common::*;
use exo_broker::Outcome;
use exo_testkit::TestRedis;
use fred::prelude::*;

async fn commandstats(client: &Client) -> BTreeMap<String, u64> {
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|part| part.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, calls)| *calls > 0)
        .collect()
}

async fn lifecycle(batch: usize, tasks: usize) -> (f64, f64, BTreeMap<String, u64>) {
    let redis = TestRedis::dedicated();
    let broker = broker(&redis).await;
    let stats_client = raw(&redis).await;
    let mut claimer = broker.worker_session("w1").claimer();
    // Warm the scripts and the blocking connection.
    claimer.claim(1, Duration::from_millis(1)).await.unwrap();
    let before_server = commandstats(&stats_client).await;
    let before = broker.round_trips();
    for index in 0..tasks {
        broker
            .client()
            .submit(payload(&index.to_string()))
            .await
            .unwrap();
    }
    let mut done = 0;
    while done < tasks {
        let claim = claimer
            .claim(batch, Duration::from_millis(100))
            .await
            .unwrap();
        for task in claim.tasks {
            finish(
                &broker,
                &task,
                Outcome::Completed { output: "" },
                vec![],
                &completed("helper"),
            )
            .await;
            done += 1;
        }
    }
    let round_trips = (broker.round_trips() - before) as f64 / tasks as f64;
    let server = delta(&commandstats(&stats_client).await, &before_server);
    let scripts = (server.get("evalsha").copied().unwrap_or(0)
        + server.get("fcall").copied().unwrap_or(0)
        + server.get("xreadgroup").copied().unwrap_or(0)) as f64;
    claimer.close().await;
    (round_trips, scripts / tasks as f64, server)
}

#[tokio::test]
async fn a_noop_task_costs_at_most_three_round_trips() {
    for batch in [1, 10] {
        let (per_task, server_per_task, server) = lifecycle(batch, 50).await;
        println!(
            "batch {batch}: {per_task:.2} round trips per task (server saw {server_per_task:.2} FCALL/EVALSHA/XREADGROUP per task); commands run inside scripts: {server:?}"
        );
        // One blocking read when the first tasks arrive at an idle worker is
        // the only round trip beyond submit, claim and finish.
        assert!(
            per_task <= 3.0 + 1.0 / 50.0,
            "batch {batch}: {per_task} round trips per task"
        );
    }
}

#[tokio::test]
async fn an_event_batch_is_one_round_trip() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let payload = payload("x");
    broker.client().submit(payload.clone()).await.unwrap();
    let task = claim_all(&broker, "w1", 1).await.remove(0);
    let events: Vec<String> = (0..10)
        .map(|index| {
            exo_proto::StreamEvent::Text(exo_proto::TextEvent {
                text: index.to_string(),
                agent_name: "a".into(),
            })
            .to_json()
        })
        .collect();
    let before = broker.round_trips();
    broker
        .worker_session("publisher")
        .publish(
            &payload.task_id,
            &events,
            exo_broker::PublishOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(broker.round_trips() - before, 1);
    // Events still buffered at the end travel with the final write: a
    // 10-event task can finish in the same round trip as its completion.
    let before = broker.round_trips();
    finish(
        &broker,
        &task,
        Outcome::Completed { output: "" },
        events,
        &completed("a"),
    )
    .await;
    assert_eq!(broker.round_trips() - before, 1);
    assert_eq!(
        broker
            .client()
            .events(&payload.task_id, None)
            .collect()
            .await
            .unwrap()
            .len(),
        21
    );
}
