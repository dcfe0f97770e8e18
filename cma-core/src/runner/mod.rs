//! The session runner: keeps a work item's lease alive while it executes the session's tool calls
//! (docs/protocol.md §3, §5).
//!
//! [`state`] holds the pure bookkeeping (which calls to run, hold, drop; the idle rule).

mod dispatch;
pub mod lease;
pub mod memory;
pub mod panics;
pub mod session;
pub mod skill_archive;
pub mod skills;
pub mod state;
