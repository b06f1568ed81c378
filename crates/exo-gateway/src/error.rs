//! The gateway's errors: [`Error`] for starting it, [`Problem`] for what a
//! request gets back (RFC 9457 `application/problem+json`).

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable (the message says how to fix it).
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Redis failed.
    #[error(transparent)]
    Broker(#[from] exo_broker::Error),
}

/// A `Result` with the gateway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error response: `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank`: the status says it).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's short text.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
}

impl Problem {
    /// A problem with this status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409 Conflict.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, detail)
    }

    /// 403 Forbidden.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
    }

    /// The task is unknown, or the caller's tenant may not see it (the two
    /// look the same, so a tenant cannot probe for other tenants' ids).
    pub fn no_task(task_id: &str) -> Self {
        Problem::not_found(format!("no task `{task_id}`"))
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<exo_broker::Error> for Problem {
    fn from(error: exo_broker::Error) -> Self {
        use exo_broker::Error as E;
        let status = match &error {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::Wire(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Refused { .. } => StatusCode::CONFLICT,
            error if error.is_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(%error, "a request failed");
        }
        Problem::new(status, error.to_string())
    }
}
