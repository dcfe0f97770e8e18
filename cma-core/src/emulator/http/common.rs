//! The steps every handler shares: injected faults, credentials and the beta header,
//! credential checks per endpoint, query-string and JSON body parsing, JSON answers.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{App, MANAGED_AGENTS_BETA, MAX_LIST_LIMIT, Res};
use crate::emulator::error::ApiError;
use crate::emulator::faults::{Endpoint, Fault};
use crate::emulator::state::Cred;

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
pub(super) async fn enter(
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

pub(super) fn require_api(cred: &Cred) -> Result<(), ApiError> {
    match cred {
        Cred::Api => Ok(()),
        _ => Err(wrong_key("an API key")),
    }
}

pub(super) fn require_env_key(cred: &Cred, env: &str) -> Result<(), ApiError> {
    match cred {
        Cred::Env(e) if e == env => Ok(()),
        _ => Err(wrong_key("this environment's key")),
    }
}

/// Environment key of `env`, or a sessions token of `work` (plus the API key when `api`).
pub(super) fn require_item_cred(
    cred: &Cred,
    env: &str,
    work: &str,
    api: bool,
) -> Result<(), ApiError> {
    match cred {
        Cred::Env(e) if e == env => Ok(()),
        Cred::Sessions(w) if w == work => Ok(()),
        Cred::Api if api => Ok(()),
        _ => Err(wrong_key(
            "the environment key or the work item's sessions token",
        )),
    }
}

pub(super) fn require_session_cred(app: &App, cred: &Cred, sid: &str) -> Result<(), ApiError> {
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

pub(super) fn require_env(app: &App, env: &str) -> Result<(), ApiError> {
    if app.lock().env_exists(env) {
        Ok(())
    } else {
        Err(ApiError::environment_not_found(env))
    }
}

/// Query pairs, form-decoded.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Self {
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(super) fn uint(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{key}: expected a non-negative integer, got {v:?}"))
            }),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "{key}: expected true or false, got {v:?}"
            ))),
        }
    }

    pub(super) fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.uint("limit")? {
            None => Ok(default),
            Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
            Some(n) => Ok((n as usize).min(MAX_LIST_LIMIT)),
        }
    }

    pub(super) fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
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

pub(super) fn json_object(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    match json_body(body)? {
        None => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

pub(super) fn ok_json<T: serde::Serialize>(v: &T) -> Res {
    Ok(axum::Json(v).into_response())
}
