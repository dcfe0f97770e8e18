//! The work queue handlers (docs/protocol.md §2.1, §3): poll, ack, heartbeat, stop, list,
//! retrieve, update and stats, and queueing non-session work.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;

use super::common::{
    Query, enter, json_object, ok_json, require_api, require_env, require_env_key,
    require_item_cred,
};
use super::{App, MAX_BLOCK_MS, Res};
use crate::emulator::error::ApiError;
use crate::emulator::faults::Endpoint;
use crate::protocol::WorkData;

/// The 400 message of a poll without `Anthropic-Worker-ID` in strict mode.
pub const STRICT_WORKER_ID_MESSAGE: &str = "strict mode: work/poll requires an Anthropic-Worker-ID header (the official worker always sends one, `<hostname>-<12 hex digits>`; the API counts workers_polling from it)";

pub(super) async fn poll(
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

pub(super) async fn ack(
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

pub(super) async fn heartbeat(
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

pub(super) async fn stop(
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

pub(super) async fn work_list(
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

pub(super) async fn work_get(
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

pub(super) async fn work_update(
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

pub(super) async fn stats(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::WorkStats, &headers).await?;
    require_api(&cred)?;
    require_env(&app, &env)?;
    let s = app.lock().stats(&env, Instant::now());
    ok_json(&s)
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
