//! The usage ledger with a real worker and a fake provider that reports
//! usage: `exo usage` sums what the provider reported by tenant and by
//! model, with cost from the worker's price table; the worker's metrics
//! count the same; a cost budget stops a run before its next call.

use std::time::Duration;

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::{FakeLlmServer, FakeResponse, RecordedRequest, TestRedis};
use serde_json::{Value, json};

const MODEL: &str = "openai:gpt-4o-mini";

/// Every call uses 100 input and 20 output tokens; a request that has a
/// tool result gets text, one without gets a call to `get_weather` when
/// the agent has tools.
fn provider() -> FakeLlmServer {
    let server = FakeLlmServer::start();
    server.set_handler(|request: &RecordedRequest| {
        if !request.path_only().ends_with("/chat/completions") {
            return None;
        }
        let body = request.json();
        let has_tools = body["tools"]
            .as_array()
            .is_some_and(|tools| !tools.is_empty());
        let answered = body["messages"]
            .as_array()
            .is_some_and(|messages| messages.iter().any(|message| message["role"] == "tool"));
        if has_tools && !answered {
            return Some(FakeResponse::openai_tool_calls_with_usage(
                &[("call_1", "get_weather", r#"{"city":"Oslo"}"#)],
                100,
                20,
            ));
        }
        Some(FakeResponse::openai_text_with_usage("done", 100, 20))
    });
    server
}

fn usage_rows(target: &Target, by: &str) -> Vec<Value> {
    let shown = target.json(&["usage", "--since", "1h", "--by", by]);
    shown["rows"].as_array().cloned().unwrap_or_default()
}

#[test]
fn exo_usage_sums_what_the_provider_reported_and_a_cost_budget_stops_a_run() {
    let redis = TestRedis::new();
    let provider = provider();
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "ledger", "model": MODEL, "max_tokens": 20}),
    );
    let port = exo_testkit::free_port();
    let metrics = format!("127.0.0.1:{port}");
    // $1 per input token and $2 per output token: a call costs $140.
    let _worker = target.start_worker(&[
        "--concurrency",
        "4",
        "--price",
        "gpt-4o-mini=1000000,2000000",
        "--metrics-addr",
        &metrics,
    ]);
    let agent_path = agent.to_str().unwrap();
    let submit = |extra: &[&str]| -> String {
        let mut args = vec!["task", "submit", "--agent", agent_path, "--input", "hi"];
        args.extend_from_slice(extra);
        target.json(&args)["task_id"].as_str().unwrap().to_owned()
    };
    let tenant = json!({"tenant": "acme"}).to_string();
    let tasks = [
        submit(&["--metadata", &tenant]),
        submit(&["--metadata", &tenant]),
        submit(&[]),
    ];
    for task in &tasks {
        let status = target.wait_for_status(task, "completed", Duration::from_secs(30));
        assert_eq!(
            status["usage"],
            json!({"input_tokens": 100, "output_tokens": 20, "calls": 1, "cost_micros": 140_000_000}),
            "{status}"
        );
    }
    let shown = target.run(&["task", "status", &tasks[0]]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("Usage      1 model call, 100 input + 20 output tokens, $140.000000"),
        "{shown}"
    );

    let by_tenant = usage_rows(&target, "tenant");
    assert_eq!(
        by_tenant,
        [
            json!({"tenant": "", "input_tokens": 100, "output_tokens": 20, "calls": 1, "cost_usd": 140.0}),
            json!({"tenant": "acme", "input_tokens": 200, "output_tokens": 40, "calls": 2, "cost_usd": 280.0}),
        ]
    );
    let by_model = usage_rows(&target, "model");
    assert_eq!(
        by_model,
        [
            json!({"model": MODEL, "input_tokens": 300, "output_tokens": 60, "calls": 3, "cost_usd": 420.0})
        ]
    );
    let scraped = eventually(Duration::from_secs(10), "the worker's metrics", || {
        let (_, text) = exo_testkit::http_get(port, "/metrics").ok()?;
        text.contains("exo_model_tokens_total").then_some(text)
    });
    for line in [
        format!("exo_model_tokens_total{{model=\"{MODEL}\",kind=\"input\"}} 300"),
        format!("exo_model_tokens_total{{model=\"{MODEL}\",kind=\"output\"}} 60"),
        format!("exo_model_cost_micro_usd_total{{model=\"{MODEL}\"}} 420000000"),
    ] {
        assert!(
            scraped.lines().any(|shown| shown == line),
            "{line} not in\n{scraped}"
        );
    }

    // A budget of $100 lets the first call through (nothing is spent yet;
    // it costs $140) and refuses the second.
    let tools = agent_file(
        dir.path(),
        "tools.json",
        &json!({"name": "ledger", "model": MODEL, "max_tokens": 20, "tools": ["get_weather"]}),
    );
    let capped = target.json(&[
        "task",
        "submit",
        "--agent",
        tools.to_str().unwrap(),
        "--input",
        "weather?",
        "--budget-cost",
        "100",
    ])["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = target.wait_for_status(&capped, "failed", Duration::from_secs(30));
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cost budget of $100 is spent ($140.000000 used)"),
        "{failed}"
    );
}
