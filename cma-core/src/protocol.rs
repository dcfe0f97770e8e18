//! Typed objects of the CMA self-hosted environment protocol (docs/protocol.md §1.4, §1.5, §2, §3, §4).
//!
//! Every object keeps the fields it does not know in an `extra` map (flattened on the wire) so a
//! newer server never breaks an older worker and nothing is lost on a round trip. Event and state
//! enums have an `Other`/`Unknown` arm that carries the original value.
//!
//! Timestamps stay strings: the heartbeat contract (§3.1) requires echoing `last_heartbeat`
//! verbatim, so re-formatting a parsed date would break the lease.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// JSON object holding the fields a type does not model.
pub type Extra = Map<String, Value>;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wrap an id string.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_newtype!(
    /// A self-hosted environment id (`env_…`).
    EnvironmentId
);
id_newtype!(
    /// A work item id (`work_…`).
    WorkId
);
id_newtype!(
    /// A session id (`sesn_…`).
    SessionId
);
id_newtype!(
    /// A session event id (`sevt_…`).
    EventId
);

/// Declares a string enum whose unknown values survive a round trip.
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A value this version does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(s) => s,
                }
            }

            /// Parse a wire string; unknown values become [`Self::Other`].
            pub fn parse(s: &str) -> Self {
                match s {
                    $($wire => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

pub(crate) use open_enum;

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

open_enum!(
    /// Session status (docs/protocol.md §4).
    SessionStatus {
        /// The session is being moved to another runner.
        Rescheduling = "rescheduling",
        /// The agent loop is running.
        Running = "running",
        /// Waiting for input.
        Idle = "idle",
        /// Ended for good.
        Terminated = "terminated",
    }
);

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

/// Environment configuration (docs/protocol.md §2.2, §8).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EnvironmentConfig {
    /// `{"type":"self_hosted"}`: networking and packages are the operator's job.
    SelfHosted,
    /// Any other config (`cloud`, or a future type), kept verbatim.
    Other(Value),
}

impl Serialize for EnvironmentConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::SelfHosted => serde_json::json!({"type": "self_hosted"}).serialize(s),
            Self::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for EnvironmentConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if !v.is_object() {
            return Err(D::Error::custom("environment config must be an object"));
        }
        match v.get("type").and_then(Value::as_str) {
            Some("self_hosted") => Ok(Self::SelfHosted),
            _ => Ok(Self::Other(v)),
        }
    }
}

fn environment_type() -> String {
    "environment".to_owned()
}

/// An environment (docs/protocol.md §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `env_…`.
    pub id: EnvironmentId,
    /// Always `environment`.
    #[serde(rename = "type", default = "environment_type")]
    pub kind: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// String metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Self-hosted or cloud configuration.
    pub config: EnvironmentConfig,
    /// `organization`, `account` or null.
    #[serde(default)]
    pub scope: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// RFC 3339; null while active.
    #[serde(default)]
    pub archived_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A skill the agent uses (`agent.skills[]`, docs/protocol.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillRef {
    /// `anthropic` or `custom`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The skill id.
    pub skill_id: String,
    /// The version (`latest` or a version id), as the server gives it.
    #[serde(default)]
    pub version: Option<Value>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The agent snapshot inside a session (only what a worker reads is typed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SessionAgent {
    /// Skills to download into the workspace.
    #[serde(default)]
    pub skills: Vec<SkillRef>,
    /// Tool declarations (toolsets and custom tools), kept as JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A session resource (`resources[]`); memory stores are the ones a worker acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionResource {
    /// `memory_store`, or another kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// For memory stores: the store id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_store_id: Option<String>,
    /// For memory stores: `read_write` or `read_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// For memory stores: where to mount it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

fn session_type() -> String {
    "session".to_owned()
}

/// A session (docs/protocol.md §4). The worker reads `status`, `resources` and `agent.skills`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `sesn_…`.
    pub id: SessionId,
    /// Always `session`.
    #[serde(rename = "type", default = "session_type")]
    pub kind: String,
    /// Current status.
    pub status: SessionStatus,
    /// The environment the session runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<EnvironmentId>,
    /// Agent snapshot.
    #[serde(default)]
    pub agent: SessionAgent,
    /// Attached resources (memory stores, files, …).
    #[serde(default)]
    pub resources: Vec<SessionResource>,
    /// String metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A content block of a tool result (docs/protocol.md §4.3).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ContentBlock {
    /// `{"type":"text","text":…}`.
    Text {
        /// The text.
        text: String,
    },
    /// `image`, `document`, `search_result` or a future block type, passed through verbatim.
    Other(Value),
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }

    /// The text of a text block.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text { text } => Some(text),
            Self::Other(_) => None,
        }
    }
}

impl Serialize for ContentBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text { text } => serde_json::json!({"type": "text", "text": text}).serialize(s),
            Self::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let is_plain_text = v.get("type").and_then(Value::as_str) == Some("text")
            && v.as_object().is_some_and(|o| o.len() == 2)
            && v.get("text").is_some_and(Value::is_string);
        if is_plain_text {
            let text = v["text"].as_str().unwrap_or_default().to_owned();
            Ok(Self::Text { text })
        } else if v.is_object() {
            Ok(Self::Other(v))
        } else {
            Err(D::Error::custom("content block must be an object"))
        }
    }
}

/// `agent.tool_use`: the agent calls a sandbox-routed built-in tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    /// Event id; the result's `tool_use_id`.
    pub id: EventId,
    /// Tool name (`bash`, `read`, …, or one the worker does not own).
    pub name: String,
    /// Tool input object.
    #[serde(default)]
    pub input: Value,
    /// `allow`, `ask`, `deny`, absent, or a future value (held like `ask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_permission: Option<String>,
    /// Set when the call was cross-posted from a subagent thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `user.tool_result` / `user.custom_tool_result` as seen on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResultEvent {
    /// Event id.
    pub id: EventId,
    /// The answered call (`tool_use_id` or `custom_tool_use_id` on the wire).
    #[serde(alias = "custom_tool_use_id")]
    pub tool_use_id: EventId,
    /// Result content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ContentBlock>>,
    /// Whether the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Thread of the call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `user.tool_confirmation`: the user's verdict on an `ask`-gated call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolConfirmation {
    /// Event id.
    pub id: EventId,
    /// The gated call.
    pub tool_use_id: EventId,
    /// `allow` or `deny`.
    pub result: String,
    /// Shown to the agent on deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<String>,
    /// Thread of the call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `session.status_idle`: the turn ended (or the session waits on calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusIdle {
    /// Event id.
    pub id: EventId,
    /// Why it stopped: `{type:"end_turn"}`, `{type:"requires_action", event_ids:[…]}`, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl StatusIdle {
    /// The `stop_reason.type`, if present.
    pub fn stop_reason_type(&self) -> Option<&str> {
        self.stop_reason.as_ref()?.get("type")?.as_str()
    }

    /// Whether the session waits on calls (`requires_action`), which never starts the idle countdown.
    pub fn requires_action(&self) -> bool {
        self.stop_reason_type() == Some("requires_action")
    }
}

/// `session.thread_status_*` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadStatus {
    /// Event id.
    pub id: EventId,
    /// The thread.
    pub session_thread_id: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A session event as received from the stream or the history (docs/protocol.md §4.2).
///
/// The variants the worker acts on are typed; every other event (including future types) is kept
/// as [`SessionEvent::Other`] with its JSON intact.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// `agent.tool_use`.
    ToolUse(ToolUse),
    /// `agent.custom_tool_use`.
    CustomToolUse(ToolUse),
    /// `user.tool_result`.
    ToolResult(ToolResultEvent),
    /// `user.custom_tool_result` (`tool_use_id` holds `custom_tool_use_id`).
    CustomToolResult(ToolResultEvent),
    /// `user.tool_confirmation`.
    ToolConfirmation(ToolConfirmation),
    /// `session.status_idle`.
    StatusIdle(StatusIdle),
    /// `session.status_terminated`.
    StatusTerminated(GenericEvent),
    /// `session.deleted`.
    Deleted(GenericEvent),
    /// `session.thread_status_terminated`.
    ThreadTerminated(ThreadStatus),
    /// Any other event type, kept verbatim.
    Other(GenericEvent),
}

/// An event the worker does not interpret; its `type` and all fields are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenericEvent {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Event id, when the event has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

impl SessionEvent {
    /// The event type string.
    pub fn kind(&self) -> &str {
        match self {
            Self::ToolUse(_) => "agent.tool_use",
            Self::CustomToolUse(_) => "agent.custom_tool_use",
            Self::ToolResult(_) => "user.tool_result",
            Self::CustomToolResult(_) => "user.custom_tool_result",
            Self::ToolConfirmation(_) => "user.tool_confirmation",
            Self::StatusIdle(_) => "session.status_idle",
            Self::StatusTerminated(_) => "session.status_terminated",
            Self::Deleted(_) => "session.deleted",
            Self::ThreadTerminated(_) => "session.thread_status_terminated",
            Self::Other(g) => &g.kind,
        }
    }

    /// The event id, when it has one.
    pub fn id(&self) -> Option<&EventId> {
        match self {
            Self::ToolUse(e) | Self::CustomToolUse(e) => Some(&e.id),
            Self::ToolResult(e) | Self::CustomToolResult(e) => Some(&e.id),
            Self::ToolConfirmation(e) => Some(&e.id),
            Self::StatusIdle(e) => Some(&e.id),
            Self::ThreadTerminated(e) => Some(&e.id),
            Self::StatusTerminated(g) | Self::Deleted(g) | Self::Other(g) => g.id.as_ref(),
        }
    }

    /// Parse one event from JSON. Unknown types become [`SessionEvent::Other`]; a known type with a
    /// malformed body is an error.
    pub fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        let kind = match v.get("type") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(serde_json::Error::custom(
                    "session event has no string `type`",
                ));
            }
        };
        let mut v = v;
        let strip = |v: &mut Value| {
            if let Some(o) = v.as_object_mut() {
                o.remove("type");
            }
        };
        Ok(match kind.as_str() {
            "agent.tool_use" => {
                strip(&mut v);
                Self::ToolUse(serde_json::from_value(v)?)
            }
            "agent.custom_tool_use" => {
                strip(&mut v);
                Self::CustomToolUse(serde_json::from_value(v)?)
            }
            "user.tool_result" => {
                strip(&mut v);
                Self::ToolResult(serde_json::from_value(v)?)
            }
            "user.custom_tool_result" => {
                strip(&mut v);
                Self::CustomToolResult(serde_json::from_value(v)?)
            }
            "user.tool_confirmation" => {
                strip(&mut v);
                Self::ToolConfirmation(serde_json::from_value(v)?)
            }
            "session.status_idle" => {
                strip(&mut v);
                Self::StatusIdle(serde_json::from_value(v)?)
            }
            "session.thread_status_terminated" => {
                strip(&mut v);
                Self::ThreadTerminated(serde_json::from_value(v)?)
            }
            "session.status_terminated" => Self::StatusTerminated(serde_json::from_value(v)?),
            "session.deleted" => Self::Deleted(serde_json::from_value(v)?),
            _ => Self::Other(serde_json::from_value(v)?),
        })
    }

    /// The event as JSON, with its `type` first.
    pub fn to_value(&self) -> Value {
        fn tagged<T: Serialize>(kind: &str, body: &T) -> Value {
            let mut out = Map::new();
            out.insert("type".into(), Value::String(kind.to_owned()));
            if let Ok(Value::Object(fields)) = serde_json::to_value(body) {
                for (k, v) in fields {
                    out.entry(k).or_insert(v);
                }
            }
            Value::Object(out)
        }
        match self {
            Self::ToolUse(e) | Self::CustomToolUse(e) => tagged(self.kind(), e),
            Self::ToolResult(e) => tagged(self.kind(), e),
            Self::CustomToolResult(e) => {
                let mut v = tagged(self.kind(), e);
                if let Some(o) = v.as_object_mut()
                    && let Some(id) = o.remove("tool_use_id")
                {
                    o.insert("custom_tool_use_id".into(), id);
                }
                v
            }
            Self::ToolConfirmation(e) => tagged(self.kind(), e),
            Self::StatusIdle(e) => tagged(self.kind(), e),
            Self::ThreadTerminated(e) => tagged(self.kind(), e),
            Self::StatusTerminated(g) | Self::Deleted(g) | Self::Other(g) => tagged(&g.kind, g),
        }
    }
}

impl Serialize for SessionEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for SessionEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_value(v).map_err(D::Error::custom)
    }
}

/// An event a client sends with `POST /v1/sessions/{id}/events` (docs/protocol.md §4.3).
///
/// Field order matches the official SDK byte for byte (vectors R13, R21–R23).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum SendEvent {
    /// Result of a built-in (sandbox-routed) tool call.
    #[serde(rename = "user.tool_result")]
    ToolResult {
        /// The `agent.tool_use` event id.
        tool_use_id: EventId,
        /// Whether the call failed (the worker always sends it).
        is_error: bool,
        /// Non-empty content.
        content: Vec<ContentBlock>,
    },
    /// Result of a custom tool call.
    #[serde(rename = "user.custom_tool_result")]
    CustomToolResult {
        /// The `agent.custom_tool_use` event id.
        custom_tool_use_id: EventId,
        /// Whether the call failed; omitted when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        /// Content.
        content: Vec<ContentBlock>,
    },
    /// A verdict on an `ask`-gated call.
    #[serde(rename = "user.tool_confirmation")]
    ToolConfirmation {
        /// The gated call.
        tool_use_id: EventId,
        /// `allow` or `deny`.
        result: String,
        /// Shown to the agent on deny.
        #[serde(skip_serializing_if = "Option::is_none")]
        deny_message: Option<String>,
    },
    /// Interrupt all threads, or one.
    #[serde(rename = "user.interrupt")]
    Interrupt {
        /// Only this thread.
        #[serde(skip_serializing_if = "Option::is_none")]
        session_thread_id: Option<String>,
    },
    /// A user message.
    #[serde(rename = "user.message")]
    Message {
        /// Message content blocks.
        content: Vec<ContentBlock>,
    },
}

/// Request body of `POST /v1/sessions/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendEventsRequest<'a> {
    /// The events, in order.
    pub events: &'a [SendEvent],
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Vector D3 (`decoding` in vectors/sdk-test-vectors.json).
    const D3: &str = r#"{"type":"work","id":"work_test","environment_id":"env_test","state":"queued","data":{"type":"session","id":"sesn_test"},"metadata":{},"created_at":"2026-05-01T00:00:00Z","acknowledged_at":null,"started_at":null,"stop_requested_at":null,"stopped_at":null,"latest_heartbeat_at":null,"secret":"eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayJ9"}"#;

    #[test]
    fn work_item_decodes_and_yields_its_sessions_token() {
        let w: Work = serde_json::from_str(D3).unwrap();
        assert_eq!(w.id.as_str(), "work_test");
        assert_eq!(w.state, WorkState::Queued);
        assert_eq!(w.data.session_id().unwrap().as_str(), "sesn_test");
        assert_eq!(w.sessions_token().as_deref(), Some("sk-sess-tok"));
    }

    #[test]
    fn unknown_fields_and_states_survive_a_round_trip() {
        let mut v: Value = serde_json::from_str(D3).unwrap();
        v["state"] = json!("hibernating");
        v["future_field"] = json!({"x": 1});
        v["data"] = json!({"type": "healthcheck", "id": "hc_1", "probe": true});
        let w: Work = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(w.state, WorkState::Other("hibernating".into()));
        assert!(w.data.session_id().is_none());
        assert_eq!(serde_json::to_value(&w).unwrap(), v);
    }

    // Fuzz finding (protocol_json): the error body had no `extra` map, so unknown top-level
    // fields were dropped on a round trip.
    #[test]
    fn error_bodies_keep_unknown_fields() {
        let v = json!({"type": "error", "error": {"type": "x", "message": "m"}, "": true, "trace": [1]});
        let b: ErrorBody = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(b.extra["trace"], json!([1]));
        assert_eq!(serde_json::to_value(&b).unwrap(), v);
    }

    #[test]
    fn secret_decoding_follows_the_sdk_rules() {
        // §6 of the vectors.
        let cases = [
            (
                "eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayJ9",
                Some("sk-sess-tok"),
            ),
            (
                "eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayIsICJpbmdyZXNzX3Rva2VuIjogImkiLCAic291cmNlX3Rva2VuIjogInMifQ==",
                Some("sk-sess-tok"),
            ),
            ("eyJzZXNzaW9uc190b2tlbiI6ICIifQ==", None),
            ("not base64!!", None),
            ("WzEsMl0=", None),
            ("", None),
        ];
        for (secret, want) in cases {
            assert_eq!(decode_sessions_token(secret).as_deref(), want, "{secret}");
        }
        assert_eq!(
            decode_sessions_token(&encode_work_secret("tok")).as_deref(),
            Some("tok")
        );
    }

    #[test]
    fn session_events_are_typed_and_unknown_ones_preserved() {
        let raw = json!({"type":"agent.tool_use","id":"e2","name":"bash","input":{"command":"ls"},"processed_at":"2026-05-01T00:00:00Z","novel":1});
        let ev = SessionEvent::from_value(raw.clone()).unwrap();
        match &ev {
            SessionEvent::ToolUse(t) => {
                assert_eq!(t.name, "bash");
                assert_eq!(t.input, json!({"command":"ls"}));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ev.to_value(), raw);

        let future = json!({"type":"some.future_event","id":"e3","z":[1]});
        let ev = SessionEvent::from_value(future.clone()).unwrap();
        assert_eq!(ev.kind(), "some.future_event");
        assert_eq!(ev.to_value(), future);

        let custom = json!({"type":"user.custom_tool_result","id":"e4","custom_tool_use_id":"sevt_ct01","content":[{"type":"text","text":"42"}]});
        let ev = SessionEvent::from_value(custom.clone()).unwrap();
        assert!(
            matches!(&ev, SessionEvent::CustomToolResult(r) if r.tool_use_id.as_str() == "sevt_ct01")
        );
        assert_eq!(ev.to_value(), custom);

        assert!(SessionEvent::from_value(json!({"id": "x"})).is_err());
        assert!(SessionEvent::from_value(json!({"type":"agent.tool_use","id":"x"})).is_err());
    }

    #[test]
    fn send_events_match_sdk_bytes() {
        // Vectors R13, R21, R22, R23.
        let r13 = [SendEvent::ToolResult {
            tool_use_id: "sevt_1".into(),
            is_error: false,
            content: vec![ContentBlock::text("hi")],
        }];
        assert_eq!(
            serde_json::to_string(&SendEventsRequest { events: &r13 }).unwrap(),
            r#"{"events":[{"type":"user.tool_result","tool_use_id":"sevt_1","is_error":false,"content":[{"type":"text","text":"hi"}]}]}"#
        );
        let r21 = [SendEvent::Interrupt {
            session_thread_id: None,
        }];
        assert_eq!(
            serde_json::to_string(&SendEventsRequest { events: &r21 }).unwrap(),
            r#"{"events":[{"type":"user.interrupt"}]}"#
        );
        let r22 = [SendEvent::CustomToolResult {
            custom_tool_use_id: "sevt_ct01".into(),
            is_error: None,
            content: vec![ContentBlock::text("42")],
        }];
        assert_eq!(
            serde_json::to_string(&SendEventsRequest { events: &r22 }).unwrap(),
            r#"{"events":[{"type":"user.custom_tool_result","custom_tool_use_id":"sevt_ct01","content":[{"type":"text","text":"42"}]}]}"#
        );
        let r23 = [SendEvent::ToolConfirmation {
            tool_use_id: "sevt_tu01".into(),
            result: "deny".into(),
            deny_message: Some("no".into()),
        }];
        assert_eq!(
            serde_json::to_string(&SendEventsRequest { events: &r23 }).unwrap(),
            r#"{"events":[{"type":"user.tool_confirmation","tool_use_id":"sevt_tu01","result":"deny","deny_message":"no"}]}"#
        );
    }

    #[test]
    fn heartbeat_412_body_exposes_current_state() {
        // Vector D5.
        let body: ErrorBody = serde_json::from_str(r#"{"type":"error","error":{"type":"invalid_request_error","message":"heartbeat precondition failed","details":{"error_code":"heartbeat_precondition_failed","current_state":{"state":"active","last_heartbeat":"2026-05-01T00:00:09Z","lease_extended":false,"ttl_seconds":60}}},"request_id":"req_mock"}"#).unwrap();
        assert_eq!(
            body.error.error_code(),
            Some("heartbeat_precondition_failed")
        );
        let st = body.error.current_state().unwrap();
        assert_eq!(st.state, WorkState::Active);
        assert_eq!(st.last_heartbeat.as_deref(), Some("2026-05-01T00:00:09Z"));
        assert_eq!(st.ttl_seconds, 60);
        assert_eq!(body.request_id.as_deref(), Some("req_mock"));
    }

    #[test]
    fn heartbeat_and_stats_decode() {
        let hb: WorkHeartbeat = serde_json::from_str(r#"{"type":"work_heartbeat","last_heartbeat":"2026-05-01T00:00:01Z","lease_extended":true,"state":"active","ttl_seconds":4}"#).unwrap();
        assert_eq!(hb.ttl_seconds, 4);
        assert!(hb.lease_extended);
        let st: WorkQueueStats = serde_json::from_str(r#"{"type":"work_queue_stats","depth":0,"pending":0,"oldest_queued_at":null,"workers_polling":1}"#).unwrap();
        assert_eq!(st.workers_polling, Some(1));
    }

    #[test]
    fn content_blocks_pass_non_text_through() {
        let img = json!({"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="}});
        let b: ContentBlock = serde_json::from_value(img.clone()).unwrap();
        assert!(b.as_text().is_none());
        assert_eq!(serde_json::to_value(&b).unwrap(), img);
        assert!(serde_json::from_value::<ContentBlock>(json!("x")).is_err());
    }
}
