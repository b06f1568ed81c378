//! `exo`: run workers, submit and follow tasks, inspect the fleet and the
//! queue.
//!
//! Exit codes: 0 ok, 1 not found or invalid input, 2 usage error, 3 Redis
//! unreachable (`exo alerts check` and `exo worker health` have their own,
//! documented with each command).

#![allow(clippy::print_stderr)]

mod args;
mod commands;
mod config_file;
mod output;
mod render;

use std::process::ExitCode;

use crate::args::{Cli, Command};

/// mimalloc instead of the system allocator: a worker allocates and frees
/// per task (each run's future, its events, the Redis commands), and
/// glibc's malloc spent a fifth of a busy worker's CPU on that
/// (docs/operations.md, "Worker CPU").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    pub(crate) fn invalid(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }

    pub(crate) fn with_code(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<exo_broker::Error> for Failure {
    fn from(error: exo_broker::Error) -> Self {
        let code = if error.is_unreachable() { 3 } else { 1 };
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<exo_gateway::Error> for Failure {
    fn from(error: exo_gateway::Error) -> Self {
        match error {
            exo_gateway::Error::Broker(error) => error.into(),
            exo_gateway::Error::Config(_) => Failure::with_code(2, error),
            error => Failure::with_code(1, error),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<exo_broker::Error>() {
            Ok(broker) => broker.into(),
            Err(error) => Failure { code: 1, error },
        }
    }
}

pub(crate) type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse_with_defaults();
    // Commands that need neither Redis nor a runtime.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command_with_defaults();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "exo", &mut script);
            output::text(format_args!("{}", String::from_utf8_lossy(&script)));
            return ExitCode::SUCCESS;
        }
        Command::ManPages { directory } => {
            return match write_man_pages(directory) {
                Ok(count) => {
                    eprintln!("wrote {count} man pages to {}", directory.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: cannot write the man pages: {error:#}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // Client commands log warnings to stderr, and export their spans (the
    // submit span, parent of the worker's execute span) when OTLP is
    // configured. `exo start worker` installs its own.
    let telemetry = match &cli.command {
        Command::Start(_) | Command::Serve(_) => None,
        _ => {
            let mut config = exo_observability::TelemetryConfig::new("exo");
            // Warnings only, but the CLI's own spans (the submit span) stay
            // enabled so they can be exported and propagated.
            config.log_filter =
                Some(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,exo=info".to_owned()));
            config.metrics = false;
            match runtime.block_on(async { exo_observability::install(config) }) {
                Ok(telemetry) => Some(telemetry),
                Err(error) => {
                    eprintln!("warning: telemetry not installed: {error}");
                    None
                }
            }
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Start(command) => commands::start::run(cli.global, command).await,
            Command::Worker(command) => commands::worker::run(cli.global, command).await,
            Command::Task(command) => commands::task::run(cli.global, command).await,
            Command::Queue(command) => commands::queue::run(cli.global, command).await,
            Command::Dlq(command) => commands::queue::run_dlq(cli.global, command).await,
            Command::Usage(args) => commands::queue::run_usage(cli.global, args).await,
            Command::Config(crate::args::ConfigCommand::Show(args)) => {
                commands::start::show_config(cli.global, *args).await
            }
            Command::Alerts(command) => commands::alerts::run(cli.global, command).await,
            Command::Schedule(command) => commands::schedule::run(cli.global, command).await,
            Command::Serve(command) => commands::serve::run(cli.global, *command).await,
            Command::Completions { .. } | Command::ManPages { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    if let Some(telemetry) = telemetry {
        let _ = telemetry.shutdown();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// Writes `exo.1` and one page per subcommand (`exo-task-submit.1`, ...)
/// into `directory`; returns how many.
fn write_man_pages(directory: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    let mut command = Cli::command_with_defaults();
    // Building names every subcommand for its page: `exo-task-submit`.
    command.build();
    let mut written = 0;
    let mut pending = vec![command];
    while let Some(command) = pending.pop() {
        if command.is_hide_set() {
            continue;
        }
        pending.extend(command.get_subcommands().cloned());
        let name = command
            .get_display_name()
            .unwrap_or(command.get_name())
            .to_owned();
        let mut roff = Vec::new();
        clap_mangen::Man::new(command).render(&mut roff)?;
        let path = directory.join(format!("{name}.1"));
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
    }
    Ok(written)
}
