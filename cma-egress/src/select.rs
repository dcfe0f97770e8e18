//! Which policy applies to a session.
//!
//! A [`PolicySelector`] holds policies in order plus a default. For a [`SessionContext`] it picks
//! exactly one policy, never a merge:
//!
//! 1. the **first** policy with `apply_to` matchers that **all** hold (AND);
//! 2. otherwise the first policy with `apply_to_all: true` (the fallback);
//! 3. otherwise the selector's `default`: the built-in deny-all policy unless the operator set
//!    `"default": "allow"`.
//!
//! A policy with neither `apply_to` nor `apply_to_all` is never selected (a draft).
//!
//! Matchers compare one session field, as a string, with `equals`, `contains`, `matches` (a
//! regex, searched unanchored — write `^…$` to anchor) or `one_of`. Fields: `session_id`,
//! `agent_id`, `metadata.<key>[.<key>…]` (the session's metadata) and `webhook.<key>[.<key>…]`
//! (the last webhook's `data`). Numbers and booleans compare by their JSON text, arrays of
//! scalars as their items joined by `,`; a missing field, `null` or an object never matches.
//!
//! A [`PolicyStore`] holds the current selector for a running proxy: replacing it takes effect on
//! the next request (policies are looked up per request, so an edited policy reaches running
//! sessions without restarting their sandboxes) and notifies tunnels that must re-check.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use regex::Regex;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::{EgressError, EgressErrorKind, Result};
use crate::policy::raw::{RawMatcher, RawPolicySet};
use crate::policy::{DefaultAction, EgressPolicy, SharedPolicy};

/// Longest matcher value or regex accepted.
pub const MAX_MATCHER_VALUE_LEN: usize = 1024;
/// Most values a `one_of` matcher may list.
pub const MAX_ONE_OF_VALUES: usize = 1024;
/// Most policies a selector may hold.
pub const MAX_POLICIES: usize = 1024;
/// Compiled-size cap for matcher regexes (bytes).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What the selector knows about a session.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionContext {
    /// The session id.
    pub session_id: String,
    /// The agent the session runs, when known.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The session's metadata.
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// The `data` of the last webhook about the session.
    #[serde(default)]
    pub webhook: serde_json::Map<String, Value>,
}

impl SessionContext {
    /// A context with only a session id.
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            ..Self::default()
        }
    }

    /// The string value of `field`, if present (see the module docs).
    pub fn field(&self, field: &MatchField) -> Option<String> {
        match field {
            MatchField::SessionId => Some(self.session_id.clone()),
            MatchField::AgentId => self.agent_id.clone(),
            MatchField::Metadata(path) => lookup(&self.metadata, path),
            MatchField::Webhook(path) => lookup(&self.webhook, path),
        }
    }
}

fn lookup(map: &serde_json::Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = map.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts.map(|p| p.join(","))
        }
        other => scalar(other),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The session field a matcher reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchField {
    /// `session_id`.
    SessionId,
    /// `agent_id`.
    AgentId,
    /// `metadata.<path>`.
    Metadata(Vec<String>),
    /// `webhook.<path>`.
    Webhook(Vec<String>),
}

impl MatchField {
    fn parse(s: &str) -> Result<Self> {
        let path = |rest: &str| -> Result<Vec<String>> {
            let parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) || parts.len() > 16 {
                return Err(EgressError::invalid(
                    "field",
                    format!("invalid field path {s:?}"),
                ));
            }
            Ok(parts)
        };
        match s {
            "session_id" => Ok(Self::SessionId),
            "agent_id" => Ok(Self::AgentId),
            _ => {
                if let Some(rest) = s.strip_prefix("metadata.") {
                    Ok(Self::Metadata(path(rest)?))
                } else if let Some(rest) = s.strip_prefix("webhook.") {
                    Ok(Self::Webhook(path(rest)?))
                } else {
                    Err(EgressError::invalid(
                        "field",
                        format!(
                            "unknown field {s:?} (expected session_id, agent_id, metadata.<key> or webhook.<key>)"
                        ),
                    ))
                }
            }
        }
    }

    fn to_raw(&self) -> String {
        match self {
            Self::SessionId => "session_id".to_owned(),
            Self::AgentId => "agent_id".to_owned(),
            Self::Metadata(p) => format!("metadata.{}", p.join(".")),
            Self::Webhook(p) => format!("webhook.{}", p.join(".")),
        }
    }
}

/// How a matcher compares.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// The field equals the value.
    Equals(String),
    /// The field contains the value.
    Contains(String),
    /// The regex finds a match in the field.
    Matches(Regex),
    /// The field equals one of the values.
    OneOf(Vec<String>),
}

/// One condition on a session field.
#[derive(Debug, Clone)]
pub struct Matcher {
    field: MatchField,
    op: MatchOp,
}

impl Matcher {
    /// A matcher from parts.
    pub fn new(field: MatchField, op: MatchOp) -> Self {
        Self { field, op }
    }

    /// Whether the session satisfies this matcher (a missing field never does).
    pub fn matches(&self, session: &SessionContext) -> bool {
        let Some(v) = session.field(&self.field) else {
            return false;
        };
        match &self.op {
            MatchOp::Equals(x) => &v == x,
            MatchOp::Contains(x) => v.contains(x.as_str()),
            MatchOp::Matches(re) => re.is_match(&v),
            MatchOp::OneOf(xs) => xs.iter().any(|x| x == &v),
        }
    }

    pub(crate) fn from_raw(raw: &RawMatcher) -> Result<Self> {
        let field = MatchField::parse(&raw.field)?;
        let need_value = || -> Result<String> {
            if raw.values.is_some() {
                return Err(EgressError::invalid(
                    "values",
                    format!("not used by {:?} (use value)", raw.op),
                ));
            }
            match &raw.value {
                None => Err(EgressError::invalid(
                    "value",
                    format!("required by {:?}", raw.op),
                )),
                Some(v) if v.is_empty() => Err(EgressError::invalid("value", "must not be empty")),
                Some(v) if v.len() > MAX_MATCHER_VALUE_LEN => Err(EgressError::invalid(
                    "value",
                    format!("longer than {MAX_MATCHER_VALUE_LEN} bytes"),
                )),
                Some(v) => Ok(v.clone()),
            }
        };
        let op = match raw.op.as_str() {
            "equals" => MatchOp::Equals(need_value()?),
            "contains" => MatchOp::Contains(need_value()?),
            "matches" => {
                let src = need_value()?;
                let re = regex::RegexBuilder::new(&src)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| EgressError::invalid("value", format!("invalid regex: {e}")))?;
                MatchOp::Matches(re)
            }
            "one_of" => {
                if raw.value.is_some() {
                    return Err(EgressError::invalid(
                        "value",
                        "not used by \"one_of\" (use values)",
                    ));
                }
                let values = raw
                    .values
                    .clone()
                    .ok_or_else(|| EgressError::invalid("values", "required by \"one_of\""))?;
                if values.is_empty() || values.len() > MAX_ONE_OF_VALUES {
                    return Err(EgressError::invalid(
                        "values",
                        format!("must hold 1-{MAX_ONE_OF_VALUES} values"),
                    ));
                }
                if let Some(i) = values.iter().position(|v| v.len() > MAX_MATCHER_VALUE_LEN) {
                    return Err(EgressError::invalid(format!("values[{i}]"), "too long"));
                }
                MatchOp::OneOf(values)
            }
            other => {
                return Err(EgressError::invalid(
                    "op",
                    format!(
                        "unknown operator {other:?} (expected equals, contains, matches or one_of)"
                    ),
                ));
            }
        };
        Ok(Self { field, op })
    }

    pub(crate) fn to_raw(&self) -> RawMatcher {
        let (op, value, values) = match &self.op {
            MatchOp::Equals(v) => ("equals", Some(v.clone()), None),
            MatchOp::Contains(v) => ("contains", Some(v.clone()), None),
            MatchOp::Matches(re) => ("matches", Some(re.as_str().to_owned()), None),
            MatchOp::OneOf(vs) => ("one_of", None, Some(vs.clone())),
        };
        RawMatcher {
            field: self.field.to_raw(),
            op: op.to_owned(),
            value,
            values,
        }
    }
}

/// How a policy came to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "index")]
pub enum SelectedBy {
    /// The policy at this index, by its matchers.
    Matchers(usize),
    /// The fallback (`apply_to_all`) policy at this index.
    Fallback(usize),
    /// No policy applied: the selector's default.
    Default,
}

/// The policy that applies to a session.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The policy (a built-in one when [`SelectedBy::Default`]).
    pub policy: SharedPolicy,
    /// How it was chosen.
    pub by: SelectedBy,
}

/// Policies in order plus a default; see the module docs.
#[derive(Debug, Clone)]
pub struct PolicySelector {
    policies: Vec<SharedPolicy>,
    default: DefaultAction,
    default_policy: SharedPolicy,
}

impl Default for PolicySelector {
    fn default() -> Self {
        Self::new(Vec::new(), DefaultAction::Deny).unwrap_or_else(|_| unreachable!())
    }
}

impl PolicySelector {
    /// A selector over `policies` (in order) with `default` for sessions none applies to.
    /// Policy ids must be unique.
    pub fn new(policies: Vec<EgressPolicy>, default: DefaultAction) -> Result<Self> {
        if policies.len() > MAX_POLICIES {
            return Err(EgressError::invalid(
                "policies",
                format!("more than {MAX_POLICIES} policies"),
            ));
        }
        for (i, p) in policies.iter().enumerate() {
            if policies[..i].iter().any(|q| q.id() == p.id()) {
                return Err(EgressError::invalid(
                    format!("policies[{i}].id"),
                    format!("duplicate policy id {:?}", p.id()),
                ));
            }
        }
        let default_policy = Arc::new(match default {
            DefaultAction::Deny => EgressPolicy::deny_all(),
            DefaultAction::Allow => EgressPolicy::allow_all(),
        });
        Ok(Self {
            policies: policies.into_iter().map(Arc::new).collect(),
            default,
            default_policy,
        })
    }

    /// Parse `{"default": "deny"|"allow", "policies": [...]}`; errors name the field
    /// (`policies[1].rules[0].host`).
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let raw: RawPolicySet = crate::policy::raw::from_json(json)?;
        let default = match &raw.default {
            None => DefaultAction::Deny,
            Some(d) => DefaultAction::parse(d).map_err(|e| e.within("default"))?,
        };
        let policies = raw
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                EgressPolicy::from_raw(p).map_err(|e| e.within(&format!("policies[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(policies, default)
    }

    /// The policies, in order.
    pub fn policies(&self) -> &[SharedPolicy] {
        &self.policies
    }

    /// What applies when no policy is selected.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// Pick the one policy that applies to `session`.
    pub fn select(&self, session: &SessionContext) -> Selection {
        if let Some((i, p)) = self.policies.iter().enumerate().find(|(_, p)| {
            !p.apply_to().is_empty() && p.apply_to().iter().all(|m| m.matches(session))
        }) {
            return Selection {
                policy: p.clone(),
                by: SelectedBy::Matchers(i),
            };
        }
        if let Some((i, p)) = self
            .policies
            .iter()
            .enumerate()
            .find(|(_, p)| p.applies_to_all())
        {
            return Selection {
                policy: p.clone(),
                by: SelectedBy::Fallback(i),
            };
        }
        Selection {
            policy: self.default_policy.clone(),
            by: SelectedBy::Default,
        }
    }
}

/// Where the proxy gets a session's current policy. An `Err` makes the proxy refuse the request
/// (fail closed).
#[async_trait]
pub trait PolicySource: Send + Sync + 'static {
    /// The policy that applies to `session` now.
    async fn select(&self, session: &SessionContext) -> Result<Selection>;

    /// A channel that changes whenever policies may have changed (spliced tunnels re-check
    /// their decision then). `None` if the source never changes.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// An in-memory, replaceable [`PolicySelector`]: the usual [`PolicySource`].
#[derive(Debug)]
pub struct PolicyStore {
    current: RwLock<Arc<PolicySelector>>,
    version: watch::Sender<u64>,
}

impl PolicyStore {
    /// A store holding `selector`.
    pub fn new(selector: PolicySelector) -> Self {
        Self {
            current: RwLock::new(Arc::new(selector)),
            version: watch::Sender::new(0),
        }
    }

    /// The current selector.
    pub fn current(&self) -> Arc<PolicySelector> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the selector; running sessions use it from their next request.
    pub fn replace(&self, selector: PolicySelector) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(selector);
        self.version.send_modify(|v| *v += 1);
    }
}

#[async_trait]
impl PolicySource for PolicyStore {
    async fn select(&self, session: &SessionContext) -> Result<Selection> {
        Ok(self.current().select(session))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.version.subscribe())
    }
}

#[async_trait]
impl<T: PolicySource + ?Sized> PolicySource for Arc<T> {
    async fn select(&self, session: &SessionContext) -> Result<Selection> {
        (**self).select(session).await
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        (**self).changes()
    }
}

/// A source that always fails: what a broken policy backend looks like (tests, and a safe
/// placeholder before the real source is ready).
#[derive(Debug, Clone, Default)]
pub struct UnavailablePolicySource;

#[async_trait]
impl PolicySource for UnavailablePolicySource {
    async fn select(&self, _: &SessionContext) -> Result<Selection> {
        Err(EgressError::new(
            EgressErrorKind::PolicyResolution,
            "the policy source is unavailable",
        ))
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
