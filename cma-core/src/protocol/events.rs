//! Session events as received from the stream or the history (docs/protocol.md §4.2): the typed
//! ones the worker acts on and the generic envelope that keeps every other event verbatim.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::Extra;
use super::content::ContentBlock;
use super::ids::EventId;

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
