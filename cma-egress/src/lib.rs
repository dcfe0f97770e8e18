//! Egress control for `cma` sandboxes.
//!
//! A sandbox reaches the network only through an egress proxy that applies the session's
//! [`EgressPolicy`]: allow, deny, inject a credential the sandbox never sees, or route to a private
//! upstream. This crate currently defines the decision vocabulary; the proxy itself lands with the
//! egress issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// A request leaving a sandbox, as seen by an egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRequest {
    /// Session the sandbox belongs to.
    pub session_id: String,
    /// HTTP method (`GET`, `CONNECT`, ...).
    pub method: String,
    /// Destination host name or IP literal.
    pub host: String,
    /// Destination port.
    pub port: u16,
}

/// What a policy decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EgressDecision {
    /// Let the request through unchanged.
    Allow,
    /// Refuse the request; the reason is recorded in the audit log.
    Deny {
        /// Why the request was refused.
        reason: String,
    },
}

/// Decides, per request, what a sandbox may reach.
pub trait EgressPolicy: Send + Sync + 'static {
    /// Decide for one request.
    fn decide(&self, request: &EgressRequest) -> EgressDecision;
}

/// The secure default: every request is denied.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl EgressPolicy for DenyAll {
    fn decide(&self, request: &EgressRequest) -> EgressDecision {
        EgressDecision::Deny {
            reason: format!(
                "egress to {}:{} denied by default policy",
                request.host, request.port
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_denies_and_names_the_destination() {
        let req = EgressRequest {
            session_id: "sesn_1".into(),
            method: "GET".into(),
            host: "example.com".into(),
            port: 443,
        };
        match DenyAll.decide(&req) {
            EgressDecision::Deny { reason } => assert!(reason.contains("example.com:443")),
            other => panic!("expected deny, got {other:?}"),
        }
    }
}
