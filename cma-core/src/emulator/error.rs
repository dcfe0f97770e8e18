//! Error responses (docs/protocol.md §1.5) and the emulator's own start-up errors.

use std::path::PathBuf;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::protocol::ErrorBody;

use super::scenario::ScenarioError;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The record file could not be opened.
    #[error("cannot open record file {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The webhook configuration is unusable (bad secret, HTTP client set-up failure).
    #[error("webhook configuration: {0}")]
    Webhook(String),
    /// An id or key given to the programmatic API is invalid or already used.
    #[error("{0}")]
    Invalid(String),
}

/// A protocol error answer (boxed: handlers return it by value on every error path).
#[derive(Debug, Clone)]
pub(crate) struct ApiError(Box<ApiErrorInner>);

impl std::ops::Deref for ApiError {
    type Target = ApiErrorInner;
    fn deref(&self) -> &ApiErrorInner {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorInner {
        &mut self.0
    }
}

/// Status, `error.type`, message, optional `details`, extra headers.
#[derive(Debug, Clone)]
pub(crate) struct ApiErrorInner {
    pub(crate) status: StatusCode,
    pub(crate) kind: String,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
    pub(crate) headers: Vec<(HeaderName, String)>,
    /// A verbatim body that replaces the generated one (fault injection).
    pub(crate) body: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorInner {
            status,
            kind: kind.to_owned(),
            message: message.into(),
            details: None,
            headers: Vec::new(),
            body: None,
        }))
    }

    pub(crate) fn with_code(mut self, code: &str) -> Self {
        self.details = Some(serde_json::json!({ "error_code": code }));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub(crate) fn environment_not_found(id: &str) -> Self {
        Self::not_found(format!("environment {id} not found")).with_code("environment_not_found")
    }

    /// The `error.type` the real API uses for a status.
    pub(crate) fn kind_for(status: StatusCode) -> &'static str {
        match status.as_u16() {
            400 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            529 | 503 => "overloaded_error",
            _ => "api_error",
        }
    }
}

/// A fresh `req_…` id.
pub(crate) fn new_request_id() -> String {
    format!("req_emu_{}", uuid::Uuid::new_v4().simple())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let request_id = new_request_id();
        let body = match this.body {
            Some(b) => b,
            None => {
                let mut b = ErrorBody::new(&this.kind, this.message, this.details);
                b.request_id = Some(request_id.clone());
                serde_json::to_value(b).unwrap_or(Value::Null)
            }
        };
        let mut resp = (this.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("request-id", v);
        }
        for (name, value) in this.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}
