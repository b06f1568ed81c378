//! Agent and swarm configs (`TaskPayload::agent_config`) and their validation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A serialized agent: every key of the reference's `Agent.to_dict()` with
/// its default. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The agent's name; required.
    pub name: String,
    /// `provider:model`; a bare name means openai.
    #[serde(default = "default_model")]
    pub model: String,
    /// The system prompt; omitted when empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub instructions: String,
    /// The step budget.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Completion token limit.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Reference planning switch (not used by exo's step loop).
    #[serde(default)]
    pub planning_enabled: bool,
    /// Reference planning model.
    #[serde(default)]
    pub planning_model: Option<String>,
    /// Reference planning prompt.
    #[serde(default, deserialize_with = "null_as_default")]
    pub planning_instructions: String,
    /// Reference budget awareness settings, kept as given.
    #[serde(default)]
    pub budget_awareness: Option<Value>,
    /// Tools that need a human's approval; each must be a configured tool.
    #[serde(default, deserialize_with = "null_as_default")]
    pub hitl_tools: Vec<String>,
    /// Emit `mcp_progress` events.
    #[serde(default = "default_true")]
    pub emit_mcp_progress: bool,
    /// Arguments added to every tool schema and stripped before execution.
    #[serde(default, deserialize_with = "null_as_default")]
    pub injected_tool_args: Map<String, Value>,
    /// Reference sub-agent switch.
    #[serde(default)]
    pub allow_parallel_subagents: bool,
    /// 1..=7.
    #[serde(default = "default_max_parallel_subagents")]
    pub max_parallel_subagents: u32,
    /// Reference self-spawn switch.
    #[serde(default)]
    pub allow_self_spawn: bool,
    /// Reference spawn depth.
    #[serde(default = "default_max_spawn_depth")]
    pub max_spawn_depth: u32,
    /// 1..=8.
    #[serde(default = "default_max_spawn_children")]
    pub max_spawn_children: u32,
    /// Programmatic tool calling; needs a Python runtime and is rejected.
    #[serde(default)]
    pub ptc: bool,
    /// Reference PTC timeout.
    #[serde(default = "default_ptc_timeout")]
    pub ptc_timeout: Value,
    /// Reference PTC output limit.
    #[serde(default = "default_ptc_max_output_bytes")]
    pub ptc_max_output_bytes: u64,
    /// Reference PTC call limit.
    #[serde(default = "default_ptc_max_tool_calls")]
    pub ptc_max_tool_calls: u64,
    /// Reference PTC arguments.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ptc_extra_args: Map<String, Value>,
    /// Reference bare-tools switch.
    #[serde(default)]
    pub bare_tools: bool,
    /// The agent's tools; omitted from the JSON when empty.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tools: Vec<ToolSpec>,
}

fn default_model() -> String {
    "openai:gpt-4o".to_owned()
}
fn default_max_steps() -> u32 {
    10
}
fn default_temperature() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_max_parallel_subagents() -> u32 {
    3
}
fn default_max_spawn_depth() -> u32 {
    3
}
fn default_max_spawn_children() -> u32 {
    4
}
fn default_ptc_timeout() -> Value {
    Value::from(60)
}
fn default_ptc_max_output_bytes() -> u64 {
    200_000
}
fn default_ptc_max_tool_calls() -> u64 {
    200
}
fn default_max_handoffs() -> u32 {
    10
}

fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl AgentConfig {
    /// An agent with every default and the given name.
    pub fn named(name: impl Into<String>) -> Self {
        serde_json::from_value(serde_json::json!({ "name": name.into() }))
            .expect("defaults always decode")
    }

    /// Checks the rules the reference enforces when it builds an agent.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason: String| {
            Err(Error::InvalidConfig(format!(
                "agent `{}`: {reason}",
                self.name
            )))
        };
        if self.name.trim().is_empty() {
            return Err(Error::InvalidConfig(
                "`name` is required and must not be empty".into(),
            ));
        }
        if self.max_steps < 1 {
            return fail(format!(
                "`max_steps` must be at least 1, got {}",
                self.max_steps
            ));
        }
        if !(1..=8).contains(&self.max_spawn_children) {
            return fail(format!(
                "`max_spawn_children` must be between 1 and 8, got {}",
                self.max_spawn_children
            ));
        }
        if !(1..=7).contains(&self.max_parallel_subagents) {
            return fail(format!(
                "`max_parallel_subagents` must be between 1 and 7, got {}",
                self.max_parallel_subagents
            ));
        }
        if self.ptc {
            return fail(
                "`ptc: true` (programmatic tool calling) needs the Python runtime and is not supported by exo workers; set `ptc` to false".into(),
            );
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return fail(format!(
                "`temperature` must be a non-negative number, got {}",
                self.temperature
            ));
        }
        let tool_names: BTreeSet<&str> = self.tools.iter().map(ToolSpec::tool_name).collect();
        for hitl in &self.hitl_tools {
            if !tool_names.contains(hitl.as_str()) {
                return fail(format!(
                    "`hitl_tools` names `{hitl}`, which is not one of the agent's tools ({})",
                    if tool_names.is_empty() {
                        "it has none".to_owned()
                    } else {
                        tool_names.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ));
            }
        }
        for tool in &self.tools {
            if let ToolSpec::Name(name) = tool
                && name.trim().is_empty()
            {
                return fail("a tool name in `tools` is empty".into());
            }
        }
        Ok(())
    }

    /// The provider part of `model` (`openai` for a bare name).
    pub fn provider(&self) -> &str {
        self.model
            .split_once(':')
            .map_or("openai", |(provider, _)| provider)
    }
}

/// One entry of `tools`: a tool name (in the reference, a Python import path
/// such as `app.tools.get_weather`), or an MCP tool object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolSpec {
    /// A tool compiled into the worker, looked up by name.
    Name(String),
    /// A tool served by an MCP server.
    Mcp(Box<McpToolSpec>),
}

impl ToolSpec {
    /// The name the model sees: the last segment of an import path, or the
    /// MCP tool's name.
    pub fn tool_name(&self) -> &str {
        match self {
            ToolSpec::Name(path) => path.rsplit('.').next().unwrap_or(path),
            ToolSpec::Mcp(tool) => &tool.name,
        }
    }
}

/// An MCP tool object (`__mcp_tool__: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpToolSpec {
    /// Always true; marks the object as an MCP tool.
    #[serde(rename = "__mcp_tool__")]
    pub mcp_tool: bool,
    /// The name the model sees.
    pub name: String,
    /// The description the model sees.
    #[serde(default)]
    pub description: String,
    /// The JSON schema of the arguments.
    #[serde(default = "empty_object")]
    pub parameters: Value,
    /// The tool's name on its server.
    #[serde(default)]
    pub original_name: String,
    /// The server's name.
    #[serde(default)]
    pub server_name: String,
    /// How to reach the server.
    pub server_config: McpServerConfig,
    /// Keys this version does not know, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl McpToolSpec {
    /// The tool's name on its server (`original_name`, else `name`).
    pub fn server_tool_name(&self) -> &str {
        if self.original_name.is_empty() {
            &self.name
        } else {
            &self.original_name
        }
    }
}

/// How to reach an MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServerConfig {
    /// `stdio`, `sse` or `streamable_http`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// The command to launch (stdio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its arguments (stdio).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its environment (stdio).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Its working directory (stdio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The server URL (HTTP transports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Request headers (HTTP transports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Call timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Keys this version does not know, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_transport() -> String {
    "stdio".to_owned()
}

/// How a swarm runs its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwarmMode {
    /// Each stage's text becomes the next stage's input.
    Workflow,
    /// An agent hands off by naming another agent.
    Handoff,
    /// The first agent leads and delegates to the others as tools.
    Team,
}

/// A swarm: several agents run as one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmConfig {
    /// The member agents.
    pub agents: Vec<AgentConfig>,
    /// The flow DSL, e.g. `a >> (b | c)`; the agents' order when absent.
    #[serde(default)]
    pub flow: Option<String>,
    /// How the agents cooperate.
    #[serde(default = "default_mode")]
    pub mode: SwarmMode,
    /// The handoff budget (handoff mode).
    #[serde(default = "default_max_handoffs")]
    pub max_handoffs: u32,
}

fn default_mode() -> SwarmMode {
    SwarmMode::Workflow
}

/// One stage of a workflow: agents that run side by side on the same input.
pub type FlowStage = Vec<String>;

impl SwarmConfig {
    /// The swarm's name: its member names joined by `+`.
    pub fn name(&self) -> String {
        self.agents
            .iter()
            .map(|agent| agent.name.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The stages in order: the parsed `flow`, or one stage per agent.
    pub fn stages(&self) -> Result<Vec<FlowStage>> {
        let names: Vec<&str> = self
            .agents
            .iter()
            .map(|agent| agent.name.as_str())
            .collect();
        match &self.flow {
            Some(flow) if !flow.trim().is_empty() => parse_flow(flow, &names),
            _ => Ok(names.iter().map(|name| vec![(*name).to_owned()]).collect()),
        }
    }

    /// Checks every member and the flow.
    pub fn validate(&self) -> Result<()> {
        if self.agents.is_empty() {
            return Err(Error::InvalidConfig(
                "a swarm needs at least one agent in `agents`".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for agent in &self.agents {
            agent.validate()?;
            if !seen.insert(agent.name.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "two swarm agents are named `{}`; names must be unique",
                    agent.name
                )));
            }
        }
        self.stages()?;
        Ok(())
    }

    /// The member with this name.
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|agent| agent.name == name)
    }
}

/// A validated `agent_config`: one agent, or a swarm.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentSpec {
    /// A single agent.
    Agent(Box<AgentConfig>),
    /// A swarm, detected by its `agents` key.
    Swarm(SwarmConfig),
}

impl AgentSpec {
    /// Parses and validates an `agent_config` object.
    pub fn from_map(config: &Map<String, Value>) -> Result<Self> {
        let value = Value::Object(config.clone());
        let spec = if config.contains_key("agents") {
            AgentSpec::Swarm(crate::decode_value("swarm config", value)?)
        } else {
            AgentSpec::Agent(Box::new(crate::decode_value("agent config", value)?))
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the config.
    pub fn validate(&self) -> Result<()> {
        match self {
            AgentSpec::Agent(agent) => agent.validate(),
            AgentSpec::Swarm(swarm) => swarm.validate(),
        }
    }

    /// The agent's name, or the swarm's.
    pub fn name(&self) -> String {
        match self {
            AgentSpec::Agent(agent) => agent.name.clone(),
            AgentSpec::Swarm(swarm) => swarm.name(),
        }
    }

    /// The config as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        let value = match self {
            AgentSpec::Agent(agent) => serde_json::to_value(agent),
            AgentSpec::Swarm(swarm) => serde_json::to_value(swarm),
        };
        match value {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }
}

/// Parses the flow DSL: agent names joined by `>>` (sequence), where a stage
/// may be a parenthesised group joined by `|` (parallel), e.g.
/// `research >> (draft | review) >> publish`. Every name must be one of
/// `agents`, and an agent may appear only once (a repeat would be a cycle).
pub fn parse_flow(flow: &str, agents: &[&str]) -> Result<Vec<FlowStage>> {
    let fail = |reason: String| Error::InvalidFlow {
        flow: flow.to_owned(),
        reason,
    };
    let mut stages = Vec::new();
    let mut seen = BTreeSet::new();
    for (position, raw_stage) in flow.split(">>").enumerate() {
        let mut stage = raw_stage.trim();
        if stage.is_empty() {
            return Err(fail(format!("stage {} is empty", position + 1)));
        }
        let grouped = stage.starts_with('(');
        if grouped {
            if !stage.ends_with(')') {
                return Err(fail(format!(
                    "stage `{stage}` opens a group that is not closed"
                )));
            }
            stage = stage[1..stage.len() - 1].trim();
        } else if stage.contains(['(', ')']) {
            return Err(fail(format!("stage `{stage}` has unbalanced parentheses")));
        }
        let mut members = Vec::new();
        for name in stage.split('|') {
            let name = name.trim();
            if name.is_empty() {
                return Err(fail(format!(
                    "stage `{}` has an empty name",
                    raw_stage.trim()
                )));
            }
            if name.contains(['(', ')', ' ', '>', '<']) {
                return Err(fail(format!(
                    "`{name}` is not an agent name (nested groups are not supported)"
                )));
            }
            if !agents.contains(&name) {
                return Err(fail(format!(
                    "unknown agent `{name}` (agents: {})",
                    agents.join(", ")
                )));
            }
            if !seen.insert(name.to_owned()) {
                return Err(fail(format!(
                    "agent `{name}` appears more than once, which would make a cycle"
                )));
            }
            members.push(name.to_owned());
        }
        stages.push(members);
    }
    Ok(stages)
}
