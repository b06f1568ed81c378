//! `cargo xtask bench gateway`: many SSE clients on one `exo serve`.
//!
//! A fresh redis-server, `--clients` tasks, the release `exo serve`, and one
//! SSE connection per task from this process. Events are then published
//! into the task streams the way a worker does (one publish script call per
//! event, each carrying its send time), at `--rate` events per second over
//! all tasks, `--events` per task, and a terminal event each to end the
//! streams. Reported: clients, the gateway's Redis connections, the
//! publish-to-receipt latency (p50, p99, max), events per second received,
//! the gateway's peak RSS and CPU per event, and whether any client missed
//! or repeated an event.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use exo_broker::{Broker, BrokerConfig, PublishOptions};
use exo_proto::{RunStatus, StreamEvent, TaskPayload};
use serde_json::{Map, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{cpu_seconds, info, peak_rss_kib, percentile, rounded};
use crate::demo::{Process, build_exo};

struct Options {
    clients: usize,
    events: usize,
    rate: f64,
    readers: usize,
    list: usize,
}

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        clients: 2000,
        events: 10,
        rate: 2000.0,
        readers: 4,
        list: 0,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(format!("{arg} needs a value"));
        match arg.as_str() {
            "--clients" => options.clients = value()?.parse()?,
            "--events" => options.events = value()?.parse()?,
            "--rate" => options.rate = value()?.parse()?,
            "--readers" => options.readers = value()?.parse()?,
            "--list" => options.list = value()?.parse()?,
            other => bail!(
                "unknown option `{other}` (bench gateway takes --clients N, --events N, --rate EVENTS_PER_SECOND, --readers N, --list TASKS)"
            ),
        }
    }
    Ok(options)
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or_default()
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    latencies: Vec<f64>,
    ids: Vec<String>,
    ended: bool,
}

/// One SSE client: connects, reads until `event: end`, records each event's
/// latency (its text is its send time) and id.
async fn client(
    addr: std::net::SocketAddr,
    task_id: String,
    connected: Arc<tokio::sync::Barrier>,
) -> Result<Seen> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET /v1/tasks/{task_id}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await?.unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("task {task_id}: {status}");
    }
    // Headers.
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
    }
    connected.wait().await;
    let mut seen = Seen::default();
    let mut event_name = String::new();
    while let Some(line) = lines.next_line().await? {
        // Chunked transfer: size lines are hex, data lines start with a
        // field name.
        if let Some(id) = line.strip_prefix("id: ") {
            seen.ids.push(id.to_owned());
        } else if let Some(name) = line.strip_prefix("event: ") {
            event_name = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if event_name == "end" {
                seen.ended = true;
                break;
            }
            let received = now_seconds();
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(data)
                && event["type"] == "text"
                && let Some(sent) = event["text"]
                    .as_str()
                    .and_then(|text| text.parse::<f64>().ok())
            {
                seen.latencies.push((received - sent) * 1000.0);
            }
        } else if line.is_empty() {
            event_name.clear();
        }
    }
    Ok(seen)
}

pub(crate) fn bench_gateway(args: &[String]) -> Result<()> {
    let options = options(args)?;
    let exo = build_exo(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let line = if options.list > 0 {
        runtime.block_on(listing(&exo, options.list))?
    } else {
        runtime.block_on(run(&exo, &options))?
    };
    println!("{line}");
    Ok(())
}

/// Starts the release `exo serve` on a free port against `redis_url`;
/// returns the process and its address.
async fn start_gateway(
    exo: &std::path::Path,
    redis_url: &str,
    readers: usize,
) -> Result<(Process, std::net::SocketAddr)> {
    let mut gateway = Process(
        std::process::Command::new(exo)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--stream-readers",
                &readers.to_string(),
            ])
            .env("EXO_REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("start exo serve")?,
    );
    let stdout = gateway.0.stdout.take().context("the gateway's stdout")?;
    let mut lines = BufReader::new(tokio::process::ChildStdout::from_std(stdout)?).lines();
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??
    {
        if let Some(url) = line.strip_prefix("exo gateway listening on http://") {
            let addr = url.trim().parse()?;
            return Ok((gateway, addr));
        }
    }
    bail!("the gateway did not print its address")
}

/// One `GET` over HTTP/1.0; the status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `--list N`: N finished tasks in Redis (1 in 100 failed), then the time
/// of one page of `GET /v1/tasks` at the newest, in the middle, and with a
/// status filter that matches 1%.
async fn listing(exo: &std::path::Path, tasks: usize) -> Result<serde_json::Value> {
    let server = exo_testkit::RedisServer::start();
    let port = server.port();
    let started = Instant::now();
    let chunk = 20_000;
    let mut first = 0;
    while first < tasks {
        let count = chunk.min(tasks - first);
        let output = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &port.to_string(),
                "EVAL",
                include_str!("fill_tasks.lua"),
                "0",
            ])
            .args(["exo:", &first.to_string(), &count.to_string(), "100"])
            .output()
            .context("run redis-cli")?;
        if !output.status.success() || String::from_utf8_lossy(&output.stdout).contains("ERR") {
            bail!(
                "filling tasks failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        first += count;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let used_memory = info(port, "memory")?
        .get("used_memory")
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    let (mut gateway, addr) = start_gateway(exo, &server.url(), 1).await?;
    let mut timings = serde_json::Map::new();
    let middle = tasks / 2;
    for (name, path) in [
        ("newest_page_of_50", "/v1/tasks?limit=50".to_owned()),
        (
            "middle_page_of_50",
            format!("/v1/tasks?limit=50&cursor={middle}"),
        ),
        (
            "last_page_of_50",
            format!("/v1/tasks?limit=50&cursor={}", tasks.saturating_sub(50)),
        ),
        (
            "failed_only_page_of_50",
            "/v1/tasks?limit=50&status=failed".to_owned(),
        ),
        (
            "agent_filter_page_of_50",
            "/v1/tasks?limit=50&agent=agent-3".to_owned(),
        ),
        ("one_task_by_id", format!("/v1/tasks/bench-{middle}")),
    ] {
        let mut samples = Vec::new();
        let mut returned = 0;
        for _ in 0..20 {
            let started = Instant::now();
            let (status, body) = http_get(addr, &path).await?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                bail!("{path}: HTTP {status}: {body}");
            }
            let body: serde_json::Value = serde_json::from_str(&body)?;
            returned = body["tasks"].as_array().map_or(1, Vec::len);
        }
        samples.sort_by(f64::total_cmp);
        timings.insert(
            name.to_owned(),
            json!({
                "ms_p50": rounded(percentile(&samples, 0.5), 2),
                "ms_max": rounded(samples.last().copied().unwrap_or(0.0), 2),
                "tasks_returned": returned,
            }),
        );
    }
    let _ = gateway.terminate(Duration::from_secs(10));
    Ok(json!({
        "bench": "gateway-listing",
        "tasks_known": tasks,
        "fill_seconds": rounded(fill_seconds, 1),
        "redis_used_memory_mib": rounded(used_memory / 1_048_576.0, 0),
        "pages": timings,
    }))
}

async fn run(exo: &std::path::Path, options: &Options) -> Result<serde_json::Value> {
    let server = exo_testkit::RedisServer::start();
    let port = server.port();
    let broker = Broker::connect(BrokerConfig::new(server.url())).await?;
    let mut task_ids = Vec::with_capacity(options.clients);
    let agent: Map<String, serde_json::Value> =
        serde_json::from_value(json!({"name": "bench", "model": "scripted:noop"}))?;
    for index in 0..options.clients {
        let payload = TaskPayload::new(format!("gw-{index}"), agent.clone(), "x");
        task_ids.push(broker.client().submit(payload).await?.task_id().to_owned());
    }
    let clients_before: u64 = info(port, "clients")?
        .get("connected_clients")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let (mut gateway, addr) = start_gateway(exo, &server.url(), options.readers).await?;
    let gateway_pid = gateway.0.id();

    // Connect every client (a few hundred at a time), then wait until all
    // have their response headers.
    let connected = Arc::new(tokio::sync::Barrier::new(options.clients + 1));
    let mut clients = tokio::task::JoinSet::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let connect_started = Instant::now();
    for task_id in &task_ids {
        let permit = connecting.clone().acquire_owned().await?;
        let connected = connected.clone();
        let task_id = task_id.clone();
        clients.spawn(async move {
            drop(permit);
            client(addr, task_id, connected).await
        });
    }
    tokio::time::timeout(Duration::from_secs(120), connected.wait())
        .await
        .context("clients did not all connect within 120 s")?;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    // Let the readers take every stream in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients_after: u64 = info(port, "clients")?
        .get("connected_clients")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let rss_connected_kib = peak_rss_kib(gateway_pid);
    let cpu_before = cpu_seconds(gateway_pid)?;

    // Publish: `events` rounds over every task, paced at `rate`.
    let session = broker.worker_session("bench-publisher");
    let total = options.clients * options.events;
    let published = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1.0));
    for index in 0..total {
        let due = started + interval * index as u32;
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let session = session.clone();
        let task_id = task_ids[index % task_ids.len()].clone();
        let published = published.clone();
        publishers.spawn(async move {
            let event = StreamEvent::Text(exo_proto::TextEvent {
                text: format!("{:.6}", now_seconds()),
                agent_name: "bench".to_owned(),
            });
            let json = serde_json::to_string(&event)?;
            session
                .publish(&task_id, &[json], PublishOptions::default())
                .await?;
            if let Ok(mut count) = published.lock() {
                *count += 1;
            }
            anyhow::Ok(())
        });
        while publishers.len() > 512 {
            publishers.join_next().await.context("publisher")???;
        }
    }
    while let Some(result) = publishers.join_next().await {
        result??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    for task_id in &task_ids {
        let end = StreamEvent::status(RunStatus::Completed, "bench", "done");
        session
            .publish(
                task_id,
                &[serde_json::to_string(&end)?],
                PublishOptions::default(),
            )
            .await?;
    }
    let mut latencies = Vec::with_capacity(total);
    let mut missing_or_repeated = 0usize;
    let mut unended = 0usize;
    let mut failed = 0usize;
    while let Some(result) = tokio::time::timeout(Duration::from_secs(60), clients.join_next())
        .await
        .context("clients did not all finish within 60 s of the last event")?
    {
        match result? {
            Ok(seen) => {
                let mut unique = seen.ids.clone();
                unique.dedup();
                if seen.latencies.len() != options.events || unique.len() != seen.ids.len() {
                    missing_or_repeated += 1;
                }
                if !seen.ended {
                    unended += 1;
                }
                latencies.extend(seen.latencies);
            }
            Err(error) => {
                eprintln!("client failed: {error:#}");
                failed += 1;
            }
        }
    }
    let received_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(gateway_pid)? - cpu_before;
    let rss_peak_kib = peak_rss_kib(gateway_pid);
    latencies.sort_by(f64::total_cmp);
    let _ = gateway.terminate(Duration::from_secs(10));
    Ok(json!({
        "bench": "gateway",
        "clients": options.clients,
        "events_per_client": options.events,
        "publish_rate_target": options.rate,
        "stream_readers": options.readers,
        "gateway_redis_connections": clients_after.saturating_sub(clients_before),
        "connect_seconds": rounded(connect_seconds, 2),
        "latency_ms_p50": rounded(percentile(&latencies, 0.50), 1),
        "latency_ms_p99": rounded(percentile(&latencies, 0.99), 1),
        "latency_ms_max": rounded(latencies.last().copied().unwrap_or(0.0), 1),
        "events_received": latencies.len(),
        "events_per_second": rounded(latencies.len() as f64 / publish_seconds.max(1e-9), 0),
        "seconds_to_last_receipt": rounded(received_seconds, 2),
        "gateway_cpu_us_per_event": rounded(cpu * 1e6 / latencies.len().max(1) as f64, 1),
        "gateway_rss_mib_connected": rounded(rss_connected_kib as f64 / 1024.0, 1),
        "gateway_rss_mib_peak": rounded(rss_peak_kib as f64 / 1024.0, 1),
        "clients_missing_or_repeating": missing_or_repeated,
        "clients_not_ended": unended,
        "clients_failed": failed,
    }))
}
