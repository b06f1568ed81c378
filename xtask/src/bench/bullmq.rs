//! The BullMQ side of `cargo xtask bench --peer bullmq`.
//!
//! BullMQ (and ioredis, its Redis client) is installed with npm into a
//! temporary folder, never into the repository, together with
//! `bullmq.mjs`. Each run mirrors an exo run: a fresh redis-server (the
//! same binary), N jobs added with `Queue.addBulk`, then one `Worker`
//! process with the same concurrency. Jobs are removed when they complete
//! or fail, so memory does not grow.
//!
//! How the drain is measured: the worker process loads BullMQ, connects,
//! and reports ready before it consumes anything (`autorun: false`); its
//! CPU time is read from `/proc` there and again once it reports
//! that every job completed or failed, so node's own start (loading
//! modules) is left out. The drain's duration is from the first call of the
//! processor to the last `completed` (or `failed`) event, both taken in the
//! worker process; these are the same moments exo's `started_at` and
//! `completed_at` record. Redis's counters are read after the prefill,
//! before the worker starts, and again at the end, as for exo.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Drain, RedisCounters, Run, cpu_seconds, peak_rss_kib};
use crate::{demo::Process, run};

/// The BullMQ release compared by default (`--bullmq-version` picks
/// another).
pub(super) const DEFAULT_VERSION: &str = "6.7.6";

/// BullMQ 6 takes its Redis client as an optional peer dependency; this is
/// the ioredis it is built and tested with.
const IOREDIS_VERSION: &str = "6.1.0";

/// The prefill and worker program, run by node from the install folder.
const SCRIPT: &str = include_str!("bullmq.mjs");

const INSTALL_NODE: &str = "`--peer bullmq` needs node (18 or newer) and npm on PATH. \
    Install them with `apt-get install -y nodejs npm` (Debian, Ubuntu), \
    `brew install node` (macOS), or from https://nodejs.org/en/download, then run the bench again.";

/// BullMQ installed in a temporary folder, removed when dropped.
pub(super) struct BullMq {
    folder: tempfile::TempDir,
    /// The installed version, read from its package.json.
    pub(super) version: String,
    pub(super) node_version: String,
}

/// `<tool> --version`, or None when it does not run.
fn tool_version(tool: &str) -> Option<String> {
    let output = Command::new(tool).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl BullMq {
    pub(super) fn install(version: &str) -> Result<BullMq> {
        let (Some(node_version), Some(_)) = (tool_version("node"), tool_version("npm")) else {
            bail!(INSTALL_NODE);
        };
        let folder = tempfile::Builder::new()
            .prefix("exo-bench-bullmq-")
            .tempdir()
            .context("a temporary folder for BullMQ")?;
        std::fs::write(
            folder.path().join("package.json"),
            "{\"name\": \"exo-bench-bullmq\", \"private\": true}\n",
        )?;
        run(
            &format!("install BullMQ {version} into {}", folder.path().display()),
            // npm's report goes to stderr: stdout is for the figures.
            Command::new("npm")
                .current_dir(folder.path())
                .stdout(std::io::stderr())
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    &format!("bullmq@{version}"),
                    &format!("ioredis@{IOREDIS_VERSION}"),
                ]),
        )?;
        std::fs::write(folder.path().join("bench.mjs"), SCRIPT)?;
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(
            folder.path().join("node_modules/bullmq/package.json"),
        )?)
        .context("bullmq's package.json")?;
        Ok(BullMq {
            version: manifest["version"].as_str().unwrap_or(version).to_owned(),
            node_version,
            folder,
        })
    }

    fn node(&self) -> Command {
        let mut command = Command::new("node");
        command.current_dir(self.folder.path()).arg("bench.mjs");
        command
    }

    /// One drain through BullMQ on a fresh redis-server.
    pub(super) fn run(&self, run: &Run<'_>) -> Result<Drain> {
        let server = exo_testkit::RedisServer::start();
        let port = server.port().to_string();
        let tasks = run.tasks.to_string();
        let status = self
            .node()
            .args(["prefill", &port, &tasks, run.kind])
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .context("run node")?;
        if !status.success() {
            bail!("the BullMQ prefill failed ({status})");
        }
        let redis_before = RedisCounters::read(server.port())?;
        let mut worker = Process(
            self.node()
                .args([
                    "work",
                    &port,
                    &tasks,
                    &run.concurrency.to_string(),
                    run.kind,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("start the BullMQ worker")?,
        );
        let pid = worker.0.id();
        let mut stdin = worker.0.stdin.take().context("the worker's stdin")?;
        let lines = read_lines(worker.0.stdout.take().context("the worker's stdout")?);
        wait_for(&lines, "ready", Duration::from_secs(60))?;
        let cpu_before = cpu_seconds(pid)?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        let done = wait_for(&lines, "done", Duration::from_secs(600))?;
        let worker_cpu_seconds = cpu_seconds(pid)? - cpu_before;
        let redis = RedisCounters::read(server.port())?.since(&redis_before);
        let rss = peak_rss_kib(pid);
        stdin.write_all(b"stop\n")?;
        drop(stdin);
        stop(&mut worker)?;
        drop(server);
        let number = |key: &str| done[key].as_f64().unwrap_or(0.0);
        Ok(Drain {
            system: "bullmq",
            kind: run.kind.to_owned(),
            concurrency: run.concurrency,
            tasks: run.tasks,
            completed: number("completed") as usize,
            failed: number("failed") as usize,
            drain_seconds: ((number("last_end_ms") - number("first_start_ms")) / 1000.0).max(1e-6),
            worker_cpu_seconds,
            worker_peak_rss_kib: rss,
            redis,
            worker_round_trips: None,
            redis_instructions: None,
        })
    }
}

/// The worker's stdout, line by line, from a thread.
fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for the JSON line that holds `key`.
fn wait_for(lines: &mpsc::Receiver<String>, key: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the BullMQ worker did not report `{key}` within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the BullMQ worker exited before it reported `{key}` (its errors are above)")
            }
        };
        if let Ok(value) = serde_json::from_str::<Value>(&line)
            && value.get(key).is_some()
        {
            return Ok(value);
        }
    }
}

/// Lets the worker close itself (it was told to stop), or terminates it.
fn stop(worker: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if worker.0.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    worker.terminate(Duration::from_secs(10))?;
    Ok(())
}
