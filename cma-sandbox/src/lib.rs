//! Sandbox backends for `cma`: where an agent's tools run.
//!
//! The `SandboxBackend` and `Sandbox` traits and the isolate backend land with the runner issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
