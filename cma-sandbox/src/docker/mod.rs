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
mod backend;
mod config;
mod egress;
mod entries;
mod fileops;
mod files;
mod limits;
mod net;
mod pool;
mod posix;
mod privilege;
mod process;
mod reply;
mod results;
mod sandbox;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use tokio::sync::Mutex;

use crate::backend::{Sandbox, SandboxBackend};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::{Capabilities, SandboxId, SandboxSpec};

pub use config::DockerConfig;
pub use pool::{LABEL_POOL, PoolStats};
pub use privilege::FALLBACK_USER;

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
        privilege::private_dir(&cfg.state_dir).map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::Io,
                "docker: cannot create the state directory (private to this user)",
            )
            .with_source(e)
        })?;
        let resolv_conf = cfg.state_dir.join("resolv.conf");
        // Readable by the sandbox's user (it is bind-mounted as its /etc/resolv.conf); it holds
        // nothing private.
        privilege::write_file(
            &resolv_conf,
            b"# cma sandbox: no resolver (all traffic goes through the egress proxy)\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            0o644,
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

        let (user, fallback) = privilege::effective_user(cfg.user.as_deref(), &facts.user);
        let (binds, mounts) = privilege::host_mounts(spec, &self.shared.resolv_conf, &user)?;

        let memory = spec.memory_bytes.unwrap_or(cfg.memory_bytes);
        let memory = i64::try_from(memory).unwrap_or(i64::MAX);
        let cpus = spec.cpus.unwrap_or(cfg.cpus);
        let pids = i64::from(spec.pids.unwrap_or(cfg.pids));
        let host_config = HostConfig {
            binds: Some(binds),
            mounts: (!mounts.is_empty()).then_some(mounts),
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
            let rel = cfg.workdir.trim_start_matches('/');
            if fallback {
                // The image would have run as root: the workdir is given to the fallback user.
                let (uid, gid) = privilege::FALLBACK_IDS;
                let tar = archive::single_dir_tar_owned(rel, 0o755, uid, gid)?;
                self.put_archive(name, "/", tar).await?;
            } else if facts.workdir != cfg.workdir {
                // The image may lack the workdir: make it writable by any user (the engine
                // cannot chown to a user name it would have to look up in the image).
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
