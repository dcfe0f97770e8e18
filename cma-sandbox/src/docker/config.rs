//! [`DockerConfig`]: the settings of a [`DockerBackend`](super::DockerBackend) and their
//! defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::spec::SandboxSpec;

/// Settings of a [`DockerBackend`](super::DockerBackend). Build with [`DockerConfig::new`] and
/// set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DockerConfig {
    /// The Engine's unix socket; `None` = `$DOCKER_HOST` (a `unix://` URL) or
    /// `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// Image used when the spec names none. It must exist locally (never pulled).
    pub image: String,
    /// This control plane's name, stored in [`LABEL_INSTANCE`](super::LABEL_INSTANCE); `list`
    /// and `reconcile` only see its own containers.
    pub instance: String,
    /// Name of the internal network sandboxes join (created when missing).
    pub network: String,
    /// Name of the host bridge interface of that network (at most 15 bytes).
    pub bridge: String,
    /// Sandbox working directory.
    pub workdir: String,
    /// Host directory for small files the backend bind-mounts (the empty `resolv.conf`), and
    /// for the claim files of warm-pool sandboxes ([`prestart`](Self::prestart)): keep it
    /// across control-plane restarts, or claimed pool sandboxes cannot be re-adopted
    /// (`reconcile` then removes them; they are never handed to another session).
    pub state_dir: PathBuf,
    /// Default memory limit in bytes (the spec's wins).
    pub memory_bytes: u64,
    /// Default CPU limit in cores.
    pub cpus: f64,
    /// Default process limit.
    pub pids: u32,
    /// User to run as; `None` = the image's configured user unless that is root (or unset),
    /// else [`FALLBACK_USER`](super::FALLBACK_USER) (`nobody`, given the workdir). A sandbox
    /// runs as root only when this names root, and then it may have no writable host mounts
    /// (they cannot be mounted `nosuid`).
    pub user: Option<String>,
    /// Install host `iptables` rules so the sandbox bridge reaches only the egress endpoint on
    /// the host (needs root and a local engine). Connecting fails if they cannot be installed.
    pub host_firewall: bool,
    /// Serve file operations through a `python3` helper kept running in the sandbox (fast);
    /// `false`, or an image without `python3`, runs one exec of POSIX tools (`stat`, `cat`,
    /// GNU `find`, ...) per operation instead.
    pub python_helper: bool,
    /// Largest workspace archive
    /// [`Sandbox::import_workspace`](crate::Sandbox::import_workspace) accepts, in bytes.
    pub max_import_bytes: u64,
    /// Largest file [`Sandbox::read_file`](crate::Sandbox::read_file) returns when the caller
    /// gives no limit of its own (a larger one fails with
    /// [`TooLarge`](crate::SandboxErrorKind::TooLarge)): the reply is held in memory whole.
    pub max_read_bytes: u64,
    /// Timeout of each Engine API request.
    pub request_timeout: Duration,
    /// Warm pool size: this many containers are kept created, started and unassigned, made
    /// from [`pool_spec`](Self::pool_spec) with the same isolation as every sandbox, so that
    /// `create` for a compatible spec only takes one and records its identity, and its first
    /// `exec` runs on a process started ahead (together tens of milliseconds instead of
    /// hundreds). `0` (the default) disables the pool. The pool refills in the background after
    /// each claim; call [`DockerBackend::close_pool`](super::DockerBackend::close_pool) at
    /// shutdown (or let the next [`DockerBackend::reconcile`](super::DockerBackend::reconcile)
    /// re-use or remove what is left). Compatible:
    /// same image, CPU, memory, process and disk limits and environment variables as the
    /// template (each resolved against this config's defaults), no mounts, no egress endpoint;
    /// session, environment and labels may differ. Other specs are created the usual way.
    pub prestart: usize,
    /// Template of the pool's containers (default: the empty spec, i.e. this config's
    /// defaults). It takes no mounts, egress endpoint, session, environment or labels.
    pub pool_spec: SandboxSpec,
}

impl DockerConfig {
    /// Defaults around `image`: network `cma-sandbox`, workdir `/workspace`, 1 GiB, 1 CPU,
    /// 512 processes, host firewall on.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            socket: None,
            image: image.into(),
            instance: "default".into(),
            network: "cma-sandbox".into(),
            bridge: "cma-sbx0".into(),
            workdir: "/workspace".into(),
            state_dir: std::env::temp_dir().join("cma-docker"),
            memory_bytes: 1 << 30,
            cpus: 1.0,
            pids: 512,
            user: None,
            host_firewall: true,
            python_helper: true,
            max_import_bytes: 512 << 20,
            max_read_bytes: 256 << 20,
            request_timeout: Duration::from_secs(60),
            prestart: 0,
            pool_spec: SandboxSpec::new(),
        }
    }
}
