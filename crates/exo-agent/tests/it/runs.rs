//! The step loop's behaviour, case by case: each case runs an agent on the
//! scripted provider and compares a one-line-per-event summary (see
//! `common::summary`) with the expected one.

use crate::common;

use std::sync::Arc;

use common::{agent, assert_summary, collect, scripted_factory, spec, summary};
use exo_agent::{FnTool, McpPolicy, RunOptions, Runner, ToolRegistry, builtin::GetWeather};
use exo_proto::{Message, ToolOutput};
use serde_json::{Value, json};

/// A model string for an inline script of these turns.
fn script(turns: Value) -> String {
    format!("scripted:{turns}")
}

/// The built-in tools, `inspect` (returns the arguments it received) and
/// `get_weather` again under a full import path.
fn registry() -> ToolRegistry {
    let mut registry = ToolRegistry::with_builtins();
    registry.register(FnTool::new(
        "inspect",
        "Returns the arguments it received.",
        json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
        |arguments, _context| {
            Box::pin(async move { Ok(ToolOutput::Text(Value::Object(arguments).to_string())) })
        },
    ));
    registry.register_as("app.tools.weather", GetWeather);
    registry
}

fn test_runner() -> Runner {
    Runner::new(
        scripted_factory(),
        Arc::new(registry()),
        McpPolicy::deny_all(),
    )
}

/// Runs `config` on `input` and compares the summary with `expected`.
async fn check(case: &str, config: Value, detailed: bool, expected: &str) {
    let options = RunOptions {
        detailed,
        ..RunOptions::default()
    };
    let run = collect(&test_runner(), &spec(config), "go", Vec::new(), options).await;
    assert_summary(case, &summary(&run), expected);
}

#[tokio::test]
async fn bad_model_output_goes_back_to_the_model() {
    check(
        "invalid JSON arguments",
        agent(
            "helper",
            &script(json!([
                {"tool_calls": [{"id": "c1", "name": "get_weather", "arguments": ["{\"city\": "]}]},
                {"text": "Which city?"}
            ])),
            json!({"tools": ["get_weather"]}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        delta helper: [0] "c1" "get_weather" "{\"city\": "
        tool_call helper: c1 get_weather {"city":
        tool_result helper: c1 get_weather {} -> error "Invalid JSON arguments for tool 'get_weather': EOF while parsing a value at line 1 column 9"
        step helper 1 Completed
        step helper 2 Started
        text helper: "Which city?"
        step helper 2 Completed
        outcome: Completed
        output: "Which city?"
        "#,
    )
    .await;
    check(
        "arguments that are not an object",
        agent(
            "helper",
            &script(json!([
                {"tool_calls": [{"id": "c1", "name": "get_weather", "arguments": "[\"Paris\"]"}]},
                {"text": "ok"}
            ])),
            json!({"tools": ["get_weather"]}),
        ),
        false,
        r#"
        tool_call helper: c1 get_weather ["Paris"]
        text helper: "ok"
        outcome: Completed
        output: "ok"
        "#,
    )
    .await;
    check(
        "an unknown tool",
        agent(
            "helper",
            &script(json!([
                {"text": "Beam me up. ", "tool_calls": [{"id": "c1", "name": "teleport", "arguments": "{}"}]},
                {"text": "I cannot."}
            ])),
            json!({"tools": ["get_weather"]}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        text helper: "Beam me up. "
        delta helper: [0] "c1" "teleport" "{}"
        tool_call helper: c1 teleport {}
        tool_result helper: c1 teleport {} -> error "Tool 'teleport' not found (available: get_weather)"
        step helper 1 Completed
        step helper 2 Started
        text helper: "I cannot."
        step helper 2 Completed
        outcome: Completed
        output: "Beam me up. I cannot."
        "#,
    )
    .await;
    check(
        "a tool error",
        agent(
            "helper",
            &script(json!([
                {"tool_calls": [{"id": "c1", "name": "fail", "arguments": {"message": "disk full"}}]},
                {"text": "The disk is full."}
            ])),
            json!({"tools": ["fail"]}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        delta helper: [0] "c1" "fail" "{\"message\":\"disk full\"}"
        tool_call helper: c1 fail {"message":"disk full"}
        tool_result helper: c1 fail {"message":"disk full"} -> error "disk full"
        step helper 1 Completed
        step helper 2 Started
        text helper: "The disk is full."
        step helper 2 Completed
        outcome: Completed
        output: "The disk is full."
        "#,
    )
    .await;
}

#[tokio::test]
async fn a_panicking_tool_fails_the_run() {
    check(
        "panic",
        agent(
            "helper",
            &script(json!([
                {"text": "Here goes. ", "tool_calls": [
                    {"id": "c1", "name": "panic", "arguments": {"message": "boom"}},
                    {"id": "c2", "name": "echo", "arguments": {"text": "still ran"}}
                ]},
                {"text": "never"}
            ])),
            json!({"tools": ["panic", "echo"]}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        text helper: "Here goes. "
        delta helper: [0] "c1" "panic" "{\"message\":\"boom\"}"
        delta helper: [1] "c2" "echo" "{\"text\":\"still ran\"}"
        tool_call helper: c1 panic {"message":"boom"}
        tool_call helper: c2 echo {"text":"still ran"}
        tool_result helper: c1 panic {"message":"boom"} -> error "Tool 'panic' panicked: boom"
        tool_result helper: c2 echo {"text":"still ran"} -> "still ran"
        error helper: ToolPanic step=Some(1): Tool 'panic' panicked: boom
        outcome: Failed ToolPanic retryable=false: Tool 'panic' panicked: boom
        output: "Here goes. "
        "#,
    )
    .await;
}

#[tokio::test]
async fn reaching_max_steps_is_a_clear_failure() {
    let call = json!({"tool_calls": [{"id": "c", "name": "echo", "arguments": {"text": "again"}}]});
    check(
        "max_steps",
        agent(
            "looper",
            &script(json!([call, call, call])),
            json!({"tools": ["echo"], "max_steps": 2}),
        ),
        false,
        r#"
        tool_call looper: c echo {"text":"again"}
        tool_call looper: c echo {"text":"again"}
        error looper: MaxStepsExceeded step=Some(2): Agent 'looper' reached max_steps (2) without a final answer
        outcome: Failed MaxStepsExceeded retryable=false: Agent 'looper' reached max_steps (2) without a final answer
        output: ""
        "#,
    )
    .await;
}

#[tokio::test]
async fn injected_arguments_are_stripped_before_the_tool_runs() {
    check(
        "injected_tool_args",
        agent(
            "helper",
            &script(json!([
                {"tool_calls": [{"id": "c1", "name": "inspect", "arguments": {"x": 1, "reason": "curious"}}]},
                {"text": "done"}
            ])),
            json!({"tools": ["inspect"], "injected_tool_args": {"reason": "Why you call the tool."}}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        delta helper: [0] "c1" "inspect" "{\"reason\":\"curious\",\"x\":1}"
        tool_call helper: c1 inspect {"reason":"curious","x":1}
        tool_result helper: c1 inspect {"reason":"curious","x":1} -> "{\"x\":1}"
        step helper 1 Completed
        step helper 2 Started
        text helper: "done"
        step helper 2 Completed
        outcome: Completed
        output: "done"
        "#,
    )
    .await;
}

#[tokio::test]
async fn tools_resolve_by_full_name_or_last_segment() {
    check(
        "import paths",
        agent(
            "helper",
            &script(json!([
                {"tool_calls": [
                    {"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                    {"id": "c2", "name": "weather", "arguments": {"city": "Rome"}}
                ]},
                {"text": "done"}
            ])),
            json!({"tools": ["fixtools.tools.get_weather", "app.tools.weather"]}),
        ),
        true,
        r#"
        status helper: starting "Agent 'helper' starting execution"
        step helper 1 Started
        delta helper: [0] "c1" "get_weather" "{\"city\":\"Oslo\"}"
        delta helper: [1] "c2" "weather" "{\"city\":\"Rome\"}"
        tool_call helper: c1 get_weather {"city":"Oslo"}
        tool_call helper: c2 weather {"city":"Rome"}
        tool_result helper: c1 get_weather {"city":"Oslo"} -> "sunny in Oslo"
        tool_result helper: c2 weather {"city":"Rome"} -> "sunny in Rome"
        step helper 1 Completed
        step helper 2 Started
        text helper: "done"
        step helper 2 Completed
        outcome: Completed
        output: "done"
        "#,
    )
    .await;
}

#[tokio::test]
async fn unresolvable_config_fails_before_the_run_starts() {
    check(
        "an unregistered tool",
        agent("helper", "scripted:noop", json!({"tools": ["app.tools.missing"]})),
        true,
        r#"
        error helper: ConfigError step=None: agent `helper`: tool `app.tools.missing` is not registered with this worker (registered: app.tools.weather, echo, fail, get_weather, inspect, panic, sleep)
        outcome: Failed ConfigError retryable=false: agent `helper`: tool `app.tools.missing` is not registered with this worker (registered: app.tools.weather, echo, fail, get_weather, inspect, panic, sleep)
        output: ""
        "#,
    )
    .await;
    check(
        "a bad scripted model",
        agent("helper", "scripted:nonsense", json!({})),
        false,
        r#"
        error helper: ConfigError step=None: agent `helper`: model `scripted:nonsense`: unknown scripted model `nonsense`: expected noop, echo, weather, fail, fail:<message>, slow:<ms>, an inline JSON script, or a script file path
        outcome: Failed ConfigError retryable=false: agent `helper`: model `scripted:nonsense`: unknown scripted model `nonsense`: expected noop, echo, weather, fail, fail:<message>, slow:<ms>, an inline JSON script, or a script file path
        output: ""
        "#,
    )
    .await;
    let mcp_tool = json!({
        "__mcp_tool__": true, "name": "read_file", "description": "Reads a file.",
        "parameters": {"type": "object"}, "original_name": "read_file", "server_name": "fs",
        "server_config": {"transport": "stdio", "command": "mcp-server-filesystem", "args": ["/"]}
    });
    let reason = if cfg!(feature = "mcp") {
        "agent `helper`: MCP tool `read_file` (server `fs`) is refused: the command `mcp-server-filesystem /` is not in this worker's MCP command allowlist (which is empty)"
    } else {
        "agent `helper`: tool `read_file` is an MCP tool, but this worker was built without the `mcp` feature"
    };
    check(
        "an MCP tool the worker does not allow",
        agent("helper", "scripted:noop", json!({"tools": [mcp_tool]})),
        false,
        &format!(
            "error helper: ConfigError step=None: {reason}\n\
             outcome: Failed ConfigError retryable=false: {reason}\n\
             output: \"\""
        ),
    )
    .await;
}

#[tokio::test]
async fn unknown_providers_fail_before_the_run_starts() {
    let runner = Runner::new(
        exo_models::default_factory(),
        Arc::new(ToolRegistry::new()),
        McpPolicy::deny_all(),
    );
    let run = collect(
        &runner,
        &spec(agent("helper", "bogus:model", json!({}))),
        "hi",
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_summary(
        "unknown provider",
        &summary(&run),
        r#"
        error helper: ConfigError step=None: agent `helper`: model `bogus:model`: unknown model provider `bogus` in `bogus:model` (known: openai, ollama, vllm, anthropic, gemini, scripted, mock)
        outcome: Failed ConfigError retryable=false: agent `helper`: model `bogus:model`: unknown model provider `bogus` in `bogus:model` (known: openai, ollama, vllm, anthropic, gemini, scripted, mock)
        output: ""
        "#,
    );
}

#[tokio::test]
async fn reasoning_streams_in_detailed_runs_only() {
    let config = agent(
        "thinker",
        &script(
            json!([{"reasoning": ["Hmm, ", "easy."], "text": "42", "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}]),
        ),
        json!({}),
    );
    let model = config["model"].as_str().unwrap().to_owned();
    check(
        "detailed",
        config.clone(),
        true,
        &format!(
            r#"
            status thinker: starting "Agent 'thinker' starting execution"
            step thinker 1 Started
            reasoning thinker: "Hmm, "
            reasoning thinker: "easy."
            text thinker: "42"
            usage thinker: step 1 3/2/5 {model}
            step thinker 1 Completed
            outcome: Completed
            output: "42"
            "#
        ),
    )
    .await;
    check(
        "plain",
        config,
        false,
        r#"
        text thinker: "42"
        outcome: Completed
        output: "42"
        "#,
    )
    .await;
}

#[tokio::test]
async fn echo_streams_the_input_in_ten_chunks() {
    let runner = test_runner();
    let input = "one two three four five six seven eight nine ten eleven";
    let run = collect(
        &runner,
        &spec(agent("echoer", "scripted:echo", json!({}))),
        input,
        Vec::new(),
        RunOptions::default(),
    )
    .await;
    assert_eq!(run.kinds(), ["text"; 10]);
    assert_eq!(run.text(), input);
    assert_eq!(run.outcome.output, input);
}

#[tokio::test]
async fn history_and_instructions_shape_the_conversation() {
    // The echo provider answers the last user message: the input, not the
    // history, and the assistant turns it reports include the answer.
    let runner = test_runner();
    let history = vec![
        Message::user("earlier"),
        Message::assistant("noted", vec![]),
    ];
    let run = collect(
        &runner,
        &spec(agent(
            "echoer",
            "scripted:echo",
            json!({"instructions": "Repeat."}),
        )),
        "now",
        history,
        RunOptions::default(),
    )
    .await;
    assert_eq!(run.outcome.output, "now");
    assert_eq!(
        run.messages,
        vec![("echoer".to_owned(), Message::assistant("now", vec![]))]
    );
}

#[tokio::test]
async fn a_closed_event_receiver_does_not_stop_the_run() {
    let runner = test_runner();
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    drop(receiver);
    let outcome = runner
        .run(
            &spec(agent(
                "helper",
                "scripted:weather",
                json!({"tools": ["get_weather"]}),
            )),
            "Weather?",
            Vec::new(),
            RunOptions {
                detailed: true,
                ..RunOptions::default()
            },
            sender,
        )
        .await;
    assert_eq!(outcome.output, "Let me check. It is sunny in Paris.");
}
