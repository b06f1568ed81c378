//! The `exo` binary's contract without a worker: usage errors, exit codes,
//! and clear messages.

use std::process::Command;

fn exo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_exo"));
    command.env_remove("EXO_REDIS_URL");
    command
}

/// Each case: arguments, environment, exit code, and words stderr must hold.
#[test]
fn exit_codes_and_messages() {
    let closed = "redis://127.0.0.1:1";
    let cases: &[(&[&str], Option<&str>, i32, &str)] = &[
        (&["task", "list"], None, 2, "no Redis URL"),
        (&["start", "worker"], None, 2, "no Redis URL"),
        (&["task", "list"], Some(closed), 3, "unreachable"),
        (&["worker", "list"], Some(closed), 3, "unreachable"),
        (
            &["task", "list", "--status", "bogus"],
            Some(closed),
            1,
            "valid statuses: pending, running, completed, failed, cancelled, retrying",
        ),
        (
            &["task", "submit", "--agent", "/no/such/file.json"],
            Some(closed),
            1,
            "cannot read the agent file",
        ),
        (
            &["task", "frobnicate"],
            Some(closed),
            2,
            "unrecognized subcommand",
        ),
        (
            &["alerts", "check", "--threshold", "nonsense=1"],
            Some(closed),
            2,
            "nonsense",
        ),
        (
            &["start", "worker", "--concurrency", "0"],
            Some(closed),
            2,
            "concurrency",
        ),
        // Built with the `temporal` feature, this starts a worker (see
        // `temporal_mode_checks_its_settings_first` below).
        #[cfg(not(feature = "temporal"))]
        (
            &["start", "worker", "--executor", "temporal"],
            Some(closed),
            2,
            "built with the `temporal` feature",
        ),
    ];
    for (args, url, code, needle) in cases {
        let mut command = exo();
        if let Some(url) = url {
            command.env("EXO_REDIS_URL", url);
        }
        let output = command.args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{stderr}` lacks `{needle}`"
        );
    }
}

#[test]
fn an_invalid_agent_file_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", "[1, 2]", "must hold an object"),
        ("ptc.json", r#"{"name": "a", "ptc": true}"#, "ptc"),
        ("bad.yaml", "name: [", "not valid YAML"),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let output = exo()
            .env("EXO_REDIS_URL", "redis://127.0.0.1:1")
            .args(["task", "submit", "--agent", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: `{stderr}` lacks `{needle}`"
        );
    }
}

#[test]
fn the_banner_masks_the_password() {
    let output = exo()
        .env("EXO_REDIS_URL", "redis://:hunter2@127.0.0.1:1")
        .args(["task", "list"])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("***"), "{all}");
}

/// With the `temporal` feature, temporal mode reads its settings from the
/// environment and refuses bad ones before connecting to anything.
#[cfg(feature = "temporal")]
#[test]
fn temporal_mode_checks_its_settings_first() {
    let cases = [
        (
            "EXO_TEMPORAL_HEARTBEAT_TIMEOUT",
            "soon",
            "number of seconds",
        ),
        ("TEMPORAL_HOST", "redis://127.0.0.1:1", "unsupported scheme"),
    ];
    for (variable, value, needle) in cases {
        let output = exo()
            .env("EXO_REDIS_URL", "redis://127.0.0.1:1")
            .env(variable, value)
            .args(["start", "worker", "--executor", "temporal"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{variable}: `{stderr}` lacks `{needle}`"
        );
        assert!(
            !stderr.contains("built with"),
            "{variable}: the binary has the feature: {stderr}"
        );
    }
}

/// The Temporal SDK is in the graph only with the `temporal` feature: a
/// default build carries none of it.
#[test]
fn the_temporal_crates_come_only_with_the_feature() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let temporal_crates = |features: &[&str]| -> Vec<String> {
        let output = Command::new(&cargo)
            .args([
                "tree",
                "-p",
                "exo-cli",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .args(features)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo tree {features:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| name.starts_with("temporalio"))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(
        temporal_crates(&[]),
        Vec::<String>::new(),
        "a default build has no Temporal crate"
    );
    let with_feature = temporal_crates(&["--features", "temporal"]);
    for name in [
        "temporalio-client",
        "temporalio-sdk",
        "temporalio-sdk-core",
        "temporalio-workflow",
    ] {
        assert!(
            with_feature.iter().any(|found| found == name),
            "{name} missing: {with_feature:?}"
        );
    }
}
