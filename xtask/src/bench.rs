//! `cargo xtask bench`: drains no-op and echo tasks through one worker
//! process (release build) on a local redis-server, at several
//! concurrencies, and prints one JSON line per run.
//!
//! Each run prefills the queue with N tasks, then starts the worker and
//! measures the drain from the task hashes (first start to last
//! completion). A second, paced phase submits tasks at a steady rate to
//! measure submit-to-start latency without queueing. Redis work is read
//! from `INFO commandstats` and `INFO stats`, memory from the worker's
//! `VmHWM`.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use exo_broker::{Broker, BrokerConfig};
use exo_proto::{TaskPayload, TaskStatus};
use serde_json::json;

use crate::demo::{Process, build_exo};

/// The reference's figures for the same no-op lifecycle, for the ratios.
const REFERENCE_TASKS_PER_SECOND: f64 = 168.0;
const REFERENCE_ROUND_TRIPS_PER_TASK: f64 = 11.0;

struct Options {
    tasks: usize,
    paced: usize,
    concurrencies: Vec<usize>,
    kinds: Vec<String>,
    /// With `--growth N`: a long run of N tasks instead (memory over time).
    growth: Option<usize>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        tasks: 2000,
        paced: 200,
        concurrencies: vec![1, 8, 32],
        kinds: vec!["noop".into(), "echo".into()],
        growth: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value is missing");
        match arg.as_str() {
            "--tasks" => options.tasks = value()?.parse()?,
            "--paced" => options.paced = value()?.parse()?,
            "--concurrency" => {
                options.concurrencies = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--kind" => options.kinds = value()?.split(',').map(str::to_owned).collect(),
            "--growth" => options.growth = Some(value()?.parse()?),
            other => bail!(
                "unknown bench option `{other}` (--tasks N, --paced N, --concurrency 1,8,32, --kind noop,echo, --growth N)"
            ),
        }
    }
    Ok(options)
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    let options = options(args)?;
    let exo = build_exo(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(tasks) = options.growth {
        println!("{}", runtime.block_on(growth(&exo, tasks))?);
        return Ok(());
    }
    for kind in &options.kinds {
        for &concurrency in &options.concurrencies {
            let line = runtime.block_on(one_run(
                &exo,
                kind,
                concurrency,
                options.tasks,
                options.paced,
            ))?;
            println!("{line}");
        }
    }
    Ok(())
}

fn payload(kind: &str, index: usize) -> TaskPayload {
    let (model, input) = match kind {
        "echo" => (
            "scripted:echo",
            "one two three four five six seven eight nine ten".to_owned(),
        ),
        _ => ("scripted:noop", format!("task {index}")),
    };
    let config = json!({"name": "bench", "model": model});
    TaskPayload::new(
        uuid::Uuid::new_v4().simple().to_string(),
        config.as_object().cloned().unwrap_or_default(),
        input,
    )
}

fn info(port: u16, section: &str) -> Result<BTreeMap<String, String>> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", section])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect())
}

fn command_calls(port: u16) -> Result<BTreeMap<String, u64>> {
    Ok(info(port, "commandstats")?
        .into_iter()
        .filter_map(|(name, stats)| {
            let calls = stats
                .split(',')
                .find_map(|part| part.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.strip_prefix("cmdstat_")?.to_owned(), calls))
        })
        .collect())
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Polls until the queue is empty (nothing waiting, nothing pending);
/// returns how many polls it took (each costs the bench a few commands,
/// subtracted from the worker's figures).
async fn wait_empty(broker: &Broker, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut polls = 0;
    loop {
        polls += 1;
        let stats = broker.admin().queue_stats().await?;
        if stats.stream_length == 0 && stats.pending == 0 && stats.delayed == 0 {
            return Ok(polls);
        }
        if Instant::now() > deadline {
            bail!("the worker did not drain the queue within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commands one `queue_stats` call runs inside Redis (the script and the
/// commands in it).
const COMMANDS_PER_POLL: u64 = 8;

/// `exo_redis_round_trips_total` from the worker's /metrics.
fn worker_round_trips(port: u16) -> Result<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    body.lines()
        .find(|line| line.starts_with("exo_redis_round_trips_total"))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .context("the worker's /metrics has no exo_redis_round_trips_total")
}

async fn one_run(
    exo: &std::path::Path,
    kind: &str,
    concurrency: usize,
    tasks: usize,
    paced: usize,
) -> Result<serde_json::Value> {
    let server = exo_testkit::RedisServer::start();
    let port = server.port();
    let broker = Broker::connect(BrokerConfig::new(server.url())).await?;
    // Prefill.
    let mut submits = tokio::task::JoinSet::new();
    for index in 0..tasks {
        let broker = broker.clone();
        let payload = payload(kind, index);
        submits.spawn(async move { broker.client().submit(payload).await.map(|_| ()) });
        if submits.len() >= 64 {
            submits.join_next().await.context("submit")???;
        }
    }
    while let Some(result) = submits.join_next().await {
        result??;
    }
    let calls_before = command_calls(port)?;
    let connections_before: u64 = info(port, "stats")?
        .get("total_connections_received")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let metrics_port = exo_testkit::free_port();
    let mut worker = Process(
        Command::new(exo)
            .args([
                "start",
                "worker",
                "--concurrency",
                &concurrency.to_string(),
                "--log-format",
                "compact",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env("EXO_REDIS_URL", server.url())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start the worker")?,
    );
    let pid = worker.0.id();
    let polls = wait_empty(&broker, Duration::from_secs(600)).await?;
    let calls_after = command_calls(port)?;
    let connections_after: u64 = info(port, "stats")?
        .get("total_connections_received")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    // The worker records its counter right after each final write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let round_trips = worker_round_trips(metrics_port)?;
    let done: Vec<_> = broker
        .client()
        .list(None, tasks + 10, 0)
        .await?
        .tasks
        .into_iter()
        .filter(|task| task.status.is_terminal())
        .collect();
    let first_start = done
        .iter()
        .filter_map(|task| task.started_at)
        .fold(f64::MAX, f64::min);
    let last_end = done
        .iter()
        .filter_map(|task| task.completed_at)
        .fold(0.0, f64::max);
    let drain_seconds = (last_end - first_start).max(1e-6);
    let completed = done
        .iter()
        .filter(|task| task.status == TaskStatus::Completed)
        .count();
    let delta: BTreeMap<&str, u64> = calls_after
        .iter()
        .map(|(name, calls)| {
            (
                name.as_str(),
                calls - calls_before.get(name).copied().unwrap_or(0),
            )
        })
        .filter(|(_, calls)| *calls > 0)
        .collect();
    let all_commands: u64 = delta
        .values()
        .sum::<u64>()
        .saturating_sub(polls * COMMANDS_PER_POLL + 2);

    // Paced phase: submit-to-start latency without a backlog.
    let mut latencies = Vec::with_capacity(paced);
    let mut ids = Vec::with_capacity(paced);
    for index in 0..paced {
        let handle = broker.client().submit(payload(kind, index)).await?;
        ids.push(handle.task_id().to_owned());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_empty(&broker, Duration::from_secs(120)).await?;
    for id in &ids {
        if let Some(task) = broker.client().get(id).await?
            && let (Some(created), Some(started)) = (task.created_at, task.started_at)
        {
            latencies.push((started - created) * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let rss = peak_rss_kib(pid);
    worker.terminate(Duration::from_secs(30))?;
    broker.close().await;
    drop(server);
    let tasks_per_second = tasks as f64 / drain_seconds;
    Ok(json!({
        "kind": kind,
        "concurrency": concurrency,
        "tasks": tasks,
        "completed": completed,
        "drain_seconds": (drain_seconds * 1000.0).round() / 1000.0,
        "tasks_per_second": tasks_per_second.round(),
        "vs_reference_throughput": (tasks_per_second / REFERENCE_TASKS_PER_SECOND * 10.0).round() / 10.0,
        "submit_to_start_ms_p50": (percentile(&latencies, 0.5) * 100.0).round() / 100.0,
        "submit_to_start_ms_p99": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
        "redis_commands_per_task_incl_scripts": (all_commands as f64 / tasks as f64 * 100.0).round() / 100.0,
        "vs_reference_round_trips": (((round_trips + tasks as u64) as f64 / tasks as f64) / REFERENCE_ROUND_TRIPS_PER_TASK * 100.0).round() / 100.0,
        "worker_round_trips_per_task": (round_trips as f64 / tasks as f64 * 100.0).round() / 100.0,
        "round_trips_per_task": ((round_trips + tasks as u64) as f64 / tasks as f64 * 100.0).round() / 100.0,
        "connections_per_task": ((connections_after - connections_before) as f64 / tasks as f64 * 1000.0).round() / 1000.0,
        "worker_peak_rss_mib": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "command_mix": delta,
    }))
}

/// The retention window of the growth run: task hashes and event streams
/// live this long after their last write.
const GROWTH_RETENTION_SECONDS: u64 = 20;

/// `--growth N`: N echo tasks submitted at a steady rate through one worker
/// whose task and event TTLs are short, sampling Redis memory, key count and
/// the worker's RSS as it goes. Bounded growth shows as a plateau: after one
/// retention window the figures stop rising.
async fn growth(exo: &std::path::Path, tasks: usize) -> Result<serde_json::Value> {
    let server = exo_testkit::RedisServer::start();
    let port = server.port();
    // Clients and workers agree on the retention (the submit trims the
    // index by it).
    let mut config = BrokerConfig::new(server.url());
    config.task_ttl = Duration::from_secs(GROWTH_RETENTION_SECONDS);
    config.event_ttl = Duration::from_secs(GROWTH_RETENTION_SECONDS);
    let broker = Broker::connect(config).await?;
    let mut worker = Process(
        Command::new(exo)
            .args([
                "start",
                "worker",
                "--concurrency",
                "32",
                "--log-format",
                "compact",
            ])
            .args(["--task-ttl", &GROWTH_RETENTION_SECONDS.to_string()])
            .args(["--event-ttl", &GROWTH_RETENTION_SECONDS.to_string()])
            .env("EXO_REDIS_URL", server.url())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start the worker")?,
    );
    let pid = worker.0.id();
    let rate = 1000.0;
    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = 0;
    let mut submits = tokio::task::JoinSet::new();
    let mut next = tokio::time::Instant::now();
    for index in 0..tasks {
        next += every;
        tokio::time::sleep_until(next).await;
        let broker = broker.clone();
        let task = payload("echo", index);
        submits.spawn(async move { broker.client().submit(task).await.map(|_| ()) });
        while submits.len() >= 64 {
            submits.join_next().await.context("submit")???;
        }
        if index >= next_sample {
            next_sample += tasks / 20;
            let memory = info(port, "memory")?;
            let keys: u64 = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DBSIZE"])
                .output()
                .ok()
                .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
                .unwrap_or(0);
            samples.push(json!({
                "submitted": index,
                "seconds": started.elapsed().as_secs(),
                "redis_used_memory_mib": memory.get("used_memory").and_then(|value| value.parse::<f64>().ok()).map(|bytes| (bytes / 1048576.0 * 10.0).round() / 10.0),
                "keys": keys,
                "worker_rss_mib": (status_kib(pid, "VmRSS:") as f64 / 1024.0 * 10.0).round() / 10.0,
            }));
        }
    }
    while let Some(result) = submits.join_next().await {
        result??;
    }
    wait_empty(&broker, Duration::from_secs(600)).await?;
    let rss_peak = peak_rss_kib(pid);
    worker.terminate(Duration::from_secs(30))?;
    broker.close().await;
    Ok(json!({
        "growth_tasks": tasks,
        "rate_per_second": rate,
        "retention_seconds": GROWTH_RETENTION_SECONDS,
        "seconds": started.elapsed().as_secs(),
        "worker_peak_rss_mib": (rss_peak as f64 / 1024.0 * 10.0).round() / 10.0,
        "samples": samples,
    }))
}
