//! The confined file layer of the isolate backend: maps sandbox paths to (mount, relative path)
//! and performs every file operation through a `cap_std::fs::Dir`, so no path, `..` or symlink
//! (absolute, relative or chained) reaches outside a mount.
//!
//! Everything here is synchronous; the async [`Sandbox`](crate::Sandbox) methods and the JS
//! `fs.*` functions call into it. It must never put a host path into an error message: errors
//! carry the normalised sandbox path and the host `io::Error` only as their (undisplayed) source.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cap_std::fs::{Dir, Metadata};

use super::quota::{QUOTA_ENTRY_BYTES, Quota, file_usage, measure, missing_dirs};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::{DirEntry, FileKind, FileStat};

/// Longest accepted sandbox path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Most entries `read_dir` returns before failing with `TooLarge`, so a listing
/// stays bounded in memory.
pub const MAX_DIR_ENTRIES: usize = 100_000;
/// Longest symlink target accepted when creating a symlink.
pub const MAX_LINK_TARGET_BYTES: usize = 4096;

/// The message cap-std uses for every attempt to leave its directory (`errors::escape_attempt`).
const CAP_STD_ESCAPE: &str = "a path led outside of the filesystem";

/// `ELOOP` ("too many levels of symbolic links"); `io::ErrorKind::FilesystemLoop` is unstable.
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
const ELOOP: i32 = 62;
#[cfg(not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")))]
const ELOOP: i32 = 40;

/// One directory visible in the sandbox.
#[derive(Debug)]
pub(crate) struct MountPoint {
    /// Normalised absolute sandbox path, no trailing slash (e.g. `/workspace`).
    pub path: String,
    pub dir: Dir,
    pub read_only: bool,
    /// The disk quota of this mount (the workspace of a sandbox whose spec set `disk_bytes`).
    pub quota: Option<Quota>,
}

/// The sandbox's view of the file system: the workspace and extra mounts.
#[derive(Debug)]
pub(crate) struct Workspace {
    /// Longest path first, so the most specific mount wins.
    mounts: Vec<MountPoint>,
    workdir: String,
}

/// A sandbox path resolved to a mount and a relative path inside it.
pub(crate) struct Resolved<'a> {
    pub mount: &'a MountPoint,
    /// Relative to the mount; `.` for the mount root. Never contains `..` or a root.
    pub rel: PathBuf,
    /// The normalised sandbox path, for error messages.
    pub shown: String,
}

impl Resolved<'_> {
    fn is_root(&self) -> bool {
        self.rel.as_os_str() == "."
    }

    fn writable(&self) -> Result<()> {
        if self.mount.read_only {
            Err(SandboxError::new(
                SandboxErrorKind::PermissionDenied,
                format!("permission denied (read-only mount {})", self.mount.path),
            )
            .with_path(self.shown.clone()))
        } else {
            Ok(())
        }
    }

    fn err(&self, e: io::Error) -> SandboxError {
        map_io(e, &self.shown)
    }
}

/// Collapse `.`/`..` lexically and join a relative path to `workdir`. Rejects NUL, empty paths,
/// and over-long paths or components.
pub(crate) fn normalize(workdir: &str, path: &str) -> Result<String> {
    let invalid = |why: &str| {
        SandboxError::new(
            SandboxErrorKind::InvalidInput,
            format!("invalid path: {why}"),
        )
    };
    if path.is_empty() {
        return Err(invalid("empty"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid("longer than 4096 bytes"));
    }
    let mut stack: Vec<&str> = Vec::new();
    let prefix = if path.starts_with('/') { "" } else { workdir };
    for comp in prefix.split('/').chain(path.split('/')) {
        match comp {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            name => {
                if name.len() > MAX_NAME_BYTES {
                    return Err(invalid("a file name is longer than 255 bytes"));
                }
                stack.push(name);
            }
        }
    }
    let mut out = String::with_capacity(path.len() + prefix.len() + 1);
    for comp in &stack {
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Map a host I/O error to a typed error naming the sandbox path only.
pub(crate) fn map_io(e: io::Error, shown: &str) -> SandboxError {
    use io::ErrorKind as K;
    let kind = match e.kind() {
        _ if e.raw_os_error() == Some(ELOOP) => SandboxErrorKind::SymlinkLoop,
        K::PermissionDenied if e.to_string().contains(CAP_STD_ESCAPE) => {
            SandboxErrorKind::OutsideSandbox
        }
        K::NotFound => SandboxErrorKind::NotFound,
        K::NotADirectory => SandboxErrorKind::NotADirectory,
        K::IsADirectory => SandboxErrorKind::IsADirectory,
        K::DirectoryNotEmpty => SandboxErrorKind::DirectoryNotEmpty,
        K::AlreadyExists => SandboxErrorKind::AlreadyExists,
        K::PermissionDenied | K::ReadOnlyFilesystem => SandboxErrorKind::PermissionDenied,
        K::InvalidFilename | K::InvalidInput => SandboxErrorKind::InvalidInput,
        K::QuotaExceeded => SandboxErrorKind::QuotaExceeded,
        K::StorageFull => SandboxErrorKind::StorageFull,
        K::FileTooLarge | K::OutOfMemory => SandboxErrorKind::ResourceLimit,
        _ => SandboxErrorKind::Io,
    };
    let context = if kind == SandboxErrorKind::OutsideSandbox {
        "path or symlink leads outside the sandbox"
    } else {
        kind.phrase()
    };
    SandboxError::new(kind, context)
        .with_path(shown)
        .with_source(e)
}

pub(crate) fn stat_of(m: &Metadata) -> FileStat {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    FileStat {
        kind,
        size: m.len(),
        modified: m.modified().ok().map(|t| t.into_std()),
    }
}

/// Read an opened regular file of (stat) `size` bytes, failing with `TooLarge` past `max_bytes`.
pub(crate) fn read_bounded(
    file: cap_std::fs::File,
    size: u64,
    max_bytes: Option<u64>,
    shown: &str,
) -> Result<Bytes> {
    if let Some(max) = max_bytes
        && size > max
    {
        return Err(SandboxError::too_large(shown, size, max));
    }
    // The file may grow between stat and read: never read past the cap (+1 to detect it).
    let cap = max_bytes.unwrap_or(u64::MAX);
    let mut buf = Vec::with_capacity(usize::try_from(size.min(cap)).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| map_io(e, shown))?;
    if buf.len() as u64 > cap {
        return Err(SandboxError::too_large(shown, buf.len() as u64, cap));
    }
    Ok(Bytes::from(buf))
}

/// `mkdir -p` that, unlike `cap_std::fs::Dir::create_dir_all`, accepts symlinks to directories
/// on the way (following them, confined) and reports a file in the way as "not a directory".
pub(crate) fn make_dirs(dir: &Dir, rel: &Path, shown: &str) -> Result<()> {
    // Common case: it already exists.
    if let Ok(m) = dir.metadata(rel)
        && m.is_dir()
    {
        return Ok(());
    }
    let mut prefix = PathBuf::new();
    for comp in rel.components() {
        prefix.push(comp);
        match dir.create_dir(&prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Exists: fine if it is (or leads, within the sandbox, to) a directory.
                let m = dir.metadata(&prefix).map_err(|e| map_io(e, shown))?;
                if !m.is_dir() {
                    return Err(SandboxError::at_path(
                        SandboxErrorKind::NotADirectory,
                        shown,
                    ));
                }
            }
            Err(e) => return Err(map_io(e, shown)),
        }
    }
    Ok(())
}

impl Workspace {
    /// A workspace at `workdir` plus extra mounts. Mount paths must already be normalised and
    /// non-overlapping (checked by the backend).
    pub fn new(workdir: String, mut mounts: Vec<MountPoint>) -> Self {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.path.len()));
        Self { mounts, workdir }
    }

    /// The mount holding the workspace.
    pub fn workspace_dir(&self) -> Option<&Dir> {
        self.workspace_mount().map(|m| &m.dir)
    }

    /// The mount holding the workspace, with its quota.
    pub fn workspace_mount(&self) -> Option<&MountPoint> {
        self.mounts.iter().find(|m| m.path == self.workdir)
    }

    /// Whether the workspace has a disk quota (its changes then take the quota's lock).
    pub fn has_quota(&self) -> bool {
        self.workspace_mount().is_some_and(|m| m.quota.is_some())
    }

    /// Lexical mapping of a sandbox path to its mount.
    pub fn resolve(&self, path: &str) -> Result<Resolved<'_>> {
        let shown = normalize(&self.workdir, path)?;
        for m in &self.mounts {
            let rest = if shown == m.path {
                Some("")
            } else {
                shown
                    .strip_prefix(m.path.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            if let Some(rest) = rest {
                let rel = if rest.is_empty() {
                    PathBuf::from(".")
                } else {
                    PathBuf::from(rest)
                };
                return Ok(Resolved {
                    mount: m,
                    rel,
                    shown,
                });
            }
        }
        Err(SandboxError::new(
            SandboxErrorKind::OutsideSandbox,
            "path is outside the sandbox",
        )
        .with_path(shown))
    }

    /// The names directly under `shown` when it is a *virtual* directory: `/` or a strict
    /// ancestor of a mount (`/memory` for `/memory/notes`). Such directories exist only in the
    /// sandbox's namespace; they can be stat'ed and listed, never written.
    fn virtual_children(&self, shown: &str) -> Option<Vec<String>> {
        let prefix = if shown == "/" {
            "/".to_string()
        } else {
            format!("{shown}/")
        };
        let mut names: Vec<String> = self
            .mounts
            .iter()
            .filter_map(|m| m.path.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split('/').next())
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return None;
        }
        names.sort();
        names.dedup();
        Some(names)
    }

    /// `resolve`, or, for a virtual directory, its children.
    fn resolve_or_virtual(
        &self,
        path: &str,
    ) -> Result<std::result::Result<Resolved<'_>, Vec<String>>> {
        match self.resolve(path) {
            Ok(r) => Ok(Ok(r)),
            Err(e) if e.kind() == SandboxErrorKind::OutsideSandbox => {
                let shown = e.path().unwrap_or_default();
                match self.virtual_children(shown) {
                    Some(children) => Ok(Err(children)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn virtual_dir_stat() -> FileStat {
        FileStat {
            kind: FileKind::Dir,
            size: 0,
            modified: None,
        }
    }

    pub fn stat(&self, path: &str) -> Result<FileStat> {
        let Ok(r) = self.resolve_or_virtual(path)? else {
            return Ok(Self::virtual_dir_stat());
        };
        r.mount
            .dir
            .metadata(&r.rel)
            .map(|m| stat_of(&m))
            .map_err(|e| r.err(e))
    }

    pub fn lstat(&self, path: &str) -> Result<FileStat> {
        let Ok(r) = self.resolve_or_virtual(path)? else {
            return Ok(Self::virtual_dir_stat());
        };
        r.mount
            .dir
            .symlink_metadata(&r.rel)
            .map(|m| stat_of(&m))
            .map_err(|e| r.err(e))
    }

    pub fn read_link(&self, path: &str) -> Result<String> {
        let r = self.resolve(path)?;
        let target = r
            .mount
            .dir
            .read_link_contents(&r.rel)
            .map_err(|e| r.err(e))?;
        target.into_os_string().into_string().map_err(|_| {
            SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "symlink target is not UTF-8",
            )
            .with_path(r.shown.clone())
        })
    }

    /// Open a regular file for reading, refusing directories and special files (a FIFO would
    /// block the reader forever). Returns the file and its size.
    pub fn open_regular(&self, path: &str) -> Result<(cap_std::fs::File, u64, String)> {
        let r = match self.resolve_or_virtual(path)? {
            Ok(r) => r,
            Err(_) => {
                let shown = normalize(&self.workdir, path)?;
                return Err(SandboxError::at_path(SandboxErrorKind::IsADirectory, shown));
            }
        };
        let meta = r.mount.dir.metadata(&r.rel).map_err(|e| r.err(e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(SandboxError::at_path(
                SandboxErrorKind::IsADirectory,
                r.shown,
            ));
        }
        if !ft.is_file() {
            return Err(SandboxError::new(
                SandboxErrorKind::PermissionDenied,
                "not a regular file",
            )
            .with_path(r.shown));
        }
        let file = r.mount.dir.open(&r.rel).map_err(|e| r.err(e))?;
        Ok((file, meta.len(), r.shown))
    }

    pub fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        let (file, size, shown) = self.open_regular(path)?;
        read_bounded(file, size, max_bytes, &shown)
    }

    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let r = self.resolve(path)?;
        r.writable()?;
        if r.is_root() {
            return Err(SandboxError::at_path(
                SandboxErrorKind::IsADirectory,
                r.shown,
            ));
        }
        let dir = &r.mount.dir;
        let parent = r.rel.parent().filter(|p| !p.as_os_str().is_empty());
        let missing = || parent.map_or(0, |p| missing_dirs(dir, p));
        let mut usage = r.mount.quota.as_ref().map(Quota::lock);
        let new = QUOTA_ENTRY_BYTES.saturating_add(data.len() as u64);
        let (mut old, mut dirs) = (0, 0);
        if let Some(u) = &usage {
            if dir.metadata(&r.rel).is_ok_and(|m| m.is_dir()) {
                return Err(SandboxError::at_path(
                    SandboxErrorKind::IsADirectory,
                    r.shown,
                ));
            }
            old = file_usage(dir, &r.rel);
            dirs = missing();
            u.check(old, new + dirs * QUOTA_ENTRY_BYTES, &r.shown)?;
        }
        let written = (|| {
            if let Some(parent) = parent {
                make_dirs(dir, parent, &r.shown)?;
            }
            // Overwrite in place and then cut to length, instead of `O_TRUNC`: on ext4 a
            // truncate to zero followed by a rewrite triggers a flush at close
            // (`auto_da_alloc`), which made every overwrite cost milliseconds.
            let mut opts = cap_std::fs::OpenOptions::new();
            opts.write(true).create(true);
            let mut file = dir.open_with(&r.rel, &opts).map_err(|e| r.err(e))?;
            file.write_all(data)
                .and_then(|()| file.set_len(data.len() as u64))
                .map_err(|e| r.err(e))
        })();
        if let Some(u) = &mut usage {
            let made = dirs.saturating_sub(missing()) * QUOTA_ENTRY_BYTES;
            let now = if written.is_ok() {
                new
            } else {
                file_usage(dir, &r.rel)
            };
            u.record(old, now + made);
        }
        written
    }

    pub fn create_dir_all(&self, path: &str) -> Result<()> {
        let r = self.resolve(path)?;
        r.writable()?;
        if r.is_root() {
            return Ok(());
        }
        let Some(quota) = &r.mount.quota else {
            return make_dirs(&r.mount.dir, &r.rel, &r.shown);
        };
        let mut usage = quota.lock();
        let missing = missing_dirs(&r.mount.dir, &r.rel);
        usage.check(0, missing * QUOTA_ENTRY_BYTES, &r.shown)?;
        let made = make_dirs(&r.mount.dir, &r.rel, &r.shown);
        let left = missing_dirs(&r.mount.dir, &r.rel);
        usage.record(0, missing.saturating_sub(left) * QUOTA_ENTRY_BYTES);
        made
    }

    /// The entries of a directory sorted by name.
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut out = self.read_dir_unsorted(path)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The entries of a directory in the order the file system lists them (virtual
    /// directories: by name).
    pub fn read_dir_unsorted(&self, path: &str) -> Result<Vec<DirEntry>> {
        let r = match self.resolve_or_virtual(path)? {
            Ok(r) => r,
            Err(children) => {
                return Ok(children
                    .into_iter()
                    .map(|name| DirEntry {
                        name,
                        stat: Self::virtual_dir_stat(),
                    })
                    .collect());
            }
        };
        let iter = r.mount.dir.read_dir(&r.rel).map_err(|e| r.err(e))?;
        let mut out = Vec::new();
        for entry in iter {
            let entry = entry.map_err(|e| r.err(e))?;
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(SandboxError::new(
                    SandboxErrorKind::TooLarge,
                    format!("directory has more than {MAX_DIR_ENTRIES} entries"),
                )
                .with_path(r.shown));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            // An entry removed between listing and stat is simply skipped.
            match entry.metadata() {
                Ok(m) => out.push(DirEntry {
                    name,
                    stat: stat_of(&m),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(r.err(e)),
            }
        }
        Ok(out)
    }

    pub fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let r = self.resolve(path)?;
        r.writable()?;
        if r.is_root() {
            return Err(SandboxError::new(
                SandboxErrorKind::PermissionDenied,
                "cannot remove the root of a mount",
            )
            .with_path(r.shown));
        }
        let meta = r.mount.dir.symlink_metadata(&r.rel).map_err(|e| r.err(e))?;
        let dir = &r.mount.dir;
        let mut usage = r.mount.quota.as_ref().map(Quota::lock);
        let before = match usage {
            Some(_) => measure(dir, &r.rel, &r.shown)?,
            None => 0,
        };
        let res = if meta.is_dir() {
            if recursive {
                dir.remove_dir_all(&r.rel)
            } else {
                dir.remove_dir(&r.rel)
            }
        } else {
            dir.remove_file(&r.rel)
        };
        if let Some(u) = &mut usage {
            // A recursive removal that failed midway removed part of the tree.
            let after = match res {
                Ok(()) => 0,
                Err(_) => measure(dir, &r.rel, &r.shown).unwrap_or(before),
            };
            u.record(before, after);
        }
        res.map_err(|e| r.err(e))
    }

    /// Create a symlink at `path` pointing to `target` (stored as given). Absolute targets are
    /// refused: inside the sandbox they could never be followed.
    pub fn symlink(&self, target: &str, path: &str) -> Result<()> {
        let r = self.resolve(path)?;
        r.writable()?;
        if target.is_empty() || target.contains('\0') || target.len() > MAX_LINK_TARGET_BYTES {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "invalid symlink target",
            )
            .with_path(r.shown));
        }
        if target.starts_with('/') {
            return Err(SandboxError::new(
                SandboxErrorKind::OutsideSandbox,
                "absolute symlink targets are not allowed in the sandbox",
            )
            .with_path(r.shown));
        }
        if r.is_root() {
            return Err(SandboxError::at_path(
                SandboxErrorKind::AlreadyExists,
                r.shown,
            ));
        }
        let mut usage = r.mount.quota.as_ref().map(Quota::lock);
        let new = QUOTA_ENTRY_BYTES.saturating_add(target.len() as u64);
        if let Some(u) = &usage {
            u.check(0, new, &r.shown)?;
        }
        r.mount
            .dir
            .symlink(Path::new(target), &r.rel)
            .map_err(|e| r.err(e))?;
        if let Some(u) = &mut usage {
            u.record(0, new);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_collapses_dots_lexically_and_clamps_at_root() {
        assert_eq!(
            normalize("/workspace", "a/./b/../c").unwrap(),
            "/workspace/a/c"
        );
        assert_eq!(
            normalize("/workspace", "../../etc/passwd").unwrap(),
            "/etc/passwd"
        );
        assert_eq!(normalize("/workspace", "/..//x/").unwrap(), "/x");
        assert_eq!(normalize("/workspace", "/").unwrap(), "/");
        assert_eq!(normalize("/workspace", ".").unwrap(), "/workspace");
    }

    #[test]
    fn normalize_rejects_nul_empty_and_overlong_input() {
        for bad in [
            "",
            "a\0b",
            &"x".repeat(MAX_PATH_BYTES + 1),
            &"y".repeat(MAX_NAME_BYTES + 1),
        ] {
            let e = normalize("/workspace", bad).unwrap_err();
            assert_eq!(e.kind(), SandboxErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn cap_std_escape_errors_map_to_outside_sandbox_without_host_paths() {
        let e = io::Error::new(io::ErrorKind::PermissionDenied, CAP_STD_ESCAPE);
        let mapped = map_io(e, "/workspace/l");
        assert_eq!(mapped.kind(), SandboxErrorKind::OutsideSandbox);
        assert!(mapped.to_string().starts_with("/workspace/l: "));
        let plain = map_io(io::Error::from(io::ErrorKind::PermissionDenied), "/x");
        assert_eq!(plain.kind(), SandboxErrorKind::PermissionDenied);
    }
}
