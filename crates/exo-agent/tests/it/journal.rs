//! The step journal and approvals, through the real OpenAI provider against
//! the fake server: a run that gets back what an earlier attempt finished
//! sends no finished model call again, runs no finished tool again, and
//! emits none of their events again; a call to a tool in `hitl_tools` stops
//! the run until a decision, which the next run applies.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use exo_agent::{FnTool, McpPolicy, OutcomeStatus, RunOptions, Runner, ToolRegistry};
use exo_models::{ProviderFactory, resolve_provider_with_env};
use exo_proto::{DecisionRecord, Journal, JournalRecord, Message, StreamEvent, ToolOutput};
use exo_testkit::{FakeLlmServer, FakeResponse};
use serde_json::{Value, json};

use crate::common::{Collected, agent, collect, spec};

fn factory(server: &FakeLlmServer) -> ProviderFactory {
    let base_url = server.openai_base_url();
    Arc::new(move |model: &str| {
        let env = |name: &str| (name == "OPENAI_BASE_URL").then(|| base_url.clone());
        resolve_provider_with_env(model, &env)
    })
}

/// A tool that counts its runs and remembers the idempotency keys it got.
struct Counter {
    runs: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
}

fn runner_with_counter(server: &FakeLlmServer) -> (Runner, Counter) {
    let runs = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let mut tools = ToolRegistry::with_builtins();
    let (counted, seen) = (runs.clone(), keys.clone());
    tools.register(FnTool::new(
        "send_email",
        "Sends an email (a side effect).",
        json!({"type": "object", "properties": {"to": {"type": "string"}}}),
        move |arguments, context| {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            seen.lock().unwrap().push(context.idempotency_key.clone());
            Box::pin(async move {
                let to = arguments.get("to").and_then(Value::as_str).unwrap_or("?");
                Ok(ToolOutput::Text(format!("sent to {to} (run {run})")))
            })
        },
    ));
    let runner = Runner::new(factory(server), Arc::new(tools), McpPolicy::deny_all());
    (runner, Counter { runs, keys })
}

fn options(task_id: &str, attempt: u32, replay: &[JournalRecord]) -> RunOptions {
    let mut journal = Journal::default();
    for record in replay {
        journal.insert(record.clone());
    }
    RunOptions {
        detailed: true,
        replay: journal,
        task_id: task_id.to_owned(),
        attempt,
        ..RunOptions::default()
    }
}

fn kinds(run: &Collected) -> Vec<String> {
    run.events
        .iter()
        .map(|event| match event {
            StreamEvent::Step(step) => format!("step {} {:?}", step.step_number, step.status),
            StreamEvent::ToolResult(result) => format!("tool_result {}", result.tool_call_id),
            StreamEvent::ToolCall(call) => format!("tool_call {}", call.tool_call_id),
            other => other.kind().to_owned(),
        })
        .filter(|kind| kind != "text" && kind != "tool_call_delta" && kind != "usage")
        .collect()
}

/// The last message of each request the provider got, by role.
fn last_roles(server: &FakeLlmServer) -> Vec<String> {
    server
        .json_bodies()
        .iter()
        .map(|body| {
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            format!(
                "{} messages, last {}",
                messages.len(),
                messages
                    .last()
                    .and_then(|message| message["role"].as_str())
                    .unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test]
async fn a_retried_run_replays_finished_calls_and_tools() {
    let config = agent(
        "mailer",
        "openai:gpt-4o-mini",
        json!({"tools": ["echo", "send_email"], "max_steps": 6}),
    );
    // Attempt 1: steps 1 and 2 call tools, step 3's model call fails.
    let server = FakeLlmServer::start();
    server.push(FakeResponse::openai_tool_calls(&[(
        "c1",
        "echo",
        r#"{"text": "draft"}"#,
    )]));
    server.push(FakeResponse::openai_tool_calls(&[(
        "c2",
        "send_email",
        r#"{"to": "ada@example.com"}"#,
    )]));
    server.push(FakeResponse::json(
        400,
        &json!({"error": {"message": "the provider broke"}}),
    ));
    let (runner, counter) = runner_with_counter(&server);
    let first = collect(
        &runner,
        &spec(config.clone()),
        "Mail Ada.",
        Vec::new(),
        options("t1", 1, &[]),
    )
    .await;
    assert_eq!(
        first.outcome.status,
        OutcomeStatus::Failed,
        "{:?}",
        first.outcome
    );
    assert_eq!(server.request_count(), 3);
    assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
    let recorded: Vec<String> = first
        .journal
        .iter()
        .map(|record| match record {
            JournalRecord::Model(model) => format!("model {} {}", model.key.scope, model.key.call),
            JournalRecord::Tool(tool) => format!("tool {} {}", tool.key.call, tool.tool_call_id),
            JournalRecord::Decision(_) => "decision".to_owned(),
        })
        .collect();
    assert_eq!(
        recorded,
        ["model mailer 1", "tool 1 c1", "model mailer 2", "tool 2 c2"]
    );

    // Attempt 2 gets the journal back: steps 1 and 2 are neither asked for
    // nor run again, and their events are not emitted again.
    let server2 = FakeLlmServer::start();
    server2.push(FakeResponse::openai_tool_calls(&[(
        "c3",
        "echo",
        r#"{"text": "done"}"#,
    )]));
    server2.push(FakeResponse::openai_text("Mailed."));
    let (runner2, counter2) = runner_with_counter(&server2);
    let second = collect(
        &runner2,
        &spec(config),
        "Mail Ada.",
        Vec::new(),
        options("t1", 2, &first.journal),
    )
    .await;
    assert_eq!(
        second.outcome.status,
        OutcomeStatus::Completed,
        "{:?}",
        second.outcome
    );
    assert_eq!(
        counter2.runs.load(Ordering::SeqCst),
        0,
        "send_email ran again"
    );
    // Steps 3 and 4 only; step 3's request carries steps 1-2's results.
    assert_eq!(
        last_roles(&server2),
        ["5 messages, last tool", "7 messages, last tool"]
    );
    let third_request = &server2.json_bodies()[0];
    assert_eq!(
        third_request["messages"][4]["content"],
        json!("sent to ada@example.com (run 1)")
    );
    assert_eq!(
        kinds(&second),
        [
            "step 3 Started",
            "tool_call c3",
            "tool_result c3",
            "step 3 Completed",
            "step 4 Started",
            "step 4 Completed"
        ]
    );
    // The conversation messages for memory are the new ones only.
    assert_eq!(second.messages.len(), 3);
    assert_eq!(second.outcome.output, "Mailed.");
    // The idempotency key names the task, the scope, the model call and the
    // call id: the same for every attempt.
    assert_eq!(*counter.keys.lock().unwrap(), ["t1/mailer/2/c2"]);
}

#[tokio::test]
async fn a_call_to_a_hitl_tool_waits_then_runs_as_decided() {
    let config = agent(
        "mailer",
        "openai:gpt-4o-mini",
        json!({"tools": ["send_email"], "hitl_tools": ["send_email"]}),
    );
    let waiting_run = |server: &FakeLlmServer| {
        server.push(FakeResponse::openai_tool_calls(&[(
            "c1",
            "send_email",
            r#"{"to": "ada@example.com"}"#,
        )]));
    };
    let server = FakeLlmServer::start();
    waiting_run(&server);
    let (runner, counter) = runner_with_counter(&server);
    let first = collect(
        &runner,
        &spec(config.clone()),
        "Mail Ada.",
        Vec::new(),
        options("t2", 1, &[]),
    )
    .await;
    assert_eq!(first.outcome.status, OutcomeStatus::WaitingForApproval);
    let approval = first.outcome.approval.clone().unwrap();
    assert_eq!(
        (
            approval.tool_name.as_str(),
            approval.tool_call_id.as_str(),
            approval.key.call
        ),
        ("send_email", "c1", 1)
    );
    assert_eq!(approval.arguments, r#"{"to": "ada@example.com"}"#);
    assert_eq!(counter.runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        kinds(&first),
        ["status", "step 1 Started", "tool_call c1"],
        "no result and no step end while it waits"
    );
    let terminal = serde_json::to_value(first.outcome.terminal_event()).unwrap();
    assert_eq!(terminal["status"], "waiting_for_tool");

    // (decision, what the tool ran with or the model was told)
    let cases = [
        (
            DecisionRecord {
                key: approval.key.clone(),
                tool_call_id: "c1".into(),
                approved: true,
                by: "alice".into(),
                reason: None,
                arguments: Some(r#"{"to": "bob@example.com"}"#.into()),
                at: 1.0,
            },
            json!("sent to bob@example.com (run 1)"),
            1,
        ),
        (
            DecisionRecord {
                key: approval.key.clone(),
                tool_call_id: "c1".into(),
                approved: false,
                by: "alice".into(),
                reason: Some("not today".into()),
                arguments: None,
                at: 1.0,
            },
            json!(""),
            0,
        ),
    ];
    for (decision, content, runs) in cases {
        let approved = decision.approved;
        let server = FakeLlmServer::start();
        server.push(FakeResponse::openai_text("Done."));
        let (runner, counter) = runner_with_counter(&server);
        let mut replay = first.journal.clone();
        replay.push(JournalRecord::Decision(decision));
        let resumed = collect(
            &runner,
            &spec(config.clone()),
            "Mail Ada.",
            Vec::new(),
            options("t2", 2, &replay),
        )
        .await;
        assert_eq!(
            resumed.outcome.status,
            OutcomeStatus::Completed,
            "{:?}",
            resumed.outcome
        );
        assert_eq!(
            counter.runs.load(Ordering::SeqCst),
            runs,
            "approved={approved}"
        );
        assert_eq!(
            server.request_count(),
            1,
            "the model call of step 1 is not repeated"
        );
        let tool_message = &server.json_bodies()[0]["messages"][2];
        assert_eq!(tool_message["role"], "tool");
        if approved {
            assert_eq!(tool_message["content"], content);
        } else {
            let text = tool_message["content"].to_string();
            assert!(
                text.contains("denied by alice: not today"),
                "the model is told why: {text}"
            );
        }
        assert_eq!(
            kinds(&resumed),
            [
                "tool_result c1",
                "step 1 Completed",
                "step 2 Started",
                "step 2 Completed"
            ]
        );
        let StreamEvent::ToolResult(result) = &resumed.events[0] else {
            panic!("{:?}", resumed.events[0])
        };
        assert_eq!(result.success, approved);
        if approved {
            assert_eq!(result.arguments["to"], "bob@example.com");
        }
    }
    // Without a decision, a second run stops at the same call again.
    let server = FakeLlmServer::start();
    let (runner, _) = runner_with_counter(&server);
    let again = collect(
        &runner,
        &spec(config),
        "Mail Ada.",
        Vec::new(),
        options("t2", 2, &first.journal),
    )
    .await;
    assert_eq!(again.outcome.status, OutcomeStatus::WaitingForApproval);
    assert_eq!(server.request_count(), 0);
    assert!(again.events.is_empty(), "{:?}", again.events);
}

#[tokio::test]
async fn a_team_member_cannot_wait_for_approval() {
    let server = FakeLlmServer::start();
    let (runner, _) = runner_with_counter(&server);
    let config = json!({
        "name": "crew",
        "mode": "team",
        "agents": [
            agent("lead", "openai:gpt-4o-mini", json!({})),
            agent("member", "openai:gpt-4o-mini", json!({"tools": ["send_email"], "hitl_tools": ["send_email"]})),
        ],
    });
    let run = collect(
        &runner,
        &spec(config),
        "hi",
        Vec::<Message>::new(),
        options("t3", 1, &[]),
    )
    .await;
    assert_eq!(run.outcome.status, OutcomeStatus::Failed);
    assert!(
        run.outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot wait for approval"),
        "{:?}",
        run.outcome.error
    );
}

#[tokio::test]
async fn a_run_in_steps_of_one_call_emits_and_sends_what_one_run_does() {
    let config = agent(
        "mailer",
        "openai:gpt-4o-mini",
        json!({"tools": ["echo", "send_email"], "max_steps": 6}),
    );
    let script = |server: &FakeLlmServer| {
        // Two tools in one answer, then the final answer.
        server.push(FakeResponse::openai_tool_calls(&[
            ("c1", "echo", r#"{"text": "draft"}"#),
            ("c2", "send_email", r#"{"to": "ada@example.com"}"#),
        ]));
        server.push(FakeResponse::openai_text("Mailed."));
    };
    let whole_server = FakeLlmServer::start();
    script(&whole_server);
    let (runner, whole_counter) = runner_with_counter(&whole_server);
    let whole = collect(
        &runner,
        &spec(config.clone()),
        "Mail Ada.",
        Vec::new(),
        options("t1", 1, &[]),
    )
    .await;
    assert_eq!(whole.outcome.status, OutcomeStatus::Completed);

    // The same run, one new call per invocation, each given the journal of
    // the ones before (as the activities of a Temporal workflow are).
    let stepped_server = FakeLlmServer::start();
    script(&stepped_server);
    let (runner, stepped_counter) = runner_with_counter(&stepped_server);
    let mut journal: Vec<JournalRecord> = Vec::new();
    let mut events = Vec::new();
    let mut messages = 0;
    let mut steps = Vec::new();
    let last = loop {
        let mut limited = options("t1", 1, &journal);
        limited.step_limit = Some(1);
        let step = collect(
            &runner,
            &spec(config.clone()),
            "Mail Ada.",
            Vec::new(),
            limited,
        )
        .await;
        journal.extend(step.journal.iter().cloned());
        events.extend(step.events.iter().cloned());
        messages += step.messages.len();
        steps.push(step.journal.len());
        if step.outcome.status != OutcomeStatus::Yielded {
            break step;
        }
        assert!(steps.len() < 10, "the run does not end: {steps:?}");
    };
    // Model call, each tool, the final model call: four steps of one call.
    assert_eq!(steps, [1, 1, 1, 1]);
    assert_eq!(last.outcome.status, OutcomeStatus::Completed);
    assert_eq!(last.outcome.output, whole.outcome.output);
    assert_eq!(last.outcome.usage, whole.outcome.usage);
    let stepped = Collected { events, ..last };
    assert_eq!(
        stepped.normalized_events(),
        whole.normalized_events(),
        "the same events, in order"
    );
    assert_eq!(messages, whole.messages.len());
    assert_eq!(
        stepped_server.json_bodies(),
        whole_server.json_bodies(),
        "the provider is asked the same, once per call"
    );
    assert_eq!(stepped_counter.runs.load(Ordering::SeqCst), 1);
    assert_eq!(whole_counter.runs.load(Ordering::SeqCst), 1);
}
