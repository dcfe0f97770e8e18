//! The scenario file: what the emulator serves from the start (environments, keys, scripted
//! sessions, faults, webhook target).
//!
//! Every object rejects unknown fields so a typo fails loudly instead of being ignored. The
//! complete format, with an example, is in the [module documentation](super).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::faults::Fault;

/// Largest lease TTL the emulator accepts (one day).
pub const MAX_LEASE_TTL_SECONDS: u64 = 86_400;

/// A whole scenario (see the [module documentation](super) for an example).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Lease TTL in seconds reported by heartbeats (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_seconds: Option<u64>,
    /// Reclaim delay applied when a poll omits `reclaim_older_than_ms` (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_older_than_ms: Option<u64>,
    /// The API key accepted for control-plane calls (default: a random `sk-ant-emu-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Environments, with their environment keys.
    #[serde(default)]
    pub environments: Vec<ScenarioEnvironment>,
    /// Scripted sessions, created (and their work queued) at start-up.
    #[serde(default)]
    pub sessions: Vec<ScenarioSession>,
    /// Faults armed at start-up.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Where to deliver signed webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<ScenarioWebhook>,
    /// Skills the emulator serves (each as one version whose archive is a tar of `files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<ScenarioSkill>,
    /// Memory stores the emulator serves, with their initial memories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_stores: Vec<ScenarioMemoryStore>,
    /// Strict mode: polls without `Anthropic-Worker-ID` are rejected with a 400 (see
    /// [`EmulatorConfig::strict`](super::EmulatorConfig::strict)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// A skill of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSkill {
    /// The skill id.
    pub id: String,
    /// The skill's name (the directory it lands in under `skills/`).
    pub name: String,
    /// Relative path → text content; packaged as a tar wrapped in `<name>/`.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// A memory store of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioMemoryStore {
    /// `memstore_…`.
    pub id: String,
    /// Memory path (`/a/b.md`) → content.
    #[serde(default)]
    pub memories: std::collections::BTreeMap<String, String>,
}

/// One environment of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioEnvironment {
    /// `env_…` id.
    pub id: String,
    /// Display name (defaults to the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The environment key workers use for `poll`/`ack` (default: a random `envkey_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_key: Option<String>,
}

/// One scripted session of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSession {
    /// `sesn_…` id (default: a random one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The id of the environment whose queue receives the session's work item.
    pub environment: String,
    /// The calls the agent makes, in order.
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
    /// What the agent does after the last call.
    #[serde(default)]
    pub end: ScriptEnd,
    /// The id of the session's agent (`agent.id`; default `agent_emulator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Skills of the session's agent (`agent.skills[]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<super::resources::SkillAttachment>,
    /// Memory stores attached to the session (`resources[]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_stores: Vec<super::resources::MemoryAttachment>,
}

/// Where and how webhooks are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioWebhook {
    /// Receiver URL (`http://…`).
    pub url: String,
    /// Signing secret, `whsec_<base64>`.
    pub secret: String,
}

/// What kind of call a scripted step is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A built-in, sandbox-routed tool: `agent.tool_use`, answered with `user.tool_result`.
    #[default]
    ToolUse,
    /// A custom tool: `agent.custom_tool_use`, answered with `user.custom_tool_result`; the
    /// session idles with `requires_action` while it waits.
    CustomToolUse,
}

/// A scripted user verdict on an `ask`-gated call, emitted right after the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedConfirmation {
    /// `allow` or `deny`.
    pub result: String,
    /// Optional message on deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<String>,
}

/// One tool call of a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// `tool_use` (default) or `custom_tool_use`.
    #[serde(rename = "type", default)]
    pub kind: CallKind,
    /// Tool name (`bash`, `read`, … or a custom tool's name).
    pub name: String,
    /// Tool input (default `{}`).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// `evaluated_permission` of the event: `allow`, `ask`, `deny` (absent by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_permission: Option<String>,
    /// A scripted `user.tool_confirmation` for an `ask`-gated call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<ScriptedConfirmation>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl ScriptedCall {
    /// A built-in tool call.
    pub fn tool(name: impl Into<String>, input: Value) -> Self {
        Self {
            kind: CallKind::ToolUse,
            name: name.into(),
            input,
            evaluated_permission: None,
            confirmation: None,
        }
    }

    /// A custom tool call.
    pub fn custom(name: impl Into<String>, input: Value) -> Self {
        Self {
            kind: CallKind::CustomToolUse,
            ..Self::tool(name, input)
        }
    }

    /// Set `evaluated_permission`.
    pub fn with_permission(mut self, permission: impl Into<String>) -> Self {
        self.evaluated_permission = Some(permission.into());
        self
    }

    /// Script the user's verdict (`allow` / `deny`) on this call.
    pub fn with_confirmation(mut self, result: impl Into<String>, deny: Option<String>) -> Self {
        self.confirmation = Some(ScriptedConfirmation {
            result: result.into(),
            deny_message: deny,
        });
        self
    }
}

/// What a scripted agent does once every call is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptEnd {
    /// Emit `session.status_idle {end_turn}` and stay idle (the worker's idle rule ends its run).
    #[default]
    Idle,
    /// Emit `session.status_idle {end_turn}` then `session.status_terminated`.
    Terminate,
}

/// A session's script: calls in order and the ending.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The calls the agent makes, in order.
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
    /// What happens after the last call.
    #[serde(default)]
    pub end: ScriptEnd,
    /// The id of the session's agent (`agent.id`; default `agent_emulator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

impl Script {
    /// A script with these calls, ending with `end`.
    pub fn new(calls: Vec<ScriptedCall>, end: ScriptEnd) -> Self {
        Self {
            calls,
            end,
            agent_id: None,
        }
    }

    /// The session's agent has this id (`agent.id`).
    pub fn agent_id(mut self, id: impl Into<String>) -> Self {
        self.agent_id = Some(id.into());
        self
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or does not match the format (the message names line and column).
    #[error("scenario {origin} is not valid: {source}")]
    Parse {
        /// The file path, or `<inline>`.
        origin: String,
        /// The cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is well-formed but inconsistent (duplicate ids, unknown environment, …).
    #[error("scenario is inconsistent: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Read and validate a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parse and validate a scenario from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        Self::parse_named(text, "<inline>")
    }

    fn parse_named(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let s: Self = serde_json::from_str(text).map_err(|source| ScenarioError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Check cross references and values that serde cannot check.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if let Some(t) = self.lease_ttl_seconds
            && !(1..=MAX_LEASE_TTL_SECONDS).contains(&t)
        {
            return bad(format!(
                "lease_ttl_seconds must be between 1 and {MAX_LEASE_TTL_SECONDS}"
            ));
        }
        if let Some(k) = &self.api_key
            && k.trim().is_empty()
        {
            return bad("api_key must not be empty".into());
        }
        let mut env_ids = HashSet::new();
        let mut keys = HashSet::new();
        for e in &self.environments {
            if e.id.trim().is_empty() {
                return bad("an environment has an empty id".into());
            }
            if !env_ids.insert(e.id.as_str()) {
                return bad(format!("environment id {:?} appears twice", e.id));
            }
            if let Some(k) = &e.environment_key {
                if k.trim().is_empty() {
                    return bad(format!(
                        "environment {:?} has an empty environment_key",
                        e.id
                    ));
                }
                if !keys.insert(k.as_str()) || self.api_key.as_deref() == Some(k) {
                    return bad(format!(
                        "environment {:?}: environment_key is used twice",
                        e.id
                    ));
                }
            }
        }
        let mut session_ids = HashSet::new();
        for (i, s) in self.sessions.iter().enumerate() {
            if !env_ids.contains(s.environment.as_str()) {
                return bad(format!(
                    "session #{i} names environment {:?}, which the scenario does not declare",
                    s.environment
                ));
            }
            if let Some(id) = &s.id
                && (id.trim().is_empty() || !session_ids.insert(id.as_str()))
            {
                return bad(format!("session id {id:?} is empty or appears twice"));
            }
            for (j, c) in s.calls.iter().enumerate() {
                validate_call(c).map_err(|m| {
                    ScenarioError::Invalid(format!("session #{i}, call #{j} ({}): {m}", c.name))
                })?;
            }
        }
        for (i, k) in self.skills.iter().enumerate() {
            if k.id.trim().is_empty() || k.name.trim().is_empty() {
                return bad(format!("skill #{i} has an empty id or name"));
            }
        }
        for st in &self.memory_stores {
            if st.id.trim().is_empty() {
                return bad("a memory store has an empty id".into());
            }
            for p in st.memories.keys() {
                super::resources::validate_memory_path(p).map_err(|m| {
                    ScenarioError::Invalid(format!("memory store {:?}, path {p:?}: {m}", st.id))
                })?;
            }
        }
        for (i, s) in self.sessions.iter().enumerate() {
            for m in &s.memory_stores {
                if let Some(a) = &m.access
                    && a != "read_write"
                    && a != "read_only"
                {
                    return bad(format!(
                        "session #{i}: access must be read_write or read_only"
                    ));
                }
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            f.validate()
                .map_err(|m| ScenarioError::Invalid(format!("fault #{i}: {m}")))?;
        }
        if let Some(w) = &self.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return bad(format!("webhook url {:?} must be http(s)", w.url));
            }
            crate::webhook::WebhookSecret::parse(&w.secret)
                .map_err(|e| ScenarioError::Invalid(format!("webhook secret: {e}")))?;
        }
        Ok(())
    }
}

/// Check one scripted call (also used for sessions created over HTTP).
pub(crate) fn validate_call(c: &ScriptedCall) -> Result<(), String> {
    let name_ok = !c.name.is_empty()
        && c.name.len() <= 128
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if !name_ok {
        return Err("name must be 1-128 characters of [A-Za-z0-9_-]".into());
    }
    if !c.input.is_object() {
        return Err("input must be a JSON object".into());
    }
    if let Some(conf) = &c.confirmation {
        if conf.result != "allow" && conf.result != "deny" {
            return Err(format!(
                "confirmation result must be allow or deny, not {:?}",
                conf.result
            ));
        }
        if c.kind == CallKind::CustomToolUse {
            return Err("custom tool calls are not permission-gated".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let s = Scenario::from_json(include_str!("scenario_example.json")).unwrap();
        assert_eq!(s.sessions[0].calls.len(), 3);
        assert_eq!(s.faults.len(), 3);
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_position() {
        let err = Scenario::from_json(r#"{"environments":[{"id":"env_a","nmae":"x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn sessions_must_name_declared_environments() {
        let err = Scenario::from_json(r#"{"sessions":[{"environment":"env_missing"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("env_missing"), "{err}");
    }

    #[test]
    fn calls_default_to_builtin_with_empty_input() {
        let s = Scenario::from_json(
            r#"{"environments":[{"id":"env_a"}],
                "sessions":[{"environment":"env_a","calls":[{"name":"bash"}],"end":"terminate"}]}"#,
        )
        .unwrap();
        let c = &s.sessions[0].calls[0];
        assert_eq!(c.kind, CallKind::ToolUse);
        assert_eq!(c.input, serde_json::json!({}));
        assert_eq!(s.sessions[0].end, ScriptEnd::Terminate);
    }

    #[test]
    fn bad_confirmation_and_names_are_rejected() {
        for body in [
            r#"{"environments":[{"id":"e"}],"sessions":[{"environment":"e","calls":[{"name":"bash","confirmation":{"result":"maybe"}}]}]}"#,
            r#"{"environments":[{"id":"e"}],"sessions":[{"environment":"e","calls":[{"name":"has space"}]}]}"#,
            r#"{"environments":[{"id":"e"},{"id":"e"}]}"#,
            r#"{"lease_ttl_seconds":0}"#,
            r#"{"webhook":{"url":"ftp://x","secret":"whsec_c2VjcmV0"}}"#,
        ] {
            assert!(
                matches!(Scenario::from_json(body), Err(ScenarioError::Invalid(_))),
                "{body}"
            );
        }
    }
}
