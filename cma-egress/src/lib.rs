//! Egress control for `cma` sandboxes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
mod error;
mod fingerprint;
pub mod host;
pub mod policy;
pub mod secrets;
pub mod select;

pub use error::{EgressError, EgressErrorKind, Result};
pub use fingerprint::Fingerprint;
pub use policy::{DefaultAction, EgressPolicy, Rule};
pub use select::{PolicySelector, PolicySource, PolicyStore, SessionContext};
