//! Work items (docs/protocol.md §2.3): the item and its state, the sessions token carried in its
//! `secret` (§1.4), the heartbeat and lease objects (§3) and the queue statistics (§2.1).

use std::collections::BTreeMap;
// `open_enum!` (in scope from the parent module) expands to code naming `fmt`, `Serializer` and
// `Deserializer` unqualified.
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Extra;
use super::ids::{EnvironmentId, SessionId, WorkId};

open_enum!(
    /// Work item state (docs/protocol.md §2.3, §3.5).
    WorkState {
        /// Waiting in the queue (possibly polled but not yet acknowledged).
        Queued = "queued",
        /// Acknowledged by a worker; no heartbeat yet.
        Starting = "starting",
        /// A worker holds the lease.
        Active = "active",
        /// A graceful stop was requested; the worker should finish and force-stop.
        Stopping = "stopping",
        /// Finished.
        Stopped = "stopped",
    }
);

impl WorkState {
    /// `stopping` or `stopped`: the worker must shut the item down.
    pub fn is_stopping_or_stopped(&self) -> bool {
        matches!(self, Self::Stopping | Self::Stopped)
    }
}

/// The `data` of a work item: what the work is about (docs/protocol.md §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkData {
    /// `session` for session work; the queue also emits other kinds (e.g. `healthcheck`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The id of the thing (a session id for session work).
    pub id: String,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl WorkData {
    /// The session id, if this is session work.
    pub fn session_id(&self) -> Option<SessionId> {
        (self.kind == "session").then(|| SessionId(self.id.clone()))
    }
}

fn work_type() -> String {
    "work".to_owned()
}

/// A work item (`BetaSelfHostedWork`, docs/protocol.md §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Always `work`.
    #[serde(rename = "type", default = "work_type")]
    pub kind: String,
    /// `work_…`.
    pub id: WorkId,
    /// The environment whose queue holds the item.
    pub environment_id: EnvironmentId,
    /// Current state.
    pub state: WorkState,
    /// What the work is about.
    pub data: WorkData,
    /// String metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Only on poll responses: URL-safe base64 JSON carrying the sessions token (§1.4). Never log it.
    #[serde(default)]
    pub secret: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, set at ack.
    #[serde(default)]
    pub acknowledged_at: Option<String>,
    /// RFC 3339, set when execution starts.
    #[serde(default)]
    pub started_at: Option<String>,
    /// RFC 3339 of the newest heartbeat.
    #[serde(default)]
    pub latest_heartbeat_at: Option<String>,
    /// RFC 3339, set by `stop`.
    #[serde(default)]
    pub stop_requested_at: Option<String>,
    /// RFC 3339, set when the item reaches `stopped`.
    #[serde(default)]
    pub stopped_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Work {
    /// The sessions token carried in [`Work::secret`], if any (docs/protocol.md §1.4).
    pub fn sessions_token(&self) -> Option<String> {
        self.secret.as_deref().and_then(decode_sessions_token)
    }
}

/// The longest work `secret` decoded (64 KiB); a longer one is not a sessions token anyone
/// issues, and decoding it on every call would cost for nothing.
pub const MAX_WORK_SECRET_BYTES: usize = 64 * 1024;

/// Decode the sessions token from a work `secret` (docs/protocol.md §1.4).
///
/// The secret is URL-safe base64 (padding optional) of a JSON object whose `sessions_token` must be a
/// non-empty string. Anything else yields `None` and the caller falls back to the environment key.
pub fn decode_sessions_token(secret: &str) -> Option<String> {
    let trimmed = secret.trim_end_matches('=');
    if trimmed.is_empty() || trimmed.len() > MAX_WORK_SECRET_BYTES {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    match value.get("sessions_token")? {
        Value::String(token) if !token.is_empty() => Some(token.clone()),
        _ => None,
    }
}

/// Encode a work `secret` carrying `sessions_token` the way the service does (URL-safe base64 of JSON).
pub fn encode_work_secret(sessions_token: &str) -> String {
    let json = serde_json::json!({ "sessions_token": sessions_token });
    base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
}

/// The `expected_last_heartbeat` value that claims an unclaimed lease (docs/protocol.md §3.2).
pub const NO_HEARTBEAT: &str = "NO_HEARTBEAT";

fn work_heartbeat_type() -> String {
    "work_heartbeat".to_owned()
}

/// Heartbeat response (`BetaSelfHostedWorkHeartbeatResponse`, docs/protocol.md §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkHeartbeat {
    /// Always `work_heartbeat`.
    #[serde(rename = "type", default = "work_heartbeat_type")]
    pub kind: String,
    /// The heartbeat just recorded; echo it verbatim next time (`""` if none).
    #[serde(default)]
    pub last_heartbeat: String,
    /// Whether this heartbeat extended the lease.
    pub lease_extended: bool,
    /// Current work state.
    pub state: WorkState,
    /// Effective lease TTL in seconds.
    #[serde(default)]
    pub ttl_seconds: i64,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The lease as the server sees it, carried by a 412 `heartbeat_precondition_failed` (§1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkLeaseState {
    /// Current work state.
    pub state: WorkState,
    /// Stored last heartbeat, if any.
    #[serde(default)]
    pub last_heartbeat: Option<String>,
    /// Always false in a 412.
    #[serde(default)]
    pub lease_extended: bool,
    /// Effective lease TTL in seconds.
    #[serde(default)]
    pub ttl_seconds: i64,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

fn stats_type() -> String {
    "work_queue_stats".to_owned()
}

/// Work queue statistics (`GET …/work/stats`, docs/protocol.md §2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkQueueStats {
    /// Always `work_queue_stats`.
    #[serde(rename = "type", default = "stats_type")]
    pub kind: String,
    /// Items waiting.
    pub depth: u64,
    /// Items polled but not acknowledged.
    pub pending: u64,
    /// Oldest queued or pending item (RFC 3339).
    #[serde(default)]
    pub oldest_queued_at: Option<String>,
    /// Workers that polled in the last 30 s.
    #[serde(default)]
    pub workers_polling: Option<u64>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}
