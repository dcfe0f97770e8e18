//! The control plane's durable record: [`StateStore`].
//!
//! A control plane writes here every time a session moves (placed, running, idle, sleeping,
//! terminated), every sandbox it creates or destroys, every webhook id it has handled, every
//! work-item lease it holds, the egress policy each session runs under, and (optionally) the
//! egress proxy's audit log. On start it reads it back to re-adopt or destroy the sandboxes it knows,
//! ignore webhooks it already handled, and take over leases whose holder died.
//!
//! Backends: [`MemoryStateStore`] (tests, examples), [`SqliteStateStore`] (feature `sqlite`, the
//! default: one file for one host), [`PostgresStateStore`] (feature `postgres`: several replicas
//! share one database and coordinate through leases). All of them pass the same suite,
//! `conformance` (feature `conformance`).
//!
//! This module stores metadata only: no workspace bytes (that is [`crate`]'s snapshot store) and
//! never a secret value.
//!
//! Times are passed in by the caller (`now`), so replicas and tests agree on one clock, and are kept
//! with millisecond precision.
//!
//! ```
//! # async fn demo() -> Result<(), cma_store::state::StateError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cma_store::state::{LeaseClaim, MemoryStateStore, Precondition, SessionRecord, SessionStatus, StateStore};
//!
//! let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
//! let now = chrono::Utc::now();
//! let mut session = SessionRecord::new("sesn_1", "isolate", now);
//! session.version = store.put_session(&session, Precondition::Absent).await?;
//! store.append_transition("sesn_1", now, SessionStatus::Placed.as_str(), "").await?;
//!
//! let claim = LeaseClaim {
//!     work_id: "work_1".into(),
//!     session_id: "sesn_1".into(),
//!     owner: "replica-a".into(),
//!     ttl: Duration::from_secs(30),
//! };
//! store.claim_lease(&claim, now).await?;
//! assert!(store.record_webhook("msg_1", now).await?);
//! assert!(!store.record_webhook("msg_1", now).await?); // a duplicate delivery
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

mod error;
mod memory;
mod record;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{StateError, StateErrorKind};
pub use memory::MemoryStateStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStateStore};
pub use record::{
    EgressAuditEntry, EgressPolicyRecord, Lease, LeaseClaim, MAX_DETAIL_BYTES, MAX_EVENT_BYTES,
    MAX_ID_BYTES, MAX_LEASE_TTL, MAX_PAGE_LEN, Precondition, SandboxQuery, SandboxRecord,
    SecretMetadata, SessionQuery, SessionRecord, SessionStatus, Transition,
};
#[cfg(feature = "sqlite")]
pub use sqlite::{SQLITE_BUSY_TIMEOUT, SqliteStateStore};

/// The control plane's durable record of sessions, sandboxes, webhook ids, leases, egress policies
/// and secret metadata.
///
/// Object safe: hold it as `Arc<dyn StateStore>`. Every method is one atomic step in the backing
/// database (no method leaves a half-written record), and cancelling a call's future either
/// applies the step or not, never half of it. Several stores may open the same database (two
/// processes on one SQLite file, replicas on one Postgres); leases are how they share work.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    // ---- sessions ----

    /// Write a session record if `precondition` holds, returning its new
    /// [`version`](SessionRecord::version) (the record's own `version` field is ignored).
    /// A failed precondition is a [`StateErrorKind::Conflict`].
    async fn put_session(
        &self,
        record: &SessionRecord,
        precondition: Precondition,
    ) -> Result<u64, StateError>;

    /// The record of one session, if any.
    async fn get_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StateError>;

    /// One page of session records, ordered by session id (see [`SessionQuery`]).
    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, StateError>;

    /// Forget a session and its transition log; `false` if it was not known.
    async fn delete_session(&self, session_id: &str) -> Result<bool, StateError>;

    /// Append one entry to a session's transition log and return it with its sequence number.
    /// `event` is a short name (at most [`MAX_EVENT_BYTES`]), `detail` free-form context.
    async fn append_transition(
        &self,
        session_id: &str,
        at: DateTime<Utc>,
        event: &str,
        detail: &str,
    ) -> Result<Transition, StateError>;

    /// A session's transitions with a sequence number above `after_seq` (0 for the start), oldest
    /// first, at most `limit` (capped at [`MAX_PAGE_LEN`]).
    async fn list_transitions(
        &self,
        session_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Transition>, StateError>;

    // ---- webhook de-duplication ----

    /// Remember a webhook event id. `true` if it was new, `false` if it was already recorded (a
    /// duplicate delivery, also across restarts) and has not been pruned since.
    async fn record_webhook(
        &self,
        webhook_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<bool, StateError>;

    /// Forget webhook ids received before `before`; returns how many were forgotten.
    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StateError>;

    // ---- work-item leases ----

    /// Take or extend the lease on `claim.work_id` until `now + claim.ttl`.
    ///
    /// Succeeds when nobody holds it, when `claim.owner` already holds it (a renewal that keeps
    /// `acquired_at`), or when the holder's lease has expired at `now` (a take-over). Fails with
    /// [`StateErrorKind::LeaseHeld`] while another owner's lease is live. Of several stores racing
    /// on one database, exactly one wins.
    async fn claim_lease(
        &self,
        claim: &LeaseClaim,
        now: DateTime<Utc>,
    ) -> Result<Lease, StateError>;

    /// Extend a lease `owner` holds to `now + ttl`. Fails with [`StateErrorKind::LeaseLost`] if the
    /// lease is gone or another owner holds it. An expired lease nobody took over can be renewed.
    async fn renew_lease(
        &self,
        work_id: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, StateError>;

    /// Give up a lease; `false` if `owner` did not hold it.
    async fn release_lease(&self, work_id: &str, owner: &str) -> Result<bool, StateError>;

    /// The lease on one work item, live or expired, if any.
    async fn get_lease(&self, work_id: &str) -> Result<Option<Lease>, StateError>;

    /// Every lease (live or expired) held by `owner`, or by anyone when `None`, ordered by work id,
    /// at most [`MAX_PAGE_LEN`].
    async fn list_leases(&self, owner: Option<&str>) -> Result<Vec<Lease>, StateError>;

    // ---- sandboxes ----

    /// Record (or update) a sandbox the control plane created.
    async fn put_sandbox(&self, record: &SandboxRecord) -> Result<(), StateError>;

    /// One sandbox record, if known.
    async fn get_sandbox(
        &self,
        backend: &str,
        sandbox_id: &str,
    ) -> Result<Option<SandboxRecord>, StateError>;

    /// One page of the sandboxes known on `query.backend` (or on every backend when `None`),
    /// ordered by backend and id, after `query.after`, at most `query.limit` (capped at
    /// [`MAX_PAGE_LEN`]). An empty page means there are no more.
    async fn list_sandboxes(&self, query: &SandboxQuery) -> Result<Vec<SandboxRecord>, StateError>;

    /// Forget a sandbox (it was destroyed); `false` if it was not known.
    async fn remove_sandbox(&self, backend: &str, sandbox_id: &str) -> Result<bool, StateError>;

    // ---- egress policies ----

    /// Record (or update) an egress policy's id, version and fingerprint.
    async fn put_egress_policy(&self, record: &EgressPolicyRecord) -> Result<(), StateError>;

    /// One egress policy record, if known.
    async fn get_egress_policy(
        &self,
        policy_id: &str,
    ) -> Result<Option<EgressPolicyRecord>, StateError>;

    /// Every egress policy record, ordered by id, at most [`MAX_PAGE_LEN`].
    async fn list_egress_policies(&self) -> Result<Vec<EgressPolicyRecord>, StateError>;

    /// Forget an egress policy; `false` if it was not known.
    async fn remove_egress_policy(&self, policy_id: &str) -> Result<bool, StateError>;

    // ---- secret metadata ----

    /// Record (or update) a secret's name, version and fingerprint. There is no field for the value.
    async fn put_secret_metadata(&self, record: &SecretMetadata) -> Result<(), StateError>;

    /// One secret's metadata, if known.
    async fn get_secret_metadata(&self, name: &str) -> Result<Option<SecretMetadata>, StateError>;

    /// Every secret's metadata, ordered by name, at most [`MAX_PAGE_LEN`].
    async fn list_secret_metadata(&self) -> Result<Vec<SecretMetadata>, StateError>;

    /// Forget a secret's metadata; `false` if it was not known.
    async fn remove_secret_metadata(&self, name: &str) -> Result<bool, StateError>;

    // ---- egress audit log ----

    /// Append one egress audit entry (its `seq` is ignored) and return its sequence number.
    async fn append_egress_audit(&self, entry: &EgressAuditEntry) -> Result<u64, StateError>;

    /// Audit entries with a sequence number above `after_seq`, oldest first, of one session (or
    /// of all when `None`), at most `limit` (capped at [`MAX_PAGE_LEN`]).
    async fn list_egress_audit(
        &self,
        session_id: Option<&str>,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<EgressAuditEntry>, StateError>;

    /// Forget audit entries from before `before`; returns how many were forgotten.
    async fn prune_egress_audit(&self, before: DateTime<Utc>) -> Result<u64, StateError>;
}
