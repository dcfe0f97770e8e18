//! Choosing a sandbox per session: a host-supplied rule.
//!
//! The host holds named backends (`"isolate"`, `"docker"`, …) and asks a [`BackendSelector`]
//! which [`SandboxProfile`] a session gets: a backend plus changes to the sandbox spec (image,
//! cpus, memory, disk, pids, env), so one Docker backend can run several configurations side by
//! side. Closures work as selectors; [`RuleSelector`] covers the common cases (by agent id or
//! pattern, by session metadata, else a default), and its rules can be data
//! ([`PlacementRules`], serde, validated with errors naming the field).

use std::collections::BTreeMap;

use cma_sandbox::SandboxSpec;
use serde::{Deserialize, Serialize};

use super::rules::CompiledRule;
pub use super::rules::{PlacementRule, PlacementRules, RulesError};
use crate::protocol::{Session, Work};

/// What a selector sees about the session it places.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The claimed work item.
    pub work: &'a Work,
    /// The session, as fetched for this item.
    pub session: &'a Session,
}

impl Placement<'_> {
    /// The agent id of the session, when the session's agent snapshot carries one.
    pub fn agent_id(&self) -> Option<&str> {
        self.session.agent.extra.get("id").and_then(|v| v.as_str())
    }
}

/// Where a session's sandbox goes: a registered backend, and what this session's sandboxes get
/// instead of the host's template spec ([`SandboxHostConfig::spec`](super::host::SandboxHostConfig::spec)).
/// Unset fields keep the template's value; `env` is added to the template's (a name in both
/// takes this value). Several profiles over one backend give several Docker configurations side
/// by side. Data (serde, unknown fields rejected); [`SandboxProfile::validate`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxProfile {
    /// The name of a backend registered with the host (`isolate`, `docker`, …).
    pub backend: String,
    /// Container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU limit in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Workspace disk quota in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Process limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Environment variables of commands run in the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl SandboxProfile {
    /// The backend `name` with the host's template spec unchanged.
    pub fn backend(name: impl Into<String>) -> Self {
        Self {
            backend: name.into(),
            ..Self::default()
        }
    }

    /// Apply this profile to `spec` (a copy of the host's template).
    pub fn apply(&self, spec: &mut SandboxSpec) {
        if let Some(image) = &self.image {
            spec.image = Some(image.clone());
        }
        if let Some(cpus) = self.cpus {
            spec.cpus = Some(cpus);
        }
        if let Some(m) = self.memory_bytes {
            spec.memory_bytes = Some(m);
        }
        if let Some(d) = self.disk_bytes {
            spec.disk_bytes = Some(d);
        }
        if let Some(p) = self.pids {
            spec.pids = Some(p);
        }
        spec.env
            .extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Check the values (`field` names this profile in errors, e.g. `profiles.big`) and, when
    /// `backends` is given, that the backend is one of them.
    pub fn validate(&self, field: &str, backends: Option<&[&str]>) -> Result<(), RulesError> {
        let invalid = |sub: &str, message: String| RulesError::Invalid {
            field: format!("{field}.{sub}"),
            message,
        };
        if self.backend.is_empty() {
            return Err(invalid("backend", "must name a backend".into()));
        }
        if let Some(known) = backends
            && !known.contains(&self.backend.as_str())
        {
            let mut known = known.to_vec();
            known.sort_unstable();
            return Err(RulesError::UnknownBackend {
                field: format!("{field}.backend"),
                name: self.backend.clone(),
                known: known.join(", "),
            });
        }
        if let Some(image) = &self.image
            && (image.is_empty()
                || image.len() > 512
                || !image.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "image",
                "must be 1–512 visible ASCII characters".into(),
            ));
        }
        if let Some(c) = self.cpus
            && !(c.is_finite() && c > 0.0 && c <= 1024.0)
        {
            return Err(invalid(
                "cpus",
                format!("must be above 0 and at most 1024, not {c}"),
            ));
        }
        for (sub, value) in [
            ("memory_bytes", self.memory_bytes),
            ("disk_bytes", self.disk_bytes),
        ] {
            if value == Some(0) {
                return Err(invalid(sub, "must be above 0".into()));
            }
        }
        if self.pids == Some(0) {
            return Err(invalid("pids", "must be above 0".into()));
        }
        if self.env.len() > MAX_ENV {
            return Err(invalid("env", format!("at most {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            let name_ok = k.len() <= 256
                && k.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return Err(invalid(
                    "env",
                    format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            if v.contains('\0') || v.len() > 32 * 1024 {
                return Err(invalid(
                    &format!("env.{k}"),
                    "must be at most 32 KiB without NUL bytes".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Most environment variables one profile sets.
const MAX_ENV: usize = 256;

impl From<String> for SandboxProfile {
    fn from(backend: String) -> Self {
        Self::backend(backend)
    }
}

impl From<&str> for SandboxProfile {
    fn from(backend: &str) -> Self {
        Self::backend(backend)
    }
}

/// Picks the backend and sandbox profile of a session. Dyn-safe; closures returning a backend
/// name (`String`, `&'static str`) or a [`SandboxProfile`] are selectors.
pub trait BackendSelector: Send + Sync + 'static {
    /// The profile (backend registered with the host, plus spec changes) of this session.
    fn select(&self, placement: &Placement<'_>) -> SandboxProfile;
}

impl<F, R> BackendSelector for F
where
    F: Fn(&Placement<'_>) -> R + Send + Sync + 'static,
    R: Into<SandboxProfile>,
{
    fn select(&self, placement: &Placement<'_>) -> SandboxProfile {
        self(placement).into()
    }
}

/// A rule-based selector: the first matching rule ([`RuleSelector::agent`], or the data rules
/// of [`RuleSelector::with_rules`], in the order given), then a session metadata key naming a
/// backend, then the default.
#[derive(Debug, Clone)]
pub struct RuleSelector {
    default: SandboxProfile,
    rules: Vec<CompiledRule>,
    metadata_key: Option<String>,
}

impl RuleSelector {
    /// Every session goes to `default` (a backend name or a profile) unless a rule says
    /// otherwise.
    pub fn new(default: impl Into<SandboxProfile>) -> Self {
        Self {
            default: default.into(),
            rules: Vec::new(),
            metadata_key: None,
        }
    }

    /// Sessions of `agent_id` go to `profile` (a backend name or a profile).
    pub fn agent(
        mut self,
        agent_id: impl Into<String>,
        profile: impl Into<SandboxProfile>,
    ) -> Self {
        self.rules
            .push(CompiledRule::agent(agent_id.into(), profile.into()));
        self
    }

    /// A session whose metadata (or its work item's) has `key` goes to the backend named by its
    /// value, with the host's template spec.
    pub fn metadata_key(mut self, key: impl Into<String>) -> Self {
        self.metadata_key = Some(key.into());
        self
    }

    /// Add the rules of `rules` (after the ones already given) and, when it names one, its
    /// default profile. Every profile's backend must be in `backends` (the names registered
    /// with the host); errors name the offending field.
    pub fn with_rules(
        mut self,
        rules: &PlacementRules,
        backends: &[&str],
    ) -> Result<Self, RulesError> {
        let compiled = rules.compile(backends)?;
        self.rules.extend(compiled.rules);
        if let Some(default) = compiled.default {
            self.default = default;
        }
        Ok(self)
    }
}

impl BackendSelector for RuleSelector {
    fn select(&self, placement: &Placement<'_>) -> SandboxProfile {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(placement)) {
            return rule.profile.clone();
        }
        if let Some(b) = self.metadata_key.as_ref().and_then(|k| {
            placement
                .session
                .metadata
                .get(k)
                .or_else(|| placement.work.metadata.get(k))
        }) {
            return SandboxProfile::backend(b.clone());
        }
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixtures(agent: &str, meta: serde_json::Value) -> (Work, Session) {
        let work: Work = serde_json::from_value(json!({"type":"work","id":"w","environment_id":"e","state":"queued","data":{"type":"session","id":"s"},"created_at":"2026-05-01T00:00:00Z"})).unwrap();
        let session: Session = serde_json::from_value(json!({"type":"session","id":"s","status":"idle","agent":{"id":agent,"skills":[]},"resources":[],"metadata":meta})).unwrap();
        (work, session)
    }

    #[test]
    fn agent_rule_beats_metadata_which_beats_default() {
        let sel = RuleSelector::new("isolate")
            .agent("agent_big", "docker")
            .metadata_key("cma.backend");
        let (w, s) = fixtures("agent_big", json!({"cma.backend":"cloudflare"}));
        assert_eq!(
            sel.select(&Placement {
                work: &w,
                session: &s
            })
            .backend,
            "docker"
        );
        let (w, s) = fixtures("agent_x", json!({"cma.backend":"cloudflare"}));
        assert_eq!(
            sel.select(&Placement {
                work: &w,
                session: &s
            })
            .backend,
            "cloudflare"
        );
        let (w, s) = fixtures("agent_x", json!({}));
        assert_eq!(
            sel.select(&Placement {
                work: &w,
                session: &s
            })
            .backend,
            "isolate"
        );
    }

    #[test]
    fn closures_are_selectors() {
        let sel = |p: &Placement<'_>| {
            if p.session.metadata.is_empty() {
                "isolate".to_owned()
            } else {
                "docker".to_owned()
            }
        };
        let (w, s) = fixtures("a", json!({}));
        assert_eq!(
            BackendSelector::select(
                &sel,
                &Placement {
                    work: &w,
                    session: &s
                }
            ),
            SandboxProfile::backend("isolate")
        );
    }
}
