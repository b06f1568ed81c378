//! The deployment files under `deploy/` and the guide that explains them.
//!
//! No container engine or cluster runs here, so these tests check what can
//! be checked without one, against the real things wherever there is one:
//!
//! - every YAML file parses (Kubernetes files as multi-document streams);
//! - the worker commands of the Dockerfile, compose, Kubernetes and systemd
//!   run with the real `exo` binary against a `redis-server` started with
//!   `deploy/redis.conf`; their health checks and probes are run against
//!   those workers, and SIGTERM must end each one cleanly;
//! - the Temporal worker and the alerts CronJob commands are run too, and
//!   must fail for the reason expected here (no Temporal server, no Redis),
//!   never with a usage error;
//! - ports, users, stream and group names, and stop budgets agree across the
//!   files and with `exo --help` (the drain timeout's default is read there);
//! - environment variables set in the files are ones exo reads;
//! - the Dockerfile's `cargo build` line is one that `cargo tree` accepts
//!   with the same package, features and `--locked` (building a release
//!   binary here would only prove that cargo works), its COPY lines cover
//!   every workspace member, and `.dockerignore` excludes none of them;
//! - `systemd-analyze verify` accepts the unit, and `kubectl kustomize`
//!   renders both kustomizations, where those commands exist;
//! - every `exo` command line in docs/operations.md parses.

#![allow(clippy::print_stderr)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use exo_e2e::{eventually, exo_binary};
use exo_proto::Keys;
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every document of a YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{} does not parse: {error}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn yaml_document(path: &Path) -> Value {
    let mut documents = yaml_documents(path);
    assert_eq!(
        documents.len(),
        1,
        "{} should hold one document",
        path.display()
    );
    documents.remove(0)
}

fn files_with_extension(dir: &Path, extensions: &[&str], found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_with_extension(&path, extensions, found);
        } else if path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| extensions.contains(&extension))
        {
            found.push(path);
        }
    }
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

fn int_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {value}"))
}

// ---------------------------------------------------------------------------
// What the `exo` binary says about itself.

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

/// The environment variables the CLI reads (`[env: NAME]` in its help).
fn cli_env_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for args in [
        &[][..],
        &["start", "worker"][..],
        &["alerts", "check"][..],
        &["task", "submit"][..],
    ] {
        for piece in exo_help(args).split("[env: ").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Every string literal in exo's library and binary sources that looks
/// like an environment variable name. This is how exo-models (provider
/// keys), exo-temporal (TEMPORAL_HOST, ...) and exo-observability (OTEL_*)
/// name the variables they read.
fn names_in_sources() -> BTreeSet<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("crates")).expect("crates/") {
        let source = entry.expect("a crate").path().join("src");
        if source.is_dir() {
            files_with_extension(&source, &["rs"], &mut files);
        }
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = read(&file);
        // Each `"NAME"`: a quote, an upper-case name, a quote.
        for (start, _) in text.match_indices('"') {
            let name: String = text[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let closed = text[start + 1 + name.len()..].starts_with('"');
            if closed && name.len() > 2 && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                names.insert(name);
            }
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Command lines.

/// Splits a command line as `sh` would, expanding `$NAME` and `${NAME}`
/// from `variables` outside single quotes. Enough for the lines in these
/// files; no globbing, no command substitution.
fn shell_words(line: &str, variables: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, word: &mut String| {
        let name: String = if chars.peek() == Some(&'{') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '}').collect()
        } else {
            let mut name = String::new();
            while let Some(c) = chars.peek().copied() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            name
        };
        if name.is_empty() {
            word.push('$');
        } else {
            word.push_str(variables.get(&name).map(String::as_str).unwrap_or(""));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|c| *c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(next) = chars.next() {
                                if !matches!(next, '"' | '\\' | '$') {
                                    word.push('\\');
                                }
                                word.push(next);
                            }
                        }
                        '$' => expand(&mut chars, &mut word),
                        other => word.push(other),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut word);
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

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

fn assert_stop_budget(what: &str, budget: u64, before_sigterm: u64, args: &[String]) {
    let drain = drain_timeout(args);
    assert!(
        budget >= before_sigterm + drain + HAND_BACK_MARGIN,
        "{what} is {budget} s: it must cover {before_sigterm} s before SIGTERM, the {drain} s \
         drain timeout and {HAND_BACK_MARGIN} s to hand tasks back"
    );
}

/// `40s`, `1m30s`, `90` (seconds).
fn duration_seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
        number.clear();
        total += match c {
            's' => value,
            'm' => value * 60,
            'h' => value * 3600,
            _ => panic!("duration {text}: unknown unit {c}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<u64>().expect("seconds");
    }
    total
}

// ---------------------------------------------------------------------------
// The Dockerfile.

#[derive(Debug)]
struct Instruction {
    /// 0 before the first FROM, then 1, 2, ...
    stage: usize,
    keyword: String,
    arguments: String,
}

fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, arguments) = full.split_once(' ').unwrap_or((&full, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        instructions.push(Instruction {
            stage,
            keyword,
            arguments: arguments.trim().to_owned(),
        });
    }
    instructions
}

struct Dockerfile {
    instructions: Vec<Instruction>,
}

impl Dockerfile {
    fn load() -> Self {
        Dockerfile {
            instructions: dockerfile_instructions(&read(&deploy_dir().join("Dockerfile"))),
        }
    }

    fn in_stage(&self, stage: usize, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|instruction| instruction.stage == stage && instruction.keyword == keyword)
            .map(|instruction| instruction.arguments.as_str())
            .collect()
    }

    fn only(&self, stage: usize, keyword: &str) -> &str {
        let found = self.in_stage(stage, keyword);
        assert_eq!(found.len(), 1, "stage {stage} should have one {keyword}");
        found[0]
    }

    /// The ARG defaults visible in a stage (global ones and its own).
    fn args(&self, stage: usize) -> BTreeMap<String, String> {
        let mut args = BTreeMap::new();
        for scope in [0, stage] {
            for argument in self.in_stage(scope, "ARG") {
                let (name, default) = argument.split_once('=').unwrap_or((argument, ""));
                args.insert(name.to_owned(), default.to_owned());
            }
        }
        args
    }

    fn json(&self, stage: usize, keyword: &str) -> Vec<String> {
        let arguments = self.only(stage, keyword);
        let value: Value = serde_json::from_str(arguments)
            .unwrap_or_else(|error| panic!("{keyword} should be exec form (JSON): {error}"));
        string_list(&value, keyword)
    }

    /// The words of every `cmd && cmd` piece of every RUN of a stage, with
    /// `RUN --mount=...` options removed and variables expanded.
    fn run_commands(&self, stage: usize, variables: &BTreeMap<String, String>) -> Vec<Vec<String>> {
        let mut commands = Vec::new();
        for run in self.in_stage(stage, "RUN") {
            let words: Vec<String> = shell_words(run, variables)
                .into_iter()
                .skip_while(|word| word.starts_with("--"))
                .collect();
            for command in words.split(|word| word == "&&") {
                commands.push(command.to_vec());
            }
        }
        commands
    }

    /// The HEALTHCHECK's exec-form command.
    fn healthcheck(&self, stage: usize) -> Vec<String> {
        let arguments = self.only(stage, "HEALTHCHECK");
        let (_, command) = arguments
            .split_once("CMD ")
            .expect("HEALTHCHECK ... CMD [...]");
        let value: Value = serde_json::from_str(command).expect("HEALTHCHECK CMD in exec form");
        string_list(&value, "HEALTHCHECK CMD")
    }
}

/// The uid of `USER uid:gid` in the runtime stage.
fn dockerfile_uid(dockerfile: &Dockerfile) -> u64 {
    let user = dockerfile.only(2, "USER");
    user.split(':')
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} should be numeric (Kubernetes runAsNonRoot)"))
}

fn rust_toolchain_channel() -> String {
    read(&repo_root().join("rust-toolchain.toml"))
        .lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|channel| channel.trim_matches('"').to_owned())
        .expect("rust-toolchain.toml names a channel")
}

#[test]
fn dockerfile_builds_exo_on_the_pinned_toolchain_and_runs_it_unprivileged() {
    let dockerfile = Dockerfile::load();
    assert_eq!(dockerfile.in_stage(1, "FROM").len(), 1);
    assert_eq!(dockerfile.in_stage(2, "FROM").len(), 1);
    assert!(
        dockerfile.in_stage(3, "FROM").is_empty(),
        "two stages: builder and runtime"
    );

    // Builder: the official Rust image, at the toolchain's exact version.
    let from = shell_words(dockerfile.only(1, "FROM"), &dockerfile.args(0));
    assert_eq!(from.len(), 3, "FROM image AS builder: {from:?}");
    assert_eq!(&from[1..], ["AS", "builder"]);
    let channel = rust_toolchain_channel();
    assert_eq!(
        from[0],
        format!("rust:{channel}-bookworm"),
        "the builder's tag must equal rust-toolchain.toml's channel"
    );

    // Runtime: Debian slim with CA certificates, exo in /usr/local/bin.
    assert_eq!(
        dockerfile.only(2, "FROM"),
        "debian:bookworm-slim AS runtime"
    );
    let runtime_commands = dockerfile.run_commands(2, &BTreeMap::new());
    assert!(
        runtime_commands.iter().any(|command| command
            .starts_with(&["apt-get".into(), "install".into()])
            && command.iter().any(|word| word == "ca-certificates")),
        "the runtime stage installs ca-certificates: {runtime_commands:?}"
    );
    assert_eq!(
        dockerfile.only(2, "COPY"),
        "--from=builder /usr/local/bin/exo /usr/local/bin/exo"
    );

    // A non-root user named exo, with the numeric id USER names.
    let uid = dockerfile_uid(&dockerfile);
    assert_ne!(uid, 0, "the image must not run as root");
    let useradd = runtime_commands
        .iter()
        .find(|command| command.first().is_some_and(|word| word == "useradd"))
        .expect("the runtime stage creates a user");
    assert_eq!(useradd.last().map(String::as_str), Some("exo"));
    assert_eq!(
        flag_value(useradd, "--uid"),
        Some(uid.to_string().as_str()),
        "USER names the uid useradd gave exo"
    );

    // The command: a worker serving its endpoints on the exposed port.
    assert_eq!(dockerfile.json(2, "ENTRYPOINT"), ["exo"]);
    let command = dockerfile.json(2, "CMD");
    assert_eq!(&command[..2], ["start", "worker"]);
    let port = metrics_port(&command);
    assert_eq!(dockerfile.only(2, "EXPOSE"), port.to_string());
    assert_eq!(dockerfile.only(2, "STOPSIGNAL"), "SIGTERM");
    let healthcheck = dockerfile.healthcheck(2);
    assert_eq!(&healthcheck[..2], ["bash", "-c"]);
    assert!(healthcheck[2].contains(&format!("/dev/tcp/127.0.0.1/{port}")));
    assert!(healthcheck[2].contains("GET /healthz "));
}

#[test]
fn dockerfile_cargo_build_agrees_with_the_workspace_and_the_lock_file() {
    let dockerfile = Dockerfile::load();
    let args = dockerfile.args(1);
    assert!(
        args.get("EXO_FEATURES")
            .is_some_and(|features| features.contains("temporal")),
        "EXO_FEATURES defaults to a build with temporal: {args:?}"
    );
    // The default build and the documented build without Temporal.
    for features in [args["EXO_FEATURES"].clone(), String::new()] {
        let mut variables = args.clone();
        variables.insert("EXO_FEATURES".into(), features.clone());
        let commands = dockerfile.run_commands(1, &variables);
        let build = commands
            .iter()
            .find(|command| command.starts_with(&["cargo".into(), "build".into()]))
            .expect("the builder runs cargo build");
        for required in ["--release", "--locked"] {
            assert!(
                build.contains(&required.to_owned()),
                "{required} in {build:?}"
            );
        }
        assert_eq!(flag_value(build, "-p"), Some("exo-cli"));
        // `cargo tree` resolves exactly what `cargo build` would: the
        // package, its features and, with --locked, Cargo.lock unchanged.
        let mut tree: Vec<String> = build[2..]
            .iter()
            .filter(|word| *word != "--release")
            .cloned()
            .collect();
        tree.splice(0..0, ["tree".to_owned()]);
        tree.extend(["-e", "normal", "--depth", "0"].map(String::from));
        let output = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(&tree)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("run cargo tree");
        assert!(
            output.status.success(),
            "cargo {tree:?} (the Dockerfile's build with EXO_FEATURES={features:?}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("exo-cli v"));
        // The binary the runtime stage copies is the one this build makes.
        assert!(
            commands
                .iter()
                .any(|command| command.first().is_some_and(|w| w == "install")
                    && command.ends_with(&[
                        "target/release/exo".to_owned(),
                        "/usr/local/bin/exo".to_owned()
                    ])),
            "the builder installs target/release/exo as /usr/local/bin/exo: {commands:?}"
        );
    }
}

#[test]
fn dockerfile_copies_every_workspace_member_and_dockerignore_keeps_them() {
    let dockerfile = Dockerfile::load();
    let mut sources = Vec::new();
    for copy in dockerfile.in_stage(1, "COPY") {
        let words = shell_words(copy, &BTreeMap::new());
        assert!(
            !words[0].starts_with("--"),
            "the builder copies from the context"
        );
        sources.extend(words[..words.len() - 1].iter().cloned());
    }
    for source in &sources {
        assert!(
            repo_root().join(source).exists(),
            "COPY {source}: no such path"
        );
    }

    // Every workspace member lies under a copied directory.
    let output = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success());
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let root = repo_root();
    for package in metadata["packages"].as_array().expect("packages") {
        let manifest = PathBuf::from(str_at(package, "/manifest_path"));
        let relative = manifest
            .strip_prefix(&root)
            .expect("a member of this workspace");
        assert!(
            sources
                .iter()
                .any(|source| relative.starts_with(source) || relative == Path::new(source)),
            "{} is not copied into the builder (COPY sources: {sources:?})",
            relative.display()
        );
    }
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        assert!(sources.iter().any(|source| source == file), "COPY {file}");
    }

    // .dockerignore: plain paths, none of them covering a COPY source.
    let ignored: Vec<String> = read(&root.join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_end_matches('/').to_owned())
        .collect();
    for pattern in &ignored {
        assert!(
            !pattern.contains(['*', '?', '[', '!']),
            ".dockerignore should list plain paths, not {pattern}"
        );
    }
    for must in ["target", ".git"] {
        assert!(
            ignored.iter().any(|pattern| pattern == must),
            ".dockerignore excludes {must}"
        );
    }
    for source in &sources {
        for pattern in &ignored {
            assert!(
                !(source == pattern || Path::new(source).starts_with(pattern)),
                ".dockerignore excludes {pattern}, which the Dockerfile copies"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// docker-compose.yml.

fn compose() -> Value {
    yaml_document(&deploy_dir().join("docker-compose.yml"))
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose has no service {name}"))
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
        .map(|word| {
            assert!(
                !word.replace("$$", "").contains('$'),
                "compose would interpolate the $ in {word}; write $$"
            );
            word.replace("$$", "$")
        })
        .collect()
}

fn host_and_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} names no port"));
    (host.to_owned(), port.parse().expect("a port"))
}

#[test]
fn compose_file_wires_redis_workers_and_the_temporal_profile() {
    let compose = compose();
    let services: BTreeSet<&str> = compose["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        services,
        BTreeSet::from(["redis", "worker", "temporal", "temporal-worker"])
    );

    // Redis: the repository's redis.conf, a volume for the AOF, a ping check.
    let redis = compose_service(&compose, "redis");
    assert!(str_at(redis, "/image").starts_with("redis:7"));
    let command = string_list(&redis["command"], "redis.command");
    assert_eq!(command[0], "redis-server");
    let volumes = string_list(&redis["volumes"], "redis.volumes");
    assert!(
        volumes.contains(&format!("./redis.conf:{}:ro", command[1])),
        "redis.conf is mounted where the command reads it: {volumes:?}"
    );
    let data_volume = volumes
        .iter()
        .find_map(|volume| volume.strip_suffix(":/data"))
        .expect("a volume on /data");
    assert!(compose["volumes"].get(data_volume).is_some());
    assert_eq!(
        string_list(&redis["healthcheck"]["test"], "redis healthcheck"),
        ["CMD", "redis-cli", "ping"]
    );
    assert!(redis.get("profiles").is_none());

    let dockerfile = Dockerfile::load();
    let dockerfile_args = dockerfile.args(1);
    for name in ["worker", "temporal-worker"] {
        let service = compose_service(&compose, name);
        // Built from deploy/Dockerfile with the repository as context.
        let context = deploy_dir().join(str_at(service, "/build/context"));
        assert_eq!(
            context.canonicalize().expect("the build context"),
            repo_root().canonicalize().expect("the repository")
        );
        assert!(context.join(str_at(service, "/build/dockerfile")).is_file());
        for arg in service["build"]["args"]
            .as_object()
            .expect("build args")
            .keys()
        {
            assert!(
                dockerfile_args.contains_key(arg),
                "{name}: the Dockerfile has no ARG {arg}"
            );
        }
        assert_eq!(str_at(service, "/image"), "exo:local");

        let command = string_list(&service["command"], "command");
        assert_eq!(&command[..2], ["start", "worker"]);
        let port = metrics_port(&command);
        assert_eq!(
            string_list(&service["expose"], "expose"),
            [port.to_string()]
        );
        let healthcheck = compose_healthcheck(service);
        assert!(healthcheck[2].contains(&format!("/dev/tcp/127.0.0.1/{port}")));
        assert_eq!(str_at(service, "/stop_signal"), "SIGTERM");
        assert_stop_budget(
            &format!("{name}'s stop_grace_period"),
            duration_seconds(str_at(service, "/stop_grace_period")),
            0,
            &command,
        );
        assert_eq!(str_at(service, "/restart"), "unless-stopped");
        assert_eq!(
            str_at(service, "/depends_on/redis/condition"),
            "service_healthy"
        );
        let environment: BTreeMap<String, String> =
            compose_environment(service).into_iter().collect();
        let (host, redis_port) = host_and_port(&environment["EXO_REDIS_URL"]);
        assert_eq!((host.as_str(), redis_port), ("redis", 6379));
    }

    let worker = compose_service(&compose, "worker");
    assert_eq!(int_at(worker, "/deploy/replicas"), 2);
    assert!(worker.get("profiles").is_none());

    // The temporal profile: the dev server and a worker in temporal mode.
    let temporal = compose_service(&compose, "temporal");
    let temporal_worker = compose_service(&compose, "temporal-worker");
    for service in [temporal, temporal_worker] {
        assert_eq!(string_list(&service["profiles"], "profiles"), ["temporal"]);
    }
    assert!(str_at(temporal, "/image").starts_with("temporalio/temporal:"));
    let server = string_list(&temporal["command"], "temporal.command");
    assert_eq!(&server[..2], ["server", "start-dev"]);
    assert_eq!(
        flag_value(&server, "--ip"),
        Some("0.0.0.0"),
        "reachable from the other containers"
    );
    let command = string_list(&temporal_worker["command"], "temporal-worker.command");
    assert_eq!(flag_value(&command, "--executor"), Some("temporal"));
    assert!(
        str_at(temporal_worker, "/build/args/EXO_FEATURES").contains("temporal"),
        "--executor temporal needs an image built with the temporal feature"
    );
    let environment: BTreeMap<String, String> =
        compose_environment(temporal_worker).into_iter().collect();
    let (host, port) = host_and_port(&environment["TEMPORAL_HOST"]);
    assert_eq!((host.as_str(), port), ("temporal", 7233));
    assert_ne!(
        environment.get("EXO_QUEUE").map(String::as_str),
        Some(Keys::default().queue()),
        "the Temporal worker has a queue of its own"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes.

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Every document of the given files, by kind and name.
fn manifests(files: &[PathBuf]) -> BTreeMap<(String, String), Value> {
    let mut found = BTreeMap::new();
    for file in files {
        for document in yaml_documents(file) {
            let kind = str_at(&document, "/kind").to_owned();
            let name = document
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            assert!(
                found
                    .insert((kind.clone(), name.clone()), document)
                    .is_none(),
                "{kind} {name} is defined twice"
            );
        }
    }
    found
}

fn manifest<'a>(
    manifests: &'a BTreeMap<(String, String), Value>,
    kind: &str,
    name: &str,
) -> &'a Value {
    manifests
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The files a kustomization lists, after checking they all exist and that
/// every YAML file beside it is either listed or a kustomization.
fn kustomization_files(dir: &Path) -> (Value, Vec<PathBuf>) {
    let kustomization = yaml_document(&dir.join("kustomization.yaml"));
    let mut files = Vec::new();
    for resource in string_list(&kustomization["resources"], "resources") {
        let path = dir.join(&resource);
        assert!(
            path.exists(),
            "{}: {resource} does not exist",
            dir.display()
        );
        if path.is_file() {
            files.push(path);
        }
    }
    for entry in std::fs::read_dir(dir).expect("the kustomization directory") {
        let path = entry.expect("an entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
            && path
                .file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        {
            assert!(
                files.contains(&path),
                "{} is not listed in its kustomization",
                path.display()
            );
        }
    }
    (kustomization, files)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .expect("matchLabels")
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

#[test]
fn kubernetes_manifests_agree_with_the_image_the_cli_and_each_other() {
    let dir = kubernetes_dir();
    let root = yaml_document(&dir.join("kustomization.yaml"));
    assert_eq!(string_list(&root["resources"], "resources"), ["base"]);
    let (base, base_files) = kustomization_files(&dir.join("base"));
    let resources = manifests(&base_files);
    let secrets = manifests(&[dir.join("secret.example.yaml")]);
    let namespace = str_at(&base, "/namespace");
    manifest(&resources, "Namespace", namespace);

    // The Deployment.
    let deployment = manifest(&resources, "Deployment", "exo-worker");
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(labels_match(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(int_at(deployment, "/spec/replicas") >= 2);
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let args = string_list(&container["args"], "args");
    assert_eq!(&args[..2], ["start", "worker"]);
    let port = metrics_port(&args);
    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(str_at(&ports[0], "/name"), "metrics");
    assert_eq!(int_at(&ports[0], "/containerPort"), u64::from(port));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(&container[probe], "/httpGet/path"), path);
        assert_eq!(str_at(&container[probe], "/httpGet/port"), "metrics");
    }
    let pre_stop = string_list(
        &container["lifecycle"]["preStop"]["exec"]["command"],
        "preStop",
    );
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop_seconds: u64 = pre_stop[1].parse().expect("sleep seconds");
    assert_stop_budget(
        "terminationGracePeriodSeconds",
        int_at(pod, "/spec/terminationGracePeriodSeconds"),
        pre_stop_seconds,
        &args,
    );
    let dockerfile = Dockerfile::load();
    let uid = dockerfile_uid(&dockerfile);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(int_at(pod, "/spec/securityContext/runAsUser"), uid);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["limits"]["memory"].is_string());

    // The Secret the pods read, from the example (not applied by kustomize).
    let secret_name = str_at(container, "/envFrom/0/secretRef/name");
    let secret = manifest(&secrets, "Secret", secret_name);
    assert_eq!(str_at(secret, "/metadata/namespace"), namespace);
    assert!(secret["stringData"]["EXO_REDIS_URL"].is_string());
    assert!(
        !base_files
            .iter()
            .any(|file| file.ends_with("secret.example.yaml")),
        "the example Secret must not be applied over the real one"
    );

    // The image: one name, rewritten by kustomize.
    let image = str_at(container, "/image");
    let images = base["images"].as_array().expect("kustomize images");
    assert!(images.iter().any(|entry| str_at(entry, "/name") == image));

    // The Service and the PodDisruptionBudget select the worker pods.
    let service = manifest(&resources, "Service", "exo-worker-metrics");
    assert!(labels_match(&service["spec"]["selector"], pod_labels));
    assert_eq!(str_at(service, "/spec/ports/0/targetPort"), "metrics");
    assert_eq!(int_at(service, "/spec/ports/0/port"), u64::from(port));
    let budget = manifest(&resources, "PodDisruptionBudget", "exo-worker");
    assert!(labels_match(
        &budget["spec"]["selector"]["matchLabels"],
        pod_labels
    ));

    // The alerts CronJob: same image and Secret, pods the worker selectors
    // do not pick up.
    let cron = manifest(&resources, "CronJob", "exo-alerts-check");
    let job_pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    assert!(!labels_match(
        &deployment["spec"]["selector"]["matchLabels"],
        &job_pod["metadata"]["labels"]
    ));
    let job_container = &job_pod["spec"]["containers"][0];
    assert_eq!(str_at(job_container, "/image"), image);
    assert_eq!(
        string_list(&job_container["args"], "args"),
        ["alerts", "check"]
    );
    assert_eq!(
        str_at(job_container, "/envFrom/0/secretRef/name"),
        secret_name
    );
    assert_eq!(str_at(job_pod, "/spec/restartPolicy"), "Never");
    assert_eq!(int_at(job_pod, "/spec/securityContext/runAsUser"), uid);

    // The KEDA overlay.
    let (keda, keda_files) = kustomization_files(&dir.join("keda"));
    assert_eq!(str_at(&keda, "/namespace"), namespace);
    assert!(string_list(&keda["resources"], "resources").contains(&"../base".to_owned()));
    let scaling = manifests(&keda_files);
    let patch = &keda["patches"][0];
    assert_eq!(str_at(patch, "/target/kind"), "Deployment");
    assert_eq!(str_at(patch, "/target/name"), "exo-worker");
    let operations: Value =
        serde_norway::from_str(str_at(patch, "/patch")).expect("the patch is YAML");
    assert_eq!(str_at(&operations, "/0/op"), "remove");
    assert!(deployment.pointer(str_at(&operations, "/0/path")).is_some());

    let scaled = manifest(&scaling, "ScaledObject", "exo-worker");
    assert_eq!(str_at(scaled, "/spec/scaleTargetRef/name"), "exo-worker");
    let min = int_at(scaled, "/spec/minReplicaCount");
    let max = int_at(scaled, "/spec/maxReplicaCount");
    assert!(1 <= min && min <= max, "replicas {min}..{max}");
    let keys = Keys::default();
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    let concurrency = flag_value(&args, "--concurrency").expect("--concurrency");
    let mut modes = BTreeSet::new();
    for trigger in triggers {
        assert_eq!(str_at(trigger, "/type"), "redis-streams");
        let metadata = trigger["metadata"].as_object().expect("trigger metadata");
        for (key, value) in metadata {
            assert!(
                value.is_string(),
                "KEDA takes trigger metadata as strings: {key} is {value}"
            );
        }
        assert_eq!(str_at(trigger, "/metadata/stream"), keys.queue());
        assert_eq!(str_at(trigger, "/metadata/consumerGroup"), keys.group());
        if let Some(lag) = metadata.get("lagCount") {
            modes.insert("lag");
            assert!(
                lag.as_str()
                    .expect("lagCount")
                    .parse::<u64>()
                    .expect("a count")
                    > 0
            );
        }
        if let Some(pending) = metadata.get("pendingEntriesCount") {
            modes.insert("pending");
            assert_eq!(
                pending.as_str(),
                Some(concurrency),
                "one worker per --concurrency running tasks"
            );
        }
        let authentication = manifest(
            &scaling,
            "TriggerAuthentication",
            str_at(trigger, "/authenticationRef/name"),
        );
        for reference in authentication["spec"]["secretTargetRef"]
            .as_array()
            .expect("secretTargetRef")
        {
            let secret = manifest(&secrets, "Secret", str_at(reference, "/name"));
            assert!(secret["stringData"][str_at(reference, "/key")].is_string());
        }
    }
    assert_eq!(modes, BTreeSet::from(["lag", "pending"]));

    // Render both with kustomize when kubectl is here.
    match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(output) if output.status.success() => {
            for (path, keda) in [(dir.clone(), false), (dir.join("keda"), true)] {
                let output = Command::new("kubectl")
                    .arg("kustomize")
                    .arg(&path)
                    .output()
                    .expect("run kubectl kustomize");
                assert!(
                    output.status.success(),
                    "kubectl kustomize {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                let text = String::from_utf8_lossy(&output.stdout);
                let rendered: Vec<Value> = serde_norway::Deserializer::from_str(&text)
                    .map(|document| Value::deserialize(document).expect("rendered YAML"))
                    .collect();
                let deployment = rendered
                    .iter()
                    .find(|document| document["kind"] == "Deployment")
                    .expect("a rendered Deployment");
                assert_eq!(deployment.pointer("/spec/replicas").is_none(), keda);
                let image = str_at(deployment, "/spec/template/spec/containers/0/image");
                assert!(image.contains('/'), "kustomize set the image: {image}");
                for document in &rendered {
                    if document["kind"] != "Namespace" {
                        assert_eq!(str_at(document, "/metadata/namespace"), namespace);
                    }
                }
            }
        }
        _ => eprintln!("kubectl not found: the kustomizations were checked but not rendered"),
    }
}

// ---------------------------------------------------------------------------
// systemd.

type Ini = BTreeMap<String, Vec<(String, String)>>;

fn parse_unit(text: &str) -> Ini {
    let mut sections = Ini::new();
    let mut current = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let section = current.clone().expect("a key before any [Section]");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        sections
            .get_mut(&section)
            .expect("the section")
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

fn unit_values<'a>(unit: &'a Ini, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section)
        .map(|entries| {
            entries
                .iter()
                .filter(|(name, _)| name == key)
                .map(|(_, value)| value.as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn unit_value<'a>(unit: &'a Ini, section: &str, key: &str) -> &'a str {
    let values = unit_values(unit, section, key);
    assert_eq!(values.len(), 1, "[{section}] {key} once: {values:?}");
    values[0]
}

fn systemd_unit_path() -> PathBuf {
    deploy_dir().join("systemd").join("exo-worker@.service")
}

/// ExecStart's arguments after the binary, with `%i` the given instance.
fn systemd_worker_args(unit: &Ini, instance: &str) -> Vec<String> {
    let exec = shell_words(unit_value(unit, "Service", "ExecStart"), &BTreeMap::new());
    exec[1..]
        .iter()
        .map(|word| word.replace("%i", instance))
        .collect()
}

#[test]
fn systemd_unit_is_a_verified_template_that_drains_before_it_is_killed() {
    let text = read(&systemd_unit_path());
    let unit = parse_unit(&text);
    assert_eq!(
        unit.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    for (key, expected) in [
        ("User", "exo"),
        ("EnvironmentFile", "-/etc/exo/worker.env"),
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),
        ("Restart", "always"),
        ("RestartSec", "5"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(
            unit_value(&unit, "Service", key),
            expected,
            "[Service] {key}"
        );
    }
    assert_eq!(
        unit_value(&unit, "Install", "WantedBy"),
        "multi-user.target"
    );
    // The binary where the image and the guide install it.
    let exec = shell_words(unit_value(&unit, "Service", "ExecStart"), &BTreeMap::new());
    assert_eq!(exec[0], "/usr/local/bin/exo");
    let args = systemd_worker_args(&unit, "%i");
    assert_eq!(&args[..2], ["start", "worker"]);
    assert_eq!(
        flag_value(&args, "--metrics-addr"),
        Some("127.0.0.1:%i"),
        "the instance name is the metrics port"
    );
    assert_stop_budget(
        "TimeoutStopSec",
        duration_seconds(unit_value(&unit, "Service", "TimeoutStopSec")),
        0,
        &args,
    );

    // systemd's own checker, with ExecStart pointing at the binary under
    // test (verify insists that the executable exists).
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        eprintln!("systemd-analyze not found: the unit was parsed but not verified");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = text.replace(
        "/usr/local/bin/exo",
        exo_binary().to_str().expect("a UTF-8 path"),
    );
    std::fs::write(dir.path().join("exo-worker@.service"), copy).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("exo-worker@9091.service"))
        .output()
        .expect("run systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
}

// ---------------------------------------------------------------------------
// Everything parses, and the variables are ones exo reads.

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_with_extension(&deploy_dir(), &["yml", "yaml"], &mut files);
    assert!(files.len() >= 10, "found {files:?}");
    for file in files {
        let documents = yaml_documents(&file);
        assert!(!documents.is_empty(), "{} is empty", file.display());
        for document in documents {
            assert!(document.is_object(), "{}: {document}", file.display());
        }
    }
}

#[test]
fn environment_variables_in_the_files_are_ones_exo_reads() {
    let mut set: Vec<(String, String)> = Vec::new();
    let compose = compose();
    for name in ["worker", "temporal-worker"] {
        for (variable, _) in compose_service(&compose, name)["environment"]
            .as_object()
            .expect("environment")
        {
            set.push((variable.clone(), format!("compose {name}")));
        }
    }
    let deployment = yaml_document(&kubernetes_dir().join("base").join("deployment.yaml"));
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
    {
        set.push((str_at(entry, "/name").to_owned(), "the Deployment".into()));
    }
    let secrets = manifests(&[kubernetes_dir().join("secret.example.yaml")]);
    for variable in manifest(&secrets, "Secret", "exo-worker")["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
    {
        set.push((variable.clone(), "the worker Secret".into()));
    }
    let unit = parse_unit(&read(&systemd_unit_path()));
    for assignment in unit_values(&unit, "Service", "Environment") {
        let (variable, _) = assignment.split_once('=').expect("NAME=value");
        set.push((variable.to_owned(), "the systemd unit".into()));
    }
    assert!(set.iter().any(|(variable, _)| variable == "EXO_REDIS_URL"));

    let cli = cli_env_names();
    assert!(cli.contains("EXO_REDIS_URL") && cli.contains("EXO_METRICS_ADDR"));
    let sources = names_in_sources();
    for (variable, place) in set {
        assert!(
            cli.contains(&variable) || sources.contains(&variable),
            "{place} sets {variable}, which exo does not read"
        );
    }
}

// ---------------------------------------------------------------------------
// Running the commands.

/// A `redis-server` started with deploy/redis.conf; only the port, the bind
/// address and the directory are overridden.
struct DeployRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl DeployRedis {
    /// Starts it on a free port, trying another port when the one picked
    /// was taken in the meantime.
    fn start() -> Self {
        let binary = exo_testkit::find_binary(
            "redis-server",
            &[],
            "Install it with `apt-get install -y redis-server redis-tools`.",
        );
        let mut log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let port = exo_testkit::free_port();
            let child = Command::new(&binary)
                .arg(deploy_dir().join("redis.conf"))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(dir.path().join("redis.log"))
                .args(["--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let mut redis = DeployRedis { child, port, dir };
            let listening = exo_testkit::wait_for_port(port, Duration::from_secs(10));
            if listening && redis.child.try_wait().ok().flatten().is_none() {
                return redis;
            }
            log = std::fs::read_to_string(redis.dir.path().join("redis.log")).unwrap_or_default();
        }
        panic!("redis-server with deploy/redis.conf did not start:\n{log}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn config_get(&self, parameter: &str) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "config", "get", parameter])
            .output()
            .expect("run redis-cli (apt-get install -y redis-tools)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().nth(1).unwrap_or_default().to_owned()
    }
}

impl Drop for DeployRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exo <args>` as a process with only the given environment (plus PATH
/// and the like; no EXO_*, TEMPORAL_* or OTEL_* from the test's own),
/// killed when dropped.
struct ExoProcess {
    label: String,
    child: Option<Child>,
    logs: tempfile::TempDir,
}

impl ExoProcess {
    fn start(label: &str, args: &[String], environment: &[(String, String)]) -> Self {
        let logs = tempfile::tempdir().expect("a log directory");
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
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.path().join("stdout")).expect("a log file"))
            .stderr(std::fs::File::create(logs.path().join("stderr")).expect("a log file"));
        let child = command.spawn().expect("start exo");
        ExoProcess {
            label: label.to_owned(),
            child: Some(child),
            logs,
        }
    }

    fn output(&self) -> String {
        let read_log =
            |name| std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default();
        format!("{}{}", read_log("stdout"), read_log("stderr"))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().expect("wait for exo"))
    }

    /// The port from the banner's `metrics: http://HOST:PORT/metrics`.
    fn metrics_port(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.output();
            if let Some(line) = output
                .lines()
                .find(|line| line.trim_start().starts_with("metrics:"))
            {
                let address = line
                    .split("http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .expect("an address in the banner");
                let (_, port) = address.rsplit_once(':').expect("a port");
                return port.parse().expect("a port number");
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{}: exo exited ({status}) before serving:\n{output}",
                    self.label
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no metrics address in the banner:\n{output}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: exo did not exit within {timeout:?}:\n{}",
                self.label,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&self) {
        let pid = self.child.as_ref().expect("a running process").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for ExoProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:port: the status code and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The same command line with the `--metrics-addr` port replaced by 0 (a
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
    redis: &DeployRedis,
    label: &str,
    args: &[String],
    environment: &[(String, String)],
    probe: Probe,
) {
    let mut environment = environment.to_vec();
    environment.retain(|(name, _)| name != "EXO_REDIS_URL");
    environment.push(("EXO_REDIS_URL".into(), redis.url()));
    let mut worker = ExoProcess::start(label, &with_ephemeral_metrics_port(args), &environment);
    let port = worker.metrics_port();
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
    let redis = DeployRedis::start();
    for (parameter, expected) in [
        ("maxmemory", "1073741824"),
        ("maxmemory-policy", "noeviction"),
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("timeout", "0"),
        ("tcp-keepalive", "300"),
    ] {
        assert_eq!(
            redis.config_get(parameter),
            expected,
            "redis.conf {parameter}"
        );
    }

    // The image's default command, probed by its HEALTHCHECK.
    let dockerfile = Dockerfile::load();
    let command = dockerfile.json(2, "CMD");
    run_worker(
        &redis,
        "Dockerfile CMD",
        &command,
        &[],
        Probe::Command(dockerfile.healthcheck(2), metrics_port(&command)),
    );

    // The compose worker, with its environment, probed by its healthcheck.
    let compose = compose();
    let service = compose_service(&compose, "worker");
    let command = string_list(&service["command"], "command");
    run_worker(
        &redis,
        "compose worker",
        &command,
        &compose_environment(service),
        Probe::Command(compose_healthcheck(service), metrics_port(&command)),
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
    let unit = parse_unit(&read(&systemd_unit_path()));
    let environment: Vec<(String, String)> = unit_values(&unit, "Service", "Environment")
        .into_iter()
        .map(|assignment| {
            let (name, value) = assignment.split_once('=').expect("NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    run_worker(
        &redis,
        "systemd ExecStart",
        &systemd_worker_args(&unit, "0"),
        &environment,
        Probe::Paths(vec!["/healthz".to_owned()]),
    );
}

#[test]
fn temporal_worker_command_gets_past_its_flags_and_redis() {
    // With Redis up and no Temporal server, the compose Temporal worker
    // connects to Redis and then fails on Temporal (status 1), never with a
    // usage error.
    let redis = DeployRedis::start();
    let compose = compose();
    let service = compose_service(&compose, "temporal-worker");
    let command = string_list(&service["command"], "command");
    let mut environment = compose_environment(service);
    environment.retain(|(name, _)| name != "EXO_REDIS_URL" && name != "TEMPORAL_HOST");
    environment.push(("EXO_REDIS_URL".into(), redis.url()));
    let closed_port = exo_testkit::free_port();
    environment.push(("TEMPORAL_HOST".into(), format!("127.0.0.1:{closed_port}")));
    let mut worker = ExoProcess::start(
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
    let mut check = ExoProcess::start(
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
        "tests/tests/deploy_files.rs",
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
        let words = shell_words(code, &BTreeMap::new());
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
