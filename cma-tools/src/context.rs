//! [`ToolContext`]: everything a tool call may use — the session's sandbox, ids, the path policy
//! of the file tools (docs/protocol.md §6.1), size caps, the per-call deadline and cancellation, and
//! the session's persistent shell.
//!
//! A context is made once per session and cloned per call (clones share the session state, such
//! as the bash shell); [`ToolContext::close`] ends that state when the session ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use cma_sandbox::Sandbox;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shell::{ShellLauncher, ShellSession};

/// Default size cap of a whole-file `read` and of `edit` (§6.3, `DEFAULT_MAX_FILE_BYTES`).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024;
/// Default cap on the base64 size of an image returned by `read` (§6.3).
pub const DEFAULT_MAX_IMAGE_BASE64_BYTES: u64 = 5 * 1024 * 1024;
/// Default cap on the raw size of a PDF returned by `read` (§6.3).
pub const DEFAULT_MAX_PDF_BYTES: u64 = 20 * 1024 * 1024;
/// Default cap on the size of a file an `edit` produces ([`ToolContext::max_edit_result_bytes`]).
///
/// The official tool has none: a `replace_all` of a one-byte string by a long one multiplies
/// the file (a 256 KiB file of matches and a 100 kB `new_string` make 26 GB) and the runner
/// dies trying to build it. An edit that grows a file by at most its `new_string` (every single
/// replacement) is never refused by this cap.
pub const DEFAULT_MAX_EDIT_RESULT_BYTES: u64 = 16 * 1024 * 1024;

/// A size cap as the official context configures one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ByteLimit {
    /// The built-in default for that cap.
    #[default]
    Default,
    /// An explicit cap in bytes. An explicit `max_file_bytes` also binds image/PDF reads.
    Bytes(u64),
    /// No cap at all (use only when the sandbox can absorb arbitrarily large files).
    Unlimited,
}

impl ByteLimit {
    /// The effective cap given the default (`None` = unlimited).
    pub fn resolve(self, default: u64) -> Option<u64> {
        match self {
            Self::Default => Some(default),
            Self::Bytes(n) => Some(n),
            Self::Unlimited => None,
        }
    }
}

/// Environment of the persistent shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ShellEnv {
    /// The launcher's natural environment (the host process's for a local shell, the sandbox's
    /// for a container) with every `ANTHROPIC_*` variable removed.
    #[default]
    Inherit,
    /// Exactly this environment (it fully replaces the default; nothing is merged).
    Replace(BTreeMap<String, String>),
}

/// State shared by every clone of one session's context.
#[derive(Default)]
pub(crate) struct SessionState {
    pub(crate) shell: Mutex<Option<ShellSession>>,
}

/// What a tool call can use. Build with [`ToolContext::new`] and the `with_*` methods.
#[derive(Clone)]
#[non_exhaustive]
pub struct ToolContext {
    /// The session's sandbox: every file and process operation goes through it.
    pub sandbox: Arc<dyn Sandbox>,
    /// The session id, when known.
    pub session_id: Option<String>,
    /// The work item id, when known.
    pub work_id: Option<String>,
    /// Cancelled when the call (or the session) must stop.
    pub cancel: CancellationToken,
    /// When the call must be finished; the registry turns a miss into `tool '<name>' timed out`.
    pub deadline: Option<Instant>,
    /// Sandbox directories outside the workdir the file tools may also reach (memory stores).
    pub allowed_roots: Vec<String>,
    /// Directories `write` and `edit` refuse to modify.
    pub read_only_roots: Vec<String>,
    /// Cap of a whole-file `read` and of `edit` (default 262 144 bytes).
    pub max_file_bytes: ByteLimit,
    /// Cap on the base64 size of an image `read` returns (default 5 MiB).
    pub max_image_base64_bytes: ByteLimit,
    /// Cap on the raw size of a PDF `read` returns (default 20 MiB).
    pub max_pdf_bytes: ByteLimit,
    /// Largest file an `edit` may produce, in bytes (default
    /// [`DEFAULT_MAX_EDIT_RESULT_BYTES`]). Its size is computed before it is built; an edit
    /// past the cap is refused (`edit: <p> would be <n> bytes after the edit, exceeds
    /// <cap>-byte limit. …`) unless the file grows by no more than `new_string`'s length.
    pub max_edit_result_bytes: u64,
    /// Environment of the persistent shell.
    pub shell_env: ShellEnv,
    /// Starts the persistent shell of the `bash` tool. Without one, `bash` runs each command
    /// through [`Sandbox::exec`] when the sandbox has a shell (state does not persist), or
    /// answers an error naming the `execute` tool when it has none.
    pub shell_launcher: Option<Arc<dyn ShellLauncher>>,
    pub(crate) state: Arc<SessionState>,
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("sandbox", &self.sandbox.id())
            .field("workdir", &self.sandbox.workdir())
            .field("session_id", &self.session_id)
            .field("work_id", &self.work_id)
            .field("deadline", &self.deadline)
            .field("allowed_roots", &self.allowed_roots)
            .field("read_only_roots", &self.read_only_roots)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("shell_launcher", &self.shell_launcher.is_some())
            .finish_non_exhaustive()
    }
}

impl ToolContext {
    /// A context over `sandbox` with the official defaults.
    pub fn new(sandbox: Arc<dyn Sandbox>) -> Self {
        Self {
            sandbox,
            session_id: None,
            work_id: None,
            cancel: CancellationToken::new(),
            deadline: None,
            allowed_roots: Vec::new(),
            read_only_roots: Vec::new(),
            max_file_bytes: ByteLimit::Default,
            max_image_base64_bytes: ByteLimit::Default,
            max_pdf_bytes: ByteLimit::Default,
            max_edit_result_bytes: DEFAULT_MAX_EDIT_RESULT_BYTES,
            shell_env: ShellEnv::Inherit,
            shell_launcher: None,
            state: Arc::default(),
        }
    }

    /// The sandbox's working directory (e.g. `/workspace`).
    pub fn workdir(&self) -> &str {
        self.sandbox.workdir()
    }

    /// Set the session and work ids.
    #[must_use]
    pub fn with_ids(mut self, session_id: impl Into<String>, work_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self.work_id = Some(work_id.into());
        self
    }

    /// Add directories the file tools may reach besides the workdir.
    #[must_use]
    pub fn with_allowed_roots<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        roots: I,
    ) -> Self {
        self.allowed_roots.extend(roots.into_iter().map(Into::into));
        self
    }

    /// Add directories `write`/`edit` must not modify.
    #[must_use]
    pub fn with_read_only_roots<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        roots: I,
    ) -> Self {
        self.read_only_roots
            .extend(roots.into_iter().map(Into::into));
        self
    }

    /// Make every mount of the sandbox reachable by the file tools (an allowed root), and the
    /// read-only ones refused by `write`/`edit` (what the official worker does for memory
    /// stores).
    #[must_use]
    pub fn with_mounts(mut self, mounts: &[cma_sandbox::Mount]) -> Self {
        for m in mounts {
            self.allowed_roots.push(m.sandbox_path.clone());
            if m.read_only {
                self.read_only_roots.push(m.sandbox_path.clone());
            }
        }
        self
    }

    /// Set the whole-file cap of `read`/`edit`.
    #[must_use]
    pub fn with_max_file_bytes(mut self, limit: ByteLimit) -> Self {
        self.max_file_bytes = limit;
        self
    }

    /// Set the largest file an `edit` may produce.
    #[must_use]
    pub fn with_max_edit_result_bytes(mut self, limit: u64) -> Self {
        self.max_edit_result_bytes = limit;
        self
    }

    /// Set how the `bash` tool starts its persistent shell.
    #[must_use]
    pub fn with_shell_launcher(mut self, launcher: Arc<dyn ShellLauncher>) -> Self {
        self.shell_launcher = Some(launcher);
        self
    }

    /// Set the persistent shell's environment.
    #[must_use]
    pub fn with_shell_env(mut self, env: ShellEnv) -> Self {
        self.shell_env = env;
        self
    }

    /// A clone for one call: a child cancellation token and the given deadline. Session state
    /// (the shell) stays shared.
    #[must_use]
    pub fn for_call(&self, deadline: Option<Instant>) -> Self {
        let mut c = self.clone();
        c.cancel = self.cancel.child_token();
        c.deadline = deadline;
        c
    }

    /// End the session's state: kill the persistent shell, if any (the official cleanup hook).
    pub async fn close(&self) {
        let mut slot = self.state.shell.lock().await;
        if let Some(mut shell) = slot.take() {
            shell.close().await;
        }
    }
}
