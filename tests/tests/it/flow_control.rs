//! Flow control with real worker processes and a fake provider that logs
//! every request: one tenant's backlog does not hold back another's tasks
//! while its own limit holds; priorities order a backlog; a conversation's
//! second task follows its multitask strategy (reject, enqueue, interrupt,
//! rollback), with what the first run wrote to memory kept or deleted.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use exo_e2e::{Target, agent_file, eventually};
use exo_proto::{Keys, TaskPayload, TaskStatus};
use exo_testkit::{FakeLlmServer, FakeResponse, RecordedRequest, TestRedis};
use serde_json::{Value, json};

const MODEL: &str = "openai:gpt-4o-mini";

/// The last user message of a chat-completions request, and every
/// message's text.
fn inputs(request: &RecordedRequest) -> (String, Vec<String>) {
    let body = request.json();
    let messages: Vec<String> = body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|message| match &message["content"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let last_user = body["messages"]
        .as_array()
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|message| message["role"] == "user")
        })
        .map(|message| message["content"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    (last_user, messages)
}

/// A provider that answers an input containing "slow" over `slow` and any
/// other input over `quick`, and logs (input, every message's text) in
/// arrival order.
fn logging_provider(
    quick: Duration,
    slow: Duration,
) -> (FakeLlmServer, Arc<Mutex<Vec<(String, Vec<String>)>>>) {
    let server = FakeLlmServer::start();
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&log);
    server.set_handler(move |request: &RecordedRequest| {
        if !request.path_only().ends_with("/chat/completions") {
            return None;
        }
        let (input, messages) = inputs(request);
        let pace = if input.contains("slow") { slow } else { quick };
        shared.lock().unwrap().push((input.clone(), messages));
        Some(FakeResponse::openai_text_paced(
            &format!("answer to {input}"),
            4,
            pace / 4,
        ))
    });
    (server, log)
}

fn broker(redis: &TestRedis, runtime: &tokio::runtime::Runtime) -> exo_broker::Broker {
    runtime.block_on(async {
        exo_broker::Broker::connect(
            exo_broker::BrokerConfig::new(redis.url())
                .with_keys(Keys::new(redis.prefix(), redis.queue())),
        )
        .await
        .unwrap()
    })
}

fn payload(input: &str, key: &str, limit: Option<u32>) -> TaskPayload {
    let config = json!({"name": "flow", "model": MODEL, "max_tokens": 20});
    let mut payload = TaskPayload::new(uuid_like(), config.as_object().unwrap().clone(), input);
    payload.concurrency_key = Some(key.to_owned());
    payload.concurrency_limit = limit;
    payload.max_retries = Some(0);
    payload
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{now:x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn one_tenants_backlog_does_not_hold_back_another_and_its_limit_holds() {
    let redis = TestRedis::new();
    let (provider, _log) = logging_provider(Duration::from_millis(200), Duration::ZERO);
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = broker(&redis, &runtime);
    let client = broker.client();
    let workers: Vec<_> = (0..2)
        .map(|_| target.start_worker(&["--concurrency", "8"]))
        .collect();

    // Tenant A: 2,000 tasks, at most 4 running at once.
    let a_ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for start in (0..2000).step_by(200) {
            let submits = (start..start + 200).map(|index| {
                let client = client.clone();
                async move {
                    client
                        .submit(payload(&format!("a-{index}"), "tenant-a", Some(4)))
                        .await
                        .unwrap()
                        .task_id()
                        .to_owned()
                }
            });
            ids.extend(futures_join(submits).await);
        }
        ids
    });
    // Then tenant B: 10 tasks.
    let b_ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for index in 0..10 {
            ids.push(
                client
                    .submit(payload(&format!("b-{index}"), "tenant-b", Some(4)))
                    .await
                    .unwrap()
                    .task_id()
                    .to_owned(),
            );
        }
        ids
    });
    let submitted_b = Instant::now();
    let waits: Vec<f64> = eventually(Duration::from_secs(60), "B's tasks to start", || {
        runtime.block_on(async {
            let mut waits = Vec::new();
            for id in &b_ids {
                let task = client.get(id).await.unwrap()?;
                let started = task.started_at?;
                waits.push(started - task.created_at.unwrap_or(started));
            }
            Some(waits)
        })
    });
    let slowest = waits.iter().copied().fold(0.0, f64::max);
    // A's limit, over the first 15 s: never more than 4 of its tasks
    // between start and end at once.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(submitted_b.elapsed()));
    let (overlap, a_done, shown) = runtime.block_on(async {
        let mut spans = Vec::new();
        let mut tasks = Vec::new();
        let mut done = 0;
        for id in &a_ids {
            // A task still running when read is known to run until then,
            // not forever: the reads are not one snapshot, and a task that
            // starts after this one was read (and its slot freed) does not
            // overlap it. The clock is read before the request, so the
            // span never reaches past what the read saw.
            let read_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let task = client.get(id).await.unwrap().unwrap();
            if let Some(started) = task.started_at {
                let ended = task.completed_at.unwrap_or(read_at);
                spans.push((started, ended));
                tasks.push(task.clone());
                if task.status == TaskStatus::Completed {
                    done += 1;
                }
            }
        }
        let (most, at) = most_at_once(&spans);
        let shown: Vec<String> = tasks
            .iter()
            .zip(&spans)
            .filter(|(_, (start, end))| *start <= at && at < *end)
            .map(|(task, span)| {
                format!(
                    "{} {:?} attempt {:?} on {:?} {span:?}",
                    task.task_id, task.status, task.attempt, task.worker_id
                )
            })
            .collect();
        (most, done, shown)
    });
    let _ = writeln!(
        std::io::stderr(),
        "fairness: B's 10 tasks started {:.3} s (median {:.3} s) after submission at worst; A ran at most {overlap} at once, {a_done} of 2000 done in 15 s",
        slowest,
        median(&waits)
    );
    assert!(
        slowest < 5.0,
        "tenant B waited {slowest:.1} s behind tenant A's backlog"
    );
    if overlap > 4 {
        let members = std::process::Command::new("redis-cli")
            .args([
                "-u",
                redis.url(),
                "SMEMBERS",
                &format!("{}:ckey:tenant-a:running", redis.queue()),
            ])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "running set: {members:?}");
        for worker in &workers {
            let logged = worker.stderr();
            let notable: Vec<&str> = logged
                .lines()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .take(40)
                .collect();
            let _ = writeln!(
                std::io::stderr(),
                "worker {}: {notable:#?}",
                worker.worker_id
            );
        }
    }
    assert!(
        overlap <= 4,
        "tenant A ran {overlap} tasks at once: {shown:#?}"
    );
    assert!(a_done > 0, "tenant A made no progress");
}

/// Runs futures concurrently on the current runtime.
async fn futures_join<F: std::future::Future<Output = String> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<String> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// The most spans (start, end) that overlap at one instant, and that
/// instant.
fn most_at_once(spans: &[(f64, f64)]) -> (usize, f64) {
    let mut edges: Vec<(f64, i32)> = spans
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // An end before a start at the same instant: a slot handed on.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most, mut when) = (0i32, 0i32, 0.0);
    for (at, step) in edges {
        now += step;
        if now > most {
            most = now;
            when = at;
        }
    }
    (most as usize, when)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

#[test]
fn priorities_order_a_backlog() {
    let redis = TestRedis::new();
    let (provider, log) = logging_provider(Duration::from_millis(50), Duration::from_millis(2000));
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "flow", "model": MODEL, "max_tokens": 20}),
    );
    let _worker = target.start_worker(&["--concurrency", "1"]);
    let blocker = target.submit(&agent, "blocker slow");
    target.wait_for_status(&blocker, "running", Duration::from_secs(20));
    // A task without a priority waits in line; the prioritized ones wait
    // beside it, and go by priority once the line is empty.
    target.submit(&agent, "plain");
    let agent_path = agent.to_str().unwrap();
    let submit = |input: &str, priority: &str| {
        target.json(&[
            "task",
            "submit",
            "--agent",
            agent_path,
            "--input",
            input,
            "--priority",
            priority,
        ])["task_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut last = String::new();
    for index in 0..3 {
        submit(&format!("p5-{index}"), "5");
        last = submit(&format!("p1-{index}"), "1");
    }
    let shown = target.status(&last);
    assert_eq!(shown["status"], "pending", "{shown}");
    let order = eventually(Duration::from_secs(30), "every task to run", || {
        let log = log.lock().unwrap();
        (log.len() >= 8).then(|| {
            log.iter()
                .map(|(input, _)| input.clone())
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(
        order,
        [
            "blocker slow",
            "plain",
            "p1-0",
            "p1-1",
            "p1-2",
            "p5-0",
            "p5-1",
            "p5-2"
        ]
    );
}

#[test]
fn a_conversations_second_task_follows_its_strategy() {
    let redis = TestRedis::new();
    let (provider, log) = logging_provider(Duration::from_millis(50), Duration::from_secs(30));
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    let store = format!("main=sqlite://{}/memory.db", dir.path().display());
    let _worker = target.start_worker(&["--concurrency", "4", "--memory-store", &store]);
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "flow", "model": MODEL, "max_tokens": 20}),
    );
    let agent_path = agent.to_str().unwrap().to_owned();
    let submit = |conversation: &str, strategy: &str, input: &str| {
        let metadata =
            json!({"memory": {"store": "main", "scope": {"session_id": conversation}}}).to_string();
        target
            .command()
            .args([
                "task",
                "submit",
                "--json",
                "--agent",
                &agent_path,
                "--input",
                input,
                "--max-retries",
                "0",
                "--concurrency-key",
                conversation,
                "--multitask-strategy",
                strategy,
                "--metadata",
                &metadata,
            ])
            .output()
            .unwrap()
    };
    let task_id = |output: std::process::Output| -> String {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
        shown["task_id"].as_str().unwrap().to_owned()
    };
    let request_of = |input: &str| {
        eventually(
            Duration::from_secs(30),
            &format!("the call of {input}"),
            || {
                log.lock()
                    .unwrap()
                    .iter()
                    .find(|(seen, _)| seen == input)
                    .map(|(_, messages)| messages.clone())
            },
        )
    };

    // reject: refused while the first runs.
    let first = task_id(submit("conv-reject", "reject", "reject first slow"));
    request_of("reject first slow");
    let refused = submit("conv-reject", "reject", "reject second");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("busy"), "{message}");
    target.run(&["task", "cancel", &first]);

    // enqueue: the second runs after the first, and sees it in memory.
    let first = task_id(submit("conv-enqueue", "enqueue", "enqueue first"));
    let second = task_id(submit("conv-enqueue", "enqueue", "enqueue second"));
    target.wait_for_status(&second, "completed", Duration::from_secs(30));
    let first_state = target.status(&first);
    let second_state = target.status(&second);
    assert!(
        first_state["completed_at"].as_f64() <= second_state["started_at"].as_f64(),
        "{first_state} {second_state}"
    );
    let seen = request_of("enqueue second");
    assert!(seen.iter().any(|text| text == "enqueue first"), "{seen:?}");

    // interrupt: the first is cancelled; what it wrote to memory stays.
    let first = task_id(submit(
        "conv-interrupt",
        "interrupt",
        "interrupt first slow",
    ));
    request_of("interrupt first slow");
    let second = task_id(submit("conv-interrupt", "interrupt", "interrupt second"));
    target.wait_for_status(&first, "cancelled", Duration::from_secs(20));
    target.wait_for_status(&second, "completed", Duration::from_secs(30));
    let seen = request_of("interrupt second");
    assert!(
        seen.iter().any(|text| text == "interrupt first slow"),
        "{seen:?}"
    );

    // rollback: the first is cancelled and what it wrote is deleted.
    let first = task_id(submit("conv-rollback", "rollback", "rollback first slow"));
    request_of("rollback first slow");
    let second = task_id(submit("conv-rollback", "rollback", "rollback second"));
    target.wait_for_status(&first, "cancelled", Duration::from_secs(20));
    target.wait_for_status(&second, "completed", Duration::from_secs(30));
    let seen = request_of("rollback second");
    assert!(
        !seen.iter().any(|text| text.contains("rollback first")),
        "{seen:?}"
    );
}

/// A task of the agent `slow` (100 ms, no provider) whose id routes it to
/// shard `shard` of `shards`.
fn on_shard(shard: u32, shards: u32) -> TaskPayload {
    loop {
        let id = uuid_like();
        if exo_proto::shard_of(&id, shards) == shard {
            let config = json!({"name": "slow", "model": "scripted:slow:100"});
            return TaskPayload::new(id, config.as_object().unwrap().clone(), "x");
        }
    }
}

#[test]
fn a_sharded_worker_shares_its_slots_between_busy_and_quiet_shards() {
    let redis = TestRedis::new();
    let target = Target::of(&redis).with_env("EXO_SHARDS", "2");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shards = runtime.block_on(async {
        exo_broker::Shards::connect(
            exo_broker::BrokerConfig::new(redis.url())
                .with_keys(Keys::new(redis.prefix(), redis.queue())),
            2,
        )
        .await
        .unwrap()
    });
    // Shard 0: a backlog of 200 tasks of 100 ms (10 s on 2 slots).
    runtime.block_on(async {
        for _ in 0..200 {
            shards
                .first()
                .client()
                .submit(on_shard(0, 2))
                .await
                .unwrap();
        }
    });
    let mut worker = target.start_worker(&["--concurrency", "2"]);
    // Past one claim block (2 s): shard 1's loop found nothing and waits
    // for a slot again, while shard 0's slots go from task to task.
    std::thread::sleep(Duration::from_secs(4));
    // Then shard 1 gets 4 tasks: they must not wait for shard 0's backlog.
    let quiet: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..4 {
            let task = on_shard(1, 2);
            ids.push(task.task_id.clone());
            shards.submit(task).await.unwrap();
        }
        ids
    });
    let submitted = std::time::Instant::now();
    eventually(
        Duration::from_secs(5),
        "shard 1's tasks to finish while shard 0 has a backlog",
        || {
            let done = quiet
                .iter()
                .filter(|id| target.status(id)["status"] == "completed")
                .count();
            (done == quiet.len()).then_some(())
        },
    );
    let took = submitted.elapsed();
    let stats = target.json(&["queue", "stats"]);
    assert!(
        stats["depth"].as_u64().unwrap() > 40,
        "shard 0 still had a backlog when shard 1's tasks were done ({took:?}): {stats}"
    );
    // The process's slots are shared: never more than 2 tasks at once over
    // both shards.
    eventually(Duration::from_secs(30), "the backlog to drain", || {
        (target.json(&["queue", "stats"])["depth"] == 0
            && target.json(&["queue", "stats"])["pending"] == 0)
            .then_some(())
    });
    let tasks = target.json(&["task", "list", "--limit", "300"]);
    let spans: Vec<(f64, f64)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|task| Some((task["started_at"].as_f64()?, task["completed_at"].as_f64()?)))
        .collect();
    assert_eq!(spans.len(), 204);
    let (at_once, _) = most_at_once(&spans);
    assert!(at_once <= 2, "{at_once} tasks ran at once on 2 slots");
    worker.signal("TERM");
    assert!(
        worker.wait(Duration::from_secs(20)).success(),
        "{}",
        worker.stderr()
    );
}
