//! Sessions (docs/protocol.md §4): status, the agent snapshot with its skills, and resources.

use std::collections::BTreeMap;
// `open_enum!` (in scope from the parent module) expands to code naming `fmt`, `Serializer` and
// `Deserializer` unqualified.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Extra;
use super::ids::{EnvironmentId, SessionId};

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
