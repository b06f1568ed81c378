//! `GET /v1/tasks/{id}/events`: a task's events as Server-Sent Events.
//!
//! Each event's SSE `id` is its Redis stream id. A client that reconnects
//! with `Last-Event-ID` (browsers' `EventSource` does so by itself) resumes
//! right after the last event it got: nothing missed, nothing twice. The
//! stream ends after the task's terminal event with `event: end`; comments
//! keep idle connections open through proxies.

use std::convert::Infallible;

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiQuery, AppState, tasks::visible_task};
use crate::{
    auth::{Caller, Scope},
    error::Problem,
};

/// The query of the event stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// `beginning` (the default) replays every event; `latest` only those
    /// that come next; a stream id resumes after it. `Last-Event-ID` wins
    /// over this.
    from: Option<String>,
    /// The token, for clients that cannot set a header (`EventSource`).
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Follows a task's events (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}/events",
    tag = "events",
    params(
        ("task_id" = String, Path, description = "The task id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "text/event-stream: `id` is the Redis stream id, `data` the event JSON; `event: end` follows the terminal event", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad `from` or Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    caller.require(Scope::Read)?;
    visible_task(&state, &caller, &task_id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let from = match (last_event_id, query.from.as_deref()) {
        (Some(id), _) => Some(id.to_owned()),
        (None, None | Some("beginning") | Some("")) => None,
        (None, Some("latest")) => Some("$".to_owned()),
        (None, Some(id)) => Some(id.to_owned()),
    };
    let following = state
        .follower
        .follow(&task_id, from.as_deref())
        .await
        .map_err(|error| match error {
            exo_broker::Error::Refused { reason } => Problem::bad_request(format!(
                "{reason}: `from` is beginning, latest or a stream id"
            )),
            error => error.into(),
        })?;
    let deadline = tokio::time::sleep(state.config.max_stream);
    let events = stream::unfold((following, false), |(mut following, ended)| async move {
        if ended {
            return None;
        }
        match following.next().await {
            Some(Ok(item)) => {
                let terminal = item.event.is_terminal();
                // SSE data lines cannot hold a carriage return; JSON
                // escapes it unless a writer did not.
                let json = if item.json.contains('\r') {
                    serde_json::to_string(&item.event).unwrap_or_default()
                } else {
                    item.json
                };
                let mut event = Event::default().data(json);
                if !item.id.is_empty() {
                    event = event.id(item.id);
                }
                let mut batch = vec![Ok(event)];
                if terminal {
                    batch.push(Ok(Event::default().event("end").data("{}")));
                }
                Some((stream::iter(batch), (following, terminal)))
            }
            Some(Err(error)) => {
                let problem = Problem::from(error);
                let event = Event::default()
                    .event("error")
                    .data(serde_json::to_string(&problem).unwrap_or_default());
                Some((stream::iter(vec![Ok(event)]), (following, true)))
            }
            None => None,
        }
    })
    .flatten()
    .take_until(deadline);
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(state.config.keep_alive)
            .text("ping"),
    ))
}
