//! The control plane: claims work, places each session in a sandbox, runs it, and keeps sandboxes
//! warm between a session's work items.
//!
//! [`select`] chooses a backend per session; [`warm`] keeps a session's sandbox for reuse;
//! [`record`] writes what happens to a state store (feature `store`).

mod drain;
pub mod host;
pub mod identity;
pub mod plane;
pub mod record;
pub mod select;
pub mod snapshots;
pub mod tools;
pub mod warm;
