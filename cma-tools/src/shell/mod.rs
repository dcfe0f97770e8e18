//! The persistent shell behind the `bash` tool (docs/protocol.md §6.2): a [`ShellSession`] drives one
//! long-lived `/bin/bash --noprofile --norc` through a small byte-stream interface
//! ([`ShellProcess`]), so any backend that can give a shell's stdin and merged stdout+stderr
//! (a local process, `docker exec -i`, a remote PTY-less stream) reuses the same protocol code.
//!
//! Each command is wrapped as `{ <cmd>\n} </dev/null 2>&1; printf '\n<SENTINEL>%d\n' $?` with a
//! per-call random sentinel written split (`__ANT_CM''D_…`) so the echo of stdin can never
//! contain it. Output is the text before the sentinel, ANSI escapes stripped, trailing newlines
//! removed; only the last [`BASH_OUTPUT_LIMIT`] bytes are kept (then prefixed with
//! `[output truncated]\n`). A timeout kills the shell; so does an `exit` in the command (no
//! sentinel, exit code -1). After that every call fails until the session is restarted.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::context::ShellEnv;

#[cfg(feature = "testing")]
mod local;
#[cfg(feature = "testing")]
pub use local::LocalShellLauncher;

/// Bytes of raw output kept per command: the last 100 KiB (`BASH_OUTPUT_LIMIT`).
pub const BASH_OUTPUT_LIMIT: usize = 100 * 1024;
/// Default command timeout when `timeout_ms` is absent or zero.
pub const BASH_DEFAULT_TIMEOUT_SECS: f64 = 120.0;
/// Prefix of a result whose output was cut.
pub const TRUNCATED_PREFIX: &str = "[output truncated]\n";
/// How long a killed shell is waited for.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(2);
/// Longest timeout honoured (a larger `timeout_ms` is clamped; Python has no upper bound).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

static ANSI: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").unwrap_or_else(|_| unreachable!("constant regex"))
});

/// A running shell as a byte stream: its stdin, and its stdout and stderr merged into one stream.
#[async_trait]
pub trait ShellProcess: Send {
    /// Write all of `data` to the shell's stdin.
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Read the next bytes of merged output into `buf`; `Ok(0)` at end of stream. Must be
    /// cancel-safe (dropping the future loses no data that was not returned).
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Whether the process has exited (without blocking).
    fn has_exited(&mut self) -> bool;
    /// Kill the process and reap it (bounded wait).
    async fn kill(&mut self);
}

/// How to start the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellSpec {
    /// Working directory (a sandbox path; the launcher maps it).
    pub cwd: String,
    /// Base environment.
    pub env: ShellEnv,
    /// Variables always set on top of the base (`PS1=""`, `PS2=""`, `TERM=dumb`).
    pub overrides: BTreeMap<String, String>,
}

impl ShellSpec {
    /// The official spec: `cwd`, `env`, plus `PS1=""`, `PS2=""`, `TERM=dumb`.
    pub fn new(cwd: impl Into<String>, env: ShellEnv) -> Self {
        let overrides = [("PS1", ""), ("PS2", ""), ("TERM", "dumb")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            cwd: cwd.into(),
            env,
            overrides,
        }
    }

    /// The full environment given the launcher's natural one: `ANTHROPIC_*` removed (or the
    /// explicit replacement), then the overrides.
    pub fn environment<I, K, V>(&self, natural: I) -> BTreeMap<String, String>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut env: BTreeMap<String, String> = match &self.env {
            ShellEnv::Inherit => natural
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(k, _)| !k.starts_with("ANTHROPIC_"))
                .collect(),
            ShellEnv::Replace(map) => map.clone(),
        };
        env.extend(self.overrides.clone());
        env
    }
}

/// Starts shells for [`ShellSession`]s.
#[async_trait]
pub trait ShellLauncher: Send + Sync {
    /// Start `/bin/bash --noprofile --norc` (or equivalent) as described by `spec`.
    async fn launch(&self, spec: &ShellSpec) -> io::Result<Box<dyn ShellProcess>>;
}

/// Launches the shell *inside* the sandbox through
/// [`Sandbox::open_interactive`](cma_sandbox::Sandbox::open_interactive) (backends with
/// [`persistent_shell`](cma_sandbox::Capabilities::persistent_shell), e.g. Docker). The `bash`
/// tool uses it automatically when the context has no explicit launcher.
///
/// The "natural" environment is the sandbox's own; the exec cannot unset variables, so the
/// scrubbing of `ANTHROPIC_*` (or the full replacement of [`ShellEnv::Replace`]) is done by a
/// silent first line written to the new shell.
#[derive(Clone)]
pub struct SandboxShellLauncher {
    sandbox: Arc<dyn cma_sandbox::Sandbox>,
}

impl std::fmt::Debug for SandboxShellLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxShellLauncher")
            .field("sandbox", self.sandbox.id())
            .finish()
    }
}

impl SandboxShellLauncher {
    /// A launcher starting shells in `sandbox`.
    pub fn new(sandbox: Arc<dyn cma_sandbox::Sandbox>) -> Self {
        Self { sandbox }
    }
}

/// Whether `k` can be named in a shell `case` pattern and `unset` as is.
fn is_shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[async_trait]
impl ShellLauncher for SandboxShellLauncher {
    async fn launch(&self, spec: &ShellSpec) -> io::Result<Box<dyn ShellProcess>> {
        let mut req = cma_sandbox::ExecRequest::argv(["/bin/bash", "--noprofile", "--norc"]);
        req.cwd = Some(spec.cwd.clone());
        let (env, prelude) = match &spec.env {
            ShellEnv::Inherit => (
                spec.overrides.clone(),
                "unset ${!ANTHROPIC_@} 2>/dev/null\n".to_owned(),
            ),
            ShellEnv::Replace(_) => {
                let env = spec.environment(std::iter::empty::<(String, String)>());
                let keep: Vec<&str> = env
                    .keys()
                    .map(String::as_str)
                    .filter(|k| is_shell_name(k))
                    .collect();
                let pattern = if keep.is_empty() {
                    "__cma_none__".to_owned()
                } else {
                    keep.join("|")
                };
                let prelude = format!(
                    "for __cma_v in $(compgen -e); do case \"$__cma_v\" in {pattern}) ;; *) unset \"$__cma_v\";; esac; done 2>/dev/null; unset __cma_v\n"
                );
                (env, prelude)
            }
        };
        req.env = env;
        let proc = self
            .sandbox
            .open_interactive(req)
            .await
            .map_err(io::Error::from)?;
        let mut shell = SandboxShell { proc };
        shell.write_all(prelude.as_bytes()).await?;
        Ok(Box::new(shell))
    }
}

struct SandboxShell {
    proc: cma_sandbox::InteractiveProcess,
}

#[async_trait]
impl ShellProcess for SandboxShell {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.proc.stdin.write_all(data).await?;
        self.proc.stdin.flush().await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.proc.output.read(buf).await
    }

    fn has_exited(&mut self) -> bool {
        self.proc.control.has_exited()
    }

    async fn kill(&mut self) {
        let _ = tokio::time::timeout(KILL_WAIT * 5, self.proc.control.kill()).await;
    }
}

/// Output and exit code of one command (`-1` when the exit code could not be read, e.g. the
/// command ran `exit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// Merged stdout and stderr, ANSI escapes stripped, trailing newlines removed, possibly
    /// prefixed with `[output truncated]\n`.
    pub output: String,
    /// The command's exit status, or -1.
    pub exit_code: i32,
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// The shell has exited (or was killed); restart it.
    #[error("bash session terminated; restart required")]
    Terminated,
    /// The command ran past its timeout; the shell was killed. Displays the timeout in seconds
    /// as Python formats a float.
    #[error("bash command timed out after {}s", crate::pyfmt::repr_float(*.0))]
    TimedOut(f64),
    /// The call was cancelled; the shell was killed.
    #[error("bash command cancelled")]
    Cancelled,
    /// Writing to or reading from the shell failed.
    #[error("bash i/o error: {0}")]
    Io(#[from] io::Error),
}

/// One persistent shell. Not for concurrent use: one command at a time (`&mut self`).
pub struct ShellSession {
    proc: Box<dyn ShellProcess>,
    dead: bool,
    busy: bool,
}

impl std::fmt::Debug for ShellSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellSession")
            .field("dead", &self.dead)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl ShellSession {
    /// Wrap an already started shell.
    pub fn new(proc: Box<dyn ShellProcess>) -> Self {
        Self {
            proc,
            dead: false,
            busy: false,
        }
    }

    /// Start a shell with `launcher`.
    pub async fn start(launcher: &dyn ShellLauncher, spec: &ShellSpec) -> io::Result<Self> {
        Ok(Self::new(launcher.launch(spec).await?))
    }

    /// Whether the shell has exited or was torn down.
    pub fn is_closed(&mut self) -> bool {
        self.dead || self.proc.has_exited()
    }

    /// Run `cmd` with a timeout of `timeout_secs` (the Python float, shown in the timeout text;
    /// `<= 0` times out at once). Cancel-safe: if this future is dropped mid-command, the next
    /// call finds the shell torn down and reports [`ShellError::Terminated`].
    pub async fn exec(
        &mut self,
        cmd: &str,
        timeout_secs: f64,
        cancel: &CancellationToken,
    ) -> Result<ShellOutput, ShellError> {
        if self.busy {
            // A previous call was abandoned mid-command: its output would leak into this one.
            self.close().await;
        }
        if self.is_closed() {
            self.dead = true;
            return Err(ShellError::Terminated);
        }
        self.busy = true;
        let sentinel = format!("__ANT_CMD_{}_DONE__", uuid::Uuid::new_v4().simple());
        let split = format!("{}''{}", &sentinel[..8], &sentinel[8..]);
        let wrapped = format!("{{ {cmd}\n}} </dev/null 2>&1; printf '\\n{split}%d\\n' $?\n");
        if let Err(e) = self.proc.write_all(wrapped.as_bytes()).await {
            // The shell is gone (broken pipe): the official tool reports it on the next call.
            self.close().await;
            return if e.kind() == io::ErrorKind::BrokenPipe {
                Err(ShellError::Terminated)
            } else {
                Err(ShellError::Io(e))
            };
        }
        let timeout = if timeout_secs > 0.0 {
            Duration::try_from_secs_f64(timeout_secs)
                .unwrap_or(MAX_TIMEOUT)
                .min(MAX_TIMEOUT)
        } else {
            Duration::ZERO
        };
        let mut buf = Vec::new();
        let mut truncated = false;
        let read = read_until_sentinel(
            &mut *self.proc,
            sentinel.as_bytes(),
            &mut buf,
            &mut truncated,
        );
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, read) => r,
            () = cancel.cancelled() => {
                self.close().await;
                return Err(ShellError::Cancelled);
            }
        };
        match outcome {
            Err(_elapsed) => {
                self.close().await;
                return Err(ShellError::TimedOut(timeout_secs));
            }
            Ok(Err(e)) => {
                self.close().await;
                return Err(ShellError::Io(e));
            }
            Ok(Ok(eof)) => {
                if eof {
                    // The shell exited (`exit` in the command): later calls need a restart.
                    self.dead = true;
                }
            }
        }
        self.busy = false;
        Ok(parse_output(&buf, &sentinel, truncated))
    }

    /// Kill the shell (idempotent).
    pub async fn close(&mut self) {
        self.dead = true;
        self.busy = false;
        self.proc.kill().await;
    }
}

/// Read until the sentinel line is complete (`Ok(false)`) or end of stream (`Ok(true)`), keeping
/// only the last [`BASH_OUTPUT_LIMIT`] bytes.
async fn read_until_sentinel(
    proc: &mut dyn ShellProcess,
    marker: &[u8],
    buf: &mut Vec<u8>,
    truncated: &mut bool,
) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    let mut found: Option<usize> = None;
    loop {
        let n = proc.read(&mut chunk).await?;
        if n == 0 {
            return Ok(true);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > BASH_OUTPUT_LIMIT {
            let cut = buf.len() - BASH_OUTPUT_LIMIT;
            buf.drain(..cut);
            *truncated = true;
            found = found.and_then(|f| f.checked_sub(cut));
        }
        if found.is_none() {
            // Only the new bytes (and a marker's length before them) can hold a new match.
            let from = (buf.len() - n).saturating_sub(marker.len());
            found = find(&buf[from..], marker).map(|i| from + i);
        }
        if let Some(at) = found {
            // The exit code follows the sentinel on the same line.
            if buf[at + marker.len()..].contains(&b'\n') {
                return Ok(false);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Turn raw shell output into the official result text and exit code.
fn parse_output(buf: &[u8], sentinel: &str, truncated: bool) -> ShellOutput {
    let stripped = ANSI.replace_all(buf, &b""[..]);
    let text = String::from_utf8_lossy(&stripped);
    let Some(idx) = text.rfind(sentinel) else {
        return ShellOutput {
            output: text.trim().to_owned(),
            exit_code: -1,
        };
    };
    let mut out = text[..idx].trim_end_matches('\n').to_owned();
    let tail = text[idx + sentinel.len()..].trim();
    let exit_code = tail
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .unwrap_or(-1);
    if truncated {
        out.insert_str(0, TRUNCATED_PREFIX);
    }
    ShellOutput {
        output: out,
        exit_code,
    }
}

/// Remove ANSI escape sequences (`ESC [ … final`) from text.
pub(crate) fn strip_ansi(bytes: &[u8]) -> Vec<u8> {
    ANSI.replace_all(bytes, &b""[..]).into_owned()
}
