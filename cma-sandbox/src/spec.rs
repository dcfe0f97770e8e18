//! What a sandbox is asked to be ([`SandboxSpec`], [`Mount`]), what a backend can do
//! ([`Capabilities`]) and how a sandbox is named and reported ([`SandboxId`], [`SandboxInfo`],
//! [`SandboxStatus`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::{Result, SandboxError, SandboxErrorKind};

/// Longest accepted [`SandboxId`], in bytes.
pub const MAX_SANDBOX_ID_LEN: usize = 128;

/// The identifier a backend gives a sandbox. Stable across [`stop`](crate::Sandbox::stop) and
/// [`resume`](crate::SandboxBackend::resume).
///
/// Ids are 1–128 bytes of `[A-Za-z0-9_.-]`, not starting with `.`; [`SandboxId::parse`] checks
/// this, so an id is always safe to use as a file name or a label value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(String);

impl SandboxId {
    /// Parse and validate an id.
    ///
    /// ```
    /// use cma_sandbox::SandboxId;
    /// assert!(SandboxId::parse("sbx_0123").is_ok());
    /// assert!(SandboxId::parse("../etc").is_err());
    /// ```
    pub fn parse(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_SANDBOX_ID_LEN
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(id))
        } else {
            Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "invalid sandbox id: expected 1-128 characters of [A-Za-z0-9_.-], not starting with '.'",
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SandboxId {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// An extra host directory made visible inside the sandbox (for example a memory store at
/// `/memory/notes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute sandbox path where the directory appears, e.g. `/memory/notes`. Must not be `/`,
    /// the workspace, or inside another mount.
    pub sandbox_path: String,
    /// Host directory behind it. It must exist.
    pub host_path: PathBuf,
    /// Refuse every write under this mount.
    pub read_only: bool,
}

impl Mount {
    /// A read-write mount.
    pub fn new(sandbox_path: impl Into<String>, host_path: impl Into<PathBuf>) -> Self {
        Self {
            sandbox_path: sandbox_path.into(),
            host_path: host_path.into(),
            read_only: false,
        }
    }

    /// A read-only mount.
    pub fn read_only(sandbox_path: impl Into<String>, host_path: impl Into<PathBuf>) -> Self {
        Self {
            read_only: true,
            ..Self::new(sandbox_path, host_path)
        }
    }
}

/// Where a sandbox's outbound traffic must go (the egress proxy). Backends that run real
/// processes point the sandbox's proxy settings at it; the isolate backend routes `fetch` through
/// its own in-process hook instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEndpoint {
    /// Proxy URL as seen from inside the sandbox, e.g. `http://10.0.0.1:3128`.
    pub proxy_url: String,
    /// PEM of the CA certificate the proxy uses to intercept TLS, to be trusted inside the sandbox.
    pub ca_cert_pem: Option<String>,
}

/// What a sandbox is asked to be.
///
/// Every field a backend receives is either honoured or refused: [`SandboxBackend::create`]
/// fails with [`Unsupported`](crate::SandboxErrorKind::Unsupported) for a knob the backend
/// cannot apply at all (for example `disk_bytes` where [`Capabilities::disk_quota`] is `false`,
/// or `image` on the isolate backend) and with
/// [`InvalidInput`](crate::SandboxErrorKind::InvalidInput) for a value it cannot apply as
/// asked (a zero memory or process limit, which container engines read as "unlimited"). No
/// field is silently ignored or half-applied; each backend's module docs list what it does with
/// each field.
///
/// Build with [`SandboxSpec::new`] (or `Default`) and set the fields you need.
///
/// [`SandboxBackend::create`]: crate::SandboxBackend::create
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SandboxSpec {
    /// Session this sandbox serves (for labels, listing and recovery).
    pub session_id: Option<String>,
    /// Environment the session belongs to.
    pub environment_id: Option<String>,
    /// Container image (Docker/Cloudflare); ignored by the isolate backend.
    pub image: Option<String>,
    /// CPU limit in cores (e.g. `0.5`).
    pub cpus: Option<f64>,
    /// Memory limit in bytes. The isolate backend uses it as the default JS heap cap of `execute`.
    pub memory_bytes: Option<u64>,
    /// Disk quota for the sandbox's own files in bytes (the workspace; extra [`mounts`] are
    /// the host's and do not count). A write that would pass it fails with
    /// [`QuotaExceeded`](crate::SandboxErrorKind::QuotaExceeded) or
    /// [`StorageFull`](crate::SandboxErrorKind::StorageFull). Backends that cannot enforce it
    /// ([`Capabilities::disk_quota`] `false`) refuse a spec that sets it.
    ///
    /// [`mounts`]: SandboxSpec::mounts
    pub disk_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u32>,
    /// Environment variables for commands run in the sandbox.
    pub env: BTreeMap<String, String>,
    /// Free-form labels, reported back by [`SandboxBackend::list`](crate::SandboxBackend::list).
    pub labels: BTreeMap<String, String>,
    /// Extra host directories visible inside the sandbox.
    pub mounts: Vec<Mount>,
    /// Where outbound traffic must go.
    pub egress: Option<EgressEndpoint>,
}

impl SandboxSpec {
    /// An empty spec: backend defaults everywhere.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What a backend (and its sandboxes) can do. Callers check these instead of matching on
/// backend names; an operation a backend cannot do fails with
/// [`SandboxErrorKind::Unsupported`].
///
/// [`SandboxBackend::capabilities`](crate::SandboxBackend::capabilities) describes a sandbox
/// created from the empty spec ([`SandboxSpec::new`]); a sandbox's own
/// [`Sandbox::capabilities`](crate::Sandbox::capabilities) can differ where its spec asked for
/// more (a Docker sandbox has [`network`](Capabilities::network) only when its spec names an
/// [`EgressEndpoint`]).
///
/// Non-exhaustive: start from `Capabilities::default()` (everything `false`) and set fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Sandbox::exec`](crate::Sandbox::exec) runs shell commands.
    pub shell_exec: bool,
    /// A shell persists between calls (cwd, exported variables), as the official `bash` tool expects.
    pub persistent_shell: bool,
    /// [`Sandbox::execute`](crate::Sandbox::execute) runs JavaScript.
    pub execute_js: bool,
    /// The file operations (stat, read, write, list, remove) work.
    pub files: bool,
    /// Symbolic links can exist and are reported by `lstat`/`read_link`.
    pub symlinks: bool,
    /// The workspace can be exported and imported as a tar stream.
    pub archive: bool,
    /// Sandboxes survive [`Sandbox::stop`](crate::Sandbox::stop) and can be resumed by id.
    pub resume: bool,
    /// Outbound network exists at all (always through the egress endpoint or hook).
    pub network: bool,
    /// [`SandboxSpec::disk_bytes`] is enforced; when `false`, a spec that sets it is refused
    /// at create with [`Unsupported`](SandboxErrorKind::Unsupported).
    pub disk_quota: bool,
}

/// The life-cycle state of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SandboxStatus {
    /// Being created or started.
    Starting,
    /// Ready for operations.
    Running,
    /// Stopped; its files are kept and it can be resumed.
    Stopped,
    /// Failed; the reason is backend-specific.
    Failed {
        /// Why.
        reason: String,
    },
}

impl SandboxStatus {
    /// A short lower-case name (`running`, `stopped`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed { .. } => "failed",
        }
    }
}

/// One sandbox as reported by [`SandboxBackend::list`](crate::SandboxBackend::list).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// Its id.
    pub id: SandboxId,
    /// Its state.
    pub status: SandboxStatus,
    /// When it was created, when the backend knows.
    pub created_at: Option<SystemTime>,
    /// The session it serves, when the backend recorded it.
    pub session_id: Option<String>,
    /// Its labels, when the backend records them.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_reject_separators_dots_and_overlong_values() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", ".hidden", "é"] {
            assert!(SandboxId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SandboxId::parse("x".repeat(MAX_SANDBOX_ID_LEN + 1)).is_err());
        assert_eq!(SandboxId::parse("sbx-1.a_b").unwrap().as_str(), "sbx-1.a_b");
    }
}
