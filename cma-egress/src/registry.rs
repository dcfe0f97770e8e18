//! Which sandbox a connection comes from.
//!
//! The proxy never trusts anything a sandbox *says* about itself (headers, credentials, SNI): it
//! identifies the sandbox by the connection's peer address, which the backend registers when it
//! creates the sandbox on a network only the proxy shares with it. The registry is consulted per
//! request, so unregistering a sandbox (or updating its session metadata) takes effect on its
//! kept-alive connections too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::ca::SandboxCa;
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::canonical_ip;
use crate::select::SessionContext;

/// Who a sandbox is, for policy selection and audit.
#[derive(Debug, Clone)]
pub struct SandboxIdentity {
    /// The sandbox id.
    pub sandbox_id: String,
    /// The session it serves (policy selection reads it).
    pub session: SessionContext,
    /// Its interception CA; without one, tunnels that need interception are refused.
    pub ca: Option<Arc<SandboxCa>>,
}

impl SandboxIdentity {
    /// An identity without a CA.
    pub fn new(sandbox_id: impl Into<String>, session: SessionContext) -> Self {
        Self {
            sandbox_id: sandbox_id.into(),
            session,
            ca: None,
        }
    }

    /// Attach the sandbox's CA.
    #[must_use]
    pub fn with_ca(mut self, ca: Arc<SandboxCa>) -> Self {
        self.ca = Some(ca);
        self
    }
}

/// Peer address → sandbox, filled by the backend.
#[derive(Debug)]
pub struct SandboxRegistry {
    by_addr: RwLock<HashMap<IpAddr, Arc<SandboxIdentity>>>,
    version: watch::Sender<u64>,
}

impl Default for SandboxRegistry {
    fn default() -> Self {
        Self {
            by_addr: RwLock::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl SandboxRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A channel that changes whenever a sandbox is registered, updated or removed (spliced
    /// tunnels re-check their sandbox then).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Register `identity` at `addr`. Re-registering the same sandbox replaces its identity
    /// (new session metadata); an address held by another sandbox is refused (unregister it
    /// first), so one sandbox can never take over another's identity.
    pub fn register(&self, addr: IpAddr, identity: SandboxIdentity) -> Result<()> {
        let addr = canonical_ip(addr);
        let mut map = self.by_addr.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&addr)
            && existing.sandbox_id != identity.sandbox_id
        {
            return Err(EgressError::new(
                EgressErrorKind::Config,
                format!(
                    "{addr} is registered to sandbox {}; unregister it before reusing the address",
                    existing.sandbox_id
                ),
            ));
        }
        map.insert(addr, Arc::new(identity));
        drop(map);
        self.bump();
        Ok(())
    }

    /// Replace the session context of the sandbox at `addr`; `false` if none is registered.
    pub fn update_session(&self, addr: IpAddr, session: SessionContext) -> bool {
        let addr = canonical_ip(addr);
        let mut map = self.by_addr.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&addr) {
            Some(id) => {
                let mut next = (**id).clone();
                next.session = session;
                *id = Arc::new(next);
                drop(map);
                self.bump();
                true
            }
            None => false,
        }
    }

    /// Forget the sandbox at `addr`; `true` if one was registered. Its open connections are
    /// refused from their next request.
    pub fn unregister(&self, addr: IpAddr) -> bool {
        let removed = self
            .by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&canonical_ip(addr))
            .is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// Forget every address of `sandbox_id`; returns how many were removed.
    pub fn unregister_sandbox(&self, sandbox_id: &str) -> usize {
        let mut map = self.by_addr.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, id| id.sandbox_id != sandbox_id);
        let removed = before - map.len();
        drop(map);
        if removed > 0 {
            self.bump();
        }
        removed
    }

    /// The sandbox at `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<Arc<SandboxIdentity>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&canonical_ip(addr))
            .cloned()
    }

    /// How many addresses are registered.
    pub fn len(&self) -> usize {
        self.by_addr.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no address is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_belong_to_one_sandbox_at_a_time() {
        let reg = SandboxRegistry::new();
        let a: IpAddr = "172.30.0.2".parse().unwrap();
        reg.register(a, SandboxIdentity::new("sbx_a", SessionContext::new("s1")))
            .unwrap();
        let e = reg
            .register(a, SandboxIdentity::new("sbx_b", SessionContext::new("s2")))
            .unwrap_err();
        assert_eq!(e.kind(), EgressErrorKind::Config);
        let mapped: IpAddr = "::ffff:172.30.0.2".parse().unwrap();
        assert_eq!(reg.lookup(mapped).unwrap().sandbox_id, "sbx_a");
        assert!(reg.update_session(a, SessionContext::new("s1-new")));
        assert_eq!(reg.lookup(a).unwrap().session.session_id, "s1-new");
        assert_eq!(reg.unregister_sandbox("sbx_a"), 1);
        assert!(reg.lookup(a).is_none());
        reg.register(a, SandboxIdentity::new("sbx_b", SessionContext::new("s2")))
            .unwrap();
        assert!(reg.unregister(a));
        assert!(reg.is_empty());
    }
}
