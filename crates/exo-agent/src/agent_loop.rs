//! The step loop of one agent.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use exo_models::{Completion, ModelProvider, ModelRequest, ToolDefinition};
use exo_proto::{
    AgentConfig, ApprovalRequest, Content, ErrorEvent, ErrorType, JournalRecord, Message,
    ModelRecord, ReasoningEvent, RunStatus, StatusEvent, StepEvent, StepKey, StepStatus,
    StreamEvent, TextEvent, ToolCall, ToolCallDeltaEvent, ToolCallEvent, ToolOutput, ToolRecord,
    ToolResultEvent, Usage, UsageEvent,
};
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value, json};

use crate::{
    gate::{GateDecision, GatePermit, estimate_tokens, with_jitter},
    runner::RunContext,
    tool::{Tool, ToolContext},
};

/// A tool as one agent offers it: the name the model sees and the tool.
#[derive(Debug, Clone)]
pub(crate) struct BoundTool {
    pub(crate) name: String,
    pub(crate) tool: Arc<dyn Tool>,
}

/// An agent ready to run: its config, its provider and its tools.
#[derive(Debug)]
pub(crate) struct PreparedAgent {
    pub(crate) config: AgentConfig,
    pub(crate) provider: Arc<dyn ModelProvider>,
    pub(crate) tools: Vec<BoundTool>,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) error_type: ErrorType,
    pub(crate) retryable: bool,
}

/// What one agent's run produced.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentRun {
    /// All text of every step.
    pub(crate) output: String,
    /// The text of the last step.
    pub(crate) final_text: String,
    pub(crate) failure: Option<Failure>,
    /// The run stopped at a call that waits for a person's approval.
    pub(crate) waiting: Option<ApprovalRequest>,
    /// The run stopped at its step limit, before a new call.
    pub(crate) yielded: bool,
}

impl AgentRun {
    pub(crate) fn failed(failure: Failure) -> Self {
        AgentRun {
            failure: Some(failure),
            ..AgentRun::default()
        }
    }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// The schema the model sees: the tool's own, with the agent's injected
/// arguments added as optional properties. An injected value that is an
/// object is the property's schema; any other value describes a string
/// property.
fn definition(bound: &BoundTool, injected: &Map<String, Value>) -> ToolDefinition {
    let mut parameters = bound.tool.parameters();
    if !parameters.is_object() {
        parameters = json!({"type": "object", "properties": {}});
    }
    if !injected.is_empty() {
        let object = parameters.as_object_mut().expect("made an object above");
        object
            .entry("type")
            .or_insert_with(|| Value::from("object"));
        let properties = object
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if !properties.is_object() {
            *properties = Value::Object(Map::new());
        }
        let properties = properties.as_object_mut().expect("made an object above");
        for (name, value) in injected {
            let schema = match value {
                Value::Object(_) => value.clone(),
                Value::String(description) => json!({"type": "string", "description": description}),
                other => json!({"type": "string", "description": other.to_string()}),
            };
            properties.insert(name.clone(), schema);
        }
    }
    ToolDefinition {
        name: bound.name.clone(),
        description: bound.tool.description().to_owned(),
        parameters,
    }
}

/// How one tool call ended.
enum ToolEnd {
    Output(ToolOutput),
    Error(String),
    Panic(String),
}

struct ToolRun {
    arguments: Map<String, Value>,
    end: ToolEnd,
    duration_ms: f64,
}

/// Parses the model's arguments JSON: empty means no arguments, anything
/// but an object is an error for the model to fix.
fn parse_arguments(tool: &str, arguments: &str) -> Result<Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "Invalid arguments for tool '{tool}': expected a JSON object, got {other}"
        )),
        Err(error) => Err(format!("Invalid JSON arguments for tool '{tool}': {error}")),
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned())
}

/// What to do with one tool call of a step.
enum CallPlan {
    /// An earlier attempt ran it: its recorded result.
    Replayed(ToolRecord),
    /// Run it now, with these arguments (the model's, or the approver's).
    Run(String),
    /// A person denied it: the model is told.
    Denied(String),
    /// It needs a person's approval, and none was given yet.
    Wait,
    /// The run's step limit is spent: a later step runs it.
    Yield,
}

fn plan_call(ctx: &RunContext, agent: &PreparedAgent, key: &StepKey, call: &ToolCall) -> CallPlan {
    if let Some(record) = ctx.replay.tool(key, &call.id) {
        return CallPlan::Replayed(record.clone());
    }
    if !agent.config.hitl_tools.contains(&call.name) {
        return CallPlan::Run(call.arguments.clone());
    }
    match ctx.replay.decision(key, &call.id) {
        None => CallPlan::Wait,
        Some(decision) if decision.approved => CallPlan::Run(
            decision
                .arguments
                .clone()
                .unwrap_or_else(|| call.arguments.clone()),
        ),
        Some(decision) => CallPlan::Denied(match &decision.reason {
            Some(reason) => format!(
                "The call to tool '{}' was denied by {}: {reason}",
                call.name, decision.by
            ),
            None => format!(
                "The call to tool '{}' was denied by {}",
                call.name, decision.by
            ),
        }),
    }
}

async fn run_tool(
    ctx: &RunContext,
    agent: &PreparedAgent,
    key: &StepKey,
    call: &ToolCall,
    arguments: &str,
) -> ToolRun {
    let span = tracing::info_span!(
        "exo.tool.call",
        agent = %agent.config.name,
        tool = %call.name,
        tool_call_id = %call.id
    );
    tracing::Instrument::instrument(run_tool_in_span(ctx, agent, key, call, arguments), span).await
}

async fn run_tool_in_span(
    ctx: &RunContext,
    agent: &PreparedAgent,
    key: &StepKey,
    call: &ToolCall,
    arguments: &str,
) -> ToolRun {
    ctx.resumed().await;
    let started = Instant::now();
    let (arguments, end) = match parse_arguments(&call.name, arguments) {
        Err(message) => (Map::new(), ToolEnd::Error(message)),
        Ok(arguments) => {
            let end = match agent.tools.iter().find(|bound| bound.name == call.name) {
                None => {
                    let available: Vec<&str> = agent
                        .tools
                        .iter()
                        .map(|bound| bound.name.as_str())
                        .collect();
                    ToolEnd::Error(format!(
                        "Tool '{}' not found (available: {})",
                        call.name,
                        if available.is_empty() {
                            "none".to_owned()
                        } else {
                            available.join(", ")
                        }
                    ))
                }
                Some(bound) => {
                    let mut stripped = arguments.clone();
                    for injected in agent.config.injected_tool_args.keys() {
                        stripped.remove(injected);
                    }
                    let context = ToolContext {
                        agent_name: agent.config.name.clone(),
                        tool_call_id: call.id.clone(),
                        cancel: ctx.cancel.clone(),
                        idempotency_key: ctx.idempotency_key(key, &call.id),
                    };
                    match AssertUnwindSafe(bound.tool.call(stripped, &context))
                        .catch_unwind()
                        .await
                    {
                        Ok(Ok(output)) => ToolEnd::Output(output),
                        Ok(Err(message)) => ToolEnd::Error(message),
                        Err(payload) => ToolEnd::Panic(panic_message(payload.as_ref())),
                    }
                }
            };
            (arguments, end)
        }
    };
    ToolRun {
        arguments,
        end,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Runs one agent: the system message from `instructions` when it is not
/// empty, then `history`, then `input` as the user message, and the step
/// loop until a step asks for no tools or `max_steps` is reached. Emits
/// every event of the run except the terminal `status`.
pub(crate) async fn run_agent(
    ctx: &RunContext,
    agent: &PreparedAgent,
    scope: &str,
    input: &str,
    history: Vec<Message>,
) -> AgentRun {
    let config = &agent.config;
    let name = config.name.as_str();
    let emitter = &ctx.emitter;
    // A run that an earlier attempt started goes on from its journal: the
    // events of what it replays are already in the task's stream.
    let first_key = StepKey {
        scope: scope.to_owned(),
        call: ctx.peek_model_call(scope),
    };
    if ctx.replay.model(&first_key).is_none() {
        emitter
            .event(StreamEvent::status(
                RunStatus::Starting,
                name,
                format!("Agent '{name}' starting execution"),
            ))
            .await;
    }

    let mut messages = Vec::with_capacity(history.len() + 2);
    if !config.instructions.is_empty() {
        messages.push(Message::system(config.instructions.clone()));
    }
    messages.extend(history);
    messages.push(Message::user(input));
    let tools: Vec<ToolDefinition> = agent
        .tools
        .iter()
        .map(|bound| definition(bound, &config.injected_tool_args))
        .collect();

    let mut output = String::new();
    for step in 1..=config.max_steps {
        let key = StepKey {
            scope: scope.to_owned(),
            call: ctx.next_model_call(scope),
        };
        let replayed = ctx.replay.model(&key).cloned();
        // Whether this step did anything new (its events are then due).
        let mut fresh = replayed.is_none();
        let started_at = unix_now();
        let completion = match replayed {
            Some(record) => {
                if let Some(usage) = record.usage {
                    ctx.add_usage(&config.model, usage);
                }
                Completion::replayed(record.text, record.tool_calls, record.usage)
            }
            None => {
                if !ctx.take_step(scope) {
                    return AgentRun {
                        output,
                        yielded: true,
                        ..AgentRun::default()
                    };
                }
                let request = ModelRequest {
                    messages: messages.clone(),
                    tools: tools.clone(),
                    temperature: Some(config.temperature),
                    max_tokens: config.max_tokens,
                };
                if let Some(failure) = budget_spent(ctx) {
                    emit_error(ctx, name, &failure, Some(step)).await;
                    return AgentRun {
                        output,
                        failure: Some(failure),
                        ..AgentRun::default()
                    };
                }
                let permit = match admit(ctx, agent, &request).await {
                    Ok(permit) => permit,
                    Err(failure) => {
                        emit_error(ctx, name, &failure, Some(step)).await;
                        return AgentRun {
                            output,
                            failure: Some(failure),
                            ..AgentRun::default()
                        };
                    }
                };
                // The step starts once the call may be sent: a step refused
                // by the budget or the gate leaves no `step started` behind.
                emitter
                    .event(StreamEvent::Step(StepEvent {
                        step_number: step,
                        agent_name: name.to_owned(),
                        status: StepStatus::Started,
                        started_at,
                        completed_at: None,
                        usage: None,
                    }))
                    .await;
                let result = stream_step(ctx, agent, &request).await;
                settle(ctx, agent, permit.as_ref(), &result).await;
                let completion = match result {
                    Ok(completion) => completion,
                    Err(error) => {
                        let failure = Failure {
                            message: error.to_string(),
                            error_type: error.error_type(),
                            retryable: error.is_retryable(),
                        };
                        emit_error(ctx, name, &failure, Some(step)).await;
                        return AgentRun {
                            output,
                            failure: Some(failure),
                            ..AgentRun::default()
                        };
                    }
                };
                emitter
                    .journal(JournalRecord::Model(ModelRecord {
                        key: key.clone(),
                        attempt: ctx.attempt,
                        text: completion.text.clone(),
                        tool_calls: completion.tool_calls(),
                        usage: completion.usage,
                    }))
                    .await;
                if let Some(usage) = completion.usage {
                    ctx.add_usage(&config.model, usage);
                    emitter.spent(&config.model, usage).await;
                    emitter
                        .event(StreamEvent::Usage(UsageEvent {
                            usage,
                            agent_name: name.to_owned(),
                            step_number: step,
                            model: config.model.clone(),
                        }))
                        .await;
                }
                completion
            }
        };
        output.push_str(&completion.text);
        let calls = completion.tool_calls();
        let assistant = Message::assistant(completion.text.clone(), calls.clone());
        messages.push(assistant.clone());
        if fresh {
            emitter.message(name, assistant).await;
        }

        let step_completed = |usage: Option<Usage>| {
            StreamEvent::Step(StepEvent {
                step_number: step,
                agent_name: name.to_owned(),
                status: StepStatus::Completed,
                started_at,
                completed_at: Some(unix_now()),
                usage,
            })
        };
        if calls.is_empty() {
            if fresh {
                emitter.event(step_completed(completion.usage)).await;
            }
            return AgentRun {
                output,
                final_text: completion.text,
                ..AgentRun::default()
            };
        }

        if fresh {
            for call in &calls {
                emitter
                    .event(StreamEvent::ToolCall(ToolCallEvent {
                        tool_name: call.name.clone(),
                        tool_call_id: call.id.clone(),
                        arguments: call.arguments.clone(),
                        agent_name: name.to_owned(),
                    }))
                    .await;
            }
        }
        let plans: Vec<CallPlan> = calls
            .iter()
            .map(|call| match plan_call(ctx, agent, &key, call) {
                CallPlan::Run(_) if !ctx.take_step(scope) => CallPlan::Yield,
                plan => plan,
            })
            .collect();
        let runs = futures::future::join_all(calls.iter().zip(&plans).map(|(call, plan)| {
            let key = &key;
            async move {
                match plan {
                    CallPlan::Run(arguments) => {
                        Some(run_tool(ctx, agent, key, call, arguments).await)
                    }
                    CallPlan::Denied(message) => Some(ToolRun {
                        arguments: parse_arguments(&call.name, &call.arguments).unwrap_or_default(),
                        end: ToolEnd::Error(message.clone()),
                        duration_ms: 0.0,
                    }),
                    CallPlan::Replayed(_) | CallPlan::Wait | CallPlan::Yield => None,
                }
            }
        }))
        .await;
        let mut panicked = None;
        let mut waiting = None;
        let mut yielded = false;
        for ((call, plan), run) in calls.iter().zip(plans).zip(runs) {
            let (result, error) = match (plan, run) {
                (CallPlan::Replayed(record), _) => {
                    // Its events and message are in the stream and memory
                    // already; the model gets its result again.
                    messages.push(tool_message(call, record.output, record.error));
                    continue;
                }
                (CallPlan::Yield, _) => {
                    yielded = true;
                    continue;
                }
                (CallPlan::Wait, _) => {
                    waiting.get_or_insert_with(|| ApprovalRequest {
                        key: key.clone(),
                        agent_name: name.to_owned(),
                        tool_call_id: call.id.clone(),
                        tool_name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    });
                    continue;
                }
                (_, None) => continue,
                (_, Some(run)) => {
                    fresh = true;
                    let (result, error) = match run.end {
                        ToolEnd::Output(output) => (output, None),
                        ToolEnd::Error(message) => (ToolOutput::Text(String::new()), Some(message)),
                        ToolEnd::Panic(message) => {
                            let message = format!("Tool '{}' panicked: {message}", call.name);
                            panicked.get_or_insert_with(|| message.clone());
                            (ToolOutput::Text(String::new()), Some(message))
                        }
                    };
                    emitter
                        .event(StreamEvent::ToolResult(ToolResultEvent {
                            tool_name: call.name.clone(),
                            tool_call_id: call.id.clone(),
                            arguments: run.arguments,
                            result: result.clone(),
                            success: error.is_none(),
                            error: error.clone(),
                            duration_ms: run.duration_ms,
                            agent_name: name.to_owned(),
                        }))
                        .await;
                    if panicked.is_none() {
                        emitter
                            .journal(JournalRecord::Tool(ToolRecord {
                                key: key.clone(),
                                attempt: ctx.attempt,
                                tool_call_id: call.id.clone(),
                                tool_name: call.name.clone(),
                                output: result.clone(),
                                error: error.clone(),
                                duration_ms: run.duration_ms,
                            }))
                            .await;
                    }
                    (result, error)
                }
            };
            let message = tool_message(call, result, error);
            messages.push(message.clone());
            emitter.message(name, message).await;
        }
        if let Some(message) = panicked {
            let failure = Failure {
                message,
                error_type: ErrorType::ToolPanic,
                retryable: false,
            };
            emit_error(ctx, name, &failure, Some(step)).await;
            return AgentRun {
                output,
                failure: Some(failure),
                ..AgentRun::default()
            };
        }
        if yielded {
            // The calls that did not run are the next steps'.
            return AgentRun {
                output,
                yielded: true,
                ..AgentRun::default()
            };
        }
        if let Some(approval) = waiting {
            // The slot is freed; a decision resumes the run from here.
            return AgentRun {
                output,
                waiting: Some(approval),
                ..AgentRun::default()
            };
        }
        if fresh {
            emitter.event(step_completed(completion.usage)).await;
        }
    }

    let failure = Failure {
        message: format!(
            "Agent '{name}' reached max_steps ({}) without a final answer",
            config.max_steps
        ),
        error_type: ErrorType::MaxStepsExceeded,
        retryable: false,
    };
    emit_error(ctx, name, &failure, Some(config.max_steps)).await;
    AgentRun {
        output,
        failure: Some(failure),
        ..AgentRun::default()
    }
}

/// The conversation message of a tool's result.
fn tool_message(call: &ToolCall, result: ToolOutput, error: Option<String>) -> Message {
    let content = match result {
        ToolOutput::Text(text) => Content::Text(text),
        ToolOutput::Blocks(blocks) => Content::Blocks(blocks),
    };
    Message::Tool {
        tool_call_id: call.id.clone(),
        tool_name: call.name.clone(),
        content,
        error,
    }
}

/// The failure of a run whose token budget is spent, before it sends
/// another model call.
fn budget_spent(ctx: &RunContext) -> Option<Failure> {
    if let Some(max_cost) = ctx.budget.max_cost {
        let cost = ctx.cost();
        if cost >= max_cost {
            return Some(Failure {
                message: format!(
                    "the task's cost budget of ${max_cost} is spent (${cost:.6} used); no further model call"
                ),
                error_type: ErrorType::BudgetExceeded,
                retryable: false,
            });
        }
    }
    let max = ctx.budget.max_tokens?;
    let usage = ctx.usage();
    let used = usage
        .total_tokens
        .max(usage.input_tokens + usage.output_tokens);
    (used >= max).then(|| Failure {
        message: format!(
            "the task's token budget of {max} is spent ({used} tokens used); no further model call"
        ),
        error_type: ErrorType::BudgetExceeded,
        retryable: false,
    })
}

/// Waits until the run's gate admits the model call (at once without a
/// gate). The first wait is announced with a `status` event (`running`, with
/// the extension fields `waiting_for: "capacity"`, `rule`, `reason` and
/// `retry_in_ms`), sent whatever the run's `detailed` setting.
async fn admit(
    ctx: &RunContext,
    agent: &PreparedAgent,
    request: &ModelRequest,
) -> Result<Option<GatePermit>, Failure> {
    let Some(gate) = ctx.gate.clone() else {
        return Ok(None);
    };
    let model = agent.config.model.as_str();
    let tokens = estimate_tokens(request);
    let mut announced = false;
    loop {
        ctx.resumed().await;
        match gate.admit(model, tokens).await {
            Ok(GateDecision::Open) => return Ok(None),
            Ok(GateDecision::Granted(permit)) => return Ok(Some(permit)),
            Ok(GateDecision::Wait {
                retry_in,
                rule,
                reason,
            }) => {
                if !announced {
                    announced = true;
                    let name = agent.config.name.as_str();
                    let mut extra = Map::new();
                    extra.insert("waiting_for".into(), "capacity".into());
                    extra.insert("rule".into(), rule.clone().into());
                    extra.insert("reason".into(), reason.clone().into());
                    extra.insert(
                        "retry_in_ms".into(),
                        u64::try_from(retry_in.as_millis())
                            .unwrap_or(u64::MAX)
                            .into(),
                    );
                    ctx.emitter
                        .always(StreamEvent::Status(StatusEvent {
                            status: RunStatus::Running,
                            agent_name: name.to_owned(),
                            message: format!(
                                "waiting for model capacity: rule '{rule}' ({reason}), about {:.1} s",
                                retry_in.as_secs_f64()
                            ),
                            extra,
                        }))
                        .await;
                }
                tokio::time::sleep(with_jitter(retry_in)).await;
            }
            Ok(GateDecision::Refused(message)) => {
                return Err(Failure {
                    message,
                    error_type: ErrorType::Config,
                    retryable: false,
                });
            }
            Err(message) => {
                return Err(Failure {
                    message: format!("cannot reserve model capacity: {message}"),
                    error_type: ErrorType::Runtime,
                    retryable: true,
                });
            }
        }
    }
}

/// Tells the gate what an admitted call used, and passes on a provider's
/// request to back off.
async fn settle(
    ctx: &RunContext,
    agent: &PreparedAgent,
    permit: Option<&GatePermit>,
    result: &exo_models::Result<Completion>,
) {
    let Some(gate) = ctx.gate.as_ref() else {
        return;
    };
    match result {
        Ok(completion) => {
            if let (Some(permit), Some(usage)) = (permit, completion.usage) {
                let used = usage
                    .total_tokens
                    .max(usage.input_tokens + usage.output_tokens);
                gate.settle(permit, used).await;
            }
        }
        Err(error) => {
            if error.error_type() == ErrorType::RateLimit {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                gate.back_off(&agent.config.model, retry_after).await;
            }
        }
    }
}

/// Streams one model call, emitting `text`, `reasoning` and
/// `tool_call_delta` events in stream order, and returns the whole answer.
async fn stream_step(
    ctx: &RunContext,
    agent: &PreparedAgent,
    request: &ModelRequest,
) -> exo_models::Result<Completion> {
    let span = tracing::info_span!(
        "exo.model.call",
        agent = %agent.config.name,
        model = %agent.config.model
    );
    tracing::Instrument::instrument(stream_step_in_span(ctx, agent, request), span).await
}

async fn stream_step_in_span(
    ctx: &RunContext,
    agent: &PreparedAgent,
    request: &ModelRequest,
) -> exo_models::Result<Completion> {
    let name = agent.config.name.as_str();
    ctx.resumed().await;
    let mut stream = agent.provider.stream(request).await?;
    let mut completion = Completion::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(reasoning) = chunk.reasoning.as_ref().filter(|text| !text.is_empty()) {
            ctx.emitter
                .event(StreamEvent::Reasoning(ReasoningEvent {
                    text: reasoning.clone(),
                    agent_name: name.to_owned(),
                }))
                .await;
        }
        if !chunk.text.is_empty() {
            ctx.emitter
                .event(StreamEvent::Text(TextEvent {
                    text: chunk.text.clone(),
                    agent_name: name.to_owned(),
                }))
                .await;
        }
        for delta in &chunk.tool_calls {
            ctx.emitter
                .event(StreamEvent::ToolCallDelta(ToolCallDeltaEvent {
                    index: delta.index,
                    tool_call_id: delta.id.clone().unwrap_or_default(),
                    tool_name: delta.name.clone().unwrap_or_default(),
                    arguments_delta: delta.arguments.clone(),
                    agent_name: name.to_owned(),
                }))
                .await;
        }
        completion.push(&chunk);
    }
    Ok(completion)
}

pub(crate) async fn emit_error(
    ctx: &RunContext,
    agent_name: &str,
    failure: &Failure,
    step_number: Option<u32>,
) {
    ctx.emitter
        .event(StreamEvent::Error(ErrorEvent {
            error: failure.message.clone(),
            error_type: failure.error_type.to_string(),
            agent_name: agent_name.to_owned(),
            step_number,
            recoverable: false,
        }))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::GetWeather;

    #[test]
    fn arguments_parse_or_explain() {
        assert_eq!(parse_arguments("t", ""), Ok(Map::new()));
        assert_eq!(parse_arguments("t", r#"{"a": 1}"#).unwrap()["a"], json!(1));
        assert_eq!(
            parse_arguments("t", "[1]"),
            Err("Invalid arguments for tool 't': expected a JSON object, got [1]".to_owned())
        );
        let error = parse_arguments("t", r#"{"a": "#).unwrap_err();
        assert!(
            error.starts_with("Invalid JSON arguments for tool 't': "),
            "{error}"
        );
    }

    #[test]
    fn injected_arguments_extend_the_schema() {
        let bound = BoundTool {
            name: "get_weather".into(),
            tool: Arc::new(GetWeather),
        };
        let mut injected = Map::new();
        injected.insert("reason".into(), json!("Why you call this tool."));
        injected.insert("trace".into(), json!({"type": "integer"}));
        let definition = definition(&bound, &injected);
        assert_eq!(
            definition.parameters["properties"],
            json!({
                "city": {"type": "string", "description": "The city."},
                "reason": {"type": "string", "description": "Why you call this tool."},
                "trace": {"type": "integer"},
            })
        );
        assert_eq!(definition.parameters["required"], json!(["city"]));
    }
}
