//! Placement rules as data: named sandbox profiles and the rules that map sessions to them, as
//! a host's configuration file states them (serde; unknown fields rejected), checked before use
//! with errors that name the offending field (`rules[2].agent_id_pattern: …`).
//!
//! ```json
//! {
//!   "profiles": {
//!     "small": {"backend": "docker", "image": "cma-sandbox:slim", "cpus": 0.5, "memory_bytes": 536870912},
//!     "big":   {"backend": "docker", "image": "cma-sandbox:full", "cpus": 4, "pids": 4096,
//!               "env": {"TIER": "big"}},
//!     "light": {"backend": "isolate"}
//!   },
//!   "rules": [
//!     {"agent_ids": ["agent_01Build"], "profile": "big"},
//!     {"agent_id_pattern": "agent_01Ci.*", "metadata": {"tier": "ci"}, "profile": "small"}
//!   ],
//!   "default": "light"
//! }
//! ```
//!
//! A rule matches when every condition it gives holds: the session's agent id is one of
//! `agent_ids`, it matches `agent_id_pattern` (a regular expression over the whole id), and the
//! session's (or its work item's) metadata has each `metadata` key with that value. The first
//! matching rule wins; a session no rule matches gets `default` (or the selector's own default).

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::select::{Placement, SandboxProfile};

/// Most rules one rule set holds.
pub const MAX_RULES: usize = 1000;
/// Largest compiled regular expression of an `agent_id_pattern`, in bytes.
const MAX_PATTERN_BYTES: usize = 1 << 20;
/// Longest `agent_id_pattern` accepted, in bytes.
const MAX_PATTERN_LEN: usize = 4096;

/// Named profiles and the rules choosing between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRules {
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, SandboxProfile>,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<PlacementRule>,
    /// The profile of sessions no rule matches (default: the selector's own default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One rule: conditions (all must hold; at least one given) and the profile they select.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRule {
    /// The session's agent id is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<String>,
    /// The session's agent id matches this regular expression (anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id_pattern: Option<String>,
    /// The session's metadata (else its work item's) has each of these keys with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The name of the profile sessions matching this rule get.
    pub profile: String,
}

/// Why placement rules were refused; each variant names the field (`profiles.big.cpus`,
/// `rules[1].agent_id_pattern`, `default`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// A profile names a backend the host does not have.
    #[error("{field}: unknown backend {name:?} (registered: {known})")]
    UnknownBackend {
        /// The field.
        field: String,
        /// The backend named.
        name: String,
        /// The registered backends, comma-separated.
        known: String,
    },
    /// A rule or the default names a profile that is not defined.
    #[error("{field}: unknown profile {name:?} (defined: {known})")]
    UnknownProfile {
        /// The field.
        field: String,
        /// The profile named.
        name: String,
        /// The defined profiles, comma-separated.
        known: String,
    },
    /// An `agent_id_pattern` is not a valid (or is too large a) regular expression.
    #[error("{field}: invalid regular expression: {source}")]
    BadPattern {
        /// The field.
        field: String,
        /// The parser's error.
        #[source]
        source: Box<regex::Error>,
    },
    /// Any other invalid value (an empty rule, a bad limit or variable name, …).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl RulesError {
    /// The offending field, as written in the configuration (`rules[0].profile`).
    pub fn field(&self) -> &str {
        match self {
            Self::UnknownBackend { field, .. }
            | Self::UnknownProfile { field, .. }
            | Self::BadPattern { field, .. }
            | Self::Invalid { field, .. } => field,
        }
    }
}

/// A checked rule, ready to match.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    agent_ids: HashSet<String>,
    agent_pattern: Option<Regex>,
    metadata: BTreeMap<String, String>,
    pub(crate) profile: SandboxProfile,
}

impl CompiledRule {
    /// Sessions of one agent.
    pub(crate) fn agent(agent_id: String, profile: SandboxProfile) -> Self {
        Self {
            agent_ids: HashSet::from([agent_id]),
            agent_pattern: None,
            metadata: BTreeMap::new(),
            profile,
        }
    }

    /// Whether every condition holds for `placement`.
    pub(crate) fn matches(&self, placement: &Placement<'_>) -> bool {
        let agent = placement.agent_id();
        if !self.agent_ids.is_empty() && !agent.is_some_and(|a| self.agent_ids.contains(a)) {
            return false;
        }
        if let Some(re) = &self.agent_pattern
            && !agent.is_some_and(|a| re.is_match(a))
        {
            return false;
        }
        self.metadata.iter().all(|(k, v)| {
            placement
                .session
                .metadata
                .get(k)
                .or_else(|| placement.work.metadata.get(k))
                == Some(v)
        })
    }
}

/// Checked rules and the default profile they name.
pub(crate) struct Compiled {
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) default: Option<SandboxProfile>,
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

impl PlacementRules {
    /// Check every profile (against the backends the host registers) and rule.
    pub fn validate(&self, backends: &[&str]) -> Result<(), RulesError> {
        self.compile(backends).map(|_| ())
    }

    pub(crate) fn compile(&self, backends: &[&str]) -> Result<Compiled, RulesError> {
        for (name, profile) in &self.profiles {
            if name.is_empty() {
                return Err(RulesError::Invalid {
                    field: "profiles".into(),
                    message: "a profile name must not be empty".into(),
                });
            }
            profile.validate(&format!("profiles.{name}"), Some(backends))?;
        }
        if self.rules.len() > MAX_RULES {
            return Err(RulesError::Invalid {
                field: "rules".into(),
                message: format!("at most {MAX_RULES} rules"),
            });
        }
        let profile = |field: String, name: &str| {
            self.profiles
                .get(name)
                .cloned()
                .ok_or_else(|| RulesError::UnknownProfile {
                    field,
                    name: name.to_owned(),
                    known: names(self.profiles.keys()),
                })
        };
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let field = |sub: &str| format!("rules[{i}].{sub}");
            if rule.agent_ids.is_empty()
                && rule.agent_id_pattern.is_none()
                && rule.metadata.is_empty()
            {
                return Err(RulesError::Invalid {
                    field: format!("rules[{i}]"),
                    message: "empty rule: give agent_ids, agent_id_pattern or metadata (sessions no rule matches get `default`)".into(),
                });
            }
            if rule.agent_ids.iter().any(String::is_empty) {
                return Err(RulesError::Invalid {
                    field: field("agent_ids"),
                    message: "an agent id must not be empty".into(),
                });
            }
            if rule.metadata.keys().any(String::is_empty) {
                return Err(RulesError::Invalid {
                    field: field("metadata"),
                    message: "a metadata key must not be empty".into(),
                });
            }
            let agent_pattern = match &rule.agent_id_pattern {
                None => None,
                Some(p) if p.is_empty() || p.len() > MAX_PATTERN_LEN => {
                    return Err(RulesError::Invalid {
                        field: field("agent_id_pattern"),
                        message: format!("must be 1–{MAX_PATTERN_LEN} bytes"),
                    });
                }
                Some(p) => {
                    let build = |pattern: &str| {
                        regex::RegexBuilder::new(pattern)
                            .size_limit(MAX_PATTERN_BYTES)
                            .build()
                            .map_err(|e| RulesError::BadPattern {
                                field: field("agent_id_pattern"),
                                source: Box::new(e),
                            })
                    };
                    // Valid on its own first, so its groups are balanced and the anchored
                    // wrapper cannot be escaped (`a)|(b`).
                    build(p)?;
                    Some(build(&format!("^(?:{p})$"))?)
                }
            };
            rules.push(CompiledRule {
                agent_ids: rule.agent_ids.iter().cloned().collect(),
                agent_pattern,
                metadata: rule.metadata.clone(),
                profile: profile(field("profile"), &rule.profile)?,
            });
        }
        let default = match &self.default {
            Some(name) => Some(profile("default".into(), name)?),
            None => None,
        };
        Ok(Compiled { rules, default })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::select::{BackendSelector, RuleSelector};
    use crate::protocol::{Session, Work};
    use serde_json::json;

    const BACKENDS: &[&str] = &["isolate", "docker"];

    fn fixtures(agent: &str, meta: serde_json::Value) -> (Work, Session) {
        let work: Work = serde_json::from_value(json!({"type":"work","id":"w","environment_id":"e","state":"queued","data":{"type":"session","id":"s"},"created_at":"2026-05-01T00:00:00Z"})).unwrap();
        let session: Session = serde_json::from_value(json!({"type":"session","id":"s","status":"idle","agent":{"id":agent,"skills":[]},"resources":[],"metadata":meta})).unwrap();
        (work, session)
    }

    fn rules(v: serde_json::Value) -> PlacementRules {
        serde_json::from_value(v).expect("rules parse")
    }

    fn example() -> PlacementRules {
        rules(json!({
            "profiles": {
                "small": {"backend": "docker", "image": "img:slim", "cpus": 0.5,
                          "memory_bytes": 268435456u64, "pids": 64, "env": {"TIER": "small"}},
                "big": {"backend": "docker", "image": "img:full", "cpus": 2, "disk_bytes": 1073741824u64},
                "light": {"backend": "isolate"}
            },
            "rules": [
                {"agent_ids": ["agent_big"], "profile": "big"},
                {"agent_id_pattern": "agent_ci_[0-9]+", "metadata": {"tier": "ci"}, "profile": "small"}
            ],
            "default": "light"
        }))
    }

    fn pick(sel: &RuleSelector, agent: &str, meta: serde_json::Value) -> SandboxProfile {
        let (w, s) = fixtures(agent, meta);
        sel.select(&Placement {
            work: &w,
            session: &s,
        })
    }

    #[test]
    fn rules_map_agents_to_profiles_first_match_wins() {
        let r = example();
        let sel = RuleSelector::new("isolate")
            .with_rules(&r, BACKENDS)
            .unwrap();
        let big = pick(&sel, "agent_big", json!({"tier": "ci"}));
        assert_eq!(big, r.profiles["big"]);
        let ci = pick(&sel, "agent_ci_42", json!({"tier": "ci"}));
        assert_eq!(ci, r.profiles["small"]);
        // Every condition must hold: the pattern is anchored, the metadata must match.
        assert_eq!(pick(&sel, "agent_ci_42", json!({})), r.profiles["light"]);
        assert_eq!(
            pick(&sel, "xagent_ci_42", json!({"tier": "ci"})),
            r.profiles["light"]
        );
        assert_eq!(
            pick(&sel, "agent_ci_42x", json!({"tier": "ci"})),
            r.profiles["light"]
        );
        // Without a default in the data, the selector's own default stands.
        let mut no_default = example();
        no_default.default = None;
        let sel = RuleSelector::new("docker")
            .with_rules(&no_default, BACKENDS)
            .unwrap();
        assert_eq!(
            pick(&sel, "agent_x", json!({})),
            SandboxProfile::backend("docker")
        );
    }

    #[test]
    fn profiles_change_the_template_spec() {
        let r = example();
        let mut spec = cma_sandbox::SandboxSpec::new();
        spec.image = Some("template".into());
        spec.pids = Some(10);
        spec.env.insert("A".into(), "1".into());
        spec.env.insert("TIER".into(), "none".into());
        r.profiles["small"].apply(&mut spec);
        assert_eq!(spec.image.as_deref(), Some("img:slim"));
        assert_eq!(spec.cpus, Some(0.5));
        assert_eq!(spec.memory_bytes, Some(268_435_456));
        assert_eq!(spec.pids, Some(64));
        assert_eq!(spec.disk_bytes, None);
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.env["TIER"], "small");
        let mut spec = cma_sandbox::SandboxSpec::new();
        spec.pids = Some(10);
        r.profiles["light"].apply(&mut spec);
        assert_eq!(
            spec.pids,
            Some(10),
            "unset fields keep the template's value"
        );
    }

    #[test]
    fn the_rules_round_trip_through_json() {
        let r = example();
        let text = serde_json::to_string(&r).unwrap();
        let back: PlacementRules = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    /// The error of `v` against the registered backends: its field and text.
    fn error(v: serde_json::Value) -> (String, String) {
        let e = rules(v).validate(BACKENDS).expect_err("refused");
        (e.field().to_owned(), e.to_string())
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_field() {
        let (f, m) = error(json!({"profiles": {"x": {"backend": "dockr"}}}));
        assert_eq!(f, "profiles.x.backend");
        assert!(
            m.contains("unknown backend \"dockr\"") && m.contains("docker, isolate"),
            "{m}"
        );

        let (f, m) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_id_pattern": "agent_(", "profile": "x"}]}));
        assert_eq!(f, "rules[0].agent_id_pattern");
        assert!(m.contains("invalid regular expression"), "{m}");

        let (f, m) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_id_pattern": "a)|(b", "profile": "x"}]}));
        assert_eq!(f, "rules[0].agent_id_pattern", "{m}");

        let (f, m) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_ids": ["a"], "profile": "x"}, {"profile": "x"}]}));
        assert_eq!(f, "rules[1]");
        assert!(m.contains("empty rule"), "{m}");

        let (f, m) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_ids": ["a"], "profile": "y"}]}));
        assert_eq!(f, "rules[0].profile");
        assert!(
            m.contains("unknown profile \"y\"") && m.contains("(defined: x)"),
            "{m}"
        );

        let (f, _) = error(json!({"profiles": {}, "default": "nope"}));
        assert_eq!(f, "default");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker", "cpus": 0}}}));
        assert_eq!(f, "profiles.x.cpus");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker", "memory_bytes": 0}}}));
        assert_eq!(f, "profiles.x.memory_bytes");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker", "pids": 0}}}));
        assert_eq!(f, "profiles.x.pids");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker", "image": "a b"}}}));
        assert_eq!(f, "profiles.x.image");
        let (f, m) = error(json!({"profiles": {"x": {"backend": "docker", "env": {"1X": "v"}}}}));
        assert_eq!(f, "profiles.x.env");
        assert!(m.contains("\"1X\""), "{m}");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_ids": [""], "profile": "x"}]}));
        assert_eq!(f, "rules[0].agent_ids");
        let (f, _) = error(json!({"profiles": {"x": {"backend": "docker"}},
                                  "rules": [{"agent_id_pattern": "", "profile": "x"}]}));
        assert_eq!(f, "rules[0].agent_id_pattern");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for bad in [
            json!({"profile": {}}),
            json!({"profiles": {"x": {"backend": "docker", "cpu": 1}}}),
            json!({"rules": [{"agent": "a", "profile": "x"}]}),
        ] {
            let e = serde_json::from_value::<PlacementRules>(bad.clone()).expect_err("refused");
            assert!(e.to_string().contains("unknown field"), "{bad}: {e}");
        }
    }
}
