//! The isolate backend's disk quota ([`SandboxSpec::disk_bytes`](crate::SandboxSpec::disk_bytes)):
//! what counts, how usage is measured when a sandbox is opened, and how a change to the
//! workspace is checked before it touches anything.
//!
//! # What counts
//! Everything under the workspace: each entry (regular file, directory, symlink, other) costs
//! [`QUOTA_ENTRY_BYTES`], plus its content for a regular file (its length) and its target for a
//! symlink (the target's length). The per-entry cost stands for the inode and directory record
//! every entry takes on disk, so a quota also bounds how many empty files and directories a
//! sandbox can make. Extra mounts (memory stores, host directories) are the host's: they do not
//! count and are never limited by the quota.
//!
//! Every path that changes the workspace goes through it: [`Sandbox::write_file`],
//! `create_dir_all`, `remove`, the `fs.*` functions of `execute` and `import_workspace` (so a
//! restored snapshot counts too). A sandbox opened again (`resume`) measures what its workspace
//! holds before its first change.
//!
//! # Checked first
//! A change computes the usage it adds and is refused with
//! [`QuotaExceeded`](crate::SandboxErrorKind::QuotaExceeded) *before* anything is written when
//! the total would pass the limit, so what was there stays intact (an overwrite that does not
//! fit leaves the old file and its contents as they were). Changes that free space always run,
//! even when the workspace is already over its quota. Changes to one workspace are serialised
//! by the quota's lock, so concurrent writers cannot both pass the check; a change that fails
//! midway (a host I/O error) measures again what it touched.
//!
//! [`Sandbox::write_file`]: crate::Sandbox::write_file

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cap_std::fs::{Dir, Metadata};

use super::workspace::map_io;
use crate::error::{Result, SandboxError, SandboxErrorKind};

/// What each file, directory or symlink in a workspace costs against its quota
/// ([`SandboxSpec::disk_bytes`](crate::SandboxSpec::disk_bytes)) on top of its content: the
/// length of a regular file, the target's length for a symlink. It stands for the inode and
/// directory record every entry takes on disk, so a quota also bounds how many empty files and
/// directories a sandbox can make. Extra mounts do not count.
pub const QUOTA_ENTRY_BYTES: u64 = 512;

/// The quota of one workspace: its limit and the usage recorded so far.
#[derive(Debug)]
pub(crate) struct Quota {
    limit: u64,
    used: Mutex<u64>,
}

/// The quota held for one change (see [`Quota::lock`]).
pub(crate) struct Usage<'a> {
    limit: u64,
    used: MutexGuard<'a, u64>,
}

impl Quota {
    /// A quota of `limit` bytes with `used` bytes already taken.
    pub fn new(limit: u64, used: u64) -> Self {
        Self {
            limit,
            used: Mutex::new(used),
        }
    }

    /// Hold the quota for one change: no other change of this workspace runs meanwhile.
    pub fn lock(&self) -> Usage<'_> {
        Usage {
            limit: self.limit,
            used: self.used.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl Usage<'_> {
    /// Refuse a change that replaces `old` bytes of usage by `new` when the total would pass the
    /// limit. Nothing is recorded.
    pub fn check(&self, old: u64, new: u64, shown: &str) -> Result<()> {
        if new <= old {
            return Ok(());
        }
        let after = self.used.saturating_sub(old).saturating_add(new);
        if after <= self.limit {
            return Ok(());
        }
        let free = self.limit.saturating_sub(*self.used);
        Err(SandboxError::new(
            SandboxErrorKind::QuotaExceeded,
            format!(
                "disk quota exceeded: the write needs {} more bytes, {free} of the {}-byte quota are free",
                new - old,
                self.limit
            ),
        )
        .with_path(shown))
    }

    /// Record that `old` bytes of usage became `new`.
    pub fn record(&mut self, old: u64, new: u64) {
        *self.used = self.used.saturating_sub(old).saturating_add(new);
    }
}

/// What one entry costs, from its `lstat` metadata.
pub(crate) fn entry_usage(m: &Metadata) -> u64 {
    let ft = m.file_type();
    let content = if ft.is_file() || ft.is_symlink() {
        m.len()
    } else {
        0
    };
    QUOTA_ENTRY_BYTES.saturating_add(content)
}

/// What the entry at `rel` costs, following a final symlink to a regular file (what a write
/// through it changes): the file's content and its entry; `0` when nothing is there.
pub(crate) fn file_usage(dir: &Dir, rel: &Path) -> u64 {
    match dir.metadata(rel) {
        Ok(m) if m.is_file() => QUOTA_ENTRY_BYTES.saturating_add(m.len()),
        _ => 0,
    }
}

/// What the entry at `rel` costs without following a final symlink; for a directory, its whole
/// tree. `0` when nothing is there. `rel` empty or `.`: the whole mount, without its root.
pub(crate) fn measure(dir: &Dir, rel: &Path, shown: &str) -> Result<u64> {
    let root = rel.as_os_str().is_empty() || rel.as_os_str() == ".";
    let mut total = 0u64;
    if !root {
        let m = match dir.symlink_metadata(rel) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(map_io(e, shown)),
        };
        total = entry_usage(&m);
        if !m.is_dir() {
            return Ok(total);
        }
    }
    // Iterative, so a deep tree cannot exhaust the stack.
    let mut stack: Vec<PathBuf> = vec![if root {
        PathBuf::new()
    } else {
        rel.to_path_buf()
    }];
    while let Some(d) = stack.pop() {
        let listing = if d.as_os_str().is_empty() {
            dir.entries()
        } else {
            dir.read_dir(&d)
        };
        let listing = match listing {
            Ok(l) => l,
            // Removed meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(map_io(e, shown)),
        };
        for entry in listing {
            let entry = entry.map_err(|e| map_io(e, shown))?;
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(map_io(e, shown)),
            };
            total = total.saturating_add(entry_usage(&m));
            if m.is_dir() {
                stack.push(d.join(entry.file_name()));
            }
        }
    }
    Ok(total)
}

/// How many directories creating `rel` and its missing parents would make (following symlinks
/// to directories on the way, as [`make_dirs`](super::workspace::make_dirs) does).
pub(crate) fn missing_dirs(dir: &Dir, rel: &Path) -> u64 {
    if rel.as_os_str().is_empty() || dir.metadata(rel).is_ok() {
        return 0;
    }
    let comps: Vec<_> = rel.components().collect();
    let mut prefix = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        if dir.metadata(&prefix).is_err() {
            return (comps.len() - i) as u64;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_refused_only_when_it_grows_past_the_limit() {
        let q = Quota::new(1000, 900);
        let mut u = q.lock();
        assert!(u.check(0, 100, "/workspace/a").is_ok());
        let e = u.check(0, 101, "/workspace/a").unwrap_err();
        assert_eq!(e.kind(), SandboxErrorKind::QuotaExceeded);
        assert_eq!(e.path(), Some("/workspace/a"));
        // Replacing 50 bytes by 150 adds 100: fits.
        assert!(u.check(50, 150, "/workspace/a").is_ok());
        u.record(50, 150);
        assert_eq!(*u.used, 1000);
        // Shrinking always runs, also over the limit.
        u.record(0, 500);
        assert!(u.check(400, 10, "/workspace/a").is_ok());
        assert!(u.check(0, 1, "/workspace/a").is_err());
    }
}
