//! File metadata and directory listings as the [`Sandbox`](crate::Sandbox) file operations return
//! them, plus the stream types for reading files and moving workspace archives.

use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::error::SandboxError;

/// The type of a file-system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only from `lstat` and directory listings).
    Symlink,
    /// Anything else (FIFO, socket, device).
    Other,
}

/// Metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// Its type.
    pub kind: FileKind,
    /// Size in bytes (for a symlink from `lstat`: the length of its target).
    pub size: u64,
    /// Last modification time, when the backend knows it.
    pub modified: Option<SystemTime>,
}

impl FileStat {
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind == FileKind::Symlink
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name (no directory part). Names that are not valid UTF-8 are converted
    /// lossily (U+FFFD); such an entry can be listed but may not be addressable by this name.
    pub name: String,
    /// Its metadata, not following a symlink (as `lstat`).
    pub stat: FileStat,
}

/// A streaming reader over a file's bytes, from [`Sandbox::open_read`](crate::Sandbox::open_read).
pub type FileReader = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// A stream of byte chunks: a workspace archive (tar) on export or import.
///
/// Build one from any `Stream<Item = Result<Bytes, SandboxError>>` with `Box::pin`, e.g.
/// `Box::pin(futures::stream::iter(vec![Ok(Bytes::from(tar_bytes))]))`.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, SandboxError>> + Send>>;
