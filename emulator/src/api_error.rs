//! Error replies in the shapes Genesys uses: `ErrorBody` (`message`, `code`,
//! `status`) for the platform API and `{"error","description"}` for the
//! OAuth endpoint.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::faults::Failure;

/// A platform API error; becomes an `ErrorBody` reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// No `Authorization: Bearer` header.
    #[error("No authentication bearer token specified in authorization header.")]
    AuthRequired,
    /// A bearer token that is unknown, expired or revoked.
    #[error("Invalid login credentials.")]
    BadCredentials,
    /// The channel (or route) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A topic this client may not subscribe to.
    #[error("The user does not have permission \"{topic}:view\" required for topic \"{topic}\"")]
    ForbiddenTopic { topic: String },
    /// A topic string that matches no catalogue template.
    #[error("Topic \"{0}\" is not a valid topic name")]
    InvalidTopic(String),
    /// More topics than a channel may hold.
    #[error("Too many topics: a channel may hold at most {0} topics")]
    TooManyTopics(usize),
    /// An injected failure.
    #[error("injected failure")]
    Injected(Failure),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::AuthRequired => (StatusCode::UNAUTHORIZED, "authentication.required"),
            ApiError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad.credentials"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not.found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad.request"),
            ApiError::ForbiddenTopic { .. } => {
                (StatusCode::FORBIDDEN, "notification.unauthorized.topic")
            }
            ApiError::InvalidTopic(_) => (StatusCode::BAD_REQUEST, "notification.invalid.topic"),
            ApiError::TooManyTopics(_) => (StatusCode::BAD_REQUEST, "bad.request"),
            ApiError::Injected(Failure::TooManyRequests { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "too.many.requests")
            }
            ApiError::Injected(Failure::Status { status }) => {
                let s = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let code = match s.as_u16() {
                    502 => "bad.gateway",
                    503 => "service.unavailable",
                    504 => "gateway.timeout",
                    _ => "internal.server.error",
                };
                (s, code)
            }
            // Never an error reply: the middleware serves it, late.
            ApiError::Injected(Failure::SlowReply { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal.server.error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Injected(Failure::TooManyRequests { retry_after_secs }) => format!(
                "Rate limit exceeded the maximum. Retry the request in [{retry_after_secs}] seconds"
            ),
            ApiError::Injected(Failure::Status { .. }) => {
                "The service is temporarily unavailable (emulated failure).".to_owned()
            }
            other => other.to_string(),
        };
        let body = json!({
            "message": message,
            "code": code,
            "status": status.as_u16(),
            "contextId": uuid::Uuid::new_v4().to_string(),
            "details": [],
            "errors": [],
        });
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::Injected(Failure::TooManyRequests { retry_after_secs }) = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// An OAuth error reply: `{"error", "description", "error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": error,
            "description": description,
            "error_description": description,
        })),
    )
        .into_response()
}
