//! The config file (`exo.toml`): settings for any flag of `exo` and of
//! `exo start worker` / `exo serve`, below the flags and the environment.
//!
//! ```toml
//! redis_url = "redis://redis:6379"        # a global flag
//! queue = "agents"
//!
//! [worker]                                # flags of `exo start worker` (and `exo config show`)
//! concurrency = 8
//! model_rpm = ["openai:gpt-4o-mini=500"]
//! memory_store = ["main=sqlite:///var/lib/exo/memory.db"]
//!
//! [serve]                                 # flags of `exo serve`
//! addr = "0.0.0.0:8080"
//! ```
//!
//! A key is a flag's long name (`model_rpm` or `model-rpm`). The file is
//! `--config FILE`, else `$EXO_CONFIG`, else `./exo.toml` when it exists.
//! Each setting becomes the flag it names, unless the command line gives
//! that flag or its environment variable is set: flags > environment >
//! file > defaults. A list in the file is replaced, not extended, by the
//! same flag on the command line. An unknown key is an error, so a typo
//! never passes silently.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

/// The file's name in the working directory, read when present.
pub(crate) const DEFAULT_FILE: &str = "exo.toml";

/// Which config file applies to a command line, if any.
pub(crate) fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_string_lossy();
        if word == "--" {
            break;
        }
        if word == "--config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(path) = word.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    if let Some(path) = std::env::var_os("EXO_CONFIG").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_FILE);
    default.is_file().then(|| default.to_path_buf())
}

/// The command line with the config file's settings added where the
/// command line and the environment leave them out.
pub(crate) fn apply(
    argv: Vec<OsString>,
    command: &clap::Command,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the config file {}: {error}", path.display()))?;
    let table: Table = text.parse().map_err(|error| {
        format!(
            "the config file {} is not valid TOML: {error}",
            path.display()
        )
    })?;
    let words: Vec<String> = argv
        .iter()
        .map(|word| word.to_string_lossy().into_owned())
        .collect();
    let section = section_of(&words);
    let mut global = Vec::new();
    let mut local = Vec::new();
    for (key, value) in &table {
        match value {
            Value::Table(settings) => {
                let Some(subcommand) = subcommand_of(command, key) else {
                    return Err(format!(
                        "{}: unknown section [{key}] (known: [worker], [serve])",
                        path.display()
                    ));
                };
                if section != Some(key.as_str()) {
                    continue;
                }
                for (name, value) in settings {
                    let arg = find_arg(subcommand, name).ok_or_else(|| {
                        format!(
                            "{}: [{key}] has no setting `{name}` (a flag of `exo {}`)",
                            path.display(),
                            subcommand_words(key)
                        )
                    })?;
                    local.extend(flags(arg, name, value, &words, path)?);
                }
            }
            _ => {
                let arg = find_arg(command, key)
                    .filter(|arg| arg.is_global_set())
                    .ok_or_else(|| {
                        format!(
                            "{}: unknown setting `{key}` (top-level keys are the global flags; a worker's go under [worker])",
                            path.display()
                        )
                    })?;
                global.extend(flags(arg, key, value, &words, path)?);
            }
        }
    }
    let mut result = Vec::with_capacity(argv.len() + global.len() + local.len());
    let mut argv = argv.into_iter();
    result.extend(argv.next());
    result.extend(global.into_iter().map(OsString::from));
    result.extend(argv);
    result.extend(local.into_iter().map(OsString::from));
    Ok(result)
}

/// The file section that applies to the subcommand of this command line
/// (its words in order, wherever flags and their values stand between).
fn section_of(words: &[String]) -> Option<&'static str> {
    let words: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
    let follows = |first: &str, second: &str| {
        words
            .iter()
            .position(|word| *word == first)
            .is_some_and(|at| words[at + 1..].contains(&second))
    };
    if follows("start", "worker") || follows("config", "show") {
        Some("worker")
    } else if words.contains(&"serve") {
        Some("serve")
    } else {
        None
    }
}

fn subcommand_words(section: &str) -> &'static str {
    match section {
        "worker" => "start worker",
        _ => "serve",
    }
}

fn subcommand_of<'a>(command: &'a clap::Command, section: &str) -> Option<&'a clap::Command> {
    match section {
        "worker" => command
            .find_subcommand("start")
            .and_then(|start| start.find_subcommand("worker")),
        "serve" => command.find_subcommand("serve"),
        _ => None,
    }
}

/// The flag a key names (`model_rpm` or `model-rpm`).
fn find_arg<'a>(command: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    let long = key.replace('_', "-");
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long.as_str()) && !arg.is_hide_set())
}

/// The command-line words of one setting; none when the command line gives
/// the flag or its environment variable is set.
fn flags(
    arg: &clap::Arg,
    key: &str,
    value: &Value,
    words: &[String],
    path: &Path,
) -> Result<Vec<String>, String> {
    let long = arg.get_long().unwrap_or(key);
    let flag = format!("--{long}");
    let given = words
        .iter()
        .any(|word| *word == flag || word.starts_with(&format!("{flag}=")));
    let from_env = arg
        .get_env()
        .is_some_and(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if given || from_env {
        return Ok(Vec::new());
    }
    let takes_value = !matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue
            | clap::ArgAction::SetFalse
            | clap::ArgAction::Count
            | clap::ArgAction::Help
            | clap::ArgAction::Version
    );
    let scalar = |value: &Value| -> Result<String, String> {
        match value {
            Value::String(text) => Ok(text.clone()),
            Value::Integer(number) => Ok(number.to_string()),
            Value::Float(number) => Ok(number.to_string()),
            Value::Boolean(flag) => Ok(flag.to_string()),
            _ => Err(format!(
                "{}: `{key}` must be a string, a number or a list of them",
                path.display()
            )),
        }
    };
    if !takes_value {
        return match value {
            Value::Boolean(true) => Ok(vec![flag]),
            Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(format!("{}: `{key}` is true or false", path.display())),
        };
    }
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| scalar(item).map(|text| format!("{flag}={text}")))
            .collect(),
        other => Ok(vec![format!("{flag}={}", scalar(other)?)]),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn run(file: &str, line: &str) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exo.toml");
        std::fs::write(&path, file).unwrap();
        let argv: Vec<OsString> = std::iter::once("exo")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect();
        apply(argv, &crate::args::Cli::command(), &path).map(|argv| {
            argv.into_iter()
                .skip(1)
                .map(|word| word.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves_out() {
        let file = r#"
queue = "agents"
json = true

[worker]
concurrency = 8
model_rpm = ["gpt-4o-mini=500", "claude-sonnet-4=50"]
builtin_tools = true
allow-payload-dsn = false

[serve]
addr = "0.0.0.0:9000"
"#;
        // (command line, the words it becomes)
        let cases = [
            (
                "start worker",
                "--json --queue=agents start worker --builtin-tools --concurrency=8 --model-rpm=gpt-4o-mini=500 --model-rpm=claude-sonnet-4=50",
            ),
            (
                "--queue other start worker --concurrency 2 --model-rpm x=1",
                "--json --queue other start worker --concurrency 2 --model-rpm x=1 --builtin-tools",
            ),
            ("serve", "--json --queue=agents serve --addr=0.0.0.0:9000"),
            ("task list", "--json --queue=agents task list"),
        ];
        for (line, expected) in cases {
            assert_eq!(run(file, line).unwrap().join(" "), expected, "{line}");
        }
    }

    #[test]
    fn an_unknown_key_or_a_wrong_type_is_an_error() {
        for (file, error) in [
            ("quue = \"x\"", "unknown setting `quue`"),
            (
                "[worker]\nconcurency = 1",
                "[worker] has no setting `concurency`",
            ),
            ("[workers]\nconcurrency = 1", "unknown section [workers]"),
            (
                "[worker]\nbuiltin_tools = 1",
                "`builtin_tools` is true or false",
            ),
            (
                "[worker]\nconcurrency = { a = 1 }",
                "must be a string, a number or a list",
            ),
            ("queue = ", "not valid TOML"),
        ] {
            let shown = run(file, "start worker").unwrap_err();
            assert!(shown.contains(error), "{file}: {shown}");
        }
    }
}
