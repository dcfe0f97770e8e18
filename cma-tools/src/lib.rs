//! The agent toolset for `cma`: the built-in tools (`bash`, `read`, `write`, `edit`, `glob`,
//! `grep`) with the official semantics (docs/protocol.md §6), an `execute` tool for sandboxes that
//! run JavaScript, and typed custom tools — all written once against `&dyn Sandbox`, so they
//! work on every backend.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use cma_tools::{ToolContext, custom_tool, toolset, ToolError};
//! use cma_tools::testing::MemorySandbox;
//! use serde_json::json;
//!
//! // A session's context: its sandbox plus the path policy (memory stores as extra roots).
//! let sandbox = Arc::new(MemorySandbox::new("/workspace"));
//! let ctx = ToolContext::new(sandbox.clone()).with_ids("sesn_1", "work_1");
//!
//! // The official tools, then a custom one (a later registration shadows an earlier name).
//! let mut registry = toolset::registry_for(&sandbox_caps(&ctx));
//! registry.register(Arc::new(custom_tool(
//!     "greet", "Say hello.",
//!     json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
//!     |_ctx, input: serde_json::Map<String, serde_json::Value>| async move {
//!         Ok::<_, ToolError>(format!("hello {}", input["name"].as_str().unwrap_or("?")))
//!     },
//! ).unwrap()));
//!
//! let r = registry.dispatch(&ctx, "write", json!({"file_path": "a.txt", "content": "hi"})).await.unwrap();
//! assert_eq!(r.text(), Some("wrote 2 bytes to a.txt"));
//! let r = registry.dispatch(&ctx, "greet", json!({"name": "cma"})).await.unwrap();
//! assert_eq!(r.text(), Some("hello cma"));
//! // Names not registered here are left for another client.
//! assert!(registry.dispatch(&ctx, "web_fetch", json!({})).await.is_err());
//! ctx.close().await; // session end: kills the bash shell, if one was started
//! # fn sandbox_caps(ctx: &ToolContext) -> cma_sandbox::Capabilities { ctx.sandbox.capabilities() }
//! # });
//! ```
//!
//! # In the control plane
//! `cma_core`'s `ToolsetFactory` builds a [`ToolRegistry`] per session over the session's
//! sandbox (the official toolset plus the host's custom tools, `ToolsetFactory::with_tool`), and
//! the session runner dispatches each `agent.tool_use` / `agent.custom_tool_use` through it and
//! posts the result. `cma-core` re-exports this crate as `cma_core::tools`.
//!
//! # Features
//! `testing` (off by default; for tests only): the `testing` module (an in-memory sandbox and a
//! `call_tool` helper) and `LocalShellLauncher`, which runs the `bash` tool's shell unconfined
//! on this host. A build that serves agents never needs it.
//!
//! # Fidelity
//! Every tool case of the SDK test vectors (`vectors/sdk-test-vectors.json`: the toolset's
//! definitions, groups A–C, the shell cases and the result conversion) is reproduced exactly, on
//! a real directory, in `testing::MemorySandbox` and (file rows) on the isolate backend. Known
//! differences from the Python reference (`agent_toolset.py`):
//! - `grep` always uses the built-in walker with the Rust `regex` crate (never `rg`): Python
//!   spellings it reads differently are rewritten, look-around/backreferences are refused, and
//!   the message after `grep: invalid regex: ` is the crate's. Its 30 s budget is wall-clock
//!   (CPU time in Python). `glob` and `grep` visit directory entries in the file system's order
//!   as Python does; only a sandbox without one (`testing::MemorySandbox`) lists by name, which
//!   shows when two `glob` matches have the same mtime or in `grep` output order.
//! - `bash` without a [`ShellLauncher`] on a sandbox with `shell_exec` runs each command in a
//!   fresh shell (no persistent cwd/env; stdout then stderr instead of interleaved). Without any
//!   shell it answers an error naming `execute`. When the shell died, a call always reads
//!   `bash: bash session terminated; restart required` (never Python's timing-dependent
//!   `BrokenResourceError()`).
//! - Integers beyond `i64` in inputs are refused (Python accepts any size); text is Rust `String`,
//!   so lone surrogates cannot occur ([`output::well_formed_utf16`] repairs UTF-16 input).
//! - `repr()` of unusual Unicode (unassigned code points) is not escaped as Python would.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod context;
pub mod custom;
pub mod output;
pub mod pyfmt;
pub mod registry;
pub mod shell;
#[cfg(feature = "testing")]
pub mod testing;
pub mod toolset;

pub use context::{ByteLimit, DEFAULT_MAX_FILE_BYTES, ShellEnv, ToolContext};
pub use custom::{CustomTool, CustomToolError, custom_tool};
pub use output::{NO_OUTPUT, PostedResult, ToolError, ToolOutput};
pub use registry::{
    DispatchError, SessionTools, TOOL_TIMEOUT, Tool, ToolDefinition, ToolRegistry, run_bounded,
};
#[cfg(feature = "testing")]
pub use shell::LocalShellLauncher;
pub use shell::{
    SandboxShellLauncher, ShellError, ShellLauncher, ShellOutput, ShellProcess, ShellSession,
    ShellSpec,
};
pub use toolset::agent_toolset;
