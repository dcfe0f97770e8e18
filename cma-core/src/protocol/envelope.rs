//! Wire envelopes every endpoint shares: cursor pages (docs/protocol.md §1.7) and error bodies
//! (§1.5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Extra;
use super::work::WorkLeaseState;

/// A cursor page (docs/protocol.md §1.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    pub data: Vec<T>,
    /// Opaque cursor for the next page; `None` or empty when this is the last page.
    #[serde(default)]
    pub next_page: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl<T> Page<T> {
    /// The cursor to pass as `page` for the next request, if there is a next page.
    pub fn next_cursor(&self) -> Option<&str> {
        self.next_page.as_deref().filter(|p| !p.is_empty())
    }
}

/// The `error` object inside an error response (docs/protocol.md §1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// `invalid_request_error`, `not_found_error`, ….
    #[serde(rename = "type")]
    pub kind: String,
    /// Human text.
    #[serde(default)]
    pub message: String,
    /// `{"error_code": …, …}`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ApiErrorDetail {
    /// `details.error_code`, when present.
    pub fn error_code(&self) -> Option<&str> {
        self.details.as_ref()?.get("error_code")?.as_str()
    }

    /// `details.current_state` of a 412 `heartbeat_precondition_failed`.
    pub fn current_state(&self) -> Option<WorkLeaseState> {
        let state = self.details.as_ref()?.get("current_state")?;
        serde_json::from_value(state.clone()).ok()
    }
}

fn error_type() -> String {
    "error".to_owned()
}

/// An error response body: `{"type":"error","error":{…},"request_id":"req_…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `error`.
    #[serde(rename = "type", default = "error_type")]
    pub kind: String,
    /// The error.
    pub error: ApiErrorDetail,
    /// Request id, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ErrorBody {
    /// Build an error body (used by the emulator and tests).
    pub fn new(kind: &str, message: impl Into<String>, details: Option<Value>) -> Self {
        Self {
            kind: error_type(),
            error: ApiErrorDetail {
                kind: kind.to_owned(),
                message: message.into(),
                details,
                extra: Extra::new(),
            },
            request_id: None,
            extra: Extra::new(),
        }
    }
}
