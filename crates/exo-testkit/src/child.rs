//! Processes under test: their output in log files, killed when dropped.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A process started by a test, with its stdout and stderr written to files
/// in a temporary directory (so a long-running process never blocks on a
/// full pipe). It is killed when dropped.
#[derive(Debug)]
pub struct TestProcess {
    label: String,
    child: Option<Child>,
    logs: TempDir,
}

impl TestProcess {
    /// Spawns `command` with its stdout and stderr redirected to log files.
    /// `label` names the process in failure messages.
    pub fn start(label: &str, mut command: Command) -> Self {
        let logs = tempfile::Builder::new()
            .prefix("exo-process-")
            .tempdir()
            .expect("a log directory");
        let log_file =
            |name: &str| std::fs::File::create(logs.path().join(name)).expect("a log file");
        let child = command
            .stdout(log_file("stdout"))
            .stderr(log_file("stderr"))
            .spawn()
            .unwrap_or_else(|error| panic!("{label}: could not start {command:?}: {error}"));
        TestProcess {
            label: label.to_owned(),
            child: Some(child),
            logs,
        }
    }

    /// The label given at start.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.log("stdout")
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.log("stderr")
    }

    /// Its stdout followed by its stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default()
    }

    /// The directory holding the `stdout` and `stderr` files.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// The process id, or 0 once it has been waited for.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().expect("wait for the process"))
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Sends SIGTERM and checks that `kill` could deliver it.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("a running process").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "{}: kill -TERM {pid} failed", self.label);
    }

    /// Waits for the process to exit; panics with its stderr after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit within {timeout:?}:\n{}",
                self.label,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `found` on the output (stdout, then stderr) until it returns
    /// `Some`. Panics when the process exits first or `timeout` passes,
    /// with what it printed and `what` it was waiting for.
    pub fn wait_for_output<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&str, &str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let (stdout, stderr) = (self.stdout(), self.stderr());
            if let Some(value) = found(&stdout, &stderr) {
                return value;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{}: exited ({status}) before {what}:\n{stdout}\n{stderr}",
                    self.label
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {timeout:?}:\n{stdout}\n{stderr}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An `exo start worker` process, started once its banner is out and its
/// log says `worker started`; killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    process: TestProcess,
    /// The id from the startup banner (`exo worker <id>`).
    pub worker_id: String,
}

impl WorkerProcess {
    /// Spawns `command` (an `exo start worker ...` command line) and waits
    /// up to 30 s for it to start.
    pub fn start(command: Command) -> Self {
        let mut process = TestProcess::start("the worker", command);
        let worker_id =
            process.wait_for_output(Duration::from_secs(30), "starting", |stdout, stderr| {
                let line = stdout
                    .lines()
                    .find(|line| line.starts_with("exo worker "))?;
                stderr
                    .contains("worker started")
                    .then(|| line.trim_start_matches("exo worker ").trim().to_owned())
            });
        WorkerProcess { process, worker_id }
    }

    /// What it printed on stdout.
    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    /// What it logged on stderr.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends a signal (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.process.wait(timeout)
    }
}
