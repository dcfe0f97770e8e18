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
//!   "webhook": { "listen": "127.0.0.1:8080", "secret_env": "CMA_WEBHOOK_SECRET" }
//! }
//! ```
//!
//! Only `environment_id` is required. Secrets never live in the file: the environment key is read
//! from the variable `environment_key_env` names (default `ANTHROPIC_ENVIRONMENT_KEY`), the webhook
//! secret from `webhook.secret_env`. `base_url` defaults to `ANTHROPIC_BASE_URL` or the public
//! API. With `webhook`, verified deliveries (Standard Webhooks, `POST /webhooks`) wake the poll
//! loop. Sessions' skills are downloaded into their sandboxes and memory stores mounted and
//! synced every `memory_sync_interval_seconds` (at least 5; 0 disables memory) with local deletes
//! per `memory_sync_deletions` (`enabled`, `log_only`, `disabled`); memory folders outside the
//! workspace are backed by directories under `data_dir/memory`. Ctrl-C or SIGTERM stops claiming, gives running items 30 s, then releases them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::RuleSelector;
use cma_core::control::snapshots::WorkspaceSnapshots;
use cma_core::control::tools::ToolsetFactory;
use cma_core::runner::memory::{MemoryConfig, MemoryDeletions};
use cma_core::runner::session::RunnerConfig;
use cma_core::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookSecret};
use cma_sandbox::SandboxBackend;
use cma_sandbox::isolate::IsolateBackend;
use cma_store::state::{SqliteStateStore, StateStore};
use cma_store::{SnapshotConfig, SnapshotStore};
use serde::Deserialize;

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
    #[cfg(feature = "docker")]
    let mut docker_backend: Option<Arc<cma_sandbox::docker::DockerBackend>> = None;
    let backend: Arc<dyn SandboxBackend> = match config.backend.as_str() {
        "isolate" => Arc::new(
            IsolateBackend::new(dir.join("isolate"))
                .map_err(|e| format!("isolate backend under {}: {e}", dir.display()))?,
        ),
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
            docker_backend = Some(b.clone());
            b
        }
        other => {
            let available = if cfg!(feature = "docker") {
                "isolate, docker"
            } else {
                "isolate (docker needs the `docker` feature)"
            };
            return Err(format!(
                "unknown backend {other:?} (available: {available})"
            ));
        }
    };
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
    let mut host = SandboxHost::new(
        [backend],
        Arc::new(RuleSelector::new(config.backend.clone())),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            keep_warm: Duration::from_secs(config.keep_warm_seconds),
            memory_dir: Some(dir.join("memory")),
            ..SandboxHostConfig::default()
        },
    )
    .state_store(state.clone());
    if let Some(snapshots) = snapshots {
        host = host.with_snapshots(snapshots);
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
        "cma run: environment {} at {base_url}, backend {} under {}, concurrency {}",
        config.environment_id,
        config.backend,
        dir.display(),
        config.concurrency
    );

    let listener = match &config.webhook {
        Some(w) => Some(webhook_server(w, plane.clone()).await?),
        None => None,
    };

    let result = tokio::select! {
        r = plane.run() => r.map_err(|e| e.to_string()),
        () = shutdown_signal() => {
            eprintln!("cma run: shutting down (running items get {}s)", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    plane.shutdown(SHUTDOWN_GRACE).await;
    if let Some(task) = listener {
        task.abort();
    }
    #[cfg(feature = "docker")]
    if let Some(docker) = &docker_backend
        && config.docker_prestart > 0
        && let Err(e) = docker.close_pool().await
    {
        tracing::warn!(error = %e, "removing the docker warm pool failed; the next start removes it");
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
    eprintln!("cma run: webhooks on http://{}/webhooks", w.listen);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(socket, app).await {
            tracing::error!(error = %e, "webhook listener stopped");
        }
    }))
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
