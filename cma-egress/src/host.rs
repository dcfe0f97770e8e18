//! Destination hosts and the host patterns rules match them with.
//!
//! A [`Host`] is a normalised destination: a DNS name in lower-case ASCII (IDNA/punycode, no
//! trailing dot) or an IP address (IPv4-mapped IPv6 folded to IPv4). Anything ambiguous is
//! refused rather than guessed at: numeric forms other than a canonical dotted quad
//! (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) are what a resolver would turn into an
//! address, so treating them as names would let a sandbox dodge IP rules; IPv6 zone ids, percent
//! signs, slashes and other characters a name cannot hold are refused too.
//!
//! A [`HostPattern`] is one entry of a rule's `host` field:
//!
//! | pattern            | matches                                                          |
//! |--------------------|------------------------------------------------------------------|
//! | `example.com`      | exactly `example.com` (any case, trailing dot, IDN spellings)    |
//! | `*.example.com`    | every subdomain (`a.example.com`, `a.b.example.com`), **not** `example.com` itself and not `evil-example.com`; write `example.com,*.example.com` for both |
//! | `*`                | every host, names and IP literals                                |
//! | `10.0.0.5`, `[::1]`| that address (compared as addresses, never by string prefix)     |
//! | `…:8443`, `…:*`    | that port only, or every port                                    |
//!
//! Without a port, a pattern means the standard web ports (80 and 443) in rules that grant or
//! shape access, and *every* port in `deny` rules: both defaults fail safe. Several patterns may
//! be written in one string separated by commas.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{EgressError, EgressErrorKind, Result};

/// Longest DNS name accepted (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label accepted (RFC 1035).
const MAX_LABEL_LEN: usize = 63;
/// Most patterns one `host` field may hold.
pub const MAX_PATTERNS_PER_FIELD: usize = 256;

/// A normalised destination host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name: lower-case ASCII (punycode for IDNs), no trailing dot.
    Name(Box<str>),
    /// An IP address; IPv4-mapped IPv6 addresses are stored as IPv4.
    Ip(IpAddr),
}

impl Host {
    /// Parse and normalise a host as written in a URL, a `Host` header or a `CONNECT` target
    /// (without the port). IPv6 literals may be bracketed or bare.
    pub fn parse(input: &str) -> Result<Host> {
        if input.is_empty() {
            return Err(bad_host(input, "empty host"));
        }
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad_host(input, "unbalanced brackets"))?;
            return parse_ipv6(inner).map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))));
        }
        if input.contains(':') {
            return parse_ipv6(input).map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))));
        }
        normalize_name(input)
    }

    /// The name, if this host is one.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }

    /// The address, if this host is an IP literal.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// `host:port` as written in a URL authority (IPv6 bracketed).
    pub fn authority(&self, port: u16) -> String {
        format!("{}:{port}", self.url_form())
    }

    /// The host as written in a URL (IPv6 bracketed, no port).
    pub fn url_form(&self) -> String {
        match self {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parse `host[:port]` (a URL authority without user info, a `Host` header, a `CONNECT`
/// target). IPv6 literals must be bracketed here.
pub fn parse_authority(input: &str) -> Result<(Host, Option<u16>)> {
    let (host, port) = split_port(input)?;
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or_else(|| bad_host(input, "invalid port"))?),
    };
    Ok((Host::parse(host)?, port))
}

/// Split `host[:port]`, honouring brackets; a bare IPv6 literal is refused as ambiguous.
fn split_port(input: &str) -> Result<(&str, Option<&str>)> {
    if input.starts_with('[') {
        let close = input
            .find(']')
            .ok_or_else(|| bad_host(input, "unbalanced brackets"))?;
        let (host, rest) = input.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            r => match r.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(bad_host(input, "junk after the IPv6 literal")),
            },
        };
    }
    match input.rsplit_once(':') {
        None => Ok((input, None)),
        Some((h, _)) if h.contains(':') => Err(bad_host(
            input,
            "IPv6 literals must be bracketed when a port may follow",
        )),
        Some((h, p)) => Ok((h, Some(p))),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr> {
    if s.contains('%') {
        return Err(bad_host(s, "IPv6 zone identifiers are refused"));
    }
    s.parse::<Ipv6Addr>()
        .map_err(|_| bad_host(s, "invalid IPv6 literal"))
}

/// Fold IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4 so one address has one spelling.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Normalise a DNS name (or a canonical dotted quad) as described in the module docs.
fn normalize_name(input: &str) -> Result<Host> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() || trimmed.ends_with('.') || trimmed.starts_with('.') {
        return Err(bad_host(input, "empty label"));
    }
    if trimmed
        .bytes()
        .any(|b| b.is_ascii() && !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
    {
        return Err(bad_host(input, "character not allowed in a host name"));
    }
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| bad_host(input, "invalid internationalised name"))?;
    // IDNA maps some non-ASCII characters (full-width digits and dots) to ASCII: check again.
    let ascii = ascii.strip_suffix('.').map(str::to_owned).unwrap_or(ascii);
    if ascii.is_empty() || ascii.len() > MAX_NAME_LEN {
        return Err(bad_host(input, "name too long or empty"));
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(bad_host(input, "empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        {
            return Err(bad_host(input, "character not allowed in a host name"));
        }
    }
    let last = ascii.rsplit('.').next().unwrap_or_default();
    if ends_in_number(last) {
        return match ascii.parse::<Ipv4Addr>() {
            Ok(v4) if v4.to_string() == ascii => Ok(Host::Ip(IpAddr::V4(v4))),
            _ => Err(bad_host(
                input,
                "ambiguous numeric host (only canonical dotted-quad IPv4 is accepted)",
            )),
        };
    }
    Ok(Host::Name(ascii.into_boxed_str()))
}

/// The WHATWG URL rule: a host whose last label is a number is parsed as IPv4 by browsers and
/// resolvers, so it is never treated as a name.
fn ends_in_number(label: &str) -> bool {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

fn bad_host(input: &str, why: &str) -> EgressError {
    // Cap the echo: the input is hostile and may be huge.
    let shown: String = input.chars().take(80).collect();
    EgressError::new(
        EgressErrorKind::Protocol,
        format!("invalid host {shown:?}: {why}"),
    )
}

/// Which ports a pattern without an explicit port matches; chosen by the rule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPorts {
    /// Ports 80 and 443 (rules that grant or shape access).
    Web,
    /// Every port (`deny` rules).
    All,
}

/// The port part of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// No port written: the rule kind's [`DefaultPorts`].
    Default,
    /// `:*`: every port.
    Any,
    /// `:N`: exactly that port.
    Port(u16),
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    Any,
    Exact(Host),
    /// `*.suffix`, stored without the `*.`.
    Subdomains(Box<str>),
}

/// One host pattern; see the module docs for the syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    host: HostMatch,
    port: PortSpec,
}

impl HostPattern {
    /// Parse one pattern (no commas).
    pub fn parse(input: &str) -> Result<HostPattern> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EgressError::new(
                EgressErrorKind::InvalidPolicy,
                "empty host pattern",
            ));
        }
        let invalid = |e: EgressError| {
            EgressError::new(EgressErrorKind::InvalidPolicy, e.context().to_owned())
        };
        let (host, port) = split_port(s).map_err(invalid)?;
        let port = match port {
            None => PortSpec::Default,
            Some("*") => PortSpec::Any,
            Some(p) => PortSpec::Port(parse_port(p).ok_or_else(|| {
                EgressError::new(
                    EgressErrorKind::InvalidPolicy,
                    format!("invalid port in host pattern {s:?}"),
                )
            })?),
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(star_misuse(s));
            }
            match Host::parse(suffix).map_err(invalid)? {
                Host::Name(n) => HostMatch::Subdomains(n),
                Host::Ip(_) => {
                    return Err(EgressError::new(
                        EgressErrorKind::InvalidPolicy,
                        format!("{s:?}: a wildcard cannot precede an IP address"),
                    ));
                }
            }
        } else if host.contains('*') {
            return Err(star_misuse(s));
        } else {
            if !host.starts_with('[') && host.contains(':') {
                return Err(EgressError::new(
                    EgressErrorKind::InvalidPolicy,
                    format!("{s:?}: IPv6 literals in patterns must be bracketed"),
                ));
            }
            HostMatch::Exact(Host::parse(host).map_err(invalid)?)
        };
        Ok(HostPattern { host, port })
    }

    /// Whether `host:port` matches, with `default` deciding what a port-less pattern means.
    pub fn matches(&self, host: &Host, port: u16, default: DefaultPorts) -> bool {
        self.matches_host(host) && self.matches_port(port, default)
    }

    /// Whether the host part matches (ignoring the port).
    pub fn matches_host(&self, host: &Host) -> bool {
        match (&self.host, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), host) => h == host,
            (HostMatch::Subdomains(suffix), Host::Name(name)) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(&**suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            (HostMatch::Subdomains(_), Host::Ip(_)) => false,
        }
    }

    fn matches_port(&self, port: u16, default: DefaultPorts) -> bool {
        match self.port {
            PortSpec::Any => true,
            PortSpec::Port(p) => p == port,
            PortSpec::Default => match default {
                DefaultPorts::All => true,
                DefaultPorts::Web => port == 80 || port == 443,
            },
        }
    }

    /// The port part.
    pub fn port(&self) -> PortSpec {
        self.port
    }
}

fn star_misuse(s: &str) -> EgressError {
    EgressError::new(
        EgressErrorKind::InvalidPolicy,
        format!("{s:?}: `*` may only stand alone or as a leading `*.` label"),
    )
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostMatch::Any => f.write_str("*")?,
            HostMatch::Exact(h) => f.write_str(&h.url_form())?,
            HostMatch::Subdomains(s) => write!(f, "*.{s}")?,
        }
        match self.port {
            PortSpec::Default => Ok(()),
            PortSpec::Any => f.write_str(":*"),
            PortSpec::Port(p) => write!(f, ":{p}"),
        }
    }
}

/// A rule's `host` field: one or more [`HostPattern`]s (comma-separated in one string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPatterns(Vec<HostPattern>);

impl HostPatterns {
    /// Parse a comma-separated list; errors name the entry (`[2]`) that failed.
    pub fn parse(input: &str) -> Result<HostPatterns> {
        Self::parse_all(input.split(','))
    }

    /// Parse a list of entries, each of which may itself hold commas.
    pub fn parse_all<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<HostPatterns> {
        let mut out = Vec::new();
        for entry in entries {
            for part in entry.split(',') {
                if out.len() == MAX_PATTERNS_PER_FIELD {
                    return Err(EgressError::new(
                        EgressErrorKind::InvalidPolicy,
                        format!("more than {MAX_PATTERNS_PER_FIELD} host patterns"),
                    ));
                }
                let idx = out.len();
                out.push(HostPattern::parse(part).map_err(|e| e.within(&format!("[{idx}]")))?);
            }
        }
        if out.is_empty() {
            return Err(EgressError::new(
                EgressErrorKind::InvalidPolicy,
                "no host pattern",
            ));
        }
        Ok(HostPatterns(out))
    }

    /// Whether any pattern matches `host:port`.
    pub fn matches(&self, host: &Host, port: u16, default: DefaultPorts) -> bool {
        self.0.iter().any(|p| p.matches(host, port, default))
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[HostPattern] {
        &self.0
    }
}

impl fmt::Display for HostPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for HostPatterns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
