//! The emulator's in-memory world: environments, the work queue with leases, sessions with their
//! event logs, credentials, recorded tool results.
//!
//! Everything lives behind one `std::sync::Mutex`; no method awaits, so the lock is held only for
//! short, bounded work. Time comes in as an argument, which keeps the lease rules testable.
//!
//! This file holds the shared types, limits, credentials and helpers; the operations live by
//! concern in `environments`, `work` (the queue and its leases), `sessions` and `events` (event
//! logs, streams and the tool-result record).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::{Duration, Instant};

use crate::protocol::{Environment, EnvironmentConfig, SessionStatus, Work};

use super::agent::AgentRun;
use super::error::ApiError;
use super::webhooks::Outbox;

mod environments;
mod events;
mod sessions;
#[cfg(test)]
mod tests;
mod work;

pub(crate) use events::EventQuery;

/// Sessions tokens remembered per work item (older ones are forgotten).
const TOKENS_PER_ITEM: usize = 8;
/// Tool results kept in memory (the record file keeps them all).
pub const MAX_RECORDS: usize = 100_000;
/// Bytes of tool results kept in memory; the oldest go first beyond it.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Default bytes of events kept per session (besides the count cap); the oldest go first beyond.
pub const MAX_EVENT_BYTES_PER_SESSION: usize = 64 * 1024 * 1024;
/// Buffer of each session's live broadcast; a slower stream is closed and must reconcile.
const STREAM_BUFFER: usize = 1024;
/// Work items kept; beyond it the oldest stopped ones are forgotten.
pub const MAX_WORK_ITEMS: usize = 100_000;
/// Sessions kept; beyond it the oldest deleted or terminated ones are forgotten, and creation
/// fails with 429 when none can be.
pub const MAX_SESSIONS: usize = 10_000;
/// Workers count as polling for this long after their last poll (docs/protocol.md §2.1).
const WORKERS_POLLING_WINDOW: Duration = Duration::from_secs(30);

/// RFC 3339, UTC, `Z`, milliseconds.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now_str() -> String {
    rfc3339(Utc::now())
}

/// Limits and defaults.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) lease_ttl_seconds: u64,
    pub(crate) reclaim_default_ms: u64,
    pub(crate) max_events_per_session: usize,
    pub(crate) max_event_bytes_per_session: usize,
    pub(crate) max_work_items: usize,
    pub(crate) max_sessions: usize,
    pub(crate) organization_id: String,
    pub(crate) workspace_id: String,
}

/// Optional fields of a new environment.
pub(crate) struct EnvOptions {
    pub(crate) description: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) config: EnvironmentConfig,
    pub(crate) scope: Option<String>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            description: None,
            metadata: BTreeMap::new(),
            config: EnvironmentConfig::SelfHosted,
            scope: None,
        }
    }
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cred {
    /// The API key.
    Api,
    /// An environment key.
    Env(String),
    /// A sessions token of one work item.
    Sessions(String),
}

/// One SSE frame ready to write.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) bytes: bytes::Bytes,
    /// `session.status_terminated` / `session.deleted`: the stream ends after it.
    pub(crate) terminal: bool,
}

impl Frame {
    fn of(kind: &str, json: &Value) -> Self {
        let data = json.to_string();
        Self {
            bytes: bytes::Bytes::from(format!("event: {kind}\ndata: {data}\n\n")),
            terminal: kind == "session.status_terminated" || kind == "session.deleted",
        }
    }
}

/// A tool result the emulator received, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolResultRecord {
    /// The session.
    pub session_id: String,
    /// The answered `agent.tool_use` / `agent.custom_tool_use` id.
    pub tool_use_id: String,
    /// The tool's name (null if the call is unknown or fell out of the event buffer).
    pub name: Option<String>,
    /// The call's input.
    pub input: Value,
    /// The result content, verbatim.
    pub content: Value,
    /// The result's `is_error` (null when the client omitted it).
    pub is_error: Option<bool>,
}

struct EnvEntry {
    env: Environment,
    key: String,
}

struct WorkEntry {
    work: Work,
    pending_since: Option<Instant>,
    lease_deadline: Option<Instant>,
    last_heartbeat: Option<String>,
    ttl: u64,
    tokens: VecDeque<String>,
}

struct StoredEvent {
    /// Serialized size, counted against the session's byte budget.
    size: usize,
    seq: u64,
    at: DateTime<Utc>,
    kind: String,
    value: Value,
}

pub(crate) struct SessionEntry {
    id: String,
    env_id: String,
    status: SessionStatus,
    agent: Value,
    metadata: Value,
    title: Value,
    created_at: String,
    updated_at: String,
    events: VecDeque<StoredEvent>,
    event_bytes: usize,
    next_seq: u64,
    tx: broadcast::Sender<Arc<Frame>>,
    run: AgentRun,
    pub(crate) scripted: bool,
    deleted: bool,
    work_id: Option<String>,
    terminal: Option<Arc<Frame>>,
    /// `resources[]` (memory stores).
    resources: Vec<Value>,
}

/// What a new stream subscriber gets.
pub(crate) enum Subscription {
    /// Live events from now on.
    Live(broadcast::Receiver<Arc<Frame>>),
    /// The session already ended: send this frame and close.
    Ended(Arc<Frame>),
}

/// The world.
pub(crate) struct State {
    pub(crate) limits: Limits,
    pub(crate) api_key: String,
    envs: Vec<EnvEntry>,
    work: HashMap<String, WorkEntry>,
    work_order: Vec<String>,
    /// Ids of `queued` items, in queue order (index kept by [`State::reindex`]).
    queued: Vec<String>,
    /// Ids of items with a running lease (index kept by [`State::reindex`]).
    leased: std::collections::HashSet<String>,
    sessions: HashMap<String, SessionEntry>,
    session_order: Vec<String>,
    tokens: HashMap<String, String>,
    workers: HashMap<String, HashMap<String, Instant>>,
    records: VecDeque<(usize, ToolResultRecord)>,
    record_bytes: usize,
    record_file: Option<std::io::BufWriter<std::fs::File>>,
    pub(crate) outbox: Option<Outbox>,
    /// Skills and memory stores.
    pub(crate) resources: super::resources::Resources,
}

fn page_cursor(prefix: &str, n: u64) -> String {
    format!("{prefix}_{n}")
}

fn parse_cursor(prefix: &str, s: &str) -> Result<u64, ApiError> {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("invalid page cursor {s:?}")))
}

impl State {
    pub(crate) fn new(limits: Limits, api_key: String) -> Self {
        Self {
            limits,
            api_key,
            envs: Vec::new(),
            work: HashMap::new(),
            work_order: Vec::new(),
            queued: Vec::new(),
            leased: Default::default(),
            sessions: HashMap::new(),
            session_order: Vec::new(),
            tokens: HashMap::new(),
            workers: HashMap::new(),
            records: VecDeque::new(),
            record_bytes: 0,
            record_file: None,
            outbox: None,
            resources: Default::default(),
        }
    }

    pub(crate) fn set_record_file(&mut self, f: std::fs::File) {
        self.record_file = Some(std::io::BufWriter::new(f));
    }

    fn webhook(&self, kind: &str, id: &str) {
        if let Some(o) = &self.outbox {
            o.send(
                kind,
                id,
                &self.limits.organization_id,
                &self.limits.workspace_id,
            );
        }
    }

    // ---------------------------------------------------------------- credentials

    pub(crate) fn resolve(&self, token: &str) -> Option<Cred> {
        if token == self.api_key {
            return Some(Cred::Api);
        }
        if let Some(e) = self.envs.iter().find(|e| e.key == token) {
            return Some(Cred::Env(e.env.id.0.clone()));
        }
        self.tokens.get(token).map(|w| Cred::Sessions(w.clone()))
    }

    /// The session a sessions token belongs to.
    pub(crate) fn token_session(&self, work_id: &str) -> Option<String> {
        self.work
            .get(work_id)
            .and_then(|w| w.work.data.session_id())
            .map(|s| s.0)
    }

    pub(crate) fn session_env(&self, sid: &str) -> Option<String> {
        self.sessions.get(sid).map(|s| s.env_id.clone())
    }
}

fn short_id() -> String {
    let s = uuid::Uuid::new_v4().simple().to_string();
    s[..24].to_owned()
}

/// A heartbeat time stamp (RFC 3339, microseconds) different from `previous`.
fn unique_stamp(previous: Option<&str>) -> String {
    let mut t = Utc::now();
    loop {
        let s = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        if Some(s.as_str()) != previous {
            return s;
        }
        t += chrono::Duration::microseconds(1);
    }
}
