//! Sandbox backends for `cma`: where an agent's tools run.
//!
//! Tools run in the control plane and reach a sandbox only through the [`Sandbox`] trait; a
//! [`SandboxBackend`] creates, resumes, lists and destroys sandboxes. Both are dyn-safe and held
//! as `Arc<dyn …>`. Paths are sandbox paths (`/workspace/src/main.rs`); the sandbox guarantees
//! that nothing reaches outside its workspace and mounts, and its errors never show host paths.
//!
//! Errors are one [`SandboxError`] with a [`SandboxErrorKind`], `kind()` and `is_retryable()`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod exec;
mod file;
#[cfg(feature = "isolate")]
pub mod isolate;
mod spec;

pub use backend::{Sandbox, SandboxBackend};
pub use error::{Result, SandboxError, SandboxErrorKind};
pub use exec::{
    DEFAULT_EXEC_TIMEOUT, DEFAULT_EXECUTE_MEMORY_LIMIT, DEFAULT_EXECUTE_TIMEOUT,
    DEFAULT_MAX_OUTPUT_BYTES, ExecCommand, ExecEvent, ExecExit, ExecOutput, ExecRequest,
    ExecStream, ExecuteRequest,
};
pub use file::{ByteStream, DirEntry, FileKind, FileReader, FileStat};
pub use spec::{
    Capabilities, EgressEndpoint, MAX_SANDBOX_ID_LEN, Mount, SandboxId, SandboxInfo, SandboxSpec,
    SandboxStatus,
};
