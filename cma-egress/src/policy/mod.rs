//! Egress policies as data: the validated [`EgressPolicy`] and its [`Rule`]s.
//!
//! A policy is JSON (see `examples/egress/package-registries.json`):
//!
//! ```json
//! { "id": "pol_registries", "name": "Package registries", "default": "deny",
//!   "apply_to_all": true,
//!   "rules": [
//!     { "type": "allow", "host": "pypi.org,files.pythonhosted.org" },
//!     { "type": "deny", "host": "*.internal" },
//!     { "type": "inject", "host": "api.github.com", "header": "authorization",
//!       "secret": "GITHUB_TOKEN", "value": "Bearer {secret}" },
//!     { "type": "allow", "host": "api.github.com", "methods": ["GET"], "path_prefix": "/repos/acme/" }
//!   ] }
//! ```
//!
//! Rule kinds: `allow` and `deny` decide whether a request may leave; `inject` (set a header
//! from a secret, replacing what the sandbox sent), `placeholder` (swap `cma-secret:NAME` in the
//! sandbox's headers for the secret), `route` (send the request to a private upstream instead)
//! and `custom` (hand it to a host-registered `tower::Service`) shape requests that are allowed.
//! Every rule takes a `host` (see [`crate::host`]) and optional `methods` and `path_prefix`
//! conditions. The exact semantics (precedence, defaults, path matching) are in [`decide`].
//!
//! Validation errors name the field (`rules[2].host[1]`); unknown fields are refused, so a typo
//! never silently widens a policy.

pub mod decide;
pub(crate) mod raw;
mod rule;

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{EgressError, EgressErrorKind, Result};
use crate::fingerprint::Fingerprint;
use crate::secrets::SecretName;
use crate::select::Matcher;

pub use decide::{ConnectDecision, Decision, PathView, RequestFacts, RuleKind, RuleRef, Verdict};
use raw::RawPolicy;
pub(crate) use rule::validate_service_name;
pub use rule::{
    AccessRule, Conditions, CustomRule, InjectRule, PlaceholderRule, RouteRule, RouteScheme, Rule,
    Scheme, Upstream, ValueTemplate,
};

/// Longest policy id accepted.
pub const MAX_POLICY_ID_LEN: usize = 128;
/// Most rules one policy may hold.
pub const MAX_RULES: usize = 1024;
/// Longest `path_prefix` accepted.
pub const MAX_PATH_PREFIX_LEN: usize = 2048;
/// Longest name accepted.
pub const MAX_POLICY_NAME_LEN: usize = 256;

/// What a policy does with a request no `allow` rule matches (and, for a policy set, what
/// applies when no policy is selected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// Refuse it (the default).
    #[default]
    Deny,
    /// Let it through (a deny-list policy). Forbidden addresses are still refused.
    Allow,
}

impl DefaultAction {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            other => Err(EgressError::new(
                EgressErrorKind::InvalidPolicy,
                format!("unknown default {other:?} (expected \"deny\" or \"allow\")"),
            )),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// A validated egress policy. Build with [`EgressPolicy::from_json`] (or through a
/// [`PolicySelector`](crate::PolicySelector)).
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    id: String,
    name: Option<String>,
    default: DefaultAction,
    apply_to: Vec<Matcher>,
    apply_to_all: bool,
    rules: Vec<Rule>,
    fingerprint: Fingerprint,
}

impl PartialEq for EgressPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl EgressPolicy {
    /// Parse and validate one policy from JSON.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let raw: RawPolicy = raw::from_json(json)?;
        Self::from_raw(&raw)
    }

    /// The built-in policy that refuses everything (what "no policy" means by default).
    pub fn deny_all() -> Self {
        Self::builtin("builtin-deny-all", DefaultAction::Deny)
    }

    /// The built-in policy that allows every public destination (forbidden addresses are still
    /// refused). Only for operators who opt in to open egress.
    pub fn allow_all() -> Self {
        Self::builtin("builtin-allow-all", DefaultAction::Allow)
    }

    fn builtin(id: &str, default: DefaultAction) -> Self {
        let raw = RawPolicy {
            id: id.to_owned(),
            name: None,
            default: Some(default.as_str().to_owned()),
            apply_to: Vec::new(),
            apply_to_all: false,
            rules: Vec::new(),
        };
        Self::from_raw(&raw).unwrap_or_else(|_| unreachable!("built-in policy is valid"))
    }

    pub(crate) fn from_raw(raw: &RawPolicy) -> Result<Self> {
        validate_id(&raw.id).map_err(|e| e.within("id"))?;
        if let Some(n) = &raw.name
            && (n.is_empty() || n.len() > MAX_POLICY_NAME_LEN)
        {
            return Err(EgressError::invalid(
                "name",
                format!("must be 1-{MAX_POLICY_NAME_LEN} bytes"),
            ));
        }
        let default = match &raw.default {
            None => DefaultAction::Deny,
            Some(d) => DefaultAction::parse(d).map_err(|e| e.within("default"))?,
        };
        if raw.apply_to_all && !raw.apply_to.is_empty() {
            return Err(EgressError::invalid(
                "apply_to_all",
                "a policy either applies to all sessions or has apply_to matchers, not both",
            ));
        }
        let apply_to = raw
            .apply_to
            .iter()
            .enumerate()
            .map(|(i, m)| Matcher::from_raw(m).map_err(|e| e.within(&format!("apply_to[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        if raw.rules.len() > MAX_RULES {
            return Err(EgressError::invalid(
                "rules",
                format!("more than {MAX_RULES} rules"),
            ));
        }
        let rules = raw
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(r).map_err(|e| e.within(&format!("rules[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let mut policy = EgressPolicy {
            id: raw.id.clone(),
            name: raw.name.clone(),
            default,
            apply_to,
            apply_to_all: raw.apply_to_all,
            rules,
            fingerprint: Fingerprint::placeholder(),
        };
        policy.fingerprint = Fingerprint::of(&policy.to_raw());
        Ok(policy)
    }

    pub(crate) fn to_raw(&self) -> RawPolicy {
        RawPolicy {
            id: self.id.clone(),
            name: self.name.clone(),
            default: match self.default {
                DefaultAction::Deny => None,
                DefaultAction::Allow => Some("allow".to_owned()),
            },
            apply_to: self.apply_to.iter().map(Matcher::to_raw).collect(),
            apply_to_all: self.apply_to_all,
            rules: self.rules.iter().map(Rule::to_raw).collect(),
        }
    }

    /// The canonical JSON form: normalised hosts, sorted methods, defaults omitted. Parsing it
    /// gives back an equal policy with the same fingerprint.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(&self.to_raw()).unwrap_or_default()
    }

    /// The policy's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The policy's display name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// What happens to requests no `allow` rule matches.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// The session matchers (all must hold for the policy to be selected).
    pub fn apply_to(&self) -> &[Matcher] {
        &self.apply_to
    }

    /// Whether this is a fallback policy for every session.
    pub fn applies_to_all(&self) -> bool {
        self.apply_to_all
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The policy's fingerprint (see [`Fingerprint`]).
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Names of the secrets the policy uses (never their values).
    pub fn secret_names(&self) -> BTreeSet<&SecretName> {
        self.rules
            .iter()
            .filter_map(|r| match r {
                Rule::Inject(r) => Some(&r.secret),
                Rule::Placeholder(r) => Some(&r.secret),
                _ => None,
            })
            .collect()
    }

    /// Names of the custom services the policy uses.
    pub fn service_names(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter_map(|r| match r {
                Rule::Custom(r) => Some(r.service.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl serde::Serialize for EgressPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_raw().serialize(s)
    }
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_POLICY_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(EgressError::new(
            EgressErrorKind::InvalidPolicy,
            format!(
                "invalid policy id {:?}: use 1-{MAX_POLICY_ID_LEN} characters of A-Z a-z 0-9 _ . -, starting with a letter or digit",
                id.chars().take(40).collect::<String>()
            ),
        ))
    }
}

/// A shared, validated policy.
pub type SharedPolicy = Arc<EgressPolicy>;

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
