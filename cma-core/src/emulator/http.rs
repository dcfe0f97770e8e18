//! The HTTP surface: routes, authentication, request parsing, the SSE stream.
//!
//! Every handler follows the same order: consume a fault for its endpoint (delay, forced status),
//! authenticate (401), check `anthropic-beta` (400), find the resource (404), then act on the
//! state under its lock without awaiting.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{EnvironmentConfig, WorkData};

use super::error::{ApiError, new_request_id};
use super::faults::{Endpoint, Fault, FaultBook};
use super::requests::{RequestLog, log_requests};
use super::scenario::{Script, validate_call};
use super::state::{Cred, EnvOptions, EventQuery, State, Subscription};
use super::webhooks::DeliveryLog;

/// The beta every environments/work/sessions call must carry (docs/protocol.md §1.2).
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
/// Most events one `POST /events` may carry.
pub const MAX_EVENTS_PER_SEND: usize = 100;
/// Largest `limit` of a list call.
pub const MAX_LIST_LIMIT: usize = 1000;
/// `block_ms` above this is capped (docs/protocol.md §2.1: the server caps at 999).
pub const MAX_BLOCK_MS: u64 = 999;

/// Shared by every handler.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) faults: Mutex<FaultBook>,
    /// Woken when work becomes pollable.
    pub(crate) work_notify: Notify,
    /// Woken on any session or work state change (for programmatic waiters).
    pub(crate) change_notify: Notify,
    pub(crate) cancel: CancellationToken,
    pub(crate) keepalive: Duration,
    pub(crate) webhook_log: Option<DeliveryLog>,
    /// Every request received (bounded).
    pub(crate) requests: Mutex<RequestLog>,
    /// Strict mode: reject what the real API tolerates but the official worker never does.
    pub(crate) strict: bool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fault_book(&self) -> MutexGuard<'_, FaultBook> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn request_log(&self) -> MutexGuard<'_, RequestLog> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn changed(&self) {
        self.work_notify.notify_waiters();
        self.change_notify.notify_waiters();
    }
}

pub(crate) type App = Arc<Shared>;
type Res = Result<Response, ApiError>;

/// Build the router.
pub(crate) fn router(app: App, max_body: usize) -> Router {
    let work = "/v1/environments/{env}/work";
    Router::new()
        .route("/v1/environments", get(env_list).post(env_create))
        .route(
            "/v1/environments/{env}",
            get(env_get).post(env_update).delete(env_delete),
        )
        .route("/v1/environments/{env}/archive", post(env_archive))
        .route(work, get(work_list))
        .route(&format!("{work}/poll"), get(poll))
        .route(&format!("{work}/stats"), get(stats))
        .route(&format!("{work}/{{work}}"), get(work_get).post(work_update))
        .route(&format!("{work}/{{work}}/ack"), post(ack))
        .route(&format!("{work}/{{work}}/heartbeat"), post(heartbeat))
        .route(&format!("{work}/{{work}}/stop"), post(stop))
        .route("/v1/sessions", post(session_create))
        .route(
            "/v1/sessions/{sid}",
            get(session_get).delete(session_delete),
        )
        .route(
            "/v1/sessions/{sid}/events",
            get(events_list).post(events_send),
        )
        .route("/v1/sessions/{sid}/events/stream", get(stream))
        .merge(super::resources::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::hostile::fault_middleware,
        ))
        .layer(axum::middleware::map_response(add_request_id))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            log_requests,
        ))
        .with_state(app)
}

async fn add_request_id(mut resp: Response) -> Response {
    if !resp.headers().contains_key("request-id")
        && let Ok(v) = HeaderValue::from_str(&new_request_id())
    {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

// -------------------------------------------------------------------- common steps

pub(crate) fn fault_error(f: &Fault, status: u16) -> ApiError {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = f
        .error_type
        .clone()
        .unwrap_or_else(|| ApiError::kind_for(code).to_owned());
    let mut e = ApiError::new(
        code,
        &kind,
        f.message
            .clone()
            .unwrap_or_else(|| format!("injected fault on {}", f.endpoint)),
    );
    e.body = f.body.clone();
    if let Some(v) = &f.retry_after {
        e.headers.push((axum::http::header::RETRY_AFTER, v.clone()));
    }
    if let Some(v) = &f.retry_after_ms {
        e.headers.push((
            axum::http::HeaderName::from_static("retry-after-ms"),
            v.clone(),
        ));
    }
    if let Some(v) = f.should_retry {
        e.headers.push((
            axum::http::HeaderName::from_static("x-should-retry"),
            v.to_string(),
        ));
    }
    e
}

pub(crate) fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_owned());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn has_beta(headers: &HeaderMap) -> bool {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| b.trim() == MANAGED_AGENTS_BETA)
}

/// Fault, authentication, beta check. Returns the consumed fault (for stream/heartbeat effects).
async fn enter(
    app: &App,
    ep: Endpoint,
    headers: &HeaderMap,
) -> Result<(Option<Fault>, Cred), ApiError> {
    let fault = app.fault_book().take(ep);
    if let Some(f) = &fault {
        if let Some(ms) = f.delay_ms {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = app.cancel.cancelled() => {}
            }
        }
        if let Some(status) = f.status {
            return Err(fault_error(f, status));
        }
    }
    let Some(token) = credential(headers) else {
        return Err(ApiError::unauthorized(
            "missing credentials: send Authorization: Bearer <key> or x-api-key",
        ));
    };
    let Some(cred) = app.lock().resolve(&token) else {
        return Err(ApiError::unauthorized("invalid credentials"));
    };
    if !has_beta(headers) {
        return Err(ApiError::bad_request(format!(
            "anthropic-beta must include {MANAGED_AGENTS_BETA}"
        )));
    }
    Ok((fault, cred))
}

fn wrong_key(what: &str) -> ApiError {
    ApiError::unauthorized(format!("this endpoint accepts {what} only"))
}

fn require_api(cred: &Cred) -> Result<(), ApiError> {
    match cred {
        Cred::Api => Ok(()),
        _ => Err(wrong_key("an API key")),
    }
}

fn require_env_key(cred: &Cred, env: &str) -> Result<(), ApiError> {
    match cred {
        Cred::Env(e) if e == env => Ok(()),
        _ => Err(wrong_key("this environment's key")),
    }
}

/// Environment key of `env`, or a sessions token of `work` (plus the API key when `api`).
fn require_item_cred(cred: &Cred, env: &str, work: &str, api: bool) -> Result<(), ApiError> {
    match cred {
        Cred::Env(e) if e == env => Ok(()),
        Cred::Sessions(w) if w == work => Ok(()),
        Cred::Api if api => Ok(()),
        _ => Err(wrong_key(
            "the environment key or the work item's sessions token",
        )),
    }
}

fn require_session_cred(app: &App, cred: &Cred, sid: &str) -> Result<(), ApiError> {
    let st = app.lock();
    let Some(env) = st.session_env(sid) else {
        return Err(ApiError::not_found(format!("session {sid} not found")));
    };
    let ok = match cred {
        Cred::Api => true,
        Cred::Env(e) => *e == env,
        Cred::Sessions(w) => st.token_session(w).as_deref() == Some(sid),
    };
    if ok {
        Ok(())
    } else {
        Err(wrong_key(
            "the API key, the environment key or this session's sessions token",
        ))
    }
}

fn require_env(app: &App, env: &str) -> Result<(), ApiError> {
    if app.lock().env_exists(env) {
        Ok(())
    } else {
        Err(ApiError::environment_not_found(env))
    }
}

/// Query pairs, form-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{key}: expected a non-negative integer, got {v:?}"))
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "{key}: expected true or false, got {v:?}"
            ))),
        }
    }

    fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.uint("limit")? {
            None => Ok(default),
            Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
            Some(n) => Ok((n as usize).min(MAX_LIST_LIMIT)),
        }
    }

    fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| ApiError::bad_request(format!("{key}: not an RFC 3339 time: {e}"))),
        }
    }
}

/// Parse a JSON request body; `None` for an empty body.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Option<Value>, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        ApiError::new(status, ApiError::kind_for(status), r.body_text())
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    match json_body(body)? {
        None => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

fn ok_json<T: serde::Serialize>(v: &T) -> Res {
    Ok(axum::Json(v).into_response())
}

// -------------------------------------------------------------------- work queue

/// The 400 message of a poll without `Anthropic-Worker-ID` in strict mode.
pub const STRICT_WORKER_ID_MESSAGE: &str = "strict mode: work/poll requires an Anthropic-Worker-ID header (the official worker always sends one, `<hostname>-<12 hex digits>`; the API counts workers_polling from it)";

async fn poll(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::Poll, &headers).await?;
    require_env(&app, &env)?;
    require_env_key(&cred, &env)?;
    let q = Query::parse(q.as_deref());
    let block = match q.uint("block_ms")? {
        None => None,
        Some(0) => return Err(ApiError::bad_request("block_ms must be between 1 and 999")),
        Some(n) => Some(Duration::from_millis(n.min(MAX_BLOCK_MS))),
    };
    let reclaim = q.uint("reclaim_older_than_ms")?;
    let worker = headers
        .get("anthropic-worker-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned);
    if app.strict && worker.is_none() {
        return Err(ApiError::bad_request(STRICT_WORKER_ID_MESSAGE).with_code("worker_id_required"));
    }
    let start = Instant::now();
    loop {
        let notified = app.work_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let item = {
            let mut st = app.lock();
            if st.sweep(now) {
                app.change_notify.notify_waiters();
            }
            let reclaim = reclaim.unwrap_or(st.limits.reclaim_default_ms);
            st.poll(&env, reclaim, worker.as_deref(), now)
        };
        if let Some(w) = item {
            return ok_json(&w);
        }
        let left = block.and_then(|b| b.checked_sub(now.saturating_duration_since(start)));
        let Some(left) = left.filter(|l| !l.is_zero()) else {
            return ok_json(&Value::Null);
        };
        // Pending items become pollable with time, so wake up regularly as well.
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(left.min(Duration::from_millis(25))) => {}
            _ = app.cancel.cancelled() => return ok_json(&Value::Null),
        }
    }
}

async fn ack(
    AxState(app): AxState<App>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::Ack, &headers).await?;
    require_env(&app, &env)?;
    require_env_key(&cred, &env)?;
    let w = app.lock().ack(&env, &work, Instant::now())?;
    app.changed();
    ok_json(&w)
}

async fn heartbeat(
    AxState(app): AxState<App>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Res {
    let (fault, cred) = enter(&app, Endpoint::Heartbeat, &headers).await?;
    require_env(&app, &env)?;
    require_item_cred(&cred, &env, &work, false)?;
    let q = Query::parse(q.as_deref());
    let expected = q.get("expected_last_heartbeat").map(str::to_owned);
    let ttl = match q.uint("desired_ttl_seconds")? {
        Some(0) => {
            return Err(ApiError::bad_request(
                "desired_ttl_seconds must be at least 1",
            ));
        }
        t => t,
    };
    let now = Instant::now();
    let res = {
        let mut st = app.lock();
        if st.sweep(now) {
            app.work_notify.notify_waiters();
        }
        if fault.as_ref().is_some_and(|f| f.lease_lost) {
            st.steal_lease(&work, now);
        }
        st.heartbeat(&env, &work, expected.as_deref(), ttl, now)
    };
    app.change_notify.notify_waiters();
    ok_json(&res?)
}

async fn stop(
    AxState(app): AxState<App>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::Stop, &headers).await?;
    require_env(&app, &env)?;
    require_item_cred(&cred, &env, &work, true)?;
    let body = json_object(body)?;
    let force = match body.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("force must be a boolean")),
    };
    let w = app.lock().stop(&env, &work, force)?;
    app.changed();
    ok_json(&w)
}

async fn work_list(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::WorkList, &headers).await?;
    require_env(&app, &env)?;
    require_env_key(&cred, &env)?;
    let q = Query::parse(q.as_deref());
    let limit = q.limit(20)?;
    let page = app.lock().list_work(&env, limit, q.get("page"))?;
    ok_json(&page)
}

async fn work_get(
    AxState(app): AxState<App>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::WorkGet, &headers).await?;
    require_api(&cred)?;
    require_env(&app, &env)?;
    let w = app.lock().get_work(&env, &work)?;
    ok_json(&w)
}

async fn work_update(
    AxState(app): AxState<App>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::WorkUpdate, &headers).await?;
    require_api(&cred)?;
    require_env(&app, &env)?;
    let body = json_object(body)?;
    let Some(Value::Object(md)) = body.get("metadata") else {
        return Err(
            ApiError::bad_request("metadata (an object) is required").with_code("invalid_metadata")
        );
    };
    let w = app.lock().update_work_metadata(&env, &work, md)?;
    ok_json(&w)
}

async fn stats(AxState(app): AxState<App>, Path(env): Path<String>, headers: HeaderMap) -> Res {
    let (_, cred) = enter(&app, Endpoint::WorkStats, &headers).await?;
    require_api(&cred)?;
    require_env(&app, &env)?;
    let s = app.lock().stats(&env, Instant::now());
    ok_json(&s)
}

// -------------------------------------------------------------------- environments

async fn env_create(
    AxState(app): AxState<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentCreate, &headers).await?;
    require_api(&cred)?;
    let body = json_object(body)?;
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "name (a non-empty string) is required",
            ));
        }
    };
    let config = match body.get("config") {
        None | Some(Value::Null) => EnvironmentConfig::SelfHosted,
        Some(c) => serde_json::from_value(c.clone())
            .map_err(|e| ApiError::bad_request(format!("config: {e}")))?,
    };
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("description must be a string")),
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => Default::default(),
        Some(m) => serde_json::from_value(m.clone()).map_err(|_| {
            ApiError::bad_request("metadata must map strings to strings")
                .with_code("invalid_metadata")
        })?,
    };
    let scope = match body.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "organization" || s == "account" => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "scope must be organization or account",
            ));
        }
    };
    let (env, key) = {
        let mut st = app.lock();
        let r = st
            .add_environment(
                None,
                name,
                None,
                EnvOptions {
                    description,
                    metadata,
                    config,
                    scope,
                },
            )
            .map_err(ApiError::bad_request)?;
        st.note_environment_created(r.0.id.as_str());
        r
    };
    let mut resp = axum::Json(&env).into_response();
    if let Ok(v) = HeaderValue::from_str(&key) {
        resp.headers_mut().insert("x-emulator-environment-key", v);
    }
    Ok(resp)
}

async fn env_get(AxState(app): AxState<App>, Path(env): Path<String>, headers: HeaderMap) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentGet, &headers).await?;
    require_api(&cred)?;
    let e = app.lock().get_environment(&env)?;
    ok_json(&e)
}

async fn env_update(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentUpdate, &headers).await?;
    require_api(&cred)?;
    let body = json_object(body)?;
    let e = app.lock().update_environment(&env, &body)?;
    ok_json(&e)
}

async fn env_list(AxState(app): AxState<App>, headers: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentList, &headers).await?;
    require_api(&cred)?;
    let q = Query::parse(q.as_deref());
    let include = q.bool("include_archived")?.unwrap_or(false);
    let limit = q.limit(20)?;
    let page = app
        .lock()
        .list_environments(include, limit, q.get("page"))?;
    ok_json(&page)
}

async fn env_delete(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentDelete, &headers).await?;
    require_api(&cred)?;
    app.lock().delete_environment(&env)?;
    ok_json(&json!({"id": env, "type": "environment_deleted"}))
}

async fn env_archive(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentArchive, &headers).await?;
    require_api(&cred)?;
    let e = app.lock().archive_environment(&env)?;
    ok_json(&e)
}

// -------------------------------------------------------------------- sessions

async fn session_create(
    AxState(app): AxState<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::SessionCreate, &headers).await?;
    require_api(&cred)?;
    let body = json_object(body)?;
    let env = match body.get("environment_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "environment_id (a string) is required",
            ));
        }
    };
    let script: Script = match body.get("emulator_script") {
        None | Some(Value::Null) => Script::default(),
        Some(s) => serde_json::from_value(s.clone())
            .map_err(|e| ApiError::bad_request(format!("emulator_script: {e}")))?,
    };
    for (i, c) in script.calls.iter().enumerate() {
        validate_call(c)
            .map_err(|m| ApiError::bad_request(format!("emulator_script call #{i}: {m}")))?;
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(o)) if o.values().all(Value::is_string) => m.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "metadata must map strings to strings",
            ));
        }
    };
    let title = body.get("title").cloned().unwrap_or(Value::Null);
    let session = {
        let mut st = app.lock();
        let sid = st.create_session(&env, None, script, false, metadata, title)?;
        st.session_json(&sid)?
    };
    app.changed();
    ok_json(&session)
}

async fn session_get(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::SessionGet, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let s = app.lock().session_json(&sid)?;
    ok_json(&s)
}

async fn session_delete(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::SessionDelete, &headers).await?;
    require_api(&cred)?;
    app.lock().delete_session(&sid)?;
    app.changed();
    ok_json(&json!({"id": sid, "type": "session_deleted"}))
}

async fn events_list(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EventsList, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let q = Query::parse(q.as_deref());
    let descending = match q.get("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order must be asc or desc, not {o:?}"
            )));
        }
    };
    let mut types = q.all("types[]");
    types.extend(q.all("types"));
    let query = EventQuery {
        limit: q.limit(100)?,
        page: q.get("page").filter(|p| !p.is_empty()).map(str::to_owned),
        descending,
        types,
        gt: q.time("created_at[gt]")?,
        gte: q.time("created_at[gte]")?,
        lt: q.time("created_at[lt]")?,
        lte: q.time("created_at[lte]")?,
    };
    let page = app.lock().list_events(&sid, &query)?;
    ok_json(&page)
}

async fn events_send(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EventsSend, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let body = json_object(body)?;
    let Some(Value::Array(events)) = body.get("events") else {
        return Err(ApiError::bad_request("events (a list) is required"));
    };
    if events.is_empty() || events.len() > MAX_EVENTS_PER_SEND {
        return Err(ApiError::bad_request(format!(
            "events must hold 1 to {MAX_EVENTS_PER_SEND} events"
        )));
    }
    if !events
        .iter()
        .all(|e| e.get("type").is_some_and(Value::is_string))
    {
        return Err(ApiError::bad_request(
            "every event must be an object with a string type",
        ));
    }
    let stored = {
        let mut st = app.lock();
        st.check_send(&sid, events)?;
        st.send_events(&sid, events.clone())
    };
    app.changed();
    ok_json(&json!({ "data": stored }))
}

async fn stream(AxState(app): AxState<App>, Path(sid): Path<String>, headers: HeaderMap) -> Res {
    let (fault, cred) = enter(&app, Endpoint::Stream, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let sub = app.lock().subscribe(&sid)?;
    let drop_after = fault.and_then(|f| f.drop_after_frames);
    let body = sse_body(sub, drop_after, app.keepalive, app.cancel.clone());
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(resp)
}

struct StreamState {
    opened: bool,
    sub: Option<Subscription>,
    frames_left: Option<u32>,
    done: bool,
    keepalive: tokio::time::Interval,
    cancel: CancellationToken,
}

/// The SSE body: an opening comment (so headers and a first chunk go out at once), then one
/// `event: <type>` + `data: <json>` frame per event, `event: ping` keep-alives, and the end after
/// a terminal event, a lagging subscriber, a dropped-stream fault or shutdown.
fn sse_body(
    sub: Subscription,
    drop_after: Option<u32>,
    keepalive: Duration,
    cancel: CancellationToken,
) -> Body {
    let period = keepalive.max(Duration::from_millis(10));
    let st = StreamState {
        opened: false,
        sub: Some(sub),
        frames_left: drop_after,
        done: false,
        keepalive: tokio::time::interval_at(Instant::now() + period, period),
        cancel,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.opened {
            st.opened = true;
            return Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b": stream opened\n\n")),
                st,
            ));
        }
        if st.frames_left == Some(0) {
            return None;
        }
        let frame = match st.sub.as_mut()? {
            Subscription::Ended(f) => {
                let f = f.clone();
                st.done = true;
                f
            }
            Subscription::Live(rx) => {
                tokio::select! {
                    _ = st.cancel.cancelled() => return None,
                    _ = st.keepalive.tick() => {
                        return Some((Ok(Bytes::from_static(b"event: ping\ndata: {}\n\n")), st));
                    }
                    r = rx.recv() => match r {
                        Ok(f) => f,
                        // A lagging or closed subscriber ends; the client reconnects and reconciles.
                        Err(_) => return None,
                    },
                }
            }
        };
        if frame.terminal {
            st.done = true;
        }
        if let Some(n) = st.frames_left.as_mut() {
            *n -= 1;
        }
        Some((Ok(frame.bytes.clone()), st))
    });
    Body::from_stream(s)
}

/// Queue non-session work (e.g. a health check).
pub(crate) fn enqueue(app: &App, env: &str, data: WorkData) -> Result<String, ApiError> {
    let id = {
        let mut st = app.lock();
        if !st.env_exists(env) {
            return Err(ApiError::environment_not_found(env));
        }
        st.enqueue(env, data)
    };
    app.changed();
    Ok(id)
}
