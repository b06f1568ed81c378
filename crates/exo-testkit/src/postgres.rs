//! A real PostgreSQL for tests: a server started with `initdb` in a
//! temporary directory, or a unique database on a given server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use tempfile::TempDir;

use crate::process::{cleanup_after_exit, find_binary, free_port, unique_name, wait_for_port};

const INSTALL_POSTGRES: &str = "Install it with `apt-get install -y postgresql` \
    (or set EXO_TEST_POSTGRES_URL to a running server; tests then use a unique database).";

/// The directory holding `initdb`, `pg_ctl` and `psql`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("EXO_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let initdb = find_binary(
        "initdb",
        &versions.into_iter().rev().collect::<Vec<_>>(),
        INSTALL_POSTGRES,
    );
    initdb.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server in a temporary directory, stopped when dropped.
/// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    as_postgres_user: bool,
    stopped: bool,
}

impl PostgresServer {
    /// Runs `initdb` and starts the server on a free port.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("exo-pg-")
            .tempdir()
            .expect("a temporary directory for postgres");
        let as_postgres_user = running_as_root();
        if as_postgres_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir.path())
                .status();
            assert!(
                status.is_ok_and(|status| status.success()),
                "could not hand {} to the postgres user",
                dir.path().display()
            );
        }
        let mut server = PostgresServer {
            bin,
            dir,
            port: 0,
            as_postgres_user,
            stopped: true,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                server.port,
                server.dir.path().display()
            );
            let log = server.dir.path().join("postgres.log").display().to_string();
            let ok = server.try_run(
                "pg_ctl",
                &[
                    "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "30", "start",
                ],
            );
            if ok && wait_for_port(server.port, Duration::from_secs(10)) {
                server.stopped = false;
                return server;
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("postgres did not start; log:\n{last}");
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let binary = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command.args(args).stdin(Stdio::null());
        command
    }

    fn try_run(&self, program: &str, args: &[&str]) -> bool {
        self.command(program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program, args)
            .output()
            .unwrap_or_else(|error| panic!("could not run {program}: {error}. {INSTALL_POSTGRES}"));
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once.
    pub fn stop(&mut self) {
        if !self.stopped {
            let data = self.data_dir();
            self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            self.stopped = true;
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let data = self.data_dir();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        self.stopped = false;
    }

    /// The shell command that stops a server left running by a dead process.
    fn cleanup_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let data = self.data_dir();
        let stop = format!("{pg_ctl} -D {data} -m immediate stop");
        let stop = if self.as_postgres_user {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        format!("{stop}; rm -rf {}", self.dir.path().display())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server shared by every test of this process, started on first use
/// and stopped once the process has exited.
fn shared_server_url() -> &'static str {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = PostgresServer::start();
        cleanup_after_exit(&server.cleanup_command());
        let url = server.url();
        std::mem::forget(server);
        url
    })
}

/// A database of its own for one test, dropped with this value.
///
/// With `EXO_TEST_POSTGRES_URL` set, the database is created there;
/// otherwise on a server this test process starts (once) in a temporary
/// directory.
#[derive(Debug)]
pub struct TestPostgres {
    admin_url: String,
    database: String,
    url: String,
}

impl TestPostgres {
    /// A fresh, empty database.
    pub fn new() -> Self {
        let admin_url = match std::env::var("EXO_TEST_POSTGRES_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => shared_server_url().to_owned(),
        };
        let database = unique_name("exotest_");
        psql(&admin_url, &format!("CREATE DATABASE {database}"))
            .unwrap_or_else(|error| panic!("could not create test database: {error}"));
        let url = replace_database(&admin_url, &database);
        TestPostgres {
            admin_url,
            database,
            url,
        }
    }

    /// The URL of the test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL in the test's database with `psql`; returns its output.
    pub fn execute(&self, sql: &str) -> Result<String, String> {
        psql(&self.url, sql)
    }
}

impl Default for TestPostgres {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
        );
    }
}

/// `url` with its database name replaced.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let psql = find_binary("psql", &[bin_dir()], INSTALL_POSTGRES);
    let output = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            replace_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:1", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:1/db?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
    }
}
