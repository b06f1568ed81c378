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
        rule: "echo".into(),
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

/// The payload's token budget: the run starts no model call once it is
/// spent, and fails with `BudgetExceeded`; a budget with room changes
/// nothing.
#[tokio::test]
async fn a_spent_token_budget_stops_the_run() {
    let runner = runner(scripted_factory());
    let weather = spec(agent(
        "helper",
        "scripted:weather",
        serde_json::json!({"tools": ["get_weather"]}),
    ));
    // (budget, expected status, model calls made)
    for (max_tokens, status, calls) in [
        (10, OutcomeStatus::Failed, 1),
        (1_000, OutcomeStatus::Completed, 2),
    ] {
        let options = RunOptions {
            detailed: true,
            budget: exo_proto::Budget {
                max_tokens: Some(max_tokens),
            },
            ..RunOptions::default()
        };
        let run = collect(&runner, &weather, "Weather?", Vec::new(), options).await;
        assert_eq!(
            run.outcome.status, status,
            "{max_tokens}: {:?}",
            run.outcome
        );
        let usages = run
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::Usage(_)))
            .count();
        assert_eq!(usages, calls, "{max_tokens}");
        let started = run
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::Step(step) if step.status == exo_proto::StepStatus::Started))
            .count();
        assert_eq!(started, calls, "{max_tokens}: a refused step never starts");
        if status == OutcomeStatus::Failed {
            assert_eq!(
                run.outcome.error_type,
                Some(exo_proto::ErrorType::BudgetExceeded)
            );
            assert!(!run.outcome.retryable);
            let message = run.outcome.error.clone().unwrap_or_default();
            assert!(
                message.contains("token budget of 10 is spent (15 tokens used)"),
                "{message}"
            );
        }
    }
}
