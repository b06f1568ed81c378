//! `cargo xtask e2e --docker`: the suite's Redis from the official `redis`
//! image instead of a local `redis-server`, and the deployment's compose
//! file brought up for a smoke test.
//!
//! What runs in Docker: the standalone server the suite's standalone shape
//! and the worker-process tests use (a `redis` container publishing its
//! port on 127.0.0.1), and `deploy/docker-compose.yml` (Redis and two exo
//! workers built from `deploy/Dockerfile`), checked with `exo queue stats`
//! and `exo worker list` inside a worker container. The Sentinel, Cluster,
//! ACL and TLS shapes stay local processes: their tests kill, freeze and
//! restart servers by process id, which a container does not receive.
//! Every container, network and volume started here carries the run's
//! name and is removed at the end, failed or not.
//!
//! Without an engine (`docker info` fails) it says so in one line and
//! fails; the default `cargo xtask e2e` never needs Docker.

use std::process::Command;

use anyhow::{Result, bail};

/// The image of the Redis container.
pub(crate) const REDIS_IMAGE: &str = "redis:7-alpine";

/// One `--docker` run: its name, which every container and the compose
/// project carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerRun {
    pub(crate) name: String,
}

impl DockerRun {
    /// A run named after this process.
    pub(crate) fn new() -> Self {
        DockerRun {
            name: format!("exo-e2e-{}", std::process::id()),
        }
    }

    /// The Redis container's name.
    pub(crate) fn redis_container(&self) -> String {
        format!("{}-redis", self.name)
    }

    /// `docker run` of the standalone Redis: detached, removed when it
    /// stops, its port published on a free loopback port, no persistence.
    pub(crate) fn redis_run(&self) -> Vec<String> {
        strings(&[
            "run",
            "--detach",
            "--rm",
            "--name",
            &self.redis_container(),
            "--label",
            &format!("exo-e2e={}", self.name),
            "--publish",
            "127.0.0.1::6379",
            REDIS_IMAGE,
            "redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
    }

    /// `docker port`: the host address the Redis port is published on.
    pub(crate) fn redis_port(&self) -> Vec<String> {
        strings(&["port", &self.redis_container(), "6379/tcp"])
    }

    /// `docker rm --force` of the Redis container.
    pub(crate) fn redis_remove(&self) -> Vec<String> {
        strings(&["rm", "--force", &self.redis_container()])
    }

    /// The compose commands of the deployment smoke test, in order: build
    /// and start (waiting for health), then `exo` inside a worker.
    pub(crate) fn compose_smoke(&self, compose_file: &str) -> Vec<Vec<String>> {
        let compose = |rest: &[&str]| {
            let mut command = strings(&["compose", "-f", compose_file, "-p", &self.name]);
            command.extend(strings(rest));
            command
        };
        vec![
            compose(&["up", "--detach", "--build", "--wait"]),
            compose(&["exec", "-T", "worker", "exo", "queue", "stats"]),
            compose(&["exec", "-T", "worker", "exo", "worker", "list"]),
        ]
    }

    /// `docker compose down`, with the project's volumes.
    pub(crate) fn compose_down(&self, compose_file: &str) -> Vec<String> {
        strings(&[
            "compose",
            "-f",
            compose_file,
            "-p",
            &self.name,
            "down",
            "--volumes",
            "--remove-orphans",
        ])
    }
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

/// Whether a Docker engine answers `docker info`; the one-line reason
/// when none does.
pub(crate) fn engine(docker: &str) -> Result<(), String> {
    let output = Command::new(docker)
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match output {
        Err(error) => Err(no_engine(&format!("`{docker}` cannot be run: {error}"))),
        Ok(output) if output.status.success() && !output.stdout.trim_ascii().is_empty() => Ok(()),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .unwrap_or("no server version");
            Err(no_engine(&format!("`{docker} info`: {reason}")))
        }
    }
}

/// The one line printed when no engine answers.
pub(crate) fn no_engine(reason: &str) -> String {
    format!(
        "cargo xtask e2e --docker: no Docker engine answers ({reason}); start one, or run `cargo xtask e2e` to use the local redis-server"
    )
}

/// Runs `docker <args>`; its stdout on success.
pub(crate) fn docker(args: &[String]) -> Result<String> {
    eprintln!("==> docker {}", args.join(" "));
    let output = Command::new("docker").args(args).output()?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `127.0.0.1:49153` (what `docker port` prints) as a Redis URL.
pub(crate) fn redis_url(published: &str) -> Option<String> {
    let line = published
        .lines()
        .find(|line| line.starts_with("127.0.0.1:"))?;
    let port: u16 = line.rsplit(':').next()?.trim().parse().ok()?;
    Some(format!("redis://127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_command_lines() {
        let run = DockerRun {
            name: "exo-e2e-42".into(),
        };
        assert_eq!(
            run.redis_run().join(" "),
            "run --detach --rm --name exo-e2e-42-redis --label exo-e2e=exo-e2e-42 --publish 127.0.0.1::6379 redis:7-alpine redis-server --save  --appendonly no"
        );
        assert_eq!(run.redis_run()[12], "", "`--save \"\"` turns snapshots off");
        assert_eq!(run.redis_port().join(" "), "port exo-e2e-42-redis 6379/tcp");
        assert_eq!(run.redis_remove().join(" "), "rm --force exo-e2e-42-redis");
        let smoke: Vec<String> = run
            .compose_smoke("deploy/docker-compose.yml")
            .iter()
            .map(|command| command.join(" "))
            .collect();
        assert_eq!(
            smoke,
            [
                "compose -f deploy/docker-compose.yml -p exo-e2e-42 up --detach --build --wait",
                "compose -f deploy/docker-compose.yml -p exo-e2e-42 exec -T worker exo queue stats",
                "compose -f deploy/docker-compose.yml -p exo-e2e-42 exec -T worker exo worker list",
            ]
        );
        assert_eq!(
            run.compose_down("deploy/docker-compose.yml").join(" "),
            "compose -f deploy/docker-compose.yml -p exo-e2e-42 down --volumes --remove-orphans"
        );
    }

    #[test]
    fn published_ports_become_urls() {
        assert_eq!(
            redis_url("127.0.0.1:49153\n").as_deref(),
            Some("redis://127.0.0.1:49153")
        );
        assert_eq!(redis_url("[::1]:49153"), None);
        assert_eq!(redis_url(""), None);
    }

    #[test]
    fn without_an_engine_it_says_so_in_one_line() {
        // A program that exists and fails, as `docker info` does when the
        // daemon is down; and one that does not exist.
        for program in ["false", "/nonexistent/docker"] {
            let message = engine(program).unwrap_err();
            assert!(message.starts_with("cargo xtask e2e --docker: no Docker engine answers ("));
            assert!(message.contains("`cargo xtask e2e`"), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
        let message = no_engine(
            "`docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
        );
        assert_eq!(
            message,
            "cargo xtask e2e --docker: no Docker engine answers (`docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?); start one, or run `cargo xtask e2e` to use the local redis-server"
        );
    }
}
