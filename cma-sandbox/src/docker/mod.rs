//! The Docker backend: one container per sandbox on a local Docker Engine (feature `docker`).
//!
//! * **Life cycle.** [`DockerBackend::create`](crate::SandboxBackend::create) creates and starts a
//!   container from [`SandboxSpec::image`] (or [`DockerConfig::image`]; the image must already be
//!   present: nothing is ever pulled), named by its [`SandboxId`]. `stop` stops it and keeps its
//!   files; `resume` starts it again; `destroy` removes it with its anonymous volumes. `status`
//!   comes from inspect.
//! * **Processes.** `exec`/`exec_stream` use the exec endpoints (stdout and stderr demultiplexed,
//!   exit codes from inspect, output capped, a timeout kills the process group).
//!   [`open_interactive`](crate::Sandbox::open_interactive) keeps an attached exec open: the
//!   persistent shell of the `bash` tool ([`Capabilities::persistent_shell`]).
//! * **Files.** One helper process per sandbox (`python3` from the image, started lazily through
//!   an attached exec) serves `stat`, `read`, `write`, `read_dir`, ... as sub-millisecond round
//!   trips with the container user's permissions. Images without `python3` fall back to one
//!   exec of POSIX tools per operation (coreutils and GNU `find`; tens of milliseconds each). Workspace export/import use the
//!   Engine's archive endpoints; imports are checked entry by entry before anything is unpacked.
//! * **Isolation by default.** The container joins only an `internal` bridge network the backend
//!   creates (inter-container traffic off, no IPv6), gets a `resolv.conf` with no reachable
//!   nameserver and an unroutable upstream for the engine's embedded DNS (engines before 26.0
//!   forward DNS from internal networks: CVE-2024-29018), drops every capability, sets
//!   `no-new-privileges`, runs as the image's user (non-root when the image declares one), under
//!   an init process, with memory, pids and CPU limits. On engines older than 26 the internal
//!   network still routes to the host's bridge address, so the backend also installs host
//!   `iptables` rules (when [`DockerConfig::host_firewall`] is on, the default): from the
//!   sandbox bridge only the egress endpoint's port on the gateway is accepted.
//!   [`SandboxSpec::egress`] sets `HTTP(S)_PROXY`/`NO_PROXY` (both cases) and installs its CA
//!   certificate where common clients look (the system bundle, a bundle the usual variables
//!   point at, pip and git configuration; the `egress` module lists them); the container's
//!   address for the proxy's registry is [`Sandbox::network_address`].
//! * **Warm pool (opt-in).** With [`DockerConfig::prestart`] > 0, started and fully isolated
//!   containers wait unassigned; `create` for a spec compatible with
//!   [`DockerConfig::pool_spec`] claims one (its name is the sandbox id; the identity is
//!   recorded in a claim file under [`DockerConfig::state_dir`]) instead of creating a
//!   container, and the pool refills in the background. Each pool container also holds a spare
//!   process started ahead; the sandbox's first `exec` (without stdin or its own working
//!   directory) runs on it instead of paying for an Engine exec start.
//! * **Spec knobs.** Each [`SandboxSpec`] field is applied or the spec is refused at `create`
//!   (table in the `limits` module's docs): `disk_bytes` only where the storage driver enforces
//!   a size ([`Capabilities::disk_quota`], found out at connect: overlay2 needs xfs with
//!   `pquota`), else `create` fails with [`Unsupported`](SandboxErrorKind::Unsupported); zero
//!   memory or process limits (unlimited to the engine) and egress endpoints a sandbox could not
//!   reach fail with [`InvalidInput`](SandboxErrorKind::InvalidInput). A sandbox has
//!   [`Capabilities::network`] only when its spec names an egress endpoint.
//! * **Recovery.** Every container carries labels (managed-by, control-plane instance, session,
//!   environment, the spec's labels); [`DockerBackend::reconcile`] finds them after a restart,
//!   removes orphans and re-adopts the rest.
//!
//! ```no_run
//! # async fn demo() -> cma_sandbox::Result<()> {
//! use cma_sandbox::docker::{DockerBackend, DockerConfig};
//! use cma_sandbox::{ExecRequest, SandboxBackend, SandboxSpec};
//!
//! let backend = DockerBackend::connect(DockerConfig::new("cma-sandbox-test:2")).await?;
//! let sandbox = backend.create(&SandboxSpec::new()).await?;
//! let out = sandbox.exec(ExecRequest::shell("echo hi")).await?;
//! assert_eq!(&out.stdout[..], b"hi\n");
//! backend.destroy(sandbox.id()).await?;
//! # Ok(()) }
//! ```

mod archive;
mod egress;
mod entries;
mod files;
mod limits;
mod net;
mod pool;
mod posix;
mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use crate::backend::{Sandbox, SandboxBackend};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{ExecOutput, ExecRequest, ExecStream, ExecuteRequest, InteractiveProcess};
use crate::file::{
    ByteStream, DirEntry, FileReader, FileStat, FoundLines, TreeFound, TreeSearch, WorkspaceEntry,
};
use crate::spec::{Capabilities, SandboxId, SandboxInfo, SandboxSpec, SandboxStatus};

pub use pool::{LABEL_POOL, PoolStats};

/// Label on every container and network this backend makes (value `1`).
pub const LABEL_MANAGED: &str = "cma.sandbox";
/// Label naming the control-plane instance that made the container ([`DockerConfig::instance`]).
pub const LABEL_INSTANCE: &str = "cma.control-plane";
/// Label holding [`SandboxSpec::session_id`].
pub const LABEL_SESSION: &str = "cma.session-id";
/// Label holding [`SandboxSpec::environment_id`].
pub const LABEL_ENVIRONMENT: &str = "cma.environment-id";
/// Label on a container whose spec named an egress endpoint (value `1`): its sandbox has
/// [`Capabilities::network`].
pub const LABEL_EGRESS: &str = "cma.egress";
/// Prefix of the container labels that carry [`SandboxSpec::labels`].
pub const LABEL_PREFIX: &str = "cma.label.";
/// Where the egress CA bundle is written inside the container.
pub const CA_BUNDLE_PATH: &str = "/etc/cma/ca-bundle.pem";

/// Settings of a [`DockerBackend`]. Build with [`DockerConfig::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DockerConfig {
    /// The Engine's unix socket; `None` = `$DOCKER_HOST` (a `unix://` URL) or
    /// `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// Image used when the spec names none. It must exist locally (never pulled).
    pub image: String,
    /// This control plane's name, stored in [`LABEL_INSTANCE`]; `list` and `reconcile` only see
    /// its own containers.
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
    /// User to run as; `None` = the image's configured user (root when it declares none).
    pub user: Option<String>,
    /// Install host `iptables` rules so the sandbox bridge reaches only the egress endpoint on
    /// the host (needs root and a local engine). Connecting fails if they cannot be installed.
    pub host_firewall: bool,
    /// Serve file operations through a `python3` helper kept running in the sandbox (fast);
    /// `false`, or an image without `python3`, runs one exec of POSIX tools (`stat`, `cat`,
    /// GNU `find`, ...) per operation instead.
    pub python_helper: bool,
    /// Largest workspace archive [`Sandbox::import_workspace`] accepts, in bytes.
    pub max_import_bytes: u64,
    /// Timeout of each Engine API request.
    pub request_timeout: Duration,
    /// Warm pool size: this many containers are kept created, started and unassigned, made
    /// from [`pool_spec`](Self::pool_spec) with the same isolation as every sandbox, so that
    /// `create` for a compatible spec only takes one and records its identity, and its first
    /// `exec` runs on a process started ahead (together tens of milliseconds instead of
    /// hundreds). `0` (the default) disables the pool. The pool refills
    /// in the background after each claim; call [`DockerBackend::close_pool`] at shutdown (or
    /// let the next [`DockerBackend::reconcile`] re-use or remove what is left). Compatible:
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
            request_timeout: Duration::from_secs(60),
            prestart: 0,
            pool_spec: SandboxSpec::new(),
        }
    }
}

/// What [`DockerBackend::reconcile`] did.
#[non_exhaustive]
pub struct Reconciled {
    /// Kept sandboxes, running again, with fresh handles.
    pub adopted: Vec<Arc<dyn Sandbox>>,
    /// Sandboxes removed because they were not in the keep-set.
    pub removed: Vec<SandboxId>,
}

impl std::fmt::Debug for Reconciled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciled")
            .field(
                "adopted",
                &self
                    .adopted
                    .iter()
                    .map(|s| s.id().clone())
                    .collect::<Vec<_>>(),
            )
            .field("removed", &self.removed)
            .finish()
    }
}

#[derive(Clone, Default)]
struct ImageFacts {
    user: String,
    workdir: String,
}

struct Shared {
    docker: Docker,
    cfg: DockerConfig,
    gateway: Option<IpAddr>,
    resolv_conf: PathBuf,
    engine_version: String,
    images: Mutex<HashMap<String, ImageFacts>>,
    pool: pool::Pool,
    disk: limits::DiskQuota,
}

impl Shared {
    /// What a sandbox can do; `network` when its spec named an egress endpoint.
    fn caps(&self, network: bool) -> Capabilities {
        Capabilities {
            shell_exec: true,
            persistent_shell: true,
            files: true,
            symlinks: true,
            archive: true,
            resume: true,
            network,
            disk_quota: self.disk.enforced,
            ..Default::default()
        }
    }
}

/// Sandboxes as Docker containers. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DockerBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("engine", &self.shared.engine_version)
            .field("network", &self.shared.cfg.network)
            .field("instance", &self.shared.cfg.instance)
            .finish_non_exhaustive()
    }
}

/// Map a bollard error to a sandbox error.
pub(crate) fn map_docker_err(e: bollard::errors::Error, what: &str) -> SandboxError {
    use bollard::errors::Error as E;
    let kind = match &e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => SandboxErrorKind::NotFound,
            409 if message.contains("not running") || message.contains("is paused") => {
                SandboxErrorKind::Stopped
            }
            409 => SandboxErrorKind::AlreadyExists,
            400 => SandboxErrorKind::InvalidInput,
            503 => SandboxErrorKind::Unavailable,
            _ => SandboxErrorKind::Backend,
        },
        E::HyperResponseError { .. } | E::IOError { .. } | E::RequestTimeoutError => {
            SandboxErrorKind::Unavailable
        }
        _ => SandboxErrorKind::Backend,
    };
    let detail = match &e {
        E::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    SandboxError::new(kind, format!("docker: {what}: {detail}")).with_source(e)
}

/// The socket path from `$DOCKER_HOST` or the default.
fn default_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// Anthropic credentials must never enter a sandbox (ids such as `ANTHROPIC_SESSION_ID` may).
fn is_credential(key: &str) -> bool {
    key.starts_with("ANTHROPIC_")
        && (key.ends_with("_KEY")
            || key.ends_with("_TOKEN")
            || ["API_KEY", "AUTH", "PASSWORD"]
                .iter()
                .any(|w| key.contains(w)))
}

impl DockerBackend {
    /// Connect to the Engine, check it answers, and prepare the internal network, the
    /// `resolv.conf` and (optionally) the host firewall. Fails with
    /// [`Unavailable`](SandboxErrorKind::Unavailable) when the Engine cannot be reached.
    pub async fn connect(cfg: DockerConfig) -> Result<Self> {
        let socket = cfg.socket.clone().unwrap_or_else(default_socket);
        let unreachable = |detail: String| {
            SandboxError::new(
                SandboxErrorKind::Unavailable,
                format!(
                    "docker: engine unreachable at {}: {detail}",
                    socket.display()
                ),
            )
        };
        let secs = cfg.request_timeout.as_secs().max(1);
        let docker = Docker::connect_with_socket(
            &socket.to_string_lossy(),
            secs,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let version = tokio::time::timeout(Duration::from_secs(10), docker.version())
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let engine_version = version.version.unwrap_or_default();
        pool::check_template(&cfg)?;
        let disk = limits::detect_disk_quota(&docker, &cfg).await;
        let gateway = net::ensure_network(&docker, &cfg).await?;
        if cfg.prestart > 0 {
            limits::check_spec(&cfg.pool_spec, &cfg, &disk, gateway)?;
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::Io,
                "docker: cannot create the state directory",
            )
            .with_source(e)
        })?;
        let resolv_conf = cfg.state_dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            "# cma sandbox: no resolver (all traffic goes through the egress proxy)\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .map_err(|e| {
            SandboxError::new(SandboxErrorKind::Io, "docker: cannot write resolv.conf").with_source(e)
        })?;
        if cfg.host_firewall {
            net::install_firewall(&cfg.bridge, gateway, &[]).await?;
        }
        let backend = Self {
            shared: Arc::new(Shared {
                pool: pool::Pool::new(&cfg),
                docker,
                cfg,
                gateway,
                resolv_conf,
                engine_version,
                images: Mutex::new(HashMap::new()),
                disk,
            }),
        };
        Ok(backend)
    }

    /// Fill the warm pool now: returns once [`DockerConfig::prestart`] containers are ready
    /// (at startup, or to wait out a background refill). A no-op without a pool. `connect`
    /// starts no pool work by itself: at startup call [`reconcile`](Self::reconcile) (which
    /// takes back a previous process's unclaimed containers and starts the background refill)
    /// and/or this; otherwise the first `create` starts the refill.
    pub async fn fill_pool(&self) -> Result<()> {
        pool::fill(self).await
    }

    /// Start the warm pool after a (re)start without a full [`reconcile`](Self::reconcile):
    /// remove this instance's pool containers that no sandbox claimed (a previous process's
    /// pool) and the claim files of containers that are gone, then fill in the background.
    /// Claimed sandboxes are untouched (they are listed like any sandbox, for the control
    /// plane's own recovery). Returns how many containers were removed.
    pub async fn start_pool(&self) -> Result<usize> {
        pool::remove_unclaimed(self).await
    }

    /// Stop refilling the warm pool and remove its unclaimed containers (at shutdown). Claimed
    /// sandboxes are untouched; `create` no longer uses the pool afterwards.
    pub async fn close_pool(&self) -> Result<()> {
        pool::close(self).await
    }

    /// The warm pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        pool::stats(self)
    }

    /// The Engine's version string (e.g. `20.10.24+dfsg1`).
    pub fn engine_version(&self) -> &str {
        &self.shared.engine_version
    }

    /// The host's address on the sandbox network: where an egress proxy on the host listens
    /// for sandboxes (use it in [`EgressEndpoint::proxy_url`](crate::EgressEndpoint)).
    pub fn gateway(&self) -> Option<IpAddr> {
        self.shared.gateway
    }

    /// Stop accepting traffic from sandboxes to `port` on the gateway (when the egress proxy
    /// that listened there is gone). The rule is added by `create` for a spec whose egress
    /// endpoint is on the gateway; it is shared by every sandbox using that port.
    pub async fn close_egress_port(&self, port: u16) -> Result<()> {
        if !self.shared.cfg.host_firewall {
            return Ok(());
        }
        net::remove_port(self.shared.gateway, port).await
    }

    /// The underlying bollard client (benchmarks and tests that compare with raw API calls).
    pub fn client(&self) -> &Docker {
        &self.shared.docker
    }

    /// The container id behind a sandbox id (for `docker` CLI comparisons and diagnostics).
    pub async fn container_id(&self, id: &SandboxId) -> Result<String> {
        let info = self
            .shared
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .map_err(|e| map_docker_err(e, "inspect"))?;
        Ok(info.id.unwrap_or_default())
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts> {
        if let Some(f) = self.shared.images.lock().await.get(image) {
            return Ok(f.clone());
        }
        let info = self.shared.docker.inspect_image(image).await.map_err(|e| {
            let mut err = map_docker_err(e, "image");
            if err.kind() == SandboxErrorKind::NotFound {
                err = SandboxError::new(
                    SandboxErrorKind::NotFound,
                    format!(
                        "docker: image {image:?} is not present locally (images are never pulled)"
                    ),
                );
            }
            err
        })?;
        let cfg = info.config.unwrap_or_default();
        let facts = ImageFacts {
            user: cfg.user.unwrap_or_default(),
            workdir: cfg.working_dir.unwrap_or_default(),
        };
        self.shared
            .images
            .lock()
            .await
            .insert(image.to_owned(), facts.clone());
        Ok(facts)
    }

    fn handle(&self, id: SandboxId, network: bool) -> Arc<dyn Sandbox> {
        self.handle_with(id, None, network)
    }

    fn handle_with(
        &self,
        id: SandboxId,
        spare: Option<process::Started>,
        network: bool,
    ) -> Arc<dyn Sandbox> {
        Arc::new(DockerSandbox {
            id,
            network,
            shared: self.shared.clone(),
            stopped: AtomicBool::new(false),
            helper: Arc::new(files::Helper::new(self.shared.cfg.python_helper)),
            spare: std::sync::Mutex::new(spare),
        })
    }

    fn own_filters(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=1"),
                format!("{LABEL_INSTANCE}={}", self.shared.cfg.instance),
            ],
        )])
    }

    /// After a restart: first remove this instance's unclaimed warm-pool containers and the
    /// claim files of containers that are gone, and start refilling the pool in the background
    /// (with [`DockerConfig::prestart`] > 0), as [`start_pool`](Self::start_pool) does; then
    /// remove every sandbox of this instance (as [`list`](SandboxBackend::list) sees them)
    /// whose id is not in `keep`, and re-adopt those that are (started again if stopped).
    /// Returns the adopted handles and the removed ids. Ids in `keep` that are not sandboxes of
    /// this instance are ignored. The first failure to resume or remove a sandbox ends the call
    /// with that error; what was done before stays done (the handles adopted so far are
    /// dropped, their containers keep running: call it again).
    pub async fn reconcile(&self, keep: &HashSet<SandboxId>) -> Result<Reconciled> {
        let mut out = Reconciled {
            adopted: Vec::new(),
            removed: Vec::new(),
        };
        pool::remove_unclaimed(self).await?;
        for info in self.list().await? {
            if keep.contains(&info.id) {
                out.adopted.push(self.resume(&info.id).await?);
            } else {
                match self.destroy(&info.id).await {
                    Ok(()) => out.removed.push(info.id),
                    Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// The labels every container of this backend carries.
    fn base_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_owned(), "1".to_owned()),
            (LABEL_INSTANCE.to_owned(), self.shared.cfg.instance.clone()),
        ])
    }

    /// Remove a container and its anonymous volumes (running or not).
    async fn remove_container(&self, name: &str) -> Result<()> {
        self.shared
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_docker_err(e, "remove"))
    }

    /// Create and start the container `name` for `spec` with `labels`, isolated as described
    /// in the module docs; on failure nothing is left behind.
    async fn make_container(
        &self,
        name: &str,
        spec: &SandboxSpec,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let cfg = &self.shared.cfg;
        let image = spec.image.clone().unwrap_or_else(|| cfg.image.clone());
        let facts = self.image_facts(&image).await?;
        let mut env: BTreeMap<String, String> = spec.env.clone();
        if let Some(egress) = &spec.egress {
            egress::proxy_env(egress, &mut env);
        }

        let mut binds = vec![format!(
            "{}:/etc/resolv.conf:ro",
            self.shared.resolv_conf.display()
        )];
        for m in &spec.mounts {
            if !m.sandbox_path.starts_with('/') || m.sandbox_path.contains(':') {
                return Err(SandboxError::new(
                    SandboxErrorKind::InvalidInput,
                    format!("docker: bad mount path {:?}", m.sandbox_path),
                ));
            }
            let host = m.host_path.canonicalize().map_err(|e| {
                SandboxError::new(
                    SandboxErrorKind::NotFound,
                    format!("docker: mount source for {} is missing", m.sandbox_path),
                )
                .with_source(e)
            })?;
            // A `:` would split the bind specification somewhere else.
            if host.to_string_lossy().contains(':') {
                return Err(SandboxError::new(
                    SandboxErrorKind::InvalidInput,
                    format!(
                        "docker: the host directory of mount {} has a ':' in its path",
                        m.sandbox_path
                    ),
                ));
            }
            binds.push(format!(
                "{}:{}:{}",
                host.display(),
                m.sandbox_path,
                if m.read_only { "ro" } else { "rw" }
            ));
        }

        let memory = spec.memory_bytes.unwrap_or(cfg.memory_bytes);
        let memory = i64::try_from(memory).unwrap_or(i64::MAX);
        let cpus = spec.cpus.unwrap_or(cfg.cpus);
        let pids = i64::from(spec.pids.unwrap_or(cfg.pids));
        let user = cfg.user.clone().unwrap_or(facts.user.clone());
        let host_config = HostConfig {
            binds: Some(binds),
            network_mode: Some(cfg.network.clone()),
            // The embedded DNS forwards to this unroutable TEST-NET address from inside the
            // sandbox's network namespace (never from the host's).
            dns: Some(vec!["192.0.2.1".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            init: Some(true),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((cpus * 1e9) as i64),
            pids_limit: Some(pids),
            storage_opt: limits::storage_opt(spec),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            hostname: Some("sandbox".into()),
            user: (!user.is_empty()).then(|| user.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            entrypoint: Some(vec![]),
            working_dir: Some(cfg.workdir.clone()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.shared
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| map_docker_err(e, "create"))?;
        let setup = async {
            if facts.workdir != cfg.workdir {
                // The image may lack the workdir: make it writable by any user (the engine
                // cannot chown to a user name it would have to look up in the image).
                let rel = cfg.workdir.trim_start_matches('/');
                let tar = archive::single_dir_tar(rel, 0o1777)?;
                self.put_archive(name, "/", tar).await?;
            }
            if let Some(ca) = spec.egress.as_ref().and_then(|e| e.ca_cert_pem.as_deref()) {
                egress::install_ca(&self.shared.docker, name, ca).await?;
            }
            if cfg.host_firewall
                && let Some(egress) = &spec.egress
                && let Some(port) = net::endpoint_port(&egress.proxy_url, self.shared.gateway)
            {
                net::install_firewall(&cfg.bridge, self.shared.gateway, &[port]).await?;
            }
            self.shared
                .docker
                .start_container(name, None)
                .await
                .map_err(|e| map_docker_err(e, "start"))
        };
        if let Err(e) = setup.await {
            let _ = self.remove_container(name).await;
            return Err(e);
        }
        Ok(())
    }

    async fn put_archive(&self, container: &str, dir: &str, tar: Vec<u8>) -> Result<()> {
        self.shared
            .docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: dir.to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(Bytes::from(tar)),
            )
            .await
            .map_err(|e| map_docker_err(e, "upload"))
    }
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps(false)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>> {
        if let Some(k) = spec.env.keys().find(|k| is_credential(k)) {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                format!("docker: refusing to put the credential {k} into a sandbox"),
            ));
        }
        limits::check_spec(
            spec,
            &self.shared.cfg,
            &self.shared.disk,
            self.shared.gateway,
        )?;
        if let Some((id, spare)) = pool::claim(self, spec).await? {
            // Pool containers never have an egress endpoint.
            return Ok(self.handle_with(id, spare, false));
        }
        let id = SandboxId::parse(format!("cma-{}", uuid::Uuid::new_v4().simple()))?;
        let mut labels = self.base_labels();
        if let Some(s) = &spec.session_id {
            labels.insert(LABEL_SESSION.into(), s.clone());
        }
        if let Some(e) = &spec.environment_id {
            labels.insert(LABEL_ENVIRONMENT.into(), e.clone());
        }
        for (k, v) in &spec.labels {
            labels.insert(format!("{LABEL_PREFIX}{k}"), v.clone());
        }
        if spec.egress.is_some() {
            labels.insert(LABEL_EGRESS.into(), "1".into());
        }
        self.make_container(id.as_str(), spec, labels).await?;
        Ok(self.handle(id, spec.egress.is_some()))
    }

    async fn resume(&self, id: &SandboxId) -> Result<Arc<dyn Sandbox>> {
        let info = self
            .shared
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .map_err(|e| map_docker_err(e, "inspect"))?;
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(LABEL_MANAGED).map(String::as_str) != Some("1")
            || labels.get(LABEL_INSTANCE) != Some(&self.shared.cfg.instance)
        {
            return Err(SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("docker: {id} is not a sandbox of this control plane"),
            ));
        }
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            self.shared
                .docker
                .start_container(id.as_str(), None)
                .await
                .map_err(|e| map_docker_err(e, "start"))?;
        }
        let network = labels.get(LABEL_EGRESS).map(String::as_str) == Some("1");
        Ok(self.handle(id.clone(), network))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let found = self
            .shared
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.own_filters()),
                ..Default::default()
            }))
            .await
            .map_err(|e| map_docker_err(e, "list"))?;
        let mut out = Vec::with_capacity(found.len());
        for c in found {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
            else {
                continue;
            };
            let Ok(id) = SandboxId::parse(name) else {
                continue;
            };
            let labels = c.labels.unwrap_or_default();
            let (session_id, spec_labels) = if labels.contains_key(LABEL_POOL) {
                // A pool container: claimed when it has a claim file, which holds its identity
                // (labels are fixed at creation, before it had one); else nobody's sandbox yet.
                let Some(identity) = pool::read_claim(&self.shared.cfg, id.as_str()) else {
                    continue;
                };
                (identity.session_id, identity.labels)
            } else {
                (
                    labels.get(LABEL_SESSION).cloned(),
                    labels
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((k.strip_prefix(LABEL_PREFIX)?.to_owned(), v.clone()))
                        })
                        .collect(),
                )
            };
            let status = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") => SandboxStatus::Running,
                Some("created") | Some("restarting") => SandboxStatus::Starting,
                Some("dead") => SandboxStatus::Failed {
                    reason: "container is dead".into(),
                },
                _ => SandboxStatus::Stopped,
            };
            out.push(SandboxInfo {
                id,
                status,
                created_at: c
                    .created
                    .and_then(|t| u64::try_from(t).ok())
                    .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
                session_id,
                labels: spec_labels,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let r = self.remove_container(id.as_str()).await;
        if r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == SandboxErrorKind::NotFound)
        {
            pool::remove_claim(&self.shared.cfg, id.as_str());
        }
        r
    }
}

/// One container.
struct DockerSandbox {
    id: SandboxId,
    /// Its spec named an egress endpoint.
    network: bool,
    shared: Arc<Shared>,
    stopped: AtomicBool,
    helper: Arc<files::Helper>,
    /// A process started ahead (warm pool) that runs the first eligible `exec`.
    spare: std::sync::Mutex<Option<process::Started>>,
}

impl DockerSandbox {
    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            Err(SandboxError::new(
                SandboxErrorKind::Stopped,
                format!("sandbox {} is stopped", self.id),
            ))
        } else {
            Ok(())
        }
    }

    /// The absolute sandbox path for `path` (relative ones join the workdir), lexically
    /// normalised. NUL bytes are refused.
    fn abs(&self, path: &str) -> Result<String> {
        if path.contains('\0') {
            return Err(SandboxError::at_path(SandboxErrorKind::InvalidInput, path));
        }
        if path.is_empty() {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "empty path",
            ));
        }
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.shared.cfg.workdir.trim_end_matches('/'))
        };
        let mut parts: Vec<&str> = Vec::new();
        for c in joined.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    async fn call(
        &self,
        path: &str,
        req: serde_json::Value,
        payload: Bytes,
    ) -> Result<files::Reply> {
        self.check_running()?;
        let r = self
            .helper
            .call(&self.shared.docker, self.id.as_str(), path, req, payload)
            .await;
        if let Err(e) = &r
            && e.kind() == SandboxErrorKind::Stopped
        {
            self.helper.reset().await;
        }
        r
    }

    /// One helper call for a batch of paths: `req` gets their resolved forms as `ps` (paths that
    /// do not resolve are left out; the reply splitters report them). `None` when the sandbox
    /// has no helper, or lost it on this call: the caller then goes path by path.
    async fn batch_call(
        &self,
        paths: &[String],
        mut req: serde_json::Value,
    ) -> Result<Option<(files::Reply, Vec<Result<String>>)>> {
        if self.helper.is_shell_only() || paths.is_empty() {
            return Ok(None);
        }
        let abs: Vec<Result<String>> = paths.iter().map(|p| self.abs(p)).collect();
        let ps: Vec<&str> = abs.iter().filter_map(|a| a.as_deref().ok()).collect();
        req["ps"] = json!(ps);
        match self.call(&paths[0], req, Bytes::new()).await {
            Ok(r) => Ok(Some((r, abs))),
            Err(_) if self.helper.is_shell_only() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &SandboxId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps(self.network)
    }

    fn workdir(&self) -> &str {
        &self.shared.cfg.workdir
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        let p = self.abs(path)?;
        let r = self
            .call(path, json!({"op": "stat", "p": p, "f": true}), Bytes::new())
            .await?;
        Ok(files::parse_stat(&r.head))
    }

    async fn lstat(&self, path: &str) -> Result<FileStat> {
        let p = self.abs(path)?;
        let r = self
            .call(path, json!({"op": "stat", "p": p}), Bytes::new())
            .await?;
        Ok(files::parse_stat(&r.head))
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        let p = self.abs(path)?;
        let r = self
            .call(path, json!({"op": "readlink", "p": p}), Bytes::new())
            .await?;
        Ok(r.head
            .get("t")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned())
    }

    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        let p = self.abs(path)?;
        let r = self
            .call(
                path,
                json!({"op": "read", "p": p, "max": max_bytes}),
                Bytes::new(),
            )
            .await?;
        Ok(r.data)
    }

    async fn read_files(
        &self,
        paths: &[String],
        max_bytes_each: u64,
    ) -> Result<Vec<Result<Bytes>>> {
        // One helper round trip for the whole batch (the `grep` tool reads a directory's small
        // files this way).
        let req = json!({"op": "readmany", "max": max_bytes_each});
        if let Some((r, abs)) = self.batch_call(paths, req).await? {
            return Ok(files::split_many(&r, paths, abs));
        }
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.read_file(p, Some(max_bytes_each)).await);
        }
        Ok(out)
    }

    async fn open_read(&self, path: &str) -> Result<FileReader> {
        const CHUNK: u64 = 256 * 1024;
        let p = self.abs(path)?;
        // The first chunk also checks the file exists and is regular.
        let first = self
            .call(
                path,
                json!({"op": "read", "p": p, "off": 0, "len": CHUNK}),
                Bytes::new(),
            )
            .await?;
        let size = first.head.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
        let me = DockerSandboxRef {
            docker: self.shared.docker.clone(),
            container: self.id.as_str().to_owned(),
        };
        let helper = self.helper.clone();
        let user_path = path.to_owned();
        let first_len = first.data.len() as u64;
        let rest = futures::stream::unfold(
            (first_len, first_len < CHUNK || first_len >= size),
            move |(off, done)| {
                let (me, helper, p, user_path) =
                    (me.clone(), helper.clone(), p.clone(), user_path.clone());
                async move {
                    if done {
                        return None;
                    }
                    let r = helper
                        .call(
                            &me.docker,
                            &me.container,
                            &user_path,
                            json!({"op": "read", "p": p, "off": off, "len": CHUNK}),
                            Bytes::new(),
                        )
                        .await;
                    match r {
                        Ok(r) => {
                            let n = r.data.len() as u64;
                            Some((Ok(r.data), (off + n, n < CHUNK)))
                        }
                        Err(e) => Some((Err(std::io::Error::from(e)), (off, true))),
                    }
                }
            },
        );
        let all = futures::stream::iter([Ok::<_, std::io::Error>(first.data)]).chain(rest);
        Ok(Box::pin(tokio_util::io::StreamReader::new(all)))
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        let p = self.abs(path)?;
        self.call(path, json!({"op": "write", "p": p}), data)
            .await?;
        Ok(())
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        let p = self.abs(path)?;
        self.call(path, json!({"op": "mkdirs", "p": p}), Bytes::new())
            .await?;
        Ok(())
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let p = self.abs(path)?;
        let r = self
            .call(path, json!({"op": "list", "p": p}), Bytes::new())
            .await?;
        Ok(files::parse_entries(&r.head, true))
    }

    async fn find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max_bytes_each: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        // Searched inside the helper: only the matching lines cross.
        let req =
            json!({"op": "findmany", "max": max_bytes_each, "needle": needle, "ml": max_line});
        if let Some((r, abs)) = self.batch_call(paths, req).await? {
            return Ok(files::split_found(&r, paths, abs));
        }
        Ok(self
            .read_files(paths, max_bytes_each)
            .await?
            .into_iter()
            .map(|r| r.map(|d| FoundLines::scan(&d, needle.as_bytes(), max_line)))
            .collect())
    }

    async fn search_tree(&self, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
        if self.helper.is_shell_only() {
            return Err(SandboxError::unsupported(
                "search_tree: no helper process in this sandbox",
            ));
        }
        let p = self.abs(root)?;
        let r = self
            .call(
                root,
                json!({
                    "op": "findtree", "p": p, "needle": needle, "max": opts.max_file_bytes,
                    "ml": opts.max_line, "skip": opts.skip_dirs, "files": opts.max_files,
                    "out": opts.max_output_bytes, "secs": opts.timeout.as_secs_f64(),
                }),
                Bytes::new(),
            )
            .await?;
        files::parse_tree(&r, root)
    }

    async fn read_dirs(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        if let Some((r, abs)) = self.batch_call(paths, json!({"op": "listmany"})).await? {
            return Ok(files::split_dirs(&r, paths, abs, true));
        }
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.read_dir(p).await);
        }
        Ok(out)
    }

    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        // The helper and the POSIX-tools fallback (`find`) both list in `readdir` order.
        if let Some((r, abs)) = self.batch_call(paths, json!({"op": "listmany"})).await? {
            return Ok(files::split_dirs(&r, paths, abs, false));
        }
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let listed = match self.abs(path) {
                Ok(p) => self
                    .call(path, json!({"op": "list", "p": p}), Bytes::new())
                    .await
                    .map(|r| files::parse_entries(&r.head, false)),
                Err(e) => Err(e),
            };
            out.push(listed);
        }
        Ok(out)
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let p = self.abs(path)?;
        self.call(
            path,
            json!({"op": "remove", "p": p, "r": recursive}),
            Bytes::new(),
        )
        .await?;
        Ok(())
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        self.check_running()?;
        let spare = if process::spare_can_run(&req) {
            self.spare.lock().unwrap_or_else(|p| p.into_inner()).take()
        } else {
            None
        };
        let req = match spare {
            Some(spare) => {
                match process::run_on_spare(
                    &self.shared.docker,
                    self.id.as_str(),
                    spare,
                    req,
                    &self.shared.cfg.workdir,
                )
                .await
                {
                    Ok(done) => return done,
                    // The spare is gone: a normal exec.
                    Err(req) => req,
                }
            }
            None => req,
        };
        process::run(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream> {
        self.check_running()?;
        process::stream(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn open_interactive(&self, req: ExecRequest) -> Result<InteractiveProcess> {
        self.check_running()?;
        process::interactive(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn execute(&self, _req: ExecuteRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported(
            "execute: the docker backend runs no in-process JavaScript engine; use bash (e.g. `node`) instead",
        ))
    }

    async fn export_workspace(&self) -> Result<ByteStream> {
        self.check_running()?;
        let dir = format!("{}/.", self.shared.cfg.workdir.trim_end_matches('/'));
        let s = self.shared.docker.download_from_container(
            self.id.as_str(),
            Some(DownloadFromContainerOptions { path: dir }),
        );
        Ok(Box::pin(
            s.map(|r| r.map_err(|e| map_docker_err(e, "export"))),
        ))
    }

    async fn workspace_entries(&self) -> Result<Vec<WorkspaceEntry>> {
        if self.helper.is_shell_only() {
            return Err(SandboxError::unsupported(
                "workspace_entries: no helper process in this sandbox",
            ));
        }
        let wd = self.shared.cfg.workdir.clone();
        let r = self
            .call(
                &wd,
                json!({"op": "tree", "p": wd, "depth": entries::MAX_DEPTH, "secs": 50}),
                Bytes::new(),
            )
            .await?;
        let count = r.head.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
        entries::parse(&r.data, count)
    }

    async fn import_workspace(&self, mut tar: ByteStream) -> Result<()> {
        self.check_running()?;
        let max = self.shared.cfg.max_import_bytes;
        let mut buf = Vec::new();
        while let Some(chunk) = tar.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > max {
                return Err(SandboxError::new(
                    SandboxErrorKind::TooLarge,
                    format!("workspace archive exceeds {max} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        let id = self
            .call(self.workdir(), json!({"op": "id"}), Bytes::new())
            .await?;
        let num = |k: &str| id.head.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let checked = archive::check_import(&buf, (num("uid"), num("gid")))?;
        drop(buf);
        let backend = DockerBackend {
            shared: self.shared.clone(),
        };
        backend
            .put_archive(self.id.as_str(), &self.shared.cfg.workdir, checked.tar)
            .await?;
        // Links the daemon refuses to unpack, made as the sandbox user (a few per call).
        for batch in checked.later_links.chunks(256) {
            let mut argv = vec![
                "sh".to_owned(),
                "-c".to_owned(),
                archive::LINK_SCRIPT.to_owned(),
                "sh".to_owned(),
            ];
            for (name, target) in batch {
                argv.push(target.clone());
                argv.push(name.clone());
            }
            let out = self.exec(ExecRequest::argv(argv)).await?;
            if out.exit_code != Some(0) {
                return Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    format!(
                        "making symlinks that leave the workspace failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn network_address(&self) -> Result<Option<IpAddr>> {
        self.check_running()?;
        egress::container_address(
            &self.shared.docker,
            self.id.as_str(),
            &self.shared.cfg.network,
        )
        .await
    }

    async fn status(&self) -> Result<SandboxStatus> {
        let info = self
            .shared
            .docker
            .inspect_container(self.id.as_str(), None)
            .await
            .map_err(|e| map_docker_err(e, "inspect"))?;
        let state = info.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => SandboxStatus::Running,
            Some(ContainerStateStatusEnum::CREATED)
            | Some(ContainerStateStatusEnum::RESTARTING) => SandboxStatus::Starting,
            Some(ContainerStateStatusEnum::DEAD) => SandboxStatus::Failed {
                reason: state.error.unwrap_or_else(|| "container is dead".into()),
            },
            Some(ContainerStateStatusEnum::EXITED) if state.oom_killed == Some(true) => {
                SandboxStatus::Failed {
                    reason: "out of memory".into(),
                }
            }
            _ => SandboxStatus::Stopped,
        })
    }

    async fn stop(&self) -> Result<()> {
        self.stopped.store(true, Ordering::Release);
        // Its stdin closes: it exits (if the container still runs).
        drop(self.spare.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.helper.reset().await;
        match self
            .shared
            .docker
            .stop_container(
                self.id.as_str(),
                Some(StopContainerOptions {
                    t: Some(2),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_docker_err(e, "stop")),
        }
    }
}

#[derive(Clone)]
struct DockerSandboxRef {
    docker: Docker,
    container: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_but_ids_are_not() {
        assert!(is_credential("ANTHROPIC_API_KEY"));
        assert!(is_credential("ANTHROPIC_ENVIRONMENT_KEY"));
        assert!(is_credential("ANTHROPIC_AUTH_TOKEN"));
        assert!(!is_credential("ANTHROPIC_SESSION_ID"));
        assert!(!is_credential("API_KEY"));
    }
}
