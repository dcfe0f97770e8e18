//! The rules of a policy, validated: their JSON parsing (raw → typed, with field paths in errors)
//! and their canonical serialisation (typed → raw).

use std::collections::BTreeSet;

use http::{HeaderName, Method};

use super::decide::{self, RuleKind};
use super::raw::{RawHosts, RawRule};
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::{Host, HostPatterns};
use crate::secrets::SecretName;

/// The optional `methods` and `path_prefix` conditions of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Upper-case method names; `None` = any method.
    pub methods: Option<BTreeSet<String>>,
    /// Normalised path prefix; `None` = any path.
    pub path_prefix: Option<String>,
}

impl Conditions {
    /// Whether the rule has no condition (it can be decided on host and port alone).
    pub fn is_empty(&self) -> bool {
        self.methods.is_none() && self.path_prefix.is_none()
    }

    fn parse(methods: Option<&[String]>, path_prefix: Option<&str>) -> Result<Self> {
        let methods = match methods {
            None => None,
            Some([]) => {
                return Err(EgressError::invalid(
                    "methods",
                    "empty list (omit the field for any method)",
                ));
            }
            Some(list) => {
                let mut set = BTreeSet::new();
                for (i, m) in list.iter().enumerate() {
                    let up = m.to_ascii_uppercase();
                    if Method::from_bytes(up.as_bytes()).is_err() || up.is_empty() || up.len() > 32
                    {
                        return Err(EgressError::invalid(
                            format!("methods[{i}]"),
                            format!("invalid method {m:?}"),
                        ));
                    }
                    set.insert(up);
                }
                Some(set)
            }
        };
        let path_prefix = match path_prefix {
            None => None,
            Some(p) => Some(
                decide::normalize_prefix(p)
                    .map_err(|why| EgressError::invalid("path_prefix", why))?,
            ),
        };
        Ok(Conditions {
            methods,
            path_prefix,
        })
    }

    fn to_raw(&self) -> (Option<Vec<String>>, Option<String>) {
        (
            self.methods.as_ref().map(|m| m.iter().cloned().collect()),
            self.path_prefix.clone(),
        )
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Which destinations.
    pub host: HostPatterns,
    /// Extra conditions.
    pub when: Conditions,
}

/// How an injected header's value is built from the secret: `prefix + secret + suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    prefix: String,
    suffix: String,
}

impl ValueTemplate {
    /// The placeholder a template must contain exactly once.
    pub const SLOT: &'static str = "{secret}";

    fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split(Self::SLOT);
        let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EgressError::invalid(
                "value",
                "must contain {secret} exactly once",
            ));
        };
        if !s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return Err(EgressError::invalid(
                "value",
                "only visible ASCII, space and tab are allowed around {secret}",
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The template's text before and after the secret.
    pub fn parts(&self) -> (&str, &str) {
        (&self.prefix, &self.suffix)
    }

    fn to_raw(&self) -> Option<String> {
        if self.prefix.is_empty() && self.suffix.is_empty() {
            None
        } else {
            Some(format!("{}{}{}", self.prefix, Self::SLOT, self.suffix))
        }
    }
}

/// `inject`: set `header` to a value built from `secret`, replacing whatever the sandbox sent.
///
/// Inject only toward hosts trusted not to reflect request headers back (an echo endpoint would
/// hand the secret to the sandbox); the proxy refuses `TRACE` for that reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectRule {
    /// Which destinations.
    pub host: HostPatterns,
    /// The header to set (lower-case).
    pub header: HeaderName,
    /// The secret's name.
    pub secret: SecretName,
    /// How the value is built (`Bearer {secret}`); default just the secret.
    pub value: ValueTemplate,
    /// Inject even when the request leaves in clear text (plain `http://`); off by default so a
    /// credential never crosses the network unencrypted by accident.
    pub allow_plain_http: bool,
    /// Extra conditions.
    pub when: Conditions,
}

/// `placeholder`: the sandbox may send `cma-secret:NAME` in a header to these hosts and the proxy
/// swaps in the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceholderRule {
    /// Which destinations.
    pub host: HostPatterns,
    /// The secret the placeholder may name.
    pub secret: SecretName,
    /// As for [`InjectRule::allow_plain_http`].
    pub allow_plain_http: bool,
    /// Extra conditions.
    pub when: Conditions,
}

/// Whether a connection is plain or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// How a `route` talks to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteScheme {
    /// `http://`: plain HTTP to the upstream whatever the sandbox used (TLS from the sandbox is
    /// terminated by the proxy).
    Http,
    /// `https://`: TLS to the upstream, verified against `server_name` (default the upstream's
    /// host).
    Https,
    /// `tcp://`: only the address changes; the sandbox's own protocol goes there. A `CONNECT`
    /// tunnel that nothing else needs to see inside is spliced straight to the upstream (TLS
    /// stays end to end, so the upstream must present a certificate for the name the sandbox
    /// asked for); requests the proxy does see go out in the scheme the sandbox used.
    Tcp,
}

impl RouteScheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Tcp => "tcp",
        }
    }
}

/// Where a `route` sends requests: `scheme://host:port` (see [`RouteScheme`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// How to talk to it.
    pub scheme: RouteScheme,
    /// Address or name (resolved by the proxy's resolver; exempt from the address check).
    pub host: Host,
    /// Port.
    pub port: u16,
}

impl Upstream {
    fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| EgressError::invalid("upstream", format!("{s:?}: {why}"));
        let uri: http::Uri = s.parse().map_err(|_| bad("not a URL"))?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some("http") => (RouteScheme::Http, Some(80)),
            Some("https") => (RouteScheme::Https, Some(443)),
            Some("tcp") => (RouteScheme::Tcp, None),
            _ => return Err(bad("scheme must be http, https or tcp")),
        };
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a path or query is not allowed"));
        }
        let (host, port) =
            crate::host::parse_authority(auth.as_str()).map_err(|e| bad(e.context()))?;
        let port = port
            .or(default_port)
            .ok_or_else(|| bad("a tcp:// upstream needs a port"))?;
        Ok(Self { scheme, port, host })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}",
            self.scheme.as_str(),
            self.host.authority(self.port)
        )
    }
}

/// `route`: send matching requests to a private upstream the sandbox cannot reach itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Which destinations (as the sandbox names them).
    pub host: HostPatterns,
    /// Where they go.
    pub upstream: Upstream,
    /// The TLS name to verify an `https` upstream against; default the upstream's host.
    pub server_name: Option<Host>,
    /// Extra conditions.
    pub when: Conditions,
}

/// `custom`: hand matching requests to the `tower::Service` registered under `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRule {
    /// Which destinations.
    pub host: HostPatterns,
    /// The registered service's name.
    pub service: String,
    /// Extra conditions.
    pub when: Conditions,
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// Let matching requests through.
    Allow(AccessRule),
    /// Refuse matching requests; beats every `allow`.
    Deny(AccessRule),
    /// Set a header from a secret.
    Inject(InjectRule),
    /// Permit `cma-secret:NAME` placeholders.
    Placeholder(PlaceholderRule),
    /// Send to a private upstream.
    Route(RouteRule),
    /// Hand to a registered service.
    Custom(CustomRule),
}

impl Rule {
    /// The rule's host patterns.
    pub fn host(&self) -> &HostPatterns {
        match self {
            Rule::Allow(r) | Rule::Deny(r) => &r.host,
            Rule::Inject(r) => &r.host,
            Rule::Placeholder(r) => &r.host,
            Rule::Route(r) => &r.host,
            Rule::Custom(r) => &r.host,
        }
    }

    /// The rule's conditions.
    pub fn when(&self) -> &Conditions {
        match self {
            Rule::Allow(r) | Rule::Deny(r) => &r.when,
            Rule::Inject(r) => &r.when,
            Rule::Placeholder(r) => &r.when,
            Rule::Route(r) => &r.when,
            Rule::Custom(r) => &r.when,
        }
    }

    /// The rule's kind.
    pub fn kind(&self) -> RuleKind {
        match self {
            Rule::Allow(_) => RuleKind::Allow,
            Rule::Deny(_) => RuleKind::Deny,
            Rule::Inject(_) => RuleKind::Inject,
            Rule::Placeholder(_) => RuleKind::Placeholder,
            Rule::Route(_) => RuleKind::Route,
            Rule::Custom(_) => RuleKind::Custom,
        }
    }

    pub(super) fn parse(raw: &RawRule) -> Result<Rule> {
        let hosts =
            |h: &RawHosts| HostPatterns::parse_all(h.entries()).map_err(|e| e.within("host"));
        Ok(match raw {
            RawRule::Allow {
                host,
                methods,
                path_prefix,
            } => Rule::Allow(AccessRule {
                host: hosts(host)?,
                when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
            }),
            RawRule::Deny {
                host,
                methods,
                path_prefix,
            } => Rule::Deny(AccessRule {
                host: hosts(host)?,
                when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
            }),
            RawRule::Inject {
                host,
                header,
                secret,
                value,
                allow_plain_http,
                methods,
                path_prefix,
            } => {
                let header_name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        EgressError::invalid("header", format!("invalid header name {header:?}"))
                    })?;
                if is_hop_by_hop_or_framing(&header_name) {
                    return Err(EgressError::invalid(
                        "header",
                        format!("{header_name} is managed by the proxy and cannot be injected"),
                    ));
                }
                Rule::Inject(InjectRule {
                    host: hosts(host)?,
                    header: header_name,
                    secret: SecretName::new(secret.as_str()).map_err(|e| e.within("secret"))?,
                    value: match value {
                        None => ValueTemplate {
                            prefix: String::new(),
                            suffix: String::new(),
                        },
                        Some(v) => ValueTemplate::parse(v)?,
                    },
                    allow_plain_http: *allow_plain_http,
                    when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
                })
            }
            RawRule::Placeholder {
                host,
                secret,
                allow_plain_http,
                methods,
                path_prefix,
            } => Rule::Placeholder(PlaceholderRule {
                host: hosts(host)?,
                secret: SecretName::new(secret.as_str()).map_err(|e| e.within("secret"))?,
                allow_plain_http: *allow_plain_http,
                when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
            }),
            RawRule::Route {
                host,
                upstream,
                server_name,
                methods,
                path_prefix,
            } => Rule::Route(RouteRule {
                host: hosts(host)?,
                upstream: Upstream::parse(upstream)?,
                server_name: match server_name {
                    None => None,
                    Some(s) => Some(Host::parse(s).map_err(|e| {
                        EgressError::invalid("server_name", e.context().to_owned())
                    })?),
                },
                when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
            }),
            RawRule::Custom {
                host,
                service,
                methods,
                path_prefix,
            } => {
                validate_service_name(service).map_err(|e| e.within("service"))?;
                Rule::Custom(CustomRule {
                    host: hosts(host)?,
                    service: service.clone(),
                    when: Conditions::parse(methods.as_deref(), path_prefix.as_deref())?,
                })
            }
        })
    }

    pub(super) fn to_raw(&self) -> RawRule {
        let host = RawHosts::One(self.host().to_string());
        let (methods, path_prefix) = self.when().to_raw();
        match self {
            Rule::Allow(_) => RawRule::Allow {
                host,
                methods,
                path_prefix,
            },
            Rule::Deny(_) => RawRule::Deny {
                host,
                methods,
                path_prefix,
            },
            Rule::Inject(r) => RawRule::Inject {
                host,
                header: r.header.as_str().to_owned(),
                secret: r.secret.as_str().to_owned(),
                value: r.value.to_raw(),
                allow_plain_http: r.allow_plain_http,
                methods,
                path_prefix,
            },
            Rule::Placeholder(r) => RawRule::Placeholder {
                host,
                secret: r.secret.as_str().to_owned(),
                allow_plain_http: r.allow_plain_http,
                methods,
                path_prefix,
            },
            Rule::Route(r) => RawRule::Route {
                host,
                upstream: r.upstream.to_string(),
                server_name: r.server_name.as_ref().map(Host::to_string),
                methods,
                path_prefix,
            },
            Rule::Custom(r) => RawRule::Custom {
                host,
                service: r.service.clone(),
                methods,
                path_prefix,
            },
        }
    }
}

/// Headers the proxy owns: injecting them would break framing or hop-by-hop handling.
pub(crate) fn is_hop_by_hop_or_framing(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        TRANSFER_ENCODING,
        CONTENT_LENGTH,
        HOST,
        TE,
        TRAILER,
        UPGRADE,
        PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// A custom service name: like a secret name.
pub(crate) fn validate_service_name(name: &str) -> Result<()> {
    SecretName::new(name).map(|_| ()).map_err(|_| {
        EgressError::new(
            EgressErrorKind::InvalidPolicy,
            format!("invalid service name {name:?}"),
        )
    })
}
