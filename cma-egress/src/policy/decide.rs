//! What a policy decides for one request (and for one `CONNECT` tunnel before the proxy can see
//! inside it).
//!
//! For a request (`host`, `port`, `method`, `path`):
//!
//! 1. **Deny beats allow.** If any `deny` rule matches, the request is refused by the first one.
//!    `deny` matches broadly: a port-less host pattern covers every port, methods compare
//!    case-insensitively, and `path_prefix` is a plain, case-insensitive string prefix of the
//!    normalised path.
//! 2. **Allow.** Otherwise the first `allow` rule that matches lets it through. `allow` matches
//!    narrowly: a port-less host pattern covers ports 80 and 443 only, and `path_prefix` must
//!    match whole segments (`/repos/acme` covers `/repos/acme` and `/repos/acme/x`, not
//!    `/repos/acme-evil`; a prefix ending in `/` covers everything under it), case-sensitively.
//! 3. **Otherwise** the policy's `default` applies: `deny` (the default — any `allow` rule makes
//!    the policy an allow list, and even a policy without one refuses everything) or `allow`
//!    (a deny list).
//! 4. **Actions** on an allowed request, each matched like `allow`: every matching `inject` rule
//!    sets its header (the first rule per header name wins); every matching `placeholder` rule
//!    permits its secret; the first matching `custom` rule hands the request to its service
//!    (which may answer it or rewrite it); the first matching `route` rule decides where the
//!    request goes instead of the destination itself. Actions never allow a request by
//!    themselves.
//!
//! Paths are normalised before matching (unreserved percent-escapes decoded). A path the proxy
//! cannot read unambiguously — dot segments, `//`, backslashes, encoded `/` or `\` — matches every
//! `deny` rule with a path condition and no other rule with one, so it can neither dodge a deny
//! nor satisfy an allow.
//!
//! For a `CONNECT` tunnel only host and port are known. The tunnel is refused when an
//! unconditional `deny` matches or when no `allow` could ever match; it is spliced (bytes copied,
//! TLS untouched) when the outcome cannot depend on what is inside — to the target, or to the
//! address of an unconditional `tcp://` route when that is the first route; otherwise
//! (conditional rules, injections, placeholders, custom services, `http(s)://` routes) it is
//! intercepted and each request inside is decided as above.

use std::fmt;

use super::{
    Conditions, CustomRule, DefaultAction, EgressPolicy, InjectRule, PlaceholderRule, RouteRule,
    RouteScheme, Rule, Upstream,
};
use crate::host::{DefaultPorts, Host};

/// The kind of a rule, for audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
    /// `inject`.
    Inject,
    /// `placeholder`.
    Placeholder,
    /// `route`.
    Route,
    /// `custom`.
    Custom,
}

impl RuleKind {
    /// The rule's `type` in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Inject => "inject",
            Self::Placeholder => "placeholder",
            Self::Route => "route",
            Self::Custom => "custom",
        }
    }
}

/// Which rule of the policy decided: its index in `rules` and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RuleRef {
    /// Index in the policy's `rules`.
    pub index: usize,
    /// The rule's kind.
    pub kind: RuleKind,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rules[{}] ({})", self.index, self.kind.as_str())
    }
}

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The request may leave.
    Allow,
    /// The request is refused.
    Deny,
}

/// A request path as rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathView {
    /// The normalised path (unreserved percent-escapes decoded, other escapes upper-cased).
    Clean(String),
    /// A path that servers may read differently (dot segments, `//`, backslashes, encoded
    /// slashes, malformed escapes).
    Ambiguous,
}

impl PathView {
    /// Normalise a request path (without the query).
    pub fn new(raw: &str) -> PathView {
        match normalize_path(raw) {
            Some(p) => PathView::Clean(p),
            None => PathView::Ambiguous,
        }
    }
}

/// What a rule sees of a request.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// Destination host.
    pub host: &'a Host,
    /// Destination port.
    pub port: u16,
    /// Method (compared upper-cased).
    pub method: &'a str,
    /// Path.
    pub path: &'a PathView,
}

/// The outcome for one request.
#[derive(Debug, Clone)]
pub struct Decision<'p> {
    /// Allowed or refused.
    pub verdict: Verdict,
    /// The `allow` or `deny` rule that decided (`None` when the policy default decided).
    pub rule: Option<RuleRef>,
    /// A short explanation (names rules, never secret values).
    pub reason: String,
    /// Headers to inject, first rule per header name.
    pub injections: Vec<(RuleRef, &'p InjectRule)>,
    /// Secrets whose placeholders may be swapped in.
    pub placeholders: Vec<(RuleRef, &'p PlaceholderRule)>,
    /// The first matching `custom` rule: its service sees the request first.
    pub custom: Option<(RuleRef, &'p CustomRule)>,
    /// The first matching `route` rule: where the request (or the custom service's rewrite of
    /// it) goes instead of the destination itself.
    pub route: Option<(RuleRef, &'p RouteRule)>,
}

impl Decision<'_> {
    fn deny(rule: Option<RuleRef>, reason: String) -> Self {
        Decision {
            verdict: Verdict::Deny,
            rule,
            reason,
            injections: Vec::new(),
            placeholders: Vec::new(),
            custom: None,
            route: None,
        }
    }

    /// Whether the request may leave.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// The outcome for a `CONNECT` tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Refuse the tunnel.
    Refuse {
        /// The deciding rule, if any.
        rule: Option<RuleRef>,
        /// Why.
        reason: String,
    },
    /// Copy bytes both ways without looking inside.
    Splice {
        /// The unconditional `allow` rule (`None` when the policy default allows).
        rule: Option<RuleRef>,
        /// A `tcp://` route to splice to instead of the target itself.
        route: Option<Upstream>,
    },
    /// Terminate TLS with the sandbox's CA and decide every request inside.
    Intercept,
}

/// How a rule's path condition is compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Breadth {
    /// `deny`: plain case-insensitive prefix; ambiguous paths match.
    Broad,
    /// Everything else: whole segments, case-sensitive; ambiguous paths never match.
    Narrow,
}

fn conditions_hold(when: &Conditions, req: &RequestFacts<'_>, breadth: Breadth) -> bool {
    if let Some(methods) = &when.methods {
        let m = req.method.to_ascii_uppercase();
        if !methods.contains(&m) {
            return false;
        }
    }
    let Some(prefix) = &when.path_prefix else {
        return true;
    };
    match (req.path, breadth) {
        (PathView::Ambiguous, Breadth::Broad) => true,
        (PathView::Ambiguous, Breadth::Narrow) => false,
        (PathView::Clean(path), Breadth::Broad) => path
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        (PathView::Clean(path), Breadth::Narrow) => segment_prefix(prefix, path),
    }
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    if prefix.ends_with('/') {
        return true;
    }
    match path.as_bytes().get(prefix.len()) {
        None => true,
        Some(b) => matches!(b, b'/' | b';'),
    }
}

impl EgressPolicy {
    /// Decide one request; see the module docs for the exact rules.
    pub fn decide(&self, req: &RequestFacts<'_>) -> Decision<'_> {
        let (host, port) = (req.host, req.port);
        for (index, rule) in self.rules.iter().enumerate() {
            if let Rule::Deny(d) = rule
                && d.host.matches(host, port, DefaultPorts::All)
                && conditions_hold(&d.when, req, Breadth::Broad)
            {
                let r = RuleRef {
                    index,
                    kind: super::RuleKind::Deny,
                };
                return Decision::deny(Some(r), format!("denied by {r}"));
            }
        }
        let allow = self
            .rules
            .iter()
            .enumerate()
            .find_map(|(index, rule)| match rule {
                Rule::Allow(a)
                    if a.host.matches(host, port, DefaultPorts::Web)
                        && conditions_hold(&a.when, req, Breadth::Narrow) =>
                {
                    Some(RuleRef {
                        index,
                        kind: super::RuleKind::Allow,
                    })
                }
                _ => None,
            });
        let reason = match (allow, self.default) {
            (Some(r), _) => format!("allowed by {r}"),
            (None, DefaultAction::Allow) => "allowed by the policy default".to_owned(),
            (None, DefaultAction::Deny) => {
                return Decision::deny(
                    None,
                    format!(
                        "no rule allows {} {}",
                        req.method.to_ascii_uppercase(),
                        host.authority(port)
                    ),
                );
            }
        };
        let mut decision = Decision {
            verdict: Verdict::Allow,
            rule: allow,
            reason,
            injections: Vec::new(),
            placeholders: Vec::new(),
            custom: None,
            route: None,
        };
        for (index, rule) in self.rules.iter().enumerate() {
            let applies = |h: &crate::host::HostPatterns, w: &Conditions| {
                h.matches(host, port, DefaultPorts::Web) && conditions_hold(w, req, Breadth::Narrow)
            };
            let r = RuleRef {
                index,
                kind: rule.kind(),
            };
            match rule {
                Rule::Inject(i)
                    if applies(&i.host, &i.when)
                        && !decision
                            .injections
                            .iter()
                            .any(|(_, x)| x.header == i.header) =>
                {
                    decision.injections.push((r, i));
                }
                Rule::Placeholder(p) if applies(&p.host, &p.when) => {
                    decision.placeholders.push((r, p));
                }
                Rule::Route(route) if applies(&route.host, &route.when) => {
                    decision.route.get_or_insert((r, route));
                }
                Rule::Custom(custom) if applies(&custom.host, &custom.when) => {
                    decision.custom.get_or_insert((r, custom));
                }
                _ => {}
            }
        }
        decision
    }

    /// Decide a `CONNECT` tunnel to `host:port`; see the module docs.
    pub fn decide_connect(&self, host: &Host, port: u16) -> ConnectDecision {
        let mut conditional_deny = false;
        for (index, rule) in self.rules.iter().enumerate() {
            if let Rule::Deny(d) = rule
                && d.host.matches(host, port, DefaultPorts::All)
            {
                if d.when.is_empty() {
                    let r = RuleRef {
                        index,
                        kind: super::RuleKind::Deny,
                    };
                    return ConnectDecision::Refuse {
                        rule: Some(r),
                        reason: format!("denied by {r}"),
                    };
                }
                conditional_deny = true;
            }
        }
        let mut unconditional_allow = None;
        let mut conditional_allow = false;
        let mut actions = false;
        // The first route decides where requests go; only an unconditional tcp route can be
        // honoured without looking inside.
        let mut route_seen = false;
        let mut splice_route = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.host().matches(host, port, DefaultPorts::Web) {
                continue;
            }
            match rule {
                Rule::Allow(a) if a.when.is_empty() => {
                    unconditional_allow.get_or_insert(RuleRef {
                        index,
                        kind: super::RuleKind::Allow,
                    });
                }
                Rule::Allow(_) => conditional_allow = true,
                Rule::Deny(_) => {}
                Rule::Route(r)
                    if !route_seen
                        && r.upstream.scheme == RouteScheme::Tcp
                        && r.when.is_empty() =>
                {
                    route_seen = true;
                    splice_route = Some(r.upstream.clone());
                }
                Rule::Route(_) => {
                    route_seen = true;
                    actions = true;
                }
                _ => actions = true,
            }
        }
        let default_allows = self.default == DefaultAction::Allow;
        if unconditional_allow.is_none() && !conditional_allow && !default_allows {
            return ConnectDecision::Refuse {
                rule: None,
                reason: format!("no rule allows CONNECT {}", host.authority(port)),
            };
        }
        let depends_on_request = conditional_deny
            || (unconditional_allow.is_none() && conditional_allow && !default_allows);
        if actions || depends_on_request {
            ConnectDecision::Intercept
        } else {
            ConnectDecision::Splice {
                rule: unconditional_allow,
                route: splice_route,
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalise a path: decode escapes of unreserved characters, upper-case the rest; `None` for
/// anything ambiguous (see the module docs).
pub(crate) fn normalize_path(raw: &str) -> Option<String> {
    let raw = if raw.is_empty() { "/" } else { raw };
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = (
                bytes.get(i + 1).copied().and_then(hex)?,
                bytes.get(i + 2).copied().and_then(hex)?,
            );
            let decoded = h * 16 + l;
            if is_unreserved(decoded) {
                out.push(decoded as char);
            } else if matches!(decoded, b'/' | b'\\') {
                return None;
            } else {
                out.push('%');
                out.push(char::from_digit(h.into(), 16)?.to_ascii_uppercase());
                out.push(char::from_digit(l.into(), 16)?.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if b == b'\\' || !(0x21..0x7f).contains(&b) {
            return None;
        }
        out.push(b as char);
        i += 1;
    }
    if out.contains("//") {
        return None;
    }
    for segment in out.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        if name == "." || name == ".." {
            return None;
        }
    }
    Some(out)
}

/// Normalise a rule's `path_prefix` the same way; refuse ambiguous prefixes.
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err("must start with /".to_owned());
    }
    if prefix.len() > super::MAX_PATH_PREFIX_LEN {
        return Err(format!("longer than {} bytes", super::MAX_PATH_PREFIX_LEN));
    }
    normalize_path(prefix).ok_or_else(|| {
        "must be a plain path (no dot segments, //, backslashes, encoded slashes or malformed escapes)"
            .to_owned()
    })
}
