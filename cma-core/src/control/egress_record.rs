//! What the egress wiring writes to a `cma_store::state::StateStore` (features `egress` and
//! `store`): which policy (id, version, fingerprint) a session runs under, and the proxy's audit
//! records ([`StateAuditSink`]).
//!
//! A policy's version in the store counts the fingerprints it has had: it goes up by one each
//! time the control plane sees the policy with a new fingerprint, so an edit is visible in the
//! table and in the session's transition log (`egress_policy`, detail `<id> <fingerprint>`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cma_egress::{AuditRecord, AuditSink};
use cma_store::state::{
    EgressAuditEntry, EgressPolicyRecord, MAX_DETAIL_BYTES, Precondition, StateError,
    StateErrorKind, StateStore,
};
use tokio::sync::mpsc;

/// The transition log event of a session's egress policy (re)resolution.
pub const EGRESS_POLICY_EVENT: &str = "egress_policy";

/// Record that `session_id` runs under `policy_id` with `fingerprint`.
pub(crate) async fn record_policy(
    store: &dyn StateStore,
    session_id: &str,
    policy_id: &str,
    fingerprint: &str,
) -> Result<(), StateError> {
    let now = chrono::Utc::now();
    let existing = store.get_egress_policy(policy_id).await?;
    if existing.as_ref().map(|p| p.fingerprint.as_str()) != Some(fingerprint) {
        let version = existing.map_or(1, |p| p.version.saturating_add(1));
        store
            .put_egress_policy(&EgressPolicyRecord {
                policy_id: policy_id.to_owned(),
                version,
                fingerprint: fingerprint.to_owned(),
                updated_at: now,
            })
            .await?;
    }
    for attempt in 1..=3 {
        let Some(mut record) = store.get_session(session_id).await? else {
            break;
        };
        if record.egress_policy_id.as_deref() == Some(policy_id) {
            break;
        }
        let precondition = Precondition::Version(record.version);
        record.egress_policy_id = Some(policy_id.to_owned());
        record.updated_at = now;
        match store.put_session(&record, precondition).await {
            Ok(_) => break,
            Err(e) if e.kind() == StateErrorKind::Conflict && attempt < 3 => continue,
            Err(e) => return Err(e),
        }
    }
    store
        .append_transition(
            session_id,
            now,
            EGRESS_POLICY_EVENT,
            &format!("{policy_id} {fingerprint}"),
        )
        .await
        .map(drop)
}

/// Settings of a [`StateAuditSink`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StateAuditConfig {
    /// Records waiting to be written; when the store falls behind, newer records are dropped
    /// (and counted in a warning) rather than blocking the proxy.
    pub queue: usize,
    /// Records older than this are pruned (checked at most once a minute).
    pub retention: Duration,
}

impl Default for StateAuditConfig {
    fn default() -> Self {
        Self {
            queue: 4096,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// An [`AuditSink`] that writes every record to a state store's egress audit table, from a
/// background task (the proxy never waits on the database). Records carry no secret values
/// and no query strings (see [`AuditRecord`]); the stored JSON is the record as serialised.
pub struct StateAuditSink {
    tx: mpsc::Sender<AuditRecord>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for StateAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateAuditSink").finish_non_exhaustive()
    }
}

impl StateAuditSink {
    /// Start the writer task on the current runtime.
    pub fn new(store: Arc<dyn StateStore>, config: StateAuditConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(write_loop(store, rx, config, dropped.clone()));
        Self { tx, dropped }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl AuditSink for StateAuditSink {
    fn record(&self, record: AuditRecord) {
        if self.tx.try_send(record).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "egress audit queue full; records dropped");
            }
        }
    }
}

/// The stored form of a record.
pub(crate) fn entry(record: &AuditRecord) -> EgressAuditEntry {
    let mut json = serde_json::to_string(record).unwrap_or_default();
    if json.len() > MAX_DETAIL_BYTES {
        // Paths are capped well below this; a record this large is malformed: keep the summary.
        json = serde_json::json!({
            "truncated": true, "host": record.host, "method": record.method,
            "verdict": record.verdict,
        })
        .to_string();
    }
    let at = chrono::DateTime::<chrono::Utc>::from(record.at.max(SystemTime::UNIX_EPOCH));
    let mut host = record.host.clone();
    let mut end = host.len().min(cma_store::state::MAX_ID_BYTES);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host.truncate(end);
    EgressAuditEntry {
        seq: 0,
        at,
        session_id: record.session_id.clone(),
        sandbox_id: record.sandbox_id.clone(),
        host,
        allowed: record.verdict == cma_egress::policy::Verdict::Allow,
        record: json,
    }
}

async fn write_loop(
    store: Arc<dyn StateStore>,
    mut rx: mpsc::Receiver<AuditRecord>,
    config: StateAuditConfig,
    _dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut next_prune = tokio::time::Instant::now();
    while let Some(record) = rx.recv().await {
        let e = entry(&record);
        if let Err(err) = store.append_egress_audit(&e).await {
            tracing::warn!(error = %err, host = %e.host, "writing an egress audit record failed");
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + Duration::from_secs(60);
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(config.retention).unwrap_or(chrono::Duration::MAX);
            if let Err(err) = store.prune_egress_audit(before).await {
                tracing::warn!(error = %err, "pruning egress audit records failed");
            }
        }
    }
}
