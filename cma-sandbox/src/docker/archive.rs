//! Tar helpers: the entry checks of workspace imports, and the tiny archives the backend uploads
//! (a workdir entry, the CA bundle).

use std::io::Read;
use std::path::{Component, Path};

use crate::error::{Result, SandboxError, SandboxErrorKind};

fn invalid(msg: impl Into<String>) -> SandboxError {
    SandboxError::new(SandboxErrorKind::InvalidArchive, msg)
}

/// Lexically normalise `rel` (relative, `/`-separated) below a root; `None` if it climbs out.
fn normalise(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = Vec::new();
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// A checked workspace archive, and the symlinks the daemon would refuse to unpack.
#[derive(Debug)]
pub(crate) struct CheckedImport {
    /// The archive rebuilt, ready to upload.
    pub tar: Vec<u8>,
    /// `(name, target)` of relative symlinks whose target climbs out of the workspace: the
    /// daemon refuses those ("invalid symlink"), so they are made afterwards by the sandbox
    /// user (see [`LINK_SCRIPT`]), never by the root-run unpacking.
    pub later_links: Vec<(String, String)>,
}

/// Makes symlinks given as `target name` argument pairs, as the sandbox user.
pub(crate) const LINK_SCRIPT: &str =
    "while [ $# -gt 1 ]; do ln -sfn -- \"$1\" \"$2\" || exit 1; shift 2; done";

/// Check every entry of a workspace archive before it is unpacked into the workdir: regular files,
/// directories and symlinks only; names relative and inside; nothing beneath a symlink of the
/// archive. Symlink targets are link text, kept whatever they say (absolute, outside the
/// workspace, dangling), as snapshots keep them. Returns the archive rebuilt with every
/// entry owned by `owner` (uid, gid), ready to upload.
pub(crate) fn check_import(tar_bytes: &[u8], owner: (u64, u64)) -> Result<CheckedImport> {
    let mut out = tar::Builder::new(Vec::new());
    let mut later: Vec<(String, String)> = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive
        .entries()
        .map_err(|e| invalid("not a tar archive").with_source(e))?;
    let mut count = 0usize;
    let mut links: std::collections::HashSet<Vec<String>> = std::collections::HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid("malformed tar entry").with_source(e))?;
        count += 1;
        let path = entry
            .path()
            .map_err(|e| invalid("malformed entry name").with_source(e))?
            .into_owned();
        let shown = path.to_string_lossy().into_owned();
        if path.is_absolute() {
            return Err(SandboxError::new(
                SandboxErrorKind::OutsideSandbox,
                "archive entry has an absolute name",
            )
            .with_path(shown));
        }
        let Some(parts) = normalise(&path) else {
            return Err(SandboxError::new(
                SandboxErrorKind::OutsideSandbox,
                "archive entry leaves the workspace",
            )
            .with_path(shown));
        };
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(SandboxError::new(
                SandboxErrorKind::OutsideSandbox,
                "archive entry name contains '..'",
            )
            .with_path(shown));
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        // The daemon unpacks as root: an entry beneath a symlink of the archive could be
        // written wherever that link points.
        if (1..parts.len()).any(|n| links.contains(&parts[..n])) {
            return Err(SandboxError::new(
                SandboxErrorKind::OutsideSandbox,
                "archive entry beneath a symlink",
            )
            .with_path(shown));
        }
        if kind == T::Symlink {
            links.insert(parts.clone());
        } else {
            links.remove(&parts);
        }
        let joined = parts.join("/");
        later.retain(|(n, _)| *n != joined);
        match kind {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink => {
                // Link text, whatever it says (a virtualenv's interpreter link is absolute):
                // writing a symlink never follows it, and nothing of this archive is written
                // through one (checked below), so its target needs no check of its own.
                let target = entry
                    .link_name()
                    .map_err(|e| invalid("malformed link target").with_source(e))?
                    .ok_or_else(|| invalid("symlink without a target").with_path(shown.clone()))?;
                if target.as_os_str().is_empty() {
                    return Err(invalid("empty symlink target").with_path(shown));
                }
            }
            T::Link => {
                return Err(invalid("hard links are not accepted").with_path(shown));
            }
            _ => {
                return Err(invalid("special files are not accepted").with_path(shown));
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        // The owner always keeps access (archives from elsewhere may carry 0644 directories).
        let owner_bits = if kind == T::Directory { 0o700 } else { 0o600 };
        h.set_mode((entry.header().mode().unwrap_or(0o644) & 0o7777) | owner_bits);
        h.set_mtime(entry.header().mtime().unwrap_or(0));
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        let name = if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        };
        let io = |e: std::io::Error| invalid("cannot rebuild the archive").with_source(e);
        if kind == T::Symlink {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let mut base = parts.clone();
            base.pop();
            let climbs_out = !target.is_absolute()
                && normalise(&Path::new(&base.join("/")).join(&target)).is_none();
            if climbs_out {
                let Some(t) = target.to_str() else {
                    return Err(
                        invalid("a symlink target leaving the workspace is not UTF-8")
                            .with_path(shown),
                    );
                };
                later.push((name, t.to_owned()));
                continue;
            }
            h.set_size(0);
            out.append_link(&mut h, &name, &target).map_err(io)?;
        } else if kind == T::Directory {
            h.set_size(0);
            out.append_data(&mut h, format!("{name}/"), std::io::empty())
                .map_err(io)?;
        } else {
            h.set_size(entry.size());
            let size = entry.size();
            out.append_data(&mut h, &name, (&mut entry).take(size))
                .map_err(io)?;
        }
    }
    if count == 0 && !tar_bytes.iter().all(|&b| b == 0) {
        return Err(invalid("not a tar archive"));
    }
    let tar = out
        .into_inner()
        .map_err(|e| invalid("cannot rebuild the archive").with_source(e))?;
    Ok(CheckedImport {
        tar,
        later_links: later,
    })
}

/// A tar holding one directory entry `rel/` owned by root.
pub(crate) fn single_dir_tar(rel: &str, mode: u32) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    b.append_data(&mut h, format!("{rel}/"), std::io::empty())
        .map_err(|e| SandboxError::new(SandboxErrorKind::Io, "tar").with_source(e))?;
    b.into_inner()
        .map_err(|e| SandboxError::new(SandboxErrorKind::Io, "tar").with_source(e))
}

/// A tar holding one regular file (parent directories included, mode 0755).
#[cfg(test)]
pub(crate) fn single_file_tar(rel: &str, data: &[u8], mode: u32) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| SandboxError::new(SandboxErrorKind::Io, "tar").with_source(e);
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = Vec::new();
    let mut acc = String::new();
    for part in rel
        .split('/')
        .collect::<Vec<_>>()
        .split_last()
        .map(|x| x.1)
        .unwrap_or(&[])
    {
        acc.push_str(part);
        acc.push('/');
        dirs.push(acc.clone());
    }
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).map_err(io)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, rel, data).map_err(io)?;
    b.into_inner().map_err(io)
}

/// The content of the first regular file in a tar (what the archive endpoint returns for one
/// file).
pub(crate) fn first_file(tar_bytes: &[u8]) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).ok()?;
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_archives_pass_the_import_check() {
        let t = single_file_tar("etc/cma/x.pem", b"pem", 0o644).unwrap();
        let rebuilt = check_import(&t, (1000, 1000)).unwrap().tar;
        assert_eq!(first_file(&rebuilt).unwrap(), b"pem");
        check_import(&single_dir_tar("workspace", 0o755).unwrap(), (0, 0)).unwrap();
    }

    fn with_links(links: &[(&str, &str)], file: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        if let Some(name) = file {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, name, &b"x"[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn symlink_targets_are_link_text_but_nothing_is_written_through_one() {
        let kept = [
            ("venv/bin/python", "/usr/bin/python3"),
            ("up", "../../etc"),
            ("dangling", "no/such/file"),
            ("inside", "venv/bin"),
        ];
        let checked = check_import(&with_links(&kept, None), (1, 1)).unwrap();
        // The daemon refuses relative links that climb out: made later, by the sandbox user.
        assert_eq!(
            checked.later_links,
            vec![("up".to_owned(), "../../etc".to_owned())]
        );
        let mut archive = tar::Archive::new(&checked.tar[..]);
        let got: Vec<(String, String)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let target = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (name, target)
            })
            .collect();
        let want: Vec<(String, String)> = kept
            .iter()
            .filter(|(n, _)| *n != "up")
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want);
        for (link, file) in [("up", "up/passwd"), ("a/b", "a/b/c/d")] {
            let e = check_import(&with_links(&[(link, "/etc")], Some(file)), (1, 1)).unwrap_err();
            assert_eq!(e.kind(), SandboxErrorKind::OutsideSandbox, "{file}: {e}");
        }
    }

    #[test]
    fn garbage_is_invalid() {
        let e = check_import(&b"definitely not a tar".repeat(40), (0, 0)).unwrap_err();
        assert_eq!(e.kind(), SandboxErrorKind::InvalidArchive);
    }
}
