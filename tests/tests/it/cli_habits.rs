//! What users expect of a command-line tool: `--version` with the git
//! revision, shell completions, man pages, a quiet exit when stdout closes,
//! and bulk submission with `--batch`.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use exo_e2e::{Target, exo_binary};
use exo_testkit::TestRedis;
use serde_json::{Value, json};

fn exo(args: &[&str]) -> std::process::Output {
    Command::new(exo_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run exo")
}

#[test]
fn version_names_the_git_revision() {
    let output = exo(&["--version"]);
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout).unwrap();
    assert!(
        version.starts_with(&format!("exo {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let revision = Command::new("git")
        .args(["rev-parse", "--short=9", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if let Some(revision) = revision {
        assert!(
            version.contains(&format!("({revision})")),
            "`{version}` does not name {revision}"
        );
    }
}

#[test]
fn completions_for_every_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef exo"),
        ("fish", "complete -c exo"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let output = exo(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: `{marker}` missing");
        assert!(script.contains("submit"), "{shell}: subcommands missing");
    }
    let output = exo(&["completions", "tcsh"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_for_the_command_and_its_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let output = exo(&["man-pages", dir.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for page in [
        "exo.1",
        "exo-task.1",
        "exo-task-submit.1",
        "exo-completions.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|error| panic!("{page}: {error}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let submit = std::fs::read_to_string(dir.path().join("exo-task-submit.1")).unwrap();
    assert!(submit.contains("batch"), "the options are in the page");
    assert!(
        !dir.path().join("exo-man-pages.1").exists(),
        "hidden commands have no page"
    );
}

/// Lines of a batch file: `good` valid tasks, then the given extra lines.
fn batch_file(dir: &Path, good: usize, extra: &[&str]) -> std::path::PathBuf {
    let mut text = String::new();
    for index in 0..good {
        let line = json!({
            "agent_config": {"name": "helper", "model": "scripted:echo"},
            "input": format!("task {index}"),
        });
        text.push_str(&format!("{line}\n"));
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    let path = dir.join("batch.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn result_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect()
}

#[test]
fn batch_submits_every_good_line_and_reports_each_bad_one() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let duplicate = json!({
        "agent_config": {"name": "helper", "model": "scripted:echo"},
        "idempotency_key": "once",
        "task_id": "first-of-two",
    })
    .to_string();
    let second = json!({
        "agent_config": {"name": "helper", "model": "scripted:echo"},
        "idempotency_key": "once",
    })
    .to_string();
    let path = batch_file(
        dir.path(),
        2,
        &[
            "{not json",
            "",
            r#"{"agent_config": {"name": "helper", "model": "scripted:echo"}, "timeout_seconds": "soon"}"#,
            &duplicate,
        ],
    );
    let output = target
        .command()
        .args(["task", "submit", "--batch", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "bad lines make the exit status 1: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = result_lines(&output.stdout);
    let by_line = |number: u64| {
        results
            .iter()
            .find(|result| result["line"] == number)
            .unwrap_or_else(|| panic!("no result for line {number}: {results:?}"))
    };
    assert_eq!(
        results.len(),
        5,
        "one result per non-blank line: {results:?}"
    );
    for number in [1, 2, 6] {
        let result = by_line(number);
        assert_eq!(result["created"], true, "{result}");
        assert!(result["time"].as_f64().unwrap() > 1.0e9, "{result}");
        let task_id = result["task_id"].as_str().unwrap();
        assert_eq!(target.status(task_id)["status"], "pending");
    }
    assert_eq!(by_line(6)["task_id"], "first-of-two");
    assert!(
        by_line(3)["error"].as_str().unwrap().contains("not JSON"),
        "{}",
        by_line(3)
    );
    assert!(
        by_line(5)["error"]
            .as_str()
            .unwrap()
            .contains("timeout_seconds"),
        "{}",
        by_line(5)
    );

    // A repeat of the idempotency key names the first task.
    std::fs::write(&path, format!("{second}\n")).unwrap();
    let output = target
        .command()
        .args(["task", "submit", "--batch", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let repeat = &result_lines(&output.stdout)[0];
    assert_eq!(repeat["task_id"], "first-of-two");
    assert_eq!(repeat["created"], false);
}

#[test]
fn batch_streams_thousands_of_tasks_from_stdin_through_one_process() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let tasks = 3000;
    let mut child = target
        .command()
        .args(["task", "submit", "--batch", "-", "--in-flight", "32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The first result arrives while the input is still open: results
    // stream as Redis answers, not at the end.
    let line =
        json!({"agent_config": {"name": "helper", "model": "scripted:echo"}, "input": "first"});
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["line"], 1);
    assert_eq!(first["created"], true);
    let writer = std::thread::spawn(move || {
        for index in 1..tasks {
            let line = json!({
                "agent_config": {"name": "helper", "model": "scripted:echo"},
                "input": format!("task {index}"),
            });
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let mut ids = BTreeSet::from([first["task_id"].as_str().unwrap().to_owned()]);
    for line in stdout.lines() {
        let result: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(result["created"], true, "{result}");
        ids.insert(result["task_id"].as_str().unwrap().to_owned());
    }
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ids.len(), tasks, "every line became its own task");
    let stats = target.json(&["queue", "stats"]);
    assert_eq!(stats["stream_length"], tasks, "{stats}");
}

/// `exo ... | head -1`: the reader goes away while exo still writes. exo
/// ends quietly with status 0: no panic, no backtrace.
#[test]
fn a_closed_stdout_is_a_quiet_exit() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    // Enough output to overflow any pipe buffer.
    let path = batch_file(dir.path(), 3000, &[]);
    let mut child = target
        .command()
        .args(["task", "submit", "--batch", path.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    let started = std::time::Instant::now();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // The same through a shell pipe, as users type it.
    let shell = format!(
        "EXO_REDIS_URL='{}' EXO_KEY_PREFIX='{}' EXO_QUEUE='{}' '{}' task list --json --limit 500 | head -1",
        target.redis_url,
        target.prefix,
        target.queue,
        exo_binary().display()
    );
    let output = Command::new("sh").args(["-c", &shell]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[");
}

/// The config file: flags > environment > file > defaults, `exo config
/// show` prints the result with secrets masked, a typo is refused, and a
/// worker started from the file alone serves the file's queue.
#[test]
fn a_config_file_sets_what_flags_and_environment_leave_out() {
    let redis = exo_testkit::TestRedis::new();
    let target = exo_e2e::Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exo.toml");
    std::fs::write(
        &file,
        format!(
            r#"
redis_url = "{url}"
key_prefix = "{prefix}"
queue = "{queue}"

[worker]
worker_id = "from-file"
concurrency = 3
model_rpm = ["gpt-4o-mini=500"]
concurrency_limit = ["4", "tenant-big=20"]
price = ["gpt-4o-mini=0.15,0.6"]
memory_store = ["main=postgres://exo:s3cret@db:5432/exo"]
builtin_tools = true
"#,
            url = redis.url(),
            prefix = redis.prefix(),
            queue = redis.queue()
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let show = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let output = std::process::Command::new(exo_e2e::exo_binary())
            .args(["--config", config, "config", "show", "--json"])
            .args(args)
            .env_remove("EXO_REDIS_URL")
            .env_remove("EXO_WORKER_ID")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let shown = show(&[], &[]);
    assert_eq!(shown["queue"], redis.queue());
    assert_eq!(shown["config_file"], config);
    let worker = &shown["worker"];
    assert_eq!(worker["worker_id"], "from-file");
    assert_eq!(worker["concurrency"], 3);
    assert_eq!(worker["model_rpm"], json!(["gpt-4o-mini=500"]));
    assert_eq!(worker["concurrency_limit"], json!(["4", "tenant-big=20"]));
    assert_eq!(worker["price"], json!(["gpt-4o-mini=0.15,0.6"]));
    assert_eq!(worker["builtin_tools"], true);
    let stores = worker["memory_store"].to_string();
    assert!(!stores.contains("s3cret"), "{stores}");
    // The environment wins over the file, a flag over both.
    let shown = show(&[], &[("EXO_WORKER_ID", "from-env")]);
    assert_eq!(shown["worker"]["worker_id"], "from-env");
    let shown = show(
        &["--worker-id", "from-flag", "--concurrency", "5"],
        &[("EXO_WORKER_ID", "from-env")],
    );
    assert_eq!(shown["worker"]["worker_id"], "from-flag");
    assert_eq!(shown["worker"]["concurrency"], 5);
    // The human form is TOML, as the file is.
    let output = std::process::Command::new(exo_e2e::exo_binary())
        .args(["--config", config, "config", "show"])
        .env_remove("EXO_REDIS_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("concurrency = 3"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");

    // A typo is refused with the key's name.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[worker]\nconcurency = 3\n").unwrap();
    let output = exo(&["--config", typo.to_str().unwrap(), "config", "show"]);
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("`concurency`"), "{message}");

    // A worker started from the file alone serves its queue.
    let mut command = std::process::Command::new(exo_e2e::exo_binary());
    command
        .args([
            "--config",
            config,
            "start",
            "worker",
            "--log-format",
            "compact",
        ])
        .env_remove("EXO_REDIS_URL")
        .env_remove("EXO_KEY_PREFIX")
        .env_remove("EXO_QUEUE")
        .env_remove("EXO_WORKER_ID");
    let _worker = exo_e2e::WorkerProcess::start(command);
    let agent = exo_e2e::agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "filed", "model": "scripted:echo"}),
    );
    let task = target.submit(&agent, "from the file");
    let done = target.wait_for_status(&task, "completed", std::time::Duration::from_secs(20));
    assert_eq!(done["worker_id"], "from-file", "{done}");
}
