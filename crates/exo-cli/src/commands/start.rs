//! `exo start worker`.

use std::{process::ExitCode, sync::Arc, time::Duration};

use exo_agent::{McpPolicy, ToolRegistry};
use exo_worker::{ExecutorKind, WorkerBuilder, WorkerConfig};

use crate::{
    Failure, Outcome,
    args::{Executor, Global, LogFormat, Start, StartWorker},
    commands::{apply_global, redis_url},
};

pub(crate) async fn run(global: Global, command: Start) -> Outcome {
    match command {
        Start::Worker(args) => start_worker(global, *args).await,
    }
}

/// Validates the flags into a worker config (the one place flags become
/// settings).
fn worker_config(global: &Global, args: &StartWorker) -> Result<WorkerConfig, Failure> {
    let mut config = WorkerConfig::new(redis_url(global)?);
    apply_global(global, &mut config.broker);
    let seconds = |name: &str, value: f64| {
        if value.is_finite() && (0.0..=86_400.0).contains(&value) {
            Ok(Duration::from_secs_f64(value))
        } else {
            Err(Failure::with_code(
                2,
                anyhow::anyhow!("--{name} must be a number of seconds from 0 to 86400"),
            ))
        }
    };
    config.worker_id = args.worker_id.clone();
    config.shards = global.shards.unwrap_or(1);
    if let Some(concurrency) = args.concurrency {
        config.concurrency = concurrency;
    }
    if let Some(lookahead) = args.lookahead {
        config.lookahead = lookahead;
    }
    if let Some(window) = args.lookahead_window {
        config.lookahead_window = Duration::from_millis(window);
    }
    if let Some(ttl) = args.heartbeat_ttl {
        config.broker.heartbeat_ttl = Duration::from_secs(ttl);
    }
    if let Some(timeout) = args.drain_timeout {
        config.drain_timeout = Duration::from_secs(timeout);
    }
    if let Some(timeout) = args.approval_timeout {
        config.approval_timeout = Duration::from_secs(timeout);
    }
    if let Some(lease) = args.lease {
        config.broker.lease = Duration::from_secs(lease);
    }
    config.model_limits = model_limits(&args.model_rpm, &args.model_tpm)?;
    config.credential_aliases = credential_aliases(&args.credential_alias)?;
    config.prices = prices(&args.prices)?;
    config.broker.concurrency =
        concurrency_rules(&args.concurrency_limit, args.concurrency_limit_max)?;
    if let Some(ttl) = args.task_ttl {
        config.broker.task_ttl = Duration::from_secs(ttl);
    }
    if let Some(ttl) = args.event_ttl {
        config.broker.event_ttl = Duration::from_secs(ttl);
    }
    if let Some(retries) = args.max_retries {
        config.broker.retry.max_retries = retries;
    }
    if let Some(backoff) = args.retry_backoff {
        config.broker.retry.base_backoff = seconds("retry-backoff", backoff)?;
    }
    if let Some(interval) = args.stats_interval {
        config.stats_interval = seconds("stats-interval", interval)?;
    }
    config.memory.stores = args
        .memory_stores
        .iter()
        .map(|spec| exo_worker::NamedStore::parse(spec))
        .collect::<Result<_, _>>()
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    config.memory.allow_payload_dsn = args.allow_payload_dsn;
    config.executor = match args.executor {
        Executor::Local => ExecutorKind::Local,
        Executor::Temporal => ExecutorKind::Temporal,
    };
    Ok(config)
}

/// `exo config show`: the configuration `exo start worker` would run with,
/// secrets masked; TOML (the config file's form), or JSON with `--json`.
pub(crate) async fn show_config(global: Global, args: StartWorker) -> Outcome {
    let config = worker_config(&global, &args)?;
    let seconds = |duration: Duration| serde_json::json!(duration.as_secs_f64());
    let masked_stores: Vec<String> = args
        .memory_stores
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dsn)) => format!("{name}={}", exo_broker::mask_url(dsn)),
            None => spec.clone(),
        })
        .collect();
    #[cfg(feature = "http")]
    let http_tool_allow = args.http_tool_allow.clone();
    #[cfg(not(feature = "http"))]
    let http_tool_allow: Vec<String> = Vec::new();
    let rules = &config.broker.concurrency;
    let shown = serde_json::json!({
        "config_file": crate::config_file::config_path(&std::env::args_os().collect::<Vec<_>>())
            .map(|path| path.display().to_string()),
        "redis_url": exo_broker::mask_url(&config.broker.redis_url),
        "queue": config.broker.keys.queue(),
        "key_prefix": config.broker.keys.prefix(),
        "replica_acks": config.broker.replica_acks,
        "redis_functions": config.broker.functions,
        "shards": config.shards,
        "worker": {
            "worker_id": config.worker_id,
            "concurrency": config.concurrency,
            "lookahead": config.lookahead,
            "lookahead_window_ms": config.lookahead_window.as_millis() as u64,
            "executor": match config.executor {
                ExecutorKind::Local => "local",
                ExecutorKind::Temporal => "temporal",
            },
            "heartbeat_ttl": seconds(config.broker.heartbeat_ttl),
            "drain_timeout": seconds(config.drain_timeout),
            "approval_timeout": seconds(config.approval_timeout),
            "lease": seconds(config.broker.lease),
            "max_retries": config.broker.retry.max_retries,
            "retry_backoff": seconds(config.broker.retry.base_backoff),
            "task_ttl": seconds(config.broker.task_ttl),
            "event_ttl": seconds(config.broker.event_ttl),
            "stats_interval": seconds(config.stats_interval),
            "model_rpm": config.model_limits.iter().filter(|rule| rule.requests > 0)
                .map(|rule| format!("{}={}", rule.name, rule.requests)).collect::<Vec<_>>(),
            "model_tpm": config.model_limits.iter().filter(|rule| rule.tokens > 0)
                .map(|rule| format!("{}={}", rule.name, rule.tokens)).collect::<Vec<_>>(),
            "credential_alias": config.credential_aliases.iter()
                .map(|(provider, alias)| format!("{provider}={alias}")).collect::<Vec<_>>(),
            "concurrency_limit": rules.default.map(|limit| limit.to_string()).into_iter()
                .chain(rules.keys.iter().map(|(key, limit)| format!("{key}={limit}")))
                .collect::<Vec<_>>(),
            "concurrency_limit_max": rules.max,
            "price": config.prices.models.iter()
                .map(|(model, price)| format!("{model}={},{}", price.input, price.output))
                .collect::<Vec<_>>(),
            "memory_store": masked_stores,
            "allow_payload_dsn": config.memory.allow_payload_dsn,
            "mcp_allow_command": args.mcp_allow_commands,
            "mcp_allow_env": args.mcp_allow_env,
            "mcp_allow_cwd": args.mcp_allow_cwd,
            "mcp_allow_http_host": args.mcp_allow_http_hosts,
            "http_tool_allow": http_tool_allow,
            "builtin_tools": args.builtin_tools,
            "metrics_addr": args.metrics_addr.map(|address| address.to_string()),
        },
    });
    if global.json {
        crate::commands::print_json(&shown);
        return Ok(ExitCode::SUCCESS);
    }
    let text = toml::to_string_pretty(&without_nulls(shown))
        .map_err(|error| Failure::invalid(anyhow::Error::new(error)))?;
    crate::output::text(format_args!("{text}"));
    Ok(ExitCode::SUCCESS)
}

/// TOML has no null: unset settings are left out.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key, without_nulls(value)))
                .collect(),
        ),
        other => other,
    }
}

/// The banner's Temporal line in temporal mode: where workflows run. The
/// settings come from the environment (`TEMPORAL_HOST`,
/// `TEMPORAL_NAMESPACE`, `EXO_TEMPORAL_TASK_QUEUE`,
/// `EXO_TEMPORAL_HEARTBEAT_TIMEOUT`); invalid ones stop the start here.
#[cfg(feature = "temporal")]
fn temporal_banner(config: &WorkerConfig) -> Result<String, Failure> {
    if config.executor != ExecutorKind::Temporal {
        return Ok(String::new());
    }
    let settings = exo_worker::TemporalConfig::from_env()
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    Ok(format!(
        "\n  temporal:    {} (namespace {}, task queue {})",
        settings.host, settings.namespace, settings.task_queue
    ))
}

/// Without the `temporal` feature the worker refuses temporal mode before
/// the banner, so there is never a Temporal line.
#[cfg(not(feature = "temporal"))]
fn temporal_banner(_config: &WorkerConfig) -> Result<String, Failure> {
    Ok(String::new())
}

/// Logs, metrics and (when configured) OTLP for a worker process.
fn install_telemetry(format: LogFormat) -> Result<exo_observability::Telemetry, Failure> {
    let mut config = exo_observability::TelemetryConfig::new("exo-worker");
    config.log_format = match format {
        LogFormat::Pretty => exo_observability::LogFormat::Pretty,
        LogFormat::Compact => exo_observability::LogFormat::Compact,
        LogFormat::Json => exo_observability::LogFormat::Json,
    };
    config.metrics = true;
    let telemetry = exo_observability::install(config).map_err(Failure::invalid)?;
    exo_observability::record::describe_metrics();
    Ok(telemetry)
}

/// `--model-rpm` and `--model-tpm` as one rule per model, in the order
/// first named.
fn model_limits(rpm: &[String], tpm: &[String]) -> Result<Vec<exo_broker::LimitRule>, Failure> {
    let mut rules: Vec<exo_broker::LimitRule> = Vec::new();
    let flags = rpm
        .iter()
        .map(|value| ("model-rpm", value))
        .chain(tpm.iter().map(|value| ("model-tpm", value)));
    for (flag, value) in flags {
        let parsed = value
            .rsplit_once('=')
            .and_then(|(model, limit)| Some((model.trim(), limit.trim().parse::<u64>().ok()?)))
            .filter(|(model, limit)| !model.is_empty() && *limit > 0);
        let Some((model, limit)) = parsed else {
            return Err(Failure::with_code(
                2,
                anyhow::anyhow!("--{flag} takes MODEL=N with N a positive number, not `{value}`"),
            ));
        };
        let index = match rules.iter().position(|rule| rule.name == model) {
            Some(index) => index,
            None => {
                rules.push(exo_broker::LimitRule {
                    name: model.to_owned(),
                    requests: 0,
                    tokens: 0,
                    window: exo_broker::DEFAULT_WINDOW,
                });
                rules.len() - 1
            }
        };
        if flag == "model-rpm" {
            rules[index].requests = u32::try_from(limit).unwrap_or(u32::MAX);
        } else {
            rules[index].tokens = limit;
        }
    }
    Ok(rules)
}

/// `--credential-alias PROVIDER=ALIAS` (repeatable; the last for a provider
/// wins). The worker's configuration checks the names.
fn credential_aliases(
    values: &[String],
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((provider, alias)) => Ok((provider.trim().to_owned(), alias.trim().to_owned())),
            None => Err(Failure::with_code(
                2,
                anyhow::anyhow!("--credential-alias takes PROVIDER=ALIAS, not `{value}`"),
            )),
        })
        .collect()
}

/// `--price MODEL=IN,OUT` (repeatable), dollars per million tokens.
fn prices(values: &[String]) -> Result<exo_proto::PriceTable, Failure> {
    let mut table = exo_proto::PriceTable::default();
    for value in values {
        let parsed = value.rsplit_once('=').and_then(|(model, prices)| {
            let (input, output) = prices.split_once(',')?;
            let input: f64 = input.trim().parse().ok()?;
            let output: f64 = output.trim().parse().ok()?;
            let valid = |price: f64| price.is_finite() && price >= 0.0;
            (!model.trim().is_empty() && valid(input) && valid(output))
                .then(|| (model.trim().to_owned(), exo_proto::Price { input, output }))
        });
        let Some((model, price)) = parsed else {
            return Err(Failure::with_code(
                2,
                anyhow::anyhow!(
                    "--price takes MODEL=INPUT,OUTPUT in dollars per million tokens (e.g. gpt-4o-mini=0.15,0.6), not `{value}`"
                ),
            ));
        };
        table.models.insert(model, price);
    }
    Ok(table)
}

/// `--concurrency-limit [KEY=]N` (repeatable) and `--concurrency-limit-max N`.
fn concurrency_rules(
    limits: &[String],
    max: Option<u32>,
) -> Result<exo_broker::ConcurrencyRules, Failure> {
    let mut rules = exo_broker::ConcurrencyRules {
        max,
        ..Default::default()
    };
    for value in limits {
        let invalid = || {
            Failure::with_code(
                2,
                anyhow::anyhow!(
                    "--concurrency-limit takes N or KEY=N with N a positive number, not `{value}`"
                ),
            )
        };
        let (key, limit) = match value.rsplit_once('=') {
            Some((key, limit)) => (Some(key.trim()), limit),
            None => (None, value.as_str()),
        };
        let limit = limit
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|limit| *limit > 0)
            .ok_or_else(invalid)?;
        match key {
            Some(key) => {
                exo_proto::check_concurrency_key(key)
                    .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
                rules.keys.insert(key.to_owned(), limit);
            }
            None => rules.default = Some(limit),
        }
    }
    Ok(rules)
}

async fn start_worker(global: Global, args: StartWorker) -> Outcome {
    let config = worker_config(&global, &args)?;
    let telemetry = install_telemetry(args.log_format)?;
    let mut tools = ToolRegistry::new();
    if args.builtin_tools {
        exo_agent::builtin::register_all(&mut tools);
    }
    #[cfg(feature = "http")]
    if !args.http_tool_allow.is_empty() {
        let tool = exo_agent::HttpTool::new(&args.http_tool_allow).map_err(|error| {
            Failure::with_code(2, anyhow::anyhow!("--http-tool-allow: {error}"))
        })?;
        tools.register(tool);
    }
    let mut mcp = McpPolicy::deny_all();
    for line in &args.mcp_allow_commands {
        mcp = mcp.allow_command(line);
    }
    for name in &args.mcp_allow_env {
        mcp = mcp.allow_env(name.clone());
    }
    for directory in &args.mcp_allow_cwd {
        mcp = mcp.allow_cwd(directory.clone());
    }
    for host in &args.mcp_allow_http_hosts {
        mcp = mcp.allow_http_host(host.clone());
    }
    let worker = WorkerBuilder::from_config(config.clone())
        .tools(tools)
        .mcp_policy(mcp)
        .build()
        .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
    let temporal = temporal_banner(&config)?;
    let limits: String = config
        .model_limits
        .iter()
        .map(|rule| {
            let per_minute =
                |value: u64, unit: &str| (value > 0).then(|| format!("{value} {unit}/min"));
            let parts: Vec<String> = [
                per_minute(u64::from(rule.requests), "requests"),
                per_minute(rule.tokens, "tokens"),
            ]
            .into_iter()
            .flatten()
            .collect();
            format!("\n  limit:       {} {}", rule.name, parts.join(", "))
        })
        .chain(
            config
                .credential_aliases
                .iter()
                .map(|(provider, alias)| format!("\n  credential:  {provider} as {alias}")),
        )
        .collect();
    crate::output::best_effort(format_args!(
        "exo worker {}\n  redis:       {}\n  queue:       {}\n  concurrency: {}\n  executor:    {}{temporal}{limits}",
        worker.id(),
        exo_broker::mask_url(&config.broker.redis_url),
        config.broker.keys.queue(),
        config.concurrency,
        match config.executor {
            ExecutorKind::Local => "local",
            ExecutorKind::Temporal => "temporal",
        }
    ));
    let status = worker.status();
    let server = match args.metrics_addr {
        Some(address) => {
            let readiness: exo_observability::ReadinessCheck =
                Arc::new(move || exo_observability::Readiness {
                    redis_connected: status.connected(),
                    draining: status.draining(),
                });
            let server = exo_observability::serve_http(address, telemetry.metrics(), readiness)
                .await
                .map_err(|error| Failure::with_code(2, anyhow::Error::new(error)))?;
            crate::output::best_effort(format_args!(
                "  metrics:     http://{}/metrics (also /healthz, /readyz)",
                server.local_addr()
            ));
            Some(server)
        }
        None => None,
    };
    tokio::spawn(watch_signals(worker.shutdown_handle()));
    tokio::spawn(dump_metrics_on_sigusr1(telemetry.metrics()));
    let result = worker.run().await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    if let Err(error) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        tracing::warn!(%error, "telemetry did not shut down cleanly");
    }
    result.map_err(|error| Failure::invalid(anyhow::Error::new(error)))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGUSR1 prints the in-memory metrics registry to stderr (useful when
/// neither `--metrics-addr` nor OTLP is configured).
async fn dump_metrics_on_sigusr1(metrics: Option<exo_observability::MetricsHandle>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Some(metrics), Ok(mut user1)) = (metrics, signal(SignalKind::user_defined1())) else {
        return;
    };
    while user1.recv().await.is_some() {
        eprintln!("{}", metrics.render());
    }
}

/// First SIGINT/SIGTERM: drain. Second: force.
async fn watch_signals(handle: exo_worker::ShutdownHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutdown requested; draining (send the signal again to force)");
    handle.shutdown();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: stopping running tasks now");
    handle.force();
}
