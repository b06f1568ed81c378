//! The REST API v1: the router, the shared state, and the JSON shapes.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use exo_broker::{Broker, Follower};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{self, Caller},
    config::GatewayConfig,
    error::Problem,
    history::History,
};

pub(crate) mod events;
pub(crate) mod fleet;
pub(crate) mod tasks;
pub(crate) mod views;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) broker: Broker,
    pub(crate) follower: Follower,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) history: History,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "exo gateway",
        description = "Submit, follow and cancel agent tasks; see the fleet and the queue. Errors are application/problem+json (RFC 9457). Event streams are Server-Sent Events whose ids are Redis stream ids: reconnect with Last-Event-ID to resume without loss or repetition."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "Submit, read, list, wait for and cancel tasks"),
        (name = "events", description = "Follow a task's events"),
        (name = "fleet", description = "Workers, the queue, dead letters and alerts"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes and its OpenAPI document, both from the handlers.
pub(crate) fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let timeout = state.config.request_timeout;
    let bounded: OpenApiRouter<AppState> = OpenApiRouter::new()
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::approve))
        .routes(routes!(tasks::deny))
        .routes(routes!(tasks::wait))
        .routes(routes!(fleet::me))
        .routes(routes!(fleet::workers))
        .routes(routes!(fleet::worker))
        .routes(routes!(fleet::queue))
        .routes(routes!(fleet::history))
        .routes(routes!(fleet::dead_letters))
        .routes(routes!(fleet::redrive))
        .routes(routes!(fleet::alerts))
        .layer(middleware::from_fn_with_state(timeout, bounded_in_time));
    // Event streams are bounded by `max_stream` instead.
    let streams: OpenApiRouter<AppState> = OpenApiRouter::new().routes(routes!(events::events));
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(bounded)
        .merge(streams)
        .split_for_parts();
    let router = router
        .layer(middleware::from_fn_with_state(state.clone(), auth::layer))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state);
    (router, openapi)
}

/// CORS as configured: nothing by default, `*` for any origin, or a list.
pub(crate) fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600));
    Some(if origins.iter().any(|origin| origin == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    })
}

async fn bounded_in_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

/// A JSON body whose rejection is a [`Problem`].
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters whose rejection is a [`Problem`].
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("no caller"))
    }
}
