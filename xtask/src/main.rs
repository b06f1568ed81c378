//! `cargo xtask <command>`: the project's automation, in Rust.
//!
//! - `ci`: format check, clippy with warnings denied, the layering check,
//!   and every test (all features).
//! - `tidy`: the layering check alone.
//! - `demo`: a throwaway Redis, a worker, a sample agent streaming.
//! - `bench`: throughput, latency, Redis commands and memory per task.
//! - `e2e`: the end-to-end suite on every deployment shape (standalone,
//!   Sentinel with failover, Cluster, ACL user, TLS), with the real `exo`
//!   binary; `--redis-url` runs the standalone shape (and the process tests)
//!   against a Redis you give it, e.g. one in Docker.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
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
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <ci|tidy|demo|bench [--tasks N] [--concurrency 1,8,32] [--kind noop,echo]>"
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

fn tidy() -> Result<()> {
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
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata JSON")?;
    tidy::tidy(&metadata)?;
    eprintln!("tidy: the layering holds");
    Ok(())
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
        "deployments",
        "--test",
        "worker_process",
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
