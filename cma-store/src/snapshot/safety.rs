//! The restore-side archive check: every entry of a snapshot's archive is inspected before the
//! sandbox sees a byte, and anything that could land outside the workspace or is not a plain
//! file, directory or symlink is refused with [`Error::UnsafeEntry`].
//!
//! What a workspace may hold, the same at save and restore:
//! - regular files, directories (empty ones too) and symlinks, with their names relative and
//!   free of `..`;
//! - a symlink's target is link text, kept exactly, whatever it says (relative, absolute,
//!   pointing outside the workspace, dangling: every Python virtualenv has absolute ones).
//!   Nothing is ever written *through* a symlink: an entry beneath a symlink of the archive is
//!   refused, and a restore writes into a fresh tree; following a link is the sandbox's
//!   business at use, confined there;
//! - hard links are saved as the separate files they look like (the link itself is not kept);
//! - sockets, FIFOs and device nodes are skipped by the save (counted in
//!   [`SnapshotManifest::skipped_entries`](super::SnapshotManifest::skipped_entries)); an
//!   export stream holding one, or anything else this check refuses (a hard link, `..`, an
//!   entry beneath a symlink, setuid/setgid/sticky bits, a malformed header), fails the save
//!   with [`Error::UnsafeEntry`] (see the `tar_scan` module), so nothing a restore refuses is
//!   ever stored. Saves from a directory walk write only what this check accepts, and keep
//!   only the execute bits of a file's mode.
//!
//! Sandboxes check imports themselves; this check does not rely on them, so a backend with a
//! weaker import still never receives an unsafe archive from the store.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::error::{Error, Result};

/// What a checked archive holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchiveSummary {
    pub files: u64,
    pub bytes: u64,
}

fn label(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn malformed(e: std::io::Error) -> Error {
    Error::corrupt("archive", format!("malformed tar: {e}"))
}

fn clean_rel(path: &Path) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => rel.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::unsafe_entry(label(path), "'..' is not allowed"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::unsafe_entry(
                    label(path),
                    "absolute paths are not allowed",
                ));
            }
        }
    }
    Ok(rel)
}

/// A symlink's target is link text, never followed by a restore: any target a file system can
/// hold is kept (see the module docs); only an empty one, which none can, is refused.
pub(super) fn check_link(entry: &str, target: &Path) -> Result<()> {
    if target.as_os_str().is_empty() {
        return Err(Error::unsafe_entry(entry, "empty symlink target"));
    }
    Ok(())
}

/// Read a whole archive and refuse any unsafe entry.
pub(crate) fn check_archive(reader: impl Read) -> Result<ArchiveSummary> {
    let mut archive = tar::Archive::new(reader);
    let mut summary = ArchiveSummary::default();
    // Entries already seen as symlinks: nothing may be written through one (a chain of links
    // could otherwise walk out of the workspace).
    let mut links: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(malformed)? {
        let entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let raw = entry.path().map_err(malformed)?.into_owned();
        let name = label(&raw);
        let rel = clean_rel(&raw)?;
        let mode = entry.header().mode().map_err(malformed)?;
        if mode & 0o7000 != 0 {
            return Err(Error::unsafe_entry(
                name,
                "setuid, setgid and sticky bits are not allowed",
            ));
        }
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(Error::unsafe_entry(name, "entry has no name"));
        }
        if rel.ancestors().skip(1).any(|a| links.contains(a)) {
            return Err(Error::unsafe_entry(name, "entry beneath a symlink"));
        }
        match kind {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                summary.files += 1;
                summary.bytes += entry.header().size().map_err(malformed)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(malformed)?
                    .ok_or_else(|| Error::unsafe_entry(name.clone(), "symlink without a target"))?;
                check_link(&name, &target)?;
                links.insert(rel);
            }
            tar::EntryType::Link => {
                return Err(Error::unsafe_entry(name, "hard links are not allowed"));
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(Error::unsafe_entry(name, "device nodes are not allowed"));
            }
            tar::EntryType::Fifo => {
                return Err(Error::unsafe_entry(name, "FIFOs are not allowed"));
            }
            other => {
                return Err(Error::unsafe_entry(
                    name,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_are_link_text() {
        let ok = |t: &str| check_link("e", Path::new(t));
        assert!(ok("../c").is_ok());
        assert!(ok("x/../../../c").is_ok());
        assert!(ok("/usr/bin/python3").is_ok());
        assert!(ok("").is_err());
    }
}
