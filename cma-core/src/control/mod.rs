//! The control plane: claims work, places each session in a sandbox, runs it, and keeps sandboxes
//! warm between a session's work items.
//!
//! [`plane`] claims work and runs the duties (maintenance, coalesced drains); [`host`] places
//! sessions in sandboxes; [`select`] and [`rules`] choose a backend and sandbox profile per
//! session; [`warm`] keeps a session's sandbox for reuse; [`snapshots`] saves and restores
//! workspaces and applies retention; [`identity`] is the worker id polls carry; [`record`]
//! writes what happens to a state store (feature `store`); `egress` wires sandboxes to the
//! egress proxy and `call_service` is the tool for named private services (feature `egress`).

#[cfg(feature = "egress")]
pub mod call_service;
mod drain;
#[cfg(feature = "egress")]
pub mod egress;
#[cfg(all(feature = "egress", feature = "isolate"))]
mod egress_fetch;
#[cfg(all(feature = "egress", feature = "store"))]
pub mod egress_record;
pub mod host;
pub mod host_builder;
pub mod identity;
pub mod plane;
pub mod record;
pub mod rules;
pub mod select;
pub mod snapshots;
pub mod tools;
pub mod warm;
