//! The crate's one error type: an [`EgressErrorKind`] plus a context message, the policy field
//! the error is about (for validation errors) and an optional boxed source.
//!
//! Messages never carry a secret value: they name secrets, hosts and fields only, so an error can
//! be shown to the sandbox (as the body of a refusal) and written to the audit log as is.

use std::error::Error as StdError;
use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = EgressError> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EgressErrorKind {
    /// A policy document is malformed or fails validation; [`EgressError::field`] names the field.
    InvalidPolicy,
    /// The session's policy refused the request.
    Denied,
    /// The destination is (or resolves to) an address the proxy never connects to on its own
    /// (loopback, private, link-local, the host's own addresses, ...).
    ForbiddenAddress,
    /// The destination name could not be resolved.
    Resolve,
    /// Finding the session's policy failed; the request is refused (fail closed).
    PolicyResolution,
    /// A secret named by the policy is missing or unusable; the request is refused (fail closed).
    SecretUnavailable,
    /// The upstream could not be reached.
    Connect,
    /// A TLS handshake failed (toward the sandbox or the upstream), or the sandbox's TLS
    /// `ServerName` does not match the destination it asked for.
    Tls,
    /// A time limit ran out (connect, handshake, header read, response, idle).
    Timeout,
    /// The request from the sandbox is malformed or uses a form the proxy refuses.
    Protocol,
    /// A size or count cap was reached (headers, connections).
    LimitExceeded,
    /// The upstream answered with a broken or aborted HTTP exchange.
    Upstream,
    /// A certificate could not be generated.
    Certificate,
    /// The connection's peer is not a registered sandbox.
    UnknownPeer,
    /// A proxy or store setting is invalid or cannot be honoured.
    Config,
    /// Any other I/O failure.
    Io,
}

impl EgressErrorKind {
    /// The short, lower-case phrase for this kind.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::InvalidPolicy => "invalid policy",
            Self::Denied => "egress denied",
            Self::ForbiddenAddress => "forbidden address",
            Self::Resolve => "name resolution failed",
            Self::PolicyResolution => "policy resolution failed",
            Self::SecretUnavailable => "secret unavailable",
            Self::Connect => "upstream unreachable",
            Self::Tls => "tls failure",
            Self::Timeout => "timed out",
            Self::Protocol => "bad request",
            Self::LimitExceeded => "limit exceeded",
            Self::Upstream => "upstream error",
            Self::Certificate => "certificate error",
            Self::UnknownPeer => "unknown peer",
            Self::Config => "invalid configuration",
            Self::Io => "input/output error",
        }
    }

    /// Whether this kind is a refusal by policy (as opposed to a failure on the way). Refusals
    /// are answered `403` and audited as denied.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::Denied
                | Self::ForbiddenAddress
                | Self::PolicyResolution
                | Self::SecretUnavailable
                | Self::UnknownPeer
        )
    }

    /// The HTTP status the proxy answers the sandbox with for this kind.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            k if k.is_refusal() => S::FORBIDDEN,
            Self::Timeout => S::GATEWAY_TIMEOUT,
            Self::Protocol => S::BAD_REQUEST,
            Self::LimitExceeded => S::SERVICE_UNAVAILABLE,
            _ => S::BAD_GATEWAY,
        }
    }
}

impl fmt::Display for EgressErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

/// An error from policy parsing, selection or the proxy.
///
/// Displays as `<field>: <context>` when a field is attached, else `<context>`.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct EgressError {
    kind: EgressErrorKind,
    field: Option<String>,
    context: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl EgressError {
    /// An error of `kind` with a context message (which must not contain a secret value).
    pub fn new(kind: EgressErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            field: None,
            context: context.into(),
            source: None,
        }
    }

    /// An [`EgressErrorKind::InvalidPolicy`] error about the field at `path`
    /// (`policies[0].rules[2].host`).
    pub fn invalid(path: impl Into<String>, context: impl Into<String>) -> Self {
        Self::new(EgressErrorKind::InvalidPolicy, context).with_field(path)
    }

    /// An [`EgressErrorKind::Denied`] error with the reason shown to the sandbox.
    pub fn denied(reason: impl Into<String>) -> Self {
        Self::new(EgressErrorKind::Denied, reason)
    }

    /// Attach the policy field the error is about.
    #[must_use]
    pub fn with_field(mut self, path: impl Into<String>) -> Self {
        self.field = Some(path.into());
        self
    }

    /// Prefix the field path with `parent` (`rules[2]` + `host` → `rules[2].host`).
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) if f.starts_with('[') => format!("{parent}{f}"),
            Some(f) => format!("{parent}.{f}"),
            None => parent.to_owned(),
        });
        self
    }

    /// Attach the underlying cause. It is reachable through [`std::error::Error::source`] and is
    /// not part of the display text.
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> EgressErrorKind {
        self.kind
    }

    /// The policy field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The context message (without the field prefix).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Whether retrying the same request later may succeed: name resolution, connection,
    /// timeouts, upstream failures and policy-store hiccups are transient; refusals are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            EgressErrorKind::Resolve
                | EgressErrorKind::Connect
                | EgressErrorKind::Timeout
                | EgressErrorKind::Upstream
                | EgressErrorKind::PolicyResolution
                | EgressErrorKind::LimitExceeded
        )
    }

    fn render(&self) -> String {
        match &self.field {
            Some(f) => format!("{f}: {}", self.context),
            None => self.context.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_nest_from_the_inside_out() {
        let e = EgressError::invalid("host", "empty pattern")
            .within("rules[2]")
            .within("policies[0]");
        assert_eq!(e.field(), Some("policies[0].rules[2].host"));
        assert_eq!(e.to_string(), "policies[0].rules[2].host: empty pattern");
        let e = EgressError::invalid("[1]", "bad").within("values");
        assert_eq!(e.field(), Some("values[1]"));
    }

    #[test]
    fn refusals_map_to_403_and_are_not_retryable() {
        for kind in [
            EgressErrorKind::Denied,
            EgressErrorKind::ForbiddenAddress,
            EgressErrorKind::SecretUnavailable,
            EgressErrorKind::PolicyResolution,
        ] {
            assert_eq!(kind.http_status(), http::StatusCode::FORBIDDEN, "{kind}");
        }
        assert!(!EgressError::denied("x").is_retryable());
        assert!(EgressError::new(EgressErrorKind::Connect, "x").is_retryable());
        assert_eq!(
            EgressErrorKind::Timeout.http_status(),
            http::StatusCode::GATEWAY_TIMEOUT
        );
    }
}
