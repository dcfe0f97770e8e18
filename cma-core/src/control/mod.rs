//! The control plane: claims work, places each session in a sandbox, runs it, and keeps sandboxes
//! warm between a session's work items.
//!
//! [`plane`] claims work and runs the duties (maintenance, coalesced drains); [`host`] places
//! sessions in sandboxes; [`select`] and [`rules`] choose a backend and sandbox profile per
//! session; [`warm`] keeps a session's sandbox for reuse; [`snapshots`] saves and restores
//! workspaces and applies retention; [`identity`] is the worker id polls carry; [`record`]
//! writes what happens to a state store (feature `store`).

mod drain;
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
