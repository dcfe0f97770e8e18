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
mod config;
mod drive;
mod error;
mod faults;
mod hostile;
mod http;
mod inspect;
mod lifecycle;
mod requests;
mod resources;
mod scenario;
mod setup;
mod state;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use config::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_EVENTS_PER_SESSION, EmulatorConfig};
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
