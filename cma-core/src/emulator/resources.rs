//! Skills and memory stores: the catalogue the emulator serves to workers (docs/protocol.md §4) and
//! the HTTP handlers of `/v1/skills/…` and `/v1/memory_stores/…/memories`.
//!
//! * Skills: `GET /v1/skills/{skill_id}/versions/{version}` (`latest` resolves to the newest
//!   version) and `…/{version_id}/content` (the archive bytes as added: zip, tar or tar.gz). Any valid credential is accepted; no beta is required.
//! * Memory stores (beta `agent-memory-2026-07-22` or `managed-agents-2026-04-01`): list
//!   (`view=basic|full`, `limit` 1–100, at most 20 with `full`, `page`, `path_prefix`, `depth`
//!   rollups into `memory_prefix` items; ordered by path), retrieve (`view`, default `full`),
//!   create `{path, content}`, update `{content?, path?, precondition?}` and delete
//!   (`?expected_content_sha256=`). A failed `content_sha256` precondition answers 409
//!   `memory_precondition_failed_error`, a create or rename onto a taken path 409
//!   `memory_path_conflict_error`; both carry `x-should-retry: false` (deterministic conflicts).
//!   The API key can reach every store; a sessions token only the stores attached to its session,
//!   and only reads on a store attached `read_only` (403 otherwise); the environment key is
//!   refused (401), as the real server does.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::http::{App, credential};
use super::state::{Cred, State};

/// The memory beta.
pub const AGENT_MEMORY_BETA: &str = "agent-memory-2026-07-22";
/// Largest memory content (100 kB).
pub const MAX_MEMORY_BYTES: usize = 102_400;
/// Most memories one store holds.
pub const MAX_MEMORIES_PER_STORE: usize = 2000;
/// Most stores and most skill versions the emulator keeps.
pub const MAX_STORES: usize = 1000;
/// Largest skill archive accepted.
pub const MAX_SKILL_ARCHIVE_BYTES: usize = 32 * 1024 * 1024;

/// A skill to attach to a session (`agent.skills[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillAttachment {
    /// The skill id.
    pub skill_id: String,
    /// `latest` (default) or a version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A memory store to attach to a session (`resources[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryAttachment {
    /// `memstore_…` (created empty when unknown).
    pub memory_store_id: String,
    /// `read_write` (default) or `read_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Where the store is mounted (e.g. `/mnt/memory/notes`); absent ⇒ the worker's fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl MemoryAttachment {
    /// A read-write attachment at `mount_path`.
    pub fn read_write(store: impl Into<String>, mount_path: Option<&str>) -> Self {
        Self {
            memory_store_id: store.into(),
            access: Some("read_write".into()),
            mount_path: mount_path.map(Into::into),
            name: None,
        }
    }

    /// A read-only attachment at `mount_path`.
    pub fn read_only(store: impl Into<String>, mount_path: Option<&str>) -> Self {
        Self {
            access: Some("read_only".into()),
            ..Self::read_write(store, mount_path)
        }
    }

    pub(crate) fn to_resource(&self) -> Value {
        let mut v = json!({
            "type": "memory_store",
            "memory_store_id": self.memory_store_id,
            "access": self.access.clone().unwrap_or_else(|| "read_write".into()),
        });
        if let Some(p) = &self.mount_path {
            v["mount_path"] = json!(p);
        }
        if let Some(n) = &self.name {
            v["name"] = json!(n);
        }
        v
    }
}

/// What to attach to a new session besides its script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionAttachments {
    /// Skills (`agent.skills[]`).
    #[serde(default)]
    pub skills: Vec<SkillAttachment>,
    /// Memory stores (`resources[]`).
    #[serde(default)]
    pub memory_stores: Vec<MemoryAttachment>,
}

#[derive(Debug, Clone)]
struct SkillVersionEntry {
    id: String,
    name: String,
    archive: Bytes,
    created_at: String,
}

#[derive(Debug, Clone)]
struct MemoryEntry {
    id: String,
    path: String,
    content: String,
    sha: String,
    version: u64,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Default)]
struct StoreEntry {
    /// Keyed by path.
    memories: BTreeMap<String, MemoryEntry>,
    /// Writes applied right after the next listing (to stage a race deterministically).
    race_after_list: Vec<(String, Option<String>)>,
}

/// The skills and memory stores of the emulator.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    skills: HashMap<String, Vec<SkillVersionEntry>>,
    stores: HashMap<String, StoreEntry>,
    next_id: u64,
}

fn sha_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Check a memory path: starts with `/`, 1–20 non-empty segments other than `.`/`..`, at most
/// 1024 bytes, no control characters.
pub(crate) fn validate_memory_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("path must start with /".into());
    }
    if path.len() > 1024 {
        return Err("path is longer than 1024 bytes".into());
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err("path contains control characters".into());
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    if segs.len() > 20 {
        return Err("path has more than 20 segments".into());
    }
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err("path segments must not be empty, . or ..".into());
    }
    Ok(())
}

/// A tar archive of `files` wrapped in a `<name>/` directory, as skill bundles are packaged.
pub(crate) fn skill_tar(name: &str, files: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("{name}/{path}"), content.as_bytes())
            .map_err(|e| format!("skill {name}: file {path:?}: {e}"))?;
    }
    b.into_inner().map_err(|e| e.to_string())
}

impl Resources {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!(
            "{prefix}_{:08}{}",
            self.next_id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    }

    /// Add a version of a skill; returns its version id.
    pub(crate) fn add_skill(
        &mut self,
        skill_id: &str,
        name: &str,
        archive: Vec<u8>,
    ) -> Result<String, String> {
        if skill_id.is_empty() {
            return Err("skill id must not be empty".into());
        }
        if archive.len() > MAX_SKILL_ARCHIVE_BYTES {
            return Err(format!(
                "skill archive is larger than {MAX_SKILL_ARCHIVE_BYTES} bytes"
            ));
        }
        if !self.skills.contains_key(skill_id) && self.skills.len() >= MAX_STORES {
            return Err("too many skills".into());
        }
        let id = self.id("skillver");
        let versions = self.skills.entry(skill_id.to_owned()).or_default();
        if versions.len() >= 100 {
            versions.remove(0);
        }
        versions.push(SkillVersionEntry {
            id: id.clone(),
            name: name.to_owned(),
            archive: Bytes::from(archive),
            created_at: now(),
        });
        Ok(id)
    }

    fn skill_version(&self, skill_id: &str, version: &str) -> Result<&SkillVersionEntry, ApiError> {
        let versions = self
            .skills
            .get(skill_id)
            .ok_or_else(|| ApiError::not_found(format!("skill {skill_id} not found")))?;
        let found = if version == "latest" {
            versions.last()
        } else {
            versions.iter().find(|v| v.id == version)
        };
        found.ok_or_else(|| {
            ApiError::not_found(format!("skill {skill_id} has no version {version}"))
        })
    }

    /// Create an empty store (no-op when it exists).
    pub(crate) fn ensure_store(&mut self, store: &str) -> Result<(), String> {
        if store.is_empty() {
            return Err("memory store id must not be empty".into());
        }
        if !self.stores.contains_key(store) && self.stores.len() >= MAX_STORES {
            return Err("too many memory stores".into());
        }
        self.stores.entry(store.to_owned()).or_default();
        Ok(())
    }

    fn store_mut(&mut self, store: &str) -> Result<&mut StoreEntry, ApiError> {
        self.stores
            .get_mut(store)
            .ok_or_else(|| ApiError::not_found(format!("memory store {store} not found")))
    }

    /// Create or overwrite the memory at `path` (no precondition).
    pub(crate) fn put(
        &mut self,
        store: &str,
        path: &str,
        content: &str,
    ) -> Result<Value, ApiError> {
        validate_memory_path(path).map_err(ApiError::bad_request)?;
        if content.len() > MAX_MEMORY_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "content is larger than 100 kB",
            ));
        }
        let id = self.id("mem");
        let s = self.store_mut(store)?;
        let t = now();
        let sha = sha_hex(content.as_bytes());
        if let Some(m) = s.memories.get_mut(path) {
            if m.sha != sha {
                m.content = content.to_owned();
                m.sha = sha;
                m.version += 1;
                m.updated_at = t;
            }
            return Ok(memory_json(store, m, true));
        }
        if s.memories.len() >= MAX_MEMORIES_PER_STORE {
            return Err(ApiError::bad_request(format!(
                "a store holds at most {MAX_MEMORIES_PER_STORE} memories"
            )));
        }
        let m = MemoryEntry {
            id,
            path: path.to_owned(),
            content: content.to_owned(),
            sha,
            version: 1,
            created_at: t.clone(),
            updated_at: t,
        };
        let v = memory_json(store, &m, true);
        s.memories.insert(path.to_owned(), m);
        Ok(v)
    }

    /// Delete the memory at `path`; whether it existed.
    pub(crate) fn remove_path(&mut self, store: &str, path: &str) -> bool {
        self.stores
            .get_mut(store)
            .is_some_and(|s| s.memories.remove(path).is_some())
    }

    /// `path → content` of a store.
    pub(crate) fn contents(&self, store: &str) -> Option<BTreeMap<String, String>> {
        self.stores.get(store).map(|s| {
            s.memories
                .iter()
                .map(|(p, m)| (p.clone(), m.content.clone()))
                .collect()
        })
    }

    pub(crate) fn stage_race(
        &mut self,
        store: &str,
        path: &str,
        content: Option<&str>,
    ) -> Result<(), ApiError> {
        validate_memory_path(path).map_err(ApiError::bad_request)?;
        let s = self.store_mut(store)?;
        s.race_after_list
            .push((path.to_owned(), content.map(str::to_owned)));
        Ok(())
    }

    fn find_id<'a>(s: &'a StoreEntry, id: &str) -> Option<&'a MemoryEntry> {
        s.memories.values().find(|m| m.id == id)
    }
}

fn memory_json(store: &str, m: &MemoryEntry, full: bool) -> Value {
    json!({
        "type": "memory",
        "id": m.id,
        "memory_store_id": store,
        "path": m.path,
        "content_sha256": m.sha,
        "content_size_bytes": m.content.len(),
        "memory_version_id": format!("memver_{}_{}", m.id.trim_start_matches("mem_"), m.version),
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "content": if full { json!(m.content) } else { Value::Null },
    })
}

fn precondition_failed(message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "memory_precondition_failed_error",
        message,
    );
    e.headers.push((
        axum::http::HeaderName::from_static("x-should-retry"),
        "false".into(),
    ));
    e
}

fn path_conflict(path: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "memory_path_conflict_error",
        format!("a memory already exists at {path}"),
    );
    e.headers.push((
        axum::http::HeaderName::from_static("x-should-retry"),
        "false".into(),
    ));
    e
}

// ------------------------------------------------------------------------- HTTP

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/skills/{skill}/versions/{version}", get(skill_version))
        .route(
            "/v1/skills/{skill}/versions/{version}/content",
            get(skill_content),
        )
        .route(
            "/v1/memory_stores/{store}/memories",
            get(memory_list).post(memory_create),
        )
        .route(
            "/v1/memory_stores/{store}/memories/{id}",
            get(memory_get).post(memory_update).delete(memory_delete),
        )
}

fn authenticate(app: &App, headers: &HeaderMap) -> Result<Cred, ApiError> {
    let Some(token) = credential(headers) else {
        return Err(ApiError::unauthorized(
            "missing credentials: send Authorization: Bearer <key> or x-api-key",
        ));
    };
    app.lock()
        .resolve(&token)
        .ok_or_else(|| ApiError::unauthorized("invalid credentials"))
}

fn memory_beta(headers: &HeaderMap) -> bool {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| {
            matches!(
                b.trim(),
                AGENT_MEMORY_BETA | super::http::MANAGED_AGENTS_BETA
            )
        })
}

/// Authenticate a memory call on `store`; `write` for mutations.
fn memory_access(app: &App, headers: &HeaderMap, store: &str, write: bool) -> Result<(), ApiError> {
    let cred = authenticate(app, headers)?;
    if !memory_beta(headers) {
        return Err(ApiError::bad_request(format!(
            "anthropic-beta must include {AGENT_MEMORY_BETA}"
        )));
    }
    let st = app.lock();
    match cred {
        Cred::Api => Ok(()),
        Cred::Env(_) => Err(ApiError::unauthorized(
            "the memory endpoints accept a sessions token or an API key, not the environment key",
        )),
        Cred::Sessions(work) => {
            let attached = st
                .token_session(&work)
                .map(|sid| st.session_resources(&sid))
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.get("memory_store_id").and_then(Value::as_str) == Some(store));
            match attached {
                None => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    format!("memory store {store} is not attached to this session"),
                )),
                Some(r)
                    if write && r.get("access").and_then(Value::as_str) == Some("read_only") =>
                {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "permission_error",
                        format!("memory store {store} is attached read-only"),
                    ))
                }
                Some(_) => Ok(()),
            }
        }
    }
}

fn query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

fn q<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn view_full(pairs: &[(String, String)], default_full: bool) -> Result<bool, ApiError> {
    match q(pairs, "view") {
        None => Ok(default_full),
        Some("full") => Ok(true),
        Some("basic") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "view must be basic or full, not {v:?}"
        ))),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    Ok(v)
}

fn with_state<T>(
    app: &App,
    f: impl FnOnce(&mut State) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut st = app.lock();
    f(&mut st)
}

async fn skill_version(
    AxState(app): AxState<App>,
    Path((skill, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&app, &headers)?;
    let st = app.lock();
    let v = st.resources.skill_version(&skill, &version)?;
    Ok(axum::Json(json!({
        "type": "skill_version",
        "id": v.id,
        "skill_id": skill,
        "name": v.name,
        "description": format!("emulated skill {}", v.name),
        "created_at": v.created_at,
    }))
    .into_response())
}

async fn skill_content(
    AxState(app): AxState<App>,
    Path((skill, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&app, &headers)?;
    let archive = {
        let st = app.lock();
        if version == "latest" {
            return Err(ApiError::bad_request(
                "download a version by its id, not latest",
            ));
        }
        st.resources
            .skill_version(&skill, &version)?
            .archive
            .clone()
    };
    let kind = if archive.starts_with(b"PK") {
        "application/zip"
    } else {
        "application/x-tar"
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, kind)],
        Body::from(archive),
    )
        .into_response())
}

async fn memory_list(
    AxState(app): AxState<App>,
    Path(store): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    memory_access(&app, &headers, &store, false)?;
    let pairs = query(raw.as_deref());
    let full = view_full(&pairs, false)?;
    let mut limit = match q(&pairs, "limit") {
        None => 20,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "limit must be an integer from 1 to 100",
                ));
            }
        },
    };
    if full {
        limit = limit.min(20);
    }
    let offset = match q(&pairs, "page") {
        None => 0,
        Some(p) => p
            .strip_prefix("mpage_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid page cursor {p:?}")))?,
    };
    let prefix = q(&pairs, "path_prefix").unwrap_or("/").to_owned();
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(ApiError::bad_request(
            "path_prefix must start and end with /",
        ));
    }
    let depth = match q(&pairs, "depth") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("depth must be a non-negative integer"))?,
    };
    let page = with_state(&app, |st| {
        let s = st.resources.store_mut(&store)?;
        let mut items: Vec<Value> = Vec::new();
        let mut seen_prefixes = std::collections::BTreeSet::new();
        for (path, m) in s.memories.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(&prefix) else {
                break;
            };
            let segs: Vec<&str> = rest.split('/').collect();
            if depth > 0 && segs.len() > depth {
                let p = format!("{prefix}{}/", segs[..depth].join("/"));
                if seen_prefixes.insert(p.clone()) {
                    items.push(json!({"type": "memory_prefix", "path": p}));
                }
                continue;
            }
            items.push(memory_json(&store, m, full));
        }
        let total = items.len();
        let data: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
        let next = (offset + data.len() < total).then(|| format!("mpage_{}", offset + data.len()));
        // A staged race lands right after this listing was composed.
        let races = std::mem::take(&mut s.race_after_list);
        for (path, content) in races {
            match content {
                Some(c) => {
                    st.resources.put(&store, &path, &c)?;
                }
                None => {
                    st.resources.remove_path(&store, &path);
                }
            }
        }
        Ok(json!({"data": data, "next_page": next}))
    })?;
    Ok(axum::Json(page).into_response())
}

async fn memory_get(
    AxState(app): AxState<App>,
    Path((store, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    memory_access(&app, &headers, &store, false)?;
    let full = view_full(&query(raw.as_deref()), true)?;
    let v = with_state(&app, |st| {
        let s = st.resources.store_mut(&store)?;
        let m = Resources::find_id(s, &id)
            .ok_or_else(|| ApiError::not_found(format!("memory {id} not found")))?;
        Ok(memory_json(&store, m, full))
    })?;
    Ok(axum::Json(v).into_response())
}

fn content_of(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("content") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(String::new())),
        Some(Value::String(s)) => {
            if s.len() > MAX_MEMORY_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "content is larger than 100 kB (102,400 bytes)",
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad_request("content must be a string")),
    }
}

async fn memory_create(
    AxState(app): AxState<App>,
    Path(store): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    memory_access(&app, &headers, &store, true)?;
    let full = view_full(&query(raw.as_deref()), false)?;
    let body = parse_json(&body)?;
    let path = body
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("path is required"))?
        .to_owned();
    validate_memory_path(&path).map_err(ApiError::bad_request)?;
    let content = content_of(&body)?.unwrap_or_default();
    let v = with_state(&app, |st| {
        let s = st.resources.store_mut(&store)?;
        if s.memories.contains_key(&path) {
            return Err(path_conflict(&path));
        }
        let mut v = st.resources.put(&store, &path, &content)?;
        if !full {
            v["content"] = Value::Null;
        }
        Ok(v)
    })?;
    Ok(axum::Json(v).into_response())
}

async fn memory_update(
    AxState(app): AxState<App>,
    Path((store, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    memory_access(&app, &headers, &store, true)?;
    let full = view_full(&query(raw.as_deref()), false)?;
    let body = parse_json(&body)?;
    let content = content_of(&body)?;
    let new_path = match body.get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => {
            validate_memory_path(p).map_err(ApiError::bad_request)?;
            Some(p.clone())
        }
        Some(_) => return Err(ApiError::bad_request("path must be a string")),
    };
    let expected = match body.get("precondition") {
        None | Some(Value::Null) => None,
        Some(p) => {
            if p.get("type").and_then(Value::as_str) != Some("content_sha256") {
                return Err(ApiError::bad_request(
                    "precondition.type must be content_sha256",
                ));
            }
            Some(
                p.get("content_sha256")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::bad_request("precondition.content_sha256 is required")
                    })?
                    .to_owned(),
            )
        }
    };
    let v = with_state(&app, |st| {
        let s = st.resources.store_mut(&store)?;
        let old_path = Resources::find_id(s, &id)
            .map(|m| m.path.clone())
            .ok_or_else(|| ApiError::not_found(format!("memory {id} not found")))?;
        let mut m = s
            .memories
            .get(&old_path)
            .cloned()
            .ok_or_else(|| ApiError::not_found("memory vanished"))?;
        if let Some(exp) = &expected
            && *exp != m.sha
        {
            return Err(precondition_failed(format!(
                "memory {id} content_sha256 is {}, not {exp}",
                m.sha
            )));
        }
        if let Some(p) = &new_path
            && *p != old_path
            && s.memories.contains_key(p)
        {
            return Err(path_conflict(p));
        }
        let mut changed = false;
        if let Some(c) = content {
            let sha = sha_hex(c.as_bytes());
            if sha != m.sha {
                m.content = c;
                m.sha = sha;
                changed = true;
            }
        }
        if let Some(p) = new_path
            && p != old_path
        {
            s.memories.remove(&old_path);
            m.path = p;
            changed = true;
        }
        if changed {
            m.version += 1;
            m.updated_at = now();
        }
        let v = memory_json(&store, &m, full);
        s.memories.insert(m.path.clone(), m);
        Ok(v)
    })?;
    Ok(axum::Json(v).into_response())
}

async fn memory_delete(
    AxState(app): AxState<App>,
    Path((store, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    memory_access(&app, &headers, &store, true)?;
    let pairs = query(raw.as_deref());
    let expected = q(&pairs, "expected_content_sha256").map(str::to_owned);
    with_state(&app, |st| {
        let s = st.resources.store_mut(&store)?;
        let m = Resources::find_id(s, &id)
            .ok_or_else(|| ApiError::not_found(format!("memory {id} not found")))?;
        if let Some(exp) = &expected
            && *exp != m.sha
        {
            return Err(precondition_failed(format!(
                "memory {id} content_sha256 is {}, not {exp}",
                m.sha
            )));
        }
        let path = m.path.clone();
        s.memories.remove(&path);
        Ok(())
    })?;
    Ok(axum::Json(json!({"id": id, "type": "memory_deleted"})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_paths_follow_the_documented_rules() {
        assert!(validate_memory_path("/a/b.md").is_ok());
        for bad in ["a", "/", "/a//b", "/a/../b", "/./a", "/a\u{7}"] {
            assert!(validate_memory_path(bad).is_err(), "{bad}");
        }
        let deep = format!("/{}", vec!["x"; 21].join("/"));
        assert!(validate_memory_path(&deep).is_err());
    }

    #[test]
    fn put_keeps_ids_and_bumps_versions_only_on_change() {
        let mut r = Resources::default();
        r.ensure_store("memstore_1").unwrap();
        let a = r.put("memstore_1", "/a", "x").unwrap();
        let b = r.put("memstore_1", "/a", "x").unwrap();
        assert_eq!(a, b);
        let c = r.put("memstore_1", "/a", "y").unwrap();
        assert_eq!(a["id"], c["id"]);
        assert_ne!(a["memory_version_id"], c["memory_version_id"]);
        assert_eq!(c["content_sha256"], sha_hex(b"y"));
    }
}
