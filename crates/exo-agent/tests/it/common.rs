//! Helpers shared by the integration tests: run a spec, collect what the
//! run sent, and read the reference fixtures.

use std::{path::PathBuf, sync::Arc, time::Duration};

use exo_agent::{McpPolicy, RunEvent, RunOptions, RunOutcome, Runner, ToolRegistry};
use exo_models::{ProviderFactory, ScriptedProvider, fixed_factory};
use exo_proto::{AgentSpec, JournalRecord, Message, StreamEvent};
use serde_json::{Value, json};

/// Everything one run produced.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) outcome: RunOutcome,
    pub(crate) events: Vec<StreamEvent>,
    pub(crate) messages: Vec<(String, Message)>,
    pub(crate) journal: Vec<JournalRecord>,
    /// (model, usage) of each model call sent.
    pub(crate) spent: Vec<(String, exo_proto::Usage)>,
}

impl Collected {
    /// The events as JSON, with timestamps and durations zeroed.
    pub(crate) fn normalized_events(&self) -> Vec<Value> {
        self.events
            .iter()
            .map(|event| normalize(serde_json::to_value(event).unwrap()))
            .collect()
    }

    /// The events' `type`s, in order.
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        self.events.iter().map(StreamEvent::kind).collect()
    }

    /// The text of every `text` event, concatenated.
    pub(crate) fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::Text(text) => Some(text.text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Zeroes the fields that differ from run to run.
pub(crate) fn normalize(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        for key in ["started_at", "duration_ms"] {
            if object.contains_key(key) {
                object.insert(key.into(), json!(0));
            }
        }
        if object
            .get("completed_at")
            .is_some_and(|value| !value.is_null())
        {
            object.insert("completed_at".into(), json!(0));
        }
    }
    event
}

/// The path of a file in `exo-proto`'s golden data.
pub(crate) fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../exo-proto/test_data")
        .join(name)
}

/// Reads a JSON fixture.
pub(crate) fn fixture_json(name: &str) -> Value {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Reads an events fixture, normalized.
pub(crate) fn fixture_events(name: &str) -> Vec<Value> {
    let path = fixture_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| normalize(serde_json::from_str(line).unwrap()))
        .collect()
}

/// A spec from a JSON `agent_config`.
pub(crate) fn spec(config: Value) -> AgentSpec {
    let Value::Object(map) = config else {
        panic!("agent_config must be an object")
    };
    AgentSpec::from_map(&map).unwrap()
}

/// An agent config with every default, this name and model, and these
/// extra keys.
pub(crate) fn agent(name: &str, model: &str, extra: Value) -> Value {
    let mut config = json!({"name": name, "model": model});
    if let Value::Object(extra) = extra {
        config.as_object_mut().unwrap().extend(extra);
    }
    config
}

/// A factory that gives every model string the scripted provider it names
/// (the part after the first colon), whatever its provider prefix.
pub(crate) fn scripted_factory() -> ProviderFactory {
    Arc::new(|model: &str| {
        let spec = model.split_once(':').map_or(model, |(_, rest)| rest);
        Ok(Arc::new(ScriptedProvider::from_spec(spec)?) as Arc<dyn exo_models::ModelProvider>)
    })
}

/// A factory that answers every model string with `spec`'s scripted
/// provider.
pub(crate) fn fixed_scripted(spec: &str) -> ProviderFactory {
    fixed_factory(Arc::new(ScriptedProvider::from_spec(spec).unwrap()))
}

/// A runner with the built-in tools and no MCP.
pub(crate) fn runner(providers: ProviderFactory) -> Runner {
    Runner::new(
        providers,
        Arc::new(ToolRegistry::with_builtins()),
        McpPolicy::deny_all(),
    )
}

/// Runs and collects everything, failing the test after 30 s.
pub(crate) async fn collect(
    runner: &Runner,
    spec: &AgentSpec,
    input: &str,
    history: Vec<Message>,
    options: RunOptions,
) -> Collected {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut messages = Vec::new();
        let mut journal = Vec::new();
        let mut spent = Vec::new();
        while let Some(event) = receiver.recv().await {
            match event {
                RunEvent::Stream(event) => events.push(event),
                RunEvent::Message {
                    agent_name,
                    message,
                } => messages.push((agent_name, message)),
                RunEvent::Journal(record) => journal.push(record),
                RunEvent::Spent { model, usage } => spent.push((model, usage)),
                other => panic!("unexpected run event {other:?}"),
            }
        }
        (events, messages, journal, spent)
    });
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        runner.run(spec, input, history, options, sender),
    )
    .await
    .expect("the run finished within 30 s");
    let (events, messages, journal, spent) = reader.await.unwrap();
    Collected {
        outcome,
        events,
        messages,
        journal,
        spent,
    }
}

/// The options of a detailed run with a fresh token and no deadline.
pub(crate) fn detailed() -> RunOptions {
    RunOptions {
        detailed: true,
        ..RunOptions::default()
    }
}

/// One line per event and two for the outcome: what the behaviour tests
/// compare.
pub(crate) fn summary(run: &Collected) -> String {
    let mut lines: Vec<String> = run.events.iter().map(describe).collect();
    let outcome = &run.outcome;
    let mut line = format!("outcome: {:?}", outcome.status);
    if let Some(error_type) = &outcome.error_type {
        line.push_str(&format!(
            " {error_type} retryable={}: {}",
            outcome.retryable,
            outcome.error.as_deref().unwrap_or_default()
        ));
    }
    lines.push(line);
    lines.push(format!("output: {:?}", outcome.output));
    lines.join("\n")
}

fn describe(event: &StreamEvent) -> String {
    match event {
        StreamEvent::Text(event) => format!("text {}: {:?}", event.agent_name, event.text),
        StreamEvent::Reasoning(event) => {
            format!("reasoning {}: {:?}", event.agent_name, event.text)
        }
        StreamEvent::ToolCall(event) => format!(
            "tool_call {}: {} {} {}",
            event.agent_name, event.tool_call_id, event.tool_name, event.arguments
        ),
        StreamEvent::ToolCallDelta(event) => format!(
            "delta {}: [{}] {:?} {:?} {:?}",
            event.agent_name,
            event.index,
            event.tool_call_id,
            event.tool_name,
            event.arguments_delta
        ),
        StreamEvent::ToolResult(event) => {
            let result = match &event.error {
                Some(error) => format!("error {error:?}"),
                None => serde_json::to_string(&event.result).unwrap(),
            };
            format!(
                "tool_result {}: {} {} {} -> {result}",
                event.agent_name,
                event.tool_call_id,
                event.tool_name,
                Value::Object(event.arguments.clone())
            )
        }
        StreamEvent::Step(event) => format!(
            "step {} {} {:?}",
            event.agent_name, event.step_number, event.status
        ),
        StreamEvent::Error(event) => format!(
            "error {}: {} step={:?}: {}",
            event.agent_name, event.error_type, event.step_number, event.error
        ),
        StreamEvent::Status(event) => format!(
            "status {}: {} {:?}",
            event.agent_name,
            event.status.as_str(),
            event.message
        ),
        StreamEvent::Usage(event) => format!(
            "usage {}: step {} {}/{}/{} {}",
            event.agent_name,
            event.step_number,
            event.usage.input_tokens,
            event.usage.output_tokens,
            event.usage.total_tokens,
            event.model
        ),
        StreamEvent::McpProgress(event) => format!(
            "mcp_progress {}: {} {}/{:?} {:?}",
            event.agent_name, event.tool_name, event.progress, event.total, event.message
        ),
        other => format!("{} {}", other.kind(), other.to_json()),
    }
}

/// Compares two summaries line by line, showing both in full on a
/// difference.
pub(crate) fn assert_summary(case: &str, actual: &str, expected: &str) {
    let tidy = |text: &str| {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (actual, expected) = (tidy(actual), tidy(expected));
    assert!(
        actual == expected,
        "{case}: the run differs\n--- expected\n{expected}\n--- actual\n{actual}\n"
    );
}
