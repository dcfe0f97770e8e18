//! The agent toolset for `cma`: the built-in tools (`bash`, `read`, `write`, `edit`, `glob`, `grep`)
//! and typed custom tools, implemented once against the sandbox API.
//!
//! The registry and the toolset land with the runner issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
