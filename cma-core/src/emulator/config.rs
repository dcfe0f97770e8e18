//! [`EmulatorConfig`]: how to run an emulator (address, lease and reclaim timings, keys, limits,
//! recording, webhooks, strict mode, listener bounds) and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::scenario::{MAX_LEASE_TTL_SECONDS, Scenario};
use super::state::MAX_EVENT_BYTES_PER_SESSION;
use super::webhooks::WebhookConfig;

/// Default request body limit: large enough for a 20 MiB PDF read result in base64 (§6.3).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default cap on stored events per session.
pub const DEFAULT_MAX_EVENTS_PER_SESSION: usize = 10_000;

/// How to run an emulator. Scenario values, when present, override these.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Address to listen on (default `127.0.0.1:0`, an ephemeral port).
    pub bind: SocketAddr,
    /// Lease TTL reported by heartbeats, in seconds (default 60).
    pub lease_ttl_seconds: u64,
    /// Reclaim delay for polls that omit `reclaim_older_than_ms` (default 5000 ms).
    pub reclaim_older_than_ms: u64,
    /// API key (default: a random `sk-ant-emu-…`).
    pub api_key: Option<String>,
    /// Interval of `event: ping` keep-alives on streams (default 15 s; clamped to 10 ms..=1 h).
    pub keepalive: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Events kept per session (oldest dropped beyond).
    pub max_events_per_session: usize,
    /// Bytes of events kept per session (oldest dropped beyond; the newest is always kept).
    pub max_event_bytes_per_session: usize,
    /// Append every received tool result to this JSON-lines file.
    pub record: Option<PathBuf>,
    /// Deliver signed webhooks.
    pub webhook: Option<WebhookConfig>,
    /// `organization_id` in webhook payloads.
    pub organization_id: String,
    /// `workspace_id` in webhook payloads.
    pub workspace_id: String,
    /// Served from the start.
    pub scenario: Scenario,
    /// Strict mode (also the scenario's `strict`): a `work/poll` without `Anthropic-Worker-ID`
    /// is answered 400 `invalid_request_error` (code `worker_id_required`) instead of being
    /// served. The real API serves such a poll but cannot count the worker in
    /// `workers_polling`; the official worker always sends the header.
    pub strict: bool,
    /// The bounds of the HTTP listener (default [`EmulatorConfig::default_listener_limits`]:
    /// streams may last, idle connections outlive the client's pool timeout).
    pub listener: crate::listener::ListenerLimits,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_ttl_seconds: 60,
            reclaim_older_than_ms: 5000,
            api_key: None,
            keepalive: Duration::from_secs(15),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_events_per_session: DEFAULT_MAX_EVENTS_PER_SESSION,
            max_event_bytes_per_session: MAX_EVENT_BYTES_PER_SESSION,
            record: None,
            webhook: None,
            organization_id: "org_emulator".into(),
            workspace_id: "wrkspc_emulator".into(),
            scenario: Scenario::default(),
            strict: false,
            listener: Self::default_listener_limits(),
        }
    }
}

impl EmulatorConfig {
    /// The emulator's listener bounds: 1024 connections, no bound on a request's duration (event
    /// streams last as long as their session), two minutes idle between requests (longer than
    /// the client's 90 s pool timeout, so a pooled connection is never closed under a request),
    /// a minute for a request body; heads within 10 s as everywhere.
    pub fn default_listener_limits() -> crate::listener::ListenerLimits {
        crate::listener::ListenerLimits::default()
            .max_connections(1024)
            .max_request_time(None)
            .idle_timeout(Duration::from_secs(120))
            .body_read_timeout(Duration::from_secs(60))
    }

    /// Bound the HTTP listener with `limits`.
    pub fn listener_limits(mut self, limits: crate::listener::ListenerLimits) -> Self {
        self.listener = limits;
        self
    }

    /// Serve this scenario.
    pub fn scenario(mut self, scenario: Scenario) -> Self {
        self.scenario = scenario;
        self
    }

    /// Listen on this address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Lease TTL in seconds (clamped to 1..=[`MAX_LEASE_TTL_SECONDS`]).
    pub fn lease_ttl_seconds(mut self, secs: u64) -> Self {
        self.lease_ttl_seconds = secs.clamp(1, MAX_LEASE_TTL_SECONDS);
        self
    }

    /// Default reclaim delay.
    pub fn reclaim_older_than_ms(mut self, ms: u64) -> Self {
        self.reclaim_older_than_ms = ms;
        self
    }

    /// Fixed API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Keep-alive interval of streams.
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// Record results to a JSON-lines file.
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// Deliver webhooks.
    pub fn webhook(mut self, cfg: WebhookConfig) -> Self {
        self.webhook = Some(cfg);
        self
    }

    /// Cap on stored events per session.
    pub fn max_events_per_session(mut self, n: usize) -> Self {
        self.max_events_per_session = n.max(1);
        self
    }

    /// Cap on stored event bytes per session.
    pub fn max_event_bytes_per_session(mut self, n: usize) -> Self {
        self.max_event_bytes_per_session = n;
        self
    }

    /// Largest request body.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Strict mode (see [`EmulatorConfig::strict`]).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }
}
