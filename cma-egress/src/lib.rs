//! Egress control for `cma` sandboxes: per-session policies and the proxy that applies them.
//!
//! A sandbox reaches the network only through an [`EgressProxy`]. For every request the proxy
//! identifies the sandbox (by the connection's peer address, never by anything the sandbox says),
//! looks up the policy that applies to its session *now* ([`PolicySource`]), and decides: refuse,
//! let through, inject a credential the sandbox never sees, swap a `cma-secret:NAME` placeholder
//! for the secret, hand the request to a custom service, or route it to a private upstream. It
//! resolves names itself and never connects to loopback, private, link-local (cloud metadata) or
//! its own addresses unless a `route` names them. Everything fails closed, and every request
//! leaves one [`AuditRecord`] without secret values.
//!
//! # Plugging it into the control plane
//!
//! ```
//! use std::sync::Arc;
//! use cma_egress::secrets::{EnvSecretStore, FileSecretStore, SecretStores};
//! use cma_egress::{
//!     EgressProxy, PolicySelector, PolicyStore, SandboxCa, SandboxIdentity, SessionContext,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cma_egress::Result<()> {
//! // Policies come from configuration (see examples/egress/package-registries.json); with no
//! // matching policy a session gets the default, deny.
//! let selector = PolicySelector::from_json(br#"{"default": "deny", "policies": [
//!     {"id": "pol_registries", "apply_to_all": true,
//!      "rules": [{"type": "allow", "host": "pypi.org,files.pythonhosted.org"}]}]}"#)?;
//! let policies = Arc::new(PolicyStore::new(selector));
//! // Secrets only from the environment or files; policies name them, never hold them.
//! let secrets = SecretStores::new()
//!     .with(EnvSecretStore::new("CMA_SECRET_"))
//!     .with(FileSecretStore::new("/run/secrets/cma"));
//! let proxy = EgressProxy::builder(policies.clone()).secrets(secrets).build()?;
//! // The Docker backend listens on the sandbox network's gateway address.
//! let listening = proxy.listen("127.0.0.1:0".parse().unwrap()).await?;
//!
//! // At placement: a CA per sandbox (its certificate goes into the sandbox, its key never
//! // does), and the sandbox's address in the registry.
//! let ca = Arc::new(SandboxCa::generate("sbx_1")?);
//! let mut session = SessionContext::new("sesn_1");
//! session.agent_id = Some("agent_build".into());
//! let identity = SandboxIdentity::new("sbx_1", session.clone()).with_ca(ca.clone());
//! proxy.registry().register("172.30.0.2".parse().unwrap(), identity)?;
//! let proxy_url = format!("http://{}", listening.local_addr());
//! let ca_pem = ca.cert_pem(); // with proxy_url: the sandbox's egress endpoint
//! # let _ = (proxy_url, ca_pem);
//!
//! // The isolate backend's `fetch` goes through the same policy code in process.
//! let fetch = proxy.in_process(SandboxIdentity::new("sbx_2", session));
//! # let _ = fetch;
//!
//! // An edited policy reaches running sessions from their next request (and closes spliced
//! // tunnels it no longer allows); no sandbox restarts.
//! policies.replace(PolicySelector::from_json(br#"{"policies": []}"#)?);
//!
//! // At teardown.
//! proxy.registry().unregister_sandbox("sbx_1");
//! proxy.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Where things are
//!
//! * [`policy`]: the policy document and rules; [`policy::decide`]: the exact decision
//!   semantics (deny beats allow, an allow list denies the rest, port and path matching).
//! * [`host`]: host normalisation and patterns (IDNA, ports, IP literals, ambiguous forms).
//! * [`select`]: session matchers, [`PolicySelector`], [`PolicyStore`].
//! * [`secrets`]: [`Secret`], [`SecretStore`] and the env/file/memory stores.
//! * [`proxy`]: [`EgressProxy`], [`InProcessClient`]; [`ca`]: the per-sandbox CA;
//!   [`registry`]: peer address → sandbox; [`resolve`]: name resolution; [`addr`]: the address
//!   guard; [`audit`]: records and sinks; [`custom`]: custom services.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod audit;
pub mod ca;
pub mod custom;
mod error;
mod fingerprint;
pub mod host;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod resolve;
pub mod secrets;
pub mod select;

pub use audit::{AuditRecord, AuditSink, AuditVia, MemoryAuditSink, TracingAuditSink};
pub use ca::SandboxCa;
pub use custom::{CustomOutcome, CustomServices};
pub use error::{EgressError, EgressErrorKind, Result};
pub use fingerprint::Fingerprint;
pub use policy::{DefaultAction, EgressPolicy, Rule};
pub use proxy::{
    EgressBody, EgressProxy, EgressProxyBuilder, InProcessClient, ListeningProxy, ProxyConfig,
};
pub use registry::{SandboxIdentity, SandboxRegistry};
pub use resolve::{Resolver, StaticResolver, SystemResolver};
pub use secrets::{Secret, SecretName, SecretStore};
pub use select::{PolicySelector, PolicySource, PolicyStore, SessionContext};
