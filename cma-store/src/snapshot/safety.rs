//! The restore-side archive check: every entry of a snapshot's archive is inspected before the
//! sandbox sees a byte, and anything that could land outside the workspace or is not a plain
//! file, directory or inward symlink is refused with [`Error::UnsafeEntry`].
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

/// A symlink must resolve inside the workspace, lexically from its own directory.
pub(super) fn check_link(entry: &str, rel: &Path, target: &Path) -> Result<()> {
    if target.as_os_str().is_empty() {
        return Err(Error::unsafe_entry(entry, "empty symlink target"));
    }
    let mut depth = rel.parent().map_or(0, |p| p.components().count());
    for comp in target.components() {
        match comp {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(Error::unsafe_entry(
                        entry,
                        "symlink pointing outside the workspace",
                    ));
                }
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::unsafe_entry(entry, "symlink to an absolute path"));
            }
        }
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
                check_link(&name, &rel, &target)?;
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
    fn link_targets_are_resolved_from_the_links_directory() {
        let ok = |rel: &str, t: &str| check_link("e", Path::new(rel), Path::new(t));
        assert!(ok("a/b/link", "../c").is_ok());
        assert!(ok("link", "../c").is_err());
        assert!(ok("a/link", "x/../../../c").is_err());
        assert!(ok("a/link", "/etc/passwd").is_err());
        assert!(ok("a/link", "").is_err());
    }
}
