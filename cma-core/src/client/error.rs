//! Typed API errors (docs/protocol.md §1.5) and their retry classification (§1.6).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{ErrorBody, WorkLeaseState};
use crate::retry;
use crate::runner::lease::HeartbeatFailure;
use crate::sse::SseError;

/// Which SDK error class an error corresponds to.
///
/// Status errors are mapped like the SDK: first on `(status, error.details.error_code)`, then on
/// the status alone, then [`ApiErrorKind::InternalServer`] for any other status ≥ 500 and
/// [`ApiErrorKind::OtherStatus`] for the rest. The non-status kinds describe local failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// 400.
    BadRequest,
    /// 401.
    Authentication,
    /// 402.
    PaymentRequired,
    /// 403.
    PermissionDenied,
    /// 404.
    NotFound,
    /// 408.
    RequestTimeout,
    /// 409 (on `stop`: "already stopped").
    Conflict,
    /// 412 without a known error code.
    PreconditionFailed,
    /// 413.
    ContentTooLarge,
    /// 422.
    UnprocessableEntity,
    /// 429.
    RateLimit,
    /// 431.
    RequestHeaderFieldsTooLarge,
    /// 499.
    ClientClosedRequest,
    /// 500 and any other unmapped status ≥ 500.
    InternalServer,
    /// 501.
    NotImplemented,
    /// 503.
    ServiceUnavailable,
    /// 504.
    GatewayTimeout,
    /// 529.
    Overloaded,
    /// Any other status (the SDK's generic `APIStatusError`), e.g. 418.
    OtherStatus,
    /// 412 `heartbeat_precondition_failed`: another worker may hold the lease.
    HeartbeatPreconditionFailed,
    /// 400 `environment_archived`.
    EnvironmentArchived,
    /// 404 `environment_not_found`.
    EnvironmentNotFound,
    /// 403 `environment_create_disabled`.
    EnvironmentCreateDisabled,
    /// 403 `environment_update_disabled`.
    EnvironmentUpdateDisabled,
    /// 400 `invalid_config_type_change`.
    InvalidConfigTypeChange,
    /// 400 `invalid_metadata`.
    InvalidMetadata,
    /// 400 `organization_on_hold`.
    OrganizationOnHold,
    /// 400 `claude_code_key_creator_not_member`.
    ClaudeCodeKeyCreatorNotMember,
    /// Could not connect, or the connection broke.
    Connection,
    /// A local timeout fired.
    Timeout,
    /// A successful response could not be decoded.
    Decode,
    /// The request was rejected before sending (empty id, out-of-range parameter, …).
    InvalidRequest,
    /// The event stream violated the framing limits or was not UTF-8.
    Stream,
}

impl ApiErrorKind {
    /// Map `(status, error_code)` like the SDK.
    pub fn from_status(status: u16, error_code: Option<&str>) -> Self {
        use ApiErrorKind as K;
        let specific = match (status, error_code) {
            (412, Some("heartbeat_precondition_failed")) => Some(K::HeartbeatPreconditionFailed),
            (400, Some("environment_archived")) => Some(K::EnvironmentArchived),
            (404, Some("environment_not_found")) => Some(K::EnvironmentNotFound),
            (403, Some("environment_create_disabled")) => Some(K::EnvironmentCreateDisabled),
            (403, Some("environment_update_disabled")) => Some(K::EnvironmentUpdateDisabled),
            (400, Some("invalid_config_type_change")) => Some(K::InvalidConfigTypeChange),
            (400, Some("invalid_metadata")) => Some(K::InvalidMetadata),
            (400, Some("organization_on_hold")) => Some(K::OrganizationOnHold),
            (400, Some("claude_code_key_creator_not_member")) => {
                Some(K::ClaudeCodeKeyCreatorNotMember)
            }
            _ => None,
        };
        if let Some(k) = specific {
            return k;
        }
        match status {
            400 => K::BadRequest,
            401 => K::Authentication,
            402 => K::PaymentRequired,
            403 => K::PermissionDenied,
            404 => K::NotFound,
            408 => K::RequestTimeout,
            409 => K::Conflict,
            412 => K::PreconditionFailed,
            413 => K::ContentTooLarge,
            422 => K::UnprocessableEntity,
            429 => K::RateLimit,
            431 => K::RequestHeaderFieldsTooLarge,
            499 => K::ClientClosedRequest,
            501 => K::NotImplemented,
            503 => K::ServiceUnavailable,
            504 => K::GatewayTimeout,
            529 => K::Overloaded,
            s if s >= 500 => K::InternalServer,
            _ => K::OtherStatus,
        }
    }

    /// The status-only class a code-specific kind refines (its SDK base class); other kinds map
    /// to themselves. E.g. `EnvironmentArchived.base() == BadRequest`.
    pub fn base(self) -> Self {
        use ApiErrorKind as K;
        match self {
            K::HeartbeatPreconditionFailed => K::PreconditionFailed,
            K::EnvironmentArchived
            | K::InvalidConfigTypeChange
            | K::InvalidMetadata
            | K::OrganizationOnHold
            | K::ClaudeCodeKeyCreatorNotMember => K::BadRequest,
            K::EnvironmentNotFound => K::NotFound,
            K::EnvironmentCreateDisabled | K::EnvironmentUpdateDisabled => K::PermissionDenied,
            other => other,
        }
    }
}

/// An HTTP error response, decoded.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StatusError {
    /// `METHOD /path` of the request (no query, no credentials).
    pub context: String,
    /// HTTP status (200 for an `event: error` frame on a stream).
    pub status: u16,
    /// The SDK class.
    pub kind: ApiErrorKind,
    /// `error.type` (e.g. `invalid_request_error`), when the body had one.
    pub error_type: Option<String>,
    /// `error.message`, when the body had one.
    pub message: Option<String>,
    /// `error.details.error_code`, when present and a string.
    pub error_code: Option<String>,
    /// `error.details`, verbatim.
    pub details: Option<Value>,
    /// `details.current_state` of a 412 `heartbeat_precondition_failed`.
    pub current_state: Option<WorkLeaseState>,
    /// The `request-id` response header, else the body's `request_id`.
    pub request_id: Option<String>,
    /// The `anthropic-workspace-id` response header.
    pub workspace_id: Option<String>,
    /// The response body (JSON when it parsed, else the text as a JSON string); bounded in size.
    pub body: Option<Value>,
    /// The `x-should-retry` response header.
    pub should_retry_header: Option<String>,
    /// The `retry-after-ms` response header.
    pub retry_after_ms: Option<String>,
    /// The `retry-after` response header.
    pub retry_after: Option<String>,
}

impl StatusError {
    /// Build from a status, the raw body text and the relevant response headers.
    pub fn from_response(
        context: String,
        status: u16,
        body_text: &str,
        headers: &http::HeaderMap,
    ) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let trimmed = body_text.trim();
        let body = if trimmed.is_empty() {
            None
        } else {
            // A body too rich to decode cheaply is kept as text (it is at most
            // `MAX_ERROR_BODY_BYTES`).
            let parsed = super::json_limit::check_json_values(
                trimmed.as_bytes(),
                super::json_limit::MAX_JSON_VALUES,
            )
            .ok()
            .and_then(|_| serde_json::from_str::<Value>(trimmed).ok());
            Some(parsed.unwrap_or_else(|| Value::String(trimmed.to_owned())))
        };
        let mut e = Self::from_body(context, status, body);
        e.request_id = header("request-id").or(e.request_id);
        e.workspace_id = header("anthropic-workspace-id");
        e.should_retry_header = header("x-should-retry");
        e.retry_after_ms = header("retry-after-ms");
        e.retry_after = header("retry-after");
        e
    }

    /// Build from a status and an already decoded body (used for `event: error` frames).
    pub fn from_body(context: String, status: u16, body: Option<Value>) -> Self {
        let typed: Option<ErrorBody> = body
            .as_ref()
            .filter(|b| b.is_object())
            .and_then(|b| serde_json::from_value(b.clone()).ok());
        let prop = |key: &str| {
            body.as_ref()
                .and_then(|b| b.get("error"))
                .and_then(|e| e.get(key))
        };
        let error_type = prop("type").and_then(Value::as_str).map(str::to_owned);
        let message = prop("message").and_then(Value::as_str).map(str::to_owned);
        let details = prop("details").cloned();
        let error_code = details
            .as_ref()
            .and_then(|d| d.get("error_code"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let current_state = typed.as_ref().and_then(|t| t.error.current_state());
        let request_id = body
            .as_ref()
            .and_then(|b| b.get("request_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            context,
            status,
            kind: ApiErrorKind::from_status(status, error_code.as_deref()),
            error_type,
            message,
            error_code,
            details,
            current_state,
            request_id,
            workspace_id: None,
            body,
            should_retry_header: None,
            retry_after_ms: None,
            retry_after: None,
        }
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HTTP {} ({:?}", self.context, self.status, self.kind)?;
        if let Some(t) = &self.error_type {
            write!(f, ", {t}")?;
        }
        if let Some(c) = &self.error_code {
            write!(f, ", {c}")?;
        }
        f.write_str(")")?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " [request-id {r}]")?;
        }
        Ok(())
    }
}

/// Any failure of a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The server answered with an error status (or the stream sent `event: error`).
    #[error("{0}")]
    Status(Box<StatusError>),
    /// Could not connect, or the connection broke mid-request.
    #[error("{context}: connection error: {source}")]
    Connection {
        /// `METHOD /path`.
        context: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A local timeout fired (connect, request or stream idle).
    #[error("{context}: timed out after {timeout:?}")]
    Timeout {
        /// `METHOD /path`.
        context: String,
        /// The timeout that fired.
        timeout: Duration,
    },
    /// A 2xx response whose body is not what the endpoint returns.
    #[error("{context}: cannot decode response: {message}")]
    Decode {
        /// `METHOD /path`.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// A response body exceeded the configured size cap.
    #[error("{context}: response body larger than {limit} bytes")]
    BodyTooLarge {
        /// `METHOD /path`.
        context: String,
        /// The cap.
        limit: usize,
    },
    /// The request was rejected before being sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The event stream broke the framing rules or limits.
    #[error("{context}: event stream: {source}")]
    Stream {
        /// `METHOD /path`.
        context: String,
        /// The framing error.
        #[source]
        source: SseError,
    },
}

impl ApiError {
    /// The SDK class of this error.
    pub fn kind(&self) -> ApiErrorKind {
        match self {
            Self::Status(s) => s.kind,
            Self::Connection { .. } => ApiErrorKind::Connection,
            Self::Timeout { .. } => ApiErrorKind::Timeout,
            Self::Decode { .. } | Self::BodyTooLarge { .. } => ApiErrorKind::Decode,
            Self::InvalidRequest(_) => ApiErrorKind::InvalidRequest,
            Self::Stream { .. } => ApiErrorKind::Stream,
        }
    }

    /// The decoded error response, for status errors.
    pub fn status_error(&self) -> Option<&StatusError> {
        match self {
            Self::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The HTTP status, for status errors.
    pub fn status(&self) -> Option<u16> {
        self.status_error().map(|s| s.status)
    }

    /// `error.type`, for status errors with a JSON body.
    pub fn error_type(&self) -> Option<&str> {
        self.status_error()?.error_type.as_deref()
    }

    /// `error.message`, for status errors with a JSON body.
    pub fn message(&self) -> Option<&str> {
        self.status_error()?.message.as_deref()
    }

    /// `error.details.error_code`.
    pub fn error_code(&self) -> Option<&str> {
        self.status_error()?.error_code.as_deref()
    }

    /// The request id (response header, else body).
    pub fn request_id(&self) -> Option<&str> {
        self.status_error()?.request_id.as_deref()
    }

    /// The server's view of the lease carried by a 412 `heartbeat_precondition_failed`.
    pub fn current_state(&self) -> Option<&WorkLeaseState> {
        self.status_error()?.current_state.as_ref()
    }

    /// Whether the **core client** retries this error: connection errors and timeouts, and status
    /// errors per `x-should-retry`, else 408/409/429/≥500.
    ///
    /// An `event: error` frame (status 200) is not retried by the core client; the stream
    /// reconnect loop treats it as transient through [`Self::is_fatal`] instead.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status(s) => {
                s.status >= 400
                    && retry::should_retry_status(s.status, s.should_retry_header.as_deref())
            }
            Self::Connection { .. } | Self::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The **runner** rule: a status error with a 4xx other than 408, 409 and 429 is fatal; every
    /// other API error is transient. Local request-building errors are fatal too (retrying the
    /// same arguments cannot help).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Status(s) => retry::is_fatal_status(s.status),
            Self::InvalidRequest(_) => true,
            _ => false,
        }
    }

    /// How the heartbeat loop sees this error: any 412 ⇒ precondition failed (with the server's
    /// lease state when sent), another fatal 4xx ⇒ fatal, anything else ⇒ transient.
    pub fn to_heartbeat_failure(&self) -> HeartbeatFailure {
        match self.status() {
            Some(412) => {
                HeartbeatFailure::PreconditionFailed(self.current_state().cloned().map(Box::new))
            }
            Some(s) if self.is_fatal() => HeartbeatFailure::Fatal(s),
            _ => HeartbeatFailure::Transient(self.to_string()),
        }
    }

    /// A request-building error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidRequest(msg.into())
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> Self {
        Self::Status(Box::new(e))
    }
}
