//! Egress control for `cma` sandboxes.
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
