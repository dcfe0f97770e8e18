//! Running code in a sandbox: shell commands ([`ExecRequest`]) and JavaScript
//! ([`ExecuteRequest`]), with buffered ([`ExecOutput`]) or streamed ([`ExecStream`]) results.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::error::SandboxError;

/// Default wall-clock limit of a command or script (the official `bash` tool's 120 s).
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// Default cap on captured output per stream, in bytes (the official `bash` tool keeps 100 KiB;
/// docs/protocol.md §6.2).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 102_400;
/// Default heap limit of an `execute` script, in bytes.
pub const DEFAULT_EXECUTE_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// Default wall-clock limit of an `execute` script.
pub const DEFAULT_EXECUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecCommand {
    /// A command line for the sandbox's shell (`bash -c` or the persistent shell).
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
}

/// A command for [`Sandbox::exec`](crate::Sandbox::exec).
///
/// Non-exhaustive: build with [`ExecRequest::shell`] or [`ExecRequest::argv`], then set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecRequest {
    /// What to run.
    pub command: ExecCommand,
    /// Extra environment variables (on top of the sandbox's spec env).
    pub env: BTreeMap<String, String>,
    /// Working directory (sandbox path); `None` = the sandbox's [`workdir`](crate::Sandbox::workdir).
    pub cwd: Option<String>,
    /// Wall-clock limit; past it the command is killed and the call fails with
    /// [`SandboxErrorKind::Timeout`](crate::SandboxErrorKind::Timeout).
    pub timeout: Duration,
    /// Bytes fed to stdin; `None` = empty stdin (`/dev/null`).
    pub stdin: Option<Bytes>,
    /// Cap on captured bytes per output stream. Past it, the *last* bytes are kept and
    /// [`ExecOutput::truncated`] is set.
    pub max_output_bytes: usize,
}

impl ExecRequest {
    /// A shell command line with default limits.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::with_command(ExecCommand::Shell(command.into()))
    }

    /// A program and arguments with default limits.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_command(ExecCommand::Argv(
            argv.into_iter().map(Into::into).collect(),
        ))
    }

    fn with_command(command: ExecCommand) -> Self {
        Self {
            command,
            env: BTreeMap::new(),
            cwd: None,
            timeout: DEFAULT_EXEC_TIMEOUT,
            stdin: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// A JavaScript program for [`Sandbox::execute`](crate::Sandbox::execute).
///
/// Non-exhaustive: build with [`ExecuteRequest::new`], then set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecuteRequest {
    /// The script source.
    pub code: String,
    /// Wall-clock limit; past it the script is interrupted and the call fails with
    /// [`SandboxErrorKind::Timeout`](crate::SandboxErrorKind::Timeout).
    pub timeout: Duration,
    /// Heap limit in bytes; past it the call fails with
    /// [`SandboxErrorKind::ResourceLimit`](crate::SandboxErrorKind::ResourceLimit).
    pub memory_limit: usize,
    /// Cap on captured bytes per output stream; past it [`ExecOutput::truncated`] is set.
    pub max_output_bytes: usize,
}

impl ExecuteRequest {
    /// A script with default limits.
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            timeout: DEFAULT_EXECUTE_TIMEOUT,
            memory_limit: DEFAULT_EXECUTE_MEMORY_LIMIT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// The buffered result of a command or script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code; `None` when the process ended without one (killed by a signal).
    pub exit_code: Option<i32>,
    /// Captured standard output (bounded by the request's cap).
    pub stdout: Bytes,
    /// Captured standard error (bounded by the request's cap).
    pub stderr: Bytes,
    /// Some output was dropped because it exceeded the cap.
    pub truncated: bool,
}

impl ExecOutput {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// How a streamed command ended: the last item of an [`ExecStream`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Some output was dropped (the stream skipped chunks past the cap).
    pub truncated: bool,
}

/// One item of an [`ExecStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of standard output.
    Stdout(Bytes),
    /// A chunk of standard error.
    Stderr(Bytes),
    /// The command ended; this is the last item.
    Exit(ExecExit),
}

/// Output of [`Sandbox::exec_stream`](crate::Sandbox::exec_stream): chunks as they arrive, then
/// exactly one [`ExecEvent::Exit`]. An `Err` item ends the stream (timeout, backend failure).
/// Dropping the stream abandons the command; backends kill it.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecEvent, SandboxError>> + Send>>;

/// Controls a process started by [`Sandbox::open_interactive`](crate::Sandbox::open_interactive).
#[async_trait::async_trait]
pub trait ProcessControl: Send + Sync {
    /// Whether the process is known to have exited (its output ended or it was killed). Does
    /// not block.
    fn has_exited(&self) -> bool;

    /// Kill the process (and its process group where the backend can), bounded in time.
    /// Idempotent.
    async fn kill(&self);
}

/// A long-lived process with a writable stdin and its stdout and stderr merged into one
/// readable stream (the persistent `bash` of the tools), from
/// [`Sandbox::open_interactive`](crate::Sandbox::open_interactive).
///
/// Dropping it closes stdin; the backend then lets the process end on its own (call
/// [`ProcessControl::kill`] first to stop it at once).
pub struct InteractiveProcess {
    /// The process's standard input.
    pub stdin: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// Its standard output and standard error, merged in arrival order. EOF when it exits.
    pub output: Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    /// Liveness and kill.
    pub control: Box<dyn ProcessControl>,
}

impl std::fmt::Debug for InteractiveProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InteractiveProcess")
            .field("exited", &self.control.has_exited())
            .finish_non_exhaustive()
    }
}
