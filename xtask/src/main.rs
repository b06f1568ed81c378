//! `cargo xtask <command>`: the project's automation, in Rust.
//!
//! - `ci`: format check, clippy with warnings denied, the layering check,
//!   every test (all features), the docs with warnings denied, and
//!   `package`.
//! - `tidy`: the layering check and the checks of the deployment files
//!   (both also run as `cargo test -p xtask`).
//! - `demo`: a throwaway Redis, a worker, a sample agent streaming.
//! - `bench`: throughput, worker and Redis CPU, Redis commands, round trips
//!   and memory per task; `--peer bullmq` runs the same drains through
//!   BullMQ, alternating, and prints the ratios; `bench gateway` puts
//!   thousands of SSE clients on one `exo serve` and measures latency,
//!   Redis connections and memory; `bench cluster` drains one queue split
//!   into 1, 3 and 6 shards over a local Redis Cluster.
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
//!   against a Redis you give it; `--docker` starts that Redis from the
//!   official `redis` image and smoke-tests `deploy/docker-compose.yml`
//!   (see [`docker`]).
//! - `package`: `cargo package` of every publishable crate (verified), the
//!   `examples/embedded-worker` program built on the packaged crates and
//!   run against Redis, and `cargo install` of the packaged `exo-cli` (see
//!   [`package`]); `--no-verify` skips cargo's own verification builds.
//! - `doc`: `cargo doc` of the workspace with warnings denied.
//! - `man`: the man pages of `exo`, into `target/man/`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod demo;
mod docker;
mod package;
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
        "package" => package::package(&rest),
        "doc" => doc(),
        "man" => man(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <ci|tidy|demo|bench [--tasks N] [--concurrency 1,8,32,100] [--kind noop,echo] [--rounds R] [--peer bullmq] [--growth N]|bench gateway [--clients N] [--events N] [--rate R] [--readers N] [--list N]|bench cluster [--primaries 3] [--shards 1,3,6] [--tasks N] [--concurrency C] [--workers W] [--rounds R]|chaos [--tasks N] [--rate R] [--workers N] [--fsync always|everysec] [--call-ms MS]|e2e [--redis-url URL|--docker]|package [--no-verify]|doc|man|check-features|fuzz>"
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
    let mut redis_url = None;
    let mut in_docker = false;
    match rest {
        [] => {}
        [flag, url] if flag == "--redis-url" => redis_url = Some(url.clone()),
        [flag] if flag == "--docker" => in_docker = true,
        other => bail!("usage: cargo xtask e2e [--redis-url URL | --docker] (got {other:?})"),
    }
    if !in_docker {
        return e2e_suite(redis_url.as_deref());
    }
    if let Err(message) = docker::engine("docker") {
        bail!(message);
    }
    let run = docker::DockerRun::new();
    let compose_file = workspace_root().join("deploy/docker-compose.yml");
    let compose_file = compose_file.display().to_string();
    let outcome = (|| -> Result<()> {
        docker::docker(&run.redis_run())?;
        let published = docker::docker(&run.redis_port())?;
        let url = docker::redis_url(&published)
            .with_context(|| format!("`docker port` printed `{published}`"))?;
        exo_testkit::wait_for_port(
            url.rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .unwrap_or(6379),
            std::time::Duration::from_secs(30),
        );
        e2e_suite(Some(&url))?;
        for command in run.compose_smoke(&compose_file) {
            docker::docker(&command)?;
        }
        Ok(())
    })();
    // Clean up whatever happened.
    let _ = docker::docker(&run.redis_remove());
    let _ = docker::docker(&run.compose_down(&compose_file));
    outcome
}

/// The end-to-end suite: standalone (on `redis_url` when given), Sentinel,
/// Cluster, ACL and TLS shapes, and the worker-process tests.
fn e2e_suite(redis_url: Option<&str>) -> Result<()> {
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
    if let Some(url) = redis_url {
        command
            .env("EXO_E2E_REDIS_URL", url)
            .env("EXO_TEST_REDIS_URL", url);
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
    doc()?;
    // Without cargo's own verification build: the example and the install
    // check compile every packaged crate from its `.crate` contents, which
    // is the same check, once instead of twice.
    package::package(&["--no-verify".to_owned()])?;
    Ok(())
}

/// `cargo doc` of every crate with every feature, warnings denied (a
/// missing doc, a broken intra-doc link).
fn doc() -> Result<()> {
    run(
        "doc",
        cargo().env("RUSTDOCFLAGS", "-D warnings").args([
            "doc",
            "--workspace",
            "--no-deps",
            "--all-features",
        ]),
    )
}

/// Writes the man pages of `exo` (`exo.1` and one per subcommand) into
/// `<target>/man/`.
fn man() -> Result<()> {
    let exo = demo::build_exo(false)?;
    // `<target>/debug/exo` -> `<target>/man`.
    let directory = exo
        .parent()
        .and_then(std::path::Path::parent)
        .map(|target| target.join("man"))
        .context("the target directory")?;
    run(
        "man pages",
        Command::new(&exo).arg("man-pages").arg(&directory),
    )?;
    eprintln!(
        "man: read one with `man {}`",
        directory.join("exo.1").display()
    );
    Ok(())
}
