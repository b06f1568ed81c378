//! `cargo xtask bench`: drains no-op and echo tasks through one worker
//! process (release build) on a fresh local redis-server per run, at
//! several concurrencies, prints one JSON line per run and a summary table.
//!
//! Each run prefills the queue with N tasks, then starts the worker and
//! measures the drain from the task hashes (first start to last
//! completion). The end of the drain is read from the worker's /metrics
//! (tasks completed, failed or cancelled), so the bench sends Redis nothing
//! while the worker drains. Over the drain it takes the worker's CPU time
//! from `/proc` (from the moment its metrics endpoint listens, so the
//! process's own start is left out), Redis's from `INFO cpu` and its commands from
//! `INFO commandstats`, and the worker's round trips from its
//! `exo_redis_round_trips_total`. A second, paced phase submits tasks at a
//! steady rate to measure submit-to-start latency without queueing. Memory
//! is the worker's `VmHWM`.
//!
//! With `--peer bullmq` every exo run is followed by the same drain through
//! BullMQ (see [`bullmq`]), round after round, and each BullMQ line carries
//! the ratio of the pair. With `--baseline PATH` the peer is another `exo`
//! binary (an earlier build, say), run the same way: a change's effect
//! measured side by side, alternating, instead of against an old table.

mod bullmq;
mod cluster;
mod gateway;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    sync::OnceLock,
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

/// The task kinds: `noop` returns at once, `echo` emits 10 events.
const KINDS: &[&str] = &["noop", "echo"];

/// The system a `--peer` run compares exo with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    BullMq,
}

struct Options {
    tasks: usize,
    paced: usize,
    concurrencies: Vec<usize>,
    kinds: Vec<String>,
    /// With `--growth N`: a long run of N tasks instead (memory over time).
    growth: Option<usize>,
    peer: Option<Peer>,
    /// With `--baseline PATH`: an earlier `exo` binary as the peer.
    baseline: Option<std::path::PathBuf>,
    /// Runs per (kind, concurrency); 3 with a peer, 1 without, by default.
    rounds: Option<usize>,
    bullmq_version: String,
    /// With `--callgrind`: exo's redis-server runs under callgrind, and
    /// each exo run reports Redis's instructions per task over its drain.
    callgrind: bool,
}

const USAGE: &str = "--tasks N, --paced N, --concurrency 1,8,32,100, --kind noop,echo, \
    --rounds R, --peer bullmq, --bullmq-version X.Y.Z, --baseline PATH, --growth N, --callgrind";

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        tasks: 2000,
        paced: 200,
        concurrencies: vec![1, 8, 32, 100],
        kinds: KINDS.iter().map(|kind| (*kind).to_owned()).collect(),
        growth: None,
        peer: None,
        baseline: None,
        rounds: None,
        bullmq_version: bullmq::DEFAULT_VERSION.to_owned(),
        callgrind: false,
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
            "--rounds" => options.rounds = Some(value()?.parse()?),
            "--peer" => {
                options.peer = match value()?.as_str() {
                    "bullmq" => Some(Peer::BullMq),
                    other => bail!("unknown peer `{other}` (the peer is bullmq)"),
                }
            }
            "--bullmq-version" => options.bullmq_version = value()?.clone(),
            "--baseline" => options.baseline = Some(value()?.into()),
            "--callgrind" => options.callgrind = true,
            other => bail!("unknown bench option `{other}` ({USAGE})"),
        }
    }
    if let Some(kind) = options
        .kinds
        .iter()
        .find(|kind| !KINDS.contains(&kind.as_str()))
    {
        bail!("unknown task kind `{kind}` (noop or echo)");
    }
    if options.tasks == 0 || options.rounds == Some(0) || options.concurrencies.contains(&0) {
        bail!("--tasks, --rounds and every --concurrency must be at least 1");
    }
    if options.growth.is_some() && (options.peer.is_some() || options.baseline.is_some()) {
        bail!("--growth runs exo alone; drop --peer and --baseline");
    }
    if options.callgrind && (options.peer.is_some() || options.growth.is_some()) {
        bail!("--callgrind measures exo's runs (and a --baseline's); drop --peer and --growth");
    }
    if options.peer.is_some() && options.baseline.is_some() {
        bail!("one peer at a time: --peer bullmq or --baseline PATH");
    }
    if let Some(baseline) = &options.baseline
        && !baseline.is_file()
    {
        bail!("--baseline {}: no such file", baseline.display());
    }
    Ok(options)
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("gateway") {
        return gateway::bench_gateway(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("cluster") {
        return cluster::bench_cluster(&args[1..]);
    }
    let options = options(args)?;
    // The peer is checked and installed before the long release build, so
    // a machine without node fails at once.
    let peer = match options.peer {
        Some(Peer::BullMq) => Some(bullmq::BullMq::install(&options.bullmq_version)?),
        None => None,
    };
    let baseline = options.baseline.clone();
    let peer_name = if baseline.is_some() {
        "baseline"
    } else {
        "BullMQ"
    };
    let exo = build_exo(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(tasks) = options.growth {
        println!("{}", runtime.block_on(growth(&exo, tasks))?);
        return Ok(());
    }
    let with_peer = peer.is_some() || baseline.is_some();
    let rounds = options.rounds.unwrap_or(if with_peer { 3 } else { 1 });
    let mut pairs = Vec::new();
    // Rounds are the outer loop: a drift of the machine spreads over every
    // (kind, concurrency) instead of favouring one of them.
    for round in 1..=rounds {
        for kind in &options.kinds {
            for &concurrency in &options.concurrencies {
                let run = Run {
                    kind,
                    concurrency,
                    tasks: options.tasks,
                };
                let (exo_drain, exo_only) =
                    runtime.block_on(exo_run(&exo, &run, options.paced, options.callgrind))?;
                let mut line = exo_drain.json(round);
                merge(&mut line, exo_only);
                println!("{line}");
                let peer_drain = match (&peer, &baseline) {
                    (Some(peer), _) => Some(peer.run(&run)?),
                    (None, Some(baseline)) => {
                        let (mut drain, _) = runtime.block_on(exo_run(
                            baseline,
                            &run,
                            options.paced,
                            options.callgrind,
                        ))?;
                        drain.system = "exo-baseline";
                        Some(drain)
                    }
                    (None, None) => None,
                };
                if let Some(peer_drain) = &peer_drain {
                    let ratio = exo_drain.tasks_per_second() / peer_drain.tasks_per_second();
                    let ratio_name = if baseline.is_some() {
                        "exo_over_baseline_tasks_per_second"
                    } else {
                        "exo_over_bullmq_tasks_per_second"
                    };
                    let mut line = peer_drain.json(round);
                    merge(&mut line, json!({ratio_name: rounded(ratio, 2)}));
                    println!("{line}");
                    eprintln!(
                        "pair {round}: {kind} at concurrency {concurrency}: exo {:.0} tasks/s, {peer_name} {:.0} tasks/s, exo/{peer_name} {ratio:.2}",
                        exo_drain.tasks_per_second(),
                        peer_drain.tasks_per_second(),
                    );
                }
                pairs.push(Pair {
                    exo: exo_drain,
                    peer: peer_drain,
                });
            }
        }
    }
    println!();
    match (&peer, &baseline) {
        (Some(peer), _) => println!(
            "exo against BullMQ {} (node {}): {} tasks per run, {rounds} alternating pairs, medians with (min–max)",
            peer.version, peer.node_version, options.tasks
        ),
        (None, Some(baseline)) => println!(
            "exo against the baseline {}: {} tasks per run, {rounds} alternating pairs, medians with (min–max)",
            baseline.display(),
            options.tasks
        ),
        (None, None) => println!(
            "exo: {} tasks per run, {rounds} round(s), medians with (min–max)",
            options.tasks
        ),
    }
    println!();
    print!("{}", summary(&pairs, peer_name));
    Ok(())
}

/// One drain's parameters, shared by exo and its peer.
struct Run<'a> {
    kind: &'a str,
    concurrency: usize,
    tasks: usize,
}

/// An exo run and, with `--peer`, the peer's run right after it.
struct Pair {
    exo: Drain,
    peer: Option<Drain>,
}

/// What one drain measured, for exo or its peer.
struct Drain {
    system: &'static str,
    kind: String,
    concurrency: usize,
    tasks: usize,
    completed: usize,
    failed: usize,
    /// From the first task's start to the last task's completion.
    drain_seconds: f64,
    worker_cpu_seconds: f64,
    worker_peak_rss_kib: u64,
    /// Redis's counters over the drain (after minus before).
    redis: RedisCounters,
    /// The worker's own count of Redis round trips (exo only).
    worker_round_trips: Option<u64>,
    /// Redis's instructions over the drain, with `--callgrind` (exo only).
    redis_instructions: Option<u64>,
}

impl Drain {
    fn tasks_per_second(&self) -> f64 {
        self.tasks as f64 / self.drain_seconds.max(1e-6)
    }

    fn per_task(&self, total: f64) -> f64 {
        total / self.tasks as f64
    }

    fn worker_cpu_us_per_task(&self) -> f64 {
        self.per_task(self.worker_cpu_seconds * 1e6)
    }

    fn redis_cpu_us_per_task(&self) -> f64 {
        self.per_task(self.redis.cpu_seconds * 1e6)
    }

    fn redis_commands_per_task(&self) -> f64 {
        self.per_task(
            self.redis
                .commands
                .values()
                .map(|command| command.calls)
                .sum::<u64>() as f64,
        )
    }

    fn worker_round_trips_per_task(&self) -> Option<f64> {
        self.worker_round_trips
            .map(|round_trips| self.per_task(round_trips as f64))
    }

    fn json(&self, round: usize) -> serde_json::Value {
        let is_script = |name: &str| SCRIPT_COMMANDS.contains(&name);
        let scripts = self
            .redis
            .commands
            .iter()
            .filter(|(name, _)| is_script(name))
            .fold(CommandCounter::default(), |sum, (_, command)| {
                CommandCounter {
                    calls: sum.calls + command.calls,
                    usec: sum.usec + command.usec,
                }
            });
        let commands: BTreeMap<&str, serde_json::Value> = self
            .redis
            .commands
            .iter()
            .filter(|(name, _)| !is_script(name))
            .map(|(name, command)| (name.as_str(), command.json(self.tasks)))
            .collect();
        json!({
            "system": self.system,
            "round": round,
            "kind": self.kind,
            "concurrency": self.concurrency,
            "tasks": self.tasks,
            "completed": self.completed,
            "failed": self.failed,
            "drain_seconds": rounded(self.drain_seconds, 3),
            "tasks_per_second": rounded(self.tasks_per_second(), 0),
            "worker_cpu_us_per_task": rounded(self.worker_cpu_us_per_task(), 1),
            "redis_cpu_us_per_task": rounded(self.redis_cpu_us_per_task(), 1),
            "redis_commands_per_task_incl_scripts": rounded(self.redis_commands_per_task(), 2),
            "redis_scripts": scripts.json(self.tasks),
            "redis_commands": commands,
            "worker_round_trips_per_task": self.worker_round_trips_per_task().map(|value| rounded(value, 2)),
            "connections_per_task": rounded(self.per_task(self.redis.connections as f64), 3),
            "worker_peak_rss_mib": rounded(self.worker_peak_rss_kib as f64 / 1024.0, 1),
            "redis_instructions_per_task": self.redis_instructions.map(|total| total / self.tasks as u64),
        })
    }
}

/// The commands that run a script: their calls and time include the
/// commands the script runs, which `INFO commandstats` also counts on their
/// own lines.
const SCRIPT_COMMANDS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// One line of `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default)]
struct CommandCounter {
    calls: u64,
    usec: u64,
}

impl CommandCounter {
    fn json(self, tasks: usize) -> serde_json::Value {
        json!({
            "calls_per_task": rounded(self.calls as f64 / tasks as f64, 2),
            "usec_per_call": rounded(self.usec as f64 / (self.calls.max(1)) as f64, 2),
        })
    }
}

/// Redis's counters at one moment, or their growth between two moments.
#[derive(Debug, Clone, Default)]
struct RedisCounters {
    /// `used_cpu_sys + used_cpu_user` of `INFO cpu`.
    cpu_seconds: f64,
    /// `INFO commandstats`, by command (`client|setname` for subcommands).
    commands: BTreeMap<String, CommandCounter>,
    /// `total_connections_received` of `INFO stats`.
    connections: u64,
}

impl RedisCounters {
    /// Reads them with one `INFO everything` (which the next reading
    /// counts as one `info` call).
    fn read(port: u16) -> Result<Self> {
        Ok(Self::from_info(&info(port, "everything")?))
    }

    fn from_info(info: &BTreeMap<String, String>) -> Self {
        let number = |key: &str| -> f64 {
            info.get(key)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0)
        };
        let commands = info
            .iter()
            .filter_map(|(key, stats)| {
                let name = key.strip_prefix("cmdstat_")?;
                let field = |field: &str| -> Option<u64> {
                    stats
                        .split(',')
                        .find_map(|part| part.strip_prefix(field)?.strip_prefix('='))?
                        .parse()
                        .ok()
                };
                Some((
                    name.to_owned(),
                    CommandCounter {
                        calls: field("calls")?,
                        usec: field("usec")?,
                    },
                ))
            })
            .collect();
        RedisCounters {
            cpu_seconds: number("used_cpu_sys") + number("used_cpu_user"),
            commands,
            connections: number("total_connections_received") as u64,
        }
    }

    fn since(&self, before: &RedisCounters) -> RedisCounters {
        let commands = self
            .commands
            .iter()
            .map(|(name, after)| {
                let earlier = before.commands.get(name).copied().unwrap_or_default();
                (
                    name.clone(),
                    CommandCounter {
                        calls: after.calls.saturating_sub(earlier.calls),
                        usec: after.usec.saturating_sub(earlier.usec),
                    },
                )
            })
            .filter(|(_, command)| command.calls > 0)
            .collect();
        RedisCounters {
            cpu_seconds: (self.cpu_seconds - before.cpu_seconds).max(0.0),
            commands,
            connections: self.connections.saturating_sub(before.connections),
        }
    }
}

fn merge(line: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
}

fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
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
        .output()
        .context("run redis-cli (it comes with redis-server)")?;
    Ok(parse_info(&String::from_utf8_lossy(&output.stdout)))
}

/// `key:value` lines of `INFO`; section headers and blank lines are left
/// out.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
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

/// The CPU time (user plus system, all threads) a process has used so far.
///
/// The sum of its threads' run time in `/proc/<pid>/task/*/schedstat`
/// (nanoseconds), or utime + stime of `/proc/<pid>/stat` when that is larger:
/// the latter also counts threads that exited, but only in clock ticks
/// (10 ms), too coarse for a short drain on its own.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let from_stat = stat_cpu_ticks(&stat)? as f64 / clock_ticks_per_second();
    let from_threads: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("schedstat")).ok())
        .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse::<u64>().ok())
        .map(|nanoseconds| nanoseconds as f64 / 1e9)
        .sum();
    Ok(from_stat.max(from_threads))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks.
fn stat_cpu_ticks(stat: &str) -> Result<u64> {
    // The name (field 2) is in parentheses and may hold spaces; the fields
    // after it start at field 3.
    let (_, after_name) = stat.rsplit_once(')').context("a /proc stat line")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |field: usize| -> Result<u64> {
        Ok(fields
            .get(field - 3)
            .context("a short /proc stat line")?
            .parse()?)
    };
    Ok(ticks(14)? + ticks(15)?)
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Polls until the queue is empty (nothing waiting, nothing pending).
async fn wait_empty(broker: &Broker, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = broker.admin().queue_stats().await?;
        if stats.stream_length == 0 && stats.pending == 0 && stats.delayed == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the worker did not drain the queue within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker's counters of tasks that reached a final status.
const FINISHED_METRICS: &[&str] = &[
    "exo_distributed_tasks_completed_total",
    "exo_distributed_tasks_failed_total",
    "exo_distributed_tasks_cancelled_total",
];

/// The sum of the samples of the named metrics on the worker's /metrics
/// (every label set).
fn metric_sum(port: u16, names: &[&str]) -> Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.contains(&name)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Appends the tasks of `broker`'s queue that reached a final status to
/// `done`, page by page (one listing returns a bounded number).
async fn finished_tasks(broker: &Broker, done: &mut Vec<exo_proto::TaskResult>) -> Result<()> {
    let mut cursor = 0;
    loop {
        let page = broker.client().list(None, 1000, cursor).await?;
        done.extend(
            page.tasks
                .into_iter()
                .filter(|task| task.status.is_terminal()),
        );
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return Ok(()),
        }
    }
}

/// Waits until the worker reports `tasks` tasks finished, asking its
/// /metrics (not Redis) every 50 ms.
async fn wait_finished(metrics_port: u16, tasks: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // Until the worker listens, nothing has finished.
        let finished = metric_sum(metrics_port, FINISHED_METRICS).unwrap_or(0.0);
        if finished >= tasks as f64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the worker finished {finished} of {tasks} tasks within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The worker's CPU time once its metrics endpoint listens: the process
/// has loaded and read its configuration, and is about to connect to Redis.
/// Counting from there leaves the start of the process (about 10 ms, a
/// large share of a short drain) out of the figures, as the BullMQ side
/// leaves out node's.
async fn cpu_when_listening(worker: &mut Process, metrics_port: u16) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok() {
            return cpu_seconds(worker.0.id());
        }
        if let Some(status) = worker.0.try_wait()? {
            bail!("the worker exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("the worker's metrics endpoint did not listen within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One exo drain; returns the figures it shares with the peer, and the
/// exo-only ones (latency, the reference ratios) as JSON.
async fn exo_run(
    exo: &std::path::Path,
    run: &Run<'_>,
    paced: usize,
    callgrind: bool,
) -> Result<(Drain, serde_json::Value)> {
    let Run {
        kind,
        concurrency,
        tasks,
    } = *run;
    let profile = callgrind.then(Callgrind::new).transpose()?;
    let server = match &profile {
        Some(profile) => {
            let wrapper = profile.wrapper();
            let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
            exo_testkit::RedisServer::start_under(&wrapper)
        }
        None => exo_testkit::RedisServer::start(),
    };
    // Under callgrind the paced phase would measure valgrind.
    let paced = if profile.is_some() { 0 } else { paced };
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
    let redis_before = RedisCounters::read(port)?;
    let redis_pid = server.pid().context("redis-server's pid")?;
    if let Some(profile) = &profile {
        profile.control(redis_pid, "--instr=on")?;
    }
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
    let cpu_at_start = cpu_when_listening(&mut worker, metrics_port).await?;
    wait_finished(metrics_port, tasks, Duration::from_secs(600)).await?;
    let worker_cpu_seconds = cpu_seconds(pid)? - cpu_at_start;
    let redis_instructions = match &profile {
        Some(profile) => Some(profile.instructions(redis_pid)?),
        None => None,
    };
    let redis = RedisCounters::read(port)?.since(&redis_before);
    // The worker records its round-trip counter right after each final
    // write; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let round_trips = metric_sum(metrics_port, &["exo_redis_round_trips_total"])? as u64;
    // Tasks held ahead and handed back (a task before them ran long).
    let handed_back =
        metric_sum(metrics_port, &["exo_distributed_tasks_handed_back_total"])? as u64;
    let mut done = Vec::with_capacity(tasks);
    finished_tasks(&broker, &mut done).await?;
    if done.len() != tasks {
        bail!("the listing shows {} of {tasks} tasks finished", done.len());
    }
    let first_start = done
        .iter()
        .filter_map(|task| task.started_at)
        .fold(f64::MAX, f64::min);
    let last_end = done
        .iter()
        .filter_map(|task| task.completed_at)
        .fold(0.0, f64::max);
    let completed = done
        .iter()
        .filter(|task| task.status == TaskStatus::Completed)
        .count();

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
    let drain = Drain {
        system: "exo",
        kind: kind.to_owned(),
        concurrency,
        tasks,
        completed,
        failed: done.len() - completed,
        drain_seconds: (last_end - first_start).max(1e-6),
        worker_cpu_seconds,
        worker_peak_rss_kib: rss,
        redis,
        worker_round_trips: Some(round_trips),
        redis_instructions,
    };
    let round_trips_per_task = (round_trips + tasks as u64) as f64 / tasks as f64;
    let exo_only = json!({
        "vs_reference_throughput": rounded(drain.tasks_per_second() / REFERENCE_TASKS_PER_SECOND, 1),
        "submit_to_start_ms_p50": rounded(percentile(&latencies, 0.5), 2),
        "submit_to_start_ms_p99": rounded(percentile(&latencies, 0.99), 2),
        "round_trips_per_task": rounded(round_trips_per_task, 2),
        "handed_back": handed_back,
        "vs_reference_round_trips": rounded(round_trips_per_task / REFERENCE_ROUND_TRIPS_PER_TASK, 2),
    });
    Ok((drain, exo_only))
}

/// `--callgrind`: a redis-server under `valgrind --tool=callgrind` with
/// instrumentation off until the prefill is done; Redis's instructions from
/// then to the drain's end (worker start included), read from a dump.
/// Instruction counts do not move with the machine's load, so two builds
/// compare to the percent. The profile is kept for `callgrind_annotate`.
struct Callgrind {
    dir: std::path::PathBuf,
}

impl Callgrind {
    fn new() -> Result<Self> {
        let found = Command::new("valgrind")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        if !found.is_ok_and(|status| status.success()) {
            bail!("--callgrind needs valgrind (apt-get install -y valgrind)");
        }
        Ok(Callgrind {
            dir: tempfile::Builder::new()
                .prefix("exo-callgrind-")
                .tempdir()?
                .keep(),
        })
    }

    fn out_file(&self) -> std::path::PathBuf {
        self.dir.join("callgrind.out")
    }

    fn wrapper(&self) -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            format!("--callgrind-out-file={}", self.out_file().display()),
        ]
    }

    fn control(&self, pid: u32, action: &str) -> Result<()> {
        let status = Command::new("callgrind_control")
            .arg(action)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .status()
            .context("run callgrind_control")?;
        if !status.success() {
            bail!("callgrind_control {action} {pid}: {status}");
        }
        Ok(())
    }

    /// Dumps the counts since instrumentation began and reads their total.
    fn instructions(&self, pid: u32) -> Result<u64> {
        self.control(pid, "--dump")?;
        let dump = std::path::PathBuf::from(format!("{}.1", self.out_file().display()));
        let text =
            std::fs::read_to_string(&dump).with_context(|| format!("read {}", dump.display()))?;
        eprintln!("Redis's profile of the drain: {}", dump.display());
        text.lines()
            .find_map(|line| line.strip_prefix("totals: "))
            .and_then(|total| total.trim().parse().ok())
            .context("the callgrind dump has no `totals:` line")
    }
}

/// The median and the extremes of some figures.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let median = match values.len() {
            0 => f64::NAN,
            length if length % 2 == 1 => values[length / 2],
            length => (values[length / 2 - 1] + values[length / 2]) / 2.0,
        };
        Spread {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    Spread::of(values).median
}

/// The summary: one row per (kind, concurrency), in the order they ran, as
/// a Markdown table.
fn summary(pairs: &[Pair], peer_name: &str) -> String {
    let mut groups: Vec<((&str, usize), Vec<&Pair>)> = Vec::new();
    for pair in pairs {
        let key = (pair.exo.kind.as_str(), pair.exo.concurrency);
        match groups.iter_mut().find(|(group, _)| *group == key) {
            Some((_, members)) => members.push(pair),
            None => groups.push((key, vec![pair])),
        }
    }
    let with_peer = pairs.iter().any(|pair| pair.peer.is_some());
    let header: Vec<String> = if with_peer {
        vec![
            "kind".to_owned(),
            "concurrency".to_owned(),
            "pairs".to_owned(),
            format!("exo/{peer_name} tasks/s"),
            format!("tasks/s exo / {peer_name}"),
            format!("worker CPU µs/task exo / {peer_name}"),
            format!("Redis CPU µs/task exo / {peer_name}"),
            format!("Redis commands/task exo / {peer_name}"),
            "exo worker round trips/task".to_owned(),
            format!("peak RSS MiB exo / {peer_name}"),
        ]
    } else {
        [
            "kind",
            "concurrency",
            "runs",
            "tasks/s",
            "worker CPU µs/task",
            "Redis CPU µs/task",
            "Redis commands/task",
            "worker round trips/task",
            "peak RSS MiB",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|((kind, concurrency), members)| {
            let exo =
                |figure: fn(&Drain) -> f64| median(members.iter().map(|pair| figure(&pair.exo)));
            let peer = |figure: fn(&Drain) -> f64| {
                median(
                    members
                        .iter()
                        .filter_map(|pair| pair.peer.as_ref())
                        .map(figure),
                )
            };
            let round_trips = exo(|drain| drain.worker_round_trips_per_task().unwrap_or(f64::NAN));
            let mut row = vec![
                kind.to_string(),
                concurrency.to_string(),
                members.len().to_string(),
            ];
            if with_peer {
                let ratios = Spread::of(members.iter().filter_map(|pair| {
                    let peer = pair.peer.as_ref()?;
                    Some(pair.exo.tasks_per_second() / peer.tasks_per_second())
                }));
                row.extend([
                    ratios.show(2),
                    format!(
                        "{:.0} / {:.0}",
                        exo(Drain::tasks_per_second),
                        peer(Drain::tasks_per_second)
                    ),
                    format!(
                        "{:.1} / {:.1}",
                        exo(Drain::worker_cpu_us_per_task),
                        peer(Drain::worker_cpu_us_per_task)
                    ),
                    format!(
                        "{:.1} / {:.1}",
                        exo(Drain::redis_cpu_us_per_task),
                        peer(Drain::redis_cpu_us_per_task)
                    ),
                    format!(
                        "{:.1} / {:.1}",
                        exo(Drain::redis_commands_per_task),
                        peer(Drain::redis_commands_per_task)
                    ),
                    format!("{round_trips:.2}"),
                    format!(
                        "{:.1} / {:.1}",
                        exo(|drain| drain.worker_peak_rss_kib as f64 / 1024.0),
                        peer(|drain| drain.worker_peak_rss_kib as f64 / 1024.0)
                    ),
                ]);
            } else {
                row.extend([
                    Spread::of(members.iter().map(|pair| pair.exo.tasks_per_second())).show(0),
                    format!("{:.1}", exo(Drain::worker_cpu_us_per_task)),
                    format!("{:.1}", exo(Drain::redis_cpu_us_per_task)),
                    format!("{:.1}", exo(Drain::redis_commands_per_task)),
                    format!("{round_trips:.2}"),
                    format!(
                        "{:.1}",
                        exo(|drain| drain.worker_peak_rss_kib as f64 / 1024.0)
                    ),
                ]);
            }
            row
        })
        .collect();
    markdown_table(&header, &rows)
}

fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(column, title)| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .chain([title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut table = line(header.iter().map(|title| (*title).to_owned()).collect());
    table += &line(widths.iter().map(|width| "-".repeat(*width)).collect());
    for row in rows {
        table += &line(row.clone());
    }
    table
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
                "redis_used_memory_mib": memory.get("used_memory").and_then(|value| value.parse::<f64>().ok()).map(|bytes| rounded(bytes / 1048576.0, 1)),
                "keys": keys,
                "worker_rss_mib": rounded(status_kib(pid, "VmRSS:") as f64 / 1024.0, 1),
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
        "worker_peak_rss_mib": rounded(rss_peak as f64 / 1024.0, 1),
        "samples": samples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_counters_read_cpu_commands_and_connections_from_info() {
        let before = RedisCounters::from_info(&parse_info(
            "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
             # Stats\r\ntotal_connections_received:3\r\n\
             # Commandstats\r\n\
             cmdstat_evalsha:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_client|setname:calls=1,usec=2,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n",
        ));
        let after = RedisCounters::from_info(&parse_info(
            "used_cpu_sys:2.000000\nused_cpu_user:3.000000\ntotal_connections_received:5\n\
             cmdstat_evalsha:calls=30,usec=1500,usec_per_call=50.00\n\
             cmdstat_client|setname:calls=1,usec=2,usec_per_call=2.00\n\
             cmdstat_hset:calls=40,usec=40,usec_per_call=1.00\n",
        ));
        let drain = after.since(&before);
        assert!((drain.cpu_seconds - 1.25).abs() < 1e-9);
        assert_eq!(drain.connections, 2);
        let calls: Vec<(&str, u64, u64)> = drain
            .commands
            .iter()
            .map(|(name, command)| (name.as_str(), command.calls, command.usec))
            .collect();
        // A command with no new calls is left out.
        assert_eq!(calls, [("evalsha", 20, 1000), ("hset", 40, 40)]);
    }

    #[test]
    fn stat_cpu_ticks_add_utime_and_stime_after_a_name_with_spaces() {
        let stat = "4242 (node worker) S 1 4242 4242 0 -1 4194304 100 0 0 0 17 5 0 0 20 0 11 0 900 1000 2000";
        assert_eq!(stat_cpu_ticks(stat).unwrap(), 22);
        assert!(stat_cpu_ticks("4242 (short) S 1").is_err());
    }

    #[test]
    fn spread_and_table() {
        let spread = Spread::of([3.0, 1.0, 2.0, 10.0]);
        assert_eq!((spread.median, spread.min, spread.max), (2.5, 1.0, 10.0));
        assert_eq!(Spread::of([1.234]).show(2), "1.23 (1.23–1.23)");
        let table = markdown_table(
            &["kind", "µs/task"],
            &[
                vec!["noop".into(), "12.5".into()],
                vec!["echo".into(), "7".into()],
            ],
        );
        assert_eq!(
            table,
            "| kind | µs/task |\n| ---- | ------- |\n| noop | 12.5    |\n| echo | 7       |\n"
        );
    }

    #[test]
    fn one_peer_at_a_time_and_a_baseline_that_exists() {
        let this_binary = std::env::current_exe().unwrap().display().to_string();
        let args = |line: &str| -> Vec<String> {
            line.replace("BIN", &this_binary)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let parsed = options(&args("--baseline BIN --rounds 2")).unwrap();
        assert_eq!(parsed.baseline.unwrap().display().to_string(), this_binary);
        assert_eq!(parsed.rounds, Some(2));
        for (line, error) in [
            ("--baseline BIN --peer bullmq", "one peer at a time"),
            ("--baseline BIN --growth 10", "--growth runs exo alone"),
            ("--baseline /nonexistent/exo", "no such file"),
            ("--baseline", "a value is missing"),
        ] {
            let refused = options(&args(line)).err().expect(line).to_string();
            assert!(refused.contains(error), "{line}: {refused}");
        }
    }
}
