//! Workspace archives: export the workspace directory as a tar stream and import one back,
//! refusing every entry that could reach outside the workspace or smuggle in special files.
//!
//! Both directions run on a blocking thread. Export never follows symlinks (they are archived as
//! links). Import writes only through the workspace's `cap_std::fs::Dir`, so even an entry that
//! slipped past the checks (a chain of symlinks) cannot land outside it. Symlink targets are
//! link text both ways (an absolute one is restored as it was; cap-std never follows it out),
//! and nothing of an imported archive is written through a symlink it made.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use bytes::{Bytes, BytesMut};
use cap_std::fs::{Dir, OpenOptions, Permissions, PermissionsExt};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::quota::{QUOTA_ENTRY_BYTES, Quota, Usage, entry_usage, missing_dirs};
use super::workspace::{make_dirs, map_io};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::ByteStream;

/// Size of the chunks an export stream yields.
pub(crate) const EXPORT_CHUNK_BYTES: usize = 64 * 1024;
/// Deepest directory nesting exported; deeper trees fail with `TooLarge` instead of exhausting
/// the stack.
pub(crate) const MAX_EXPORT_DEPTH: usize = 1024;

/// The workspace root as shown in errors.
const ROOT: &str = "/workspace";

fn shown(rel: &Path) -> String {
    format!("{ROOT}/{}", rel.display())
}

/// An `io::Write` that cuts the tar into chunks and sends them down a bounded channel; the
/// consumer's pace throttles the export, so memory stays bounded.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: BytesMut,
}

impl ChunkSender {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "export stream dropped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK_BYTES {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Write the whole workspace as a tar into `tx`. Errors are sent down the channel too.
pub(crate) fn export(dir: &Dir, tx: mpsc::Sender<Result<Bytes>>) {
    let err_tx = tx.clone();
    let mut builder = tar::Builder::new(ChunkSender {
        tx,
        buf: BytesMut::with_capacity(EXPORT_CHUNK_BYTES),
    });
    builder.follow_symlinks(false);
    let result = export_dir(dir, &mut builder, Path::new(""), 0).and_then(|()| {
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| map_io(e, ROOT))
    });
    if let Err(e) = result {
        // The receiver may be gone; then nobody is waiting for the error either.
        let _ = err_tx.blocking_send(Err(e));
    }
}

fn export_dir(
    root: &Dir,
    builder: &mut tar::Builder<ChunkSender>,
    rel: &Path,
    depth: usize,
) -> Result<()> {
    if depth > MAX_EXPORT_DEPTH {
        return Err(SandboxError::new(
            SandboxErrorKind::TooLarge,
            format!("directory nesting deeper than {MAX_EXPORT_DEPTH} levels"),
        )
        .with_path(shown(rel)));
    }
    let listing = if rel.as_os_str().is_empty() {
        root.entries()
    } else {
        root.read_dir(rel)
    };
    let mut names = Vec::new();
    for entry in listing.map_err(|e| map_io(e, &shown(rel)))? {
        names.push(entry.map_err(|e| map_io(e, &shown(rel)))?.file_name());
    }
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let meta = match root.symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(map_io(e, &shown(&path))),
        };
        let io_err = |e: io::Error| map_io(e, &shown(&path));
        let mut header = tar::Header::new_gnu();
        header.set_mtime(
            meta.modified()
                .ok()
                .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        );
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = root.read_link_contents(&path).map_err(io_err)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder
                .append_link(&mut header, &path, &target)
                .map_err(io_err)?;
        } else if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &path, io::empty())
                .map_err(io_err)?;
            export_dir(root, builder, &path, depth + 1)?;
        } else if ft.is_file() {
            let size = meta.len();
            let exec = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if exec { 0o755 } else { 0o644 });
            header.set_size(size);
            let file = root.open(&path).map_err(io_err)?;
            // Exactly `size` bytes even if the file changes while we read it: a short file is
            // padded with zeros, a grown one cut, so the archive stays well-formed.
            let data = file.take(size).chain(io::repeat(0)).take(size);
            builder
                .append_data(&mut header, &path, data)
                .map_err(io_err)?;
        }
        // Sockets, FIFOs and devices are not part of a workspace snapshot.
    }
    Ok(())
}

/// Turns a [`ByteStream`] into a blocking `Read` (used on a blocking thread only), keeping the
/// stream's own error so it is reported with its kind.
pub(crate) struct StreamReader {
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    current: Bytes,
    pub failure: Option<SandboxError>,
}

impl StreamReader {
    pub fn new(stream: ByteStream, handle: tokio::runtime::Handle) -> Self {
        Self {
            stream,
            handle,
            current: Bytes::new(),
            failure: None,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("archive stream failed"));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn invalid(entry: &str, why: &str) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::InvalidArchive,
        format!("archive entry '{entry}': {why}"),
    )
}

fn escapes(entry: &str, why: &str) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::OutsideSandbox,
        format!("archive entry '{entry}': {why}"),
    )
}

/// An entry name for messages: archive contents, cut to a readable length.
fn label(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The entry's path as a clean relative path, or why it is refused.
fn entry_rel(path: &Path) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => rel.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(escapes(&label(path), "'..' is not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(escapes(&label(path), "absolute paths are not allowed"));
            }
        }
    }
    Ok(rel)
}

/// A symlink's target is link text, restored as the export wrote it (absolute, outside the
/// workspace or dangling: a virtualenv made on the host has absolute ones, and snapshots keep
/// them). Writing one never follows it, and every later use goes through cap-std, which
/// refuses to follow it out of the workspace; only an empty target, which no file system
/// holds, is refused.
fn check_link_target(entry: &str, target: &Path) -> Result<()> {
    if target.as_os_str().is_empty() {
        return Err(invalid(entry, "empty symlink target"));
    }
    Ok(())
}

/// Remove whatever non-directory sits at `rel`, so a new entry replaces it instead of being
/// written through it (a symlink).
fn clear_non_dir(dir: &Dir, rel: &Path, entry: &str) -> Result<()> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_dir() => Err(invalid(entry, "a directory already exists at this path")),
        Ok(_) => dir.remove_file(rel).map_err(|e| map_io(e, &shown(rel))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(map_io(e, &shown(rel))),
    }
}

fn make_parents(dir: &Dir, rel: &Path) -> Result<()> {
    match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => make_dirs(dir, parent, &shown(parent)),
        None => Ok(()),
    }
}

/// Unpack a tar from `reader` into `dir` (the workspace), within its `quota`: an entry that
/// does not fit fails the import before it is written (entries before it stay imported).
pub(crate) fn import(dir: &Dir, quota: Option<&Quota>, reader: &mut StreamReader) -> Result<()> {
    let mut usage = quota.map(Quota::lock);
    let result = import_inner(dir, usage.as_mut(), reader);
    match (result, reader.failure.take()) {
        (Err(_), Some(stream_err)) => Err(stream_err),
        (r, _) => r,
    }
}

fn tar_err(e: io::Error) -> SandboxError {
    SandboxError::new(SandboxErrorKind::InvalidArchive, "malformed tar archive").with_source(e)
}

/// What the non-directory at `rel` costs (it is replaced by the new entry); `0` when nothing or
/// a directory is there.
fn replaced_usage(dir: &Dir, rel: &Path) -> u64 {
    match dir.symlink_metadata(rel) {
        Ok(m) if !m.is_dir() => entry_usage(&m),
        _ => 0,
    }
}

/// The quota bookkeeping of one entry: checked before it is written, recorded after (from what
/// is there then, should the write have failed midway).
struct Charge {
    dirs: u64,
    old: u64,
}

impl Charge {
    fn check(usage: &Option<&mut Usage<'_>>, dir: &Dir, rel: &Path, new: u64) -> Result<Self> {
        let Some(u) = usage else {
            return Ok(Self { dirs: 0, old: 0 });
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let charge = Self {
            dirs: missing_dirs(dir, parent),
            old: replaced_usage(dir, rel),
        };
        u.check(
            charge.old,
            new + charge.dirs * QUOTA_ENTRY_BYTES,
            &shown(rel),
        )?;
        Ok(charge)
    }

    fn record(self, usage: &mut Option<&mut Usage<'_>>, dir: &Dir, rel: &Path) {
        if let Some(u) = usage {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let made = self.dirs.saturating_sub(missing_dirs(dir, parent));
            u.record(
                self.old,
                replaced_usage(dir, rel) + made * QUOTA_ENTRY_BYTES,
            );
        }
    }
}

fn import_inner(
    dir: &Dir,
    mut usage: Option<&mut Usage<'_>>,
    reader: &mut StreamReader,
) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    // Symlinks this archive made: nothing of it is written through one (cap-std would stop an
    // escape anyway; this refuses the attempt up front, with the entry's name).
    let mut links: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw: Cow<'_, Path> = entry.path().map_err(tar_err)?;
        let name = label(&raw);
        let rel = entry_rel(&raw)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        if rel.ancestors().skip(1).any(|a| links.contains(a)) {
            return Err(escapes(&name, "entry beneath a symlink"));
        }
        if kind == tar::EntryType::Symlink {
            links.insert(rel.clone());
        } else {
            links.remove(&rel);
        }
        let mode = entry.header().mode().map_err(tar_err)?;
        if mode & 0o7000 != 0 {
            return Err(invalid(
                &name,
                "setuid, setgid and sticky bits are not allowed",
            ));
        }
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(invalid(&name, "entry has no name"));
        }
        match kind {
            tar::EntryType::Directory => {
                let missing = match &usage {
                    Some(u) => {
                        let n = missing_dirs(dir, &rel);
                        u.check(0, n * QUOTA_ENTRY_BYTES, &shown(&rel))?;
                        n
                    }
                    None => 0,
                };
                let made = make_dirs(dir, &rel, &shown(&rel));
                if let Some(u) = &mut usage {
                    let left = missing_dirs(dir, &rel);
                    u.record(0, missing.saturating_sub(left) * QUOTA_ENTRY_BYTES);
                }
                made?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The data size, PAX overrides included.
                let size = entry.size();
                let charge =
                    Charge::check(&usage, dir, &rel, QUOTA_ENTRY_BYTES.saturating_add(size))?;
                let written = (|| {
                    make_parents(dir, &rel)?;
                    clear_non_dir(dir, &rel, &name)?;
                    let mut opts = OpenOptions::new();
                    opts.write(true).create_new(true);
                    let mut file = dir
                        .open_with(&rel, &opts)
                        .map_err(|e| map_io(e, &shown(&rel)))?;
                    // Never more than the header announced (what the quota was checked for).
                    io::copy(&mut (&mut entry).take(size), &mut file).map_err(tar_err)?;
                    let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                    file.set_permissions(Permissions::from_mode(perm))
                        .map_err(|e| map_io(e, &shown(&rel)))
                })();
                charge.record(&mut usage, dir, &rel);
                written?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| invalid(&name, "symlink without a target"))?
                    .into_owned();
                check_link_target(&name, &target)?;
                let new = QUOTA_ENTRY_BYTES.saturating_add(target.as_os_str().len() as u64);
                let charge = Charge::check(&usage, dir, &rel, new)?;
                let linked = make_parents(dir, &rel)
                    .and_then(|()| clear_non_dir(dir, &rel, &name))
                    .and_then(|()| {
                        dir.symlink_contents(&target, &rel)
                            .map_err(|e| map_io(e, &shown(&rel)))
                    });
                charge.record(&mut usage, dir, &rel);
                linked?;
            }
            tar::EntryType::Link => return Err(invalid(&name, "hard links are not allowed")),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(invalid(&name, "device nodes and FIFOs are not allowed"));
            }
            _ => return Err(invalid(&name, "unsupported entry type")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_with_parent_or_root_components_are_refused() {
        assert_eq!(entry_rel(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/.."] {
            let e = entry_rel(Path::new(bad)).unwrap_err();
            assert_eq!(e.kind(), SandboxErrorKind::OutsideSandbox, "{bad}");
        }
    }

    #[test]
    fn link_targets_are_link_text() {
        let ok = |t: &str| check_link_target("e", Path::new(t));
        assert!(ok("../c").is_ok());
        assert!(ok("x/../../../c").is_ok());
        assert!(ok("/usr/bin/python3").is_ok());
        assert!(ok("").is_err());
    }
}
