//! `cargo xtask <command>`: the project's automation, in Rust.
//!
//! - `ci`: format check, clippy with warnings denied, the layering check,
//!   and every test (all features).
//! - `tidy`: the layering check and the checks of the deployment files
//!   (both also run as `cargo test -p xtask`).
//! - `demo`: a throwaway Redis, a worker, a sample agent streaming.
//! - `bench`: throughput, worker and Redis CPU, Redis commands, round trips
//!   and memory per task; `--peer bullmq` runs the same drains through
//!   BullMQ, alternating, and prints the ratios; `bench gateway` puts
//!   thousands of SSE clients on one `exo serve` and measures latency,
//!   Redis connections and memory.
//! - `chaos`: thousands of tasks through several worker processes while
//!   workers are SIGKILLed, Redis is killed, restarted and frozen, and tasks
//!   are cancelled; one JSON line of what was lost, duplicated or changed.
//! - `check-features`: `cargo check` of the feature combinations users
//!   name (`exo-worker` with `temporal,postgres`, `exo-cli` with and without
//!   its defaults, each backend alone).
//! - `fuzz`: every fuzz target under `fuzz/` for a bounded time
//!   (`--seconds N` each, default 60), with cargo-fuzz.
//! - `e2e`: the end-to-end suite on every deployment shape (standalone,
//!   Sentinel with failover, Cluster, ACL user, TLS), with the real `exo`
//!   binary; `--redis-url` runs the standalone shape (and the process tests)
//!   against a Redis you give it, e.g. one in Docker.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod demo;
mod tidy;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".to_owned());
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "ci" => ci(&rest),
        "tidy" => tidy(),
        "demo" => demo::demo(),
        "e2e" => e2e(&rest),
        "bench" => bench::bench(&rest),
        "chaos" => chaos::chaos(&rest),
        "fuzz" => fuzz(&rest),
        "check-features" => check_features(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <ci|tidy|demo|bench [--tasks N] [--concurrency 1,8,32,100] [--kind noop,echo] [--rounds R] [--peer bullmq] [--growth N]|bench gateway [--clients N] [--events N] [--rate R] [--readers N]|chaos [--tasks N] [--rate R] [--workers N] [--fsync always|everysec]|e2e>"
            );
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`; try `cargo xtask help`"),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn run(step: &str, command: &mut Command) -> Result<()> {
    eprintln!("==> {step}: {command:?}");
    let started = std::time::Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start {step}"))?;
    eprintln!(
        "<== {step}: {status} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

/// The feature combinations users build: (package, cargo arguments).
const FEATURE_SETS: &[(&str, &[&str])] = &[
    ("exo-worker", &["--features", "temporal,postgres"]),
    ("exo-worker", &[]),
    ("exo-cli", &[]),
    ("exo-cli", &["--no-default-features"]),
    ("exo-cli", &["--features", "temporal"]),
    ("exo-memory", &["--features", "sqlite"]),
    ("exo-memory", &["--features", "postgres"]),
    ("exo-agent", &[]),
    ("exo-agent", &["--features", "mcp"]),
    ("exo-observability", &[]),
    ("exo-observability", &["--features", "otlp"]),
];

fn check_features() -> Result<()> {
    for (package, args) in FEATURE_SETS {
        run(
            &format!("check {package} {}", args.join(" ")),
            cargo().args(["check", "-p", package]).args(*args),
        )?;
    }
    eprintln!("check-features: {} combinations build", FEATURE_SETS.len());
    Ok(())
}

/// The fuzz targets of `fuzz/Cargo.toml`.
const FUZZ_TARGETS: &[&str] = &["task_payload", "stream_event", "task_hash", "agent_config"];

fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut targets: Vec<String> = FUZZ_TARGETS.iter().map(|name| (*name).to_owned()).collect();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds needs a value")?.parse()?,
            "--target" => targets = vec![args.next().context("--target needs a name")?.clone()],
            other => bail!("unknown fuzz option `{other}` (--seconds N, --target NAME)"),
        }
    }
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        bail!("cargo-fuzz is not installed; install it with `cargo install cargo-fuzz`");
    }
    let fuzz_dir = workspace_root().join("fuzz");
    for target in &targets {
        // cargo-fuzz passes `-Z` flags; the stable toolchain takes them
        // with RUSTC_BOOTSTRAP. Its own target dir keeps the instrumented
        // build apart from the workspace's.
        run(
            &format!("fuzz {target} for {seconds}s"),
            cargo()
                .current_dir(&fuzz_dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .env_remove("CARGO_TARGET_DIR")
                .args([
                    "fuzz",
                    "run",
                    target,
                    "--",
                    &format!("-max_total_time={seconds}"),
                ]),
        )?;
    }
    Ok(())
}

fn tidy() -> Result<()> {
    tidy::tidy(&workspace_metadata()?)?;
    eprintln!("tidy: the layering holds");
    tidy::deploy::check()?;
    eprintln!("tidy: the deployment files agree with each other and with exo");
    Ok(())
}

/// `cargo metadata` of the workspace, with every feature on.
fn workspace_metadata() -> Result<serde_json::Value> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--all-features"])
        .output()
        .context("cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata JSON")
}

fn e2e(rest: &[String]) -> Result<()> {
    // The tests run the `exo` binary next to them; build it first.
    run("build exo", cargo().args(["build", "-p", "exo-cli"]))?;
    let mut command = cargo();
    command.args([
        "test",
        "-p",
        "exo-e2e",
        "--test",
        "it",
        "--",
        "deployments::",
        "worker_process::",
    ]);
    match rest {
        [] => {}
        [flag, url] if flag == "--redis-url" => {
            command
                .env("EXO_E2E_REDIS_URL", url)
                .env("EXO_TEST_REDIS_URL", url);
        }
        other => bail!("usage: cargo xtask e2e [--redis-url URL] (got {other:?})"),
    }
    run("e2e", &mut command)
}

fn ci(_rest: &[String]) -> Result<()> {
    run("fmt", cargo().args(["fmt", "--all", "--check"]))?;
    tidy()?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "test",
        cargo().args(["test", "--workspace", "--all-targets", "--all-features"]),
    )?;
    Ok(())
}
