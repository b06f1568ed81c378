//! Golden tests: every file captured from the reference parses, and
//! re-serializes to the same JSON (compared semantically).

use std::{collections::BTreeMap, path::PathBuf};

use exo_proto::{AgentSpec, Keys, StreamEvent, TaskPayload, TaskResult, WorkerHealth};
use serde_json::Value;

fn test_data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// JSON equality where numbers compare by value (1 == 1.0).
fn same_json(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => left.as_f64() == right.as_f64(),
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(l, r)| same_json(l, r))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .all(|(key, l)| right.get(key).is_some_and(|r| same_json(l, r)))
        }
        _ => left == right,
    }
}

/// The kinds of golden data, each with its own round trip.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Payload,
    Events,
    TaskHash,
    TaskHashList,
    Heartbeat,
    AgentConfig,
}

/// Parses `text` as `kind` and re-serializes it; returns the re-serialized
/// value, or the reason it could not be parsed.
fn round_trip(kind: Kind, text: &str) -> Result<Vec<(Value, Value)>, String> {
    let original = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
    match kind {
        Kind::Payload => {
            let payload = TaskPayload::from_json(text.as_bytes()).map_err(|e| e.to_string())?;
            let again = serde_json::to_value(&payload).map_err(|e| e.to_string())?;
            let spec = payload.agent_spec().map_err(|e| e.to_string())?;
            let config = Value::Object(payload.agent_config.clone());
            Ok(vec![
                (original(text)?, again),
                (config, Value::Object(spec.to_map())),
            ])
        }
        Kind::Events => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let event: StreamEvent =
                    exo_proto::decode("event", line.as_bytes()).map_err(|e| e.to_string())?;
                Ok((
                    original(line)?,
                    serde_json::to_value(&event).map_err(|e| e.to_string())?,
                ))
            })
            .collect(),
        Kind::TaskHash => Ok(vec![hash_round_trip(&original(text)?)?]),
        Kind::TaskHashList => match original(text)? {
            Value::Array(hashes) => hashes.iter().map(hash_round_trip).collect(),
            _ => Err("not a list".into()),
        },
        Kind::Heartbeat => {
            let value = original(text)?;
            if value["ttl_seconds"] != 30 {
                return Err(format!(
                    "heartbeat TTL is {}, exo writes 30",
                    value["ttl_seconds"]
                ));
            }
            let fields = string_map(&value["fields"])?;
            let health = WorkerHealth::from_hash("fixture-host-1-abcd1234", &fields)
                .map_err(|e| e.to_string())?;
            let again: BTreeMap<&str, String> = health.to_hash_fields().into_iter().collect();
            Ok(vec![(
                value["fields"].clone(),
                serde_json::to_value(again).unwrap(),
            )])
        }
        Kind::AgentConfig => {
            let value = original(text)?;
            let map = value.as_object().ok_or("not an object")?;
            let spec = AgentSpec::from_map(map).map_err(|e| e.to_string())?;
            Ok(vec![(value, Value::Object(spec.to_map()))])
        }
    }
}

fn string_map(value: &Value) -> Result<BTreeMap<String, String>, String> {
    value
        .as_object()
        .ok_or("not an object")?
        .iter()
        .map(|(key, value)| {
            Ok((
                key.clone(),
                value.as_str().ok_or("not a string")?.to_owned(),
            ))
        })
        .collect()
}

/// Hash values are strings; the `result` field holds JSON, compared parsed.
fn hash_round_trip(value: &Value) -> Result<(Value, Value), String> {
    let fields = string_map(value)?;
    let task = TaskResult::from_hash(&fields).map_err(|e| e.to_string())?;
    let normalize = |fields: BTreeMap<String, String>| -> Value {
        Value::Object(
            fields
                .into_iter()
                .map(|(key, text)| {
                    let value = if key == "result" {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    } else {
                        Value::String(text)
                    };
                    (key, value)
                })
                .collect(),
        )
    };
    let again = task
        .to_hash_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Ok((normalize(fields), normalize(again)))
}

const GOLDEN: &[(&str, Kind)] = &[
    ("tool_run_detailed.payload.json", Kind::Payload),
    ("tool_run_detailed.payload.raw", Kind::Payload),
    ("tool_run_plain.payload.json", Kind::Payload),
    ("tool_run_plain.payload.raw", Kind::Payload),
    ("tool_run_detailed.events.jsonl", Kind::Events),
    ("tool_run_plain.events.jsonl", Kind::Events),
    ("error_run.events.jsonl", Kind::Events),
    ("tool_run_detailed.task_hash.json", Kind::TaskHash),
    ("tool_run_plain.task_hash.json", Kind::TaskHash),
    ("error_run.task_hash_per_attempt.json", Kind::TaskHashList),
    ("worker_heartbeat.hash.json", Kind::Heartbeat),
    ("agent_config.defaults.json", Kind::AgentConfig),
    ("agent_config.helper.json", Kind::AgentConfig),
    ("agent_config.swarm.json", Kind::AgentConfig),
];

fn check(kind: Kind, text: &str) -> Result<usize, String> {
    let pairs = round_trip(kind, text)?;
    for (original, again) in &pairs {
        if !same_json(original, again) {
            return Err(format!(
                "round trip changed the value\n original: {original}\n    again: {again}"
            ));
        }
    }
    Ok(pairs.len())
}

#[test]
fn every_golden_file_round_trips() {
    for (name, kind) in GOLDEN {
        let count =
            check(*kind, &test_data(name)).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(count > 0, "{name}: nothing checked");
    }
}

#[test]
fn every_fixture_file_is_covered() {
    let covered: Vec<&str> = GOLDEN.iter().map(|(name, _)| *name).collect();
    let extra = [
        "README.md",
        "error_run.xinfo_groups.json",
        "redis_keys_after_runs.json",
    ];
    for entry in
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data")).unwrap()
    {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            covered.contains(&name.as_str()) || extra.contains(&name.as_str()),
            "{name} is not checked by any golden test"
        );
    }
}

/// Renames the first key of every object whose keys include `field`.
fn rename_field(value: &mut Value, field: &str, to: &str) -> bool {
    match value {
        Value::Object(map) => {
            if let Some(inner) = map.remove(field) {
                map.insert(to.to_owned(), inner);
                return true;
            }
            map.values_mut().any(|inner| rename_field(inner, field, to))
        }
        Value::Array(items) => items.iter_mut().any(|inner| rename_field(inner, field, to)),
        _ => false,
    }
}

#[test]
fn a_renamed_field_in_any_fixture_is_caught() {
    for (name, kind) in GOLDEN {
        let text = test_data(name);
        let documents: Vec<Value> = match kind {
            Kind::Events => text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
            _ => vec![serde_json::from_str(&text).unwrap()],
        };
        let mut fields = Vec::new();
        collect_keys(&documents[0], &mut fields);
        for field in fields {
            let mut mutated = documents.clone();
            if !rename_field(&mut mutated[0], &field, &format!("{field}_x")) {
                continue;
            }
            let mutated_text = match kind {
                Kind::Events => mutated
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => mutated[0].to_string(),
            };
            assert!(
                check(*kind, &mutated_text).is_err(),
                "{name}: renaming `{field}` went unnoticed"
            );
        }
    }
}

/// Objects whose keys are free-form data rather than schema.
const FREE_FORM: &[&str] = &[
    "metadata",
    "arguments",
    "details",
    "injected_tool_args",
    "ptc_extra_args",
];

fn collect_keys(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                into.push(key.clone());
                if !FREE_FORM.contains(&key.as_str()) {
                    collect_keys(inner, into);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|inner| collect_keys(inner, into)),
        _ => {}
    }
}

#[test]
fn key_names_match_what_the_reference_left_in_redis() {
    let expected: Vec<String> =
        serde_json::from_str(&test_data("redis_keys_after_runs.json")).unwrap();
    let keys = Keys::default();
    let task_id = "29f02497dbd74d7ab87919fd22256ad8";
    let mut ours = vec![
        keys.event_stream(task_id),
        keys.task(task_id),
        keys.task_index(),
        keys.queue().to_owned(),
        keys.worker("fixture-host-1-abcd1234"),
    ];
    ours.sort();
    assert_eq!(ours, expected);
    let groups: Value = serde_json::from_str(&test_data("error_run.xinfo_groups.json")).unwrap();
    assert_eq!(groups[0]["name"], Value::String(keys.group()));
}

#[test]
fn the_error_run_ran_one_plus_max_retries_times() {
    let hashes: Vec<BTreeMap<String, String>> =
        serde_json::from_str(&test_data("error_run.task_hash_per_attempt.json")).unwrap();
    let statuses: Vec<String> = hashes
        .iter()
        .map(|fields| TaskResult::from_hash(fields).unwrap().status.to_string())
        .collect();
    assert_eq!(statuses, ["retrying", "retrying", "retrying", "failed"]);
    let events = test_data("error_run.events.jsonl");
    let terminal = events
        .lines()
        .map(|line| exo_proto::decode::<StreamEvent>("event", line.as_bytes()).unwrap())
        .filter(StreamEvent::is_terminal)
        .count();
    assert_eq!(
        terminal, 4,
        "the reference ends every attempt with status(error)"
    );
}

#[test]
fn the_swarm_fixture_parses_into_stages() {
    let value: Value = serde_json::from_str(&test_data("agent_config.swarm.json")).unwrap();
    let AgentSpec::Swarm(swarm) = AgentSpec::from_map(value.as_object().unwrap()).unwrap() else {
        panic!("not a swarm");
    };
    assert_eq!(
        swarm.stages().unwrap(),
        vec![vec!["helper".to_owned()], vec!["writer".to_owned()]]
    );
    assert_eq!(swarm.agents[0].tools[0].tool_name(), "get_weather");
}

/// A `status` event's extension fields (a `waiting_for_tool` event, a
/// decision) survive a read and a write, and the tag is written once.
#[test]
fn status_extension_fields_round_trip() {
    let text = r#"{"type":"status","status":"waiting_for_tool","agent_name":"a","message":"m","waiting_for":"approval","tool_name":"send","arguments":"{}","approval_deadline":1.5}"#;
    let event: StreamEvent = serde_json::from_str(text).unwrap();
    let StreamEvent::Status(status) = &event else {
        panic!("not a status event: {event:?}")
    };
    assert_eq!(status.extra["tool_name"], "send");
    assert!(!status.extra.contains_key("type"));
    let written = serde_json::to_string(&event).unwrap();
    assert_eq!(written.matches("\"type\"").count(), 1, "{written}");
    let again: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(again, serde_json::from_str::<Value>(text).unwrap());
}
