//! MCP tools against a real MCP server over stdio. The server is
//! `mcp/fixture_server.rs`, built on the `rmcp` server side; the tests
//! launch this very test binary, filtered to [`fixture_server_entry`] and
//! with `EXO_MCP_FIXTURE_SERVER=1`, as the server's child process. (libtest
//! prints a line before the test starts; MCP clients ignore lines that are
//! not JSON.)

use crate::common;
mod fixture_server;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{agent, assert_summary, collect, scripted_factory, spec, summary};
use exo_agent::{McpPolicy, OutcomeStatus, RunOptions, Runner, ToolRegistry};
use exo_proto::StreamEvent;
use serde_json::{Value, json};

const SERVER_SWITCH: &str = "EXO_MCP_FIXTURE_SERVER";

/// Not a test of its own: the entry point of the fixture MCP server when
/// this binary runs with `EXO_MCP_FIXTURE_SERVER=1`; otherwise it does
/// nothing.
#[tokio::test]
async fn fixture_server_entry() {
    if std::env::var(SERVER_SWITCH).as_deref() == Ok("1") {
        fixture_server::serve().await;
    }
}

/// This test binary, which is the command the MCP configs launch.
fn fixture_command() -> String {
    std::env::current_exe()
        .expect("the test binary's path")
        .to_str()
        .expect("a UTF-8 path")
        .to_owned()
}

/// An MCP tool object for one of the fixture server's tools.
fn mcp_tool(name: &str, original: &str, command: &str, env: Value) -> Value {
    let mut env = env;
    env[SERVER_SWITCH] = json!("1");
    json!({
        "__mcp_tool__": true,
        "name": name,
        "description": format!("The fixture's {original} tool."),
        "parameters": {"type": "object"},
        "original_name": original,
        "server_name": "fixture",
        "server_config": {
            "transport": "stdio",
            "command": command,
            "args": FIXTURE_ARGS,
            "env": env,
        },
    })
}

/// The fixture server's fixed arguments.
const FIXTURE_ARGS: &[&str] = &[
    "--exact",
    "mcp::fixture_server_entry",
    "--nocapture",
    "--quiet",
    "--test-threads",
    "1",
];

/// A policy that allows the fixture server exactly as `mcp_tool` launches
/// it, with the variables its configs set.
fn fixture_policy(command: &str) -> McpPolicy {
    McpPolicy::deny_all()
        .allow_launch(command, FIXTURE_ARGS)
        .allow_env(SERVER_SWITCH)
        .allow_env("EXO_FIXTURE")
}

fn mcp_runner(policy: McpPolicy) -> Runner {
    Runner::new(
        scripted_factory(),
        Arc::new(ToolRegistry::with_builtins()),
        policy,
    )
}

fn script(turns: Value) -> String {
    format!("scripted:{turns}")
}

/// True while a process with this id exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the MCP server {pid} outlived its run");
}

fn tool_result(events: &[StreamEvent], call_id: &str) -> String {
    events
        .iter()
        .find_map(|event| match event {
            StreamEvent::ToolResult(result) if result.tool_call_id == call_id => {
                Some(match &result.error {
                    Some(error) => format!("error: {error}"),
                    None => serde_json::to_string(&result.result).unwrap(),
                })
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool result for {call_id}"))
}

#[tokio::test]
async fn an_mcp_round_trip_over_stdio() {
    let command = fixture_command();
    let command = command.as_str();
    let env = json!({"EXO_FIXTURE": "set by the config"});
    let tools: Vec<Value> = [
        ("fixture_add", "add"),
        ("fixture_count", "count"),
        ("fixture_fail", "fail"),
        ("fixture_env", "env"),
        ("fixture_pid", "pid"),
    ]
    .iter()
    .map(|(name, original)| mcp_tool(name, original, command, env.clone()))
    .collect();
    let model = script(json!([
        {"tool_calls": [
            {"id": "add", "name": "fixture_add", "arguments": {"a": 2, "b": 3}},
            {"id": "count", "name": "fixture_count", "arguments": {"n": 3}},
            {"id": "fail", "name": "fixture_fail", "arguments": {}},
        ]},
        {"tool_calls": [
            {"id": "leak", "name": "fixture_env", "arguments": {"name": "CARGO_MANIFEST_DIR"}},
            {"id": "given", "name": "fixture_env", "arguments": {"name": "EXO_FIXTURE"}},
            {"id": "pid1", "name": "fixture_pid", "arguments": {}},
        ]},
        {"tool_calls": [{"id": "pid2", "name": "fixture_pid", "arguments": {}}]},
        {"text": "done"}
    ]));
    let runner = mcp_runner(fixture_policy(command));
    let run = collect(
        &runner,
        &spec(agent("helper", &model, json!({"tools": tools}))),
        "use the server",
        Vec::new(),
        common::detailed(),
    )
    .await;
    assert_eq!(
        run.outcome.status,
        OutcomeStatus::Completed,
        "{:?}",
        run.outcome
    );
    assert_eq!(tool_result(&run.events, "add"), r#""5""#);
    assert_eq!(tool_result(&run.events, "count"), r#""counted to 3""#);
    assert_eq!(tool_result(&run.events, "fail"), "error: it broke");
    assert_eq!(
        tool_result(&run.events, "leak"),
        r#""<unset>""#,
        "a launched server must not inherit the worker's environment"
    );
    assert_eq!(tool_result(&run.events, "given"), r#""set by the config""#);
    let pid = tool_result(&run.events, "pid1");
    assert_eq!(
        pid,
        tool_result(&run.events, "pid2"),
        "one session per server per run"
    );
    let progress: Vec<String> = run
        .events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::McpProgress(progress) => Some(format!(
                "{} {}/{:?} {}",
                progress.tool_name, progress.progress, progress.total, progress.message
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        [
            "fixture_count 1/Some(3.0) step 1",
            "fixture_count 2/Some(3.0) step 2",
            "fixture_count 3/Some(3.0) step 3"
        ]
    );
    let pid: u32 = pid.trim_matches('"').parse().unwrap();
    wait_until_gone(pid);
}

/// How the run of [`check_session_closed`] ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Cancel,
    Deadline,
}

/// Starts a run whose MCP tool is busy for a minute, ends it by `end`
/// while the call is in flight, and checks that the server process is
/// gone afterwards.
async fn check_session_closed(end: End) {
    let command = fixture_command();
    let command = command.as_str();
    let tools = vec![
        mcp_tool("pid", "pid", command, json!({})),
        mcp_tool("nap", "sleep", command, json!({})),
    ];
    let model = script(json!([
        {"tool_calls": [{"id": "pid", "name": "pid", "arguments": {}}]},
        {"tool_calls": [{"id": "nap", "name": "nap", "arguments": {"ms": 60000}}]},
        {"text": "never"}
    ]));
    let runner = mcp_runner(fixture_policy(command));
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    let spec = spec(agent("helper", &model, json!({"tools": tools})));
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = RunOptions {
        detailed: true,
        cancel: cancel.clone(),
        deadline: (end == End::Deadline)
            .then(|| tokio::time::Instant::now() + Duration::from_secs(3)),
        pause: None,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let run =
        tokio::spawn(async move { runner.run(&spec, "nap", Vec::new(), options, sender).await });
    let mut pid = None;
    while let Some(event) = receiver.recv().await {
        let exo_agent::RunEvent::Stream(event) = event else {
            continue;
        };
        match event {
            StreamEvent::ToolResult(result) if result.tool_call_id == "pid" => {
                pid = Some(serde_json::to_string(&result.result).unwrap());
            }
            StreamEvent::ToolCall(call) if call.tool_call_id == "nap" && end == End::Cancel => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cancel.cancel();
            }
            _ => {}
        }
    }
    let outcome = run.await.unwrap();
    let expected = match end {
        End::Cancel => OutcomeStatus::Cancelled,
        End::Deadline => OutcomeStatus::TimedOut,
    };
    assert_eq!(outcome.status, expected);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: u32 = pid
        .expect("the pid tool answered")
        .trim_matches('"')
        .parse()
        .unwrap();
    wait_until_gone(pid);
}

#[tokio::test]
async fn a_cancelled_run_closes_its_mcp_session() {
    check_session_closed(End::Cancel).await;
}

#[tokio::test]
async fn a_timed_out_run_closes_its_mcp_session() {
    check_session_closed(End::Deadline).await;
}

#[tokio::test]
async fn servers_the_policy_does_not_allow_are_refused() {
    let command = fixture_command();
    let command = command.as_str();
    let check = |policy: McpPolicy, tool: Value, expected: String| async move {
        let run = collect(
            &mcp_runner(policy),
            &spec(agent("helper", "scripted:noop", json!({"tools": [tool]}))),
            "x",
            Vec::new(),
            RunOptions::default(),
        )
        .await;
        assert_summary(
            "refused",
            &summary(&run),
            &format!(
                "error helper: ConfigError step=None: {expected}\n\
                 outcome: Failed ConfigError retryable=false: {expected}\n\
                 output: \"\""
            ),
        );
    };
    check(
        McpPolicy::deny_all().allow_command("/usr/bin/true"),
        mcp_tool("add", "add", command, json!({})),
        format!(
            "agent `helper`: MCP tool `add` (server `fixture`) is refused: the command `{command} {}` \
             is not in this worker's MCP command allowlist (allowed: /usr/bin/true)",
            FIXTURE_ARGS.join(" ")
        ),
    )
    .await;
    let mut http = mcp_tool("remote", "add", command, json!({}));
    http["server_config"] =
        json!({"transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"});
    check(
        fixture_policy(command),
        http,
        "agent `helper`: MCP tool `remote` (server `fixture`) is refused: this worker does not \
         allow MCP servers over HTTP (url `http://127.0.0.1:9/mcp`)"
            .to_owned(),
    )
    .await;
}

#[tokio::test]
async fn an_mcp_round_trip_over_streamable_http() {
    let (url, stop) = fixture_server::serve_http().await;
    let http_tool = |name: &str, original: &str| {
        let mut tool = mcp_tool(name, original, "unused", json!({}));
        tool["server_config"] = json!({
            "transport": "streamable_http",
            "url": url,
            "headers": {"x-exo-test": "from the config"},
        });
        tool
    };
    let model = script(json!([
        {"tool_calls": [
            {"id": "add", "name": "remote_add", "arguments": {"a": 20, "b": 22}},
            {"id": "header", "name": "remote_header", "arguments": {"name": "x-exo-test"}},
            {"id": "fail", "name": "remote_fail", "arguments": {}},
        ]},
        {"tool_calls": [{"id": "count", "name": "remote_count", "arguments": {"n": 2}}]},
        {"text": "done"}
    ]));
    let tools = vec![
        http_tool("remote_add", "add"),
        http_tool("remote_header", "header"),
        http_tool("remote_fail", "fail"),
        http_tool("remote_count", "count"),
    ];
    let run = collect(
        &mcp_runner(McpPolicy::deny_all().allow_http_host("127.0.0.1")),
        &spec(agent("helper", &model, json!({"tools": tools}))),
        "use the remote server",
        Vec::new(),
        common::detailed(),
    )
    .await;
    stop.cancel();
    assert_eq!(
        run.outcome.status,
        OutcomeStatus::Completed,
        "{:?}",
        run.outcome
    );
    assert_eq!(tool_result(&run.events, "add"), r#""42""#);
    assert_eq!(tool_result(&run.events, "header"), r#""from the config""#);
    assert_eq!(tool_result(&run.events, "fail"), "error: it broke");
    assert_eq!(tool_result(&run.events, "count"), r#""counted to 2""#);
}

#[tokio::test]
async fn an_unreachable_http_server_is_a_tool_error() {
    // Allowed, but nothing listens: the call fails, and the model hears it.
    let port = exo_testkit::free_port();
    let mut tool = mcp_tool("remote", "add", "unused", json!({}));
    tool["server_config"] =
        json!({"transport": "streamable_http", "url": format!("http://127.0.0.1:{port}/mcp")});
    let model = script(json!([
        {"tool_calls": [{"id": "r", "name": "remote", "arguments": {"a": 1, "b": 1}}]},
        {"text": "The server is down."}
    ]));
    let run = collect(
        &mcp_runner(McpPolicy::deny_all().allow_http_host("127.0.0.1")),
        &spec(agent("helper", &model, json!({"tools": [tool]}))),
        "x",
        Vec::new(),
        common::detailed(),
    )
    .await;
    assert_eq!(run.outcome.status, OutcomeStatus::Completed);
    let result = tool_result(&run.events, "r");
    assert!(
        result.starts_with("error: MCP server `fixture` at http://127.0.0.1:"),
        "{result}"
    );
}

#[tokio::test]
async fn a_payload_cannot_make_an_allowed_program_run_its_own_code() {
    // The operator allows one script through `sh`; payloads try to run
    // their own code through the same program, or load it through the
    // environment. Nothing runs, and the task says why.
    let marker = std::env::temp_dir().join(format!(
        "exo-mcp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&marker).unwrap();
    let touched = marker.join("pwned");
    let allowed = McpPolicy::deny_all()
        .allow_command("sh /usr/share/exo/mcp-time.sh")
        .allow_env("TZ");
    let attempts = [
        json!({"command": "sh", "args": ["-c", format!("touch {}", touched.display())]}),
        json!({"command": "sh", "args": ["/usr/share/exo/mcp-time.sh", "-c", format!("touch {}", touched.display())]}),
        json!({"command": "sh", "args": ["/usr/share/exo/mcp-time.sh"], "env": {"BASH_ENV": touched.display().to_string()}}),
        json!({"command": "sh", "args": ["/usr/share/exo/mcp-time.sh"], "env": {"PATH": marker.display().to_string()}}),
        json!({"command": "sh", "args": ["/usr/share/exo/mcp-time.sh"], "cwd": "/"}),
    ];
    for server_config in attempts {
        let tool = json!({
            "__mcp_tool__": true,
            "name": "x",
            "description": "x",
            "parameters": {"type": "object"},
            "original_name": "x",
            "server_name": "evil",
            "server_config": server_config,
        });
        let run = collect(
            &mcp_runner(allowed.clone()),
            &spec(agent("helper", "scripted:noop", json!({"tools": [tool]}))),
            "x",
            Vec::new(),
            RunOptions::default(),
        )
        .await;
        assert_eq!(run.outcome.status, OutcomeStatus::Failed, "{server_config}");
        assert!(!run.outcome.retryable);
        let error = run.outcome.error.clone().unwrap_or_default();
        assert!(error.contains("is refused"), "{server_config}: {error}");
        assert!(!touched.exists(), "{server_config} ran code on the worker");
    }
}
