//! [`MemoryStateStore`]: the state store in a mutex, for tests and examples. Nothing survives the
//! process; clones share one store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::record::{
    check_id, check_opt_id, check_time, check_ttl, expiry_millis, from_millis, to_millis,
    truncate_millis, validate_transition,
};
use super::{
    EgressAuditEntry, EgressPolicyRecord, Lease, LeaseClaim, MAX_PAGE_LEN, Precondition,
    SandboxQuery, SandboxRecord, SecretMetadata, SessionQuery, SessionRecord, StateError,
    StateStore, Transition,
};

/// A [`StateStore`] held in memory. Clones share the same data, so two clones behave like two
/// handles on one database (the conformance suite's concurrency checks use that).
#[derive(Debug, Clone, Default)]
pub struct MemoryStateStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: BTreeMap<String, SessionRecord>,
    transitions: BTreeMap<u64, Transition>,
    next_seq: u64,
    webhooks: BTreeMap<String, DateTime<Utc>>,
    leases: BTreeMap<String, Lease>,
    sandboxes: BTreeMap<(String, String), SandboxRecord>,
    policies: BTreeMap<String, EgressPolicyRecord>,
    secrets: BTreeMap<String, SecretMetadata>,
    audit: BTreeMap<u64, EgressAuditEntry>,
    next_audit_seq: u64,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied step: every method computes
        // first and mutates in one go, so the data is consistent and the poison can be ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn page(limit: u32) -> usize {
    limit.min(MAX_PAGE_LEN) as usize
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn put_session(
        &self,
        record: &SessionRecord,
        precondition: Precondition,
    ) -> Result<u64, StateError> {
        record.validate()?;
        let mut inner = self.lock();
        let current = inner.sessions.get(&record.session_id).map(|r| r.version);
        let conflict = |reason: String| StateError::Conflict {
            what: "session",
            id: record.session_id.clone(),
            reason,
        };
        match (precondition, current) {
            (Precondition::Any, _) | (Precondition::Absent, None) => {}
            (Precondition::Absent, Some(v)) => {
                return Err(conflict(format!("exists at version {v}")));
            }
            (Precondition::Version(want), Some(v)) if want == v => {}
            (Precondition::Version(want), found) => {
                return Err(conflict(match found {
                    Some(v) => format!("expected version {want}, found {v}"),
                    None => format!("expected version {want}, found none"),
                }));
            }
        }
        let version = current.unwrap_or(0) + 1;
        let mut stored = record.clone();
        stored.updated_at = truncate_millis(record.updated_at);
        stored.version = version;
        inner.sessions.insert(record.session_id.clone(), stored);
        Ok(version)
    }

    async fn get_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StateError> {
        check_id("session_id", session_id)?;
        Ok(self.lock().sessions.get(session_id).cloned())
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, StateError> {
        let limit = query.validate()?;
        let inner = self.lock();
        let after = query.after.as_deref();
        Ok(inner
            .sessions
            .values()
            .filter(|r| after.is_none_or(|a| r.session_id.as_str() > a))
            .filter(|r| query.status.is_none_or(|s| r.status == s))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StateError> {
        check_id("session_id", session_id)?;
        let mut inner = self.lock();
        inner.transitions.retain(|_, t| t.session_id != session_id);
        Ok(inner.sessions.remove(session_id).is_some())
    }

    async fn append_transition(
        &self,
        session_id: &str,
        at: DateTime<Utc>,
        event: &str,
        detail: &str,
    ) -> Result<Transition, StateError> {
        validate_transition(session_id, at, event, detail)?;
        let mut inner = self.lock();
        inner.next_seq += 1;
        let transition = Transition {
            seq: inner.next_seq,
            session_id: session_id.to_owned(),
            at: truncate_millis(at),
            event: event.to_owned(),
            detail: detail.to_owned(),
        };
        inner.transitions.insert(transition.seq, transition.clone());
        Ok(transition)
    }

    async fn list_transitions(
        &self,
        session_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Transition>, StateError> {
        check_id("session_id", session_id)?;
        let inner = self.lock();
        Ok(inner
            .transitions
            .range(after_seq.saturating_add(1)..)
            .map(|(_, t)| t)
            .filter(|t| t.session_id == session_id)
            .take(page(limit))
            .cloned()
            .collect())
    }

    async fn record_webhook(
        &self,
        webhook_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        check_id("webhook_id", webhook_id)?;
        check_time("received_at", received_at)?;
        let mut inner = self.lock();
        if inner.webhooks.contains_key(webhook_id) {
            return Ok(false);
        }
        inner
            .webhooks
            .insert(webhook_id.to_owned(), truncate_millis(received_at));
        Ok(true)
    }

    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StateError> {
        let before = truncate_millis(before);
        let mut inner = self.lock();
        let len = inner.webhooks.len();
        inner.webhooks.retain(|_, at| *at >= before);
        Ok((len - inner.webhooks.len()) as u64)
    }

    async fn claim_lease(
        &self,
        claim: &LeaseClaim,
        now: DateTime<Utc>,
    ) -> Result<Lease, StateError> {
        claim.validate()?;
        check_time("now", now)?;
        let now_ms = to_millis(now);
        let expires_at = from_millis("expires_at", expiry_millis(now, claim.ttl))?;
        let mut inner = self.lock();
        let acquired_at = match inner.leases.get(&claim.work_id) {
            Some(held) if held.owner == claim.owner => held.acquired_at,
            Some(held) if to_millis(held.expires_at) > now_ms => {
                return Err(StateError::LeaseHeld {
                    work_id: claim.work_id.clone(),
                    owner: held.owner.clone(),
                    expires_at: held.expires_at,
                });
            }
            _ => truncate_millis(now),
        };
        let lease = Lease {
            work_id: claim.work_id.clone(),
            session_id: claim.session_id.clone(),
            owner: claim.owner.clone(),
            acquired_at,
            expires_at,
        };
        inner.leases.insert(claim.work_id.clone(), lease.clone());
        Ok(lease)
    }

    async fn renew_lease(
        &self,
        work_id: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, StateError> {
        check_id("work_id", work_id)?;
        check_id("owner", owner)?;
        check_ttl(ttl)?;
        check_time("now", now)?;
        let expires_at = from_millis("expires_at", expiry_millis(now, ttl))?;
        let mut inner = self.lock();
        match inner.leases.get_mut(work_id) {
            Some(held) if held.owner == owner => {
                held.expires_at = expires_at;
                Ok(held.clone())
            }
            _ => Err(StateError::LeaseLost {
                work_id: work_id.to_owned(),
                owner: owner.to_owned(),
            }),
        }
    }

    async fn release_lease(&self, work_id: &str, owner: &str) -> Result<bool, StateError> {
        check_id("work_id", work_id)?;
        check_id("owner", owner)?;
        let mut inner = self.lock();
        if inner.leases.get(work_id).is_some_and(|l| l.owner == owner) {
            inner.leases.remove(work_id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn get_lease(&self, work_id: &str) -> Result<Option<Lease>, StateError> {
        check_id("work_id", work_id)?;
        Ok(self.lock().leases.get(work_id).cloned())
    }

    async fn list_leases(&self, owner: Option<&str>) -> Result<Vec<Lease>, StateError> {
        check_opt_id("owner", owner)?;
        let inner = self.lock();
        Ok(inner
            .leases
            .values()
            .filter(|l| owner.is_none_or(|o| l.owner == o))
            .take(MAX_PAGE_LEN as usize)
            .cloned()
            .collect())
    }

    async fn put_sandbox(&self, record: &SandboxRecord) -> Result<(), StateError> {
        record.validate()?;
        let mut stored = record.clone();
        stored.created_at = truncate_millis(record.created_at);
        self.lock()
            .sandboxes
            .insert((record.backend.clone(), record.sandbox_id.clone()), stored);
        Ok(())
    }

    async fn get_sandbox(
        &self,
        backend: &str,
        sandbox_id: &str,
    ) -> Result<Option<SandboxRecord>, StateError> {
        check_id("backend", backend)?;
        check_id("sandbox_id", sandbox_id)?;
        Ok(self
            .lock()
            .sandboxes
            .get(&(backend.to_owned(), sandbox_id.to_owned()))
            .cloned())
    }

    async fn list_sandboxes(&self, query: &SandboxQuery) -> Result<Vec<SandboxRecord>, StateError> {
        let limit = query.validate()?;
        let inner = self.lock();
        let from = match &query.after {
            Some(last) => std::ops::Bound::Excluded(last.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .sandboxes
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| query.backend.as_deref().is_none_or(|b| s.backend == b))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn remove_sandbox(&self, backend: &str, sandbox_id: &str) -> Result<bool, StateError> {
        check_id("backend", backend)?;
        check_id("sandbox_id", sandbox_id)?;
        Ok(self
            .lock()
            .sandboxes
            .remove(&(backend.to_owned(), sandbox_id.to_owned()))
            .is_some())
    }

    async fn put_egress_policy(&self, record: &EgressPolicyRecord) -> Result<(), StateError> {
        record.validate()?;
        let mut stored = record.clone();
        stored.updated_at = truncate_millis(record.updated_at);
        self.lock()
            .policies
            .insert(record.policy_id.clone(), stored);
        Ok(())
    }

    async fn get_egress_policy(
        &self,
        policy_id: &str,
    ) -> Result<Option<EgressPolicyRecord>, StateError> {
        check_id("policy_id", policy_id)?;
        Ok(self.lock().policies.get(policy_id).cloned())
    }

    async fn list_egress_policies(&self) -> Result<Vec<EgressPolicyRecord>, StateError> {
        Ok(self
            .lock()
            .policies
            .values()
            .take(MAX_PAGE_LEN as usize)
            .cloned()
            .collect())
    }

    async fn remove_egress_policy(&self, policy_id: &str) -> Result<bool, StateError> {
        check_id("policy_id", policy_id)?;
        Ok(self.lock().policies.remove(policy_id).is_some())
    }

    async fn put_secret_metadata(&self, record: &SecretMetadata) -> Result<(), StateError> {
        record.validate()?;
        let mut stored = record.clone();
        stored.updated_at = truncate_millis(record.updated_at);
        self.lock().secrets.insert(record.name.clone(), stored);
        Ok(())
    }

    async fn get_secret_metadata(&self, name: &str) -> Result<Option<SecretMetadata>, StateError> {
        check_id("name", name)?;
        Ok(self.lock().secrets.get(name).cloned())
    }

    async fn list_secret_metadata(&self) -> Result<Vec<SecretMetadata>, StateError> {
        Ok(self
            .lock()
            .secrets
            .values()
            .take(MAX_PAGE_LEN as usize)
            .cloned()
            .collect())
    }

    async fn remove_secret_metadata(&self, name: &str) -> Result<bool, StateError> {
        check_id("name", name)?;
        Ok(self.lock().secrets.remove(name).is_some())
    }

    async fn append_egress_audit(&self, entry: &EgressAuditEntry) -> Result<u64, StateError> {
        entry.validate()?;
        let mut inner = self.lock();
        inner.next_audit_seq += 1;
        let seq = inner.next_audit_seq;
        let mut stored = entry.clone();
        stored.seq = seq;
        stored.at = truncate_millis(entry.at);
        inner.audit.insert(seq, stored);
        Ok(seq)
    }

    async fn list_egress_audit(
        &self,
        session_id: Option<&str>,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<EgressAuditEntry>, StateError> {
        check_opt_id("session_id", session_id)?;
        let inner = self.lock();
        Ok(inner
            .audit
            .range(after_seq.saturating_add(1)..)
            .map(|(_, e)| e)
            .filter(|e| session_id.is_none_or(|s| e.session_id.as_deref() == Some(s)))
            .take(page(limit))
            .cloned()
            .collect())
    }

    async fn prune_egress_audit(&self, before: DateTime<Utc>) -> Result<u64, StateError> {
        let before = truncate_millis(before);
        let mut inner = self.lock();
        let len = inner.audit.len();
        inner.audit.retain(|_, e| e.at >= before);
        Ok((len - inner.audit.len()) as u64)
    }
}
