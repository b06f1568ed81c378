//! The usage ledger: final writes count what their attempts' model calls
//! used into the task hash and the ledger; reports group it by model,
//! tenant and agent.

use std::time::Duration;

use exo_broker::{FinishOptions, ModelSpend, Outcome, UsageDimension};
use exo_proto::Usage;
use exo_testkit::TestRedis;
use fred::prelude::*;

use crate::common::*;

fn spend(model: &str, input: u64, output: u64, calls: u64, cost: u64) -> ModelSpend {
    ModelSpend {
        model: model.to_owned(),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output,
        },
        calls,
        cost_micros: cost,
    }
}

#[tokio::test]
async fn final_writes_fill_the_ledger_and_the_task_hash() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let raw = raw(&redis).await;
    // (tenant, what its attempt used, whether it completes); every task's
    // agent is `helper`
    let tasks = [
        ("acme", vec![spend("openai:gpt-4o", 100, 10, 2, 500)], true),
        (
            "acme",
            vec![
                spend("openai:gpt-4o", 50, 5, 1, 250),
                spend("anthropic:claude", 7, 3, 1, 0),
            ],
            false,
        ),
        ("", vec![spend("openai:gpt-4o", 1, 1, 1, 5)], true),
    ];
    let mut ids = Vec::new();
    for (tenant, _, _) in &tasks {
        let mut task = payload("x");
        if !tenant.is_empty() {
            task.metadata.insert("tenant".into(), (*tenant).into());
        }
        ids.push(
            broker
                .client()
                .submit(task)
                .await
                .unwrap()
                .task_id()
                .to_owned(),
        );
    }
    let claimed = claim_all(&broker, "w1", tasks.len()).await;
    assert_eq!(claimed.len(), tasks.len());
    for task in &claimed {
        let index = ids.iter().position(|id| *id == task.lease.task_id).unwrap();
        let (_, spent, completes) = &tasks[index];
        let outcome = if *completes {
            Outcome::Completed { output: "ok" }
        } else {
            Outcome::Failed {
                error: "boom",
                retryable: false,
            }
        };
        let terminal = if *completes {
            completed("helper")
        } else {
            errored("helper", "boom")
        };
        let options = FinishOptions {
            spent: spent.clone(),
            ..FinishOptions::default()
        };
        broker
            .worker_session("w1")
            .finish(task, outcome, vec![], &terminal, options)
            .await
            .unwrap();
        // A repeated final write (a lost reply) counts nothing again.
        broker
            .worker_session("w1")
            .finish(
                task,
                outcome,
                vec![],
                &terminal,
                FinishOptions {
                    spent: spent.clone(),
                    ..FinishOptions::default()
                },
            )
            .await
            .unwrap();
    }

    let hash: std::collections::HashMap<String, String> = raw
        .hgetall(format!("{}task:{}", redis.prefix(), ids[1]))
        .await
        .unwrap();
    for (field, value) in [
        ("usage_input_tokens", "57"),
        ("usage_output_tokens", "8"),
        ("usage_calls", "2"),
        ("usage_cost_micros", "250"),
    ] {
        assert_eq!(hash.get(field).map(String::as_str), Some(value), "{field}");
    }

    let admin = broker.admin();
    let rows = |report: exo_broker::UsageReport| -> Vec<(String, u64, u64, u64, u64)> {
        report
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
            .collect()
    };
    for (since, by, expected) in [
        (
            Duration::from_secs(3600),
            UsageDimension::Model,
            vec![
                ("anthropic:claude", 7, 3, 1, 0),
                ("openai:gpt-4o", 151, 16, 4, 755),
            ],
        ),
        (
            Duration::from_secs(60),
            UsageDimension::Tenant,
            vec![("", 1, 1, 1, 5), ("acme", 157, 18, 4, 750)],
        ),
        (
            Duration::from_secs(7 * 86_400),
            UsageDimension::Agent,
            vec![("helper", 158, 19, 5, 755)],
        ),
    ] {
        let expected: Vec<(String, u64, u64, u64, u64)> = expected
            .into_iter()
            .map(|(name, input, output, calls, cost)| (name.to_owned(), input, output, calls, cost))
            .collect();
        assert_eq!(
            rows(admin.usage(since, by).await.unwrap()),
            expected,
            "{by:?} over {since:?}"
        );
    }
}
