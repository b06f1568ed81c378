//! The typed operation layer: one module per Lua script.
//!
//! Each module owns its `.lua` file (`include_str!`), a call struct whose
//! fields are the script's own arguments (in the order of the script's
//! header), and one typed reply parsed in one place. [`Operation`] ties them
//! together and [`Scripts::call`] runs one in one round trip.
//!
//! Every script gets the same keys, from [`ScriptContext`]: the queue's keys
//! and, for keys of one task or worker, their family prefix (the script
//! appends an id it found inside the script). Every key a script touches is
//! therefore passed as a key, built in Rust by [`exo_proto::Keys`], and
//! covered by the Cluster slot check at connect. The shared settings
//! (`ARGV[1..6]`) come next; a script's own arguments start at `ARGV[7]`.
//!
//! Events are rendered by serde here, and failure kinds come from
//! [`ErrorType`]: the few that a script writes on its
//! own (a task cancelled before it started, a payload that cannot run, a
//! worker lost) are templates, rendered once with placeholder strings and
//! compiled into the script's source, which fills the placeholders with the
//! JSON-encoded values it found.
//!
//! Adding a hash field or a script touches one module here and one `.lua`
//! file.

use exo_proto::{ErrorEvent, ErrorType, RunStatus, StreamEvent};
use std::sync::atomic::Ordering;

use fred::{
    prelude::*,
    types::{MultipleKeys, Value, scripts::Script},
};

use crate::{
    broker::Broker,
    config::BrokerConfig,
    error::{Error, RedisCode, Result},
};

pub(crate) mod admit;
pub(crate) mod cancel;
pub(crate) mod claim;
pub(crate) mod decide;
pub(crate) mod deregister;
pub(crate) mod finish;
pub(crate) mod fleet;
pub(crate) mod heartbeat;
pub(crate) mod list;
pub(crate) mod publish;
pub(crate) mod reap;
pub(crate) mod redrive;
pub(crate) mod release;
pub(crate) mod reply;
pub(crate) mod schedule;
pub(crate) mod stats;
pub(crate) mod submit;

/// The prelude every script starts with.
const COMMON: &str = include_str!("common.lua");

/// One Lua script: its arguments, and how its reply reads.
pub(crate) trait Operation {
    /// What the script returns, parsed.
    type Reply;
    /// The script's name, for errors.
    const NAME: &'static str;
    /// Waits for replica acknowledgements when the broker is configured to
    /// (a write a client was promised: a submit, a final write, a cancel).
    const DURABLE: bool = false;
    /// The compiled script.
    fn script(scripts: &Scripts) -> &Script;
    /// The script's own arguments (`ARGV[7...]`), appended to `argv`.
    fn arguments(&self, argv: &mut Vec<String>);
    /// Reads the script's reply.
    fn parse(&self, value: Value) -> Result<Self::Reply>;
}

/// The keys and shared settings every script gets, built once per broker.
#[derive(Debug)]
pub(crate) struct ScriptContext {
    names: Vec<String>,
    keys: MultipleKeys,
    settings: Vec<String>,
    /// `FCALL` as a command fred pipelines like any other (its own
    /// `fcall` is treated as blocking: sent alone, and left out of the
    /// unresponsive-connection check), routed to the queue's hash slot.
    fcall: fred::types::CustomCommand,
    /// What follows the function's name in an `FCALL`: the key count,
    /// the keys and the shared settings, built once (a clone shares their
    /// bytes).
    fcall_prefix: Vec<Value>,
    /// The same with two keys only, the queue and the task family: the
    /// library keeps each key layout it was given whole, by those two
    /// (see common.lua's `setup`).
    fcall_prefix_short: Vec<Value>,
    /// Whether the server knows this layout: a call gave it every key and
    /// no call has been told `NOLAYOUT` since.
    layout_known: std::sync::atomic::AtomicBool,
}

impl ScriptContext {
    pub(crate) fn new(config: &BrokerConfig) -> Self {
        let keys = &config.keys;
        // The order is common.lua's KEYS header.
        let names: Vec<String> = vec![
            keys.queue().to_owned(),
            keys.delayed(),
            keys.delayed_payloads(),
            keys.dead_letter(),
            keys.task_index(),
            keys.task_timeline(),
            keys.worker_registry(),
            keys.active(),
            keys.fleet_beat(),
            keys.fleet_quiet_until(),
            keys.active_sweep(),
            keys.task_prefix(),
            keys.event_stream_prefix(),
            keys.events_channel_prefix(),
            keys.cancel_channel_prefix(),
            keys.worker_prefix(),
            keys.idempotency_prefix(),
            keys.approvals(),
            keys.journal_prefix(),
            keys.limit_prefix(),
            keys.schedules(),
            keys.schedules_due(),
            keys.prioritized(),
            keys.concurrency_prefix(),
            keys.concurrency_waiting(),
            keys.usage_prefix(),
        ];
        // The order is common.lua's ARGV header.
        let settings = vec![
            config.max_payload_bytes.to_string(),
            keys.group(),
            config.task_ttl.as_secs().max(1).to_string(),
            config.event_ttl.as_secs().max(1).to_string(),
            config.event_stream_max_len.to_string(),
            config.dead_letter_max_len.to_string(),
        ];
        let slot = exo_proto::cluster_slot(keys.queue());
        let fcall_prefix = std::iter::once(names.len().to_string())
            .chain(names.iter().cloned())
            .chain(settings.iter().cloned())
            .map(Value::from)
            .collect();
        let fcall_prefix_short = ["2".to_owned(), names[0].clone(), names[11].clone()]
            .into_iter()
            .chain(settings.iter().cloned())
            .map(Value::from)
            .collect();
        ScriptContext {
            fcall_prefix,
            fcall_prefix_short,
            layout_known: std::sync::atomic::AtomicBool::new(false),
            keys: names.clone().into(),
            names,
            settings,
            fcall: fred::types::CustomCommand::new(
                "FCALL",
                fred::types::ClusterHash::Custom(slot),
                false,
            ),
        }
    }
}

/// Every script, compiled once: as one function library (`FCALL`, loaded
/// on `Function not found`) and as scripts (`EVALSHA`, reloaded on
/// NOSCRIPT) for servers without functions.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) admit: Script,
    pub(crate) submit: Script,
    pub(crate) claim: Script,
    pub(crate) decide: Script,
    pub(crate) finish: Script,
    pub(crate) publish: Script,
    pub(crate) cancel: Script,
    pub(crate) heartbeat: Script,
    pub(crate) reap: Script,
    pub(crate) release: Script,
    pub(crate) fleet: Script,
    pub(crate) list: Script,
    pub(crate) stats: Script,
    pub(crate) redrive: Script,
    pub(crate) deregister: Script,
    pub(crate) schedule: Script,
    pub(crate) library: Library,
}

/// The operations as one Redis function library. The prelude runs once, at
/// `FUNCTION LOAD`; each call only runs `setup` and its operation, where an
/// `EVALSHA` runs the whole prelude (defining every helper) first. The
/// library's name carries a hash of its source, so workers of two versions
/// on one server each call their own.
#[derive(Debug)]
pub(crate) struct Library {
    /// `exo_<first 16 hex digits of the source's SHA-1>`.
    pub(crate) name: String,
    /// The `FUNCTION LOAD` source.
    pub(crate) code: String,
    /// Each operation's function name.
    functions: Vec<(&'static str, Value)>,
}

impl Library {
    /// The function that runs `operation`.
    pub(crate) fn function(&self, operation: &str) -> Value {
        self.functions
            .iter()
            .find(|(name, _)| *name == operation)
            .map(|(_, function)| function.clone())
            .unwrap_or_else(|| Value::from(format!("{}_{operation}", self.name)))
    }
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let prelude = prelude();
        let bodies = [
            (admit::AdmitCall::NAME, admit::LUA),
            (submit::SubmitCall::NAME, submit::LUA),
            (claim::ClaimCall::NAME, claim::LUA),
            (decide::DecideCall::NAME, decide::LUA),
            (finish::FinishBatch::NAME, finish::LUA),
            (publish::PublishCall::NAME, publish::LUA),
            (cancel::CancelCall::NAME, cancel::LUA),
            (heartbeat::HeartbeatCall::NAME, heartbeat::LUA),
            (reap::ReapCall::NAME, reap::LUA),
            (release::ReleaseCall::NAME, release::LUA),
            (fleet::FleetCall::NAME, fleet::LUA),
            (list::ListCall::NAME, list::LUA),
            (stats::StatsCall::NAME, stats::LUA),
            (redrive::RedriveCall::NAME, redrive::LUA),
            (deregister::DeregisterCall::NAME, deregister::LUA),
            (schedule::ScheduleCall::NAME, schedule::LUA),
        ];
        let script = |body: &str| Script::from_lua(format!("{prelude}setup(KEYS, ARGV)\n{body}"));
        Scripts {
            admit: script(admit::LUA),
            submit: script(submit::LUA),
            claim: script(claim::LUA),
            decide: script(decide::LUA),
            finish: script(finish::LUA),
            publish: script(publish::LUA),
            cancel: script(cancel::LUA),
            heartbeat: script(heartbeat::LUA),
            reap: script(reap::LUA),
            release: script(release::LUA),
            fleet: script(fleet::LUA),
            list: script(list::LUA),
            stats: script(stats::LUA),
            redrive: script(redrive::LUA),
            deregister: script(deregister::LUA),
            schedule: script(schedule::LUA),
            library: library(&prelude, &bodies),
        }
    }
}

/// The library source: the prelude, then each operation registered as a
/// function whose body is the script's (its `KEYS` and `ARGV` are the
/// function's arguments).
fn library(prelude: &str, bodies: &[(&'static str, &str)]) -> Library {
    let mut source = String::from(prelude);
    for (operation, body) in bodies {
        source.push_str(&format!(
            "redis.register_function('\u{1}_{operation}', function(KEYS, ARGV)\nsetup(KEYS, ARGV)\n{body}\nend)\n"
        ));
    }
    let hash = fred::util::sha1_hash(&source);
    let name = format!("exo_{}", &hash[..16]);
    let code = format!(
        "#!lua name={name}\n{}",
        source.replace("'\u{1}_", &format!("'{name}_"))
    );
    let functions = bodies
        .iter()
        .map(|(operation, _)| (*operation, Value::from(format!("{name}_{operation}"))))
        .collect();
    Library {
        name,
        code,
        functions,
    }
}

/// Placeholders in the event templates; common.lua's `fill` replaces each,
/// quotes included, with its JSON-encoded value.
const AGENT: &str = "\u{1}agent";
const MESSAGE: &str = "\u{1}message";
const ERROR_TYPE: &str = "\u{1}error_type";
const APPROVAL: &str = "\u{1}approval";

/// The event templates as Lua string constants, then common.lua.
fn prelude() -> String {
    let status = |status| StreamEvent::status(status, AGENT, MESSAGE).to_json();
    let error = |recoverable| {
        StreamEvent::Error(ErrorEvent {
            error: MESSAGE.to_owned(),
            error_type: ERROR_TYPE.to_owned(),
            agent_name: AGENT.to_owned(),
            step_number: None,
            recoverable,
        })
        .to_json()
    };
    let error_types = [
        ("INVALID_PAYLOAD", ErrorType::InvalidPayload),
        ("WORKER_LOST", ErrorType::WorkerLost),
        ("LOST_PAYLOAD", ErrorType::LostPayload),
        ("LOST_ENTRY", ErrorType::LostEntry),
    ]
    .iter()
    .map(|(name, kind)| format!("{name} = {}", lua_string(kind.as_str())))
    .collect::<Vec<_>>()
    .join(", ");
    // A `status` event with an extension field (reference readers ignore
    // it): the decision on a call that waited for approval.
    let decided = {
        let mut event =
            serde_json::to_value(StreamEvent::status(RunStatus::Running, AGENT, MESSAGE))
                .expect("events serialize");
        event["approval"] = serde_json::Value::from(APPROVAL);
        event.to_string()
    };
    format!(
        "local STATUS_CANCELLED = {}\nlocal STATUS_ERROR = {}\nlocal STATUS_DECIDED = {}\nlocal ERROR_FATAL = {}\nlocal ERROR_RECOVERABLE = {}\nlocal ERROR_TYPES = {{ {error_types} }}\n{COMMON}",
        lua_string(&status(RunStatus::Cancelled)),
        lua_string(&status(RunStatus::Error)),
        lua_string(&decided),
        lua_string(&error(false)),
        lua_string(&error(true)),
    )
}

/// The library has not been given this call's key layout whole yet.
fn is_no_layout(error: &Error) -> bool {
    matches!(error.redis_code(), Some(RedisCode::Other(code)) if code == "NOLAYOUT")
}

/// A Lua long-bracket string holding `text` exactly.
fn lua_string(text: &str) -> String {
    let mut level = 0;
    while text.contains(&format!("]{}]", "=".repeat(level))) {
        level += 1;
    }
    let equals = "=".repeat(level);
    format!("[{equals}[{text}]{equals}]")
}

impl Broker {
    /// Runs one operation in one round trip (with a pipelined `WAIT` when
    /// it is durable and replica acknowledgements are configured).
    pub(crate) async fn call<O: Operation>(&self, operation: &O) -> Result<O::Reply> {
        let context = &self.inner.context;
        let mut argv = context.settings.clone();
        operation.arguments(&mut argv);
        let mut reloaded = false;
        let mut every_key = !context.layout_known.load(Ordering::Relaxed);
        loop {
            let functions = self.inner.functions.load(Ordering::Relaxed);
            let result = if O::DURABLE && self.inner.config.replica_acks > 0 {
                self.eval_acknowledged::<O>(functions, argv.clone()).await
            } else {
                self.count();
                if functions {
                    let call = self.fcall_arguments::<O>(&argv, every_key);
                    let result = self
                        .inner
                        .client
                        .custom::<Value, _>(context.fcall.clone(), call)
                        .await
                        .map_err(Error::from);
                    if every_key && result.is_ok() {
                        context.layout_known.store(true, Ordering::Relaxed);
                    }
                    result
                } else {
                    O::script(&self.inner.scripts)
                        .evalsha_with_reload::<Value, _, _>(
                            &self.inner.client,
                            context.keys.clone(),
                            argv.clone(),
                        )
                        .await
                        .map_err(Error::from)
                }
            };
            match result {
                Ok(value) => return operation.parse(value),
                Err(error)
                    if functions
                        && !reloaded
                        && error.redis_code() == Some(&RedisCode::NoFunction) =>
                {
                    reloaded = true;
                    self.load_library(true).await?;
                }
                // A server that has not seen this layout yet (new,
                // restarted, or its library reloaded) ran nothing: the
                // call goes again with every key.
                Err(error) if functions && !every_key && is_no_layout(&error) => {
                    every_key = true;
                    context.layout_known.store(false, Ordering::Relaxed);
                }
                Err(error) if functions && functions_refused(&error) => {
                    self.scripts_instead(&error);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `FCALL`'s arguments: the function, the keys (every one, or the two
    /// that name a layout the server knows), then `argv` (which starts
    /// with the shared settings).
    fn fcall_arguments<O: Operation>(&self, argv: &[String], every_key: bool) -> Vec<Value> {
        let context = &self.inner.context;
        let own = argv.get(context.settings.len()..).unwrap_or_default();
        let prefix = if every_key {
            &context.fcall_prefix
        } else {
            &context.fcall_prefix_short
        };
        let mut call = Vec::with_capacity(1 + prefix.len() + own.len());
        call.push(self.inner.scripts.library.function(O::NAME));
        call.extend(prefix.iter().cloned());
        call.extend(own.iter().map(|argument| Value::from(argument.as_str())));
        call
    }

    /// Loads the function library at connect, unless the server has it
    /// already (a library of the same source has the same name); a server
    /// or user without functions switches this broker to scripts.
    pub(crate) async fn load_library_at_connect(&self) -> Result<()> {
        if !self.inner.functions.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.load_library(false).await
    }

    /// Loads the function library (on every primary under Cluster). A
    /// server or user that cannot load it switches this broker to scripts.
    async fn load_library(&self, replace: bool) -> Result<()> {
        let library = &self.inner.scripts.library;
        self.count();
        let loaded: std::result::Result<Value, _> = if self.inner.url.is_cluster() {
            self.inner
                .client
                .function_load_cluster(replace, library.code.as_str())
                .await
        } else {
            self.inner
                .client
                .function_load(replace, library.code.as_str())
                .await
        };
        match loaded.map_err(Error::from) {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("already exists") => Ok(()),
            Err(error) if functions_refused(&error) => {
                self.scripts_instead(&error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn scripts_instead(&self, error: &Error) {
        if self.inner.functions.swap(false, Ordering::Relaxed) {
            tracing::info!(%error, "Redis functions are not available; running the operations as scripts (EVALSHA)");
        }
    }

    /// The operation and a `WAIT` for `replica_acks` replicas, pipelined:
    /// the write is on a replica before this returns, still in one round
    /// trip.
    async fn eval_acknowledged<O: Operation>(
        &self,
        functions: bool,
        argv: Vec<String>,
    ) -> Result<Value> {
        let acks = self.inner.config.replica_acks;
        let keys = &self.inner.context.names;
        let timeout = self.inner.config.replica_ack_timeout.as_millis().max(1) as i64;
        let script = O::script(&self.inner.scripts);
        for attempt in 0..2 {
            let pipeline = self.inner.client.pipeline();
            if functions {
                let _: () = pipeline
                    .custom(
                        self.inner.context.fcall.clone(),
                        self.fcall_arguments::<O>(&argv, true),
                    )
                    .await?;
            } else {
                let mut call: Vec<String> = Vec::with_capacity(2 + keys.len() + argv.len());
                call.push(script.sha1().to_string());
                call.push(keys.len().to_string());
                call.extend(keys.iter().cloned());
                call.extend(argv.iter().cloned());
                let _: () = pipeline.custom(fred::cmd!("EVALSHA"), call).await?;
            }
            let _: () = pipeline.wait(i64::from(acks), timeout).await?;
            self.count();
            let mut results = pipeline.try_all::<Value>().await.into_iter();
            let written = results.next().unwrap_or(Ok(Value::Null));
            let acknowledged = results.next();
            match written {
                Err(error)
                    if !functions
                        && RedisCode::parse(error.details()) == RedisCode::NoScript
                        && attempt == 0 =>
                {
                    self.count();
                    script.load(&self.inner.client).await?;
                }
                Err(error) => return Err(error.into()),
                Ok(value) => {
                    return match acknowledged {
                        Some(Ok(Value::Integer(count))) if count >= i64::from(acks) => Ok(value),
                        other => {
                            // Durability was asked for and not given: the
                            // caller must not be told the write is safe. The
                            // error is transient, so final writes are retried
                            // (they are idempotent); a submit reports it.
                            tracing::warn!(
                                wanted = acks,
                                got = ?other,
                                "a write was not acknowledged by enough replicas in time; it is on the primary only"
                            );
                            Err(Error::reply(format!(
                                "NOREPLICAS the write reached the primary but {acks} replica acknowledgement(s) did not arrive within {:?}",
                                self.inner.config.replica_ack_timeout
                            )))
                        }
                    };
                }
            }
        }
        Err(Error::reply("the script could not be loaded"))
    }
}

/// A server without functions (`unknown command`, before Redis 7) or a user
/// whose ACL does not allow them.
fn functions_refused(error: &Error) -> bool {
    match error.redis_code() {
        Some(RedisCode::NoPerm) => true,
        Some(RedisCode::Generic) => {
            let text = error.to_string();
            text.contains("unknown command") || text.contains("unknown subcommand")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_strings_hold_any_text() {
        for (text, expected) in [
            ("plain", "[[plain]]"),
            ("a]]b", "[=[a]]b]=]"),
            ("a]]b]=]c", "[==[a]]b]=]c]==]"),
        ] {
            assert_eq!(lua_string(text), expected);
        }
    }

    #[test]
    fn templates_carry_their_placeholders_as_json_strings() {
        let prelude = prelude();
        for slot in [
            r#""\u0001agent""#,
            r#""\u0001message""#,
            r#""\u0001error_type""#,
            r#""\u0001approval""#,
        ] {
            assert!(prelude.contains(slot), "{slot} missing from the prelude");
        }
        assert!(prelude.contains(r#""status":"cancelled""#));
        assert!(prelude.contains(r#""recoverable":true"#));
    }

    #[test]
    fn every_key_a_script_gets_is_built_by_keys() {
        let config = BrokerConfig::new("redis://localhost")
            .with_keys(exo_proto::Keys::with_prefix("{exo}:"));
        let context = ScriptContext::new(&config);
        let sample = config.keys.all_sample();
        for key in &context.names {
            assert!(sample.contains(key), "{key} is not in Keys::all_sample");
        }
        assert_eq!(context.keys.len(), 26);
        assert_eq!(context.settings.len(), 6);
    }
}
