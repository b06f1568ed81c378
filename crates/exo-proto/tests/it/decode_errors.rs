//! Bad input gives an error that names the field and the reason; it never
//! panics.

use exo_proto::{AgentSpec, StreamEvent, TaskPayload, TaskResult, TaskStatus, decode};
use serde_json::{Value, json};

fn payload_error(value: Value) -> String {
    TaskPayload::from_json(value.to_string().as_bytes())
        .expect_err("the payload should be rejected")
        .to_string()
}

fn base_payload() -> Value {
    json!({"task_id": "abc", "agent_config": {"name": "a"}, "input": "hi"})
}

/// Each case: a change to a valid payload and words the error must contain.
#[test]
fn payload_errors_name_the_field() {
    let cases: &[(&str, Value, &[&str])] = &[
        (
            "unknown role",
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}]}),
            &["messages[1]", "unknown message role `robot`"],
        ),
        (
            "role not a string",
            json!({"messages": [{"role": 7}]}),
            &["messages[0]", "`role` must be a string"],
        ),
        (
            "missing role",
            json!({"messages": [{"content": "x"}]}),
            &["messages[0]", "missing field `role`"],
        ),
        (
            "tool message without id",
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            &["messages[0]", "tool_call_id"],
        ),
        (
            "detailed not a bool",
            json!({"detailed": "yes"}),
            &["detailed", "expected a boolean"],
        ),
        (
            "timeout negative",
            json!({"timeout_seconds": -1}),
            &["timeout_seconds", "positive"],
        ),
        ("empty id", json!({"task_id": ""}), &["task_id", "empty"]),
        (
            "metadata not an object",
            json!({"metadata": [1]}),
            &["metadata", "expected a map"],
        ),
    ];
    for (name, change, needles) in cases {
        let mut payload = base_payload();
        for (key, value) in change.as_object().unwrap() {
            payload[key] = value.clone();
        }
        let error = payload_error(payload);
        for needle in *needles {
            assert!(error.contains(needle), "{name}: `{error}` lacks `{needle}`");
        }
    }
    let mut no_id = base_payload();
    no_id.as_object_mut().unwrap().remove("task_id");
    assert!(payload_error(no_id).contains("missing field `task_id`"));
}

#[test]
fn truncated_json_says_where_it_ends() {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/test_data/tool_run_detailed.payload.raw"
    ))
    .unwrap();
    for cut in [1, raw.len() / 3, raw.len() / 2, raw.len() - 1] {
        let error = TaskPayload::from_json(&raw[..cut])
            .expect_err("truncated")
            .to_string();
        assert!(error.contains("EOF while parsing"), "cut at {cut}: {error}");
        assert!(error.starts_with("invalid task payload"), "{error}");
    }
    let error = TaskPayload::from_json(b"{\"task_id\": \"a\"} trailing").expect_err("trailing");
    assert!(error.to_string().contains("trailing characters"), "{error}");
}

#[test]
fn event_errors_name_the_type() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"type": "nope"}"#,
            &["unknown event type `nope`", "tool_call_delta"],
        ),
        (r#"{"text": "x"}"#, &["missing field `type`"]),
        (
            r#"{"type": "text"}"#,
            &["text event", "missing field `text`"],
        ),
        (
            r#"{"type": "status", "status": "bogus"}"#,
            &["status event", "bogus"],
        ),
        (
            r#"{"type": "step", "step_number": -1, "status": "started", "started_at": 1}"#,
            &["step event"],
        ),
    ];
    for (line, needles) in cases {
        let error = decode::<StreamEvent>("event", line.as_bytes())
            .expect_err(line)
            .to_string();
        for needle in *needles {
            assert!(error.contains(needle), "{line}: `{error}` lacks `{needle}`");
        }
    }
}

#[test]
fn omitted_event_fields_take_reference_defaults() {
    let event: StreamEvent = decode(
        "event",
        br#"{"type": "tool_result", "tool_name": "t", "tool_call_id": "c"}"#,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"type": "tool_result", "tool_name": "t", "tool_call_id": "c", "arguments": {}, "result": "",
               "error": null, "success": true, "duration_ms": 0.0, "agent_name": ""})
    );
    let event: StreamEvent = decode("event", br#"{"type": "error", "error": "boom"}"#).unwrap();
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"type": "error", "error": "boom", "error_type": "", "agent_name": "", "step_number": null, "recoverable": false})
    );
}

#[test]
fn agent_config_rules() {
    let cases: &[(Value, Option<&str>)] = &[
        (json!({"name": "a"}), None),
        (json!({}), Some("missing field `name`")),
        (json!({"name": ""}), Some("`name` is required")),
        (
            json!({"name": "a", "max_steps": 0}),
            Some("`max_steps` must be at least 1"),
        ),
        (
            json!({"name": "a", "max_spawn_children": 9}),
            Some("between 1 and 8"),
        ),
        (
            json!({"name": "a", "max_spawn_children": 0}),
            Some("between 1 and 8"),
        ),
        (
            json!({"name": "a", "max_parallel_subagents": 8}),
            Some("between 1 and 7"),
        ),
        (json!({"name": "a", "ptc": true}), Some("`ptc: true`")),
        (
            json!({"name": "a", "hitl_tools": ["x"]}),
            Some("`hitl_tools` names `x`"),
        ),
        (
            json!({"name": "a", "tools": ["m.x"], "hitl_tools": ["x"]}),
            None,
        ),
        (
            json!({"name": "a", "tools": [{"__mcp_tool__": true, "name": "y", "server_config": {"transport": "stdio", "command": "srv"}}], "hitl_tools": ["y"]}),
            None,
        ),
        (json!({"name": "a", "max_steps": "ten"}), Some("max_steps")),
        (json!({"agents": []}), Some("at least one agent")),
        (
            json!({"agents": [{"name": "a"}, {"name": "a"}]}),
            Some("named `a`"),
        ),
        (
            json!({"agents": [{"name": "a"}, {"name": "b"}], "flow": "a >> c"}),
            Some("unknown agent `c`"),
        ),
        (
            json!({"agents": [{"name": "a"}, {"name": "b"}], "flow": "a >> b >> a"}),
            Some("cycle"),
        ),
        (
            json!({"agents": [{"name": "a"}, {"name": "b"}], "flow": "a >> (b"}),
            Some("not closed"),
        ),
        (
            json!({"agents": [{"name": "a"}, {"name": "b"}], "mode": "mesh"}),
            Some("mode"),
        ),
        (
            json!({"agents": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "flow": "a >> (b | c)"}),
            None,
        ),
    ];
    for (config, expected) in cases {
        let result = AgentSpec::from_map(config.as_object().unwrap());
        match (result, expected) {
            (Ok(_), None) => {}
            (Err(error), Some(needle)) => {
                assert!(
                    error.to_string().contains(needle),
                    "{config}: `{error}` lacks `{needle}`"
                )
            }
            (Ok(_), Some(needle)) => panic!("{config}: accepted, expected `{needle}`"),
            (Err(error), None) => panic!("{config}: rejected: {error}"),
        }
    }
}

#[test]
fn flow_stages() {
    let agents = ["a", "b", "c", "d"];
    let cases: &[(&str, &[&[&str]])] = &[
        ("a", &[&["a"]]),
        ("a >> b", &[&["a"], &["b"]]),
        ("a >> (b | c) >> d", &[&["a"], &["b", "c"], &["d"]]),
        ("(a|b)>>c", &[&["a", "b"], &["c"]]),
        ("a | b >> c", &[&["a", "b"], &["c"]]),
    ];
    for (flow, expected) in cases {
        let stages = exo_proto::parse_flow(flow, &agents).unwrap();
        let expected: Vec<Vec<String>> = expected
            .iter()
            .map(|stage| stage.iter().map(|name| (*name).to_owned()).collect())
            .collect();
        assert_eq!(stages, expected, "{flow}");
    }
    for bad in ["", "a >>", ">> a", "a >> ((b | c))", "a >> b c", "(a | )"] {
        assert!(
            exo_proto::parse_flow(bad, &agents).is_err(),
            "`{bad}` was accepted"
        );
    }
}

#[test]
fn task_hash_rules() {
    let hash = [
        ("task_id", "t"),
        ("status", "running"),
        ("worker_id", ""),
        ("started_at", "12.5"),
        ("surprise", "x"),
    ];
    let task = TaskResult::from_hash(hash).unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.worker_id, None, "an empty string means unset");
    assert_eq!(task.started_at, Some(12.5));
    let error = TaskResult::from_hash([("task_id", "t"), ("status", "queued")])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown status `queued`") && error.contains("pending, running"),
        "{error}"
    );
    let error = TaskResult::from_hash([("task_id", "t"), ("status", "failed"), ("retries", "x")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("`retries`"), "{error}");
    assert!(
        TaskResult::from_hash([("status", "failed")])
            .unwrap_err()
            .to_string()
            .contains("task_id")
    );
}
