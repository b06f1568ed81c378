//! One module per command group.

pub(crate) mod alerts;
pub(crate) mod queue;
pub(crate) mod schedule;
pub(crate) mod serve;
pub(crate) mod start;
pub(crate) mod task;
pub(crate) mod worker;

use crate::output::outln;
use exo_broker::{Broker, BrokerConfig, Shards};
use exo_proto::Keys;

use crate::{Failure, args::Global};

/// The Redis URL, or the usage error that says how to give one.
pub(crate) fn redis_url(global: &Global) -> Result<String, Failure> {
    match &global.redis_url {
        Some(url) if !url.trim().is_empty() => Ok(url.clone()),
        _ => Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "no Redis URL: pass --redis-url or set EXO_REDIS_URL (e.g. redis://localhost:6379)"
            ),
        )),
    }
}

/// The broker settings the global flags describe: each flag given replaces
/// the library's default, which lives only in [`BrokerConfig::new`].
pub(crate) fn broker_config(global: &Global) -> Result<BrokerConfig, Failure> {
    let mut config = BrokerConfig::new(redis_url(global)?);
    apply_global(global, &mut config);
    Ok(config)
}

/// Applies the global flags that were given over `config`.
pub(crate) fn apply_global(global: &Global, config: &mut BrokerConfig) {
    if global.key_prefix.is_some() || global.queue.is_some() {
        let prefix = global
            .key_prefix
            .clone()
            .unwrap_or_else(|| config.keys.prefix().to_owned());
        let queue = global
            .queue
            .clone()
            .unwrap_or_else(|| config.keys.queue().to_owned());
        config.keys = Keys::new(prefix, queue);
    }
    if let Some(path) = &global.tls_ca_file {
        config.tls_ca_file = Some(path.clone());
    }
    if let Some(acks) = global.replica_acks {
        config.replica_acks = acks;
    }
    if let Some(functions) = global.redis_functions {
        config.functions = functions;
    }
}

/// Connects for a read or write command.
pub(crate) async fn connect(global: &Global) -> Result<Broker, Failure> {
    Ok(Broker::connect(broker_config(global)?).await?)
}

/// Connects to every shard of the queue (`--shards`; one when unsharded).
pub(crate) async fn connect_shards(global: &Global) -> Result<Shards, Failure> {
    Ok(Shards::connect(broker_config(global)?, global.shards.unwrap_or(1)).await?)
}

/// Prints a value as pretty JSON.
pub(crate) fn print_json(value: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
