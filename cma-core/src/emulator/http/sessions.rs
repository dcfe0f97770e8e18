//! The session handlers (docs/protocol.md §4): create, retrieve, delete, and the event history
//! (list and send).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::common::{Query, enter, json_object, ok_json, require_api, require_session_cred};
use super::{App, MAX_EVENTS_PER_SEND, Res};
use crate::emulator::error::ApiError;
use crate::emulator::faults::Endpoint;
use crate::emulator::scenario::{Script, validate_call};
use crate::emulator::state::EventQuery;

pub(super) async fn session_create(
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

pub(super) async fn session_get(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::SessionGet, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let s = app.lock().session_json(&sid)?;
    ok_json(&s)
}

pub(super) async fn session_delete(
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

pub(super) async fn events_list(
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

pub(super) async fn events_send(
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
