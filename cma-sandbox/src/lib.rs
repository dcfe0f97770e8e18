//! Sandbox backends for `cma`: where an agent's tools run.
//!
//! Tools run in the control plane and reach a sandbox only through the [`Sandbox`] trait; a
//! [`SandboxBackend`] creates, resumes, lists and destroys sandboxes. Both are dyn-safe and held
//! as `Arc<dyn …>`. Paths are sandbox paths (`/workspace/src/main.rs`); the sandbox guarantees
//! that nothing reaches outside its workspace and mounts, and its errors never show host paths.
//!
//! # In the control plane
//! A host hands its backends to `cma_core`'s `SandboxHost` (`SandboxHost::builder().backend(…)`),
//! which creates a sandbox per session (with the spec its placement rules pick), keeps it warm
//! between the session's work items, restores the session's snapshot into a fresh one, and
//! destroys it when the keep-warm time is over; the tools of `cma-tools` then run against the
//! [`Sandbox`] trait. `cma-core` re-exports this crate as `cma_core::sandbox`.
//!
//! Errors are one [`SandboxError`] with a [`SandboxErrorKind`], `kind()` and `is_retryable()`.
//!
//! Backends: `isolate` (feature `isolate`, default): a confined directory per sandbox, native
//! file operations and JavaScript `execute`; no shell. `conformance` (feature `conformance`) is
//! the suite every backend passes. `docker` (feature `docker`): one container per sandbox on a
//! Docker Engine, with real processes, a persistent shell and network isolation.
//!
//! ```
//! # #[cfg(feature = "isolate")]
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use cma_sandbox::isolate::IsolateBackend;
//! use cma_sandbox::{ExecuteRequest, SandboxBackend, SandboxErrorKind, SandboxSpec};
//!
//! let root = tempfile::tempdir().unwrap();
//! let backend = IsolateBackend::new(root.path()).unwrap();
//! let sandbox = backend.create(&SandboxSpec::new()).await.unwrap();
//!
//! sandbox.write_file("notes/todo.txt", Bytes::from("ship it")).await.unwrap();
//! let text = sandbox.read_file("/workspace/notes/todo.txt", None).await.unwrap();
//! assert_eq!(&text[..], b"ship it");
//!
//! let out = sandbox
//!     .execute(ExecuteRequest::new("fs.readFile('notes/todo.txt').toUpperCase()"))
//!     .await
//!     .unwrap();
//! assert_eq!(&out.stdout[..], b"SHIP IT\n");
//!
//! let err = sandbox.read_file("/etc/passwd", None).await.unwrap_err();
//! assert_eq!(err.kind(), SandboxErrorKind::OutsideSandbox);
//! backend.destroy(sandbox.id()).await.unwrap();
//! # });
//! ```
// `unsafe` is denied everywhere but in the `execute` worker's pre-`main` entry point
// (`isolate::worker::entry`), which says why each use is sound.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "docker")]
pub mod docker;
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
    ExecStream, ExecuteRequest, InteractiveProcess, ProcessControl,
};
pub use file::{
    ByteStream, DirEntry, FileKind, FileReader, FileStat, FoundLines, LineMatch, TreeFound,
    TreeMatch, TreeSearch, WorkspaceEntry,
};
pub use spec::{
    Capabilities, EgressEndpoint, MAX_SANDBOX_ID_LEN, Mount, SandboxId, SandboxInfo, SandboxSpec,
    SandboxStatus,
};
