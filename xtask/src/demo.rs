//! `cargo xtask demo`: a throwaway Redis (unless `EXO_REDIS_URL` is set),
//! a worker, and a sample agent whose events stream in the terminal.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cargo, run, workspace_root};

/// A child process stopped with SIGTERM (then killed) when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Process {
    pub(crate) fn terminate(&mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.0.kill()?;
                return Ok(self.0.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.terminate(Duration::from_secs(10));
        }
    }
}

/// Builds `exo` and returns its path.
pub(crate) fn build_exo(release: bool) -> Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "-p", "exo-cli", "--bin", "exo"]);
    if release {
        command.arg("--release");
    }
    run("build exo", &mut command)?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .ok()
        .or_else(|| target_dir_from_metadata().ok())
        .unwrap_or_else(|| workspace_root().join("target"));
    let binary = target
        .join(if release { "release" } else { "debug" })
        .join("exo");
    if !binary.is_file() {
        bail!("built exo, but {} does not exist", binary.display());
    }
    Ok(binary)
}

fn target_dir_from_metadata() -> Result<PathBuf> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(PathBuf::from(
        metadata["target_directory"]
            .as_str()
            .context("no target_directory")?,
    ))
}

/// A Redis for the run: `EXO_REDIS_URL`, or a throwaway redis-server.
pub(crate) fn redis(keep: &mut Option<exo_testkit::RedisServer>) -> String {
    match std::env::var("EXO_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            let server = exo_testkit::RedisServer::start();
            let url = server.url();
            eprintln!("started a throwaway redis-server at {url}");
            *keep = Some(server);
            url
        }
    }
}

pub(crate) fn demo() -> Result<()> {
    let exo = build_exo(false)?;
    let mut server = None;
    let redis_url = redis(&mut server);
    let root = workspace_root();
    let (agent, what) = if std::env::var("OPENAI_API_KEY").is_ok_and(|key| !key.is_empty()) {
        (
            root.join("examples/agents/weather.openai.json"),
            "OpenAI (OPENAI_API_KEY is set)",
        )
    } else if std::env::var("ANTHROPIC_API_KEY").is_ok_and(|key| !key.is_empty()) {
        (
            root.join("examples/agents/weather.anthropic.json"),
            "Anthropic (ANTHROPIC_API_KEY is set)",
        )
    } else {
        (
            root.join("examples/agents/weather.json"),
            "the scripted provider (set OPENAI_API_KEY or ANTHROPIC_API_KEY for a real model)",
        )
    };
    eprintln!("\n== starting a worker (concurrency 2, built-in demo tools)");
    let mut worker = Process(
        Command::new(&exo)
            .args([
                "start",
                "worker",
                "--builtin-tools",
                "--concurrency",
                "2",
                "--log-format",
                "compact",
            ])
            .env("EXO_REDIS_URL", &redis_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("start the worker")?,
    );
    std::thread::sleep(Duration::from_millis(800));
    eprintln!("\n== submitting {} with {what}", relative(&agent, &root));
    eprintln!(
        "== exo task submit --agent {} --input 'What is the weather in Paris?' --detailed --follow\n",
        relative(&agent, &root)
    );
    let status = Command::new(&exo)
        .args(["task", "submit", "--agent"])
        .arg(&agent)
        .args([
            "--input",
            "What is the weather in Paris?",
            "--detailed",
            "--follow",
        ])
        .env("EXO_REDIS_URL", &redis_url)
        .status()
        .context("submit the task")?;
    eprintln!("\n== exo task list");
    let _ = Command::new(&exo)
        .args(["task", "list", "--limit", "5"])
        .env("EXO_REDIS_URL", &redis_url)
        .status();
    eprintln!("\n== exo worker list");
    let _ = Command::new(&exo)
        .args(["worker", "list"])
        .env("EXO_REDIS_URL", &redis_url)
        .status();
    eprintln!("\n== stopping the worker (SIGTERM drains it)");
    let stopped = worker.terminate(Duration::from_secs(35))?;
    if !status.success() {
        bail!("the demo task did not complete ({status})");
    }
    if !stopped.success() {
        bail!("the worker did not stop cleanly ({stopped})");
    }
    eprintln!("done.");
    Ok(())
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
