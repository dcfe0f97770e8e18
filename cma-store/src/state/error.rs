//! The one error type every [`StateStore`](super::StateStore) returns.

use chrono::{DateTime, Utc};

/// The error type of every [`StateStore`](super::StateStore) operation.
///
/// Match on [`StateError::kind`] rather than on variants: new variants may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// An argument was rejected before reaching the store (empty, too long, NUL byte, out of range).
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument or record field that was rejected.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A conditional write lost: the record was not in the state the caller expected.
    #[error("{what} {id}: {reason}")]
    Conflict {
        /// The kind of record (`"session"`, ...).
        what: &'static str,
        /// Its id.
        id: String,
        /// What the store found instead.
        reason: String,
    },
    /// Another live owner holds the lease on this work item.
    #[error("lease on work {work_id} is held by {owner} until {expires_at}")]
    LeaseHeld {
        /// The work item.
        work_id: String,
        /// The current holder.
        owner: String,
        /// When the holder's lease runs out unless renewed.
        expires_at: DateTime<Utc>,
    },
    /// The caller no longer holds the lease it tried to renew (released, or taken over after it expired).
    #[error("lease on work {work_id} is no longer held by {owner}")]
    LeaseLost {
        /// The work item.
        work_id: String,
        /// The owner that tried to renew.
        owner: String,
    },
    /// The database holds data this code cannot read: not a database at all, a row with a value out of
    /// range, or a schema written by a newer version of this crate.
    #[error("state store data is unreadable: {detail}")]
    Corrupt {
        /// What was wrong.
        detail: String,
    },
    /// The database could not be reached or did not answer in time (connect, pool timeout, I/O).
    #[error("state store unavailable during {op}: {source}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database refused an operation for another reason.
    #[error("state store failed during {op}: {source}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The category of a [`StateError`], stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StateErrorKind {
    /// See [`StateError::InvalidInput`].
    InvalidInput,
    /// See [`StateError::Conflict`].
    Conflict,
    /// See [`StateError::LeaseHeld`].
    LeaseHeld,
    /// See [`StateError::LeaseLost`].
    LeaseLost,
    /// See [`StateError::Corrupt`].
    Corrupt,
    /// See [`StateError::Unavailable`].
    Unavailable,
    /// See [`StateError::Backend`].
    Backend,
}

impl StateError {
    /// The category of this error.
    pub fn kind(&self) -> StateErrorKind {
        match self {
            Self::InvalidInput { .. } => StateErrorKind::InvalidInput,
            Self::Conflict { .. } => StateErrorKind::Conflict,
            Self::LeaseHeld { .. } => StateErrorKind::LeaseHeld,
            Self::LeaseLost { .. } => StateErrorKind::LeaseLost,
            Self::Corrupt { .. } => StateErrorKind::Corrupt,
            Self::Unavailable { .. } => StateErrorKind::Unavailable,
            Self::Backend { .. } => StateErrorKind::Backend,
        }
    }

    /// Whether retrying the same call later may succeed. Only [`StateErrorKind::Unavailable`] is:
    /// a conflict or a held lease needs a fresh read first, bad input and corrupt data stay bad.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), StateErrorKind::Unavailable)
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Self::Corrupt {
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        let unavailable = StateError::Unavailable {
            op: "get_session",
            source: "timed out".into(),
        };
        assert!(unavailable.is_retryable());
        assert_eq!(unavailable.kind(), StateErrorKind::Unavailable);
        assert!(!StateError::corrupt("x").is_retryable());
        assert!(!StateError::invalid("session_id", "empty").is_retryable());
        let held = StateError::LeaseHeld {
            work_id: "w".into(),
            owner: "o".into(),
            expires_at: DateTime::UNIX_EPOCH,
        };
        assert_eq!(held.kind(), StateErrorKind::LeaseHeld);
        assert!(!held.is_retryable());
    }
}
