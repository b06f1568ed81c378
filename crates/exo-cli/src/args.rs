//! Command-line flags, parsed by clap; validated into crate configs by the
//! commands.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use exo_worker::WorkerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "exo",
    version = env!("EXO_VERSION"),
    about = "Run AI agents across a fleet of workers on Redis Streams."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Parses the command line (exiting with clap's message on an error).
    /// Settings left out keep the library's defaults (`WorkerConfig::new`),
    /// which `--help` shows: read from the library, never restated here.
    /// Settings the command line leaves out come from the config file
    /// (see [`crate::config_file`]) when there is one.
    pub(crate) fn parse_with_defaults() -> Self {
        let command = Cli::command_with_defaults();
        let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let asks_for_help = argv
            .iter()
            .any(|word| matches!(word.to_str(), Some("-h" | "--help" | "-V" | "--version")));
        if !asks_for_help && let Some(path) = crate::config_file::config_path(&argv) {
            argv = crate::config_file::apply(argv, &command, &path).unwrap_or_else(|error| {
                eprintln!("error: {error}");
                std::process::exit(2)
            });
        }
        let matches = command.get_matches_from(argv);
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// The command line's definition, with the library's defaults in the
    /// help of the settings that have one (see [`Cli::parse_with_defaults`]);
    /// completions and man pages are made from it.
    pub(crate) fn command_with_defaults() -> clap::Command {
        let defaults = WorkerConfig::new("");
        let seconds = |duration: std::time::Duration| format!("{}", duration.as_secs_f64());
        let global = [
            ("queue", defaults.broker.keys.queue().to_owned()),
            ("key_prefix", defaults.broker.keys.prefix().to_owned()),
            ("replica_acks", defaults.broker.replica_acks.to_string()),
        ];
        let worker = [
            ("concurrency", defaults.concurrency.to_string()),
            ("lookahead", defaults.lookahead.to_string()),
            (
                "lookahead_window",
                defaults.lookahead_window.as_millis().to_string(),
            ),
            ("heartbeat_ttl", seconds(defaults.broker.heartbeat_ttl)),
            ("drain_timeout", seconds(defaults.drain_timeout)),
            ("approval_timeout", seconds(defaults.approval_timeout)),
            ("lease", seconds(defaults.broker.lease)),
            ("max_retries", defaults.broker.retry.max_retries.to_string()),
            ("task_ttl", seconds(defaults.broker.task_ttl)),
            ("event_ttl", seconds(defaults.broker.event_ttl)),
            ("retry_backoff", seconds(defaults.broker.retry.base_backoff)),
            ("stats_interval", seconds(defaults.stats_interval)),
        ];
        let show = |arg: clap::Arg, value: &str| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {value}]"))
        };
        let mut command = Cli::command();
        for (id, value) in &global {
            command = command.mut_arg(*id, |arg| show(arg, value));
        }
        command = command.mut_subcommand("start", |start| {
            start.mut_subcommand("worker", |mut subcommand| {
                for (id, value) in &worker {
                    subcommand = subcommand.mut_arg(*id, |arg| show(arg, value));
                }
                subcommand
            })
        });
        command
    }
}

/// Where the queue lives; shared by every command.
#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// Redis URL: redis://, rediss://, redis+sentinel://host:26379,host2/service or redis+cluster://host:port.
    #[arg(long, env = "EXO_REDIS_URL", global = true, hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// Queue stream name.
    #[arg(long, env = "EXO_QUEUE", global = true)]
    pub(crate) queue: Option<String>,
    /// Prefix of task keys (use a hash tag such as '{exo}:' with a matching queue under Redis Cluster).
    #[arg(long, env = "EXO_KEY_PREFIX", global = true)]
    pub(crate) key_prefix: Option<String>,
    /// PEM file with extra CA certificates for rediss:// (self-signed servers).
    #[arg(long, env = "EXO_REDIS_CA_FILE", global = true)]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// Replicas that must acknowledge each submit, cancel and final write (WAIT); 1 makes them survive a Sentinel failover.
    #[arg(long, env = "EXO_REPLICA_ACKS", global = true)]
    pub(crate) replica_acks: Option<u32>,
    /// Run exo's Lua operations as a Redis function library (FCALL; Redis 7+), or, with false, as scripts
    /// (EVALSHA). A server or ACL user without functions gets scripts either way. [default: true]
    #[arg(long, env = "EXO_REDIS_FUNCTIONS", global = true, value_name = "BOOL")]
    pub(crate) redis_functions: Option<bool>,
    /// Queue shards: tasks are spread over N hash slots (under Redis Cluster, over N nodes); every
    /// client and worker of the queue must use the same N. [default: 1]
    #[arg(long, env = "EXO_SHARDS", global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) shards: Option<u32>,
    /// Print JSON instead of tables (read commands).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// A config file (TOML) with settings for any flag: top-level keys for these global flags,
    /// `[worker]` for `exo start worker`, `[serve]` for `exo serve`. Flags and environment variables
    /// win over it. Without it, ./exo.toml is read when present.
    #[arg(long, env = "EXO_CONFIG", global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start a long-running process.
    #[command(subcommand)]
    Start(Start),
    /// Inspect workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Submit, inspect, follow and cancel tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Inspect the queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Inspect and re-drive the dead-letter stream.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Cron schedules: tasks submitted at each tick, fired by the workers.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// What model calls used (tokens, calls, cost), by model, tenant or agent.
    Usage(UsageArgs),
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Evaluate the alert rules.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Serve the HTTP API (with resumable event streams) and the dashboard.
    Serve(Box<Serve>),
    /// Print a shell completion script (e.g. `exo completions bash > /etc/bash_completion.d/exo`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (exo.1 and one per subcommand) into a directory;
    /// `cargo xtask man` runs it.
    #[command(hide = true)]
    ManPages {
        /// Where to write them.
        directory: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the configuration `exo start worker` would run with (flags > environment > config
    /// file > defaults), secrets masked. Takes the same flags.
    Show(Box<StartWorker>),
}

#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// The period, back from now: 90s, 30m, 1h, 7d (at most 35d). Up to 3h it is counted to the
    /// minute, beyond to the hour.
    #[arg(long, default_value = "1h", value_parser = parse_period)]
    pub(crate) since: std::time::Duration,
    /// What to group by.
    #[arg(long, value_enum, default_value = "model")]
    pub(crate) by: UsageBy,
}

/// What `exo usage` groups by.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum UsageBy {
    /// The agent's model string.
    Model,
    /// The task's tenant.
    Tenant,
    /// The agent's name.
    Agent,
}

/// A period such as `90s`, `30m`, `1h` or `7d`.
pub(crate) fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a period such as 30m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(
        number.saturating_mul(seconds),
    ))
}

#[derive(Debug, Args)]
pub(crate) struct Serve {
    /// Where to listen. Without tokens only a loopback address is allowed.
    #[arg(long, env = "EXO_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) addr: std::net::SocketAddr,
    /// A JSON file of bearer tokens:
    /// `{"tokens": [{"name", "token", "scopes": ["read"|"submit"|"cancel"|"admin"], "tenant"?}]}`.
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens_file: Option<std::path::PathBuf>,
    /// Origins allowed by CORS (repeatable; `*` for any).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub(crate) cors_origins: Vec<String>,
    /// An agent that submissions can name with `"agent": NAME` (repeatable):
    /// `NAME=FILE`, FILE holding the agent's JSON configuration.
    #[arg(long = "agent", value_name = "NAME=FILE")]
    pub(crate) agents: Vec<String>,
    /// Connections that follow event streams for all clients.
    #[arg(long, value_name = "N")]
    pub(crate) stream_readers: Option<usize>,
    /// Seconds a request (other than an event stream) may take.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) request_timeout: Option<f64>,
    /// The largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Start {
    /// Run a worker until SIGINT/SIGTERM (a second signal forces exit).
    Worker(Box<StartWorker>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Pretty,
    Compact,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Executor {
    Local,
    Temporal,
}

#[derive(Debug, Args)]
pub(crate) struct StartWorker {
    /// Concurrent task slots.
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Tasks the worker may hold, claimed, beyond what its slots run and each slot's next task:
    /// taken only after a task that ran shorter than --lookahead-window, and handed back to the
    /// queue when the task before them runs longer than that (0: none).
    #[arg(long)]
    pub(crate) lookahead: Option<usize>,
    /// Milliseconds: see --lookahead.
    #[arg(long, value_name = "MS")]
    pub(crate) lookahead_window: Option<u64>,
    /// Worker id (default {hostname}-{pid}-{random}).
    #[arg(long, env = "EXO_WORKER_ID")]
    pub(crate) worker_id: Option<String>,
    /// Heartbeat TTL in seconds; the heartbeat is written every third of it.
    #[arg(long)]
    pub(crate) heartbeat_ttl: Option<u64>,
    /// Seconds running tasks may finish after SIGTERM before they are handed back.
    #[arg(long)]
    pub(crate) drain_timeout: Option<u64>,
    /// Seconds a task may wait for a decision on a call to one of its
    /// agent's `hitl_tools`; then the call counts as denied and the run goes
    /// on (at most the task TTL).
    #[arg(long)]
    pub(crate) approval_timeout: Option<u64>,
    /// A fleet-wide limit of model calls per minute: MODEL=N, where MODEL is one provider's
    /// model (openai:gpt-4o-mini), a bare model name under any provider (gpt-4o-mini), or every
    /// model of a provider (openai:*). A call counts against every rule that covers it. Every
    /// worker with the same rule (and credential alias) shares it through Redis. Repeatable.
    #[arg(long = "model-rpm", value_name = "MODEL=N")]
    pub(crate) model_rpm: Vec<String>,
    /// A fleet-wide limit of model tokens (input plus output) per minute: MODEL=N, MODEL as for
    /// --model-rpm. Repeatable.
    #[arg(long = "model-tpm", value_name = "MODEL=N")]
    pub(crate) model_tpm: Vec<String>,
    /// The alias of the credential (API key) this worker uses for a provider: PROVIDER=ALIAS.
    /// Rate-limit rules count per alias: give workers that share a key the same alias, workers
    /// with another key another. Repeatable.
    #[arg(long = "credential-alias", value_name = "PROVIDER=ALIAS")]
    pub(crate) credential_alias: Vec<String>,
    /// How many tasks of one concurrency key may run at once, fleet-wide: KEY=N for one key, or
    /// N for every key that neither a rule nor its payload limits. Repeatable.
    #[arg(long = "concurrency-limit", value_name = "[KEY=]N")]
    pub(crate) concurrency_limit: Vec<String>,
    /// What a model's tokens cost: MODEL=INPUT,OUTPUT in US dollars per million tokens (e.g.
    /// gpt-4o-mini=0.15,0.6). The usage ledger and budget.max_cost count cost by it. Repeatable.
    #[arg(long = "price", value_name = "MODEL=IN,OUT")]
    pub(crate) prices: Vec<String>,
    /// The most tasks of one concurrency key a payload may ask to run at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency_limit_max: Option<u32>,
    /// Seconds without a lease renewal after which another worker reclaims a task.
    #[arg(long)]
    pub(crate) lease: Option<u64>,
    /// Retries of a failed task when its payload does not say.
    #[arg(long)]
    pub(crate) max_retries: Option<u32>,
    /// Seconds a task hash is kept after its last write (the reference keeps 24 h).
    #[arg(long)]
    pub(crate) task_ttl: Option<u64>,
    /// Seconds a task's event stream is kept after its last event (the reference keeps 1 h).
    #[arg(long)]
    pub(crate) event_ttl: Option<u64>,
    /// Seconds before the first retry (doubling each time, capped at 60 s).
    #[arg(long)]
    pub(crate) retry_backoff: Option<f64>,
    /// Where tasks run.
    #[arg(long, value_enum, default_value = "local", env = "EXO_EXECUTOR")]
    pub(crate) executor: Executor,
    /// Seconds between queue-depth measurements for the metrics (0: never).
    #[arg(long)]
    pub(crate) stats_interval: Option<f64>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "EXO_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty", env = "EXO_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// A memory store tasks may name: NAME=DSN (sqlite:///path.db, postgres://...). Repeatable.
    #[arg(long = "memory-store", value_name = "NAME=DSN")]
    pub(crate) memory_stores: Vec<String>,
    /// Accept a memory DSN written in a task payload (off: payloads must name a configured store).
    #[arg(long)]
    pub(crate) allow_payload_dsn: bool,
    /// A whole command line MCP stdio servers may run: program and arguments must match exactly
    /// ("npx -y @modelcontextprotocol/server-time"); a last word `...` allows more arguments. Repeatable.
    #[arg(long = "mcp-allow-command", value_name = "COMMAND LINE")]
    pub(crate) mcp_allow_commands: Vec<String>,
    /// An environment variable an MCP server config may set (loader variables such as PATH,
    /// LD_PRELOAD or NODE_OPTIONS are always refused). Repeatable.
    #[arg(long = "mcp-allow-env", value_name = "NAME")]
    pub(crate) mcp_allow_env: Vec<String>,
    /// A working directory an MCP server config may choose. Repeatable.
    #[arg(long = "mcp-allow-cwd", value_name = "DIR")]
    pub(crate) mcp_allow_cwd: Vec<String>,
    /// A host (any port) or host:port agents may reach MCP servers on over HTTP; `*` for any. Repeatable.
    #[arg(long = "mcp-allow-http-host", value_name = "HOST[:PORT]")]
    pub(crate) mcp_allow_http_hosts: Vec<String>,
    /// A URL prefix the `http_request` tool may call (scheme, host, port and path prefix must
    /// match; redirects are not followed); the tool is registered when one is given. Repeatable.
    #[cfg(feature = "http")]
    #[arg(long = "http-tool-allow", value_name = "URL PREFIX")]
    pub(crate) http_tool_allow: Vec<String>,
    /// Register the built-in demo tools (get_weather, sleep, echo, fail, panic).
    #[arg(long, env = "EXO_BUILTIN_TOOLS")]
    pub(crate) builtin_tools: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// List workers seen in the last hour; dead ones are marked.
    List,
    /// Health check of one worker: healthy (exit 0), degraded (1) or unhealthy (2).
    Health {
        /// The worker id.
        worker_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// List tasks, newest first.
    List {
        /// Only tasks with this status.
        #[arg(long)]
        status: Option<String>,
        /// How many tasks.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one task.
    Status {
        /// The task id.
        task_id: String,
    },
    /// Cancel a task: a queued one never starts, a running one stops.
    Cancel {
        /// The task id.
        task_id: String,
    },
    /// Approve the tool call a task waits at (a tool in its agent's
    /// `hitl_tools`); the run goes on, on any worker, from its journal.
    Approve {
        /// The task id.
        task_id: String,
        /// Arguments (a JSON object) that replace the model's.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Who approves (recorded); defaults to $USER.
        #[arg(long)]
        by: Option<String>,
        /// Only if this is the call that waits.
        #[arg(long, value_name = "ID")]
        call: Option<String>,
    },
    /// Deny the tool call a task waits at; the model is told why.
    Deny {
        /// The task id.
        task_id: String,
        /// Why (the model sees it).
        #[arg(long)]
        reason: String,
        /// Who denies (recorded); defaults to $USER.
        #[arg(long)]
        by: Option<String>,
        /// Only if this is the call that waits.
        #[arg(long, value_name = "ID")]
        call: Option<String>,
    },
    /// Submit an agent and an input.
    Submit(Box<SubmitArgs>),
    /// Show a task's events; --follow streams them live until the task ends.
    Events {
        /// The task id.
        task_id: String,
        /// Keep reading until the terminal event.
        #[arg(long)]
        follow: bool,
        /// Start after this stream id.
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The agent (or swarm) config: a JSON or YAML file.
    #[arg(long, required_unless_present = "batch")]
    pub(crate) agent: Option<PathBuf>,
    /// Submit many tasks: one task payload per line, as JSON with the payload's field names
    /// (agent_config, input, messages, model, metadata, timeout_seconds, max_retries,
    /// idempotency_key, task_id; a missing task_id is generated), from FILE or `-` for stdin.
    /// Prints one JSON line per task as soon as Redis acknowledges it: {"line", "task_id",
    /// "created", "time"}, or {"line", "error"} for a line that cannot be submitted (the others
    /// still are; the exit status is then 1).
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["agent", "follow"])]
    pub(crate) batch: Option<PathBuf>,
    /// With --batch: how many submits may wait for Redis at once.
    #[arg(long, default_value_t = 64, requires = "batch", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) in_flight: u16,
    /// The user input.
    #[arg(long, default_value = "")]
    pub(crate) input: String,
    /// Emit the rich event set.
    #[arg(long)]
    pub(crate) detailed: bool,
    /// Stream the events until the task ends.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Fallback model when the config names none.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Execution deadline in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
    /// Retries when the task fails (the worker's default when unset).
    #[arg(long)]
    pub(crate) max_retries: Option<u32>,
    /// Metadata as a JSON object (e.g. '{"memory": {...}}').
    #[arg(long)]
    pub(crate) metadata: Option<String>,
    /// Prior conversation as a JSON array of messages, or @file.
    #[arg(long)]
    pub(crate) messages: Option<String>,
    /// A duplicate submit with this key returns the first task.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Start no sooner than this many seconds from now (the task waits in the delayed set).
    #[arg(long, value_name = "SECONDS", conflicts_with = "run_at")]
    pub(crate) delay: Option<f64>,
    /// Start no sooner than this time, in Unix seconds.
    #[arg(long, value_name = "UNIX SECONDS")]
    pub(crate) run_at: Option<f64>,
    /// The most tokens (input plus output, all model calls) the run may spend; then it fails
    /// with BudgetExceeded.
    #[arg(long, value_name = "TOKENS")]
    pub(crate) budget_tokens: Option<u64>,
    /// The most the run may cost, in US dollars, by the workers' price table (`--price`); then it
    /// fails with BudgetExceeded.
    #[arg(long, value_name = "USD")]
    pub(crate) budget_cost: Option<f64>,
    /// 1 (first) to 10: the task waits among the prioritized ones, in the order of its arrival
    /// plus a minute per level after the first. Tasks without a priority go first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub(crate) priority: Option<u8>,
    /// The tenant, user or conversation whose tasks share a limit of tasks running at once.
    #[arg(long, value_name = "KEY")]
    pub(crate) concurrency_key: Option<String>,
    /// How many tasks of the concurrency key may run at once (unless the workers' rules say).
    #[arg(long, value_name = "N", requires = "concurrency_key", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency_limit: Option<u32>,
    /// Makes the concurrency key a conversation (one task at a time) and says what this task
    /// does while an earlier one has not ended: reject, enqueue, interrupt (cancel it) or
    /// rollback (cancel it and delete what it wrote to memory).
    #[arg(long, value_name = "STRATEGY", requires = "concurrency_key")]
    pub(crate) multitask_strategy: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Add a schedule (or replace the one of that name). Each tick submits one task, however
    /// many workers run; ticks missed while no worker ran fire once, as the latest of them.
    Add {
        /// The schedule's name: 1 to 64 letters, digits, `_`, `-` or `.`.
        #[arg(long)]
        name: String,
        /// A cron expression in UTC: five fields (`*/5 * * * *`) or six, seconds first.
        #[arg(long)]
        cron: String,
        /// The agent (or swarm) config, JSON or YAML.
        #[arg(long)]
        agent: PathBuf,
        /// The input of each tick's task.
        #[arg(long, default_value = "")]
        input: String,
        /// Emit the detailed event set.
        #[arg(long)]
        detailed: bool,
        /// Execution deadline of each task, in seconds.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
        /// Metadata of each task, as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List the schedules and when they fire next.
    List,
    /// Remove a schedule.
    Remove {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Depth, lag, pending per worker, delayed retries, dead letters.
    Stats,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// The newest dead-letter entries.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Put an entry back on the queue with a fresh retry budget.
    Redrive {
        /// The dead-letter entry id.
        entry_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Evaluate the alert rules against live Redis: exit 0 when none fire,
    /// 1 when only warnings fire, 2 when a critical rule fires, 3 when Redis
    /// is unreachable.
    Check {
        /// Override a threshold: RULE=VALUE (e.g. queue_depth_high=200, task_failure_rate_high=25%, task_wait_time_high=120s). Repeatable.
        #[arg(long = "threshold", value_name = "RULE=VALUE")]
        thresholds: Vec<String>,
    },
}
