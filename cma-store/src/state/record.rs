//! The records a [`StateStore`](super::StateStore) keeps, and the limits every backend enforces on them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::StateError;
use crate::SnapshotId;

/// The longest id (session, work, sandbox, owner, webhook, policy, secret name, backend name) a store
/// accepts, in bytes. Ids in docs/protocol.md are far shorter; the bound keeps rows and indexes small.
pub const MAX_ID_BYTES: usize = 256;
/// The longest transition event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 64;
/// The longest transition detail or fingerprint, in bytes.
pub const MAX_DETAIL_BYTES: usize = 4096;
/// The most rows one listing call returns; longer listings page (see [`SessionQuery`]).
pub const MAX_PAGE_LEN: u32 = 1000;

/// Where a session stands, as the control plane last recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionStatus {
    /// A sandbox was chosen or created for the session; its work has not started yet.
    Placed,
    /// A work item for the session is running.
    Running,
    /// The session is idle (the agent waits for input); its sandbox may be kept warm.
    Idle,
    /// The session's work item ended; its sandbox is stopped or destroyed and it resumes from its
    /// snapshot on the next work item.
    Sleeping,
    /// The session was terminated or deleted; nothing resumes it.
    Terminated,
}

impl SessionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SessionStatus; 5] = [
        Self::Placed,
        Self::Running,
        Self::Idle,
        Self::Sleeping,
        Self::Terminated,
    ];

    /// The stored (and logged) name: `placed`, `running`, `idle`, `sleeping`, `terminated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Running => "running",
            Self::Idle => "idle",
            Self::Sleeping => "sleeping",
            Self::Terminated => "terminated",
        }
    }

    /// Parse a stored name; `None` for anything [`as_str`](Self::as_str) does not produce.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the control plane knows about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The CMA session id.
    pub session_id: String,
    /// The sandbox backend the session is placed on (`"isolate"`, `"docker"`, ...).
    pub backend: String,
    /// The sandbox currently (or last) serving the session, if any.
    pub sandbox_id: Option<String>,
    /// The last work item claimed for the session.
    pub last_work_id: Option<String>,
    /// The newest good snapshot of the session's workspace.
    pub last_snapshot: Option<SnapshotId>,
    /// The egress policy the session's sandbox runs under.
    pub egress_policy_id: Option<String>,
    /// Where the session stands.
    pub status: SessionStatus,
    /// When this record was last written (stored with millisecond precision).
    pub updated_at: DateTime<Utc>,
    /// Bumped by the store on every write; ignored on input. Use it with [`Precondition::Version`].
    pub version: u64,
}

impl SessionRecord {
    /// A record for a session that was just placed on `backend`, with no sandbox or work yet.
    pub fn new(
        session_id: impl Into<String>,
        backend: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            session_id: session_id.into(),
            backend: backend.into(),
            sandbox_id: None,
            last_work_id: None,
            last_snapshot: None,
            egress_policy_id: None,
            status: SessionStatus::Placed,
            updated_at: now,
            version: 0,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_id("session_id", &self.session_id)?;
        check_id("backend", &self.backend)?;
        check_opt_id("sandbox_id", self.sandbox_id.as_deref())?;
        check_opt_id("last_work_id", self.last_work_id.as_deref())?;
        check_opt_id("egress_policy_id", self.egress_policy_id.as_deref())?;
        check_time("updated_at", self.updated_at)
    }
}

/// The condition a [`StateStore::put_session`](super::StateStore::put_session) write must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is stored (insert or overwrite).
    Any,
    /// Write only if no record with this id exists.
    Absent,
    /// Write only if the stored record is at this [`SessionRecord::version`].
    Version(u64),
}

/// Which sessions [`StateStore::list_sessions`](super::StateStore::list_sessions) returns: ordered by
/// session id, starting after `after`, at most `limit` (capped at [`MAX_PAGE_LEN`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only sessions with this status; `None` for all.
    pub status: Option<SessionStatus>,
    /// Resume after this session id (the last id of the previous page).
    pub after: Option<String>,
    /// The most records to return.
    pub limit: u32,
}

impl Default for SessionQuery {
    fn default() -> Self {
        Self {
            status: None,
            after: None,
            limit: MAX_PAGE_LEN,
        }
    }
}

impl SessionQuery {
    pub(crate) fn validate(&self) -> Result<u32, StateError> {
        check_opt_id("after", self.after.as_deref())?;
        if self.limit == 0 {
            return Err(StateError::invalid("limit", "must be at least 1"));
        }
        Ok(self.limit.min(MAX_PAGE_LEN))
    }
}

/// Which sandbox records [`StateStore::list_sandboxes`](super::StateStore::list_sandboxes)
/// returns: one page, ordered by backend and sandbox id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxQuery {
    /// Only sandboxes of this backend; `None` for every backend.
    pub backend: Option<String>,
    /// Resume after this `(backend, sandbox_id)` (the last record of the previous page).
    pub after: Option<(String, String)>,
    /// The most records to return (capped at [`MAX_PAGE_LEN`]).
    pub limit: u32,
}

impl Default for SandboxQuery {
    fn default() -> Self {
        Self {
            backend: None,
            after: None,
            limit: MAX_PAGE_LEN,
        }
    }
}

impl SandboxQuery {
    /// The first page of `backend`'s sandboxes.
    pub fn backend(backend: impl Into<String>) -> Self {
        Self {
            backend: Some(backend.into()),
            ..Self::default()
        }
    }

    /// The page after `last` (the last record of this page).
    #[must_use]
    pub fn after(mut self, last: &SandboxRecord) -> Self {
        self.after = Some((last.backend.clone(), last.sandbox_id.clone()));
        self
    }

    pub(crate) fn validate(&self) -> Result<u32, StateError> {
        check_opt_id("backend", self.backend.as_deref())?;
        if let Some((backend, id)) = &self.after {
            check_id("after.backend", backend)?;
            check_id("after.sandbox_id", id)?;
        }
        if self.limit == 0 {
            return Err(StateError::invalid("limit", "must be at least 1"));
        }
        Ok(self.limit.min(MAX_PAGE_LEN))
    }
}

/// One entry of a session's append-only transition log: what happened, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Position in the store's log; strictly increasing in append order (across all sessions, so
    /// a session's entries are ordered but not contiguous).
    pub seq: u64,
    /// The session.
    pub session_id: String,
    /// When it happened (millisecond precision).
    pub at: DateTime<Utc>,
    /// A short name for what happened: a [`SessionStatus`] name or an event such as
    /// `sandbox_created`, `sandbox_destroyed`, `sandbox_kept_warm`, `snapshot_saved`.
    pub event: String,
    /// Free-form context (may be empty), at most [`MAX_DETAIL_BYTES`].
    pub detail: String,
}

pub(crate) fn validate_transition(
    session_id: &str,
    at: DateTime<Utc>,
    event: &str,
    detail: &str,
) -> Result<(), StateError> {
    check_id("session_id", session_id)?;
    check_time("at", at)?;
    check_text("event", event, MAX_EVENT_BYTES, false)?;
    check_text("detail", detail, MAX_DETAIL_BYTES, true)
}

/// A request to hold the lease on a work item (see [`StateStore::claim_lease`](super::StateStore::claim_lease)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    /// The work item.
    pub work_id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// Who claims it: a stable id of this control-plane replica.
    pub owner: String,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
}

impl LeaseClaim {
    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_id("work_id", &self.work_id)?;
        check_id("session_id", &self.session_id)?;
        check_id("owner", &self.owner)?;
        check_ttl(self.ttl)
    }
}

/// A lease on one work item held by one control-plane replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The work item.
    pub work_id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// The holder.
    pub owner: String,
    /// When the holder first claimed it (kept across renewals and re-claims by the same owner).
    pub acquired_at: DateTime<Utc>,
    /// When it runs out unless renewed; after that any owner may claim it.
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// Whether the lease still protects its holder at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

/// A sandbox the control plane created and has not yet seen destroyed, for the janitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The backend that owns it.
    pub backend: String,
    /// The backend's id for it.
    pub sandbox_id: String,
    /// The session it serves, if any (a warm spare serves none).
    pub session_id: Option<String>,
    /// When it was created (millisecond precision).
    pub created_at: DateTime<Utc>,
}

impl SandboxRecord {
    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_id("backend", &self.backend)?;
        check_id("sandbox_id", &self.sandbox_id)?;
        check_opt_id("session_id", self.session_id.as_deref())?;
        check_time("created_at", self.created_at)
    }
}

/// An egress policy the control plane has applied, by id, with the fingerprint of its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicyRecord {
    /// The policy id.
    pub policy_id: String,
    /// The policy's version, as its owner numbers them.
    pub version: u64,
    /// A digest of the policy's rules (so a change is noticed without storing the rules).
    pub fingerprint: String,
    /// When the record was written (millisecond precision).
    pub updated_at: DateTime<Utc>,
}

impl EgressPolicyRecord {
    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_id("policy_id", &self.policy_id)?;
        check_u64("version", self.version)?;
        check_text("fingerprint", &self.fingerprint, MAX_DETAIL_BYTES, true)?;
        check_time("updated_at", self.updated_at)
    }
}

/// What the control plane knows about one secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMetadata {
    /// The secret's name, as egress rules refer to it.
    pub name: String,
    /// The secret's version, as the secret store numbers them.
    pub version: u64,
    /// A keyed digest of the value, so rotation is noticed; never the value or a plain hash of it.
    pub fingerprint: String,
    /// When the record was written (millisecond precision).
    pub updated_at: DateTime<Utc>,
}

impl SecretMetadata {
    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_id("name", &self.name)?;
        check_u64("version", self.version)?;
        check_text("fingerprint", &self.fingerprint, MAX_DETAIL_BYTES, true)?;
        check_time("updated_at", self.updated_at)
    }
}

/// One request the egress proxy decided, as its audit log keeps it: a few columns to filter on,
/// and the whole record as JSON (which never holds a secret value or a query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAuditEntry {
    /// Position in the store's audit log, strictly increasing in append order (set by the store;
    /// ignored on input).
    pub seq: u64,
    /// When the request arrived (millisecond precision).
    pub at: DateTime<Utc>,
    /// The session, when the proxy identified it.
    pub session_id: Option<String>,
    /// The sandbox, when the proxy identified it.
    pub sandbox_id: Option<String>,
    /// The destination host (at most [`MAX_ID_BYTES`]).
    pub host: String,
    /// Whether the request was let through.
    pub allowed: bool,
    /// The full record as JSON, at most [`MAX_DETAIL_BYTES`].
    pub record: String,
}

impl EgressAuditEntry {
    pub(crate) fn validate(&self) -> Result<(), StateError> {
        check_time("at", self.at)?;
        check_opt_id("session_id", self.session_id.as_deref())?;
        check_opt_id("sandbox_id", self.sandbox_id.as_deref())?;
        check_text("host", &self.host, MAX_ID_BYTES, true)?;
        check_text("record", &self.record, MAX_DETAIL_BYTES, false)
    }
}

pub(crate) fn check_id(field: &'static str, id: &str) -> Result<(), StateError> {
    check_text(field, id, MAX_ID_BYTES, false)
}

pub(crate) fn check_opt_id(field: &'static str, id: Option<&str>) -> Result<(), StateError> {
    id.map_or(Ok(()), |id| check_id(field, id))
}

fn check_text(
    field: &'static str,
    text: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), StateError> {
    if text.is_empty() && !allow_empty {
        return Err(StateError::invalid(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(StateError::invalid(
            field,
            format!("{} bytes, more than the limit of {max}", text.len()),
        ));
    }
    if text.contains('\0') {
        return Err(StateError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn check_u64(field: &'static str, value: u64) -> Result<(), StateError> {
    i64::try_from(value)
        .map(drop)
        .map_err(|_| StateError::invalid(field, format!("{value} is larger than {}", i64::MAX)))
}

/// Stores keep milliseconds since the Unix epoch in a signed 64-bit column; refuse times before the
/// epoch so every backend orders them the same way.
pub(crate) fn check_time(field: &'static str, t: DateTime<Utc>) -> Result<(), StateError> {
    if t.timestamp_millis() < 0 {
        return Err(StateError::invalid(field, format!("{t} is before 1970")));
    }
    Ok(())
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<(), StateError> {
    if ttl.is_zero() || ttl > MAX_LEASE_TTL {
        return Err(StateError::invalid(
            "ttl",
            format!("{ttl:?} is outside 1 ms ..= {MAX_LEASE_TTL:?}"),
        ));
    }
    Ok(())
}

/// The longest lease a store grants in one claim or renewal.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Milliseconds since the epoch, as every backend stores times.
pub(crate) fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`to_millis`]; a value no valid write produces is corrupt data.
pub(crate) fn from_millis(field: &'static str, ms: i64) -> Result<DateTime<Utc>, StateError> {
    if ms < 0 {
        return Err(StateError::corrupt(format!(
            "{field} = {ms} is before 1970"
        )));
    }
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StateError::corrupt(format!("{field} = {ms} is out of range")))
}

/// `t` truncated to the millisecond, as every backend returns it.
pub(crate) fn truncate_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// `now + ttl` in milliseconds, saturating.
pub(crate) fn expiry_millis(now: DateTime<Utc>, ttl: Duration) -> i64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    to_millis(now).saturating_add(ttl_ms)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn u64_from_db(field: &'static str, v: i64) -> Result<u64, StateError> {
    u64::try_from(v).map_err(|_| StateError::corrupt(format!("{field} = {v} is negative")))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn snapshot_from_db(v: Option<String>) -> Result<Option<SnapshotId>, StateError> {
    v.map(|hex| {
        SnapshotId::from_hex(&hex).ok_or_else(|| {
            StateError::corrupt(format!(
                "last_snapshot_id {hex:?} is not a SHA-256 hex digest"
            ))
        })
    })
    .transpose()
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn status_from_db(v: &str) -> Result<SessionStatus, StateError> {
    SessionStatus::parse(v)
        .ok_or_else(|| StateError::corrupt(format!("unknown session status {v:?}")))
}
