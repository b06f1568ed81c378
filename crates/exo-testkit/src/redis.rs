//! A real `redis-server` per test, or a unique prefix on a given server.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::process::{find_binary, free_port, unique_name, wait_for_port};

const INSTALL_REDIS: &str = "Install it with `apt-get install -y redis-server` \
    (or set EXO_TEST_REDIS_URL to a running Redis; tests then use a unique key prefix).";

/// A `redis-server` process on a free loopback port, in a temporary
/// directory. It is killed when dropped. Fault tests can stop, kill and
/// restart it on the same port.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    extra_args: Vec<String>,
    config_file: Option<PathBuf>,
    tls: bool,
    /// A command the server runs under (a profiler), or empty.
    wrapper: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g.
    /// `["--appendonly", "yes"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_configured(None, extra_args, false)
    }

    /// Starts a server with a configuration file (a deployment's
    /// `redis.conf`). Only the port, the bind address, the directory and the
    /// log file are set on the command line; persistence and every other
    /// setting are the file's.
    pub fn start_with_config(config_file: &Path) -> Self {
        Self::start_configured(Some(config_file), &[], false)
    }

    /// Starts a server that listens only with TLS on its port (the extra
    /// arguments carry the certificate settings).
    pub fn start_tls(extra_args: &[&str]) -> Self {
        Self::start_configured(None, extra_args, true)
    }

    /// Starts a server with no persistence under `wrapper`, a command that
    /// runs the server as its last argument (`valgrind --tool=callgrind`,
    /// say). A slow wrapper is given 60 s to listen.
    pub fn start_under(wrapper: &[&str]) -> Self {
        Self::start_configured_under(None, &[], false, wrapper)
    }

    fn start_configured(config_file: Option<&Path>, extra_args: &[&str], tls: bool) -> Self {
        Self::start_configured_under(config_file, extra_args, tls, &[])
    }

    fn start_configured_under(
        config_file: Option<&Path>,
        extra_args: &[&str],
        tls: bool,
        wrapper: &[&str],
    ) -> Self {
        let binary = find_binary("redis-server", &[], INSTALL_REDIS);
        let mut dir = tempfile::Builder::new()
            .prefix("exo-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                binary: binary.clone(),
                port: free_port(),
                dir,
                extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
                config_file: config_file.map(Path::to_path_buf),
                tls,
                wrapper: wrapper.iter().map(|arg| (*arg).to_owned()).collect(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(error) => {
                    last_error = error;
                    dir = server.into_dir();
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn into_dir(mut self) -> TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("a temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        // redis-server reads a configuration file only as its first argument.
        if let Some(config_file) = &self.config_file {
            command.arg(config_file);
        }
        if self.tls {
            command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string());
        } else {
            command.arg("--port").arg(self.port.to_string());
        }
        command.args(["--bind", "127.0.0.1", "--daemonize", "no"]);
        if self.config_file.is_none() {
            command.args(["--save", ""]);
        }
        command
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.config_file.is_none() && !self.extra_args.iter().any(|arg| arg == "--appendonly") {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().map_err(|error| format!("spawn: {error}"))?;
        self.child = Some(child);
        let listen_within = if self.wrapper.is_empty() { 10 } else { 60 };
        if wait_for_port(self.port, Duration::from_secs(listen_within)) {
            // Another process may hold the port; ours then exits at once.
            std::thread::sleep(Duration::from_millis(20));
            if self.exited().is_none() {
                return Ok(());
            }
        }
        let exited = self.exited();
        self.kill();
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("exit {exited:?}; log:\n{log_text}"))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..500 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open and the kernel
    /// keeps accepting bytes, but nothing is answered (a stall: a slow
    /// fsync, a VM pause). [`RedisServer::thaw`] resumes it.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let mut last_error = String::new();
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Sends one command and returns the first line of the reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        redis_command(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// Sends one command to `127.0.0.1:{port}` and returns the first line of the
/// reply (`+PONG`, `:1`, `$5`, ...). Enough for harness checks without a
/// client library.
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// A Redis for one test: its URL and a key prefix no other test uses.
///
/// With `EXO_TEST_REDIS_URL` set it shares that server; otherwise it starts
/// its own `redis-server`, which stops when this value is dropped.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// A Redis and a unique prefix.
    pub fn new() -> Self {
        let prefix = format!("{}:", unique_name("exotest"));
        match std::env::var("EXO_TEST_REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => TestRedis {
                url,
                prefix,
                server: None,
            },
            _ => Self::dedicated_with_prefix(prefix),
        }
    }

    /// Always a server of its own (for fault tests and for tests of the
    /// default key names).
    pub fn dedicated() -> Self {
        Self::dedicated_with_prefix("exo:".to_owned())
    }

    fn dedicated_with_prefix(prefix: String) -> Self {
        let server = RedisServer::start();
        TestRedis {
            url: server.url(),
            prefix,
            server: Some(server),
        }
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test's key prefix (ends with `:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The test's queue name, `{prefix}tasks`.
    pub fn queue(&self) -> String {
        format!("{}tasks", self.prefix)
    }

    /// The server, when this test owns one.
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}
