//! `cargo xtask package`: what a user of the published crates gets.
//!
//! 1. `cargo package` of every workspace member that may be published
//!    (read from `cargo metadata`, so a new crate is covered the day it is
//!    added), with verification: each `.crate` is unpacked and built on its
//!    own, against the other packaged crates.
//! 2. `examples/embedded-worker`, a program outside the workspace that
//!    depends on `exo-worker` with `temporal` and `postgres` by version, is
//!    built against those packaged crates (patched in with `--config
//!    patch.crates-io.<name>.path=...`) and run once against a fresh
//!    redis-server: a custom Rust tool runs inside one real task.
//! 3. `cargo install` of the packaged `exo-cli` into a temporary root
//!    gives an `exo` binary that runs.
//!
//! The builds share the workspace's target directory and its `dev` profile
//! settings, so the dependencies already built for the rest of `cargo xtask
//! ci` are reused where their features agree.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, run, workspace_metadata, workspace_root};

/// A workspace member that `cargo package` packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publishable {
    pub(crate) name: String,
    pub(crate) version: String,
}

/// The members of the workspace that may be published (`publish` not
/// `false`), in `cargo metadata` order.
pub(crate) fn publishable(metadata: &Value) -> Vec<Publishable> {
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|package| {
            members.contains(&package["id"].as_str().unwrap_or_default())
                // `publish = false` reads as an empty registry list.
                && package["publish"].as_array().is_none_or(|registries| !registries.is_empty())
        })
        .filter_map(|package| {
            Some(Publishable {
                name: package["name"].as_str()?.to_owned(),
                version: package["version"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// The workspace's `dev` profile, passed to builds outside the workspace
/// (package verification, the example, the install check), whose own
/// manifests carry no profile; identical settings let them reuse the
/// workspace's compiled dependencies.
const DEV_PROFILE: &[&str] = &[
    "profile.dev.debug=\"line-tables-only\"",
    "profile.dev.package.\"*\".debug=false",
];

/// `--config` arguments that replace each packaged crate on crates.io by
/// its unpacked `.crate` contents.
pub(crate) fn patch_arguments(crates: &[Publishable], unpacked: &Path) -> Vec<String> {
    let mut arguments = Vec::new();
    for krate in crates {
        let directory = unpacked.join(format!("{}-{}", krate.name, krate.version));
        arguments.push("--config".to_owned());
        arguments.push(format!(
            "patch.crates-io.{}.path={}",
            krate.name,
            toml_string(&directory.display().to_string())
        ));
    }
    arguments
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

fn with_dev_profile(command: &mut Command) -> &mut Command {
    for setting in DEV_PROFILE {
        command.args(["--config", setting]);
    }
    command
}

pub(crate) fn package(args: &[String]) -> Result<()> {
    let mut verify = true;
    for arg in args {
        match arg.as_str() {
            "--no-verify" => verify = false,
            other => bail!("unknown package option `{other}` (--no-verify)"),
        }
    }
    let metadata = workspace_metadata()?;
    let crates = publishable(&metadata);
    if crates.is_empty() {
        bail!("no workspace member may be published");
    }
    let target = PathBuf::from(
        metadata["target_directory"]
            .as_str()
            .context("no target directory in cargo metadata")?,
    );
    let unpacked = target.join("package");

    // 1. Package (and verify) every publishable crate together.
    forget_unpacked_overlay(&crates)?;
    let mut command = cargo();
    command.args(["package", "--allow-dirty"]);
    if !verify {
        command.arg("--no-verify");
    }
    for krate in &crates {
        command.args(["-p", &krate.name]);
    }
    run(
        &format!("package {} crates", crates.len()),
        with_dev_profile(&mut command),
    )?;
    // Verification leaves each crate unpacked next to its `.crate`; without
    // it, unpack them here.
    for krate in &crates {
        let directory = unpacked.join(format!("{}-{}", krate.name, krate.version));
        if !verify || !directory.join("Cargo.toml").is_file() {
            unpack(&unpacked, krate)?;
        }
    }
    let patches = patch_arguments(&crates, &unpacked);

    // 2. The example, built and run against the packaged crates.
    example(&target, &patches)?;

    // 3. `cargo install` of the packaged exo-cli.
    if let Some(cli) = crates.iter().find(|krate| krate.name == "exo-cli") {
        install_check(&target, &unpacked, cli, &patches)?;
    }
    eprintln!(
        "package: {} crates package{}, the example runs on them, and `cargo install exo-cli` gives a working `exo`",
        crates.len(),
        if verify { " and verify" } else { "" }
    );
    Ok(())
}

/// Removes the copies of our crates that an earlier verification unpacked
/// from cargo's temporary local registry into `$CARGO_HOME/registry/src`.
/// Cargo treats a registry crate as immutable and would build the next
/// verification against the stale copy of a crate whose version did not
/// change. crates.io's own directory is left alone.
fn forget_unpacked_overlay(crates: &[Publishable]) -> Result<()> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let Some(sources) = cargo_home.map(|home| home.join("registry").join("src")) else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(&sources) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        if registry.file_name().to_string_lossy().starts_with("index.") {
            continue;
        }
        for krate in crates {
            let stale = registry
                .path()
                .join(format!("{}-{}", krate.name, krate.version));
            if stale.is_dir() {
                std::fs::remove_dir_all(&stale)
                    .with_context(|| format!("remove {}", stale.display()))?;
            }
        }
    }
    Ok(())
}

/// Unpacks `<name>-<version>.crate` into `<name>-<version>/` beside it.
/// The files get the time of unpacking (`-m`), not the archive's: the
/// archive's times are fixed, so a crate whose contents changed under the
/// same version would otherwise look unchanged to cargo's freshness check,
/// and a persistent target directory would build the stale one.
fn unpack(directory: &Path, krate: &Publishable) -> Result<()> {
    let stem = format!("{}-{}", krate.name, krate.version);
    let _ = std::fs::remove_dir_all(directory.join(&stem));
    run(
        &format!("unpack {stem}.crate"),
        Command::new("tar")
            .current_dir(directory)
            .args(["-xzmf", &format!("{stem}.crate")]),
    )
}

/// Builds `examples/embedded-worker` against the packaged crates and runs
/// it once against a fresh redis-server.
fn example(target: &Path, patches: &[String]) -> Result<()> {
    let root = workspace_root();
    let example = root.join("examples/embedded-worker");
    // The workspace's lock file: the same dependency versions as the
    // workspace, so the builds share them.
    std::fs::copy(root.join("Cargo.lock"), example.join("Cargo.lock"))
        .context("copy Cargo.lock into the example")?;
    let manifest = example.join("Cargo.toml");
    let mut build = cargo();
    build
        .args(["build", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .args(patches);
    run("build the example", with_dev_profile(&mut build))?;
    let binary = target.join("debug").join("embedded-worker");
    let server = exo_testkit::RedisServer::start();
    run(
        "run the example against redis-server",
        Command::new(&binary).env("EXO_REDIS_URL", server.url()),
    )
}

/// `cargo install` of the packaged exo-cli into a temporary root (a debug
/// build: what is checked is that the packaged crate installs and runs, and
/// its dependencies are already built), then `exo --version`.
fn install_check(
    target: &Path,
    unpacked: &Path,
    cli: &Publishable,
    patches: &[String],
) -> Result<()> {
    let root = tempfile::tempdir().context("a temporary install root")?;
    let source = unpacked.join(format!("{}-{}", cli.name, cli.version));
    let mut install = cargo();
    install
        .args(["install", "--debug", "--path"])
        .arg(&source)
        .arg("--root")
        .arg(root.path())
        .arg("--target-dir")
        .arg(target)
        .args(patches);
    run("install exo-cli", with_dev_profile(&mut install))?;
    let exo = root.path().join("bin").join("exo");
    let output = Command::new(&exo)
        .arg("--version")
        .output()
        .with_context(|| format!("run {}", exo.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !version.starts_with(&format!("exo {}", cli.version)) {
        bail!("the installed exo answered `{version}` to --version");
    }
    eprintln!("installed: {}", version.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn publishable_members_are_the_ones_without_publish_false() {
        let metadata = json!({
            "workspace_members": ["a 0.1.0", "b 0.1.0", "c 0.2.0"],
            "packages": [
                {"id": "a 0.1.0", "name": "a", "version": "0.1.0", "publish": null},
                {"id": "b 0.1.0", "name": "b", "version": "0.1.0", "publish": []},
                {"id": "c 0.2.0", "name": "c", "version": "0.2.0", "publish": ["crates-io"]},
                {"id": "dep 1.0.0", "name": "dep", "version": "1.0.0", "publish": null},
            ],
        });
        let names: Vec<String> = publishable(&metadata)
            .into_iter()
            .map(|krate| format!("{}-{}", krate.name, krate.version))
            .collect();
        assert_eq!(names, ["a-0.1.0", "c-0.2.0"]);
    }

    #[test]
    fn every_library_and_the_cli_are_publishable_and_the_harness_is_not() {
        let metadata = workspace_metadata().unwrap();
        let names: Vec<String> = publishable(&metadata)
            .into_iter()
            .map(|krate| krate.name)
            .collect();
        for name in ["exo-proto", "exo-broker", "exo-worker", "exo-cli"] {
            assert!(
                names.iter().any(|listed| listed == name),
                "{name}: {names:?}"
            );
        }
        for name in ["exo-testkit", "exo-e2e", "xtask"] {
            assert!(
                !names.iter().any(|listed| listed == name),
                "{name}: {names:?}"
            );
        }
    }

    #[test]
    fn patches_name_the_unpacked_directories() {
        let crates = [Publishable {
            name: "exo-proto".into(),
            version: "0.1.0".into(),
        }];
        assert_eq!(
            patch_arguments(&crates, Path::new("/t/package")),
            [
                "--config",
                "patch.crates-io.exo-proto.path=\"/t/package/exo-proto-0.1.0\""
            ]
        );
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
