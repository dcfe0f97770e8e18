//! Choosing a sandbox backend per session: a host-supplied rule.
//!
//! The control plane holds named backends (`"isolate"`, `"docker"`, …) and asks a
//! [`BackendSelector`] which one a session gets. Closures work as selectors; [`RuleSelector`]
//! covers the common cases (by agent id, by a session metadata key, else a default).

use std::collections::HashMap;

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

/// Picks the backend name for a session.
pub trait BackendSelector: Send + Sync + 'static {
    /// The name of a backend registered with the control plane.
    fn select(&self, placement: &Placement<'_>) -> String;
}

impl<F> BackendSelector for F
where
    F: Fn(&Placement<'_>) -> String + Send + Sync + 'static,
{
    fn select(&self, placement: &Placement<'_>) -> String {
        self(placement)
    }
}

/// A rule-based selector: an explicit per-agent mapping first, then a session metadata key, then the
/// default backend.
#[derive(Debug, Clone)]
pub struct RuleSelector {
    default: String,
    by_agent: HashMap<String, String>,
    metadata_key: Option<String>,
}

impl RuleSelector {
    /// Every session goes to `default` unless a rule says otherwise.
    pub fn new(default: impl Into<String>) -> Self {
        Self {
            default: default.into(),
            by_agent: HashMap::new(),
            metadata_key: None,
        }
    }

    /// Sessions of `agent_id` go to `backend`.
    pub fn agent(mut self, agent_id: impl Into<String>, backend: impl Into<String>) -> Self {
        self.by_agent.insert(agent_id.into(), backend.into());
        self
    }

    /// A session whose metadata has `key` goes to the backend named by its value.
    pub fn metadata_key(mut self, key: impl Into<String>) -> Self {
        self.metadata_key = Some(key.into());
        self
    }
}

impl BackendSelector for RuleSelector {
    fn select(&self, placement: &Placement<'_>) -> String {
        if let Some(b) = placement.agent_id().and_then(|a| self.by_agent.get(a)) {
            return b.clone();
        }
        if let Some(b) = self.metadata_key.as_ref().and_then(|k| {
            placement
                .session
                .metadata
                .get(k)
                .or_else(|| placement.work.metadata.get(k))
        }) {
            return b.clone();
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
            }),
            "docker"
        );
        let (w, s) = fixtures("agent_x", json!({"cma.backend":"cloudflare"}));
        assert_eq!(
            sel.select(&Placement {
                work: &w,
                session: &s
            }),
            "cloudflare"
        );
        let (w, s) = fixtures("agent_x", json!({}));
        assert_eq!(
            sel.select(&Placement {
                work: &w,
                session: &s
            }),
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
            "isolate"
        );
    }
}
