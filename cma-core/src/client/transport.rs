//! Configuration, credentials and the retrying HTTP transport shared by every client
//! (docs/protocol.md §1.1–§1.3, §1.6).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

use super::error::{ApiError, StatusError};
pub(crate) use super::response::{decode_json, transport_error};
use super::response::{read_body, unreachable_stream};
use crate::protocol::Work;
use crate::retry;
use crate::sse::SseLimits;

/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Environment variable overriding the base URL (read by [`ClientConfig::from_env`]).
pub const BASE_URL_ENV: &str = "ANTHROPIC_BASE_URL";
/// The `anthropic-version` header value.
pub const ANTHROPIC_VERSION: &str = "2026-10-21";
/// The beta every environments / work / sessions call carries.
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
/// The beta the memory-store endpoints carry instead (docs/protocol.md §1.2).
pub const AGENT_MEMORY_BETA: &str = "agent-memory-2026-07-22";
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default request timeout (per attempt; for streams, until headers and between reads).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Default cap on a response body held in memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Cap on an error response body kept in an [`ApiError`].
pub const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;
/// Default bound on a server-requested retry wait ([`ClientConfig::max_retry_after`]).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default `user-agent`.
pub const DEFAULT_USER_AGENT: &str = concat!("cma/", env!("CARGO_PKG_VERSION"));

/// The `x-stainless-helper` telemetry tag the SDK sends from its helpers (docs/protocol.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Helper {
    /// `environments-work-poller`: poll / ack / stop in the poll loop.
    WorkPoller,
    /// `environments-worker`: per-item heartbeat, session retrieve, force-stop.
    Worker,
    /// `session-tool-runner`: event stream / list / send.
    SessionToolRunner,
}

/// Which resource beta a request appends to the configured extra betas (docs/protocol.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Beta {
    /// `managed-agents-2026-04-01` (environments, work, sessions, events).
    #[default]
    ManagedAgents,
    /// `agent-memory-2026-07-22` (memory stores).
    Memory,
    /// No resource beta (skills): only the configured extra betas, and no header when none.
    None,
}

impl Helper {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkPoller => "environments-work-poller",
            Self::Worker => "environments-worker",
            Self::SessionToolRunner => "session-tool-runner",
        }
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Arc::from(s.into()))
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The one credential a request carries, always as `Authorization: Bearer …` (docs/protocol.md §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// The environment key: poll, ack, stop, list work; fallback for per-item calls.
    EnvironmentKey(Secret),
    /// A work item's sessions token (from its `secret`): heartbeat, stop, session calls.
    SessionsToken(Secret),
    /// A Claude API key (or `ANTHROPIC_AUTH_TOKEN`): control-plane calls.
    ApiKey(Secret),
}

impl Credential {
    /// An environment key.
    pub fn environment_key(key: impl Into<String>) -> Self {
        Self::EnvironmentKey(Secret::new(key))
    }

    /// A sessions token.
    pub fn sessions_token(token: impl Into<String>) -> Self {
        Self::SessionsToken(Secret::new(token))
    }

    /// An API key.
    pub fn api_key(key: impl Into<String>) -> Self {
        Self::ApiKey(Secret::new(key))
    }

    /// The credential for a work item's own calls: its sessions token when its `secret` carries
    /// one, else `environment_key` (docs/protocol.md §1.4).
    pub fn for_work(work: &Work, environment_key: &Credential) -> Self {
        match work.sessions_token() {
            Some(token) => Self::sessions_token(token),
            None => environment_key.clone(),
        }
    }

    /// The secret; never log it.
    pub fn secret(&self) -> &str {
        match self {
            Self::EnvironmentKey(s) | Self::SessionsToken(s) | Self::ApiKey(s) => s.expose(),
        }
    }

    fn header_value(&self) -> Result<HeaderValue, ApiError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.secret())).map_err(|_| {
            ApiError::invalid("credential contains characters not allowed in a header")
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Client configuration; build it with [`ClientConfig::builder`] or [`ClientConfig::from_env`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    base_url: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_retries: u32,
    betas: Vec<String>,
    workspace_id: Option<String>,
    worker_id: Option<String>,
    user_agent: String,
    max_response_bytes: usize,
    sse_limits: SseLimits,
    max_retry_after: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_retries: retry::DEFAULT_MAX_RETRIES,
            betas: Vec::new(),
            workspace_id: None,
            worker_id: None,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            sse_limits: SseLimits::default(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

impl ClientConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: Self::default(),
        }
    }

    /// The defaults, with the base URL taken from `ANTHROPIC_BASE_URL` when set and non-empty.
    ///
    /// The URL is validated by [`ClientConfigBuilder::build`] or [`Client::new`].
    pub fn from_env() -> Self {
        Self::builder_from_env().config
    }

    /// A builder starting from [`ClientConfig::from_env`].
    pub fn builder_from_env() -> ClientConfigBuilder {
        let mut b = Self::builder();
        if let Ok(url) = std::env::var(BASE_URL_ENV)
            && !url.trim().is_empty()
        {
            b.config.base_url = url.trim().trim_end_matches('/').to_owned();
        }
        b
    }

    /// Base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Core retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }
    /// Extra betas, sent before the managed-agents beta.
    pub fn betas(&self) -> &[String] {
        &self.betas
    }
    /// `anthropic-workspace-id`, when set.
    pub fn workspace_id(&self) -> Option<&str> {
        self.workspace_id.as_deref()
    }
    /// `Anthropic-Worker-ID` sent on polls, when set.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id.as_deref()
    }
    /// `user-agent`.
    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }
    /// Response body cap.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }
    /// Event-stream framing limits.
    pub fn sse_limits(&self) -> SseLimits {
        self.sse_limits
    }
    /// The longest server-requested wait (`retry-after-ms` / `retry-after`) the core retry
    /// honours; see [`ClientConfigBuilder::max_retry_after`].
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The `anthropic-beta` header value: extra betas then the managed-agents beta, comma-joined.
    pub fn beta_header(&self) -> String {
        self.beta_header_for(Beta::ManagedAgents)
    }

    /// The header value for a resource beta (empty when there is nothing to send).
    pub(crate) fn beta_header_for(&self, beta: Beta) -> String {
        let mut parts: Vec<&str> = self.betas.iter().map(String::as_str).collect();
        match beta {
            Beta::ManagedAgents => parts.push(MANAGED_AGENTS_BETA),
            Beta::Memory => parts.push(AGENT_MEMORY_BETA),
            Beta::None => {}
        }
        parts.join(",")
    }
}

/// Builder of [`ClientConfig`].
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    config: ClientConfig,
}

impl ClientConfigBuilder {
    /// Base URL (`scheme://host[:port][/prefix]`); paths are appended to it.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.config.base_url = url.into();
        self
    }
    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.config.connect_timeout = t;
        self
    }
    /// Request timeout (default 600 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.config.request_timeout = t;
        self
    }
    /// Core retries after the first attempt (default 2).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }
    /// Add an extra beta (sent before the managed-agents beta).
    pub fn beta(mut self, beta: impl Into<String>) -> Self {
        self.config.betas.push(beta.into());
        self
    }
    /// Replace the extra betas.
    pub fn betas<I, S>(mut self, betas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.betas = betas.into_iter().map(Into::into).collect();
        self
    }
    /// `anthropic-workspace-id` on every request.
    pub fn workspace_id(mut self, id: impl Into<String>) -> Self {
        self.config.workspace_id = Some(id.into());
        self
    }
    /// `Anthropic-Worker-ID` on polls.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.config.worker_id = Some(id.into());
        self
    }
    /// `user-agent`.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.config.user_agent = ua.into();
        self
    }
    /// Response body cap (default 64 MiB).
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.config.max_response_bytes = n;
        self
    }
    /// Event-stream framing limits (default 16 MiB per line and per frame).
    pub fn sse_limits(mut self, limits: SseLimits) -> Self {
        self.config.sse_limits = limits;
        self
    }
    /// The longest server-requested wait the core retry honours (default
    /// [`DEFAULT_MAX_RETRY_AFTER`], 60 s). The SDK waits out any hint up to about 4.29 million
    /// seconds; here a response asking for more than this is not retried but returned to the
    /// caller, whose own loop (poll, heartbeat, result send) backs off and stays cancellable, so
    /// one hostile `retry-after` cannot park a work item for weeks.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// Validate and build.
    pub fn build(mut self) -> Result<ClientConfig, ApiError> {
        let trimmed = self.config.base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&trimmed)
            .map_err(|e| ApiError::invalid(format!("base URL {trimmed:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ApiError::invalid(format!(
                "base URL {trimmed:?} must be http(s)://host[:port][/prefix]"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ApiError::invalid(format!(
                "base URL {trimmed:?} must not carry a query or fragment"
            )));
        }
        self.config.base_url = trimmed;
        for (what, value) in [
            ("user agent", Some(self.config.user_agent.as_str())),
            ("workspace id", self.config.workspace_id.as_deref()),
            ("worker id", self.config.worker_id.as_deref()),
        ] {
            if let Some(v) = value
                && HeaderValue::from_str(v).is_err()
            {
                return Err(ApiError::invalid(format!(
                    "{what} is not a valid header value"
                )));
            }
        }
        if HeaderValue::from_str(&self.config.beta_header()).is_err() {
            return Err(ApiError::invalid("betas are not a valid header value"));
        }
        Ok(self.config)
    }
}

/// Characters left as-is in a path segment: RFC 3986 unreserved plus `pchar` sub-delims, `:`, `@`.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Characters left as-is in a query key or value (form encoding): RFC 3986 unreserved.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode one path segment (an id); empty, `.` and `..` are rejected.
pub fn encode_path_segment(what: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{what} must not be empty")));
    }
    if value == "." || value == ".." {
        return Err(ApiError::invalid(format!(
            "{what} must not be a dot segment ({value:?})"
        )));
    }
    Ok(utf8_percent_encode(value, PATH_SEGMENT).to_string())
}

/// Form-encode one query component: unreserved characters kept, space as `+`, the rest `%XX`.
pub fn encode_query_component(value: &str) -> String {
    utf8_percent_encode(value, QUERY_COMPONENT)
        .to_string()
        .replace("%20", "+")
}

/// Encode query pairs in order as `k=v&k=v`.
pub fn encode_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_query_component(k),
                encode_query_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Request body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// No body (GET, DELETE).
    None,
    /// A POST with an empty body (`content-length: 0`).
    Empty,
    /// A JSON body, already serialized.
    Json(Vec<u8>),
}

/// One logical request (retried as a unit).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: Method,
    /// Already encoded path, starting with `/`.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Body,
    pub helper: Option<Helper>,
    /// Send `Anthropic-Worker-ID` (polls only): this id, else the configured one.
    pub send_worker_id: bool,
    /// The worker id of this request, overriding the configured one.
    pub worker_id: Option<Arc<str>>,
    /// The resource beta appended to the configured ones.
    pub beta: Beta,
    /// `accept` value (default `application/json`).
    pub accept: &'static str,
}

impl Request {
    pub fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: Body::None,
            helper: None,
            send_worker_id: false,
            worker_id: None,
            beta: Beta::ManagedAgents,
            accept: "application/json",
        }
    }

    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ApiError::invalid(format!("cannot encode request body: {e}")))?;
        self.body = Body::Json(bytes);
        Ok(self)
    }

    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    pub fn query_opt<T: ToString>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.query(key, v.to_string()),
            None => self,
        }
    }

    pub(crate) fn context(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What a successful attempt produced.
pub(crate) enum Ready {
    /// The whole body, read.
    Body { status: u16, bytes: Bytes },
    /// Headers received; the body is left to the caller.
    Stream(reqwest::Response),
}

/// The shared HTTP client: one connection pool (rustls), one configuration.
///
/// Cheap to clone. Hands out per-resource clients bound to one credential.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Build the shared client (the configuration is validated again, so a config from
    /// [`ClientConfig::from_env`] with a bad URL fails here with a typed error).
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        let config = ClientConfigBuilder { config }.build()?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| ApiError::invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner { http, config }),
        })
    }

    /// A client with [`ClientConfig::from_env`].
    pub fn from_env() -> Result<Self, ApiError> {
        Self::new(ClientConfig::from_env())
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Run `req` with the core retry policy, reading the body (success or error) into memory.
    pub(crate) async fn execute(
        &self,
        req: &Request,
        cred: &Credential,
    ) -> Result<Ready, ApiError> {
        self.execute_inner(req, cred, false).await
    }

    /// Run `req` with the core retry policy, stopping once a 2xx's headers arrived.
    pub(crate) async fn execute_stream(
        &self,
        req: &Request,
        cred: &Credential,
    ) -> Result<reqwest::Response, ApiError> {
        match self.execute_inner(req, cred, true).await? {
            Ready::Stream(r) => Ok(r),
            Ready::Body { .. } => Err(ApiError::Decode {
                context: req.context(),
                message: "expected a streamed response".into(),
            }),
        }
    }

    /// Run `req` and decode a JSON body.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        req: &Request,
        cred: &Credential,
    ) -> Result<T, ApiError> {
        match self.execute(req, cred).await? {
            Ready::Body { bytes, .. } => decode_json(&req.context(), &bytes),
            Ready::Stream(_) => unreachable_stream(req),
        }
    }

    /// Run `req` and return the raw body of a 2xx (bounded by the configured response cap).
    pub(crate) async fn bytes(&self, req: &Request, cred: &Credential) -> Result<Bytes, ApiError> {
        match self.execute(req, cred).await? {
            Ready::Body { bytes, .. } => Ok(bytes),
            Ready::Stream(_) => unreachable_stream(req),
        }
    }

    async fn execute_inner(
        &self,
        req: &Request,
        cred: &Credential,
        stream: bool,
    ) -> Result<Ready, ApiError> {
        let timeout = self.inner.config.request_timeout;
        let max_retries = self.inner.config.max_retries;
        let mut retries_taken: u32 = 0;
        loop {
            let attempt = self.attempt(req, cred, retries_taken, stream);
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(ApiError::Timeout {
                    context: req.context(),
                    timeout,
                }),
            };
            let err = match result {
                Ok(ready) => return Ok(ready),
                Err(e) => e,
            };
            if retries_taken >= max_retries || !err.is_retryable() {
                return Err(err);
            }
            let delay = match err.status_error() {
                Some(s)
                    if retry::parse_retry_after(
                        s.retry_after_ms.as_deref(),
                        s.retry_after.as_deref(),
                        SystemTime::now(),
                    )
                    .is_some_and(|hint| hint > self.inner.config.max_retry_after.as_secs_f64()) =>
                {
                    tracing::debug!(
                        context = %req.context(),
                        max_retry_after_s = self.inner.config.max_retry_after.as_secs_f64(),
                        error = %err,
                        "the server asks to wait longer than max_retry_after; not retrying"
                    );
                    return Err(err);
                }
                Some(s) => retry::core_retry_delay(
                    retries_taken,
                    s.retry_after_ms.as_deref(),
                    s.retry_after.as_deref(),
                    SystemTime::now(),
                    retry::random_unit(),
                ),
                None => retry::core_backoff(retries_taken, retry::random_unit()),
            };
            tracing::debug!(
                context = %req.context(),
                retries_taken,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "retrying request"
            );
            tokio::time::sleep(delay).await;
            retries_taken += 1;
        }
    }

    fn build_headers(
        &self,
        req: &Request,
        cred: &Credential,
        retries_taken: u32,
    ) -> Result<HeaderMap, ApiError> {
        let cfg = &self.inner.config;
        let mut h = HeaderMap::new();
        let static_value = |s: &str| {
            HeaderValue::from_str(s).map_err(|_| ApiError::invalid("invalid header value"))
        };
        h.insert(http::header::AUTHORIZATION, cred.header_value()?);
        h.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        let beta = cfg.beta_header_for(req.beta);
        if !beta.is_empty() {
            h.insert("anthropic-beta", static_value(&beta)?);
        }
        h.insert(http::header::ACCEPT, HeaderValue::from_static(req.accept));
        // The SDK declares a JSON body on every method but GET, a bodiless DELETE included.
        if req.method != Method::GET {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(http::header::USER_AGENT, static_value(&cfg.user_agent)?);
        h.insert("x-stainless-retry-count", HeaderValue::from(retries_taken));
        if let Some(helper) = req.helper {
            h.insert(
                "x-stainless-helper",
                HeaderValue::from_static(helper.as_str()),
            );
        }
        if let Some(ws) = &cfg.workspace_id {
            h.insert("anthropic-workspace-id", static_value(ws)?);
        }
        if req.send_worker_id
            && let Some(id) = req.worker_id.as_deref().or(cfg.worker_id.as_deref())
        {
            h.insert("anthropic-worker-id", static_value(id)?);
        }
        Ok(h)
    }

    fn url(&self, req: &Request) -> String {
        let mut url = format!("{}{}", self.inner.config.base_url, req.path);
        if !req.query.is_empty() {
            url.push('?');
            url.push_str(&encode_query(&req.query));
        }
        url
    }

    async fn attempt(
        &self,
        req: &Request,
        cred: &Credential,
        retries_taken: u32,
        stream: bool,
    ) -> Result<Ready, ApiError> {
        let headers = self.build_headers(req, cred, retries_taken)?;
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), self.url(req))
            .headers(headers);
        builder = match &req.body {
            Body::None => builder,
            // hyper omits the length of an empty body; the SDK sends `content-length: 0`.
            Body::Empty => builder
                .header(http::header::CONTENT_LENGTH, "0")
                .body(Vec::<u8>::new()),
            Body::Json(b) => builder.body(b.clone()),
        };
        let context = req.context();
        let response = builder
            .send()
            .await
            .map_err(|e| transport_error(&context, e, self.inner.config.request_timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if response.status().is_success() {
            if stream {
                return Ok(Ready::Stream(response));
            }
            let limit = self.inner.config.max_response_bytes;
            let bytes = read_body(response, limit, &context, self.inner.config.request_timeout)
                .await?
                .ok_or(ApiError::BodyTooLarge { context, limit })?;
            return Ok(Ready::Body { status, bytes });
        }
        let bytes = read_body(
            response,
            MAX_ERROR_BODY_BYTES,
            &context,
            self.inner.config.request_timeout,
        )
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        Err(StatusError::from_response(context, status, &text, &headers).into())
    }
}
