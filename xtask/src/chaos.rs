//! `cargo xtask chaos`: thousands of tasks through several worker processes
//! while workers are SIGKILLed in a loop, Redis is killed and restarted
//! (AOF), frozen with SIGSTOP for 30 s, and tasks are cancelled in bursts.
//! Every model call goes to a local fake LLM server that logs it, so each
//! execution of each task is counted. Prints one JSON line: what was lost,
//! stuck or orphaned, how many terminal states and events each task got,
//! duplicate executions (explained by a recorded reclaim, unexplained,
//! concurrent), outcomes a live client saw that later changed, cancels not
//! honoured, reclaim latency, false deaths and keys left behind. A watchdog
//! thread takes `gdb` stacks of every worker (and of the harness) when the
//! queue goes unread while entries wait (`--stall-after SECS`, 20 by
//! default), and the report lists those files (`fleet_stalls`).
//!
//! Bounded: it stops by itself (10 minutes with the defaults on 2 cores).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use exo_broker::{Broker, BrokerConfig, CancelOutcome};
use exo_proto::{TaskPayload, TaskStatus};
use exo_testkit::{FakeLlmServer, FakeResponse, RedisServer};
use serde_json::{Value, json};

use crate::demo::build_exo;

struct Options {
    tasks: usize,
    rate: f64,
    workers: usize,
    concurrency: usize,
    fsync: String,
    heartbeat_ttl: u64,
    freeze: Duration,
    budget: Duration,
    /// How long the fake model call takes (four pieces, evenly apart).
    call: Duration,
    /// How long the queue may go unread while entries wait before the
    /// watchdog takes stacks.
    stall_after: Duration,
}

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        tasks: 3000,
        rate: 25.0,
        workers: 4,
        concurrency: 8,
        fsync: "always".into(),
        heartbeat_ttl: 6,
        freeze: Duration::from_secs(30),
        budget: Duration::from_secs(600),
        call: Duration::from_millis(1000),
        stall_after: Duration::from_secs(20),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value is missing");
        match arg.as_str() {
            "--tasks" => options.tasks = value()?.parse()?,
            "--rate" => options.rate = value()?.parse()?,
            "--workers" => options.workers = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--fsync" => options.fsync = value()?.to_owned(),
            "--heartbeat-ttl" => options.heartbeat_ttl = value()?.parse()?,
            "--freeze" => options.freeze = Duration::from_secs(value()?.parse()?),
            "--minutes" => options.budget = Duration::from_secs(value()?.parse::<u64>()? * 60),
            "--call-ms" => options.call = Duration::from_millis(value()?.parse()?),
            "--stall-after" => options.stall_after = Duration::from_secs(value()?.parse()?),
            other => bail!(
                "unknown chaos option `{other}` (--tasks N, --rate PER_SECOND, --workers N, --concurrency N, --fsync always|everysec, --heartbeat-ttl S, --freeze S, --minutes M, --stall-after S)"
            ),
        }
    }
    if !matches!(options.fsync.as_str(), "always" | "everysec") {
        bail!("--fsync is always or everysec");
    }
    Ok(options)
}

/// What the run saw happen, for the report.
#[derive(Default)]
struct Journal {
    /// Task ids whose submit was acknowledged.
    submitted: Vec<String>,
    /// Cancels acknowledged (task id, when).
    cancels: Vec<(String, Instant)>,
    /// Worker ids killed, with when, and the tasks pending on them then.
    kills: Vec<(String, Instant, Vec<String>)>,
    /// Wall-clock ms of each kill, by worker id (to compare with the server
    /// times in stream entry ids).
    kill_wall_ms: HashMap<String, u64>,
    /// Redis kills and freezes, as (what, when).
    redis_faults: Vec<(&'static str, Instant)>,
    /// Times the queue went unread while entries waited (see
    /// [`watch_for_stalls`]), as the files with the stacks taken then.
    stalls: Vec<String>,
}

struct Worker {
    id: String,
    child: Child,
}

fn start_worker(
    exo: &Path,
    redis_url: &str,
    llm: &str,
    options: &Options,
    id: &str,
    logs: &Path,
) -> Result<Worker> {
    let log = std::fs::File::create(logs.join(format!("{id}.log")))?;
    let child = Command::new(exo)
        .args([
            "start",
            "worker",
            "--redis-url",
            redis_url,
            "--worker-id",
            id,
            "--concurrency",
            &options.concurrency.to_string(),
            "--heartbeat-ttl",
            &options.heartbeat_ttl.to_string(),
            "--lease",
            &(options.heartbeat_ttl * 4).to_string(),
            "--max-retries",
            "20",
            "--retry-backoff",
            "0.2",
            "--stats-interval",
            "0",
            "--drain-timeout",
            "5",
            "--log-format",
            "json",
        ])
        .env("OPENAI_BASE_URL", llm)
        .env("OPENAI_API_KEY", "chaos")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start a worker")?;
    Ok(Worker {
        id: id.to_owned(),
        child,
    })
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status();
}

fn payload(index: usize) -> TaskPayload {
    let task_id = uuid::Uuid::new_v4().simple().to_string();
    let config = json!({"name": "chaos", "model": "openai:gpt-4o-mini"});
    let mut payload = TaskPayload::new(
        task_id.clone(),
        config.as_object().cloned().unwrap_or_default(),
        format!("chaos task {task_id} #{index}"),
    );
    payload.timeout_seconds = 120.0;
    payload
}

/// Terminal events a live pub/sub client saw, per task, with when.
type Seen = Arc<Mutex<HashMap<String, Vec<(String, Instant)>>>>;

/// Follows every task's pub/sub channel with `redis-cli`, as a live client
/// would, restarting it when Redis goes away.
fn follow(
    port: u16,
    seen: Seen,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let child = Command::new("redis-cli")
                .args([
                    "-p",
                    &port.to_string(),
                    "--csv",
                    "psubscribe",
                    "exo:events:*",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    record_message(&line, &seen);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Parses one `--csv` pmessage line: "pmessage","pattern","channel","json".
fn record_message(line: &str, seen: &Seen) {
    let fields: Vec<&str> = line.splitn(4, "\",\"").collect();
    let [kind, _, channel, body] = fields.as_slice() else {
        return;
    };
    if !kind.trim_start_matches('"').starts_with("pmessage") {
        return;
    }
    let Some(task_id) = channel.strip_prefix("exo:events:") else {
        return;
    };
    let body = body
        .trim_end_matches('"')
        .replace("\\\"", "\"")
        .replace("\\\\", "\\");
    let Ok(event) = serde_json::from_str::<Value>(&body) else {
        return;
    };
    if event["type"] == "status"
        && matches!(
            event["status"].as_str(),
            Some("completed" | "error" | "cancelled")
        )
    {
        seen.lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(task_id.to_owned())
            .or_default()
            .push((
                event["status"].as_str().unwrap_or_default().to_owned(),
                Instant::now(),
            ));
    }
}

pub(crate) fn chaos(args: &[String]) -> Result<()> {
    let options = options(args)?;
    let started = Instant::now();
    let exo = build_exo(true)?;
    let logs = tempdir()?;
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        &options.fsync,
        "--maxmemory-policy",
        "noeviction",
    ]);
    let redis_url = redis.url();
    let port = redis.port();
    let llm = FakeLlmServer::start();
    llm.set_default(FakeResponse::openai_text_paced("ok", 4, options.call / 4));
    let llm_url = llm.openai_base_url();
    eprintln!(
        "chaos: {} tasks at {}/s on {} workers x {}, appendfsync {}, logs in {}",
        options.tasks,
        options.rate,
        options.workers,
        options.concurrency,
        options.fsync,
        logs.display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut config = BrokerConfig::new(redis_url.clone());
    config.command_timeout = Duration::from_secs(2);
    let broker = runtime.block_on(Broker::connect(config))?;

    let mut generation = 0usize;
    let mut next_id = |index: usize| {
        generation += 1;
        format!("chaos-{index}-{generation}")
    };
    let mut workers: Vec<Worker> = (0..options.workers)
        .map(|index| start_worker(&exo, &redis_url, &llm_url, &options, &next_id(index), &logs))
        .collect::<Result<_>>()?;

    let seen: Seen = Arc::default();
    let stop_following = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = follow(port, seen.clone(), stop_following.clone());
    let journal = Arc::new(Mutex::new(Journal::default()));
    let watchdog = watch_for_stalls(
        Watch {
            port,
            redis_url: redis_url.clone(),
            logs: logs.clone(),
            after: options.stall_after,
        },
        journal.clone(),
        stop_following.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));

    // The submitter: acknowledged submits only count once the call returns.
    let submitter = {
        let broker = broker.clone();
        let journal = journal.clone();
        let (tasks, rate) = (options.tasks, options.rate);
        runtime.spawn(async move {
            let every = Duration::from_secs_f64(1.0 / rate);
            let mut next = tokio::time::Instant::now();
            for index in 0..tasks {
                next += every;
                tokio::time::sleep_until(next).await;
                let task = payload(index);
                for _ in 0..100 {
                    match broker.client().submit(task.clone()).await {
                        Ok(_) => {
                            journal
                                .lock()
                                .unwrap_or_else(|poison| poison.into_inner())
                                .submitted
                                .push(task.task_id.clone());
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        })
    };

    // The faults, on a schedule relative to the start of submission.
    let submit_time = Duration::from_secs_f64(options.tasks as f64 / options.rate);
    let schedule_start = Instant::now();
    let mut next_kill = Duration::from_secs(10);
    let mut next_cancel = Duration::from_secs(15);
    let redis_crash_at = submit_time / 4;
    let freeze_at = submit_time / 2;
    let (mut crashed, mut frozen) = (false, false);
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |below: usize| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % below.max(1) as u64) as usize
    };
    while schedule_start.elapsed() < submit_time {
        let now = schedule_start.elapsed();
        if now >= next_kill {
            let victim = random(workers.len());
            let pending = runtime
                .block_on(pending_tasks(&broker, &workers[victim].id))
                .unwrap_or_default();
            kill(&mut workers[victim].child, "-KILL");
            let _ = workers[victim].child.wait();
            {
                let mut journal = journal.lock().unwrap_or_else(|poison| poison.into_inner());
                journal
                    .kills
                    .push((workers[victim].id.clone(), Instant::now(), pending));
                journal
                    .kill_wall_ms
                    .insert(workers[victim].id.clone(), wall_ms());
            }
            let id = next_id(victim);
            workers[victim] = start_worker(&exo, &redis_url, &llm_url, &options, &id, &logs)?;
            next_kill = now + Duration::from_secs(8 + random(8) as u64);
        }
        if now >= next_cancel {
            // A burst on the newest tasks: queued, running or just done.
            let recent: Vec<String> = {
                let journal = journal.lock().unwrap_or_else(|poison| poison.into_inner());
                journal.submitted.iter().rev().take(40).cloned().collect()
            };
            for task_id in recent.iter().filter(|_| random(2) == 0) {
                if let Ok(outcome) = runtime.block_on(broker.client().cancel(task_id))
                    && matches!(
                        outcome,
                        CancelOutcome::Cancelled | CancelOutcome::Cancelling
                    )
                {
                    journal
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .cancels
                        .push((task_id.clone(), Instant::now()));
                }
            }
            next_cancel = now + Duration::from_secs(12);
        }
        if !crashed && now >= redis_crash_at {
            crashed = true;
            eprintln!("chaos: SIGKILL redis-server");
            journal
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .redis_faults
                .push(("kill", Instant::now()));
            redis.kill();
            std::thread::sleep(Duration::from_secs(1));
            redis.restart();
        }
        if !frozen && now >= freeze_at {
            frozen = true;
            eprintln!("chaos: SIGSTOP redis-server for {:?}", options.freeze);
            journal
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .redis_faults
                .push(("freeze", Instant::now()));
            redis.freeze();
            std::thread::sleep(options.freeze);
            redis.thaw();
        }
        if started.elapsed() > options.budget {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = runtime.block_on(submitter);

    // Let the fleet finish: everything terminal, or the budget.
    let submitted = journal
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .submitted
        .clone();
    let settle_deadline = (started + options.budget).min(Instant::now() + Duration::from_secs(180));
    loop {
        let open = runtime.block_on(open_tasks(&broker, &submitted));
        if open == 0 || Instant::now() > settle_deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(2));
    for worker in &mut workers {
        kill(&mut worker.child, "-TERM");
    }
    for worker in &mut workers {
        let _ = worker.child.wait();
    }
    stop_following.store(true, std::sync::atomic::Ordering::Relaxed);
    // Nudge the follower off its blocking read.
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PUBLISH", "exo:events:x", "{}"])
        .output();
    let _ = follower.join();
    let _ = watchdog.join();

    let journal = journal.lock().unwrap_or_else(|poison| poison.into_inner());
    let report = runtime.block_on(report(
        &broker, &journal, &seen, &llm, port, &options, started,
    ))?;
    println!("{report}");
    Ok(())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "exo-chaos-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The tasks whose entries are pending on a consumer (what a kill of that
/// worker leaves to be reclaimed).
async fn pending_tasks(broker: &Broker, worker_id: &str) -> Result<Vec<String>> {
    let mut tasks = Vec::new();
    let page = broker
        .client()
        .list(Some(TaskStatus::Running), 500, 0)
        .await?;
    for task in page.tasks {
        if task.worker_id.as_deref() == Some(worker_id) {
            tasks.push(task.task_id);
        }
    }
    Ok(tasks)
}

async fn open_tasks(broker: &Broker, submitted: &[String]) -> usize {
    let mut open = 0;
    for task_id in submitted {
        match broker.client().get(task_id).await {
            Ok(Some(task)) if task.status.is_terminal() => {}
            Ok(None) => {}
            _ => open += 1,
        }
    }
    open
}

fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * fraction).round() as usize;
    values[index.min(values.len() - 1)]
}

/// What the watchdog watches.
struct Watch {
    port: u16,
    redis_url: String,
    logs: PathBuf,
    after: Duration,
}

/// Watches the queue from outside the harness's own Redis client (its own
/// thread, `redis-cli`): when no entry has been read for `watch.after`
/// while some wait (and Redis answers), it takes the stacks of every worker
/// and of this harness with `gdb` (when installed), once per stall, into
/// the logs directory, and notes the stall in the journal.
fn watch_for_stalls(
    watch: Watch,
    journal: Arc<Mutex<Journal>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last_read: Option<u64> = None;
        let mut unread_since: Option<Instant> = None;
        let mut stalled = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let Some((read, lag)) = group_progress(watch.port) else {
                // Redis is away (killed, frozen): not a stall of the fleet.
                unread_since = None;
                continue;
            };
            if lag == 0 || last_read != Some(read) {
                last_read = Some(read);
                unread_since = None;
                stalled = false;
                continue;
            }
            let since = *unread_since.get_or_insert_with(Instant::now);
            if stalled || since.elapsed() < watch.after {
                continue;
            }
            stalled = true;
            let count = journal
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .stalls
                .len();
            let file = watch.logs.join(format!("stall-{count}.txt"));
            eprintln!(
                "chaos: nothing read from the queue for {:?} with {lag} entries waiting; stacks in {}",
                watch.after,
                file.display()
            );
            let pattern = format!("start worker --redis-url {}", watch.redis_url);
            let mut pids: Vec<String> = Command::new("pgrep")
                .args(["-f", &pattern])
                .output()
                .map(|output| {
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            pids.push(std::process::id().to_string());
            let mut text = format!("entries read {read}, lag {lag}\n");
            for pid in pids {
                let stacks = Command::new("gdb")
                    .args(["-p", &pid, "-batch", "-ex", "thread apply all bt 30"])
                    .stdin(Stdio::null())
                    .output()
                    .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                    .unwrap_or_else(|error| format!("gdb: {error}"));
                text.push_str(&format!("=== pid {pid}\n{stacks}\n"));
            }
            if let Err(error) = std::fs::write(&file, text) {
                eprintln!("chaos: cannot write {}: {error}", file.display());
            }
            journal
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .stalls
                .push(file.display().to_string());
        }
    })
}

/// The consumer group's `entries-read` and `lag`, by `redis-cli` with a
/// short timeout; `None` when Redis does not answer.
fn group_progress(port: u16) -> Option<(u64, u64)> {
    let output = Command::new("timeout")
        .args([
            "2",
            "redis-cli",
            "-p",
            &port.to_string(),
            "XINFO",
            "GROUPS",
            "exo:tasks",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|word| *word == name)
            .and_then(|index| words.get(index + 1))
            .and_then(|value| value.parse::<u64>().ok())
    };
    Some((field("entries-read")?, field("lag")?))
}

async fn report(
    broker: &Broker,
    journal: &Journal,
    seen: &Seen,
    llm: &FakeLlmServer,
    port: u16,
    options: &Options,
    started: Instant,
) -> Result<String> {
    // Executions per task, from the fake LLM's log.
    let mut executions: HashMap<String, Vec<Instant>> = HashMap::new();
    for request in llm.requests() {
        let body = String::from_utf8_lossy(&request.body);
        if let Some(at) = body.find("chaos task ") {
            let task_id: String = body[at + 11..].chars().take(32).collect();
            executions
                .entry(task_id)
                .or_default()
                .push(request.received_at);
        }
    }
    let seen = seen
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let killed: BTreeSet<&str> = journal.kills.iter().map(|(id, _, _)| id.as_str()).collect();
    let cancelled: BTreeSet<&str> = journal.cancels.iter().map(|(id, _)| id.as_str()).collect();
    let (mut lost, mut stuck, mut orphaned, mut terminal_states_wrong) = (0u64, 0u64, 0u64, 0u64);
    let (mut terminal_events_wrong, mut outcomes_changed, mut seen_twice) = (0u64, 0u64, 0u64);
    let (mut cancels_not_honoured, mut false_deaths) = (0u64, 0u64);
    let (mut duplicates, mut explained, mut unexplained, mut concurrent) = (0u64, 0u64, 0u64, 0u64);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut detections: Vec<f64> = Vec::new();
    let mut execution_histogram: BTreeMap<usize, u64> = BTreeMap::new();
    let stats = broker.admin().queue_stats().await?;
    let mut examples: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut example = |kind: &'static str, task_id: &str| {
        let list = examples.entry(kind).or_default();
        if list.len() < 5 {
            list.push(task_id.to_owned());
        }
    };
    for task_id in &journal.submitted {
        let Some(task) = broker.client().get(task_id).await? else {
            lost += 1;
            example("lost", task_id);
            continue;
        };
        *statuses.entry(task.status.as_str().to_owned()).or_default() += 1;
        if !task.status.is_terminal() {
            stuck += 1;
            example("stuck", task_id);
        }
        let events = broker
            .client()
            .events(task_id, None)
            .collect()
            .await
            .unwrap_or_default();
        let terminal = events
            .iter()
            .filter(|item| item.event.is_terminal())
            .count();
        let stream_text: Vec<String> = events.iter().map(|item| item.event.to_json()).collect();
        if task.status.is_terminal() && terminal != 1 {
            terminal_events_wrong += 1;
            example("terminal_events_not_one", task_id);
        }
        if !task.status.is_terminal() && !carried(port, task_id) {
            orphaned += 1;
            example("orphaned", task_id);
        }
        let final_word = match task.status {
            TaskStatus::Completed => "completed",
            TaskStatus::Cancelled => "cancelled",
            _ => "error",
        };
        if let Some(sightings) = seen.get(task_id) {
            if sightings.len() > 1 {
                seen_twice += 1;
                example("seen_terminal_twice", task_id);
            }
            if sightings.iter().any(|(word, _)| word != final_word) {
                outcomes_changed += 1;
                example("outcome_changed", task_id);
            }
        }
        if cancelled.contains(task_id.as_str()) && task.status != TaskStatus::Cancelled {
            cancels_not_honoured += 1;
            example("cancel_not_honoured", task_id);
        }
        // Reclaims recorded in the stream, and whose death they claimed.
        let mut reclaims = 0;
        for (item, text) in events.iter().zip(&stream_text) {
            if text.contains("WorkerLost") {
                reclaims += 1;
                let dead = text
                    .split("worker ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or_default();
                if !killed.contains(dead) {
                    false_deaths += 1;
                    example("false_death", task_id);
                } else if let (Some(killed_at), Some(reclaimed_at)) = (
                    journal.kill_wall_ms.get(dead),
                    item.id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse::<u64>().ok()),
                ) {
                    detections.push(reclaimed_at.saturating_sub(*killed_at) as f64 / 1000.0);
                }
            }
        }
        let runs = executions.get(task_id).cloned().unwrap_or_default();
        *execution_histogram.entry(runs.len()).or_default() += 1;
        if task.status == TaskStatus::Completed && runs.is_empty() {
            terminal_states_wrong += 1;
            example("completed_without_running", task_id);
        }
        if runs.len() > 1 {
            duplicates += 1;
            let retries = task.retries.unwrap_or(0) as usize;
            if reclaims > 0 || retries > 0 {
                explained += 1;
            } else {
                unexplained += 1;
                example("unexplained_duplicate", task_id);
            }
            let mut starts = runs.clone();
            starts.sort();
            if starts
                .windows(2)
                .any(|pair| pair[1].duration_since(pair[0]) < options.call)
            {
                concurrent += 1;
                example("concurrent_duplicate", task_id);
            }
        }
    }
    // Reclaim latency: from a kill to the next execution of each task that
    // was running on the killed worker.
    let mut latencies = Vec::new();
    let mut per_kill = Vec::new();
    for (worker, at, tasks) in &journal.kills {
        let mut slowest: f64 = 0.0;
        for task_id in tasks {
            if let Some(next) = executions
                .get(task_id)
                .and_then(|runs| runs.iter().filter(|run| *run > at).min())
            {
                let latency = next.duration_since(*at).as_secs_f64();
                slowest = slowest.max(latency);
                latencies.push(latency);
            }
        }
        per_kill.push(json!({
            "worker": worker,
            "at_s": (at.duration_since(started).as_secs_f64() * 10.0).round() / 10.0,
            "tasks": tasks.len(),
            "slowest_reclaim_s": (slowest * 10.0).round() / 10.0,
        }));
    }
    let faults: Vec<Value> = journal
        .redis_faults
        .iter()
        .map(|(what, at)| json!({"fault": what, "at_s": (at.duration_since(started).as_secs_f64() * 10.0).round() / 10.0}))
        .collect();
    let keys = key_census(port);
    let report = json!({
        "tasks": journal.submitted.len(),
        "workers": options.workers,
        "concurrency": options.concurrency,
        "appendfsync": options.fsync,
        "heartbeat_ttl_s": options.heartbeat_ttl,
        "worker_kills": journal.kills.len(),
        "redis_faults": faults,
        "kills": per_kill,
        "freeze_s": options.freeze.as_secs(),
        "fleet_stalls": journal.stalls,
        "cancels_acknowledged": journal.cancels.len(),
        "lost": lost,
        "stuck": stuck,
        "orphaned": orphaned,
        "statuses": statuses,
        "terminal_state_wrong": terminal_states_wrong,
        "terminal_events_not_one": terminal_events_wrong,
        "executions_per_task": execution_histogram,
        "duplicate_executions": {
            "tasks": duplicates,
            "explained_by_reclaim": explained,
            "unexplained": unexplained,
            "concurrent": concurrent,
        },
        "live_client": {
            "saw_terminal_twice": seen_twice,
            "outcome_changed_after_seen": outcomes_changed,
        },
        "cancels_not_honoured": cancels_not_honoured,
        "reclaim_detection_s": {
            "what": "from a SIGKILL to the reaper requeueing its task (the WorkerLost event)",
            "samples": detections.len(),
            "p50": percentile(&mut detections.clone(), 0.5),
            "p95": percentile(&mut detections.clone(), 0.95),
            "max": detections.iter().copied().fold(0.0, f64::max),
        },
        "reclaim_latency_s": {
            "what": "from a SIGKILL to the next start of its task (detection plus waiting in the queue)",
            "samples": latencies.len(),
            "p50": percentile(&mut latencies.clone(), 0.5),
            "p95": percentile(&mut latencies.clone(), 0.95),
            "max": latencies.iter().copied().fold(0.0, f64::max),
        },
        "false_deaths": false_deaths,
        "left_behind": {
            "queue_entries": stats.stream_length,
            "pending": stats.pending,
            "delayed": stats.delayed,
            "dead_letter": stats.dead_letter,
            "keys": keys,
        },
        "examples": examples,
        "elapsed_s": started.elapsed().as_secs(),
    });
    Ok(report.to_string())
}

/// True when a queue entry or the delayed set still carries the task.
fn carried(port: u16, task_id: &str) -> bool {
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    if !cli(&["ZSCORE", "exo:tasks:delayed", task_id]).is_empty() {
        return true;
    }
    let entry = cli(&["HGET", &format!("exo:task:{task_id}"), "entry"]);
    !entry.is_empty() && !cli(&["XRANGE", "exo:tasks", &entry, &entry]).is_empty()
}

/// Keys by kind after the run, from `SCAN`.
fn key_census(port: u16) -> BTreeMap<String, u64> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--scan"])
        .output();
    let mut census = BTreeMap::new();
    if let Ok(output) = output {
        for key in String::from_utf8_lossy(&output.stdout).lines() {
            let kind = if key.starts_with("exo:task:") {
                "task hashes and index"
            } else if key.starts_with("exo:stream:") {
                "event streams"
            } else if key.starts_with("exo:workers:") {
                "worker heartbeats"
            } else if key.starts_with("exo:idem:") {
                "idempotency keys"
            } else {
                key
            };
            *census.entry(kind.to_owned()).or_default() += 1;
        }
    }
    census
}
