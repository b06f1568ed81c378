//! `/v1/tasks`: submit, list, read, cancel and wait.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use exo_broker::{CancelOutcome, Decided, Decision, Submitted, TaskQuery};
use exo_proto::{TaskPayload, TaskResult, TaskStatus};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::IntoParams;

use super::{
    ApiJson, ApiQuery, AppState,
    views::{
        ApproveBody, CancelView, DecisionView, DenyBody, ListQuery, SubmittedView, TaskPageView,
        TaskSubmission, TaskView,
    },
};
use crate::{
    auth::{Caller, Scope},
    error::Problem,
};

/// The longest page of `GET /v1/tasks`.
const MAX_PAGE: usize = 500;

/// Queues a task.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    request_body = TaskSubmission,
    params(("Idempotency-Key" = Option<String>, Header, description = "A key that makes a repeated submission return the first task (scoped to the token's tenant)")),
    responses(
        (status = 201, description = "Queued", body = SubmittedView),
        (status = 200, description = "The Idempotency-Key or task id was seen before; the earlier task", body = SubmittedView),
        (status = 400, description = "Not a valid submission", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(submission): ApiJson<TaskSubmission>,
) -> Result<Response, Problem> {
    caller.require(Scope::Submit)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| !key.is_empty() && key.len() <= 200)
                .ok_or_else(|| {
                    Problem::bad_request(
                        "Idempotency-Key must be 1 to 200 visible ASCII characters",
                    )
                })?;
            // One tenant's key never names another tenant's task.
            Some(match &caller.tenant {
                Some(tenant) => format!("{tenant}/{key}"),
                None => key.to_owned(),
            })
        }
    };
    let mut payload = payload(&state, &caller, submission)?;
    payload.idempotency_key = idempotency_key;
    let handle = state.broker.client().submit(payload).await?;
    let created = handle.submitted() == Submitted::Created;
    let body = SubmittedView {
        task_id: handle.task_id().to_owned(),
        created,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

/// Builds the task payload of a submission.
fn payload(
    state: &AppState,
    caller: &Caller,
    submission: TaskSubmission,
) -> Result<TaskPayload, Problem> {
    let agent_config = match (submission.agent_config, submission.agent) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give either `agent_config` or `agent`, not both",
            ));
        }
        (Some(config), None) => config,
        (None, Some(name)) => state.config.agents.get(&name).cloned().ok_or_else(|| {
            Problem::bad_request(format!(
                "no agent named `{name}` in the gateway's configuration (known: {})",
                state
                    .config
                    .agents
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        (None, None) => {
            return Err(Problem::bad_request(
                "`agent_config` (an agent's configuration) or `agent` (a configured agent's name) is required",
            ));
        }
    };
    let mut fields = Map::new();
    fields.insert(
        "task_id".to_owned(),
        Value::String(
            submission
                .task_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        ),
    );
    fields.insert("agent_config".to_owned(), Value::Object(agent_config));
    let mut metadata = submission.metadata.unwrap_or_default();
    match &caller.tenant {
        Some(tenant) => {
            metadata.insert("tenant".to_owned(), Value::String(tenant.clone()));
        }
        None => {
            if metadata
                .get("tenant")
                .is_some_and(|tenant| !tenant.is_string())
            {
                return Err(Problem::bad_request("`metadata.tenant` must be a string"));
            }
        }
    }
    fields.insert("metadata".to_owned(), Value::Object(metadata));
    let run_at = match (submission.run_at, submission.delay_seconds) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give `run_at` or `delay_seconds`, not both",
            ));
        }
        (_, Some(delay)) if !delay.is_finite() || delay < 0.0 => {
            return Err(Problem::bad_request(
                "`delay_seconds` must be a number of seconds, 0 or more",
            ));
        }
        (_, Some(delay)) => Some(exo_proto::time::now_seconds() + delay),
        (run_at, None) => run_at,
    };
    let optional = [
        (
            "run_at",
            run_at
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        ),
        ("input", submission.input.map(Value::String)),
        ("messages", submission.messages.map(Value::Array)),
        ("model", submission.model.map(Value::String)),
        ("detailed", submission.detailed.map(Value::Bool)),
        (
            "timeout_seconds",
            submission
                .timeout_seconds
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        ),
        ("max_retries", submission.max_retries.map(Value::from)),
        ("budget", submission.budget.map(Value::Object)),
        ("priority", submission.priority.map(Value::from)),
        (
            "concurrency_key",
            submission.concurrency_key.map(Value::String),
        ),
        (
            "concurrency_limit",
            submission.concurrency_limit.map(Value::from),
        ),
        (
            "multitask_strategy",
            submission.multitask_strategy.map(Value::String),
        ),
        (
            "created_at",
            submission
                .created_at
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.insert(name.to_owned(), value);
        }
    }
    let payload: TaskPayload = serde_json::from_value(Value::Object(fields)).map_err(|error| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a valid task: {error}"),
        )
    })?;
    payload.validate().map_err(|error| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a valid task: {error}"),
        )
    })?;
    payload.agent_spec().map_err(|error| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a valid agent configuration: {error}"),
        )
    })?;
    Ok(payload)
}

/// Lists tasks, newest first.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPageView),
        (status = 400, description = "Bad filter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TaskPageView>, Problem> {
    caller.require(Scope::Read)?;
    let status = query
        .status
        .filter(|status| !status.is_empty())
        .map(|status| {
            status.parse::<TaskStatus>().map_err(|_| {
                Problem::bad_request(format!(
                    "unknown status `{status}` (pending, running, completed, failed, cancelled, retrying)"
                ))
            })
        })
        .transpose()?;
    let page = state
        .broker
        .client()
        .query(&TaskQuery {
            status,
            tenant: caller.tenant.clone(),
            agent: query.agent.filter(|agent| !agent.is_empty()),
            limit: query.limit.unwrap_or(50).clamp(1, MAX_PAGE),
            cursor: query.cursor.unwrap_or(0),
        })
        .await?;
    Ok(Json(TaskPageView {
        tasks: page.tasks.into_iter().map(TaskView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The task, if the caller may see it.
pub(crate) async fn visible_task(
    state: &AppState,
    caller: &Caller,
    task_id: &str,
) -> Result<TaskResult, Problem> {
    match state.broker.client().get(task_id).await {
        Ok(Some(task)) if caller.can_see(&task) => Ok(task),
        Ok(_) => Err(Problem::no_task(task_id)),
        // An id Redis refuses (too long, say) names no task either.
        Err(exo_broker::Error::Wire(_)) => Err(Problem::no_task(task_id)),
        Err(error) => Err(error.into()),
    }
}

/// Reads a task.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<TaskView>, Problem> {
    caller.require(Scope::Read)?;
    Ok(Json(visible_task(&state, &caller, &task_id).await?.into()))
}

/// Cancels a task: a queued one never starts, a running one is stopped.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/cancel",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "What the cancel did", body = CancelView),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<CancelView>, Problem> {
    caller.require(Scope::Cancel)?;
    visible_task(&state, &caller, &task_id).await?;
    let (outcome, status) = match state.broker.client().cancel(&task_id).await? {
        CancelOutcome::Cancelled => ("cancelled", None),
        CancelOutcome::Cancelling => ("cancelling", None),
        CancelOutcome::AlreadyFinished(status) => {
            ("already_finished", Some(status.as_str().to_owned()))
        }
        CancelOutcome::NotFound => return Err(Problem::no_task(&task_id)),
    };
    tracing::info!(
        task_id,
        caller = caller.name.as_deref().unwrap_or("-"),
        outcome,
        "cancel over HTTP"
    );
    Ok(Json(CancelView {
        task_id,
        outcome: outcome.to_owned(),
        status,
    }))
}

/// Approves the tool call the task waits at (a tool in its agent's
/// `hitl_tools`): the run goes on, on any worker, from its journal.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/approve",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id")),
    request_body = ApproveBody,
    responses(
        (status = 200, description = "Recorded; the task is queued again", body = DecisionView),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task waits for no approval", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<DecisionView>, Problem> {
    let decision = Decision {
        approved: true,
        by: String::new(),
        reason: None,
        arguments: body.arguments,
        tool_call_id: body.tool_call_id,
    };
    decide(&state, &caller, task_id, decision).await
}

/// Denies the tool call the task waits at; the model is told why.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/deny",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id")),
    request_body = DenyBody,
    responses(
        (status = 200, description = "Recorded; the task is queued again", body = DecisionView),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task waits for no approval", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn deny(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    ApiJson(body): ApiJson<DenyBody>,
) -> Result<Json<DecisionView>, Problem> {
    let decision = Decision {
        approved: false,
        by: String::new(),
        reason: Some(body.reason),
        arguments: None,
        tool_call_id: body.tool_call_id,
    };
    decide(&state, &caller, task_id, decision).await
}

/// A decision over HTTP: needs the `cancel` scope (it steers a task that
/// already runs); the token's name is recorded as who decided.
async fn decide(
    state: &AppState,
    caller: &Caller,
    task_id: String,
    mut decision: Decision,
) -> Result<Json<DecisionView>, Problem> {
    caller.require(Scope::Cancel)?;
    visible_task(state, caller, &task_id).await?;
    decision.by = caller.name.clone().unwrap_or_else(|| "http".to_owned());
    let outcome = if decision.approved {
        "approved"
    } else {
        "denied"
    };
    match state.broker.client().decide(&task_id, &decision).await? {
        Decided::Resumed { tool_name } => {
            tracing::info!(
                task_id,
                by = decision.by,
                outcome,
                tool_name,
                "decision over HTTP"
            );
            Ok(Json(DecisionView {
                task_id,
                outcome: outcome.to_owned(),
                tool_name,
                by: decision.by,
            }))
        }
        Decided::NotWaiting(status) => Err(Problem::conflict(format!(
            "task `{task_id}` waits for no approval (status {})",
            status.map_or_else(|| "unknown".to_owned(), |status| status.as_str().to_owned())
        ))),
        Decided::NotFound => Err(Problem::no_task(&task_id)),
    }
}

/// The query of `wait`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// Seconds to wait at most (default 30, at most the request timeout
    /// less one second).
    timeout: Option<f64>,
}

/// Waits until the task ends.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}/wait",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id"), WaitQuery),
    responses(
        (status = 200, description = "The task ended", body = TaskView),
        (status = 202, description = "Still running when the timeout passed", body = TaskView),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let ceiling = state
        .config
        .request_timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(100));
    let timeout = query
        .timeout
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(30))
        .min(ceiling);
    let task = visible_task(&state, &caller, &task_id).await?;
    if task.status.is_terminal() {
        return Ok((StatusCode::OK, Json(TaskView::from(task))).into_response());
    }
    // Follow from the latest event, then read again, so an end between the
    // first read and the follow is not missed.
    let mut following = state.follower.follow(&task_id, Some("$")).await?;
    let task = state
        .broker
        .client()
        .get(&task_id)
        .await?
        .ok_or_else(|| Problem::no_task(&task_id))?;
    if !task.status.is_terminal() {
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(item)) = following.next().await {
                if item.event.is_terminal() {
                    break;
                }
            }
        })
        .await;
    }
    let task = state
        .broker
        .client()
        .get(&task_id)
        .await?
        .ok_or_else(|| Problem::no_task(&task_id))?;
    let status = if task.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(TaskView::from(task))).into_response())
}
