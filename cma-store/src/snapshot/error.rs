//! The snapshot store's error type: one `#[non_exhaustive]` enum with a coarse
//! [`ErrorKind`] and [`Error::is_retryable`].

use std::time::Duration;

use cma_sandbox::SandboxError;

/// Result alias for snapshot operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: what a caller matches on to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad argument (a session id that cannot be part of an object key, a bad URL).
    InvalidInput,
    /// The snapshot does not exist.
    NotFound,
    /// Stored data failed verification: a chunk or manifest whose hash, size or format is wrong,
    /// or a chunk that is missing.
    Corrupt,
    /// The archive holds an entry that could land outside the workspace or is a special file.
    UnsafeEntry,
    /// Bigger than a configured limit.
    TooLarge,
    /// A store call or the whole save took longer than allowed.
    Timeout,
    /// Another process holds the store busy (a garbage collection that did not finish in time).
    Busy,
    /// The object store failed.
    Store,
    /// The sandbox failed to export or import the workspace.
    Sandbox,
    /// Local I/O (the restore spool file) failed.
    Io,
}

/// A snapshot store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong with it.
        message: String,
    },
    /// No snapshot with this id (or no snapshot at all for the session).
    #[error("snapshot not found: {what}")]
    NotFound {
        /// The id or session looked up.
        what: String,
    },
    /// A chunk the manifest lists is not in the store.
    #[error("snapshot {snapshot}: chunk {chunk} is missing from the store")]
    MissingChunk {
        /// The snapshot being read.
        snapshot: String,
        /// The chunk's name, its content hash (hex).
        chunk: String,
    },
    /// Stored data failed verification.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// The object (manifest or chunk) that failed.
        what: String,
        /// Why it was rejected.
        detail: String,
    },
    /// An archive entry that a restore refuses to write.
    #[error("unsafe archive entry '{path}': {reason}")]
    UnsafeEntry {
        /// The entry's name as stored (lossy UTF-8, shortened).
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// Something is bigger than a configured limit.
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// What was measured.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An operation ran out of time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: String,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The store is busy (a garbage collection is running); retry later.
    #[error("store busy: {message}")]
    Busy {
        /// Details.
        message: String,
    },
    /// The object store failed.
    #[error("object store: {operation}: {source}")]
    Store {
        /// The operation and object.
        operation: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The sandbox failed.
    #[error("sandbox: {operation}: {source}")]
    Sandbox {
        /// The operation.
        operation: String,
        /// The sandbox's error.
        #[source]
        source: SandboxError,
    },
    /// Local I/O failed.
    #[error("i/o: {operation}: {source}")]
    Io {
        /// The operation.
        operation: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::MissingChunk { .. } | Self::Corrupt { .. } => ErrorKind::Corrupt,
            Self::UnsafeEntry { .. } => ErrorKind::UnsafeEntry,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::Store { .. } => ErrorKind::Store,
            Self::Sandbox { .. } => ErrorKind::Sandbox,
            Self::Io { .. } => ErrorKind::Io,
        }
    }

    /// Whether the same call may succeed if repeated later (timeouts, a busy store, transient
    /// store or sandbox failures). Verification failures are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Busy { .. } => true,
            Self::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Self::Sandbox { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn store(operation: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            operation: operation.into(),
            source,
        }
    }

    pub(crate) fn io(operation: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            operation: operation.into(),
            source,
        }
    }

    pub(crate) fn sandbox(operation: impl Into<String>, source: SandboxError) -> Self {
        Self::Sandbox {
            operation: operation.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::UnsafeEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_retryability() {
        let e = Error::corrupt("chunk x", "hash mismatch");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(!e.is_retryable());
        let e = Error::Timeout {
            operation: "put".into(),
            after: Duration::from_secs(1),
        };
        assert!(e.is_retryable());
        let e = Error::store(
            "get",
            object_store::Error::NotFound {
                path: "p".into(),
                source: "x".into(),
            },
        );
        assert_eq!(e.kind(), ErrorKind::Store);
        assert!(!e.is_retryable());
    }
}
