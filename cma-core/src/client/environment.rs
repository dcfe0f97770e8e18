//! Work-queue and environment endpoints (docs/protocol.md §2).

use std::fmt;
use std::sync::Arc;

use http::Method;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::error::ApiError;
use super::transport::{Body, Client, Credential, Helper, Ready, Request, encode_path_segment};
use crate::protocol::{
    Environment, EnvironmentConfig, EnvironmentId, Extra, Page, Work, WorkHeartbeat, WorkId,
    WorkQueueStats,
};

/// Smallest accepted `block_ms`.
pub const MIN_BLOCK_MS: u32 = 1;
/// Largest accepted `block_ms` (the server's cap).
pub const MAX_BLOCK_MS: u32 = 999;

/// A string-keyed map that keeps insertion order on the wire (the SDK sends dicts in order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> OrderedMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Insert or replace `key` (a replaced key keeps its position).
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Builder form of [`Self::insert`].
    pub fn with(mut self, key: impl Into<String>, value: V) -> Self {
        self.insert(key, value);
        self
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<K: Into<String>, V> FromIterator<(K, V)> for OrderedMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Self::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// String metadata, in order.
pub type Metadata = OrderedMap<String>;

/// A metadata merge patch: `Some` upserts, `None` (sent as `null`) deletes.
pub type MetadataPatch = OrderedMap<Option<String>>;

/// Query of `GET …/work/poll` (W1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollParams {
    /// Long-poll for up to this many milliseconds (1–999); `None` = non-blocking.
    pub block_ms: Option<u32>,
    /// Reclaim items polled but not acknowledged for this long (server default 5000).
    pub reclaim_older_than_ms: Option<u64>,
}

impl PollParams {
    /// The worker's long poll: `block_ms = 999`.
    pub fn long_poll() -> Self {
        Self {
            block_ms: Some(MAX_BLOCK_MS),
            reclaim_older_than_ms: None,
        }
    }
}

/// Query of `POST …/heartbeat` (W3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatParams {
    /// Requested lease TTL.
    pub desired_ttl_seconds: Option<u64>,
    /// `NO_HEARTBEAT` for the first claim, else the previous `last_heartbeat` verbatim.
    pub expected_last_heartbeat: Option<String>,
}

impl HeartbeatParams {
    /// A heartbeat that echoes `expected_last_heartbeat`.
    pub fn expecting(expected_last_heartbeat: impl Into<String>) -> Self {
        Self {
            desired_ttl_seconds: None,
            expected_last_heartbeat: Some(expected_last_heartbeat.into()),
        }
    }
}

/// Cursor pagination query (`limit`, `page`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor from a previous page's `next_page`.
    pub page: Option<String>,
}

/// Query of `GET /v1/environments`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEnvironmentsParams {
    /// Include archived environments.
    pub include_archived: Option<bool>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor.
    pub page: Option<String>,
}

/// Body of `POST /v1/environments`. `None` fields are omitted; `Some(None)` is sent as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateEnvironment {
    /// Required name.
    pub name: String,
    /// `{"type":"self_hosted"}` or a cloud config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Option<EnvironmentConfig>>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    /// String metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// `organization` or `account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Option<String>>,
}

/// Body of `POST /v1/environments/{id}`. `None` fields are omitted; `Some(None)` is sent as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateEnvironment {
    /// New config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Option<EnvironmentConfig>>,
    /// New description (`Some(None)` clears it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    /// Metadata merge patch (`null` values delete keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Option<MetadataPatch>>,
    /// New name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Option<String>>,
}

/// Response of `DELETE /v1/environments/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentDeleted {
    /// The deleted environment.
    pub id: EnvironmentId,
    /// `environment_deleted`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize)]
struct StopBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    force: Option<bool>,
}

#[derive(Serialize)]
struct UpdateWorkBody<'a> {
    metadata: &'a MetadataPatch,
}

/// The work-queue endpoints of one environment, bound to one credential (docs/protocol.md §2.1).
///
/// Which credential the server accepts depends on the endpoint: the environment key for
/// [`poll`](Self::poll), [`ack`](Self::ack), [`list_work`](Self::list_work) and the poller's
/// [`stop`](Self::stop); the item's sessions token (or the environment key) for
/// [`heartbeat`](Self::heartbeat) and the worker's force-stop; an API key for
/// [`retrieve_work`](Self::retrieve_work), [`update_work`](Self::update_work) and
/// [`stats`](Self::stats). Use [`with_credential`](Self::with_credential) to switch.
#[derive(Clone)]
pub struct EnvironmentClient {
    client: Client,
    id: EnvironmentId,
    credential: Credential,
    helper: Option<Helper>,
    worker_id: Option<Arc<str>>,
}

impl fmt::Debug for EnvironmentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvironmentClient")
            .field("id", &self.id)
            .field("helper", &self.helper)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The work-queue client of `environment_id`, authenticated with `credential`.
    pub fn environment(
        &self,
        environment_id: impl Into<EnvironmentId>,
        credential: Credential,
    ) -> EnvironmentClient {
        EnvironmentClient {
            client: self.clone(),
            id: environment_id.into(),
            credential,
            helper: None,
            worker_id: None,
        }
    }

    /// The environments control-plane client, authenticated with an API key.
    pub fn environments(&self, credential: Credential) -> EnvironmentsClient {
        EnvironmentsClient {
            client: self.clone(),
            credential,
        }
    }
}

impl EnvironmentClient {
    /// The environment id.
    pub fn id(&self) -> &EnvironmentId {
        &self.id
    }

    /// The credential requests carry.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The same environment with another credential (e.g. a work item's sessions token).
    pub fn with_credential(&self, credential: Credential) -> Self {
        Self {
            credential,
            ..self.clone()
        }
    }

    /// The same client tagging requests with `x-stainless-helper` (or not).
    pub fn with_helper(&self, helper: Option<Helper>) -> Self {
        Self {
            helper,
            ..self.clone()
        }
    }

    /// The same client polling with this `Anthropic-Worker-ID` instead of the one in the client's
    /// configuration (`None`: the configured one, if any). The id must be a valid header value;
    /// otherwise polls fail with an invalid-request error before anything is sent.
    pub fn with_worker_id(&self, worker_id: Option<&str>) -> Self {
        Self {
            worker_id: worker_id.map(Arc::from),
            ..self.clone()
        }
    }

    /// The `Anthropic-Worker-ID` polls send, if any.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id
            .as_deref()
            .or(self.client.config().worker_id())
    }

    /// The shared client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn base(&self) -> Result<String, ApiError> {
        Ok(format!(
            "/v1/environments/{}",
            encode_path_segment("environment id", self.id.as_str())?
        ))
    }

    fn work_path(&self, work_id: &WorkId, suffix: &str) -> Result<String, ApiError> {
        Ok(format!(
            "{}/work/{}{suffix}",
            self.base()?,
            encode_path_segment("work id", work_id.as_str())?
        ))
    }

    fn request(&self, method: Method, path: String) -> Request {
        let mut r = Request::new(method, path);
        r.helper = self.helper;
        r
    }

    /// W1 `GET …/work/poll`: one work item, or `None` when there is no work (`200 null`, `204`
    /// or an empty body). Sends `Anthropic-Worker-ID` when the config has a worker id.
    pub async fn poll(&self, params: &PollParams) -> Result<Option<Work>, ApiError> {
        if let Some(b) = params.block_ms
            && !(MIN_BLOCK_MS..=MAX_BLOCK_MS).contains(&b)
        {
            return Err(ApiError::invalid(format!(
                "block_ms must be {MIN_BLOCK_MS}–{MAX_BLOCK_MS}, got {b}"
            )));
        }
        let mut req = self
            .request(Method::GET, format!("{}/work/poll", self.base()?))
            .query_opt("block_ms", params.block_ms)
            .query_opt("reclaim_older_than_ms", params.reclaim_older_than_ms);
        req.send_worker_id = true;
        req.worker_id = self.worker_id.clone();
        let context = format!("GET {}", req.path);
        match self.client.execute(&req, &self.credential).await? {
            Ready::Body { status, bytes, .. } => {
                if status == 204 || bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                super::transport::decode_json::<Option<Work>>(&context, &bytes)
            }
            Ready::Stream(_) => Err(ApiError::Decode {
                context,
                message: "unexpected streamed response".into(),
            }),
        }
    }

    /// W2 `POST …/work/{id}/ack` with an empty body.
    pub async fn ack(&self, work_id: &WorkId) -> Result<Work, ApiError> {
        let mut req = self.request(Method::POST, self.work_path(work_id, "/ack")?);
        req.body = Body::Empty;
        self.client.json(&req, &self.credential).await
    }

    /// W3 `POST …/work/{id}/heartbeat`; parameters go in the query, the body is empty.
    pub async fn heartbeat(
        &self,
        work_id: &WorkId,
        params: &HeartbeatParams,
    ) -> Result<WorkHeartbeat, ApiError> {
        let mut req = self
            .request(Method::POST, self.work_path(work_id, "/heartbeat")?)
            .query_opt("desired_ttl_seconds", params.desired_ttl_seconds)
            .query_opt(
                "expected_last_heartbeat",
                params.expected_last_heartbeat.as_deref(),
            );
        req.body = Body::Empty;
        self.client.json(&req, &self.credential).await
    }

    /// W4 `POST …/work/{id}/stop`: body `{}` when `force` is `None`, else `{"force":…}`.
    pub async fn stop(&self, work_id: &WorkId, force: Option<bool>) -> Result<Work, ApiError> {
        let req = self
            .request(Method::POST, self.work_path(work_id, "/stop")?)
            .json(&StopBody { force })?;
        self.client.json(&req, &self.credential).await
    }

    /// W5 `GET …/work`: one page of work items.
    pub async fn list_work(&self, params: &ListParams) -> Result<Page<Work>, ApiError> {
        let req = self
            .request(Method::GET, format!("{}/work", self.base()?))
            .query_opt("limit", params.limit)
            .query_opt("page", params.page.as_deref());
        self.client.json(&req, &self.credential).await
    }

    /// W6 `GET …/work/{id}` (API key).
    pub async fn retrieve_work(&self, work_id: &WorkId) -> Result<Work, ApiError> {
        let req = self.request(Method::GET, self.work_path(work_id, "")?);
        self.client.json(&req, &self.credential).await
    }

    /// W7 `POST …/work/{id}` with `{"metadata": patch}` (API key).
    pub async fn update_work(
        &self,
        work_id: &WorkId,
        metadata: &MetadataPatch,
    ) -> Result<Work, ApiError> {
        let req = self
            .request(Method::POST, self.work_path(work_id, "")?)
            .json(&UpdateWorkBody { metadata })?;
        self.client.json(&req, &self.credential).await
    }

    /// W8 `GET …/work/stats` (API key).
    pub async fn stats(&self) -> Result<WorkQueueStats, ApiError> {
        let req = self.request(Method::GET, format!("{}/work/stats", self.base()?));
        self.client.json(&req, &self.credential).await
    }
}

/// Environment CRUD with an API key (docs/protocol.md §2.2).
#[derive(Clone)]
pub struct EnvironmentsClient {
    client: Client,
    credential: Credential,
}

impl fmt::Debug for EnvironmentsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvironmentsClient").finish_non_exhaustive()
    }
}

impl EnvironmentsClient {
    fn path(id: &EnvironmentId, suffix: &str) -> Result<String, ApiError> {
        Ok(format!(
            "/v1/environments/{}{suffix}",
            encode_path_segment("environment id", id.as_str())?
        ))
    }

    /// `POST /v1/environments`.
    pub async fn create(&self, params: &CreateEnvironment) -> Result<Environment, ApiError> {
        let req = Request::new(Method::POST, "/v1/environments".into()).json(params)?;
        self.client.json(&req, &self.credential).await
    }

    /// `GET /v1/environments/{id}`.
    pub async fn retrieve(&self, id: &EnvironmentId) -> Result<Environment, ApiError> {
        let req = Request::new(Method::GET, Self::path(id, "")?);
        self.client.json(&req, &self.credential).await
    }

    /// `POST /v1/environments/{id}`.
    pub async fn update(
        &self,
        id: &EnvironmentId,
        params: &UpdateEnvironment,
    ) -> Result<Environment, ApiError> {
        let req = Request::new(Method::POST, Self::path(id, "")?).json(params)?;
        self.client.json(&req, &self.credential).await
    }

    /// `GET /v1/environments`.
    pub async fn list(
        &self,
        params: &ListEnvironmentsParams,
    ) -> Result<Page<Environment>, ApiError> {
        let req = Request::new(Method::GET, "/v1/environments".into())
            .query_opt("include_archived", params.include_archived)
            .query_opt("limit", params.limit)
            .query_opt("page", params.page.as_deref());
        self.client.json(&req, &self.credential).await
    }

    /// `POST /v1/environments/{id}/archive` with an empty body.
    pub async fn archive(&self, id: &EnvironmentId) -> Result<Environment, ApiError> {
        let mut req = Request::new(Method::POST, Self::path(id, "/archive")?);
        req.body = Body::Empty;
        self.client.json(&req, &self.credential).await
    }

    /// `DELETE /v1/environments/{id}`.
    pub async fn delete(&self, id: &EnvironmentId) -> Result<EnvironmentDeleted, ApiError> {
        let req = Request::new(Method::DELETE, Self::path(id, "")?);
        self.client.json(&req, &self.credential).await
    }
}
