//! The runner the worker holds: set a run up, run it under its cancel
//! token and deadline, release its MCP sessions, report the outcome.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
};

use exo_models::ProviderFactory;
use exo_proto::{
    AgentConfig, AgentSpec, ErrorType, Journal, Message, OutcomeStatus, RunOutcome, StepKey,
    SwarmMode, ToolSpec, Usage,
};
use futures::FutureExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    agent_loop::{
        AgentRun, BoundTool, Failure, PreparedAgent, emit_error, panic_message, run_agent,
    },
    error::Error,
    mcp::McpPolicy,
    outcome::{Emitter, RunEvent, RunOptions},
    swarm::{DelegateTool, SwarmPlan, handoff_instructions, run_swarm},
    tool::ToolRegistry,
};

/// What every part of one run shares.
#[derive(Debug)]
pub(crate) struct RunContext {
    pub(crate) emitter: Emitter,
    /// Fires when the run is cancelled, times out, or ends.
    pub(crate) cancel: CancellationToken,
    pause: Option<tokio::sync::watch::Receiver<bool>>,
    usage: Mutex<Usage>,
    /// What the run's model calls cost so far (millionths of a dollar).
    cost_micros: Mutex<u64>,
    /// Prices of models, for the cost budget.
    pub(crate) prices: Option<Arc<exo_proto::PriceTable>>,
    /// What earlier attempts finished.
    pub(crate) replay: Journal,
    pub(crate) attempt: u32,
    task_id: String,
    /// Admits model calls against shared rate limits.
    pub(crate) gate: Option<Arc<dyn crate::ModelGate>>,
    /// What the run may spend.
    pub(crate) budget: exo_proto::Budget,
    /// Model calls made (or replayed) so far, per scope.
    model_calls: Mutex<BTreeMap<String, u32>>,
    /// New calls the run may still start (`RunOptions::step_limit`).
    steps_left: Mutex<Option<u32>>,
    #[cfg(feature = "mcp")]
    pub(crate) sessions: crate::mcp_client::Sessions,
}

impl RunContext {
    /// Takes one new call (model or tool) from the run's step limit; false
    /// when it is spent and the run must yield. Calls inside a delegation
    /// to a team member (scope `call>member`) are part of the delegation's
    /// step and always go on.
    pub(crate) fn take_step(&self, scope: &str) -> bool {
        if scope.contains('>') {
            return true;
        }
        let mut left = self
            .steps_left
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match left.as_mut() {
            None => true,
            Some(0) => false,
            Some(count) => {
                *count -= 1;
                true
            }
        }
    }

    /// Counts one model call's usage (and its cost, by the price table).
    pub(crate) fn add_usage(&self, model: &str, usage: Usage) {
        *self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += usage;
        if let Some(prices) = &self.prices {
            *self
                .cost_micros
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) +=
                prices.cost_micros(model, &usage);
        }
    }

    /// What the run's model calls cost so far, in dollars.
    pub(crate) fn cost(&self) -> f64 {
        *self
            .cost_micros
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) as f64
            / 1e6
    }

    /// Returns once the run may start a model or tool call (at once unless
    /// the caller paused it).
    pub(crate) async fn resumed(&self) {
        if let Some(pause) = &self.pause {
            let mut pause = pause.clone();
            // An error means the sender is gone: nobody can pause any more.
            let _ = pause.wait_for(|paused| !*paused).await;
        }
    }

    /// Numbers the scope's next model call (1, 2, ...).
    pub(crate) fn next_model_call(&self, scope: &str) -> u32 {
        let mut calls = self
            .model_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = calls.entry(scope.to_owned()).or_insert(0);
        *next += 1;
        *next
    }

    /// The number the scope's next model call will get.
    pub(crate) fn peek_model_call(&self, scope: &str) -> u32 {
        self.model_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(scope)
            .copied()
            .unwrap_or(0)
            + 1
    }

    /// The idempotency key of one tool call.
    pub(crate) fn idempotency_key(&self, key: &StepKey, tool_call_id: &str) -> String {
        format!("{}/{}/{}/{tool_call_id}", self.task_id, key.scope, key.call)
    }

    pub(crate) fn usage(&self) -> Usage {
        *self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum Plan {
    Agent(Arc<PreparedAgent>),
    Swarm(SwarmPlan),
}

/// Runs agents and swarms. A worker builds one and shares it between its
/// tasks.
#[derive(Clone)]
pub struct Runner {
    providers: ProviderFactory,
    tools: Arc<ToolRegistry>,
    mcp: McpPolicy,
}

impl fmt::Debug for Runner {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Runner")
            .field("tools", &self.tools.names())
            .field("mcp", &self.mcp)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner that builds each agent's provider with `providers` (it gets
    /// the agent's full model string), looks tools up in `tools`, and lets
    /// tasks use the MCP servers `mcp` allows.
    pub fn new(providers: ProviderFactory, tools: Arc<ToolRegistry>, mcp: McpPolicy) -> Self {
        Runner {
            providers,
            tools,
            mcp,
        }
    }

    /// Runs an agent or a swarm on `input`, after `history`.
    ///
    /// Every event except the terminal `status` goes to `events`, in order
    /// (sends wait when the channel is full; a closed receiver is ignored).
    /// The returned outcome's [`RunOutcome::terminal_event`] is that last
    /// event, for the caller to write together with the task's final state.
    ///
    /// Before anything runs, every agent's provider and tools are resolved;
    /// a failure there (unknown tool, MCP server refused, bad model string)
    /// emits one `error` event and returns a non-retryable failure.
    /// Cancellation and the deadline take effect at once, inside model
    /// streams and tool calls. MCP sessions are closed before this returns,
    /// whatever the outcome.
    pub async fn run(
        &self,
        spec: &AgentSpec,
        input: &str,
        history: Vec<Message>,
        options: RunOptions,
        events: mpsc::Sender<RunEvent>,
    ) -> RunOutcome {
        let started = Instant::now();
        let name = spec.name();
        let is_swarm = matches!(spec, AgentSpec::Swarm(_));
        let kind = if is_swarm { "Swarm" } else { "Agent" };
        let ctx = Arc::new(RunContext {
            emitter: Emitter::new(events, options.detailed),
            cancel: options.cancel.child_token(),
            pause: options.pause.clone(),
            usage: Mutex::new(Usage::default()),
            cost_micros: Mutex::new(0),
            prices: options.prices.clone(),
            replay: options.replay.clone(),
            attempt: options.attempt,
            task_id: options.task_id.clone(),
            gate: options.gate.clone(),
            budget: options.budget,
            model_calls: Mutex::new(BTreeMap::new()),
            steps_left: Mutex::new(options.step_limit),
            #[cfg(feature = "mcp")]
            sessions: crate::mcp_client::Sessions::default(),
        });
        let outcome = |status, output: String, failure: Option<Failure>, usage| RunOutcome {
            status,
            agent_name: name.clone(),
            is_swarm,
            output,
            usage,
            // A kind with a fixed retryability decides it, as in
            // `RunOutcome::failed`.
            retryable: failure
                .as_ref()
                .is_some_and(|failure| failure.error_type.retryable().unwrap_or(failure.retryable)),
            error: failure.as_ref().map(|failure| failure.message.clone()),
            error_type: failure.map(|failure| failure.error_type),
            approval: None,
        };

        let plan = match spec
            .validate()
            .map_err(|error| Error::InvalidConfig(error.to_string()))
        {
            Ok(()) => self.prepare(&ctx, spec),
            Err(error) => Err(error),
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) => {
                let failure = Failure {
                    message: error.to_string(),
                    error_type: ErrorType::Config,
                    retryable: false,
                };
                emit_error(&ctx, &name, &failure, None).await;
                return outcome(
                    OutcomeStatus::Failed,
                    String::new(),
                    Some(failure),
                    Usage::default(),
                );
            }
        };

        let body = async {
            match &plan {
                Plan::Agent(agent) => run_agent(&ctx, agent, &name, input, history).await,
                Plan::Swarm(swarm) => run_swarm(&ctx, swarm, input, history).await,
            }
        };
        // A panic outside a tool (in a provider, say) fails this run, not
        // the worker.
        let body = AssertUnwindSafe(body).catch_unwind();
        let deadline = async {
            match options.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        enum End {
            Finished(Box<AgentRun>),
            Panicked(String),
            Cancelled,
            TimedOut,
        }
        let end = tokio::select! {
            biased;
            () = options.cancel.cancelled() => End::Cancelled,
            () = deadline => End::TimedOut,
            run = body => match run {
                Ok(run) => End::Finished(Box::new(run)),
                Err(payload) => End::Panicked(panic_message(payload.as_ref())),
            },
        };
        ctx.cancel.cancel();
        #[cfg(feature = "mcp")]
        ctx.sessions.close_all().await;
        drop(plan);

        let usage = ctx.usage();
        match end {
            End::Finished(run) => match *run {
                AgentRun {
                    yielded: true,
                    failure: None,
                    output,
                    ..
                } => outcome(OutcomeStatus::Yielded, output, None, usage),
                AgentRun {
                    waiting: Some(approval),
                    failure: None,
                    ..
                } => RunOutcome {
                    usage,
                    is_swarm,
                    ..RunOutcome::waiting(name.clone(), approval)
                },
                AgentRun {
                    output,
                    failure: None,
                    ..
                } => outcome(OutcomeStatus::Completed, output, None, usage),
                AgentRun {
                    output,
                    failure: Some(failure),
                    ..
                } => outcome(OutcomeStatus::Failed, output, Some(failure), usage),
            },
            End::Panicked(message) => {
                let failure = Failure {
                    message: format!("{kind} '{name}' panicked: {message}"),
                    error_type: ErrorType::Panic,
                    retryable: false,
                };
                emit_error(&ctx, &name, &failure, None).await;
                outcome(OutcomeStatus::Failed, String::new(), Some(failure), usage)
            }
            End::Cancelled => {
                let failure = Failure {
                    message: format!("{kind} '{name}' was cancelled"),
                    error_type: ErrorType::Cancelled,
                    retryable: false,
                };
                outcome(
                    OutcomeStatus::Cancelled,
                    String::new(),
                    Some(failure),
                    usage,
                )
            }
            End::TimedOut => {
                let failure = Failure {
                    message: format!(
                        "{kind} '{name}' timed out after {:.1}s",
                        started.elapsed().as_secs_f64()
                    ),
                    error_type: ErrorType::Timeout,
                    retryable: true,
                };
                emit_error(&ctx, &name, &failure, None).await;
                outcome(OutcomeStatus::TimedOut, String::new(), Some(failure), usage)
            }
        }
    }

    /// Resolves providers and tools for the whole spec.
    fn prepare(&self, ctx: &Arc<RunContext>, spec: &AgentSpec) -> Result<Plan, Error> {
        match spec {
            AgentSpec::Agent(agent) => Ok(Plan::Agent(Arc::new(self.prepare_agent(
                ctx,
                agent,
                Vec::new(),
            )?))),
            AgentSpec::Swarm(swarm) => {
                let stages = swarm
                    .stages()
                    .map_err(|error| Error::InvalidConfig(error.to_string()))?;
                let mut members = BTreeMap::new();
                match swarm.mode {
                    SwarmMode::Workflow => {
                        for agent in &swarm.agents {
                            members.insert(
                                agent.name.clone(),
                                Arc::new(self.prepare_agent(ctx, agent, Vec::new())?),
                            );
                        }
                    }
                    SwarmMode::Handoff => {
                        for agent in &swarm.agents {
                            let mut agent = agent.clone();
                            let note = handoff_instructions(swarm, &agent.name);
                            agent.instructions = if agent.instructions.is_empty() {
                                note
                            } else {
                                format!("{}\n\n{note}", agent.instructions)
                            };
                            members.insert(
                                agent.name.clone(),
                                Arc::new(self.prepare_agent(ctx, &agent, Vec::new())?),
                            );
                        }
                    }
                    SwarmMode::Team => {
                        let (lead, others) = swarm
                            .agents
                            .split_first()
                            .ok_or_else(|| Error::InvalidConfig("a swarm needs agents".into()))?;
                        let mut delegates = Vec::new();
                        for agent in others {
                            if !agent.hitl_tools.is_empty() {
                                return Err(Error::InvalidConfig(format!(
                                    "agent `{}`: a team member's calls cannot wait for approval \
                                     (`hitl_tools`); give those tools to the lead `{}`",
                                    agent.name, lead.name
                                )));
                            }
                            let member = Arc::new(self.prepare_agent(ctx, agent, Vec::new())?);
                            let tool = DelegateTool::new(Arc::clone(&member), Arc::clone(ctx));
                            delegates.push(BoundTool {
                                name: tool.name.clone(),
                                tool: Arc::new(tool),
                            });
                            members.insert(agent.name.clone(), member);
                        }
                        members.insert(
                            lead.name.clone(),
                            Arc::new(self.prepare_agent(ctx, lead, delegates)?),
                        );
                    }
                }
                Ok(Plan::Swarm(SwarmPlan {
                    config: swarm.clone(),
                    name: swarm.name(),
                    stages,
                    members,
                }))
            }
        }
    }

    fn prepare_agent(
        &self,
        ctx: &Arc<RunContext>,
        config: &AgentConfig,
        extra: Vec<BoundTool>,
    ) -> Result<PreparedAgent, Error> {
        let provider = (self.providers)(&config.model).map_err(|source| Error::Model {
            agent: config.name.clone(),
            model: config.model.clone(),
            source,
        })?;
        let mut tools = Vec::with_capacity(config.tools.len() + extra.len());
        for spec in &config.tools {
            tools.push(self.bind_tool(ctx, config, spec)?);
        }
        tools.extend(extra);
        let mut seen = BTreeSet::new();
        for tool in &tools {
            if !seen.insert(tool.name.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "agent `{}`: two tools are named `{}`; the model could not tell them apart",
                    config.name, tool.name
                )));
            }
        }
        Ok(PreparedAgent {
            config: config.clone(),
            provider,
            tools,
        })
    }

    fn bind_tool(
        &self,
        ctx: &Arc<RunContext>,
        config: &AgentConfig,
        spec: &ToolSpec,
    ) -> Result<BoundTool, Error> {
        match spec {
            ToolSpec::Name(name) => {
                let tool = self
                    .tools
                    .get(name)
                    .ok_or_else(|| Error::ToolNotRegistered {
                        agent: config.name.clone(),
                        tool: name.clone(),
                        registered: {
                            let names = self.tools.names();
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        },
                    })?;
                Ok(BoundTool {
                    name: spec.tool_name().to_owned(),
                    tool,
                })
            }
            ToolSpec::Mcp(mcp) => self.bind_mcp_tool(ctx, config, mcp),
        }
    }

    #[cfg(feature = "mcp")]
    fn bind_mcp_tool(
        &self,
        ctx: &Arc<RunContext>,
        config: &AgentConfig,
        mcp: &exo_proto::McpToolSpec,
    ) -> Result<BoundTool, Error> {
        self.mcp
            .check(&mcp.server_config)
            .map_err(|reason| Error::McpRefused {
                agent: config.name.clone(),
                tool: mcp.name.clone(),
                server: mcp.server_name.clone(),
                reason,
            })?;
        Ok(BoundTool {
            name: mcp.name.clone(),
            tool: Arc::new(crate::mcp_client::McpTool {
                spec: mcp.clone(),
                ctx: Arc::clone(ctx),
                emit_progress: config.emit_mcp_progress,
            }),
        })
    }

    #[cfg(not(feature = "mcp"))]
    fn bind_mcp_tool(
        &self,
        _ctx: &Arc<RunContext>,
        config: &AgentConfig,
        mcp: &exo_proto::McpToolSpec,
    ) -> Result<BoundTool, Error> {
        Err(Error::McpDisabled {
            agent: config.name.clone(),
            tool: mcp.name.clone(),
        })
    }
}
