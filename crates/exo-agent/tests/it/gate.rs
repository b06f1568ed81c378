//! A run's model calls go through its gate: a wait is announced once (for
//! plain runs too) and the call is sent when admitted, what the call used
//! is settled, a refused call fails the run, and a gate error fails it as
//! retryable.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use exo_agent::{GateDecision, GatePermit, ModelGate, OutcomeStatus, RunOptions};
use exo_proto::StreamEvent;

use crate::common::{agent, collect, runner, scripted_factory, spec};

/// Answers admissions from a script; records what it was asked.
#[derive(Debug, Default)]
struct ScriptedGate {
    answers: Mutex<Vec<Result<GateDecision, String>>>,
    asked: Mutex<Vec<(String, u64)>>,
    settled: Mutex<Vec<(GatePermit, u64)>>,
}

#[async_trait]
impl ModelGate for ScriptedGate {
    async fn admit(&self, model: &str, tokens: u64) -> Result<GateDecision, String> {
        self.asked.lock().unwrap().push((model.to_owned(), tokens));
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            Ok(GateDecision::Open)
        } else {
            answers.remove(0)
        }
    }

    async fn settle(&self, permit: &GatePermit, tokens: u64) {
        self.settled.lock().unwrap().push((permit.clone(), tokens));
    }

    async fn back_off(&self, _model: &str, _retry_after: Duration) {}
}

fn permit() -> GatePermit {
    GatePermit {
        model: "echo".into(),
        reservation: "r1".into(),
    }
}

fn wait(ms: u64) -> Result<GateDecision, String> {
    Ok(GateDecision::Wait {
        retry_in: Duration::from_millis(ms),
        rule: "echo".into(),
        reason: "tokens".into(),
    })
}

#[tokio::test]
async fn cases() {
    // (case, the gate's answers, plain run?, expected status, waits
    // announced, settled tokens, error contains)
    let cases: Vec<(
        &str,
        Vec<Result<GateDecision, String>>,
        bool,
        OutcomeStatus,
        usize,
        Option<u64>,
        &str,
    )> = vec![
        ("open", vec![], true, OutcomeStatus::Completed, 0, None, ""),
        (
            "granted at once",
            vec![Ok(GateDecision::Granted(permit()))],
            false,
            OutcomeStatus::Completed,
            0,
            Some(4),
            "",
        ),
        (
            "two waits, one announcement, on a plain run",
            vec![wait(20), wait(20), Ok(GateDecision::Granted(permit()))],
            true,
            OutcomeStatus::Completed,
            1,
            Some(4),
            "",
        ),
        (
            "refused",
            vec![Ok(GateDecision::Refused("too big for the rule".into()))],
            false,
            OutcomeStatus::Failed,
            0,
            None,
            "too big for the rule",
        ),
        (
            "gate error",
            vec![Err("Redis is unreachable".into())],
            false,
            OutcomeStatus::Failed,
            0,
            None,
            "cannot reserve model capacity: Redis is unreachable",
        ),
    ];
    let runner = runner(scripted_factory());
    let spec = spec(agent("echoer", "scripted:echo", serde_json::json!({})));
    for (case, answers, plain, status, announced, settled, error) in cases {
        let gate = Arc::new(ScriptedGate {
            answers: Mutex::new(answers),
            ..ScriptedGate::default()
        });
        let options = RunOptions {
            detailed: !plain,
            gate: Some(gate.clone()),
            ..RunOptions::default()
        };
        let run = collect(&runner, &spec, "hello there", Vec::new(), options).await;
        assert_eq!(run.outcome.status, status, "{case}: {:?}", run.outcome);
        let waits: Vec<&StreamEvent> = run
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::Status(status) if status.extra.get("waiting_for").is_some_and(|value| value == "capacity")))
            .collect();
        assert_eq!(waits.len(), announced, "{case}: {:?}", run.events);
        if let Some(StreamEvent::Status(wait)) = waits.first() {
            assert_eq!(wait.extra["rule"], "echo", "{case}");
            assert_eq!(wait.extra["reason"], "tokens", "{case}");
            assert_eq!(wait.extra["retry_in_ms"], 20, "{case}");
        }
        if status == OutcomeStatus::Failed {
            assert!(
                !run.events
                    .iter()
                    .any(|event| matches!(event, StreamEvent::Step(_))),
                "{case}: a refused call starts no step: {:?}",
                run.events
            );
        }
        let asked = gate.asked.lock().unwrap();
        assert!(
            asked
                .iter()
                .all(|(model, tokens)| model == "scripted:echo" && *tokens > 1024),
            "{case}: {asked:?}"
        );
        let settled_calls = gate.settled.lock().unwrap();
        match settled {
            Some(tokens) => {
                assert_eq!(settled_calls.len(), 1, "{case}");
                assert_eq!(settled_calls[0].0, permit(), "{case}");
                assert_eq!(settled_calls[0].1, tokens, "{case}: what the call used");
            }
            None => assert!(settled_calls.is_empty(), "{case}: {settled_calls:?}"),
        }
        if !error.is_empty() {
            let message = run.outcome.error.clone().unwrap_or_default();
            assert!(message.contains(error), "{case}: {message}");
        }
    }
}

/// The payload's token and cost budgets: the run starts no model call once
/// one is spent, and fails with `BudgetExceeded`; a budget with room
/// changes nothing. The scripted model's first call uses 15 tokens; at a
/// dollar per token it costs $15.
#[tokio::test]
async fn a_spent_budget_stops_the_run() {
    let runner = runner(scripted_factory());
    let weather = spec(agent(
        "helper",
        "scripted:weather",
        serde_json::json!({"tools": ["get_weather"]}),
    ));
    let prices = std::sync::Arc::new(exo_proto::PriceTable {
        models: [(
            "scripted:weather".to_owned(),
            exo_proto::Price {
                input: 1e6,
                output: 1e6,
            },
        )]
        .into(),
    });
    // (max tokens, max cost, expected status, model calls made, message)
    let cases = [
        (
            Some(10),
            None,
            OutcomeStatus::Failed,
            1,
            "token budget of 10 is spent (15 tokens used)",
        ),
        (Some(1_000), None, OutcomeStatus::Completed, 2, ""),
        (
            None,
            Some(10.0),
            OutcomeStatus::Failed,
            1,
            "cost budget of $10 is spent ($15.000000 used)",
        ),
        (None, Some(1e6), OutcomeStatus::Completed, 2, ""),
    ];
    for (max_tokens, max_cost, status, calls, message) in cases {
        let case = format!("{max_tokens:?} {max_cost:?}");
        let options = RunOptions {
            detailed: true,
            budget: exo_proto::Budget {
                max_tokens,
                max_cost,
            },
            prices: Some(prices.clone()),
            ..RunOptions::default()
        };
        let run = collect(&runner, &weather, "Weather?", Vec::new(), options).await;
        assert_eq!(run.outcome.status, status, "{case}: {:?}", run.outcome);
        let usages = run
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::Usage(_)))
            .count();
        assert_eq!(usages, calls, "{case}");
        assert_eq!(
            run.spent.len(),
            calls,
            "{case}: every call sent counts in the ledger"
        );
        assert!(
            run.spent
                .iter()
                .all(|(model, _)| model == "scripted:weather"),
            "{case}"
        );
        let started = run
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::Step(step) if step.status == exo_proto::StepStatus::Started))
            .count();
        assert_eq!(started, calls, "{case}: a refused step never starts");
        if status == OutcomeStatus::Failed {
            assert_eq!(
                run.outcome.error_type,
                Some(exo_proto::ErrorType::BudgetExceeded)
            );
            assert!(!run.outcome.retryable);
            let shown = run.outcome.error.clone().unwrap_or_default();
            assert!(shown.contains(message), "{case}: {shown}");
        }
    }
}
