//! Sets `EXO_VERSION`, what `exo --version` prints: the package version and
//! the git revision it was built from. The revision comes from
//! `.cargo_vcs_info.json` in a packaged crate (what `cargo install exo-cli`
//! builds), else from `git` in a checkout; with neither, the version alone.

// Cargo reads a build script's instructions from its stdout.
#![allow(clippy::print_stdout)]

use std::{path::Path, process::Command};

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let manifest_dir = Path::new(&manifest_dir);
    let vcs_info = manifest_dir.join(".cargo_vcs_info.json");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = if vcs_info.is_file() {
        println!("cargo:rerun-if-changed={}", vcs_info.display());
        std::fs::read_to_string(&vcs_info)
            .ok()
            .and_then(|text| packaged_revision(&text))
    } else {
        git_revision(manifest_dir)
    };
    let full = match revision {
        Some(revision) => format!("{version} ({revision})"),
        None => version,
    };
    println!("cargo:rustc-env=EXO_VERSION={full}");
}

/// The short sha1 in `.cargo_vcs_info.json` (`{"git": {"sha1": "..."}}`),
/// with `-dirty` when the tree had changes.
fn packaged_revision(text: &str) -> Option<String> {
    let sha1 = field(text, "sha1")?;
    let short: String = sha1.chars().take(9).collect();
    let dirty = text.contains("\"dirty\": true") || text.contains("\"dirty\":true");
    Some(if dirty {
        format!("{short}-dirty")
    } else {
        short
    })
}

/// The string value of `"name": "value"` in a small JSON text.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let after = &text[text.find(&format!("\"{name}\""))? + name.len() + 2..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    Some(&value[..value.find('"')?])
}

/// `git rev-parse --short=9 HEAD` in the checkout, and the files that
/// change when HEAD moves (so the revision is read again).
fn git_revision(directory: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args(args)
            .current_dir(directory)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short=9", "HEAD"])?;
    if let Some(path) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", directory.join(path).display());
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &reference])
    {
        println!("cargo:rerun-if-changed={}", directory.join(path).display());
    }
    Some(revision)
}
