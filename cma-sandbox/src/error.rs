//! The crate's one error type: a [`SandboxErrorKind`] plus the sandbox path, a context message and
//! an optional boxed source.
//!
//! Messages name *sandbox* paths only (`/workspace/a.txt`), never the host path behind them, so an
//! error can be shown to the agent as is.

use std::error::Error as StdError;
use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What went wrong, independent of the backend.
///
/// The file-system kinds map one-to-one to the fixed phrases of the official file tools
/// (docs/protocol.md §6.1); see [`SandboxErrorKind::phrase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SandboxErrorKind {
    /// The path, sandbox or archive entry does not exist.
    NotFound,
    /// A path component that must be a directory is not one.
    NotADirectory,
    /// A file operation was applied to a directory.
    IsADirectory,
    /// The operation is not permitted (read-only mount, file permissions, special file).
    PermissionDenied,
    /// The target already exists.
    AlreadyExists,
    /// A directory removal without `recursive` found entries inside.
    DirectoryNotEmpty,
    /// Too many levels of symbolic links (a loop or a chain past the limit).
    SymlinkLoop,
    /// The path (or a symlink on the way) leads outside every mount of the sandbox.
    OutsideSandbox,
    /// The path or argument is malformed (NUL byte, empty, over-long component, bad id).
    InvalidInput,
    /// The file or output is larger than the caller's cap; see [`SandboxError::size`].
    TooLarge,
    /// The backend cannot do this at all (for example `exec` on the isolate backend).
    Unsupported,
    /// A time limit ran out (a script's wall clock, a command's timeout).
    Timeout,
    /// A resource limit was hit (memory, pids, file size).
    ResourceLimit,
    /// The sandbox's disk quota ([`SandboxSpec::disk_bytes`](crate::SandboxSpec::disk_bytes))
    /// is used up (or the file system reported `EDQUOT`): the write was refused and what was
    /// there before is left as it was.
    QuotaExceeded,
    /// The file system is full (`ENOSPC`; also how XFS project quotas, used by Docker's
    /// `size` storage option, report a full sandbox).
    StorageFull,
    /// The sandbox has been stopped; resume it first.
    Stopped,
    /// An archive (tar) is malformed or contains an entry the sandbox refuses.
    InvalidArchive,
    /// The backend is temporarily unavailable (daemon restarting, network blip); retrying may help.
    Unavailable,
    /// Any other I/O failure.
    Io,
    /// A backend-specific failure that fits no other kind.
    Backend,
}

impl SandboxErrorKind {
    /// The short, lower-case phrase for this kind. The file-system kinds use the exact phrases of
    /// the official file tools (`no such file or directory`, `not a directory`, ...).
    pub fn phrase(self) -> &'static str {
        match self {
            Self::NotFound => "no such file or directory",
            Self::NotADirectory => "not a directory",
            Self::IsADirectory => "is a directory",
            Self::PermissionDenied => "permission denied",
            Self::AlreadyExists => "file already exists",
            Self::DirectoryNotEmpty => "directory not empty",
            Self::SymlinkLoop => "too many levels of symbolic links",
            Self::OutsideSandbox => "path is outside the sandbox",
            Self::InvalidInput => "invalid argument",
            Self::TooLarge => "too large",
            Self::Unsupported => "operation not supported",
            Self::Timeout => "timed out",
            Self::ResourceLimit => "resource limit exceeded",
            Self::QuotaExceeded => "disk quota exceeded",
            Self::StorageFull => "no space left on device",
            Self::Stopped => "sandbox is stopped",
            Self::InvalidArchive => "invalid archive",
            Self::Unavailable => "backend unavailable",
            Self::Io => "input/output error",
            Self::Backend => "backend error",
        }
    }
}

impl fmt::Display for SandboxErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

/// An error from a sandbox or a backend.
///
/// Displays as `<sandbox path>: <context>` when a path is attached, else `<context>`.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct SandboxError {
    kind: SandboxErrorKind,
    path: Option<String>,
    context: String,
    size: Option<u64>,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl SandboxError {
    /// An error of `kind` with a context message.
    pub fn new(kind: SandboxErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            path: None,
            context: context.into(),
            size: None,
            source: None,
        }
    }

    /// An error of `kind` about a sandbox path, with the kind's phrase as context
    /// (`/workspace/a: no such file or directory`).
    pub fn at_path(kind: SandboxErrorKind, path: impl Into<String>) -> Self {
        Self::new(kind, kind.phrase()).with_path(path)
    }

    /// `TooLarge` for a file of `size` bytes against a cap of `limit` bytes.
    pub fn too_large(path: impl Into<String>, size: u64, limit: u64) -> Self {
        let mut e = Self::new(
            SandboxErrorKind::TooLarge,
            format!("is {size} bytes, exceeds {limit}-byte limit"),
        )
        .with_path(path);
        e.size = Some(size);
        e
    }

    /// `Unsupported` with a message explaining what to use instead.
    pub fn unsupported(context: impl Into<String>) -> Self {
        Self::new(SandboxErrorKind::Unsupported, context)
    }

    /// Attach the sandbox path the error is about (never a host path).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Attach the underlying cause. It is reachable through [`std::error::Error::source`] and is
    /// not part of the display text (it may mention host paths).
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> SandboxErrorKind {
        self.kind
    }

    /// The sandbox path the error is about, if any.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The context message (without the path prefix).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// For [`SandboxErrorKind::TooLarge`]: the actual size in bytes, when known.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Whether retrying the same operation later may succeed. Only transient backend conditions
    /// ([`SandboxErrorKind::Unavailable`]) are retryable; a script's timeout or a missing file is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, SandboxErrorKind::Unavailable)
    }

    fn render(&self) -> String {
        match &self.path {
            Some(p) => format!("{p}: {}", self.context),
            None => self.context.clone(),
        }
    }
}

impl From<SandboxError> for std::io::Error {
    fn from(e: SandboxError) -> Self {
        let kind = match e.kind {
            SandboxErrorKind::NotFound => std::io::ErrorKind::NotFound,
            SandboxErrorKind::PermissionDenied | SandboxErrorKind::OutsideSandbox => {
                std::io::ErrorKind::PermissionDenied
            }
            SandboxErrorKind::AlreadyExists => std::io::ErrorKind::AlreadyExists,
            SandboxErrorKind::InvalidInput => std::io::ErrorKind::InvalidInput,
            SandboxErrorKind::InvalidArchive => std::io::ErrorKind::InvalidData,
            SandboxErrorKind::Timeout => std::io::ErrorKind::TimedOut,
            SandboxErrorKind::Unsupported => std::io::ErrorKind::Unsupported,
            SandboxErrorKind::QuotaExceeded => std::io::ErrorKind::QuotaExceeded,
            SandboxErrorKind::StorageFull => std::io::ErrorKind::StorageFull,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prefixes_the_sandbox_path_and_uses_the_tool_phrase() {
        let e = SandboxError::at_path(SandboxErrorKind::NotFound, "/workspace/a.txt");
        assert_eq!(e.to_string(), "/workspace/a.txt: no such file or directory");
        assert_eq!(e.kind(), SandboxErrorKind::NotFound);
        assert!(!e.is_retryable());
    }

    #[test]
    fn too_large_carries_the_size_and_only_unavailable_is_retryable() {
        let e = SandboxError::too_large("/workspace/big", 10, 4);
        assert_eq!(e.size(), Some(10));
        assert_eq!(
            e.to_string(),
            "/workspace/big: is 10 bytes, exceeds 4-byte limit"
        );
        assert!(
            SandboxError::new(SandboxErrorKind::Unavailable, "daemon restarting").is_retryable()
        );
        assert!(!SandboxError::new(SandboxErrorKind::Timeout, "slow").is_retryable());
    }

    #[test]
    fn source_is_kept_but_not_displayed() {
        let io = std::io::Error::other("/host/secret/path");
        let e = SandboxError::at_path(SandboxErrorKind::Io, "/workspace/x").with_source(io);
        assert!(!e.to_string().contains("/host"));
        assert!(StdError::source(&e).is_some());
    }
}
