//! Fleet-wide model rate limits with real worker processes against a fake
//! provider that enforces and logs its own limits: the fleet never exceeds
//! them and uses most of them; a call waiting for capacity says so, and
//! cancel and the deadline still end it.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::{FakeLlmServer, FakeResponse, RecordedRequest, TestRedis};
use serde_json::json;

const MODEL: &str = "openai:gpt-4o-mini";

/// What the fake provider saw: every request's arrival and tokens, and the
/// requests it refused for going over its limits.
#[derive(Debug, Default)]
struct ProviderLog {
    /// (arrival, tokens) of the requests it served, in arrival order.
    served: Vec<(Instant, u64)>,
    /// Requests that would have gone over a limit.
    violations: usize,
}

/// A provider limited to `rpm` requests and `tpm` tokens in any 60 s (a
/// sliding window over arrival times). A request's tokens are its body's
/// bytes / 4 plus 20 of output, which it reports as its usage.
fn limited_provider(rpm: usize, tpm: u64) -> (FakeLlmServer, Arc<Mutex<ProviderLog>>) {
    let server = FakeLlmServer::start();
    let log = Arc::new(Mutex::new(ProviderLog::default()));
    let shared = Arc::clone(&log);
    let window: Mutex<VecDeque<(Instant, u64)>> = Mutex::new(VecDeque::new());
    server.set_handler(move |request: &RecordedRequest| {
        if !request.path_only().ends_with("/chat/completions") {
            return None;
        }
        let now = Instant::now();
        let prompt = (request.body.len() as u64).div_ceil(4);
        let tokens = prompt + 20;
        let mut window = window.lock().unwrap();
        while window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        let used: u64 = window.iter().map(|(_, tokens)| tokens).sum();
        let mut log = shared.lock().unwrap();
        if window.len() + 1 > rpm || used + tokens > tpm {
            log.violations += 1;
            return Some(
                FakeResponse::json(
                    429,
                    &json!({"error": {"message": "rate limit exceeded", "type": "rate_limit"}}),
                )
                .header("retry-after", "1"),
            );
        }
        window.push_back((now, tokens));
        log.served.push((now, tokens));
        Some(FakeResponse::openai_text_with_usage("done", prompt, 20))
    });
    (server, log)
}

#[test]
fn four_workers_stay_under_the_providers_limits_and_use_them() {
    let redis = TestRedis::new();
    let (provider, log) = limited_provider(60, 20_000);
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    // About 450 tokens a call: the tokens per minute bind before the
    // requests do (20,000 / 470 is about 42 calls a minute).
    let input = "word ".repeat(330);
    let lines: Vec<String> = (0..400)
        .map(|_| {
            json!({"agent_config": {"name": "limited", "model": MODEL, "max_tokens": 50},
                "input": input, "max_retries": 0})
            .to_string()
        })
        .collect();
    let batch = dir.path().join("tasks.jsonl");
    std::fs::write(&batch, lines.join("\n")).unwrap();
    let output = target
        .command()
        .args(["task", "submit", "--batch", batch.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rules = [
        "--concurrency",
        "8",
        "--model-rpm",
        &format!("{MODEL}=60"),
        "--model-tpm",
        &format!("{MODEL}=20000"),
    ];
    let workers: Vec<_> = (0..4).map(|_| target.start_worker(&rules)).collect();
    let first = eventually(Duration::from_secs(30), "the first model call", || {
        log.lock().unwrap().served.first().map(|(at, _)| *at)
    });
    let measured = Duration::from_secs(180);
    std::thread::sleep(measured.saturating_sub(first.elapsed()));
    drop(workers);
    let log = log.lock().unwrap();
    let in_window: Vec<&(Instant, u64)> = log
        .served
        .iter()
        .filter(|(at, _)| at.duration_since(first) < measured)
        .collect();
    let tokens: u64 = in_window.iter().map(|(_, tokens)| tokens).sum();
    let budget = 20_000 * measured.as_secs() / 60;
    // The figures, for the record (`--nocapture` shows them).
    let _ = writeln!(
        std::io::stderr(),
        "rate limits: {} calls, {tokens} tokens in {measured:?} ({:.1}% of {budget}); {} over the provider's limits",
        in_window.len(),
        100.0 * tokens as f64 / budget as f64,
        log.violations
    );
    assert_eq!(log.violations, 0, "the provider saw its limits exceeded");
    assert!(
        tokens * 10 >= budget * 9,
        "the fleet used {tokens} of {budget} tokens: less than 90%"
    );
}

#[test]
fn a_call_waiting_for_capacity_says_so_and_cancel_and_deadline_still_end_it() {
    let redis = TestRedis::new();
    let (provider, log) = limited_provider(1, 1_000_000);
    let target = Target::of(&redis).with_openai(&provider.openai_base_url());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "limited", "model": MODEL, "max_tokens": 50}),
    );
    let _worker = target.start_worker(&["--concurrency", "3", "--model-rpm", "gpt-4o-mini=1"]);
    let first = target.submit(&agent, "one");
    target.wait_for_status(&first, "completed", Duration::from_secs(20));

    // The minute's one call is spent: the next two wait.
    let cancelled = target.submit(&agent, "two");
    let timed_out = target.json(&[
        "task",
        "submit",
        "--agent",
        agent.to_str().unwrap(),
        "--input",
        "three",
        "--timeout",
        "3",
        "--max-retries",
        "0",
    ])["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = eventually(Duration::from_secs(20), "a capacity wait", || {
        target
            .events(&cancelled)
            .into_iter()
            .find(|event| event["waiting_for"] == "capacity")
    });
    assert_eq!(waiting["type"], "status");
    assert_eq!(waiting["status"], "running");
    assert_eq!(waiting["rule"], "gpt-4o-mini");
    assert_eq!(waiting["reason"], "requests");
    assert!(
        waiting["retry_in_ms"].as_u64().unwrap() > 30_000,
        "{waiting}"
    );

    let output = target.run(&["task", "cancel", &cancelled]);
    assert!(output.status.success());
    target.wait_for_status(&cancelled, "cancelled", Duration::from_secs(10));
    let status = target.wait_for_status(&timed_out, "failed", Duration::from_secs(20));
    assert!(
        status["error"].as_str().unwrap_or("").contains("timed out"),
        "{status}"
    );
    let log = log.lock().unwrap();
    assert_eq!(
        log.served.len(),
        1,
        "only the first call reached the provider"
    );
    assert_eq!(log.violations, 0);
}

#[test]
fn a_provider_wide_rule_covers_all_its_models_and_counts_per_credential_alias() {
    let redis = TestRedis::new();
    // A provider without limits of its own that logs which key sent what.
    let provider = FakeLlmServer::start();
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&keys);
    provider.set_handler(move |request: &RecordedRequest| {
        if !request.path_only().ends_with("/chat/completions") {
            return None;
        }
        let key = request.header("authorization").unwrap_or("").to_owned();
        seen.lock().unwrap().push(key);
        Some(FakeResponse::openai_text_with_usage("done", 10, 5))
    });
    let dir = tempfile::tempdir().unwrap();
    // Three queues of one prefix (rules are per prefix): team A's key on
    // two of them, team B's on the third.
    let on = |queue: &str, key: &str| {
        Target::new(redis.url(), redis.prefix(), queue)
            .with_openai(&provider.openai_base_url())
            .with_env("OPENAI_API_KEY", key)
    };
    let (a1, b, a2) = (on("qa1", "key-a"), on("qb", "key-b"), on("qa2", "key-a"));
    let rule = ["--concurrency", "4", "--model-rpm", "openai:*=3"];
    let worker = |target: &Target, alias: &str| {
        let mut args = rule.to_vec();
        args.extend(["--credential-alias", alias]);
        target.start_worker(&args)
    };
    let _workers = [
        worker(&a1, "openai=team-a"),
        worker(&b, "openai=team-b"),
        worker(&a2, "openai=team-a"),
    ];
    let agent = |model: &str| {
        agent_file(
            dir.path(),
            &format!("{}.json", model.replace(':', "-")),
            &json!({"name": "limited", "model": model, "max_tokens": 20}),
        )
    };
    let (mini, large, bare) = (
        agent("openai:gpt-4o-mini"),
        agent("openai:gpt-4o"),
        agent("gpt-4.1"),
    );
    // Team A's three calls a minute go to two models and one bare name
    // (OpenAI's): the fourth call waits, on either of its queues.
    let mut done = vec![
        a1.submit(&mini, "1"),
        a1.submit(&large, "2"),
        a1.submit(&bare, "3"),
    ];
    for task in &done {
        a1.wait_for_status(task, "completed", Duration::from_secs(20));
    }
    let waiting = [a1.submit(&mini, "4"), a2.submit(&large, "5")];
    // Team B's key counts apart.
    done.extend((0..3).map(|n| b.submit(&mini, &n.to_string())));
    for task in &done[3..] {
        b.wait_for_status(task, "completed", Duration::from_secs(20));
    }
    for (target, task) in [(&a1, &waiting[0]), (&a2, &waiting[1])] {
        let event = eventually(Duration::from_secs(20), "a capacity wait", || {
            target
                .events(task)
                .into_iter()
                .find(|event| event["waiting_for"] == "capacity")
        });
        assert_eq!(event["rule"], "openai:*@team-a", "{event}");
        assert_eq!(event["reason"], "requests", "{event}");
        assert_eq!(target.status(task)["status"], "running");
    }
    let keys = keys.lock().unwrap().clone();
    let count = |key: &str| keys.iter().filter(|sent| sent.ends_with(key)).count();
    assert_eq!((count("key-a"), count("key-b")), (3, 3), "{keys:?}");
    for (target, task) in [(&a1, &waiting[0]), (&a2, &waiting[1])] {
        assert!(target.run(&["task", "cancel", task]).status.success());
        target.wait_for_status(task, "cancelled", Duration::from_secs(10));
    }
}

#[test]
fn a_sharded_workers_limits_count_every_shards_calls() {
    let redis = TestRedis::new();
    let (provider, log) = limited_provider(1_000, 1_000_000);
    let target = Target::of(&redis)
        .with_openai(&provider.openai_base_url())
        .with_env("EXO_SHARDS", "3");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "limited", "model": MODEL, "max_tokens": 50}),
    );
    let _worker = target.start_worker(&["--concurrency", "6", "--model-rpm", "gpt-4o-mini=2"]);
    // Six tasks spread over three shards (by their ids); two calls a minute
    // for the whole worker, not two per shard.
    let ids: Vec<String> = (0..6)
        .map(|index| target.submit(&agent, &format!("t{index}")))
        .collect();
    let shards: std::collections::BTreeSet<u32> =
        ids.iter().map(|id| exo_proto::shard_of(id, 3)).collect();
    eventually(
        Duration::from_secs(20),
        "four calls waiting for capacity",
        || {
            let waiting = ids
                .iter()
                .filter(|id| {
                    target
                        .events(id)
                        .iter()
                        .any(|event| event["waiting_for"] == "capacity")
                })
                .count();
            (waiting == 4).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let completed = ids
        .iter()
        .filter(|id| target.status(id)["status"] == "completed")
        .count();
    assert_eq!(completed, 2, "tasks on shards {shards:?}");
    assert_eq!(log.lock().unwrap().served.len(), 2);
    for id in &ids {
        target.run(&["task", "cancel", id]);
    }
}
