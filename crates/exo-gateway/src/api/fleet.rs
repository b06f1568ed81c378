//! The fleet, the queue, dead letters, alerts, and who is calling.

use axum::{
    Json,
    extract::{Path, State},
};
use exo_observability::{AlertSnapshot, default_rules, evaluate, failure_rate};
use exo_proto::TaskStatus;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::{
    ApiQuery, AppState,
    views::{
        AlertsView, DeadLetterView, DeadLettersView, HistoryView, MeView, QueueView, RedriveView,
        WorkerHealthView, WorkerView, WorkersView,
    },
};
use crate::{
    auth::{Caller, Scope},
    error::Problem,
};

/// How many recent tasks the failure rate of `/v1/alerts` covers.
const RECENT_TASKS: usize = 500;

/// The caller's scopes and tenant (for a UI to enable its actions).
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "fleet",
    responses((status = 200, description = "The caller", body = MeView)),
    security(("bearer" = []))
)]
pub(crate) async fn me(State(state): State<AppState>, caller: Caller) -> Json<MeView> {
    Json(MeView {
        auth: !state.config.tokens.is_empty(),
        name: caller.name,
        scopes: caller.scopes.into_iter().collect(),
        tenant: caller.tenant,
    })
}

/// Every worker seen in the last hour.
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "fleet",
    responses(
        (status = 200, description = "The fleet", body = WorkersView),
        (status = 403, description = "A tenant's token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn workers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<WorkersView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    let now = exo_proto::time::now_seconds();
    let fleet = state.broker.admin().fleet().await?;
    Ok(Json(WorkersView {
        workers: fleet
            .into_iter()
            .map(|entry| WorkerView::new(entry, now))
            .collect(),
    }))
}

/// One worker's health.
#[utoipa::path(
    get,
    path = "/v1/workers/{worker_id}",
    tag = "fleet",
    params(("worker_id" = String, Path, description = "The worker id")),
    responses(
        (status = 200, description = "Its heartbeat and the verdict", body = WorkerHealthView),
        (status = 404, description = "No heartbeat", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn worker(
    State(state): State<AppState>,
    caller: Caller,
    Path(worker_id): Path<String>,
) -> Result<Json<WorkerHealthView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    let health = state
        .broker
        .admin()
        .worker(&worker_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no heartbeat from worker `{worker_id}`")))?;
    let report = health.check(exo_proto::time::now_seconds());
    Ok(Json(WorkerHealthView {
        worker_id,
        verdict: report.health.as_str().to_owned(),
        message: report.message,
        health: health.into(),
    }))
}

/// The queue's numbers now.
#[utoipa::path(
    get,
    path = "/v1/queue",
    tag = "fleet",
    responses((status = 200, description = "The queue", body = QueueView)),
    security(("bearer" = []))
)]
pub(crate) async fn queue(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    let stats = state.broker.admin().queue_stats().await?;
    Ok(Json(QueueView::new(stats, exo_proto::time::now_seconds())))
}

/// Throughput and depth over the last 15 minutes, sampled by this gateway.
#[utoipa::path(
    get,
    path = "/v1/queue/history",
    tag = "fleet",
    responses((status = 200, description = "Samples, oldest first", body = HistoryView)),
    security(("bearer" = []))
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<HistoryView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    Ok(Json(HistoryView {
        interval_seconds: state.config.sample_interval.as_secs_f64(),
        samples: state.history.samples(),
    }))
}

/// The query of the dead-letter list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadLetterQuery {
    /// How many, newest first (default 50, at most 1000).
    count: Option<u64>,
}

/// Tasks that failed for good.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "fleet",
    params(DeadLetterQuery),
    responses((status = 200, description = "Dead letters, newest first", body = DeadLettersView)),
    security(("bearer" = []))
)]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLettersView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    let count = query.count.unwrap_or(50).clamp(1, 1000);
    let letters = state.broker.admin().dead_letters(count).await?;
    Ok(Json(DeadLettersView {
        dead_letters: letters.into_iter().map(DeadLetterView::from).collect(),
    }))
}

/// Queues a dead letter's task again.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{entry_id}/redrive",
    tag = "fleet",
    params(("entry_id" = String, Path, description = "The dead-letter entry id")),
    responses(
        (status = 200, description = "Queued again", body = RedriveView),
        (status = 403, description = "Needs the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused (the task is not failed)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    Path(entry_id): Path<String>,
) -> Result<Json<RedriveView>, Problem> {
    caller.require_fleet(Scope::Admin)?;
    let task_id = state
        .broker
        .admin()
        .redrive(&entry_id)
        .await
        .map_err(|error| match error {
            exo_broker::Error::Refused { reason } if reason.starts_with("no dead-letter entry") => {
                Problem::not_found(reason)
            }
            error => error.into(),
        })?;
    tracing::info!(
        entry_id,
        task_id,
        caller = caller.name.as_deref().unwrap_or("-"),
        "redrive over HTTP"
    );
    Ok(Json(RedriveView { task_id }))
}

/// The alert rules evaluated now.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "fleet",
    responses((status = 200, description = "What was measured and what fires", body = AlertsView)),
    security(("bearer" = []))
)]
pub(crate) async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AlertsView>, Problem> {
    caller.require_fleet(Scope::Read)?;
    let snapshot = alert_snapshot(&state.broker).await?;
    let firing = evaluate(&default_rules(), &snapshot);
    Ok(Json(AlertsView {
        snapshot: json!(snapshot),
        firing: json!(firing),
    }))
}

/// What the alert rules measure, read from Redis: queue depth, live
/// workers, the failure rate of the last 500 tasks, the oldest wait.
pub async fn alert_snapshot(broker: &exo_broker::Broker) -> exo_broker::Result<AlertSnapshot> {
    let now = exo_proto::time::now_seconds();
    let stats = broker.admin().queue_stats().await?;
    let fleet = broker.admin().fleet().await?;
    let recent = broker.client().list(None, RECENT_TASKS, 0).await?;
    let count = |status: TaskStatus| {
        recent
            .tasks
            .iter()
            .filter(|task| task.status == status)
            .count() as u64
    };
    Ok(AlertSnapshot {
        queue_depth: stats.depth(),
        workers_alive: fleet.iter().filter(|entry| entry.alive(now)).count() as u64,
        failure_rate: failure_rate(count(TaskStatus::Completed), count(TaskStatus::Failed)),
        oldest_wait_seconds: stats.oldest_wait(now),
    })
}
