//! Swarms: several agents run as one task, in one of three modes.
//!
//! Every member uses its own model, through its own provider from the
//! factory. Members' events stream with their own `agent_name`; no member
//! emits a terminal `status`, so the task's stream ends with exactly one,
//! the caller's (see [`crate::RunOutcome::terminal_event`]).
//!
//! # `workflow`
//!
//! The stages of `flow` (or the agents in order) run one after another.
//! Each stage's output is the next stage's input; the payload's history
//! goes to the first stage only. A parallel group `(b | c)` runs its
//! agents concurrently on the same input, and their outputs are joined
//! with a blank line, in declared order. The swarm's output is the last
//! stage's. A failing member fails the swarm.
//!
//! # `handoff`
//!
//! The first agent of the flow (or of `agents`) answers first. An agent
//! hands off when its final reply, trimmed, starts with another member's
//! exact name (case-sensitive, the longest name wins) followed by the end
//! of the reply or a character that is not a letter, digit or `_`. The
//! rest of the reply, without leading spaces and `:`, `,`, `-`, `.`, `!`
//! or `;`, is the input for that member; when it is empty, the original
//! input is. The member sees the history plus the conversation so far
//! (the user input and the previous agent's whole answer). Each member's
//! instructions get a sentence that explains this rule and lists the
//! others. More than `max_handoffs` handoffs fail the swarm
//! (`MaxHandoffsExceeded`, non-retryable). The output is the last agent's.
//! For example, with members `triage` and `billing`, the reply
//! `billing: customer wants a refund` runs `billing` on
//! `customer wants a refund`.
//!
//! # `team`
//!
//! The first agent leads. It gets one tool per other member,
//! `delegate_to_<name>` (the name with every character other than
//! letters, digits, `_` and `-` replaced by `_`), taking `{"task": "..."}`.
//! Calling it runs that member on the task, with no history, and returns
//! its output; a failing member returns a tool error to the lead. The
//! swarm's output is the lead's.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use exo_proto::{ErrorType, Message, SwarmConfig, SwarmMode, ToolOutput};
use serde_json::{Map, Value, json};

use crate::{
    agent_loop::{AgentRun, Failure, PreparedAgent, emit_error, run_agent},
    runner::RunContext,
    tool::{Tool, ToolContext},
};

/// A swarm ready to run.
#[derive(Debug)]
pub(crate) struct SwarmPlan {
    pub(crate) config: SwarmConfig,
    pub(crate) name: String,
    pub(crate) stages: Vec<Vec<String>>,
    pub(crate) members: BTreeMap<String, Arc<PreparedAgent>>,
}

impl SwarmPlan {
    fn member(&self, name: &str) -> &PreparedAgent {
        self.members
            .get(name)
            .map(Arc::as_ref)
            .expect("the flow names only members; SwarmConfig::stages checked it")
    }

    fn first(&self) -> &str {
        self.stages
            .first()
            .and_then(|stage| stage.first())
            .map_or_else(|| self.config.agents[0].name.as_str(), String::as_str)
    }
}

/// The tool name the lead of a team sees for delegating to `member`.
pub(crate) fn delegate_tool_name(member: &str) -> String {
    let safe: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("delegate_to_{safe}")
}

/// The sentence added to each member's instructions in handoff mode.
pub(crate) fn handoff_instructions(config: &SwarmConfig, member: &str) -> String {
    let others: Vec<&str> = config
        .agents
        .iter()
        .map(|agent| agent.name.as_str())
        .filter(|name| *name != member)
        .collect();
    format!(
        "To hand the conversation to another agent, reply with only its name ({}), \
         optionally followed by a colon and a message for it.",
        others.join(", ")
    )
}

/// The member a reply hands off to, and the message for it (see the module
/// docs for the rule).
pub(crate) fn handoff_target<'a>(
    reply: &'a str,
    current: &str,
    members: &[&'a str],
) -> Option<(&'a str, &'a str)> {
    let reply = reply.trim();
    let mut candidates: Vec<&str> = members
        .iter()
        .copied()
        .filter(|name| *name != current && !name.is_empty())
        .collect();
    candidates.sort_by_key(|name| std::cmp::Reverse(name.len()));
    candidates.into_iter().find_map(|name| {
        let rest = reply.strip_prefix(name)?;
        match rest.chars().next() {
            Some(next) if next.is_alphanumeric() || next == '_' => None,
            _ => Some((
                name,
                rest.trim_start_matches(|c: char| {
                    c.is_whitespace() || matches!(c, ':' | ',' | '-' | '.' | '!' | ';')
                })
                .trim_end(),
            )),
        }
    })
}

/// Runs a swarm in its mode.
pub(crate) async fn run_swarm(
    ctx: &RunContext,
    plan: &SwarmPlan,
    input: &str,
    history: Vec<Message>,
) -> AgentRun {
    match plan.config.mode {
        SwarmMode::Workflow => workflow(ctx, plan, input, history).await,
        SwarmMode::Handoff => handoff(ctx, plan, input, history).await,
        SwarmMode::Team => {
            let lead = plan.config.agents[0].name.as_str();
            run_agent(ctx, plan.member(lead), lead, input, history).await
        }
    }
}

async fn workflow(
    ctx: &RunContext,
    plan: &SwarmPlan,
    input: &str,
    history: Vec<Message>,
) -> AgentRun {
    let mut input = input.to_owned();
    let mut history = Some(history);
    for stage in &plan.stages {
        let stage_history = history.take().unwrap_or_default();
        let runs =
            futures::future::join_all(stage.iter().map(|name| {
                run_agent(ctx, plan.member(name), name, &input, stage_history.clone())
            }))
            .await;
        if let Some(failed) = runs.iter().find(|run| run.failure.is_some()) {
            return failed.clone();
        }
        if let Some(stopped) = runs.iter().find(|run| run.yielded || run.waiting.is_some()) {
            return stopped.clone();
        }
        input = runs
            .iter()
            .map(|run| run.output.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    AgentRun {
        final_text: input.clone(),
        output: input,
        ..AgentRun::default()
    }
}

async fn handoff(
    ctx: &RunContext,
    plan: &SwarmPlan,
    input: &str,
    mut history: Vec<Message>,
) -> AgentRun {
    let names: Vec<&str> = plan
        .config
        .agents
        .iter()
        .map(|agent| agent.name.as_str())
        .collect();
    let mut current = plan.first().to_owned();
    let mut current_input = input.to_owned();
    let mut handoffs = 0;
    loop {
        let run = run_agent(
            ctx,
            plan.member(&current),
            &current,
            &current_input,
            history.clone(),
        )
        .await;
        if run.failure.is_some() || run.waiting.is_some() || run.yielded {
            return run;
        }
        let Some((target, message)) = handoff_target(&run.final_text, &current, &names) else {
            return run;
        };
        handoffs += 1;
        if handoffs > plan.config.max_handoffs {
            let failure = Failure {
                message: format!(
                    "Swarm '{}' exceeded max_handoffs ({}): '{current}' handed off to '{target}'",
                    plan.name, plan.config.max_handoffs
                ),
                error_type: ErrorType::MaxHandoffsExceeded,
                retryable: false,
            };
            emit_error(ctx, &plan.name, &failure, None).await;
            return AgentRun::failed(failure);
        }
        tracing::debug!(from = %current, to = %target, "swarm handoff");
        history.push(Message::user(current_input.clone()));
        history.push(Message::assistant(run.output.clone(), Vec::new()));
        current_input = if message.is_empty() {
            input.to_owned()
        } else {
            message.to_owned()
        };
        current = target.to_owned();
    }
}

/// The `delegate_to_<member>` tool of a team's lead.
#[derive(Debug)]
pub(crate) struct DelegateTool {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) member: Arc<PreparedAgent>,
    pub(crate) ctx: Arc<RunContext>,
}

impl DelegateTool {
    pub(crate) fn new(member: Arc<PreparedAgent>, ctx: Arc<RunContext>) -> Self {
        let member_name = member.config.name.clone();
        let mut description =
            format!("Delegate a task to the agent '{member_name}' and get its answer.");
        if let Some(first_line) = member
            .config
            .instructions
            .lines()
            .find(|line| !line.trim().is_empty())
        {
            description.push_str(&format!(" Its instructions: {}", first_line.trim()));
        }
        DelegateTool {
            name: delegate_tool_name(&member_name),
            description,
            member,
            ctx,
        }
    }
}

#[async_trait]
impl Tool for DelegateTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "task": {
                    "type": "string",
                    "description": "What the agent should do, with all the context it needs.",
                }
            },
            "required": ["task"],
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let task = match arguments.get("task") {
            Some(Value::String(task)) => task.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(arguments.clone()).to_string(),
        };
        // A delegation's own scope: its model calls are found again by the
        // call that made it (stable once that answer is in the journal).
        let scope = format!("{}>{}", context.tool_call_id, self.member.config.name);
        let run = run_agent(&self.ctx, &self.member, &scope, &task, Vec::new()).await;
        match run.failure {
            None => Ok(ToolOutput::Text(run.output)),
            Some(failure) => Err(format!(
                "agent '{}' failed: {}",
                self.member.config.name, failure.message
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reply: &str, current: &str, expected: Option<(&str, &str)>) {
        let members = ["writer", "writer_pro", "reviewer", "a-b"];
        assert_eq!(
            handoff_target(reply, current, &members),
            expected,
            "reply {reply:?}"
        );
    }

    #[test]
    fn handoff_rule() {
        check("writer", "reviewer", Some(("writer", "")));
        check(
            "  writer: make it short \n",
            "reviewer",
            Some(("writer", "make it short")),
        );
        check(
            "writer_pro, please",
            "reviewer",
            Some(("writer_pro", "please")),
        );
        check("writers are great", "reviewer", None);
        check("Writer", "reviewer", None);
        check("writer", "writer", None);
        check("The writer should do it", "reviewer", None);
        check("a-b - go", "writer", Some(("a-b", "go")));
        check("reviewer.", "writer", Some(("reviewer", "")));
    }

    #[test]
    fn delegate_names_are_safe() {
        assert_eq!(delegate_tool_name("writer"), "delegate_to_writer");
        assert_eq!(
            delegate_tool_name("data analyst.v2"),
            "delegate_to_data_analyst_v2"
        );
    }
}
