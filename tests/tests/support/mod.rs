//! Shared set-up for the runner and control-plane tests: an in-process emulator, a client, the
//! isolate backend behind a `SandboxHost` with the official toolset, and helpers to claim items
//! and watch the runner's reports.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_core::client::{
    Client, ClientConfig, Credential, EnvironmentClient, Helper, PollParams, ReconnectPolicy,
};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{
    Emulator, EmulatorConfig, EnvironmentInfo, RequestRecord, Script, ScriptEnd, ScriptedCall,
    ToolResultRecord,
};
use cma_core::protocol::Work;
use cma_core::runner::session::{CallReport, RunnerConfig, SessionRunner};
use cma_sandbox::SandboxBackend;
use cma_sandbox::isolate::IsolateBackend;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Bound on every wait in these tests (they finish in a few seconds; this only catches hangs).
pub const WAIT: Duration = Duration::from_secs(20);
/// The idle grace the runners use (the scripts end with `end_turn` idles).
pub const MAX_IDLE: Duration = Duration::from_millis(300);

/// The worker id the runner's client sends.
pub const WORKER_ID: &str = "wrk-1";

/// An emulator with one environment and a client pointed at it.
pub struct Harness {
    pub emu: Emulator,
    pub env: EnvironmentInfo,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// Default lease TTL (60 s).
    pub async fn new() -> Self {
        Self::with_config(EmulatorConfig::default()).await
    }

    /// With this emulator configuration.
    pub async fn with_config(config: EmulatorConfig) -> Self {
        Self::with_env(config, "env_test", None).await
    }

    /// With a given environment id and key.
    pub async fn with_env(config: EmulatorConfig, env_id: &str, key: Option<&str>) -> Self {
        let emu = Emulator::start(config.keepalive(Duration::from_millis(200)))
            .await
            .expect("emulator starts");
        let env = emu
            .add_environment_with_key(env_id, env_id, key)
            .expect("environment");
        let client = Client::new(
            ClientConfig::builder()
                .base_url(emu.base_url())
                .worker_id(WORKER_ID)
                .request_timeout(Duration::from_secs(10))
                .build()
                .expect("client config"),
        )
        .expect("client");
        Self {
            emu,
            env,
            client,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The environment key as a credential.
    pub fn key(&self) -> Credential {
        Credential::environment_key(self.env.key.clone())
    }

    /// The work queue as the poll loop sees it (environment key, poller helper).
    pub fn queue(&self) -> EnvironmentClient {
        self.client
            .environment(self.env.id.clone(), self.key())
            .with_helper(Some(Helper::WorkPoller))
    }

    /// Poll (long) and ack one item, as the control plane's claim loop does.
    pub async fn claim(&self) -> Work {
        let queue = self.queue();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(w) = queue.poll(&PollParams::long_poll()).await.expect("poll") {
                queue.ack(&w.id).await.expect("ack");
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no work item was queued"
            );
        }
    }

    /// A runner with small idle grace and fast reconnects.
    pub fn runner(&self) -> SessionRunner {
        SessionRunner::new(self.client.clone(), self.env.id.clone(), self.key())
            .with_config(runner_config())
    }

    /// A scripted session.
    pub fn session(&self, calls: Vec<ScriptedCall>, end: ScriptEnd) -> String {
        self.emu
            .create_session(&self.env.id, Script::new(calls, end))
            .expect("session")
    }

    /// The isolate backend under this harness's temporary directory.
    pub fn isolate(&self) -> Arc<dyn SandboxBackend> {
        Arc::new(IsolateBackend::new(self.dir.path().join("isolate")).expect("isolate backend"))
    }

    /// A `SandboxHost` over the isolate backend with the official toolset (plus `factory`'s tools).
    pub fn host_with(&self, factory: ToolsetFactory) -> Arc<SandboxHost> {
        Arc::new(SandboxHost::from_parts(
            [self.isolate()],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(factory),
            SandboxHostConfig::default(),
        ))
    }

    /// A `SandboxHost` with the official toolset only.
    pub fn host(&self) -> Arc<SandboxHost> {
        self.host_with(ToolsetFactory::new())
    }

    /// Requests the emulator logged, restricted to those about `work_id` or its session, plus polls.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.emu.requests()
    }

    /// Results received for a session, in arrival order.
    pub fn results(&self, sid: &str) -> Vec<ToolResultRecord> {
        self.emu
            .tool_results()
            .into_iter()
            .filter(|r| r.session_id == sid)
            .collect()
    }

    /// Wait until the session has `n` results; panics after [`WAIT`].
    pub async fn wait_results(&self, sid: &str, n: usize) {
        let ok = self
            .emu
            .wait_for(WAIT, |e| {
                e.tool_results()
                    .iter()
                    .filter(|r| r.session_id == sid)
                    .count()
                    >= n
            })
            .await;
        assert!(
            ok,
            "session {sid} did not get {n} results: {:?}",
            self.results(sid)
        );
    }

    /// The ids of the session's events of type `kind`, in order.
    pub fn event_ids(&self, sid: &str, kind: &str) -> Vec<String> {
        self.emu
            .session_events(sid)
            .iter()
            .filter(|e| e["type"] == kind)
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Runner settings for tests: [`MAX_IDLE`], reconnects starting at 100 ms.
pub fn runner_config() -> RunnerConfig {
    RunnerConfig {
        max_idle: Some(MAX_IDLE),
        reconnect: ReconnectPolicy {
            backoff_start: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        },
        ..RunnerConfig::default()
    }
}

/// Collects the runner's call reports and lets a test wait for one.
#[derive(Clone)]
pub struct Reports {
    all: Arc<Mutex<Vec<CallReport>>>,
    tx: mpsc::UnboundedSender<CallReport>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<CallReport>>>,
}

impl Reports {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            all: Arc::default(),
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }

    /// The observer to give the runner.
    pub fn observer(&self) -> Arc<dyn cma_core::runner::session::RunnerObserver> {
        let all = self.all.clone();
        let tx = self.tx.clone();
        Arc::new(move |r: &CallReport| {
            all.lock().unwrap().push(r.clone());
            let _ = tx.send(r.clone());
        })
    }

    /// Every report so far.
    pub fn all(&self) -> Vec<CallReport> {
        self.all.lock().unwrap().clone()
    }

    /// Wait for the next report matching `pred`; panics after [`WAIT`].
    pub async fn wait(&self, mut pred: impl FnMut(&CallReport) -> bool) -> CallReport {
        let mut rx = self.rx.lock().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) if pred(&r) => return r,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no matching runner report; saw {:?}", self.all()),
            }
        }
    }
}

/// A `write` call.
pub fn write(path: &str, content: &str) -> ScriptedCall {
    ScriptedCall::tool("write", json!({"file_path": path, "content": content}))
}

/// A `read` call.
pub fn read(path: &str) -> ScriptedCall {
    ScriptedCall::tool("read", json!({"file_path": path}))
}

/// The single text of a result's content.
pub fn text(r: &ToolResultRecord) -> String {
    match &r.content {
        Value::Array(blocks) if blocks.len() == 1 => {
            blocks[0]["text"].as_str().unwrap_or_default().to_owned()
        }
        other => panic!("expected one text block, got {other}"),
    }
}

/// Requests about one work item (its heartbeats, ack, stop) and one session.
pub fn about<'a>(reqs: &'a [RequestRecord], work_id: &str, sid: &str) -> Vec<&'a RequestRecord> {
    let work = format!("/work/{work_id}/");
    let sess = format!("/v1/sessions/{sid}");
    reqs.iter()
        .filter(|r| r.path.contains(&work) || r.path.starts_with(&sess))
        .collect()
}

/// Stop calls made for a work item.
pub fn stops<'a>(reqs: &'a [RequestRecord], work_id: &str) -> Vec<&'a RequestRecord> {
    let tail = format!("/work/{work_id}/stop");
    reqs.iter().filter(|r| r.path.ends_with(&tail)).collect()
}
