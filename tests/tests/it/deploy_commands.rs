//! The commands the deployment files under `deploy/` run, run for real:
//! the worker commands of the Dockerfile, compose, Kubernetes and systemd
//! with the real `exo` binary against a `redis-server` started with
//! `deploy/redis.conf`; their health checks and probes against those
//! workers; SIGTERM, which must end each one cleanly; the Temporal worker and
//! the alerts CronJob, which must fail for the reason expected here (no
//! Temporal server, no Redis), never with a usage error; and every `exo`
//! command line in docs/operations.md, which must parse.
//!
//! The files themselves (their parsing, and how they agree with each other
//! and with the CLI) are checked by `cargo xtask tidy`
//! (`xtask/src/tidy/deploy.rs`).

#![allow(clippy::print_stderr)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use exo_e2e::{eventually, exo_binary};
use exo_testkit::{RedisServer, TestProcess, http_get};
use serde::Deserialize;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Files.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The one YAML document of a file, as JSON.
fn yaml_document(path: &Path) -> Value {
    let text = read(path);
    let mut documents: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{} does not parse: {error}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect();
    assert_eq!(
        documents.len(),
        1,
        "{} should hold one document",
        path.display()
    );
    documents.remove(0)
}

fn string_list(value: &Value, what: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} should be a list, not {value}"))
        .iter()
        .map(|item| match item {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            other => panic!("{what}: {other} is not a string"),
        })
        .collect()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value}"))
}

/// The exec-form (JSON) arguments of the last `keyword` instruction of
/// deploy/Dockerfile (the runtime stage's `CMD`; for `HEALTHCHECK`, its
/// `CMD [...]`). Line continuations are joined first.
fn dockerfile_exec_form(keyword: &str) -> Vec<String> {
    let text = read(&deploy_dir().join("Dockerfile")).replace("\\\n", " ");
    let arguments = text
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(keyword)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("the Dockerfile has no {keyword}"));
    let json = match arguments.split_once("CMD ") {
        Some((_, command)) if keyword == "HEALTHCHECK" => command,
        _ => arguments,
    };
    let value: Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|error| panic!("{keyword} should be exec form (JSON): {error}"));
    string_list(&value, keyword)
}

fn compose_service(name: &str) -> Value {
    yaml_document(&deploy_dir().join("docker-compose.yml"))
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose has no service {name}"))
        .clone()
}

/// A compose `environment` map, without values compose takes from the
/// shell (`${...}`).
fn compose_environment(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .filter(|(_, value)| !value.contains("${"))
        .collect()
}

/// The exec-form command of a compose healthcheck, with compose's `$$`
/// escapes undone.
fn compose_healthcheck(service: &Value) -> Vec<String> {
    let test = string_list(&service["healthcheck"]["test"], "healthcheck.test");
    assert_eq!(test[0], "CMD", "exec form: {test:?}");
    test[1..]
        .iter()
        .map(|word| word.replace("$$", "$"))
        .collect()
}

/// The values of `key=` lines in the systemd unit (its keys used here are
/// all in `[Service]`).
fn systemd_values(key: &str) -> Vec<String> {
    read(&deploy_dir().join("systemd").join("exo-worker@.service"))
        .lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim().to_owned())
        .collect()
}

/// The systemd unit's ExecStart arguments after the binary, with `%i` the
/// given instance.
fn systemd_worker_args(instance: &str) -> Vec<String> {
    let exec_start = systemd_values("ExecStart");
    assert_eq!(exec_start.len(), 1, "one ExecStart: {exec_start:?}");
    let words = shlex::split(&exec_start[0]).expect("ExecStart is a command line");
    words[1..]
        .iter()
        .map(|word| word.replace("%i", instance))
        .collect()
}

// ---------------------------------------------------------------------------
// Command lines.

/// The value of `--flag VALUE` in a command line.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|arg| arg == flag)
        .map(|index| args.get(index + 1).expect("a flag value").as_str())
}

/// The port of `--metrics-addr HOST:PORT`.
fn metrics_port(args: &[String]) -> u16 {
    let address = flag_value(args, "--metrics-addr").expect("--metrics-addr is set");
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("--metrics-addr {address} has no port"))
}

fn exo_help(args: &[&str]) -> String {
    let output = Command::new(exo_binary())
        .args(args)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run exo --help");
    assert!(
        output.status.success(),
        "exo {args:?} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `--drain-timeout` default of `exo start worker`, in seconds.
fn default_drain_timeout() -> u64 {
    let help = exo_help(&["start", "worker"]);
    // The option's entry: its line and, when clap puts the help below the
    // flag, the lines up to the next flag.
    let entry: String = help
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("--drain-timeout"))
        .enumerate()
        .take_while(|(index, line)| *index == 0 || !line.trim_start().starts_with('-'))
        .map(|(_, line)| line)
        .collect();
    assert!(!entry.is_empty(), "exo start worker has --drain-timeout");
    let default = entry
        .split("[default: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("--drain-timeout shows its default");
    default.parse().expect("the default is whole seconds")
}

/// `--drain-timeout` of a worker command line, or exo's default.
fn drain_timeout(args: &[String]) -> u64 {
    flag_value(args, "--drain-timeout")
        .map(|value| value.parse().expect("--drain-timeout is whole seconds"))
        .unwrap_or_else(default_drain_timeout)
}

/// Once the drain timeout is over the worker stops the remaining tasks,
/// hands them back to the queue and removes its heartbeat; every stop
/// budget leaves it at least this long for that.
const HAND_BACK_MARGIN: u64 = 5;

// ---------------------------------------------------------------------------
// Running the commands.

/// `redis-cli CONFIG GET parameter`: the value.
fn config_get(redis: &RedisServer, parameter: &str) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "config", "get", parameter])
        .output()
        .expect("run redis-cli (apt-get install -y redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().nth(1).unwrap_or_default().to_owned()
}

/// `exo <args>` as a process with only the given environment (plus PATH
/// and the like; no EXO_*, TEMPORAL_* or OTEL_* from the test's own),
/// killed when dropped.
fn start_exo(label: &str, args: &[String], environment: &[(String, String)]) -> TestProcess {
    let mut command = Command::new(exo_binary());
    for (name, _) in std::env::vars() {
        if ["EXO_", "TEMPORAL_", "OTEL_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null());
    TestProcess::start(label, command)
}

/// The port from a worker's banner line `metrics: http://HOST:PORT/metrics`.
fn banner_metrics_port(worker: &mut TestProcess) -> u16 {
    worker.wait_for_output(
        Duration::from_secs(30),
        "metrics address in the banner",
        |stdout, stderr| {
            let output = format!("{stdout}{stderr}");
            let line = output
                .lines()
                .find(|line| line.trim_start().starts_with("metrics:"))?;
            let address = line
                .split("http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .expect("an address in the banner");
            let (_, port) = address.rsplit_once(':').expect("a port");
            Some(port.parse().expect("a port number"))
        },
    )
}

/// free port, read back from the banner).
fn with_ephemeral_metrics_port(args: &[String]) -> Vec<String> {
    let index = args
        .iter()
        .position(|arg| arg == "--metrics-addr")
        .expect("--metrics-addr")
        + 1;
    let mut args = args.to_vec();
    let (host, _) = args[index].rsplit_once(':').expect("HOST:PORT");
    args[index] = format!("{host}:0");
    args
}

/// How a deployment checks a worker's health.
enum Probe {
    /// An exec-form command (Docker and compose health checks) that talks to
    /// the given port.
    Command(Vec<String>, u16),
    /// HTTP paths that must answer 200 (Kubernetes probes).
    Paths(Vec<String>),
}

/// Runs a worker command line as the deployment would, checks its probes
/// answer, then stops it with SIGTERM as the deployment would.
fn run_worker(
    redis: &RedisServer,
    label: &str,
    args: &[String],
    environment: &[(String, String)],
    probe: Probe,
) {
    let mut environment = environment.to_vec();
    environment.retain(|(name, _)| name != "EXO_REDIS_URL");
    environment.push(("EXO_REDIS_URL".into(), redis.url()));
    let mut worker = start_exo(label, &with_ephemeral_metrics_port(args), &environment);
    let port = banner_metrics_port(&mut worker);
    let banner = worker.output();
    if let Some(concurrency) = flag_value(args, "--concurrency") {
        assert!(
            banner.contains(&format!("concurrency: {concurrency}")),
            "{label}: {banner}"
        );
    }

    let (status, body) = http_get(port, "/healthz").expect("GET /healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "{label}: /healthz");
    eventually(Duration::from_secs(15), "/readyz to answer 200", || {
        (http_get(port, "/readyz").ok()?.0 == 200).then_some(())
    });
    match probe {
        Probe::Command(command, probed_port) => {
            let script: Vec<String> = command
                .iter()
                .map(|word| {
                    word.replace(
                        &format!("/dev/tcp/127.0.0.1/{probed_port}"),
                        &format!("/dev/tcp/127.0.0.1/{port}"),
                    )
                })
                .collect();
            let status = Command::new(&script[0])
                .args(&script[1..])
                .status()
                .expect("run the health check");
            assert!(
                status.success(),
                "{label}: the health check failed ({status})"
            );
        }
        Probe::Paths(paths) => {
            for path in paths {
                let (status, _) = http_get(port, &path).expect("GET a probe path");
                assert_eq!(status, 200, "{label}: probe {path}");
            }
        }
    }

    worker.terminate();
    let status = worker.wait(Duration::from_secs(drain_timeout(args) + HAND_BACK_MARGIN));
    assert!(
        status.success(),
        "{label}: SIGTERM should end the worker cleanly ({status}):\n{}",
        worker.output()
    );
    assert!(
        worker.output().contains("worker stopped"),
        "{label}: {}",
        worker.output()
    );
}

#[test]
fn every_worker_command_runs_on_redis_conf_and_answers_its_health_checks() {
    let redis = RedisServer::start_with_config(&deploy_dir().join("redis.conf"));
    for (parameter, expected) in [
        ("maxmemory", "1073741824"),
        ("maxmemory-policy", "noeviction"),
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("timeout", "0"),
        ("tcp-keepalive", "300"),
    ] {
        assert_eq!(
            config_get(&redis, parameter),
            expected,
            "redis.conf {parameter}"
        );
    }

    // The image's default command, probed by its HEALTHCHECK.
    let command = dockerfile_exec_form("CMD");
    run_worker(
        &redis,
        "Dockerfile CMD",
        &command,
        &[],
        Probe::Command(dockerfile_exec_form("HEALTHCHECK"), metrics_port(&command)),
    );

    // The compose worker, with its environment, probed by its healthcheck.
    let service = compose_service("worker");
    let command = string_list(&service["command"], "command");
    run_worker(
        &redis,
        "compose worker",
        &command,
        &compose_environment(&service),
        Probe::Command(compose_healthcheck(&service), metrics_port(&command)),
    );

    // The Kubernetes container, probed on its probes' paths.
    let deployment = yaml_document(&kubernetes_dir().join("base").join("deployment.yaml"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let environment: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|entry| {
            (
                str_at(entry, "/name").to_owned(),
                str_at(entry, "/value").to_owned(),
            )
        })
        .collect();
    run_worker(
        &redis,
        "Kubernetes Deployment",
        &string_list(&container["args"], "args"),
        &environment,
        Probe::Paths(vec![
            str_at(container, "/livenessProbe/httpGet/path").to_owned(),
            str_at(container, "/readinessProbe/httpGet/path").to_owned(),
        ]),
    );

    // The systemd unit's ExecStart (instance 0: a free port).
    let environment: Vec<(String, String)> = systemd_values("Environment")
        .into_iter()
        .map(|assignment| {
            let (name, value) = assignment.split_once('=').expect("NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    run_worker(
        &redis,
        "systemd ExecStart",
        &systemd_worker_args("0"),
        &environment,
        Probe::Paths(vec!["/healthz".to_owned()]),
    );
}

#[test]
fn temporal_worker_command_gets_past_its_flags_and_redis() {
    // With Redis up and no Temporal server, the compose Temporal worker
    // connects to Redis and then fails on Temporal (status 1), never with a
    // usage error.
    let redis = RedisServer::start_with_config(&deploy_dir().join("redis.conf"));
    let service = compose_service("temporal-worker");
    let command = string_list(&service["command"], "command");
    let mut environment = compose_environment(&service);
    environment.retain(|(name, _)| name != "EXO_REDIS_URL" && name != "TEMPORAL_HOST");
    environment.push(("EXO_REDIS_URL".into(), redis.url()));
    let closed_port = exo_testkit::free_port();
    environment.push(("TEMPORAL_HOST".into(), format!("127.0.0.1:{closed_port}")));
    let mut worker = start_exo(
        "compose temporal-worker",
        &with_ephemeral_metrics_port(&command),
        &environment,
    );
    let status = worker.wait(Duration::from_secs(60));
    let output = worker.output();
    assert!(!output.contains("Usage:"), "a usage error: {output}");
    if output.contains("needs exo built with the `temporal` feature") {
        // A binary built without the feature refuses temporal mode after
        // parsing the flags and before connecting. CI builds it with
        // --all-features and takes the other branch.
        assert_eq!(status.code(), Some(2), "{output}");
        eprintln!(
            "{} lacks the temporal feature: the Temporal worker's flags were checked, \
             its connection to Redis was not (cargo build -p exo-cli --features temporal)",
            exo_binary().display()
        );
    } else {
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(output.contains("executor:    temporal"), "{output}");
        let host = format!("127.0.0.1:{closed_port}");
        assert!(
            output
                .lines()
                .any(|line| line.starts_with("error:") && line.contains(&host)),
            "the error names TEMPORAL_HOST: {output}"
        );
    }
}

#[test]
fn alerts_cronjob_command_reports_an_unreachable_redis_with_status_3() {
    let cron = yaml_document(&kubernetes_dir().join("base").join("alerts-cronjob.yaml"));
    let args = string_list(
        &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"],
        "args",
    );
    let closed_port = exo_testkit::free_port();
    let mut check = start_exo(
        "alerts CronJob",
        &args,
        &[(
            "EXO_REDIS_URL".into(),
            format!("redis://127.0.0.1:{closed_port}"),
        )],
    );
    let status = check.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", check.output());
}

// ---------------------------------------------------------------------------
// The operations guide.

#[test]
fn operations_guide_covers_every_file_and_its_exo_commands_parse() {
    let guide = read(&repo_root().join("docs").join("operations.md"));
    for path in [
        "deploy/Dockerfile",
        ".dockerignore",
        "deploy/docker-compose.yml",
        "deploy/redis.conf",
        "deploy/systemd/exo-worker@.service",
        "deploy/kubernetes/base/deployment.yaml",
        "deploy/kubernetes/keda/scaledobject.yaml",
        "deploy/kubernetes/secret.example.yaml",
        "deploy/prometheus/exo-alerts.yml",
        "tests/tests/it/deploy_commands.rs",
        "xtask/src/tidy/deploy.rs",
    ] {
        assert!(
            guide.contains(path),
            "docs/operations.md never mentions {path}"
        );
        assert!(repo_root().join(path).exists(), "{path} does not exist");
    }

    let mut in_shell_block = false;
    let mut checked = 0;
    for line in guide.lines() {
        let trimmed = line.trim();
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_shell_block = !in_shell_block && matches!(fence, "bash" | "sh" | "shell");
            continue;
        }
        if !in_shell_block {
            continue;
        }
        let code = trimmed.split(" #").next().unwrap_or_default();
        let words = shlex::split(code)
            .unwrap_or_else(|| panic!("docs/operations.md: `{code}` is not a shell command line"));
        // Skip leading NAME=value assignments.
        let words: Vec<String> = words
            .into_iter()
            .skip_while(|word| {
                word.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                })
            })
            .collect();
        if words.first().map(String::as_str) != Some("exo") {
            continue;
        }
        let output = Command::new(exo_binary())
            .args(&words[1..])
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .expect("run exo");
        assert!(
            output.status.success(),
            "docs/operations.md: `{code}` does not parse: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} exo command lines found");
}
