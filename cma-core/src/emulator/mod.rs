//! A local Claude Managed Agents server on loopback (docs/protocol.md §9), with scripted agents.
//!
//! The emulator speaks the wire protocol the official SDK 2.10.0 worker expects: environments
//! (§2.2), the work queue with pending items, reclaim, per-item secrets and leases (§2.1, §3),
//! session retrieval, event history, event sending and the SSE event stream (§4), signed webhooks
//! (§7) and error bodies with `request_id` (§1.5). It owns nothing outside this process: state is
//! in memory, bounded, and lost at shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd, ScriptedCall};
//! use serde_json::json;
//!
//! let emu = Emulator::start(EmulatorConfig::default()).await?;
//! let env = emu.add_environment("env_demo", "demo")?;
//! let sid = emu.create_session(&env.id, Script::new(
//!     vec![ScriptedCall::tool("bash", json!({"command": "echo hi"}))],
//!     ScriptEnd::Terminate,
//! ))?;
//! println!("ANTHROPIC_BASE_URL={} key={} session={sid}", emu.base_url(), env.key);
//! // … run a worker against it, then:
//! let results = emu.tool_results();
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Behaviour worth knowing
//!
//! * **Auth** (§1.3): `Authorization: Bearer <credential>` or `x-api-key`. The API key serves the
//!   control-plane calls (environments, `work/{id}` retrieve/update, `work/stats`, `POST
//!   /v1/sessions`, `DELETE /v1/sessions/{id}`), the environment key serves `poll`, `ack` and
//!   `GET …/work`; `heartbeat` takes the environment key or that item's sessions token; `stop`
//!   takes any of the three. Session endpoints take the API key, the session's environment key or
//!   a sessions token of the session's work. Missing, unknown or wrong-kind credentials get 401
//!   `authentication_error`. A missing `anthropic-beta: managed-agents-2026-04-01` gets 400.
//! * **Poll** (§2.1): `block_ms` must be ≥ 1 (0 ⇒ 400); values above 999 are **capped** at 999.
//!   Without `block_ms` the poll does not block. An empty queue answers `200` JSON `null`. A
//!   polled item is *pending*: it is handed out again only after `reclaim_older_than_ms` (default
//!   5000, configurable) without an ack. Each poll mints a fresh sessions token in `secret`.
//!   `work/stats` counts a polled item as `pending` until the default reclaim delay has passed,
//!   then as `depth` again; `workers_polling` counts distinct `Anthropic-Worker-ID`s of the last
//!   30 s. A re-queued item (lease expiry) goes to the back of the queue.
//! * **Strict mode** ([`EmulatorConfig::strict`], scenario `"strict": true`): a poll without
//!   `Anthropic-Worker-ID` gets 400 `invalid_request_error` with code `worker_id_required` and
//!   [`STRICT_WORKER_ID_MESSAGE`], so a worker that would be invisible in `workers_polling` fails
//!   loudly. Off by default: the real API serves such polls.
//! * **Ack** moves `queued → starting`; acking an item that is not queued is a 409.
//! * **Heartbeat** (§3.2): `NO_HEARTBEAT` claims an item that has no heartbeat yet (`starting →
//!   active`); otherwise the value must equal the stored `last_heartbeat` exactly (microsecond
//!   RFC 3339 stamps, unique per beat), else 412 `heartbeat_precondition_failed` with the real
//!   `current_state`. Omitting `expected_last_heartbeat` skips the comparison. `stopping` items
//!   answer 200 with `state:"stopping"` without comparing; `stopped` ones 200 with
//!   `lease_extended:false`; queued (re-queued) ones 412. `desired_ttl_seconds` is honoured
//!   (clamped to 1..=3600).
//! * **Leases**: a `starting`/`active` item whose lease (TTL from ack or the last heartbeat) runs
//!   out goes back to `queued` (no heartbeat, no ack); a `stopping` one becomes `stopped`.
//! * **Stop**: `{}` moves a live item to `stopping` (a queued one straight to `stopped`),
//!   `{"force":true}` to `stopped`; a stopped item answers 409.
//! * **Sessions**: `POST /v1/sessions` (API key) takes `{"environment_id": "env_…",
//!   "metadata"?: {…}, "title"?: …, "emulator_script"?: {"calls": […], "end": "idle"|"terminate",
//!   "agent_id"?: "agent_…"}}`
//!   (other fields are ignored) and queues a work item. A `user.message` sent to a session whose
//!   work item is stopped queues a new one.
//! * **Events**: `GET /events` supports `limit` (≤ 1000, default 100), `page`, `order`
//!   (`asc`/`desc`), `types[]` and `created_at[gt|gte|lt|lte]`. `POST /events` accepts 1–100
//!   `user.*`/`system.message` events; results must name a tool-use event of the session.
//! * **Stream**: live events only (history is for reconciling), `event: <type>` on every frame,
//!   `event: ping` keep-alives, an opening `: stream opened` comment so headers go out at once; it
//!   ends after `session.status_terminated`/`session.deleted`. Connecting to a terminated session
//!   replays its terminal event and closes.
//! * **Skills** (docs/protocol.md §4): `GET /v1/skills/{id}/versions/{version}` (`latest` resolves to
//!   the newest version) and `…/versions/{version_id}/content` (the archive bytes as added: zip,
//!   tar or tar.gz); any valid credential, no beta required. Add them with
//!   [`Emulator::add_skill`] / [`Emulator::add_skill_files`] or the scenario's `skills`.
//! * **Memory stores** (beta `agent-memory-2026-07-22` or `managed-agents-2026-04-01`):
//!   `…/memory_stores/{id}/memories` list (`view=basic|full`, `limit` 1–100 and at most 20 with
//!   `full`, `page`, `path_prefix`, `depth` rollups into `memory_prefix` items; ordered by path),
//!   retrieve (`view`, default `full`), create `{path, content}`, update `{content?, path?,
//!   precondition?}`, delete `?expected_content_sha256=`. A failed `content_sha256` precondition
//!   is a 409 `memory_precondition_failed_error`, a create or rename onto a taken path a 409
//!   `memory_path_conflict_error`, both with `x-should-retry: false`. Paths follow the SDK's rules
//!   (leading `/`, 1–20 non-empty segments, no `.`/`..`, ≤ 1024 bytes); content ≤ 100 kB (413).
//!   The API key reaches every store; a sessions token only its session's stores (403 otherwise),
//!   read-only attachments refuse writes (403); the environment key is refused (401). Inspect and
//!   change stores with [`Emulator::memories`], [`Emulator::put_memory`],
//!   [`Emulator::delete_memory`]; [`Emulator::race_memory_after_list`] stages a concurrent write
//!   that lands right after the next listing. Sessions get skills and stores with
//!   [`Emulator::create_session_with`] or the scenario session's `skills` / `memory_stores`.
//! * **Request log**: every request is logged on arrival ([`Emulator::requests`]: method, path,
//!   query, credential kind, `x-stainless-helper`, `Anthropic-Worker-ID`, the body of `stop`
//!   calls, and the status once answered), the newest [`MAX_LOGGED_REQUESTS`] kept.
//! * **Listener**: served by [`crate::listener::Listener`] under
//!   [`EmulatorConfig::listener`] (a connection cap that evicts the clients waiting longest,
//!   10 s for a request head, 2 min idle, 1 min for a body, no bound on streams), so a slow or
//!   silent client cannot wedge it.
//! * **Limits**: request bodies up to [`EmulatorConfig::max_body_bytes`] (413 beyond), at most
//!   [`EmulatorConfig::max_events_per_session`] events and
//!   [`EmulatorConfig::max_event_bytes_per_session`] bytes of events per session (oldest dropped), [`MAX_RECORDS`] recorded results and
//!   [`MAX_RECORD_BYTES`] of them in memory (the record file keeps everything), [`MAX_WORK_ITEMS`] work items (oldest stopped ones forgotten) and
//!   [`MAX_SESSIONS`] sessions (oldest ended ones forgotten; 429 when all are live).
//!
//! # Scenario file
//!
//! [`Scenario`] (JSON, unknown fields rejected). Fault endpoint names are those of [`Endpoint`]:
//! `poll, ack, heartbeat, stop, work_list, work_get, work_update, work_stats, environment_create,
//! environment_get, environment_update, environment_list, environment_delete,
//! environment_archive, session_create, session_get, session_delete, events_list, events_send,
//! stream, skill_version, skill_content, memory_list, memory_get, memory_create, memory_update,
//! memory_delete`. A fault's `reply` ([`Reply`]) serves a hostile payload instead of the answer:
//! any status and headers, and a body made of parts (`text`, `json`, `base64`, `repeat`,
//! `endless`) generated while it is sent, optionally followed by a `hang`.
//!
#![doc = concat!("```json\n", include_str!("scenario_example.json"), "```")]
//!
//! A call's `type` is `tool_use` (default; `agent.tool_use`, answered by `user.tool_result`) or
//! `custom_tool_use` (`agent.custom_tool_use`, then `session.status_idle` with `requires_action`
//! until `user.custom_tool_result`). `evaluated_permission: "deny"` calls are skipped by the agent
//! (nothing is expected back); `"ask"` calls wait for a `user.tool_confirmation` (scripted with
//! `confirmation`, or sent by a client; without one the session idles with `requires_action`). The
//! agent emits `session.status_running`, then the calls one at a time (each waits for its result;
//! a call nobody answers stays pending), then `session.status_idle {end_turn}` and, with `"end":
//! "terminate"`, `session.status_terminated`. The opening events are in the history before any
//! worker connects.
//!
//! Every result received is recorded ([`Emulator::tool_results`]) and, with
//! [`EmulatorConfig::record`], appended to a JSON-lines file as
//! `{"session_id","tool_use_id","name","input","content","is_error"}` (flushed per line).

mod agent;
mod error;
mod faults;
mod hostile;
mod http;
mod requests;
mod resources;
mod scenario;
mod state;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::protocol::{SessionStatus, Work, WorkData};

pub use error::EmulatorError;
pub use faults::{BodyPart, Endpoint, Fault, Reply};
pub use http::{
    MANAGED_AGENTS_BETA, MAX_BLOCK_MS, MAX_EVENTS_PER_SEND, MAX_LIST_LIMIT,
    STRICT_WORKER_ID_MESSAGE,
};
pub use requests::{AuthKind, MAX_LOGGED_BODY_BYTES, MAX_LOGGED_REQUESTS, RequestRecord};
pub use resources::{MemoryAttachment, SessionAttachments, SkillAttachment};
pub use scenario::{
    CallKind, MAX_LEASE_TTL_SECONDS, Scenario, ScenarioEnvironment, ScenarioError, ScenarioSession,
    ScenarioWebhook, Script, ScriptEnd, ScriptedCall, ScriptedConfirmation,
};
pub use state::{
    MAX_EVENT_BYTES_PER_SESSION, MAX_RECORD_BYTES, MAX_RECORDS, MAX_SESSIONS, MAX_WORK_ITEMS,
    ToolResultRecord,
};
pub use webhooks::{WebhookConfig, WebhookDelivery};

use http::Shared;
use state::{EnvOptions, Limits, State};

/// Default request body limit: large enough for a 20 MiB PDF read result in base64 (§6.3).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default cap on stored events per session.
pub const DEFAULT_MAX_EVENTS_PER_SESSION: usize = 10_000;

/// How to run an emulator. Scenario values, when present, override these.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Address to listen on (default `127.0.0.1:0`, an ephemeral port).
    pub bind: SocketAddr,
    /// Lease TTL reported by heartbeats, in seconds (default 60).
    pub lease_ttl_seconds: u64,
    /// Reclaim delay for polls that omit `reclaim_older_than_ms` (default 5000 ms).
    pub reclaim_older_than_ms: u64,
    /// API key (default: a random `sk-ant-emu-…`).
    pub api_key: Option<String>,
    /// Interval of `event: ping` keep-alives on streams (default 15 s; clamped to 10 ms..=1 h).
    pub keepalive: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Events kept per session (oldest dropped beyond).
    pub max_events_per_session: usize,
    /// Bytes of events kept per session (oldest dropped beyond; the newest is always kept).
    pub max_event_bytes_per_session: usize,
    /// Append every received tool result to this JSON-lines file.
    pub record: Option<PathBuf>,
    /// Deliver signed webhooks.
    pub webhook: Option<WebhookConfig>,
    /// `organization_id` in webhook payloads.
    pub organization_id: String,
    /// `workspace_id` in webhook payloads.
    pub workspace_id: String,
    /// Served from the start.
    pub scenario: Scenario,
    /// Strict mode (also the scenario's `strict`): a `work/poll` without `Anthropic-Worker-ID`
    /// is answered 400 `invalid_request_error` (code `worker_id_required`) instead of being
    /// served. The real API serves such a poll but cannot count the worker in
    /// `workers_polling`; the official worker always sends the header.
    pub strict: bool,
    /// The bounds of the HTTP listener (default [`EmulatorConfig::default_listener_limits`]:
    /// streams may last, idle connections outlive the client's pool timeout).
    pub listener: crate::listener::ListenerLimits,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_ttl_seconds: 60,
            reclaim_older_than_ms: 5000,
            api_key: None,
            keepalive: Duration::from_secs(15),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_events_per_session: DEFAULT_MAX_EVENTS_PER_SESSION,
            max_event_bytes_per_session: MAX_EVENT_BYTES_PER_SESSION,
            record: None,
            webhook: None,
            organization_id: "org_emulator".into(),
            workspace_id: "wrkspc_emulator".into(),
            scenario: Scenario::default(),
            strict: false,
            listener: Self::default_listener_limits(),
        }
    }
}

impl EmulatorConfig {
    /// The emulator's listener bounds: 1024 connections, no bound on a request's duration (event
    /// streams last as long as their session), two minutes idle between requests (longer than
    /// the client's 90 s pool timeout, so a pooled connection is never closed under a request),
    /// a minute for a request body; heads within 10 s as everywhere.
    pub fn default_listener_limits() -> crate::listener::ListenerLimits {
        crate::listener::ListenerLimits::default()
            .max_connections(1024)
            .max_request_time(None)
            .idle_timeout(Duration::from_secs(120))
            .body_read_timeout(Duration::from_secs(60))
    }

    /// Bound the HTTP listener with `limits`.
    pub fn listener_limits(mut self, limits: crate::listener::ListenerLimits) -> Self {
        self.listener = limits;
        self
    }

    /// Serve this scenario.
    pub fn scenario(mut self, scenario: Scenario) -> Self {
        self.scenario = scenario;
        self
    }

    /// Listen on this address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Lease TTL in seconds (clamped to 1..=[`MAX_LEASE_TTL_SECONDS`]).
    pub fn lease_ttl_seconds(mut self, secs: u64) -> Self {
        self.lease_ttl_seconds = secs.clamp(1, MAX_LEASE_TTL_SECONDS);
        self
    }

    /// Default reclaim delay.
    pub fn reclaim_older_than_ms(mut self, ms: u64) -> Self {
        self.reclaim_older_than_ms = ms;
        self
    }

    /// Fixed API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Keep-alive interval of streams.
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// Record results to a JSON-lines file.
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// Deliver webhooks.
    pub fn webhook(mut self, cfg: WebhookConfig) -> Self {
        self.webhook = Some(cfg);
        self
    }

    /// Cap on stored events per session.
    pub fn max_events_per_session(mut self, n: usize) -> Self {
        self.max_events_per_session = n.max(1);
        self
    }

    /// Cap on stored event bytes per session.
    pub fn max_event_bytes_per_session(mut self, n: usize) -> Self {
        self.max_event_bytes_per_session = n;
        self
    }

    /// Largest request body.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Strict mode (see [`EmulatorConfig::strict`]).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }
}

/// An environment the emulator serves, with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentInfo {
    /// `env_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The environment key workers poll with.
    pub key: String,
}

/// A running emulator and its programmatic API. Dropping it stops the server (without waiting);
/// [`Emulator::shutdown`] stops it gracefully.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Bind, load the scenario, start serving. Must be called inside a tokio runtime.
    pub async fn start(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        let sc = &config.scenario;
        sc.validate()?;
        let api_key = sc
            .api_key
            .clone()
            .or_else(|| config.api_key.clone())
            .unwrap_or_else(|| format!("sk-ant-emu-{}", uuid::Uuid::new_v4().simple()));
        let limits = Limits {
            lease_ttl_seconds: sc
                .lease_ttl_seconds
                .unwrap_or(config.lease_ttl_seconds)
                .clamp(1, MAX_LEASE_TTL_SECONDS),
            reclaim_default_ms: sc
                .reclaim_older_than_ms
                .unwrap_or(config.reclaim_older_than_ms),
            max_events_per_session: config.max_events_per_session.max(1),
            max_event_bytes_per_session: config.max_event_bytes_per_session,
            max_work_items: MAX_WORK_ITEMS,
            max_sessions: MAX_SESSIONS,
            organization_id: config.organization_id.clone(),
            workspace_id: config.workspace_id.clone(),
        };
        let cancel = CancellationToken::new();
        let mut state = State::new(limits, api_key);
        if let Some(path) = &config.record {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| EmulatorError::Record {
                    path: path.clone(),
                    source,
                })?;
            state.set_record_file(f);
        }
        let webhook = match &sc.webhook {
            Some(w) => Some(WebhookConfig::new(
                w.url.clone(),
                crate::webhook::WebhookSecret::parse(&w.secret)
                    .map_err(|e| EmulatorError::Webhook(e.to_string()))?,
            )),
            None => config.webhook.clone(),
        };
        let mut tasks = Vec::new();
        let mut webhook_log = None;
        if let Some(w) = webhook {
            let (outbox, log, task) =
                webhooks::start(w, cancel.clone()).map_err(EmulatorError::Webhook)?;
            state.outbox = Some(outbox);
            webhook_log = Some(log);
            tasks.push(task);
        }
        for e in &sc.environments {
            state
                .add_environment(
                    Some(e.id.clone()),
                    e.name.clone().unwrap_or_else(|| e.id.clone()),
                    e.environment_key.clone(),
                    EnvOptions::default(),
                )
                .map_err(EmulatorError::Invalid)?;
        }
        for k in &sc.skills {
            let tar = resources::skill_tar(&k.name, &k.files).map_err(EmulatorError::Invalid)?;
            state
                .resources
                .add_skill(&k.id, &k.name, tar)
                .map_err(EmulatorError::Invalid)?;
        }
        for m in &sc.memory_stores {
            state
                .resources
                .ensure_store(&m.id)
                .map_err(EmulatorError::Invalid)?;
            for (path, content) in &m.memories {
                state
                    .resources
                    .put(&m.id, path, content)
                    .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            }
        }
        for s in &sc.sessions {
            let sid = state
                .create_session(
                    &s.environment,
                    s.id.clone(),
                    Script {
                        agent_id: s.agent_id.clone(),
                        ..Script::new(s.calls.clone(), s.end)
                    },
                    true,
                    serde_json::json!({}),
                    Value::Null,
                )
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            let att = SessionAttachments {
                skills: s.skills.clone(),
                memory_stores: s.memory_stores.clone(),
            };
            state.attach(&sid, &att).map_err(EmulatorError::Invalid)?;
        }
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            faults: Mutex::default(),
            work_notify: Default::default(),
            change_notify: Default::default(),
            cancel: cancel.clone(),
            keepalive: config
                .keepalive
                .clamp(Duration::from_millis(10), Duration::from_secs(3600)),
            webhook_log,
            requests: Mutex::default(),
            strict: sc.strict || config.strict,
        });
        {
            let mut book = shared.fault_book();
            for f in &sc.faults {
                book.arm(f.clone());
            }
        }
        let app = http::router(shared.clone(), config.max_body_bytes);
        let listener = crate::listener::Listener::new(listener, config.listener)
            .map_err(|e| EmulatorError::Invalid(e.to_string()))?;
        let stop = cancel.clone();
        let server = tokio::spawn(async move { listener.serve(app, stop).await });
        // Lease expiry runs on its own clock so a re-queued item is pollable without traffic.
        let sweeper_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = sweeper_shared.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let changed = sweeper_shared.lock().sweep(tokio::time::Instant::now());
                if changed {
                    sweeper_shared.changed();
                }
            }
        }));
        Ok(Self {
            shared,
            addr,
            server: Some(server),
            tasks,
        })
    }

    /// `http://127.0.0.1:<port>`: what a client uses as `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API key.
    pub fn api_key(&self) -> String {
        self.shared.lock().api_key.clone()
    }

    /// The environment key of an environment.
    pub fn environment_key(&self, env: &str) -> Option<String> {
        self.shared.lock().env_key(env)
    }

    /// Every environment with its key, in creation order.
    pub fn environments(&self) -> Vec<EnvironmentInfo> {
        self.shared
            .lock()
            .env_infos()
            .into_iter()
            .map(|(id, name, key)| EnvironmentInfo { id, name, key })
            .collect()
    }

    /// Add a self-hosted environment with a random key.
    pub fn add_environment(&self, id: &str, name: &str) -> Result<EnvironmentInfo, EmulatorError> {
        self.add_environment_with_key(id, name, None)
    }

    /// Add a self-hosted environment with a given (or random) key.
    pub fn add_environment_with_key(
        &self,
        id: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<EnvironmentInfo, EmulatorError> {
        if id.trim().is_empty() {
            return Err(EmulatorError::Invalid("environment id is empty".into()));
        }
        let (env, key) = self
            .shared
            .lock()
            .add_environment(
                Some(id.to_owned()),
                name.to_owned(),
                key.map(str::to_owned),
                EnvOptions::default(),
            )
            .map_err(EmulatorError::Invalid)?;
        Ok(EnvironmentInfo {
            id: env.id.0,
            name: env.name,
            key,
        })
    }

    /// Create a scripted session (its opening events are emitted and its work item queued).
    pub fn create_session(&self, env: &str, script: Script) -> Result<String, EmulatorError> {
        self.create_session_with_id(env, None, script)
    }

    /// Create a scripted session with a chosen id.
    pub fn create_session_with_id(
        &self,
        env: &str,
        id: Option<&str>,
        script: Script,
    ) -> Result<String, EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        let sid = self
            .shared
            .lock()
            .create_session(
                env,
                id.map(str::to_owned),
                script,
                true,
                serde_json::json!({}),
                Value::Null,
            )
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(sid)
    }

    /// Create a scripted session with skills and memory stores attached (in one step, so no
    /// worker sees the session without them). Unknown memory stores are created empty.
    pub fn create_session_with(
        &self,
        env: &str,
        id: Option<&str>,
        script: Script,
        attachments: &SessionAttachments,
    ) -> Result<String, EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        let sid = {
            let mut st = self.shared.lock();
            for m in &attachments.memory_stores {
                st.resources
                    .ensure_store(&m.memory_store_id)
                    .map_err(EmulatorError::Invalid)?;
            }
            let sid = st
                .create_session(
                    env,
                    id.map(str::to_owned),
                    script,
                    true,
                    serde_json::json!({}),
                    Value::Null,
                )
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            st.attach(&sid, attachments)
                .map_err(EmulatorError::Invalid)?;
            sid
        };
        self.shared.changed();
        Ok(sid)
    }

    /// Serve a new version of skill `skill_id` named `name` whose archive is `archive` (tar or
    /// zip bytes, served verbatim); returns the version id. `latest` resolves to it.
    pub fn add_skill(
        &self,
        skill_id: &str,
        name: &str,
        archive: Vec<u8>,
    ) -> Result<String, EmulatorError> {
        self.shared
            .lock()
            .resources
            .add_skill(skill_id, name, archive)
            .map_err(EmulatorError::Invalid)
    }

    /// Serve a new version of skill `skill_id` whose archive is a tar of `files` (relative path
    /// → text) wrapped in a `<name>/` directory; returns the version id.
    pub fn add_skill_files(
        &self,
        skill_id: &str,
        name: &str,
        files: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, EmulatorError> {
        let tar = resources::skill_tar(name, files).map_err(EmulatorError::Invalid)?;
        self.add_skill(skill_id, name, tar)
    }

    /// Create an empty memory store (nothing happens when it exists).
    pub fn add_memory_store(&self, store_id: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .resources
            .ensure_store(store_id)
            .map_err(EmulatorError::Invalid)
    }

    /// Create or overwrite the memory at `path` of a store (as another writer would), returning
    /// the memory JSON (full view).
    pub fn put_memory(
        &self,
        store_id: &str,
        path: &str,
        content: &str,
    ) -> Result<Value, EmulatorError> {
        self.shared
            .lock()
            .resources
            .put(store_id, path, content)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }

    /// Delete the memory at `path` of a store; whether it existed.
    pub fn delete_memory(&self, store_id: &str, path: &str) -> bool {
        self.shared.lock().resources.remove_path(store_id, path)
    }

    /// A store's memories, `path → content`; `None` for an unknown store.
    pub fn memories(&self, store_id: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.shared.lock().resources.contents(store_id)
    }

    /// Stage a race: right after the next listing of `store_id` is composed, the memory at
    /// `path` is set to `content` (or deleted when `None`), so the worker acts on a stale
    /// listing and its precondition fails.
    pub fn race_memory_after_list(
        &self,
        store_id: &str,
        path: &str,
        content: Option<&str>,
    ) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .resources
            .stage_race(store_id, path, content)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }

    /// Queue a work item with arbitrary data (e.g. `{"type":"healthcheck","id":"…"}`).
    pub fn enqueue_work(&self, env: &str, data: WorkData) -> Result<String, EmulatorError> {
        http::enqueue(&self.shared, env, data)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }

    /// Every work item, in creation order (`secret` is always null here).
    pub fn work_items(&self) -> Vec<Work> {
        self.shared.lock().all_work()
    }

    /// One work item.
    pub fn work(&self, id: &str) -> Option<Work> {
        self.shared.lock().work_item(id)
    }

    /// The work items of a session.
    pub fn session_work(&self, sid: &str) -> Vec<Work> {
        self.work_items()
            .into_iter()
            .filter(|w| w.data.session_id().is_some_and(|s| s.as_str() == sid))
            .collect()
    }

    /// Every session id, in creation order.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared.lock().session_ids()
    }

    /// A session's stored events, in order.
    pub fn session_events(&self, sid: &str) -> Vec<Value> {
        self.shared.lock().events(sid)
    }

    /// A session's status.
    pub fn session_status(&self, sid: &str) -> Option<SessionStatus> {
        self.shared.lock().session_status(sid)
    }

    /// Script summary: (environment, number of calls, ending).
    pub fn session_script(&self, sid: &str) -> Option<(String, usize, ScriptEnd)> {
        self.shared.lock().script_summary(sid)
    }

    /// Whether a session's scripted agent has run to its end.
    pub fn script_finished(&self, sid: &str) -> bool {
        self.shared.lock().script_finished(sid)
    }

    /// Send user events as a client would (`POST /events` rules apply); returns them as stored.
    pub fn send_events(&self, sid: &str, events: Vec<Value>) -> Result<Vec<Value>, EmulatorError> {
        if events.is_empty() || events.len() > MAX_EVENTS_PER_SEND {
            return Err(EmulatorError::Invalid(format!(
                "send 1 to {MAX_EVENTS_PER_SEND} events"
            )));
        }
        if !events
            .iter()
            .all(|e| e.get("type").is_some_and(Value::is_string))
        {
            return Err(EmulatorError::Invalid(
                "every event must be an object with a string type".into(),
            ));
        }
        let stored = {
            let mut st = self.shared.lock();
            st.check_send(sid, &events)
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            st.send_events(sid, events)
        };
        self.shared.changed();
        Ok(stored)
    }

    /// Append events to a session as the server side would emit them (e.g. an `agent.tool_use`
    /// with a `session_thread_id`, or `session.thread_status_terminated`): each gets an `id` (kept
    /// when given as a string) and `processed_at`, is stored, broadcast on open streams and listed
    /// in the history. The scripted agent does not react to them. Returns them as stored.
    pub fn emit_events(&self, sid: &str, events: Vec<Value>) -> Result<Vec<Value>, EmulatorError> {
        if !events
            .iter()
            .all(|e| e.get("type").is_some_and(Value::is_string))
        {
            return Err(EmulatorError::Invalid(
                "every event must be an object with a string type".into(),
            ));
        }
        let stored = self
            .shared
            .lock()
            .emit_events(sid, events)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(stored)
    }

    /// Wake a session whose script has ended with a new script (more calls, a new ending): the
    /// calls are emitted and, when its work item is over, a new one is queued — the shape of a
    /// session that sleeps and is woken by its user.
    pub fn continue_session(&self, sid: &str, script: Script) -> Result<(), EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        self.shared
            .lock()
            .continue_session(sid, script)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Terminate a session from the server side (`session.status_terminated` on its streams).
    pub fn terminate_session(&self, sid: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .terminate_session(sid)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Delete a session (`session.deleted` on its streams, then 404 everywhere).
    pub fn delete_session(&self, sid: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .delete_session(sid)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Stop a work item as `POST …/stop` would (`force` or graceful).
    pub fn stop_work(&self, work_id: &str, force: bool) -> Result<Work, EmulatorError> {
        let w = {
            let mut st = self.shared.lock();
            let env = st
                .work_item(work_id)
                .map(|w| w.environment_id.0)
                .ok_or_else(|| EmulatorError::Invalid(format!("no work item {work_id}")))?;
            st.stop(&env, work_id, force)
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?
        };
        self.shared.changed();
        Ok(w)
    }

    /// Every tool result received so far.
    pub fn tool_results(&self) -> Vec<ToolResultRecord> {
        self.shared.lock().records()
    }

    /// The requests received so far, in arrival order (at most [`MAX_LOGGED_REQUESTS`], the
    /// newest kept): method, path, query, credential kind, `x-stainless-helper`, worker id, the
    /// body of `stop` calls, and the answer's status.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.request_log().snapshot()
    }

    /// Forget the logged requests.
    pub fn clear_requests(&self) {
        self.shared.request_log().clear();
    }

    /// Arm a fault.
    pub fn inject_fault(&self, fault: Fault) -> Result<(), EmulatorError> {
        fault.validate().map_err(EmulatorError::Invalid)?;
        self.shared.fault_book().arm(fault);
        Ok(())
    }

    /// Disarm every fault.
    pub fn clear_faults(&self) {
        self.shared.fault_book().clear();
    }

    /// Faults still armed (counting each remaining use).
    pub fn faults_remaining(&self) -> usize {
        self.shared.fault_book().remaining()
    }

    /// Give a live item's lease to a phantom worker: its holder's next heartbeat gets 412, and
    /// the item is re-queued when the phantom's lease runs out. False if the item is not live.
    pub fn lose_lease(&self, work_id: &str) -> bool {
        let ok = self
            .shared
            .lock()
            .steal_lease(work_id, tokio::time::Instant::now());
        self.shared.changed();
        ok
    }

    /// Expire a live item's lease now: it is re-queued and its holder's next heartbeat gets 412.
    pub fn expire_lease(&self, work_id: &str) -> bool {
        let now = tokio::time::Instant::now();
        let ok = {
            let mut st = self.shared.lock();
            let ok = st.expire_lease(work_id, now);
            st.sweep(now);
            ok
        };
        self.shared.changed();
        ok
    }

    /// Outcomes of webhook deliveries so far (empty without a webhook).
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared
            .webhook_log
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.iter().cloned().collect()))
            .unwrap_or_default()
    }

    /// Whether every scripted session has terminated (or been deleted) and its last work item is
    /// stopped. `(total, ended, work_over)`.
    pub fn scripted_progress(&self) -> (usize, usize, bool) {
        self.shared.lock().scripted_progress()
    }

    /// Wait until `cond` holds (checked on every state change and at least every 50 ms) or
    /// `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.change_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(50))) => {}
            }
        }
    }

    /// Stop serving: open streams and blocked polls end, in-flight requests finish (bounded by
    /// 5 s), background tasks stop.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(s) = self.server.take() {
            s.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}
