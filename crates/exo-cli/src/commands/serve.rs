//! `exo serve`: the HTTP gateway and dashboard until SIGINT/SIGTERM.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use exo_gateway::{Gateway, GatewayConfig, parse_tokens};

use crate::{
    Failure, Outcome,
    args::{Global, Serve},
    commands::connect,
};

/// The environment variable that can hold the tokens' JSON.
const TOKENS_ENV: &str = "EXO_GATEWAY_TOKENS";

pub(crate) async fn run(global: Global, command: Serve) -> Outcome {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut telemetry = exo_observability::TelemetryConfig::new("exo-gateway");
    telemetry.log_filter = Some(filter);
    telemetry.metrics = false;
    let _telemetry = exo_observability::install(telemetry).ok();

    let mut config = GatewayConfig::new(command.addr);
    let tokens = match (&command.tokens_file, std::env::var(TOKENS_ENV)) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the tokens file {}", path.display()))?,
        ),
        (None, Ok(json)) if !json.trim().is_empty() => Some(json),
        _ => None,
    };
    if let Some(json) = tokens {
        config.tokens = parse_tokens(&json).map_err(|error| Failure::with_code(2, error))?;
    }
    config.cors_origins = command.cors_origins;
    for spec in &command.agents {
        let (name, path) = spec.split_once('=').ok_or_else(|| {
            Failure::with_code(2, anyhow::anyhow!("--agent takes NAME=FILE, got `{spec}`"))
        })?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent `{name}` from {path}"))?;
        let agent: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("agent `{name}` in {path} is not a JSON object"))?;
        config.agents.insert(name.to_owned(), agent);
    }
    if let Some(readers) = command.stream_readers {
        config.stream_readers = readers;
    }
    if let Some(bytes) = command.max_body_bytes {
        config.max_body_bytes = bytes;
    }
    if let Some(seconds) = command.request_timeout {
        config.request_timeout = Duration::try_from_secs_f64(seconds).map_err(|_| {
            Failure::with_code(
                2,
                anyhow::anyhow!("--request-timeout must be a positive number of seconds"),
            )
        })?;
    }
    config
        .validate()
        .map_err(|error| Failure::with_code(2, error))?;
    if global.shards.unwrap_or(1) > 1 {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "exo serve reaches one queue shard; it does not take --shards (EXO_SHARDS) yet"
            ),
        ));
    }
    let broker = connect(&global).await?;
    let gateway = Gateway::bind(broker, config).await?;
    let addr = gateway.local_addr();
    tracing::info!(%addr, "serving the API and the dashboard");
    // A long-running server must not stop because nobody reads its banner.
    crate::output::best_effort(format_args!("exo gateway listening on http://{addr}"));
    gateway.serve(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
