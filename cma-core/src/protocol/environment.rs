//! Environments and their configuration (docs/protocol.md §2.2, §8).

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Extra;
use super::ids::EnvironmentId;

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
