//! Where `execute` scripts run: worker processes, one script at a time each, killed at the
//! deadline whatever the script does.
//!
//! # Why processes
//! QuickJS stops a script only when it polls its interrupt handler, and some built-ins loop
//! natively without polling (`Array.prototype.indexOf.call({length: 2**53 - 1})`, huge
//! `String.prototype.repeat`, regex backtracking, ...). A thread cannot be stopped from outside;
//! a process can. So each script runs in a worker process that the backend `SIGKILL`s at the
//! script's deadline (or when the `execute` future is dropped) and reaps; the kernel then frees
//! everything the script held. Killing needs nothing from the worker.
//!
//! # The worker
//! The same executable started again (`/proc/self/exe`, caught before `main` by a hook in this
//! crate: see [`entry`]), or [`WorkerConfig::program`]. It closes inherited descriptors, sets
//! limits and installs a system-call filter ([`limits`]), then runs scripts ([`child`]). It has
//! no file system or network of its own: `fs.*` and `fetch` are requests to the backend over a
//! socket pair ([`ipc`], length-prefixed frames with caps both ways), answered by the sandbox's
//! workspace and egress hook in the backend, so quotas, confinement and egress policy apply in
//! one place. Memory: QuickJS's heap limit, and `RLIMIT_AS` set by the backend as a backstop.
//! CPU: the wall-clock kill, and `RLIMIT_CPU` as a backstop.
//!
//! # The pool
//! Starting a process costs more than a small script, so the backend keeps a few started,
//! idle workers ([`WorkerConfig::idle_workers`]), each with a fresh runtime already built, and
//! refills them in the background. A worker whose script ended normally (a result, an uncaught
//! exception, or its own interrupt at the deadline) may run the next script *of the same
//! sandbox* in another fresh runtime: nothing a script makes survives its runtime, and even a
//! worker taken over through an engine bug would only see later scripts of the sandbox it
//! already had. Workers are never shared between sandboxes, are retired after
//! [`MAX_RUNS_PER_WORKER`] scripts, and at most [`WorkerConfig::max_warm`] of them wait for
//! their sandbox (least recently used go first). At most [`WorkerConfig::max_busy`] scripts run
//! at once per backend; more wait (within their own timeout) for a free slot.

pub(crate) mod ipc;

#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod entry;
#[cfg(target_os = "linux")]
mod limits;
#[cfg(target_os = "linux")]
mod pool;
#[cfg(target_os = "linux")]
mod process;
#[cfg(target_os = "linux")]
mod serve;

use std::path::PathBuf;
use std::time::Duration;

#[cfg(target_os = "linux")]
pub(crate) use pool::Pool;
#[cfg(target_os = "linux")]
pub(crate) use serve::execute;

/// Whether `execute` workers can start from this program (Linux only). A program that uses
/// nothing else from this crate, such as a dedicated worker binary for
/// [`WorkerConfig::program`], calls it so that the pre-`main` worker entry is linked in.
pub fn worker_entry_linked() -> bool {
    #[cfg(target_os = "linux")]
    {
        entry::anchor() != 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Scripts a worker runs before it is retired (its heap may have fragmented).
pub const MAX_RUNS_PER_WORKER: u32 = 1000;
/// Largest script source `execute` accepts, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 16 * 1024 * 1024;

/// How the isolate backend runs `execute` scripts in worker processes (see the
/// [isolate module docs](super)). Build with [`WorkerConfig::new`] and set fields; pass to
/// [`IsolateBackend::with_workers`](super::IsolateBackend::with_workers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The program started as a worker. `None` (the default): this process's own executable,
    /// which needs nothing from the host program (a hook in this crate turns it into a worker
    /// before `main`). Otherwise any program
    /// that links this crate with the `isolate` feature, e.g. the `cma-sandbox-worker` binary it
    /// ships; it must be the same build, or workers are refused as speaking another protocol.
    pub program: Option<PathBuf>,
    /// Started, idle workers kept ready for sandboxes that have none (default 2). `0` starts a
    /// worker when a script needs one.
    pub idle_workers: usize,
    /// Scripts running at once, per backend (default 64); more wait for a free slot.
    pub max_busy: usize,
    /// Workers kept for the sandbox that last used them (default 8).
    pub max_warm: usize,
    /// How long a new worker may take to report ready (default 10 s).
    pub start_timeout: Duration,
    /// Refuse to run scripts in a worker that could not install its system-call filter
    /// (default `true`; set `false` only where seccomp is unavailable and the other limits
    /// are judged enough).
    pub require_syscall_filter: bool,
}

impl WorkerConfig {
    /// The defaults described on each field.
    pub fn new() -> Self {
        Self {
            program: None,
            idle_workers: 2,
            max_busy: 64,
            max_warm: 8,
            start_timeout: Duration::from_secs(10),
            require_syscall_filter: true,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self::new()
    }
}
