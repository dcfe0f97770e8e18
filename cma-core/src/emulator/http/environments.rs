//! The environment handlers (docs/protocol.md §2.2): create, retrieve, update, list, delete and
//! archive.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::common::{Query, enter, json_object, ok_json, require_api};
use super::{App, Res};
use crate::emulator::error::ApiError;
use crate::emulator::faults::Endpoint;
use crate::emulator::state::EnvOptions;
use crate::protocol::EnvironmentConfig;

pub(super) async fn env_create(
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

pub(super) async fn env_get(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentGet, &headers).await?;
    require_api(&cred)?;
    let e = app.lock().get_environment(&env)?;
    ok_json(&e)
}

pub(super) async fn env_update(
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

pub(super) async fn env_list(
    AxState(app): AxState<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Res {
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

pub(super) async fn env_delete(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentDelete, &headers).await?;
    require_api(&cred)?;
    app.lock().delete_environment(&env)?;
    ok_json(&json!({"id": env, "type": "environment_deleted"}))
}

pub(super) async fn env_archive(
    AxState(app): AxState<App>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (_, cred) = enter(&app, Endpoint::EnvironmentArchive, &headers).await?;
    require_api(&cred)?;
    let e = app.lock().archive_environment(&env)?;
    ok_json(&e)
}
