//! The deployment files under `deploy/` and the guide that explains them,
//! checked as files: `cargo xtask tidy` runs every check, and each is also
//! an ordinary `#[test]` of this crate.
//!
//! - every YAML file parses (Kubernetes files as multi-document streams);
//! - ports, users, stream and group names, and stop budgets agree across the
//!   files and with the CLI (the drain timeout's default is read from
//!   `crates/exo-cli/src/args.rs`);
//! - environment variables set in the files are ones exo reads;
//! - the Dockerfile's `cargo build` line is one that `cargo tree` accepts
//!   with the same package, features and `--locked` (building a release
//!   binary here would only prove that cargo works), its COPY lines cover
//!   every workspace member, and `.dockerignore` excludes none of them;
//! - `systemd-analyze verify` accepts the unit, and `kubectl kustomize`
//!   renders both kustomizations, where those commands exist.
//!
//! The checks that run the commands these files name (the workers against
//! a `redis-server` started with `deploy/redis.conf`, their health checks,
//! SIGTERM, the Temporal worker, the alerts CronJob and the `exo` lines of
//! docs/operations.md) are integration tests of the `tests` crate
//! (`tests/tests/it/deploy_commands.rs`), since they need the `exo` binary.
//!
//! The checks are written as assertions, like tests; [`check`] runs each
//! one and collects the names of those that panic.

use std::{
    collections::{BTreeMap, BTreeSet},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Result, bail};
use exo_proto::Keys;
use serde::Deserialize;
use serde_json::Value;

/// Lists the checks once: as the table [`check`] runs, and as one `#[test]`
/// each, so that `cargo test -p xtask` enforces them.
macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, by name.
        const CHECKS: &[(&str, fn())] = &[$((stringify!($name), $name)),*];

        #[cfg(test)]
        mod tests {
            $(
                #[test]
                fn $name() {
                    super::$name();
                }
            )*
        }
    };
}

checks!(
    dockerfile_builds_exo_on_the_pinned_toolchain_and_runs_it_unprivileged,
    dockerfile_cargo_build_agrees_with_the_workspace_and_the_lock_file,
    dockerfile_copies_every_workspace_member_and_dockerignore_keeps_them,
    compose_file_wires_redis_workers_and_the_temporal_profile,
    kubernetes_manifests_agree_with_the_image_the_cli_and_each_other,
    systemd_unit_is_a_verified_template_that_drains_before_it_is_killed,
    every_yaml_file_under_deploy_parses,
    environment_variables_in_the_files_are_ones_exo_reads,
);

/// Runs every check; fails with the names of those that failed (each one's
/// message is printed as it fails).
pub(crate) fn check() -> Result<()> {
    let failed: Vec<&str> = CHECKS
        .iter()
        .filter(|(_, check)| catch_unwind(AssertUnwindSafe(check)).is_err())
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("deployment file checks failed:\n  {}", failed.join("\n  "))
    }
}

// ---------------------------------------------------------------------------
// Files.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the repository root")
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
// What the CLI's source says about it.

/// The `--drain-timeout` default of `exo start worker`, in seconds: the
/// flag is optional and applied over the library's default, so this is
/// `drain_timeout` in `WorkerConfig::new` (exo-worker's config).
fn default_drain_timeout() -> u64 {
    let path = repo_root().join("crates/exo-worker/src/config.rs");
    let text = read(&path);
    let default = text
        .lines()
        .find_map(|line| {
            line.trim_start()
                .strip_prefix("drain_timeout: Duration::from_secs(")
        })
        .unwrap_or_else(|| panic!("{} sets no drain_timeout default", path.display()));
    let digits: String = default.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("the default is whole seconds")
}

/// The environment variables the CLI reads (`env = "NAME"` in its clap
/// arguments).
fn cli_env_names() -> BTreeSet<String> {
    let mut files = Vec::new();
    files_with_extension(&repo_root().join("crates/exo-cli/src"), &["rs"], &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        for piece in read(&file).split("env = \"").skip(1) {
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

/// Splits a command line as `sh` would (with `shlex`), after expanding
/// `${NAME}` from `variables`. Enough for the lines in these files; no
/// globbing, no command substitution.
fn shell_words(line: &str, variables: &BTreeMap<String, String>) -> Vec<String> {
    let mut expanded = line.to_owned();
    for (name, value) in variables {
        expanded = expanded.replace(&format!("${{{name}}}"), value);
    }
    shlex::split(&expanded).unwrap_or_else(|| panic!("not a shell command line: {line}"))
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

    // systemd's own checker, with ExecStart pointing at an executable that
    // exists (verify insists on one, and never runs it): this process's own.
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
        std::env::current_exe()
            .expect("this process's executable")
            .to_str()
            .expect("a UTF-8 path"),
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
