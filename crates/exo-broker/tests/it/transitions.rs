//! The broker's transitions as data. Each file under
//! `test_data/transitions/` lists steps (one call each), then, below the
//! `----` line, what they did: every step's reply, and for the last step the
//! task hashes before it, the hashes after it and the events it appended.
//! `UPDATE_EXPECT=1 cargo test -p exo-broker transitions` rewrites the part
//! below the line.
//!
//! Steps: `submit <id> [max_retries=N] [priority=N] [key=K] [limit=N]
//! [strategy=S]` (S: a multitask strategy), `claim <worker> [count]`,
//! `finish <id> completed <output>`, `finish <id> failed retryable|fatal
//! <error>`, `finish <id> cancelled`, `cancel <id>`, `publish <id> <text>`
//! (fenced on the claim), `finish-claim <id> completed <output>` (the final
//! write that also claims the worker's next task), `release <id>`, `heartbeat <worker>` (with the
//! worker's claimed leases), `reap <worker>`, `redrive <id>`, `sleep <ms>`,
//! `journal <id> <record JSON>` (a step-journal record, fenced on the
//! claim), `wait <id> <tool> [wait ms]` (the attempt stops for an approval
//! of a call to `tool`), `approve <id> <who>`, `deny <id> <who> <reason>`,
//! and `raw <command...>` where `{queue}` and `{task:<id>}` name keys.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use exo_broker::{Broker, ClaimedTask, Decision, FinishOptions, Outcome, PublishOptions};
use exo_proto::{ApprovalRequest, RunStatus, StepKey, StreamEvent, TextEvent};
use exo_testkit::TestRedis;
use fred::prelude::*;
use serde_json::json;

use crate::common::*;

const SEPARATOR: &str = "----\n";

/// Hash fields whose values differ from run to run.
const VOLATILE: [(&str, &str); 7] = [
    ("approval_deadline", "<time>"),
    ("created_at", "<time>"),
    ("started_at", "<time>"),
    ("completed_at", "<time>"),
    ("cancel_requested_at", "<time>"),
    ("entry", "<entry>"),
    ("lease", "<token>"),
];

#[tokio::test]
async fn transitions() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/transitions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("test_data/transitions")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        if let Err(message) = check_transition(file).await {
            failures.push(message);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs one file's steps on a fresh key prefix and compares what they did
/// with the file's expectation.
async fn check_transition(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap();
    let (steps, expected) = match text.split_once(SEPARATOR) {
        Some((steps, expected)) => (steps.to_owned(), expected.to_owned()),
        None => (text.clone(), String::new()),
    };
    let redis = TestRedis::new();
    let mut world = World {
        broker: broker(&redis).await,
        raw: raw(&redis).await,
        claimed: HashMap::new(),
        submitted: Vec::new(),
    };
    let lines: Vec<&str> = steps
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut actual = String::new();
    for (index, line) in lines.iter().enumerate() {
        let last = index + 1 == lines.len();
        let before = if last {
            Some(world.snapshot().await)
        } else {
            None
        };
        let reply = world.step(line).await;
        actual.push_str(&format!("> {line}\n{reply}\n"));
        if let Some(before) = before {
            let after = world.snapshot().await;
            actual.push_str(&render_last(&before, &after));
        }
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, format!("{steps}{SEPARATOR}{actual}")).unwrap();
        return Ok(());
    }
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "{} differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ))
    }
}

struct World {
    broker: Broker,
    raw: fred::prelude::Client,
    claimed: HashMap<String, (String, ClaimedTask)>,
    submitted: Vec<String>,
}

/// Every submitted task's hash and event stream at one moment.
struct Snapshot {
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    events: BTreeMap<String, Vec<String>>,
}

impl World {
    async fn step(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let rest = |from: usize| words[from.min(words.len())..].join(" ");
        match words.as_slice() {
            ["submit", id, options @ ..] => {
                let mut payload = payload("hi");
                payload.task_id = (*id).to_owned();
                for option in options {
                    match option.split_once('=') {
                        Some(("max_retries", retries)) => {
                            payload.max_retries = Some(retries.parse().unwrap());
                        }
                        Some(("priority", priority)) => {
                            payload.priority = Some(priority.parse().unwrap());
                        }
                        Some(("key", key)) => payload.concurrency_key = Some(key.to_owned()),
                        Some(("limit", limit)) => {
                            payload.concurrency_limit = Some(limit.parse().unwrap());
                        }
                        Some(("strategy", strategy)) => {
                            payload.multitask_strategy = Some(strategy.parse().unwrap());
                        }
                        _ => panic!("unknown submit option {option}"),
                    }
                }
                self.submitted.push((*id).to_owned());
                match self.broker.client().submit(payload).await {
                    Ok(handle) => format!("{:?} {}", handle.submitted(), handle.task_id()),
                    Err(error) => format!("error: {error}"),
                }
            }
            ["claim", worker, count @ ..] => {
                let count = count.first().map_or(10, |count| count.parse().unwrap());
                let mut claimer = self.broker.worker_session(*worker).claimer();
                let claim = claimer
                    .claim(count, Duration::from_millis(50))
                    .await
                    .unwrap();
                claimer.close().await;
                let mut ids = Vec::new();
                for task in claim.tasks {
                    ids.push(format!(
                        "{} (attempt {}, retries {}/{})",
                        task.lease.task_id, task.lease.attempt, task.retries, task.max_retries
                    ));
                    self.claimed
                        .insert(task.lease.task_id.clone(), ((*worker).to_owned(), task));
                }
                let rejected: Vec<String> = claim
                    .rejected
                    .iter()
                    .map(|rejected| {
                        format!(
                            "{}: {}",
                            rejected.task_id.as_deref().unwrap_or("?"),
                            rejected.reason
                        )
                    })
                    .collect();
                format!("claimed {ids:?} rejected {rejected:?}")
            }
            ["finish", id, kind, ..] => {
                let (worker, task) = self.claimed[*id].clone();
                let session = self.broker.worker_session(worker);
                let agent = "helper";
                let (outcome, terminal, text) = match *kind {
                    "completed" => ("completed", completed(agent), rest(3)),
                    "failed" => ("failed", errored(agent, &rest(4)), rest(4)),
                    _ => ("cancelled", cancelled(agent), String::new()),
                };
                let outcome = match outcome {
                    "completed" => Outcome::Completed { output: &text },
                    "failed" => Outcome::Failed {
                        error: &text,
                        retryable: words.get(3) == Some(&"retryable"),
                    },
                    _ => Outcome::Cancelled,
                };
                match session
                    .finish(&task, outcome, vec![], &terminal, FinishOptions::default())
                    .await
                {
                    Ok(finished) => format!("{finished:?}"),
                    Err(error) => format!("error: {error}"),
                }
            }
            ["finish-claim", id, "completed", ..] => {
                let (worker, task) = self.claimed[*id].clone();
                let mut claimer = self.broker.worker_session(worker.clone()).claimer();
                let output = rest(3);
                let (finished, claim) = claimer
                    .finish_then_claim(
                        &task,
                        Outcome::Completed { output: &output },
                        vec![],
                        &completed("helper"),
                        FinishOptions::default(),
                        1,
                    )
                    .await
                    .unwrap();
                let ids: Vec<String> = claim
                    .tasks
                    .iter()
                    .map(|task| format!("{} (attempt {})", task.lease.task_id, task.lease.attempt))
                    .collect();
                for task in claim.tasks {
                    self.claimed
                        .insert(task.lease.task_id.clone(), (worker.clone(), task));
                }
                format!("{finished:?}, claimed {ids:?}")
            }
            ["cancel", id] => format!("{:?}", self.broker.client().cancel(id).await.unwrap()),
            ["publish", id, ..] => {
                let (worker, task) = self.claimed[*id].clone();
                let event = StreamEvent::Text(TextEvent {
                    text: rest(2),
                    agent_name: "helper".into(),
                });
                let options = PublishOptions {
                    fence: Some(&task.lease),
                };
                let written = self
                    .broker
                    .worker_session(worker)
                    .publish(id, &[event.to_json()], options)
                    .await
                    .unwrap();
                format!("written {written}")
            }
            ["journal", id, ..] => {
                let (worker, task) = self.claimed[*id].clone();
                let options = PublishOptions {
                    fence: Some(&task.lease),
                };
                let written = self
                    .broker
                    .worker_session(worker)
                    .publish_with_journal(id, &[], &[rest(2)], options)
                    .await
                    .unwrap();
                format!("written {written}")
            }
            ["wait", id, tool, wait @ ..] => {
                let (worker, task) = self.claimed[*id].clone();
                let wait =
                    Duration::from_millis(wait.first().map_or(60_000, |ms| ms.parse().unwrap()));
                let approval = serde_json::to_string(&ApprovalRequest {
                    key: StepKey {
                        scope: "helper".into(),
                        call: 1,
                    },
                    agent_name: "helper".into(),
                    tool_call_id: "c1".into(),
                    tool_name: (*tool).to_owned(),
                    arguments: r#"{"to":"ada"}"#.into(),
                })
                .unwrap();
                let event =
                    json!({"type": "status", "status": "waiting_for_tool", "agent_name": "helper",
                    "message": "waiting", "waiting_for": "approval", "tool_name": tool})
                    .to_string();
                let terminal = StreamEvent::status(RunStatus::WaitingForTool, "helper", "waiting");
                let outcome = Outcome::Waiting {
                    approval: &approval,
                    event: &event,
                    wait,
                };
                match self
                    .broker
                    .worker_session(worker)
                    .finish(&task, outcome, vec![], &terminal, FinishOptions::default())
                    .await
                {
                    Ok(finished) => format!("{finished:?}"),
                    Err(error) => format!("error: {error}"),
                }
            }
            ["approve" | "deny", id, who, ..] => {
                let decision = Decision {
                    approved: words[0] == "approve",
                    by: (*who).to_owned(),
                    reason: (words[0] == "deny").then(|| rest(3)),
                    arguments: None,
                    tool_call_id: None,
                };
                match self.broker.client().decide(id, &decision).await {
                    Ok(decided) => format!("{decided:?}"),
                    Err(error) => format!("error: {error}"),
                }
            }
            ["release", id] => {
                let (worker, task) = self.claimed[*id].clone();
                let released = self
                    .broker
                    .worker_session(worker)
                    .release(std::slice::from_ref(&task.lease))
                    .await
                    .unwrap();
                format!("released {released}")
            }
            ["heartbeat", worker] => {
                let leases: Vec<_> = self
                    .claimed
                    .values()
                    .filter(|(owner, _)| owner == worker)
                    .map(|(_, task)| task.lease.clone())
                    .collect();
                let report = self
                    .broker
                    .worker_session(*worker)
                    .heartbeat(&health(worker), Duration::from_secs(30), &leases)
                    .await
                    .unwrap();
                format!("{report:?}")
            }
            ["reap", worker] => {
                let report = self.broker.worker_session(*worker).reap(100).await.unwrap();
                format!("{report:?}")
            }
            ["redrive", id] => {
                let admin = self.broker.admin();
                let letters = admin.dead_letters(100).await.unwrap();
                let letter = letters
                    .iter()
                    .find(|letter| letter.task_id == *id)
                    .expect("a dead letter of the task");
                match admin.redrive(&letter.entry_id).await {
                    Ok(task_id) => format!("redriven {task_id}"),
                    Err(error) => format!("error: {error}"),
                }
            }
            ["sleep", millis] => {
                tokio::time::sleep(Duration::from_millis(millis.parse().unwrap())).await;
                String::new()
            }
            ["raw", command @ ..] => {
                let keys = self.broker.keys().clone();
                let mut arguments: Vec<String> = command
                    .iter()
                    .map(|word| {
                        if *word == "{queue}" {
                            keys.queue().to_owned()
                        } else if let Some(id) = word
                            .strip_prefix("{task:")
                            .and_then(|id| id.strip_suffix('}'))
                        {
                            if !self.submitted.iter().any(|known| known == id) {
                                self.submitted.push(id.to_owned());
                            }
                            keys.task(id)
                        } else {
                            (*word).to_owned()
                        }
                    })
                    .collect();
                let name = arguments.remove(0);
                let value: Result<fred::types::Value, _> = self
                    .raw
                    .custom(
                        fred::types::CustomCommand::new(
                            name,
                            fred::types::ClusterHash::FirstKey,
                            false,
                        ),
                        arguments,
                    )
                    .await;
                match value {
                    Ok(_) => "ok".to_owned(),
                    Err(error) => format!("error: {error}"),
                }
            }
            _ => panic!("unknown step `{line}`"),
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let keys = self.broker.keys();
        let mut hashes = BTreeMap::new();
        let mut events = BTreeMap::new();
        for id in &self.submitted {
            let mut fields: HashMap<String, String> =
                self.raw.hgetall(keys.task(id)).await.unwrap();
            for (field, placeholder) in VOLATILE {
                if let Some(value) = fields.get_mut(field) {
                    *value = placeholder.to_owned();
                }
            }
            for value in fields.values_mut() {
                if value.starts_with('{') {
                    *value = timeless(value);
                }
            }
            hashes.insert(id.clone(), fields.into_iter().collect());
            let entries: Vec<(String, HashMap<String, String>)> = self
                .raw
                .xrange(keys.event_stream(id), "-", "+", None)
                .await
                .unwrap();
            events.insert(
                id.clone(),
                entries
                    .into_iter()
                    .filter_map(|(_, mut fields)| fields.remove("event"))
                    .collect(),
            );
            let journal: Vec<String> = self.raw.lrange(keys.journal(id), 0, -1).await.unwrap();
            if !journal.is_empty() {
                hashes.insert(
                    format!("{id} journal"),
                    journal
                        .iter()
                        .enumerate()
                        .map(|(index, record)| (index.to_string(), timeless(record)))
                        .collect(),
                );
            }
        }
        let dead: u64 = self.raw.xlen(keys.dead_letter()).await.unwrap();
        let mut queue = BTreeMap::from([("dead letters".to_owned(), dead.to_string())]);
        let waiting: u64 = self.raw.zcard(keys.approvals()).await.unwrap();
        if waiting > 0 {
            queue.insert("waiting for approval".to_owned(), waiting.to_string());
        }
        hashes.insert("(queue)".to_owned(), queue);
        Snapshot { hashes, events }
    }
}

/// JSON text with its times (`at`, `approval_deadline`) replaced.
fn timeless(text: &str) -> String {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(object) => {
                for (key, value) in object.iter_mut() {
                    if key == "at" || key == "approval_deadline" {
                        *value = json!("<time>");
                    } else {
                        walk(value);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap_or(json!(text));
    walk(&mut value);
    value.to_string()
}

/// The last step's before and after, as text.
fn render_last(before: &Snapshot, after: &Snapshot) -> String {
    let mut text = String::new();
    let hashes = |title: &str, snapshot: &Snapshot, text: &mut String| {
        text.push_str(&format!("{title}:\n"));
        for (id, fields) in &snapshot.hashes {
            let fields: Vec<String> = fields
                .iter()
                .map(|(field, value)| format!("{field}={value}"))
                .collect();
            text.push_str(&format!("  {id}: {}\n", fields.join(" ")));
        }
    };
    hashes("hashes before", before, &mut text);
    hashes("hashes after", after, &mut text);
    text.push_str("events appended:\n");
    for (id, events) in &after.events {
        let seen = before.events.get(id).map_or(0, Vec::len);
        for event in events.iter().skip(seen) {
            text.push_str(&format!("  {id}: {}\n", timeless(event)));
        }
    }
    text
}
