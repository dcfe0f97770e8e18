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

/// The lines of one file that contain a byte string, from
/// [`Sandbox::find_lines`](crate::Sandbox::find_lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FoundLines {
    /// The file's first 512 bytes hold a NUL byte (a binary file): no lines were looked at.
    pub binary: bool,
    /// The lines containing the string, in file order.
    pub lines: Vec<LineMatch>,
}

/// One line found by [`Sandbox::find_lines`](crate::Sandbox::find_lines).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LineMatch {
    /// 1-based line number (lines end at `\n`).
    pub number: u64,
    /// The line's length in bytes, without its `\n`.
    pub len: u64,
    /// Whether a `\n` ends it (only the last line of a file may lack one).
    pub terminated: bool,
    /// The line without its `\n`; empty when `len` exceeds the caller's `max_line`.
    pub text: Bytes,
}

impl FoundLines {
    /// Find the lines of `data` containing `needle` (what the default
    /// [`Sandbox::find_lines`](crate::Sandbox::find_lines) does with a file read whole).
    pub fn scan(data: &[u8], needle: &[u8], max_line: usize) -> Self {
        if data[..data.len().min(512)].contains(&0) {
            return Self {
                binary: true,
                lines: Vec::new(),
            };
        }
        let mut lines = Vec::new();
        let mut number = 0u64;
        let mut start = 0usize;
        while start < data.len() {
            let end = data[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i);
            let stop = end.unwrap_or(data.len());
            number += 1;
            let line = &data[start..stop];
            if !needle.is_empty() && line.windows(needle.len()).any(|w| w == needle) {
                lines.push(LineMatch {
                    number,
                    len: line.len() as u64,
                    terminated: end.is_some(),
                    text: if line.len() <= max_line {
                        Bytes::copy_from_slice(line)
                    } else {
                        Bytes::new()
                    },
                });
            }
            start = stop + 1;
        }
        Self {
            binary: false,
            lines,
        }
    }
}

/// What [`Sandbox::search_tree`](crate::Sandbox::search_tree) walks and how far.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TreeSearch {
    /// Directory names never entered (e.g. `.git`).
    pub skip_dirs: Vec<String>,
    /// The walk stops after this many regular files.
    pub max_files: usize,
    /// Files larger than this are not searched but reported as [`TreeMatch::Large`].
    pub max_file_bytes: u64,
    /// Longest line whose text is returned (see [`LineMatch::text`]).
    pub max_line: usize,
    /// The walk stops (incomplete) once about this many bytes of lines and paths were found.
    pub max_output_bytes: usize,
    /// Time budget of the walk; past it the call fails with
    /// [`Timeout`](crate::SandboxErrorKind::Timeout).
    pub timeout: std::time::Duration,
}

impl TreeSearch {
    /// Options with the given limits and no skipped directories.
    pub fn new(
        max_files: usize,
        max_file_bytes: u64,
        max_line: usize,
        max_output_bytes: usize,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            skip_dirs: Vec::new(),
            max_files,
            max_file_bytes,
            max_line,
            max_output_bytes,
            timeout,
        }
    }
}

/// One file of a [`Sandbox::search_tree`](crate::Sandbox::search_tree) walk, in walk order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeMatch {
    /// A searched file with at least one line holding the string.
    Lines {
        /// Its sandbox path.
        path: String,
        /// The lines.
        found: FoundLines,
    },
    /// A text file's whole content (a search without a string).
    Contents {
        /// Its sandbox path.
        path: String,
        /// Its bytes.
        data: Bytes,
    },
    /// A regular file over [`TreeSearch::max_file_bytes`]: not searched (the caller streams it).
    Large {
        /// Its sandbox path.
        path: String,
    },
}

/// The result of [`Sandbox::search_tree`](crate::Sandbox::search_tree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeFound {
    /// Files with matches and large files, in walk order.
    pub items: Vec<TreeMatch>,
    /// `false` when the walk stopped at [`TreeSearch::max_output_bytes`] before its end.
    pub complete: bool,
    /// How many regular files the walk went through (all of them reported on, when it stopped
    /// early): a caller that goes on by itself skips that many.
    pub files_seen: usize,
}

/// One entry of the workspace as [`Sandbox::workspace_entries`](crate::Sandbox::workspace_entries)
/// lists it: the metadata an incremental snapshot compares to decide that a file is unchanged
/// without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkspaceEntry {
    /// Its path relative to the workspace, `/`-separated, as raw bytes (names need not be
    /// UTF-8).
    pub path: Vec<u8>,
    /// A directory, regular file or symlink (special files are not listed).
    pub kind: FileKind,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Size in bytes (regular files; 0 otherwise).
    pub size: u64,
    /// Last modification, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Last status change, nanoseconds since the Unix epoch (moves on every write and
    /// metadata change; cannot be set by a user).
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// A symlink's target, as stored.
    pub link_target: Option<Vec<u8>>,
}

/// A streaming reader over a file's bytes, from [`Sandbox::open_read`](crate::Sandbox::open_read).
pub type FileReader = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// A stream of byte chunks: a workspace archive (tar) on export or import.
///
/// Build one from any `Stream<Item = Result<Bytes, SandboxError>>` with `Box::pin`, e.g.
/// `Box::pin(futures::stream::iter(vec![Ok(Bytes::from(tar_bytes))]))`.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, SandboxError>> + Send>>;
