//! `cma run`: run a control plane for one environment against the real API or an emulator.
//!
//! ```text
//! ANTHROPIC_ENVIRONMENT_KEY=envkey_… cma run --config cma.json
//! ```
//!
//! The configuration file is JSON (unknown fields are rejected):
//!
//! ```json
//! {
//!   "environment_id": "env_…",
//!   "environment_key_env": "ANTHROPIC_ENVIRONMENT_KEY",
//!   "base_url": "http://127.0.0.1:8787",
//!   "backend": "isolate",
//!   "data_dir": "/var/lib/cma",
//!   "concurrency": 4,
//!   "keep_warm_seconds": 180,
//!   "max_idle_seconds": 60,
//!   "memory_sync_interval_seconds": 15,
//!   "memory_sync_deletions": "enabled",
//!   "snapshot_keep_last": 2,
//!   "snapshot_keep_within_seconds": 86400,
//!   "snapshot_retention_interval_seconds": 3600,
//!   "placement": {
//!     "profiles": { "big": { "backend": "docker", "image": "cma-sandbox:full", "cpus": 4 } },
//!     "rules": [ { "agent_ids": ["agent_01Build"], "profile": "big" } ]
//!   },
//!   "webhook": { "listen": "127.0.0.1:8080", "secret_env": "CMA_WEBHOOK_SECRET",
//!                "fallback_poll_seconds": 30 },
//!   "egress": { "policies": "/etc/cma/egress.json", "default": "deny",
//!               "secrets": { "env": ["GITHUB_TOKEN"], "dir": "/run/secrets/cma" } }
//! }
//! ```
//!
//! Only `environment_id` is required. Secrets never live in the file: the environment key is read
//! from the variable `environment_key_env` names (default `ANTHROPIC_ENVIRONMENT_KEY`), the webhook
//! secret from `webhook.secret_env`. `base_url` defaults to `ANTHROPIC_BASE_URL` or the public
//! API. Polls carry `Anthropic-Worker-ID`: `worker_id`, else `<hostname>-<12 hex digits>` (the
//! official worker's default, one per process). Without `webhook` the plane long-polls; with it,
//! the plane drains the queue at start, on every verified delivery (Standard Webhooks, `POST
//! /webhooks`; deliveries during a drain coalesce into one more drain) and every
//! `webhook.fallback_poll_seconds` (default 30) in case a delivery was lost. The webhook listener
//! bounds its clients (`cma_core::listener`): at most `webhook.max_connections` (default 256)
//! connections, request heads within 10 s, bodies (1 MiB at most) within 30 s, 60 s idle
//! between requests — a slow or silent client cannot hold the process. Snapshots are
//! pruned every `snapshot_retention_interval_seconds` (default 3600): per session the newest
//! `snapshot_keep_last` (default 2; 0 keeps everything and turns retention off) and those
//! younger than `snapshot_keep_within_seconds` (default 86400) are kept, then unused chunks are
//! collected. `placement` maps agents to backends and sandbox profiles (image, cpus,
//! memory_bytes, disk_bytes, pids, env; see `cma_core::control::rules`); sessions no rule
//! matches go to `backend`. Warm sandboxes are released `keep_warm_seconds` after their item. Sessions' skills are downloaded into their sandboxes and memory stores mounted and
//! synced every `memory_sync_interval_seconds` (at least 5; 0 disables memory) with local deletes
//! per `memory_sync_deletions` (`enabled`, `log_only`, `disabled`); memory folders outside the
//! workspace are backed by directories under `data_dir/memory`. `egress` gives sandboxes network
//! through the egress proxy under per-session policies (see the `egress` module); without it they
//! have none. Ctrl-C or SIGTERM stops claiming, gives running items 30 s, then releases them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ClaimMode, ControlPlane, ControlPlaneConfig};
use cma_core::control::select::{PlacementRules, RuleSelector};
use cma_core::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
use cma_core::control::tools::ToolsetFactory;
use cma_core::listener::{Listener, ListenerLimits};
use cma_core::runner::memory::{MemoryConfig, MemoryDeletions};
use cma_core::runner::session::RunnerConfig;
use cma_core::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookSecret};
use cma_sandbox::SandboxBackend;
use cma_sandbox::isolate::IsolateBackend;
use cma_store::state::{SqliteStateStore, StateStore};
use cma_store::{SnapshotConfig, SnapshotStore};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How long running items get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Arguments of `cma run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (JSON; see `cma run --help` and the module docs).
    #[arg(long)]
    config: PathBuf,
}

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The environment whose work queue is polled.
    pub environment_id: String,
    /// The variable holding the environment key.
    #[serde(default = "default_key_env")]
    pub environment_key_env: String,
    /// API base URL (default: `ANTHROPIC_BASE_URL`, else the public API).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Sandbox backend: `isolate`, or `docker` when built with the `docker` feature.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Image of Docker sandboxes (it must exist locally; never pulled).
    #[serde(default)]
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub docker_image: Option<String>,
    /// This control plane's name on the Docker engine (a label on its containers): `list`,
    /// recovery and orphan sweeps only touch containers with it. Default `default`.
    #[serde(default)]
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub docker_instance: Option<String>,
    /// Docker warm pool: this many started, isolated, unassigned containers are kept ready, so a
    /// new session's sandbox and its first command take tens of milliseconds instead of
    /// hundreds. Default 0 (no pool). Claims are recorded under `<data_dir>/docker`.
    #[serde(default)]
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub docker_prestart: usize,
    /// Where workspace snapshots go: an object-store URL (`file:///dir`, `memory:///`, or with
    /// `cma-store`'s features `s3://bucket/prefix`, `gs://…`, `az://…`; credentials from the
    /// usual environment variables of that store); default `<data_dir>/snapshots`; `"off"` keeps
    /// no snapshots (a session's files then live only as long as its warm sandbox).
    #[serde(default)]
    pub snapshots: Option<String>,
    /// The SQLite file recording sessions, sandboxes and webhook ids (default
    /// `<data_dir>/state.sqlite`); on start, sandboxes it knows are re-adopted or destroyed.
    #[serde(default)]
    pub state_db: Option<PathBuf>,
    /// Where sandboxes and state live (default: `$XDG_DATA_HOME/cma` or `~/.local/share/cma`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Work items handled at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a session's sandbox stays warm after its work item ends.
    #[serde(default = "default_keep_warm")]
    pub keep_warm_seconds: u64,
    /// Idle time (after an end-of-turn idle) after which a work item is released; 0 = never.
    #[serde(default = "default_max_idle")]
    pub max_idle_seconds: u64,
    /// Listen for webhooks.
    #[serde(default)]
    pub webhook: Option<WebhookListen>,
    /// Memory-store sync cadence in seconds (at least 5); 0 disables memory stores.
    #[serde(default = "default_memory_sync")]
    pub memory_sync_interval_seconds: u64,
    /// Whether a memory file deleted locally deletes its memory: `enabled`, `log_only`, `disabled`.
    #[serde(default = "default_memory_deletions")]
    pub memory_sync_deletions: String,
    /// `Anthropic-Worker-ID` of polls (default `<hostname>-<12 hex digits>`, one per process).
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Newest snapshots kept per session; 0 keeps every snapshot (no retention).
    #[serde(default = "default_keep_last")]
    pub snapshot_keep_last: usize,
    /// Snapshots younger than this are kept whatever their rank.
    #[serde(default = "default_keep_within")]
    pub snapshot_keep_within_seconds: u64,
    /// How often retention and chunk collection run (at least 1).
    #[serde(default = "default_retention_interval")]
    pub snapshot_retention_interval_seconds: u64,
    /// Agents → backends and sandbox profiles.
    #[serde(default)]
    pub placement: Option<PlacementRules>,
    /// What sandboxes may reach (default: nothing).
    #[serde(default)]
    pub egress: Option<crate::egress::EgressConfig>,
}

/// The webhook listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookListen {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The variable holding the signing secret (`whsec_…`).
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// The fallback drain's interval, in case a delivery is lost (at least 1).
    #[serde(default = "default_fallback_poll")]
    pub fallback_poll_seconds: u64,
    /// Connections open at once (default 256; at the cap a new connection replaces the one that
    /// has waited on its client the longest).
    #[serde(default = "default_webhook_connections")]
    pub max_connections: usize,
}

fn default_webhook_connections() -> usize {
    256
}

fn default_key_env() -> String {
    "ANTHROPIC_ENVIRONMENT_KEY".into()
}
fn default_backend() -> String {
    "isolate".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_keep_warm() -> u64 {
    180
}
fn default_memory_sync() -> u64 {
    15
}
fn default_memory_deletions() -> String {
    "enabled".into()
}

fn memory_config(config: &RunConfig) -> Result<MemoryConfig, String> {
    let deletions = match config.memory_sync_deletions.as_str() {
        "enabled" => MemoryDeletions::Enabled,
        "log_only" => MemoryDeletions::LogOnly,
        "disabled" => MemoryDeletions::Disabled,
        other => {
            return Err(format!(
                "memory_sync_deletions must be enabled, log_only or disabled, not {other:?}"
            ));
        }
    };
    let interval = (config.memory_sync_interval_seconds > 0)
        .then(|| Duration::from_secs(config.memory_sync_interval_seconds));
    Ok(MemoryConfig::new(interval)
        .map_err(|e| e.to_string())?
        .with_deletions(deletions))
}

fn default_max_idle() -> u64 {
    60
}
fn default_keep_last() -> usize {
    SnapshotRetention::default().keep_last
}
fn default_keep_within() -> u64 {
    SnapshotRetention::default().keep_within.as_secs()
}
fn default_retention_interval() -> u64 {
    SnapshotRetention::default().interval.as_secs()
}
fn default_fallback_poll() -> u64 {
    30
}

/// The backends this build can run.
fn available_backends() -> &'static [&'static str] {
    if cfg!(feature = "docker") {
        &["isolate", "docker"]
    } else {
        &["isolate"]
    }
}

/// The snapshot retention policy, `None` when `snapshot_keep_last` is 0.
fn retention(config: &RunConfig) -> Result<Option<SnapshotRetention>, String> {
    if config.snapshot_keep_last == 0 {
        return Ok(None);
    }
    if config.snapshot_retention_interval_seconds == 0 {
        return Err("snapshot_retention_interval_seconds must be at least 1".into());
    }
    let policy = SnapshotRetention {
        keep_last: config.snapshot_keep_last,
        keep_within: Duration::from_secs(config.snapshot_keep_within_seconds),
        interval: Duration::from_secs(config.snapshot_retention_interval_seconds),
    };
    policy.validate().map_err(|e| e.to_string())?;
    Ok(Some(policy))
}

/// The backends the configuration uses: `backend` and every placement profile's.
fn used_backends(config: &RunConfig) -> Vec<String> {
    let mut names = vec![config.backend.clone()];
    if let Some(p) = &config.placement {
        for profile in p.profiles.values() {
            if !names.contains(&profile.backend) {
                names.push(profile.backend.clone());
            }
        }
    }
    names
}
fn default_secret_env() -> String {
    "CMA_WEBHOOK_SECRET".into()
}

impl RunConfig {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(format!("{}: larger than 1 MiB", path.display()));
        }
        let config: Self =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if config.concurrency == 0 {
            return Err(format!(
                "{}: concurrency must be at least 1",
                path.display()
            ));
        }
        memory_config(&config).map_err(|e| format!("{}: {e}", path.display()))?;
        retention(&config).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(rules) = &config.placement {
            rules
                .validate(available_backends())
                .map_err(|e| format!("{}: placement.{e}", path.display()))?;
        }
        if !available_backends().contains(&config.backend.as_str()) {
            return Err(format!(
                "{}: unknown backend {:?} (available: {})",
                path.display(),
                config.backend,
                available_backends().join(", ")
            ));
        }
        if config
            .webhook
            .as_ref()
            .is_some_and(|w| w.fallback_poll_seconds == 0)
        {
            return Err(format!(
                "{}: webhook.fallback_poll_seconds must be at least 1",
                path.display()
            ));
        }
        if let Some(egress) = &config.egress {
            let mut reserved = vec![config.environment_key_env.as_str()];
            if let Some(w) = &config.webhook {
                reserved.push(w.secret_env.as_str());
            }
            egress
                .validate(&reserved)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(id) = &config.worker_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "{}: worker_id must be non-empty visible ASCII",
                path.display()
            ));
        }
        Ok(config)
    }
}

fn data_dir(config: &RunConfig) -> PathBuf {
    if let Some(d) = &config.data_dir {
        return d.clone();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("cma");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/cma"),
        None => PathBuf::from("cma-data"),
    }
}

fn env_var(name: &str, what: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{what}: set the environment variable {name}")),
    }
}

/// Run `cma run`.
pub fn run(args: Args) -> ExitCode {
    let config = match RunConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cma run: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cma run: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cma run: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: RunConfig) -> Result<(), String> {
    let key = env_var(&config.environment_key_env, "the environment key")?;
    let mut client_config = ClientConfig::builder_from_env();
    if let Some(url) = &config.base_url {
        client_config = client_config.base_url(url.clone());
    }
    let client_config = client_config.build().map_err(|e| e.to_string())?;
    let base_url = client_config.base_url().to_owned();
    let client = Client::new(client_config).map_err(|e| e.to_string())?;

    let dir = data_dir(&config);
    let state_path = config
        .state_db
        .clone()
        .unwrap_or_else(|| dir.join("state.sqlite"));
    if let Some(parent) = state_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("state directory {}: {e}", parent.display()))?;
    }
    let state: Arc<dyn StateStore> = Arc::new(
        SqliteStateStore::open(&state_path)
            .await
            .map_err(|e| format!("state store {}: {e}", state_path.display()))?,
    );
    let egress = config
        .egress
        .as_ref()
        .map(|c| crate::egress::Egress::start(c, state.clone()))
        .transpose()?;
    #[cfg(feature = "docker")]
    let mut docker_backend: Option<Arc<cma_sandbox::docker::DockerBackend>> = None;
    #[cfg(feature = "docker")]
    let mut egress_port: Option<u16> = None;
    let mut backends: Vec<Arc<dyn SandboxBackend>> = Vec::new();
    for name in used_backends(&config) {
        let backend: Arc<dyn SandboxBackend> = match name.as_str() {
            "isolate" => {
                let mut isolate = IsolateBackend::new(dir.join("isolate"))
                    .map_err(|e| format!("isolate backend under {}: {e}", dir.display()))?;
                if let Some(egress) = &egress {
                    egress.wiring.in_process_for("isolate");
                    isolate = isolate.with_egress(egress.wiring.isolate_hook());
                }
                Arc::new(isolate)
            }
            #[cfg(feature = "docker")]
            "docker" => {
                let image = config
                    .docker_image
                    .clone()
                    .ok_or("backend docker: set docker_image (a local image)")?;
                let mut docker = cma_sandbox::docker::DockerConfig::new(image);
                if let Some(instance) = &config.docker_instance {
                    docker.instance = instance.clone();
                }
                // Kept across restarts: pool claims live here.
                docker.state_dir = dir.join("docker");
                docker.prestart = config.docker_prestart;
                let b = Arc::new(
                    cma_sandbox::docker::DockerBackend::connect(docker)
                        .await
                        .map_err(|e| format!("docker backend: {e}"))?,
                );
                if let Some(egress) = &egress {
                    let gateway = b.gateway().ok_or(
                        "docker backend: the sandbox network has no gateway for the egress proxy",
                    )?;
                    let bound = egress
                        .wiring
                        .listen_for(
                            "docker",
                            SocketAddr::new(
                                gateway,
                                config.egress.as_ref().map_or(0, |e| e.docker_port),
                            ),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    egress_port = Some(bound.port());
                    tracing::info!(%bound, "egress proxy listening for docker sandboxes");
                }
                docker_backend = Some(b.clone());
                b
            }
            other => {
                return Err(format!(
                    "unknown backend {other:?} (available: {})",
                    available_backends().join(", ")
                ));
            }
        };
        backends.push(backend);
    }
    let snapshots: Option<Arc<dyn WorkspaceSnapshots>> = match config.snapshots.as_deref() {
        Some("off") => None,
        Some(url) => Some(Arc::new(
            SnapshotStore::from_url(
                url,
                std::iter::empty::<(&str, &str)>(),
                SnapshotConfig::default(),
            )
            .map_err(|e| format!("snapshot store {url}: {e}"))?,
        )),
        None => Some(Arc::new(
            SnapshotStore::local(dir.join("snapshots"), SnapshotConfig::default())
                .map_err(|e| format!("snapshot store under {}: {e}", dir.display()))?,
        )),
    };
    let mut selector = RuleSelector::new(config.backend.clone());
    if let Some(rules) = &config.placement {
        selector = selector
            .with_rules(rules, available_backends())
            .map_err(|e| format!("placement.{e}"))?;
    }
    let mut tools = ToolsetFactory::new();
    if let (Some(e), Some(c)) = (&egress, &config.egress)
        && c.call_service
    {
        tools = tools.with_call_service(e.wiring.clone());
    }
    let mut host = SandboxHost::from_parts(
        backends,
        Arc::new(selector),
        Arc::new(tools),
        SandboxHostConfig {
            keep_warm: Duration::from_secs(config.keep_warm_seconds),
            memory_dir: Some(dir.join("memory")),
            ..SandboxHostConfig::default()
        },
    )
    .state_store(state.clone());
    if let Some(egress) = &egress {
        host = host.with_egress(egress.wiring.clone());
    }
    if let Some(snapshots) = snapshots {
        host = host.with_snapshots(snapshots);
        if let Some(policy) = retention(&config)? {
            host = host
                .with_snapshot_retention(policy)
                .map_err(|e| format!("snapshot retention: {e}"))?;
        }
    }
    let host = Arc::new(host);
    let recovered = host.recover().await.map_err(|e| e.to_string())?;
    tracing::info!(?recovered, "recovered from the state store");
    #[cfg(feature = "docker")]
    if let Some(docker) = &docker_backend
        && config.docker_prestart > 0
    {
        let removed = docker
            .start_pool()
            .await
            .map_err(|e| format!("docker warm pool: {e}"))?;
        // Ready before the first claim, so the first sessions get pool sandboxes too.
        docker
            .fill_pool()
            .await
            .map_err(|e| format!("docker warm pool: {e}"))?;
        tracing::info!(
            removed,
            size = config.docker_prestart,
            "docker warm pool started"
        );
    }
    let plane_config = ControlPlaneConfig {
        concurrency: config.concurrency,
        runner: RunnerConfig {
            max_idle: (config.max_idle_seconds > 0)
                .then(|| Duration::from_secs(config.max_idle_seconds)),
            memory: memory_config(&config)?,
            ..RunnerConfig::default()
        },
        worker_id: config.worker_id.clone(),
        claim: match &config.webhook {
            None => ClaimMode::LongPoll,
            Some(w) => ClaimMode::Webhooks {
                fallback_poll: Duration::from_secs(w.fallback_poll_seconds),
            },
        },
        ..ControlPlaneConfig::default()
    };
    let plane = ControlPlane::builder(
        client,
        config.environment_id.clone(),
        Credential::environment_key(key),
        host,
    )
    .config(plane_config)
    .state_store(state)
    .on_item(|report| match &report.result {
        Ok(o) => tracing::info!(work_id = %report.work.id, results = o.results_posted, lease_end = ?o.lease_end, "item done"),
        Err(e) => tracing::warn!(work_id = %report.work.id, error = %e, "item failed"),
    })
    .build()
    .map_err(|e| e.to_string())?;
    eprintln!(
        "cma run: environment {} at {base_url}, backend {} under {}, concurrency {}, worker id {}",
        config.environment_id,
        config.backend,
        dir.display(),
        config.concurrency,
        plane.worker_id()
    );

    let stop_listening = CancellationToken::new();
    let listener = match &config.webhook {
        Some(w) => Some(webhook_server(w, plane.clone(), stop_listening.clone()).await?),
        None => None,
    };

    let result = tokio::select! {
        r = plane.run() => r.map_err(|e| e.to_string()),
        () = shutdown_signal() => {
            eprintln!("cma run: shutting down (running items get {}s)", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    stop_listening.cancel();
    plane.shutdown(SHUTDOWN_GRACE).await;
    if let Some(task) = listener
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the webhook listener task failed");
    }
    #[cfg(feature = "docker")]
    if let Some(docker) = &docker_backend
        && config.docker_prestart > 0
        && let Err(e) = docker.close_pool().await
    {
        tracing::warn!(error = %e, "removing the docker warm pool failed; the next start removes it");
    }
    if let Some(egress) = &egress {
        egress.shutdown();
    }
    #[cfg(feature = "docker")]
    if let (Some(docker), Some(port)) = (&docker_backend, egress_port)
        && let Err(e) = docker.close_egress_port(port).await
    {
        tracing::warn!(error = %e, "closing the egress port in the host firewall failed");
    }
    let stats = plane.stats();
    eprintln!(
        "cma run: {} item(s) claimed, {} finished, {} failed",
        stats.claimed, stats.finished, stats.failed
    );
    result
}

async fn webhook_server(
    w: &WebhookListen,
    plane: ControlPlane,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use axum::routing::post;
    use axum::{Extension, Router};

    let secret = env_var(&w.secret_env, "the webhook secret")?;
    let secret = WebhookSecret::parse(&secret).map_err(|e| format!("{}: {e}", w.secret_env))?;
    let app = Router::new()
        .route(
            "/webhooks",
            post(move |Extension(event): Extension<WebhookEvent>| {
                let plane = plane.clone();
                async move {
                    let action = plane.on_webhook(&event).await;
                    tracing::debug!(webhook_id = %event.id, ?action, "webhook");
                    "ok"
                }
            }),
        )
        .layer(VerifyLayer::new(Verifier::new(secret)));
    let socket = tokio::net::TcpListener::bind(w.listen)
        .await
        .map_err(|e| format!("webhook listener {}: {e}", w.listen))?;
    let limits = ListenerLimits::default().max_connections(w.max_connections);
    let listener = Listener::new(socket, limits).map_err(|e| format!("webhook listener: {e}"))?;
    eprintln!("cma run: webhooks on http://{}/webhooks", w.listen);
    let stop = shutdown.clone();
    Ok(tokio::spawn(async move { listener.serve(app, stop).await }))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
