//! One [`AuditRecord`] per request leaving a sandbox (or refused), to a pluggable [`AuditSink`].
//!
//! What a record never holds: secret values (only the *names* of injected headers), query
//! strings (they often carry keys: `?api_key=…`; the record says whether one was present), and
//! request or response bodies. Paths are cut at [`MAX_AUDIT_PATH_LEN`] bytes. The default sink
//! logs through `tracing`; [`MemoryAuditSink`] collects records (tests, dashboards), and
//! `cma-core`'s `StateAuditSink` writes them to the control plane's state store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::policy::{RuleRef, Verdict};

/// Longest path kept in a record.
pub const MAX_AUDIT_PATH_LEN: usize = 512;

/// How the request reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditVia {
    /// An absolute-form request to the forward proxy (`GET http://…`).
    Forward,
    /// A `CONNECT` tunnel (the record covers the whole tunnel when it is spliced or refused).
    Connect,
    /// A request inside an intercepted `CONNECT` tunnel.
    Tunnel,
    /// The in-process entry point (the isolate backend's `fetch`).
    InProcess,
}

/// One request, as the audit log sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// When the request arrived.
    pub at: SystemTime,
    /// The session, when the peer was identified.
    pub session_id: Option<String>,
    /// The sandbox, when the peer was identified.
    pub sandbox_id: Option<String>,
    /// The policy that decided.
    pub policy_id: Option<String>,
    /// Its fingerprint.
    pub fingerprint: Option<String>,
    /// How the request arrived.
    pub via: AuditVia,
    /// `http` or `https` (as the sandbox asked; `None` for a spliced tunnel).
    pub scheme: Option<&'static str>,
    /// Destination host, normalised (or as received when it could not be parsed, truncated).
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Request method.
    pub method: String,
    /// Request path without the query string, cut at [`MAX_AUDIT_PATH_LEN`].
    pub path: Option<String>,
    /// Whether the request carried a query string (never recorded).
    pub had_query: bool,
    /// Allowed or refused.
    pub verdict: Verdict,
    /// The deciding rule.
    pub rule: Option<RuleRef>,
    /// Why (refusals and failures); names hosts, rules and secrets, never values.
    pub reason: Option<String>,
    /// Names of headers the proxy injected or whose placeholders it filled.
    pub injected: Vec<String>,
    /// Whether TLS was intercepted.
    pub intercepted: bool,
    /// Whether the connection was upgraded (WebSocket) after the response.
    pub upgraded: bool,
    /// Status sent to the sandbox (`None` if no response was sent, e.g. a spliced tunnel).
    pub status: Option<u16>,
    /// Body bytes from the sandbox (for tunnels: all bytes from the sandbox).
    pub bytes_in: u64,
    /// Body bytes to the sandbox (for tunnels: all bytes to the sandbox).
    pub bytes_out: u64,
    /// Time from arrival to the response head (or the refusal).
    pub latency: Duration,
    /// Time from arrival to the end of the response body (or tunnel).
    pub duration: Duration,
}

impl AuditRecord {
    /// Cut a path for the record: drop the query, cap the length on a char boundary.
    pub(crate) fn clip_path(path_and_query: &str) -> (String, bool) {
        let (path, had_query) = match path_and_query.split_once('?') {
            Some((p, _)) => (p, true),
            None => (path_and_query, false),
        };
        let mut end = path.len().min(MAX_AUDIT_PATH_LEN);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        (path[..end].to_owned(), had_query)
    }
}

/// Where audit records go. `record` is called on the proxy's tasks: it must not block (queue
/// the record and write it elsewhere).
pub trait AuditSink: Send + Sync + 'static {
    /// Take one record.
    fn record(&self, record: AuditRecord);
}

impl<T: AuditSink + ?Sized> AuditSink for std::sync::Arc<T> {
    fn record(&self, record: AuditRecord) {
        (**self).record(record)
    }
}

/// Logs each record as a `tracing` event (target `cma_egress::audit`, INFO for allowed, WARN for
/// refused).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingAuditSink;

impl AuditSink for TracingAuditSink {
    fn record(&self, r: AuditRecord) {
        let rule = r.rule.map(|x| x.to_string());
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "cma_egress::audit",
                    session = r.session_id.as_deref().unwrap_or("-"),
                    sandbox = r.sandbox_id.as_deref().unwrap_or("-"),
                    policy = r.policy_id.as_deref().unwrap_or("-"),
                    via = ?r.via,
                    method = %r.method,
                    host = %r.host,
                    port = r.port,
                    path = r.path.as_deref().unwrap_or(""),
                    verdict = ?r.verdict,
                    rule = rule.as_deref().unwrap_or("-"),
                    reason = r.reason.as_deref().unwrap_or(""),
                    status = r.status.unwrap_or(0),
                    bytes_in = r.bytes_in,
                    bytes_out = r.bytes_out,
                    latency_us = r.latency.as_micros() as u64,
                    "egress"
                )
            };
        }
        match r.verdict {
            Verdict::Allow => emit!(info),
            Verdict::Deny => emit!(warn),
        }
    }
}

/// Keeps the most recent records in memory (at most `capacity`).
#[derive(Debug)]
pub struct MemoryAuditSink {
    capacity: usize,
    records: Mutex<VecDeque<AuditRecord>>,
}

impl MemoryAuditSink {
    /// Keep at most `capacity` records (older ones are dropped).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            records: Mutex::new(VecDeque::new()),
        }
    }

    /// The records kept, oldest first.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Remove and return the records kept.
    pub fn take(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, record: AuditRecord) {
        let mut q = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_drop_queries_and_are_capped() {
        assert_eq!(
            AuditRecord::clip_path("/a/b?api_key=xyz"),
            ("/a/b".to_owned(), true)
        );
        assert_eq!(AuditRecord::clip_path("/a"), ("/a".to_owned(), false));
        let long = format!("/{}", "é".repeat(600));
        let (p, _) = AuditRecord::clip_path(&long);
        assert!(p.len() <= MAX_AUDIT_PATH_LEN && long.starts_with(&p));
    }
}
