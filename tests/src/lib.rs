//! Helpers for end-to-end tests that run the real `exo` binary: find it,
//! run commands and read their JSON, and start workers as processes
//! ([`WorkerProcess`], from `exo-testkit`, killed when dropped).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

pub use exo_testkit::WorkerProcess;
use serde_json::Value;

/// The `exo` binary built next to this test binary.
pub fn exo_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = profile_dir.join("exo");
    assert!(
        binary.is_file(),
        "{} does not exist; build it with `cargo build -p exo-cli` (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

/// Where the commands of one test point: a Redis URL, a key prefix and a
/// queue.
#[derive(Debug, Clone)]
pub struct Target {
    /// The Redis URL.
    pub redis_url: String,
    /// The key prefix.
    pub prefix: String,
    /// The queue name.
    pub queue: String,
    /// Extra environment for every command (CA file, replica acks, ...).
    pub env: Vec<(String, String)>,
}

impl Target {
    /// The target of a test's Redis.
    pub fn of(redis: &exo_testkit::TestRedis) -> Self {
        Target {
            redis_url: redis.url().to_owned(),
            prefix: redis.prefix().to_owned(),
            queue: redis.queue(),
            env: Vec::new(),
        }
    }

    /// A target from its parts.
    pub fn new(redis_url: &str, prefix: &str, queue: &str) -> Self {
        Target {
            redis_url: redis_url.to_owned(),
            prefix: prefix.to_owned(),
            queue: queue.to_owned(),
            env: Vec::new(),
        }
    }

    /// The same target with its workers' OpenAI provider at `base_url` (a
    /// fake server's `openai_base_url`) and a test key.
    pub fn with_openai(self, base_url: &str) -> Self {
        self.with_env("OPENAI_BASE_URL", base_url)
            .with_env("OPENAI_API_KEY", "test-key")
    }

    /// The same target with one more environment variable.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// An `exo` command aimed at this target.
    pub fn command(&self) -> Command {
        let mut command = Command::new(exo_binary());
        command
            .env("EXO_REDIS_URL", &self.redis_url)
            .env("EXO_KEY_PREFIX", &self.prefix)
            .env("EXO_QUEUE", &self.queue)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null());
        command
    }

    /// Runs `exo <args>` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run exo")
    }

    /// Runs `exo <args> --json`, checks it succeeded, and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let output = self
            .command()
            .args(args)
            .arg("--json")
            .output()
            .expect("run exo");
        assert!(
            output.status.success(),
            "exo {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "exo {args:?}: not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Submits an agent file with an input (`exo task submit`) and returns
    /// the task id.
    pub fn submit(&self, agent: &Path, input: &str) -> String {
        let agent = agent.to_str().expect("a UTF-8 path");
        let submitted = self.json(&["task", "submit", "--agent", agent, "--input", input]);
        submitted["task_id"].as_str().expect("a task id").to_owned()
    }

    /// `exo task status <id> --json`.
    pub fn status(&self, task_id: &str) -> Value {
        self.json(&["task", "status", task_id])
    }

    /// `exo task events <id> --json`: the task's events, in stream order.
    pub fn events(&self, task_id: &str) -> Vec<Value> {
        let output = self
            .command()
            .args(["task", "events", task_id, "--json"])
            .output()
            .expect("run exo");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("an event line")["event"].clone()
            })
            .collect()
    }

    /// Waits until the task has `status`; returns its status JSON.
    pub fn wait_for_status(&self, task_id: &str, status: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("task {task_id} to be {status}"), || {
            let state = self.status(task_id);
            (state["status"] == status).then_some(state)
        })
    }

    /// Starts `exo start worker <args>` as a process and waits until it
    /// has started.
    pub fn start_worker(&self, args: &[&str]) -> WorkerProcess {
        let mut command = self.command();
        command
            .args([
                "start",
                "worker",
                "--builtin-tools",
                "--log-format",
                "compact",
            ])
            .args(args)
            .env("RUST_LOG", "info");
        WorkerProcess::start(command)
    }
}

impl Target {
    /// Starts `exo serve --addr 127.0.0.1:0 <args>` and returns it with
    /// its base URL (`http://127.0.0.1:<port>`), once it listens.
    pub fn start_gateway(&self, args: &[&str]) -> (exo_testkit::TestProcess, String) {
        let mut command = self.command();
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info");
        let mut process = exo_testkit::TestProcess::start("exo serve", command);
        let url = process.wait_for_output(
            Duration::from_secs(20),
            "the listening line",
            |stdout, _| {
                stdout
                    .lines()
                    .find_map(|line| line.strip_prefix("exo gateway listening on "))
                    .map(|url| url.trim().to_owned())
            },
        );
        (process, url)
    }
}

/// Waits until `check` returns `Some`, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes an agent config file and returns its path.
pub fn agent_file(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(config).expect("JSON"))
        .expect("write the agent file");
    path
}
