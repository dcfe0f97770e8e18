//! The emulator's in-memory world: environments, the work queue with leases, sessions with their
//! event logs, credentials, recorded tool results.
//!
//! Everything lives behind one `std::sync::Mutex`; no method awaits, so the lock is held only for
//! short, bounded work. Time comes in as an argument, which keeps the lease rules testable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio::time::{Duration, Instant};

use crate::protocol::{
    Environment, EnvironmentConfig, EnvironmentId, Extra, NO_HEARTBEAT, Page, SessionStatus, Work,
    WorkData, WorkHeartbeat, WorkId, WorkLeaseState, WorkQueueStats, WorkState, encode_work_secret,
};

use super::agent::{AgentRun, new_event_id};
use super::error::ApiError;
use super::scenario::{CallKind, Script, ScriptEnd};
use super::webhooks::Outbox;

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

    // ---------------------------------------------------------------- environments

    pub(crate) fn env_exists(&self, id: &str) -> bool {
        self.envs.iter().any(|e| e.env.id.as_str() == id)
    }

    fn env_mut(&mut self, id: &str) -> Result<&mut EnvEntry, ApiError> {
        self.envs
            .iter_mut()
            .find(|e| e.env.id.as_str() == id)
            .ok_or_else(|| ApiError::environment_not_found(id))
    }

    pub(crate) fn env_key(&self, id: &str) -> Option<String> {
        self.envs
            .iter()
            .find(|e| e.env.id.as_str() == id)
            .map(|e| e.key.clone())
    }

    pub(crate) fn add_environment(
        &mut self,
        id: Option<String>,
        name: String,
        key: Option<String>,
        opts: EnvOptions,
    ) -> Result<(Environment, String), String> {
        let EnvOptions {
            description,
            metadata,
            config,
            scope,
        } = opts;
        let id = id.unwrap_or_else(|| format!("env_{}", short_id()));
        if self.env_exists(&id) {
            return Err(format!("environment {id} already exists"));
        }
        let key = key.unwrap_or_else(|| format!("envkey_emu_{}", uuid::Uuid::new_v4().simple()));
        if self.resolve(&key).is_some() {
            return Err("environment key already in use".into());
        }
        let now = now_str();
        let env = Environment {
            id: EnvironmentId(id.clone()),
            kind: "environment".into(),
            name,
            description,
            metadata,
            config,
            scope,
            created_at: now.clone(),
            updated_at: Some(now),
            archived_at: None,
            extra: Extra::new(),
        };
        self.envs.push(EnvEntry {
            env: env.clone(),
            key: key.clone(),
        });
        Ok((env, key))
    }

    /// (id, name, key) of every environment, in creation order.
    pub(crate) fn env_infos(&self) -> Vec<(String, String, String)> {
        self.envs
            .iter()
            .map(|e| (e.env.id.0.clone(), e.env.name.clone(), e.key.clone()))
            .collect()
    }

    pub(crate) fn get_environment(&self, id: &str) -> Result<Environment, ApiError> {
        self.envs
            .iter()
            .find(|e| e.env.id.as_str() == id)
            .map(|e| e.env.clone())
            .ok_or_else(|| ApiError::environment_not_found(id))
    }

    pub(crate) fn list_environments(
        &self,
        include_archived: bool,
        limit: usize,
        page: Option<&str>,
    ) -> Result<Page<Environment>, ApiError> {
        let start = match page {
            Some(p) => parse_cursor("envp", p)? as usize,
            None => 0,
        };
        let all: Vec<&EnvEntry> = self
            .envs
            .iter()
            .filter(|e| include_archived || e.env.archived_at.is_none())
            .collect();
        let data: Vec<Environment> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|e| e.env.clone())
            .collect();
        let end = start + data.len();
        Ok(Page {
            data,
            next_page: (end < all.len()).then(|| page_cursor("envp", end as u64)),
            extra: Extra::new(),
        })
    }

    /// Update per §2.2; `patch` is the parsed body object.
    pub(crate) fn update_environment(
        &mut self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Environment, ApiError> {
        let e = self.env_mut(id)?;
        if e.env.archived_at.is_some() {
            return Err(
                ApiError::bad_request(format!("environment {id} is archived"))
                    .with_code("environment_archived"),
            );
        }
        let mut env = e.env.clone();
        for (k, v) in patch {
            match (k.as_str(), v) {
                ("name", Value::String(s)) if !s.is_empty() => env.name = s.clone(),
                ("description", Value::Null) => env.description = None,
                ("description", Value::String(s)) => env.description = Some(s.clone()),
                ("scope", Value::Null) => env.scope = None,
                ("scope", Value::String(s)) if s == "organization" || s == "account" => {
                    env.scope = Some(s.clone())
                }
                ("config", c @ Value::Object(_)) => {
                    let cfg: EnvironmentConfig = serde_json::from_value(c.clone())
                        .map_err(|e| ApiError::bad_request(format!("config: {e}")))?;
                    let same_kind = matches!(
                        (&cfg, &env.config),
                        (EnvironmentConfig::SelfHosted, EnvironmentConfig::SelfHosted)
                            | (EnvironmentConfig::Other(_), EnvironmentConfig::Other(_))
                    );
                    if !same_kind {
                        return Err(ApiError::bad_request(
                            "cannot change an environment between cloud and self_hosted",
                        )
                        .with_code("invalid_config_type_change"));
                    }
                    env.config = cfg;
                }
                ("metadata", Value::Null) => env.metadata.clear(),
                ("metadata", Value::Object(m)) => {
                    for (mk, mv) in m {
                        match mv {
                            Value::Null => {
                                env.metadata.remove(mk);
                            }
                            Value::String(s) if s.is_empty() => {
                                env.metadata.remove(mk);
                            }
                            Value::String(s) => {
                                env.metadata.insert(mk.clone(), s.clone());
                            }
                            _ => {
                                return Err(ApiError::bad_request(format!(
                                    "metadata value for {mk:?} must be a string or null"
                                ))
                                .with_code("invalid_metadata"));
                            }
                        }
                    }
                }
                (other, _) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid value for field {other:?}"
                    )));
                }
            }
        }
        env.updated_at = Some(now_str());
        e.env = env.clone();
        self.webhook("environment.updated", id);
        Ok(env)
    }

    pub(crate) fn archive_environment(&mut self, id: &str) -> Result<Environment, ApiError> {
        let e = self.env_mut(id)?;
        if e.env.archived_at.is_none() {
            let now = now_str();
            e.env.archived_at = Some(now.clone());
            e.env.updated_at = Some(now);
        }
        let env = e.env.clone();
        self.webhook("environment.archived", id);
        Ok(env)
    }

    pub(crate) fn delete_environment(&mut self, id: &str) -> Result<(), ApiError> {
        self.env_mut(id)?;
        self.envs.retain(|e| e.env.id.as_str() != id);
        self.webhook("environment.deleted", id);
        Ok(())
    }

    pub(crate) fn note_environment_created(&self, id: &str) {
        self.webhook("environment.created", id);
    }

    // ---------------------------------------------------------------- work queue

    /// Queue a work item.
    pub(crate) fn enqueue(&mut self, env: &str, data: WorkData) -> String {
        let id = format!("work_{}", short_id());
        let work = Work {
            kind: "work".into(),
            id: WorkId(id.clone()),
            environment_id: EnvironmentId(env.to_owned()),
            state: WorkState::Queued,
            data,
            metadata: BTreeMap::new(),
            secret: None,
            created_at: now_str(),
            acknowledged_at: None,
            started_at: None,
            latest_heartbeat_at: None,
            stop_requested_at: None,
            stopped_at: None,
            extra: Extra::new(),
        };
        self.work.insert(
            id.clone(),
            WorkEntry {
                work,
                pending_since: None,
                lease_deadline: None,
                last_heartbeat: None,
                ttl: self.limits.lease_ttl_seconds,
                tokens: VecDeque::new(),
            },
        );
        self.work_order.push(id.clone());
        self.reindex(&id);
        if self.work_order.len() > self.limits.max_work_items {
            self.forget_stopped_work();
        }
        id
    }

    /// Drop the oldest stopped items until the queue is back under its cap.
    fn forget_stopped_work(&mut self) {
        let mut excess = self
            .work_order
            .len()
            .saturating_sub(self.limits.max_work_items);
        let work = &mut self.work;
        let tokens = &mut self.tokens;
        self.work_order.retain(|id| {
            if excess == 0 {
                return true;
            }
            let stopped = work
                .get(id)
                .is_some_and(|w| w.work.state == WorkState::Stopped);
            if !stopped {
                return true;
            }
            if let Some(w) = work.remove(id) {
                for t in w.tokens {
                    tokens.remove(&t);
                }
            }
            excess -= 1;
            false
        });
    }

    /// Make room for one more session, or fail with 429.
    fn make_room_for_session(&mut self) -> Result<(), ApiError> {
        if self.session_order.len() < self.limits.max_sessions {
            return Ok(());
        }
        let victim = self.session_order.iter().position(|id| {
            self.sessions
                .get(id)
                .is_none_or(|s| s.deleted || s.status == SessionStatus::Terminated)
        });
        match victim {
            Some(i) => {
                let id = self.session_order.remove(i);
                self.sessions.remove(&id);
                Ok(())
            }
            None => Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the emulator keeps at most {} live sessions",
                    self.limits.max_sessions
                ),
            )),
        }
    }

    /// Keep the `queued` and `leased` indexes in line with one item's state.
    fn reindex(&mut self, id: &str) {
        let (queued, leased) = match self.work.get(id) {
            Some(w) => (
                w.work.state == WorkState::Queued,
                w.lease_deadline.is_some(),
            ),
            None => (false, false),
        };
        let in_queue = self.queued.iter().any(|q| q == id);
        if queued && !in_queue {
            self.queued.push(id.to_owned());
        } else if !queued && in_queue {
            self.queued.retain(|q| q != id);
        }
        if leased {
            self.leased.insert(id.to_owned());
        } else {
            self.leased.remove(id);
        }
    }

    /// Re-queue items whose lease expired. Returns whether anything changed.
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .leased
            .iter()
            .filter(|id| {
                self.work
                    .get(*id)
                    .is_none_or(|w| w.lease_deadline.is_none_or(|d| d <= now))
            })
            .cloned()
            .collect();
        let mut changed = false;
        for id in expired {
            if let Some(w) = self.work.get_mut(&id) {
                match w.work.state {
                    WorkState::Starting | WorkState::Active => {
                        w.work.state = WorkState::Queued;
                        w.work.acknowledged_at = None;
                        w.work.started_at = None;
                        w.last_heartbeat = None;
                        w.pending_since = None;
                        changed = true;
                    }
                    WorkState::Stopping => {
                        // The holder left without its final stop: the item is over.
                        w.work.state = WorkState::Stopped;
                        w.work.stopped_at = Some(now_str());
                        changed = true;
                    }
                    _ => {}
                }
                w.lease_deadline = None;
            }
            self.reindex(&id);
        }
        changed
    }

    /// Hand out one pollable item (marking it pending) with a fresh secret.
    pub(crate) fn poll(
        &mut self,
        env: &str,
        reclaim_ms: u64,
        worker: Option<&str>,
        now: Instant,
    ) -> Option<Work> {
        if let Some(w) = worker {
            let seen = self.workers.entry(env.to_owned()).or_default();
            seen.insert(w.to_owned(), now);
            seen.retain(|_, t| now.saturating_duration_since(*t) < WORKERS_POLLING_WINDOW);
        }
        let reclaim = Duration::from_millis(reclaim_ms);
        let id = self.queued.iter().find(|id| {
            self.work.get(*id).is_some_and(|w| {
                w.work.environment_id.as_str() == env
                    && w.work.state == WorkState::Queued
                    && w.pending_since
                        .is_none_or(|p| now.saturating_duration_since(p) >= reclaim)
            })
        })?;
        let id = id.clone();
        let token = format!("sk-ant-sess-emu-{}", uuid::Uuid::new_v4().simple());
        let entry = self.work.get_mut(&id)?;
        entry.pending_since = Some(now);
        entry.tokens.push_back(token.clone());
        let evicted = if entry.tokens.len() > TOKENS_PER_ITEM {
            entry.tokens.pop_front()
        } else {
            None
        };
        let mut out = entry.work.clone();
        out.secret = Some(encode_work_secret(&token));
        if let Some(old) = evicted {
            self.tokens.remove(&old);
        }
        self.tokens.insert(token, id);
        Some(out)
    }

    fn work_mut(&mut self, env: &str, id: &str) -> Result<&mut WorkEntry, ApiError> {
        match self.work.get_mut(id) {
            Some(w) if w.work.environment_id.as_str() == env => Ok(w),
            _ => Err(ApiError::not_found(format!(
                "work item {id} not found in environment {env}"
            ))),
        }
    }

    pub(crate) fn ack(&mut self, env: &str, id: &str, now: Instant) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        if w.work.state != WorkState::Queued {
            return Err(ApiError::conflict(format!(
                "work item {id} is {}, not queued",
                w.work.state
            )));
        }
        w.work.state = WorkState::Starting;
        w.work.acknowledged_at = Some(now_str());
        w.pending_since = None;
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        let out = w.work.clone();
        self.reindex(id);
        Ok(out)
    }

    fn lease_state(w: &WorkEntry) -> WorkLeaseState {
        WorkLeaseState {
            state: w.work.state.clone(),
            last_heartbeat: w.last_heartbeat.clone(),
            lease_extended: false,
            ttl_seconds: w.ttl as i64,
            extra: Extra::new(),
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        env: &str,
        id: &str,
        expected: Option<&str>,
        desired_ttl: Option<u64>,
        now: Instant,
    ) -> Result<WorkHeartbeat, ApiError> {
        let w = self.work_mut(env, id)?;
        let precondition_failed = |w: &WorkEntry| {
            let mut e = ApiError::new(
                axum::http::StatusCode::PRECONDITION_FAILED,
                "invalid_request_error",
                "heartbeat precondition failed",
            );
            e.details = Some(json!({
                "error_code": "heartbeat_precondition_failed",
                "current_state": Self::lease_state(w),
            }));
            e
        };
        let hb = |w: &WorkEntry, extended: bool| WorkHeartbeat {
            kind: "work_heartbeat".into(),
            last_heartbeat: w.last_heartbeat.clone().unwrap_or_default(),
            lease_extended: extended,
            state: w.work.state.clone(),
            ttl_seconds: w.ttl as i64,
            extra: Extra::new(),
        };
        match w.work.state {
            WorkState::Stopped => return Ok(hb(w, false)),
            WorkState::Stopping => {}
            WorkState::Queued => return Err(precondition_failed(w)),
            WorkState::Starting | WorkState::Active => {
                let ok = match expected {
                    None => true,
                    Some(NO_HEARTBEAT) => w.last_heartbeat.is_none(),
                    Some(v) => w.last_heartbeat.as_deref() == Some(v),
                };
                if !ok {
                    return Err(precondition_failed(w));
                }
            }
            WorkState::Other(_) => return Err(precondition_failed(w)),
        }
        if let Some(t) = desired_ttl {
            w.ttl = t.clamp(1, 3600);
        }
        let stamp = unique_stamp(w.last_heartbeat.as_deref());
        w.last_heartbeat = Some(stamp.clone());
        w.work.latest_heartbeat_at = Some(stamp.clone());
        if w.work.state == WorkState::Starting {
            w.work.state = WorkState::Active;
            w.work.started_at = Some(stamp);
        }
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        let out = hb(w, true);
        self.reindex(id);
        Ok(out)
    }

    /// Hand the lease of a live item to a phantom worker (fault injection).
    pub(crate) fn steal_lease(&mut self, id: &str, now: Instant) -> bool {
        let Some(w) = self.work.get_mut(id) else {
            return false;
        };
        if !matches!(w.work.state, WorkState::Starting | WorkState::Active) {
            return false;
        }
        let stamp = unique_stamp(w.last_heartbeat.as_deref());
        w.last_heartbeat = Some(stamp.clone());
        w.work.latest_heartbeat_at = Some(stamp.clone());
        if w.work.state == WorkState::Starting {
            w.work.started_at = Some(stamp);
        }
        w.work.state = WorkState::Active;
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        self.reindex(id);
        true
    }

    /// Make a live item's lease expire now (it is re-queued by the next sweep).
    pub(crate) fn expire_lease(&mut self, id: &str, now: Instant) -> bool {
        match self.work.get_mut(id) {
            Some(w) if w.lease_deadline.is_some() => {
                w.lease_deadline = Some(now);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn stop(&mut self, env: &str, id: &str, force: bool) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        let now = now_str();
        match w.work.state {
            WorkState::Stopped => {
                return Err(ApiError::conflict(format!(
                    "work item {id} is already stopped"
                )));
            }
            WorkState::Queued => {
                w.work.state = WorkState::Stopped;
                w.work.stop_requested_at.get_or_insert(now.clone());
                w.work.stopped_at = Some(now);
                w.pending_since = None;
                w.lease_deadline = None;
            }
            _ if force => {
                w.work.state = WorkState::Stopped;
                w.work.stop_requested_at.get_or_insert(now.clone());
                w.work.stopped_at = Some(now);
                w.lease_deadline = None;
            }
            _ => {
                w.work.state = WorkState::Stopping;
                w.work.stop_requested_at.get_or_insert(now);
            }
        }
        let out = w.work.clone();
        self.reindex(id);
        Ok(out)
    }

    pub(crate) fn list_work(
        &self,
        env: &str,
        limit: usize,
        page: Option<&str>,
    ) -> Result<Page<Work>, ApiError> {
        let start = match page {
            Some(p) => parse_cursor("workp", p)? as usize,
            None => 0,
        };
        let all: Vec<&WorkEntry> = self
            .work_order
            .iter()
            .filter_map(|id| self.work.get(id))
            .filter(|w| w.work.environment_id.as_str() == env)
            .collect();
        let data: Vec<Work> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|w| w.work.clone())
            .collect();
        let end = start + data.len();
        Ok(Page {
            data,
            next_page: (end < all.len()).then(|| page_cursor("workp", end as u64)),
            extra: Extra::new(),
        })
    }

    pub(crate) fn get_work(&self, env: &str, id: &str) -> Result<Work, ApiError> {
        match self.work.get(id) {
            Some(w) if w.work.environment_id.as_str() == env => Ok(w.work.clone()),
            _ => Err(ApiError::not_found(format!("work item {id} not found"))),
        }
    }

    /// Every work item, in creation order.
    /// One work item by id.
    pub(crate) fn work_item(&self, id: &str) -> Option<Work> {
        self.work.get(id).map(|w| w.work.clone())
    }

    pub(crate) fn all_work(&self) -> Vec<Work> {
        self.work_order
            .iter()
            .filter_map(|id| self.work.get(id))
            .map(|w| w.work.clone())
            .collect()
    }

    pub(crate) fn update_work_metadata(
        &mut self,
        env: &str,
        id: &str,
        metadata: &Map<String, Value>,
    ) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        let mut md = w.work.metadata.clone();
        for (k, v) in metadata {
            match v {
                Value::Null => {
                    md.remove(k);
                }
                Value::String(s) => {
                    md.insert(k.clone(), s.clone());
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "metadata value for {k:?} must be a string or null"
                    ))
                    .with_code("invalid_metadata"));
                }
            }
        }
        w.work.metadata = md;
        Ok(w.work.clone())
    }

    pub(crate) fn stats(&self, env: &str, now: Instant) -> WorkQueueStats {
        let mut depth = 0;
        let mut pending = 0;
        let mut oldest: Option<&str> = None;
        for id in &self.queued {
            let Some(w) = self.work.get(id) else { continue };
            if w.work.environment_id.as_str() != env {
                continue;
            }
            // An item whose poll is older than the default reclaim delay is pollable again.
            let reclaim = Duration::from_millis(self.limits.reclaim_default_ms);
            match w.pending_since {
                Some(p) if now.saturating_duration_since(p) < reclaim => pending += 1,
                _ => depth += 1,
            }
            if oldest.is_none_or(|o| w.work.created_at.as_str() < o) {
                oldest = Some(&w.work.created_at);
            }
        }
        let polling = self.workers.get(env).map_or(0, |m| {
            m.values()
                .filter(|t| now.saturating_duration_since(**t) < WORKERS_POLLING_WINDOW)
                .count()
        });
        WorkQueueStats {
            kind: "work_queue_stats".into(),
            depth,
            pending,
            oldest_queued_at: oldest.map(str::to_owned),
            workers_polling: Some(polling as u64),
            extra: Extra::new(),
        }
    }

    // ---------------------------------------------------------------- sessions

    /// Create a session, run its agent's opening events, queue its work item.
    pub(crate) fn create_session(
        &mut self,
        env: &str,
        id: Option<String>,
        script: Script,
        scripted: bool,
        metadata: Value,
        title: Value,
    ) -> Result<String, ApiError> {
        let e = self
            .envs
            .iter()
            .find(|e| e.env.id.as_str() == env)
            .ok_or_else(|| ApiError::environment_not_found(env))?;
        if e.env.archived_at.is_some() {
            return Err(
                ApiError::bad_request(format!("environment {env} is archived"))
                    .with_code("environment_archived"),
            );
        }
        let id = id.unwrap_or_else(|| format!("sesn_{}", short_id()));
        self.make_room_for_session()?;
        if self.sessions.contains_key(&id) {
            return Err(ApiError::conflict(format!("session {id} already exists")));
        }
        let mut tools = vec![json!({"type": "agent_toolset_20260401"})];
        let mut seen = std::collections::HashSet::new();
        for c in &script.calls {
            if c.kind == CallKind::CustomToolUse && seen.insert(c.name.clone()) {
                tools.push(json!({"type": "custom", "name": c.name,
                                  "description": format!("scripted custom tool {}", c.name),
                                  "input_schema": {"type": "object"}}));
            }
        }
        let now = now_str();
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        let entry = SessionEntry {
            id: id.clone(),
            env_id: env.to_owned(),
            status: SessionStatus::Idle,
            agent: json!({"type": "agent",
                          "id": script.agent_id.as_deref().unwrap_or("agent_emulator"),
                          "name": "emulator scripted agent",
                          "version": 1, "skills": [], "tools": tools, "mcp_servers": []}),
            metadata,
            title,
            created_at: now.clone(),
            updated_at: now,
            events: VecDeque::new(),
            event_bytes: 0,
            next_seq: 1,
            tx,
            run: AgentRun::new(script),
            scripted,
            deleted: false,
            work_id: None,
            terminal: None,
            resources: Vec::new(),
        };
        self.sessions.insert(id.clone(), entry);
        self.session_order.push(id.clone());
        self.webhook("session.created", &id);
        let opening = match self.sessions.get_mut(&id) {
            Some(s) => s.run.start(),
            None => Vec::new(),
        };
        for ev in opening {
            self.append(&id, ev);
        }
        let work = self.enqueue(
            env,
            WorkData {
                kind: "session".into(),
                id: id.clone(),
                extra: Extra::new(),
            },
        );
        if let Some(s) = self.sessions.get_mut(&id) {
            s.work_id = Some(work);
        }
        Ok(id)
    }

    fn live_session(&self, sid: &str) -> Result<&SessionEntry, ApiError> {
        match self.sessions.get(sid) {
            Some(s) if !s.deleted => Ok(s),
            _ => Err(ApiError::not_found(format!("session {sid} not found"))),
        }
    }

    /// `GET /v1/sessions/{id}`.
    pub(crate) fn session_json(&self, sid: &str) -> Result<Value, ApiError> {
        let s = self.live_session(sid)?;
        Ok(json!({
            "type": "session",
            "id": s.id,
            "status": s.status,
            "environment_id": s.env_id,
            "agent": s.agent,
            "resources": s.resources,
            "metadata": s.metadata,
            "vault_ids": [],
            "title": s.title,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "archived_at": null,
        }))
    }

    /// A session's `resources[]`.
    pub(crate) fn session_resources(&self, sid: &str) -> Vec<Value> {
        self.sessions
            .get(sid)
            .map(|s| s.resources.clone())
            .unwrap_or_default()
    }

    /// Attach skills and memory stores to a session (unknown stores are created empty).
    pub(crate) fn attach(
        &mut self,
        sid: &str,
        att: &super::resources::SessionAttachments,
    ) -> Result<(), String> {
        for m in &att.memory_stores {
            self.resources.ensure_store(&m.memory_store_id)?;
        }
        let s = self
            .sessions
            .get_mut(sid)
            .ok_or_else(|| format!("session {sid} not found"))?;
        let skills: Vec<Value> = att
            .skills
            .iter()
            .map(|k| {
                json!({"type": "custom", "skill_id": k.skill_id,
                       "version": k.version.clone().unwrap_or_else(|| "latest".into())})
            })
            .collect();
        if let Some(list) = s.agent.get_mut("skills").and_then(Value::as_array_mut) {
            list.extend(skills);
        }
        s.resources
            .extend(att.memory_stores.iter().map(|m| m.to_resource()));
        Ok(())
    }

    pub(crate) fn session_status(&self, sid: &str) -> Option<SessionStatus> {
        self.sessions.get(sid).map(|s| s.status.clone())
    }

    pub(crate) fn session_ids(&self) -> Vec<String> {
        self.session_order.clone()
    }

    /// Scripted sessions that have terminated (or were deleted), and whether their work is over.
    pub(crate) fn scripted_progress(&self) -> (usize, usize, bool) {
        let mut total = 0;
        let mut ended = 0;
        let mut work_over = true;
        for s in self.sessions.values().filter(|s| s.scripted) {
            total += 1;
            if s.deleted || s.status == SessionStatus::Terminated {
                ended += 1;
            }
            if let Some(w) = s.work_id.as_ref().and_then(|w| self.work.get(w))
                && w.work.state != WorkState::Stopped
            {
                work_over = false;
            }
        }
        (total, ended, work_over)
    }

    /// Store one event: id (if absent), `processed_at`, status bookkeeping, broadcast.
    fn append(&mut self, sid: &str, mut ev: Value) -> Value {
        let cap = self.limits.max_events_per_session.max(1);
        let byte_cap = self.limits.max_event_bytes_per_session;
        let Some(s) = self.sessions.get_mut(sid) else {
            return ev;
        };
        let at = Utc::now();
        if let Some(o) = ev.as_object_mut() {
            if !o.get("id").is_some_and(Value::is_string) {
                o.insert("id".into(), Value::String(new_event_id()));
            }
            o.insert("processed_at".into(), Value::String(rfc3339(at)));
        }
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let new_status = match kind.as_str() {
            "session.status_running" => {
                Some((SessionStatus::Running, "session.status_run_started"))
            }
            "session.status_idle" => Some((SessionStatus::Idle, "session.status_idled")),
            "session.status_terminated" => {
                Some((SessionStatus::Terminated, "session.status_terminated"))
            }
            _ => None,
        };
        let mut hook = None;
        if let Some((status, name)) = new_status {
            s.status = status;
            s.updated_at = rfc3339(at);
            hook = Some(name);
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let frame = Arc::new(Frame::of(&kind, &ev));
        let size = frame.bytes.len();
        s.event_bytes += size;
        s.events.push_back(StoredEvent {
            size,
            seq,
            at,
            kind: kind.clone(),
            value: ev.clone(),
        });
        // Oldest first; the newest event is always kept.
        while s.events.len() > cap || (s.event_bytes > byte_cap && s.events.len() > 1) {
            if let Some(old) = s.events.pop_front() {
                s.event_bytes -= old.size;
            }
        }
        if frame.terminal {
            s.terminal = Some(frame.clone());
        }
        // No subscriber is fine: the event is in the history.
        let _ = s.tx.send(frame);
        if let Some(name) = hook {
            self.webhook(name, sid);
        }
        ev
    }

    pub(crate) fn subscribe(&self, sid: &str) -> Result<Subscription, ApiError> {
        let s = self.live_session(sid)?;
        Ok(match &s.terminal {
            Some(f) => Subscription::Ended(f.clone()),
            None => Subscription::Live(s.tx.subscribe()),
        })
    }

    /// `GET /events`.
    pub(crate) fn list_events(&self, sid: &str, q: &EventQuery) -> Result<Page<Value>, ApiError> {
        let s = self.live_session(sid)?;
        let after = match &q.page {
            Some(p) => Some(parse_cursor("evp", p)?),
            None => None,
        };
        let keep = |e: &&StoredEvent| {
            (q.types.is_empty() || q.types.iter().any(|t| t == &e.kind))
                && q.gt.is_none_or(|t| e.at > t)
                && q.gte.is_none_or(|t| e.at >= t)
                && q.lt.is_none_or(|t| e.at < t)
                && q.lte.is_none_or(|t| e.at <= t)
        };
        let limit = q.limit.max(1);
        let picked: Vec<&StoredEvent> = if q.descending {
            s.events
                .iter()
                .rev()
                .filter(|e| after.is_none_or(|a| e.seq < a))
                .filter(keep)
                .take(limit + 1)
                .collect()
        } else {
            s.events
                .iter()
                .filter(|e| after.is_none_or(|a| e.seq > a))
                .filter(keep)
                .take(limit + 1)
                .collect()
        };
        let more = picked.len() > limit;
        let data: Vec<&StoredEvent> = picked.into_iter().take(limit).collect();
        let next_page = match (more, data.last()) {
            (true, Some(last)) => Some(page_cursor("evp", last.seq)),
            _ => None,
        };
        Ok(Page {
            data: data.into_iter().map(|e| e.value.clone()).collect(),
            next_page,
            extra: Extra::new(),
        })
    }

    /// Events of a session (for the programmatic API).
    pub(crate) fn events(&self, sid: &str) -> Vec<Value> {
        self.sessions
            .get(sid)
            .map(|s| s.events.iter().map(|e| e.value.clone()).collect())
            .unwrap_or_default()
    }

    fn find_call(&self, sid: &str, id: &str, kind: &str) -> Option<(String, Value)> {
        let s = self.sessions.get(sid)?;
        s.events.iter().rev().find_map(|e| {
            (e.kind == kind && e.value.get("id").and_then(Value::as_str) == Some(id)).then(|| {
                (
                    e.value
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    e.value.get("input").cloned().unwrap_or(Value::Null),
                )
            })
        })
    }

    /// Validate `events` (already checked to be objects with a string `type`).
    pub(crate) fn check_send(&self, sid: &str, events: &[Value]) -> Result<(), ApiError> {
        let s = self.live_session(sid)?;
        if s.status == SessionStatus::Terminated {
            return Err(ApiError::bad_request(format!(
                "session {sid} is terminated"
            )));
        }
        for ev in events {
            let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
            let (field, call_kind) = match kind {
                "user.tool_result" => ("tool_use_id", "agent.tool_use"),
                "user.custom_tool_result" => ("custom_tool_use_id", "agent.custom_tool_use"),
                "user.tool_confirmation" => ("tool_use_id", "agent.tool_use"),
                "user.message" | "user.interrupt" | "user.define_outcome" | "system.message" => {
                    continue;
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "events: type {other:?} cannot be sent"
                    )));
                }
            };
            let Some(target) = ev.get(field).and_then(Value::as_str) else {
                return Err(ApiError::bad_request(format!(
                    "events: {kind} needs a string {field}"
                )));
            };
            if self.find_call(sid, target, call_kind).is_none() {
                return Err(ApiError::bad_request(format!(
                    "events: {field} {target:?} does not name an {call_kind} event of this session"
                )));
            }
            if let Some(c) = ev.get("content")
                && !c.is_array()
            {
                return Err(ApiError::bad_request("events: content must be a list"));
            }
            if let Some(e) = ev.get("is_error")
                && !e.is_boolean()
            {
                return Err(ApiError::bad_request("events: is_error must be a boolean"));
            }
        }
        Ok(())
    }

    /// Store user events (after [`Self::check_send`]) and let the agent react.
    pub(crate) fn send_events(&mut self, sid: &str, events: Vec<Value>) -> Vec<Value> {
        let mut stored = Vec::with_capacity(events.len());
        for mut ev in events {
            if let Some(o) = ev.as_object_mut() {
                o.remove("id");
                o.remove("processed_at");
            }
            let ev = self.append(sid, ev);
            self.record_if_result(sid, &ev);
            let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
            if kind == "user.message" {
                self.requeue_if_dormant(sid);
            }
            let reaction = match self.sessions.get_mut(sid) {
                Some(s) => s.run.on_user_event(&ev),
                None => Vec::new(),
            };
            stored.push(ev);
            for r in reaction {
                self.append(sid, r);
            }
        }
        stored
    }

    /// Append server-side events (as the agent or the service would emit them) to a live
    /// session: stored, broadcast and listed like the scripted agent's own; the script does not
    /// react to them.
    pub(crate) fn emit_events(
        &mut self,
        sid: &str,
        events: Vec<Value>,
    ) -> Result<Vec<Value>, ApiError> {
        self.live_session(sid)?;
        Ok(events.into_iter().map(|ev| self.append(sid, ev)).collect())
    }

    /// A message to a session whose work item is over queues a new one.
    /// Give a session whose script has ended a new one (the agent wakes up with more calls):
    /// its opening events are emitted and, if the session's work item is over, a new one queued.
    pub(crate) fn continue_session(&mut self, sid: &str, script: Script) -> Result<(), ApiError> {
        let s = self
            .sessions
            .get_mut(sid)
            .filter(|s| !s.deleted)
            .ok_or_else(|| ApiError::not_found(format!("session {sid} not found")))?;
        if s.terminal.is_some() || s.status == SessionStatus::Terminated {
            return Err(ApiError::bad_request(format!(
                "session {sid} is terminated"
            )));
        }
        if !s.run.finished() {
            return Err(ApiError::bad_request(format!(
                "session {sid} is still running its script"
            )));
        }
        s.run = AgentRun::new(script);
        let opening = s.run.start();
        for ev in opening {
            self.append(sid, ev);
        }
        self.requeue_if_dormant(sid);
        Ok(())
    }

    fn requeue_if_dormant(&mut self, sid: &str) {
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        let live = s
            .work_id
            .as_ref()
            .and_then(|w| self.work.get(w))
            .is_some_and(|w| w.work.state != WorkState::Stopped);
        if live {
            return;
        }
        let env = s.env_id.clone();
        let work = self.enqueue(
            &env,
            WorkData {
                kind: "session".into(),
                id: sid.to_owned(),
                extra: Extra::new(),
            },
        );
        if let Some(s) = self.sessions.get_mut(sid) {
            s.work_id = Some(work);
        }
    }

    fn record_if_result(&mut self, sid: &str, ev: &Value) {
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        let (field, call_kind) = match kind {
            "user.tool_result" => ("tool_use_id", "agent.tool_use"),
            "user.custom_tool_result" => ("custom_tool_use_id", "agent.custom_tool_use"),
            _ => return,
        };
        let tool_use_id = ev
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let call = self.find_call(sid, &tool_use_id, call_kind);
        let rec = ToolResultRecord {
            session_id: sid.to_owned(),
            tool_use_id,
            name: call.as_ref().map(|c| c.0.clone()),
            input: call.map(|c| c.1).unwrap_or(Value::Null),
            content: ev.get("content").cloned().unwrap_or(Value::Null),
            is_error: ev.get("is_error").and_then(Value::as_bool),
        };
        let line = serde_json::to_string(&rec).unwrap_or_default();
        if let Some(f) = self.record_file.as_mut()
            && let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush())
        {
            tracing::warn!(error = %e, "emulator: cannot append to the record file");
        }
        self.record_bytes += line.len();
        self.records.push_back((line.len(), rec));
        while self.records.len() > MAX_RECORDS
            || (self.record_bytes > MAX_RECORD_BYTES && self.records.len() > 1)
        {
            if let Some((n, _)) = self.records.pop_front() {
                self.record_bytes -= n;
            }
        }
    }

    pub(crate) fn records(&self) -> Vec<ToolResultRecord> {
        self.records.iter().map(|(_, r)| r.clone()).collect()
    }

    /// `DELETE /v1/sessions/{id}`: broadcast `session.deleted`, forget the session.
    pub(crate) fn delete_session(&mut self, sid: &str) -> Result<(), ApiError> {
        self.live_session(sid)?;
        self.append(sid, json!({"type": "session.deleted"}));
        if let Some(s) = self.sessions.get_mut(sid) {
            s.deleted = true;
            s.events.clear();
            s.event_bytes = 0;
        }
        self.webhook("session.deleted", sid);
        Ok(())
    }

    /// End a session from the server side: `session.status_terminated` (no-op if it already ended).
    pub(crate) fn terminate_session(&mut self, sid: &str) -> Result<(), ApiError> {
        let s = self.live_session(sid)?;
        if s.status != SessionStatus::Terminated {
            self.append(sid, json!({"type": "session.status_terminated"}));
        }
        Ok(())
    }

    /// Script summary for the CLI.
    pub(crate) fn script_summary(&self, sid: &str) -> Option<(String, usize, ScriptEnd)> {
        let s = self.sessions.get(sid)?;
        Some((s.env_id.clone(), s.run.call_count(), s.run.end()))
    }

    /// Whether the scripted agent of a session has run to its end.
    pub(crate) fn script_finished(&self, sid: &str) -> bool {
        self.sessions.get(sid).is_some_and(|s| s.run.finished())
    }
}

/// Parsed `GET /events` query.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventQuery {
    pub(crate) limit: usize,
    pub(crate) page: Option<String>,
    pub(crate) descending: bool,
    pub(crate) types: Vec<String>,
    pub(crate) gt: Option<DateTime<Utc>>,
    pub(crate) gte: Option<DateTime<Utc>>,
    pub(crate) lt: Option<DateTime<Utc>>,
    pub(crate) lte: Option<DateTime<Utc>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, String) {
        let mut s = State::new(
            Limits {
                lease_ttl_seconds: 60,
                reclaim_default_ms: 5000,
                max_events_per_session: 100,
                max_event_bytes_per_session: MAX_EVENT_BYTES_PER_SESSION,
                max_work_items: 3,
                max_sessions: 2,
                organization_id: "org".into(),
                workspace_id: "ws".into(),
            },
            "sk-api".into(),
        );
        let (env, _) = s
            .add_environment(
                Some("env_a".into()),
                "a".into(),
                Some("envkey_a".into()),
                EnvOptions::default(),
            )
            .unwrap();
        (s, env.id.0)
    }

    #[test]
    fn lease_rules_follow_the_protocol() {
        let (mut s, env) = state();
        let t0 = Instant::now();
        let id = s.enqueue(
            &env,
            WorkData {
                kind: "healthcheck".into(),
                id: "hc".into(),
                extra: Extra::new(),
            },
        );
        let polled = s.poll(&env, 5000, Some("w1"), t0).unwrap();
        assert!(polled.sessions_token().is_some());
        // Pending: not pollable until the reclaim delay passes.
        assert!(s.poll(&env, 5000, None, t0).is_none());
        assert!(
            s.poll(&env, 10, None, t0 + Duration::from_millis(10))
                .is_some()
        );
        assert_eq!(s.ack(&env, &id, t0).unwrap().state, WorkState::Starting);
        assert!(s.ack(&env, &id, t0).is_err());
        let hb = s
            .heartbeat(&env, &id, Some(NO_HEARTBEAT), None, t0)
            .unwrap();
        assert_eq!(hb.state, WorkState::Active);
        assert!(
            s.heartbeat(&env, &id, Some(NO_HEARTBEAT), None, t0)
                .is_err()
        );
        let hb2 = s
            .heartbeat(&env, &id, Some(&hb.last_heartbeat), None, t0)
            .unwrap();
        assert_ne!(hb2.last_heartbeat, hb.last_heartbeat);
        // Lease expiry re-queues; the old holder gets 412.
        assert!(s.sweep(t0 + Duration::from_secs(61)));
        let err = s
            .heartbeat(&env, &id, Some(&hb2.last_heartbeat), None, t0)
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 412);
        assert_eq!(
            err.details.clone().unwrap()["current_state"]["state"],
            "queued"
        );
    }

    #[test]
    fn stopped_work_and_ended_sessions_are_forgotten_beyond_the_caps() {
        let (mut s, env) = state();
        let hc = || WorkData {
            kind: "healthcheck".into(),
            id: "hc".into(),
            extra: Extra::new(),
        };
        let first = s.enqueue(&env, hc());
        let second = s.enqueue(&env, hc());
        s.stop(&env, &first, true).unwrap();
        s.enqueue(&env, hc());
        s.enqueue(&env, hc());
        let ids: Vec<String> = s.all_work().into_iter().map(|w| w.id.0).collect();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&first) && ids.contains(&second));

        let live = |s: &mut State| {
            s.create_session(&env, None, Script::default(), true, json!({}), Value::Null)
        };
        let a = live(&mut s).unwrap();
        live(&mut s).unwrap();
        let err = live(&mut s).unwrap_err();
        assert_eq!(err.status.as_u16(), 429);
        s.delete_session(&a).unwrap();
        live(&mut s).unwrap();
        assert!(!s.session_ids().contains(&a));
    }

    #[test]
    fn event_history_is_capped_and_paged() {
        let (mut s, env) = state();
        let sid = s
            .create_session(&env, None, Script::default(), true, json!({}), Value::Null)
            .unwrap();
        for _ in 0..150 {
            s.send_events(&sid, vec![json!({"type": "user.message", "content": []})]);
        }
        assert_eq!(s.events(&sid).len(), 100);
        let q = EventQuery {
            limit: 60,
            ..Default::default()
        };
        let p1 = s.list_events(&sid, &q).unwrap();
        assert_eq!(p1.data.len(), 60);
        let q2 = EventQuery {
            limit: 60,
            page: p1.next_page.clone(),
            ..Default::default()
        };
        let p2 = s.list_events(&sid, &q2).unwrap();
        assert_eq!(p2.data.len(), 40);
        assert!(p2.next_page.is_none());
        assert_ne!(p1.data[59]["id"], p2.data[0]["id"]);
    }
}
