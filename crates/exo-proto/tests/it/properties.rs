//! Property tests: serialize then deserialize is the identity, and no input
//! bytes make a decoder panic.

use exo_proto::{
    Content, ErrorEvent, Message, RunStatus, StatusEvent, StepEvent, StepStatus, StreamEvent,
    TaskPayload, TaskResult, TaskStatus, TextEvent, ToolCall, ToolCallDeltaEvent, ToolCallEvent,
    ToolOutput, ToolResultEvent, Usage, UsageEvent, WorkerHealth, decode,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[a-z_]{1,12}",
        Just(String::new()),
        Just("\u{1F600} \"quoted\" \\ \n".to_owned())
    ]
}

fn time() -> impl Strategy<Value = f64> {
    (0.0f64..4.0e9).prop_map(|value| value)
}

fn usage() -> impl Strategy<Value = Usage> {
    (0u64..1_000_000, 0u64..1_000_000).prop_map(|(input, output)| Usage {
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(Value::from),
        text().prop_map(Value::from),
    ]
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    let value = json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z_]{1,8}", value, 0..4)
        .prop_map(|map| map.into_iter().collect())
}

fn run_status() -> impl Strategy<Value = RunStatus> {
    prop_oneof![
        Just(RunStatus::Starting),
        Just(RunStatus::Running),
        Just(RunStatus::WaitingForTool),
        Just(RunStatus::Completed),
        Just(RunStatus::Cancelled),
        Just(RunStatus::Error),
    ]
}

fn event() -> impl Strategy<Value = StreamEvent> {
    prop_oneof![
        (text(), text())
            .prop_map(|(text, agent_name)| StreamEvent::Text(TextEvent { text, agent_name })),
        (text(), text(), text(), text()).prop_map(
            |(tool_name, tool_call_id, arguments, agent_name)| {
                StreamEvent::ToolCall(ToolCallEvent {
                    tool_name,
                    tool_call_id,
                    arguments,
                    agent_name,
                })
            }
        ),
        (0u32..8, text(), text(), text(), text()).prop_map(
            |(index, tool_call_id, tool_name, arguments_delta, agent_name)| {
                StreamEvent::ToolCallDelta(ToolCallDeltaEvent {
                    index,
                    tool_call_id,
                    tool_name,
                    arguments_delta,
                    agent_name,
                })
            }
        ),
        (
            1u32..100,
            text(),
            any::<bool>(),
            time(),
            proptest::option::of(time()),
            proptest::option::of(usage())
        )
            .prop_map(
                |(step_number, agent_name, done, started_at, completed_at, usage)| {
                    StreamEvent::Step(StepEvent {
                        step_number,
                        agent_name,
                        status: if done {
                            StepStatus::Completed
                        } else {
                            StepStatus::Started
                        },
                        started_at,
                        completed_at,
                        usage,
                    })
                }
            ),
        (
            text(),
            text(),
            json_object(),
            prop_oneof![
                text().prop_map(ToolOutput::Text),
                prop::collection::vec(json_leaf(), 0..3).prop_map(ToolOutput::Blocks)
            ],
            proptest::option::of(text()),
            any::<bool>(),
            0.0f64..1e6,
            text()
        )
            .prop_map(
                |(
                    tool_name,
                    tool_call_id,
                    arguments,
                    result,
                    error,
                    success,
                    duration_ms,
                    agent_name,
                )| {
                    StreamEvent::ToolResult(ToolResultEvent {
                        tool_name,
                        tool_call_id,
                        arguments,
                        result,
                        error,
                        success,
                        duration_ms,
                        agent_name,
                    })
                }
            ),
        (
            text(),
            text(),
            text(),
            proptest::option::of(0u32..50),
            any::<bool>()
        )
            .prop_map(
                |(error, error_type, agent_name, step_number, recoverable)| {
                    StreamEvent::Error(ErrorEvent {
                        error,
                        error_type,
                        agent_name,
                        step_number,
                        recoverable,
                    })
                }
            ),
        (run_status(), text(), text()).prop_map(|(status, agent_name, message)| {
            StreamEvent::Status(StatusEvent {
                status,
                agent_name,
                message,
                extra: serde_json::Map::new(),
            })
        }),
        (usage(), text(), 0u32..50, text()).prop_map(|(usage, agent_name, step_number, model)| {
            StreamEvent::Usage(UsageEvent {
                usage,
                agent_name,
                step_number,
                model,
            })
        }),
    ]
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        text().prop_map(Content::Text),
        prop::collection::vec(
            text().prop_map(|text| json!({"type": "text", "text": text})),
            0..3
        )
        .prop_map(Content::Blocks),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        text().prop_map(Message::system),
        content().prop_map(|content| Message::User { content }),
        (
            content(),
            prop::collection::vec(
                (text(), text(), text()).prop_map(|(id, name, arguments)| ToolCall {
                    id,
                    name,
                    arguments
                }),
                0..3
            )
        )
            .prop_map(|(content, tool_calls)| Message::Assistant {
                content,
                tool_calls
            }),
        (text(), text(), content(), proptest::option::of(text())).prop_map(
            |(tool_call_id, tool_name, content, error)| Message::Tool {
                tool_call_id,
                tool_name,
                content,
                error
            }
        ),
    ]
}

fn payload() -> impl Strategy<Value = TaskPayload> {
    (
        "[0-9a-f]{32}",
        json_object(),
        text(),
        prop::collection::vec(message(), 0..4),
        proptest::option::of(text()),
        any::<bool>(),
        json_object(),
        time(),
        0.001f64..1e5,
        proptest::option::of(0u32..10),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                task_id,
                agent_config,
                input,
                messages,
                model,
                detailed,
                metadata,
                created_at,
                timeout_seconds,
                max_retries,
                idempotency_key,
            )| {
                TaskPayload {
                    task_id,
                    agent_config,
                    input,
                    messages,
                    model,
                    detailed,
                    metadata,
                    created_at,
                    timeout_seconds,
                    max_retries,
                    idempotency_key,
                    run_at: None,
                    budget: None,
                    priority: None,
                    concurrency_key: None,
                    concurrency_limit: None,
                    multitask_strategy: None,
                }
            },
        )
}

fn task_status() -> impl Strategy<Value = TaskStatus> {
    prop::sample::select(TaskStatus::ALL.to_vec())
}

fn task_result() -> impl Strategy<Value = TaskResult> {
    (
        "[0-9a-f]{32}",
        task_status(),
        proptest::option::of("[a-z0-9-]{1,20}"),
        proptest::option::of(time()),
        proptest::option::of(time()),
        proptest::option::of(text().prop_map(|output| json!({"output": output}))),
        proptest::option::of(".{1,20}"),
        proptest::option::of(0u32..10),
        proptest::option::of(1u32..10),
    )
        .prop_map(
            |(
                task_id,
                status,
                worker_id,
                started_at,
                completed_at,
                result,
                error,
                retries,
                attempt,
            )| {
                let mut task = TaskResult::new(task_id, status);
                task.worker_id = worker_id;
                task.started_at = started_at;
                task.completed_at = completed_at;
                task.result = result;
                task.error = error;
                task.retries = retries;
                task.attempt = attempt;
                task
            },
        )
}

proptest! {
    #[test]
    fn events_round_trip(event in event()) {
        let json = event.to_json();
        let again: StreamEvent = decode("event", json.as_bytes()).unwrap();
        prop_assert_eq!(again, event);
    }

    #[test]
    fn payloads_round_trip(payload in payload()) {
        let again = TaskPayload::from_json(payload.to_json().as_bytes()).unwrap();
        prop_assert_eq!(again, payload);
    }

    #[test]
    fn task_hashes_round_trip(task in task_result()) {
        let again = TaskResult::from_hash(task.to_hash_fields()).unwrap();
        prop_assert_eq!(again, task);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = TaskPayload::from_json(&bytes);
        let _ = decode::<StreamEvent>("event", &bytes);
        let _ = decode::<Message>("message", &bytes);
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) {
            let _ = exo_proto::AgentSpec::from_map(&map);
        }
    }

    #[test]
    fn mutated_fixtures_never_panic_a_decoder(position in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        for name in ["tool_run_detailed.payload.raw", "tool_run_detailed.events.jsonl", "agent_config.swarm.json"] {
            let mut bytes = std::fs::read(format!("{}/test_data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let at = position.index(bytes.len());
            bytes[at] = byte;
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
            let _ = TaskPayload::from_json(&bytes);
            for line in bytes.split(|&b| b == b'\n') {
                let _ = decode::<StreamEvent>("event", line);
            }
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) {
                let _ = exo_proto::AgentSpec::from_map(&map);
            }
        }
    }

    #[test]
    fn arbitrary_hash_fields_never_panic(fields in prop::collection::vec(("[a-z_]{1,14}", ".{0,12}"), 0..12)) {
        let _ = TaskResult::from_hash(fields.clone());
        let _ = WorkerHealth::from_hash("w", fields);
    }
}
