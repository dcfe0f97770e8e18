//! Restoring straight into a workspace directory on this host ([`Sandbox::local_workspace`]),
//! many files at once, for snapshots that have a file table (saved from a directory).
//!
//! The file table says how the archive was cut into units (see `walk`), each a run of whole
//! tar entries: units are independent, so they are restored in parallel, [`GROUP_BYTES`] of
//! small ones per task and big files alone, each task fetching its chunks (ranged reads of
//! packs) and writing its entries through `cap_std` beneath the target directory, so nothing
//! can land outside it whatever the archive says.
//!
//! What the file table lists is checked before anything is written: clean relative paths,
//! nothing beneath a symlink, parents that are directories, no path twice, counts matching the
//! manifest. Each tar entry must then be exactly the entry the table lists (path, kind, size),
//! with no setuid/setgid/sticky bit and a non-empty symlink target (link text, written as it is:
//! see the `safety` module); anything else stops
//! the restore with [`Error::Corrupt`] or [`Error::UnsafeEntry`].
//!
//! [`restore_staged`] (a whole restore) writes into a fresh hidden directory inside the
//! workspace and moves its entries into place only once every unit is written: a restore that
//! fails leaves the workspace as it was. The lazy restore (see `wake`) writes in place instead,
//! each file under a temporary name renamed into place when complete.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};

use super::error::{Error, Result};
use super::fetch::Fetcher;
use super::manifest::{ChunkRef, SnapshotManifest};
use super::marker::RESTORE_MARKER;
use super::restore::SEGMENT_BYTES;
use super::tables::{EntryKey, Kind, Unit};
use super::{ZEROS, is_zeros, joined};
use crate::SnapshotId;

/// Archive bytes of small units restored by one task.
pub(super) const GROUP_BYTES: u64 = 4 << 20;
/// Tasks running at once.
pub(super) const TASKS: usize = 4;

/// One unit of the archive, placed.
#[derive(Debug, Clone)]
pub(super) struct PlannedUnit {
    /// Its chunks in the manifest's chunk list.
    pub chunks: Range<usize>,
    /// Its entries in [`Plan::entries`].
    pub entries: Range<usize>,
    /// Its size in the archive.
    pub bytes: u64,
}

/// What a restore will write, checked.
#[derive(Debug)]
pub(super) struct Plan {
    /// Every entry, in archive order.
    pub entries: Vec<EntryKey>,
    pub units: Vec<PlannedUnit>,
}

fn rel_of(bytes: &[u8]) -> &FsPath {
    FsPath::new(OsStr::from_bytes(bytes))
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A clean relative path: only normal components.
fn check_path(p: &[u8]) -> Result<()> {
    let path = rel_of(p);
    if p.is_empty() {
        return Err(Error::unsafe_entry("", "entry has no name"));
    }
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => {
                return Err(Error::unsafe_entry(shown(p), "'..' is not allowed"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::unsafe_entry(
                    shown(p),
                    "absolute paths are not allowed",
                ));
            }
            Component::CurDir => {
                return Err(Error::corrupt(
                    "file table",
                    format!("'{}' is not clean", shown(p)),
                ));
            }
        }
    }
    Ok(())
}

/// Check a list of entries as a restore needs them (also what a save from a listing checks, so
/// it never stores what this refuses): clean relative paths, none twice, nothing beneath a
/// symlink or a file. Returns the regular files' count and bytes.
pub(super) fn check_entries(
    entries: &[EntryKey],
    table: &dyn Fn() -> String,
) -> Result<(u64, u64)> {
    let mut kinds: HashMap<&[u8], Kind> = HashMap::with_capacity(entries.len());
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in entries {
        check_path(&e.path)?;
        if kinds.insert(&e.path, e.kind).is_some() {
            return Err(Error::corrupt(
                table(),
                format!("'{}' is listed twice", shown(&e.path)),
            ));
        }
        if e.kind == Kind::File {
            files += 1;
            bytes += e.size;
        }
    }
    for e in entries {
        let mut parent = rel_of(&e.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            match kinds.get(p.as_os_str().as_bytes()) {
                Some(Kind::Symlink) => {
                    return Err(Error::unsafe_entry(
                        shown(&e.path),
                        "entry beneath a symlink",
                    ));
                }
                Some(Kind::File) => {
                    return Err(Error::corrupt(
                        table(),
                        format!("'{}' is beneath a file", shown(&e.path)),
                    ));
                }
                _ => {}
            }
            parent = p.parent();
        }
    }
    Ok((files, bytes))
}

/// Check a snapshot's file table against its chunk list and manifest; place every unit.
pub(super) fn plan(m: &SnapshotManifest, units: Vec<Unit>) -> Result<Plan> {
    let table = || format!("file table of snapshot {}", m.id.as_str());
    let mut entries = Vec::new();
    let mut planned = Vec::with_capacity(units.len());
    let mut chunk_at = 0usize;
    for u in units {
        let end = chunk_at
            .checked_add(u.chunk_count as usize)
            .filter(|e| *e <= m.chunks.len())
            .ok_or_else(|| Error::corrupt(table(), "more chunks than the chunk list"))?;
        let bytes = m.chunks[chunk_at..end]
            .iter()
            .map(|c| u64::from(c.size))
            .sum();
        let first = entries.len();
        entries.extend(u.entries);
        planned.push(PlannedUnit {
            chunks: chunk_at..end,
            entries: first..entries.len(),
            bytes,
        });
        chunk_at = end;
    }
    if chunk_at != m.chunks.len() {
        return Err(Error::corrupt(table(), "fewer chunks than the chunk list"));
    }
    let (files, bytes) = check_entries(&entries, &table)?;
    if (files, bytes) != (m.file_count, m.content_bytes) {
        return Err(Error::corrupt(
            table(),
            format!(
                "{files} files / {bytes} bytes, the manifest says {} / {}",
                m.file_count, m.content_bytes
            ),
        ));
    }
    Ok(Plan {
        entries,
        units: planned,
    })
}

impl Plan {
    /// Units grouped for tasks: consecutive small units up to [`GROUP_BYTES`], a bigger unit
    /// alone; units without entries (the archive's end) are left out.
    pub fn groups(&self, units: impl IntoIterator<Item = usize>) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0u64;
        let mut last: Option<usize> = None;
        for i in units {
            let u = &self.units[i];
            if u.entries.is_empty() {
                continue;
            }
            let follows = last.is_some_and(|l| l + 1 == i);
            match out.last_mut() {
                Some(g) if follows && bytes + u.bytes <= GROUP_BYTES => {
                    g.push(i);
                    bytes += u.bytes;
                }
                _ => {
                    out.push(vec![i]);
                    bytes = u.bytes;
                }
            }
            last = Some(i);
        }
        out
    }
}

/// Where and how a restore writes.
pub(super) struct Target {
    pub root: Dir,
    /// Write each file and symlink under a temporary name and rename it into place (a reader
    /// never sees a partial file); replace whatever is in the way.
    pub in_place: bool,
    /// Directories known to exist (relative paths).
    made: Mutex<HashSet<PathBuf>>,
}

impl Target {
    pub fn new(root: Dir, in_place: bool) -> Self {
        Self {
            root,
            in_place,
            made: Mutex::new(HashSet::new()),
        }
    }

    fn io(&self, rel: &FsPath) -> impl Fn(io::Error) -> Error + '_ {
        let what = format!("writing /workspace/{}", rel.display());
        move |e| Error::io(what.clone(), e)
    }

    fn known(&self, rel: &FsPath) -> bool {
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(rel)
    }

    fn mark(&self, rel: &FsPath) {
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rel.to_owned());
    }

    /// Make `rel` a directory (and its parents), replacing a non-directory in place mode.
    fn dir(&self, rel: &FsPath) -> Result<()> {
        if rel.as_os_str().is_empty() || self.known(rel) {
            return Ok(());
        }
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        match self.root.create_dir(rel) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let m = self.root.symlink_metadata(rel).map_err(self.io(rel))?;
                if !m.is_dir() {
                    if !self.in_place {
                        return Err(self.io(rel)(e));
                    }
                    self.root.remove_file(rel).map_err(self.io(rel))?;
                    self.root.create_dir(rel).map_err(self.io(rel))?;
                }
            }
            Err(e) => return Err(self.io(rel)(e)),
        }
        self.mark(rel);
        Ok(())
    }

    /// A name to write `rel` under before it is complete.
    fn temp_name(rel: &FsPath) -> PathBuf {
        let name = format!(".cma-restore-{}.tmp", uuid::Uuid::new_v4().simple());
        match rel.parent() {
            Some(p) => p.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Move a finished temporary into place, replacing a directory that is in the way.
    fn publish(&self, temp: &FsPath, rel: &FsPath) -> Result<()> {
        if let Ok(m) = self.root.symlink_metadata(rel)
            && m.is_dir()
        {
            self.root.remove_dir_all(rel).map_err(self.io(rel))?;
        }
        self.root
            .rename(temp, &self.root, rel)
            .map_err(self.io(rel))
    }

    fn file(&self, rel: &FsPath, exec: bool, size: u64, data: &mut dyn Read) -> Result<()> {
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        let name = if self.in_place {
            Self::temp_name(rel)
        } else {
            rel.to_owned()
        };
        let mode = if exec { 0o755 } else { 0o644 };
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true).mode(mode);
        let written = (|| {
            let mut f = self.root.open_with(&name, &opts)?;
            copy_with_holes(data, &mut f, size)?;
            f.set_permissions(Permissions::from_mode(mode))?;
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = written {
            if self.in_place {
                let _ = self.root.remove_file(&name);
            }
            return Err(self.io(rel)(e));
        }
        if self.in_place {
            self.publish(&name, rel)?;
        }
        Ok(())
    }

    fn symlink(&self, rel: &FsPath, target: &FsPath) -> Result<()> {
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        let name = if self.in_place {
            Self::temp_name(rel)
        } else {
            rel.to_owned()
        };
        // Link text as stored (absolute targets too): never followed here, and the sandbox
        // confines any use of it.
        self.root
            .symlink_contents(target, &name)
            .map_err(self.io(rel))?;
        if self.in_place {
            self.publish(&name, rel)?;
        }
        Ok(())
    }
}

/// Copy exactly `size` bytes, leaving holes where whole blocks are zero.
fn copy_with_holes(src: &mut dyn Read, dst: &mut cap_std::fs::File, size: u64) -> io::Result<()> {
    thread_local! {
        /// One copy buffer per thread: most files are small, and a fresh zeroed buffer per
        /// file would cost more than copying them.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    BUF.with(|buf| copy_through(src, dst, size, &mut buf.borrow_mut()))
}

fn copy_through(
    src: &mut dyn Read,
    dst: &mut cap_std::fs::File,
    size: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut left = size;
    let mut hole = false;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ended early",
            ));
        }
        for piece in buf[..n].chunks(ZEROS.len()) {
            if is_zeros(piece) {
                dst.seek(SeekFrom::Current(piece.len() as i64))?;
                hole = true;
            } else {
                dst.write_all(piece)?;
                hole = false;
            }
        }
        left -= n as u64;
    }
    if hole {
        dst.set_len(size)?;
    }
    Ok(())
}

/// Reads a run of chunks as one byte stream, fetching [`SEGMENT_BYTES`] at a time with the
/// next segment on its way while this one is consumed. Runs on a blocking thread.
struct ChunkReader {
    fetcher: Fetcher,
    snapshot: SnapshotId,
    chunks: Arc<[ChunkRef]>,
    handle: tokio::runtime::Handle,
    segments: VecDeque<Range<usize>>,
    next: Option<tokio::task::JoinHandle<Result<Vec<Bytes>>>>,
    current: VecDeque<Bytes>,
    failure: Option<Error>,
}

impl ChunkReader {
    fn new(ctx: &Restore, range: Range<usize>) -> Self {
        let mut segments = VecDeque::new();
        let (mut start, mut len) = (range.start, 0u64);
        for i in range.clone() {
            len += u64::from(ctx.chunks[i].size);
            if len >= SEGMENT_BYTES {
                segments.push_back(start..i + 1);
                (start, len) = (i + 1, 0);
            }
        }
        if start < range.end {
            segments.push_back(start..range.end);
        }
        let mut r = Self {
            fetcher: ctx.fetcher.clone(),
            snapshot: ctx.snapshot.clone(),
            chunks: ctx.chunks.clone(),
            handle: ctx.handle.clone(),
            segments,
            next: None,
            current: VecDeque::new(),
            failure: None,
        };
        r.prefetch();
        r
    }

    fn prefetch(&mut self) {
        if let Some(seg) = self.segments.pop_front() {
            let (fetcher, id, chunks) = (
                self.fetcher.clone(),
                self.snapshot.clone(),
                self.chunks.clone(),
            );
            self.next = Some(
                self.handle
                    .spawn(async move { fetcher.fetch(&id, &chunks[seg]).await }),
            );
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.front().is_none_or(|c| c.is_empty()) {
            if self.current.pop_front().is_some() {
                continue;
            }
            let Some(next) = self.next.take() else {
                return Ok(0);
            };
            match self.handle.block_on(next) {
                Ok(Ok(chunks)) => self.current = chunks.into(),
                Ok(Err(e)) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("fetching chunks failed"));
                }
                Err(e) => {
                    self.failure = Some(joined(e));
                    return Err(io::Error::other("fetching chunks failed"));
                }
            }
            self.prefetch();
        }
        let Some(cur) = self.current.front_mut() else {
            return Ok(0);
        };
        let n = out.len().min(cur.len());
        out[..n].copy_from_slice(&cur.split_to(n));
        Ok(n)
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let Some(h) = self.next.take() {
            h.abort();
        }
    }
}

/// Everything a restore task needs.
pub(super) struct Restore {
    pub fetcher: Fetcher,
    pub snapshot: SnapshotId,
    pub chunks: Arc<[ChunkRef]>,
    pub plan: Arc<Plan>,
    pub target: Arc<Target>,
    pub handle: tokio::runtime::Handle,
}

fn malformed(e: io::Error) -> Error {
    Error::corrupt("archive", format!("malformed tar: {e}"))
}

impl Restore {
    /// Restore the units of one group (consecutive units); blocking.
    pub fn group(&self, units: &[usize]) -> Result<()> {
        let (Some(&first), Some(&last)) = (units.first(), units.last()) else {
            return Ok(());
        };
        let (first, last) = (&self.plan.units[first], &self.plan.units[last]);
        let mut reader = ChunkReader::new(self, first.chunks.start..last.chunks.end);
        let expected = &self.plan.entries[first.entries.start..last.entries.end];
        let r = self.entries(&mut reader, expected);
        match (r, reader.failure.take()) {
            (Err(_), Some(fetch_err)) => Err(fetch_err),
            (r, _) => r,
        }
    }

    fn entries(&self, reader: &mut ChunkReader, expected: &[EntryKey]) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let mut want = expected.iter();
        for entry in archive.entries().map_err(malformed)? {
            let mut entry = entry.map_err(malformed)?;
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
            ) {
                continue;
            }
            let raw = entry.path().map_err(malformed)?.into_owned();
            let Some(exp) = want.next() else {
                return Err(Error::corrupt(
                    "archive",
                    "more entries than the file table",
                ));
            };
            let same = raw.as_os_str().as_bytes() == exp.path.as_slice()
                && match exp.kind {
                    Kind::Dir => kind.is_dir(),
                    Kind::File => {
                        matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
                            && entry.header().size().ok() == Some(exp.size)
                    }
                    Kind::Symlink => kind == tar::EntryType::Symlink,
                };
            if !same {
                return Err(Error::corrupt(
                    "archive",
                    format!(
                        "entry '{}' is not the one the file table lists",
                        shown(&exp.path)
                    ),
                ));
            }
            let mode = entry.header().mode().map_err(malformed)?;
            if mode & 0o7000 != 0 {
                return Err(Error::unsafe_entry(
                    shown(&exp.path),
                    "setuid, setgid and sticky bits are not allowed",
                ));
            }
            let rel = rel_of(&exp.path);
            match exp.kind {
                Kind::Dir => self.target.dir(rel)?,
                Kind::File => self
                    .target
                    .file(rel, mode & 0o111 != 0, exp.size, &mut entry)?,
                Kind::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(malformed)?
                        .ok_or_else(|| {
                            Error::unsafe_entry(shown(&exp.path), "symlink without a target")
                        })?
                        .into_owned();
                    super::safety::check_link(&shown(&exp.path), &target)?;
                    self.target.symlink(rel, &target)?;
                }
            }
        }
        if want.next().is_some() {
            return Err(Error::corrupt(
                "archive",
                "fewer entries than the file table",
            ));
        }
        Ok(())
    }
}

/// Move everything in `from` into `to`, merging directories that exist in both; an entry of
/// `from` replaces a non-directory (or, if it is not a directory itself, a directory) in `to`.
fn merge_into(from: &Dir, to: &Dir, depth: usize) -> io::Result<()> {
    if depth > 4096 {
        return Err(io::Error::other("directory nesting too deep"));
    }
    for entry in from.entries()? {
        let name = entry?.file_name();
        let src = from.symlink_metadata(&name)?;
        match to.symlink_metadata(&name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(dst) if dst.is_dir() && src.is_dir() => {
                merge_into(&from.open_dir(&name)?, &to.open_dir(&name)?, depth + 1)?;
                from.remove_dir(&name)?;
                continue;
            }
            Ok(dst) if dst.is_dir() => to.remove_dir_all(&name)?,
            Ok(_) if src.is_dir() => to.remove_file(&name)?,
            Ok(_) => {}
        }
        from.rename(&name, to, &name)?;
    }
    Ok(())
}

/// Restore every unit into a fresh hidden directory in `workspace`, then move the entries into
/// place. On any failure the directory is removed and the workspace is as it was.
pub(super) async fn restore_staged(
    workspace: Dir,
    fetcher: Fetcher,
    m: &SnapshotManifest,
    plan: Plan,
) -> Result<()> {
    let name = format!(".cma-restore-{}", uuid::Uuid::new_v4().simple());
    let ws = Arc::new(workspace);
    let staging = {
        let (ws, name, id) = (ws.clone(), name.clone(), m.id.as_str().to_owned());
        tokio::task::spawn_blocking(move || {
            ws.write(RESTORE_MARKER, id)?;
            ws.create_dir(&name)?;
            ws.open_dir(&name)
        })
        .await
        .map_err(joined)?
        .map_err(|e| Error::io("create the restore directory", e))?
    };
    let plan = Arc::new(plan);
    let ctx = Arc::new(Restore {
        fetcher,
        snapshot: m.id.clone(),
        chunks: m.chunks.clone().into(),
        plan: plan.clone(),
        target: Arc::new(Target::new(staging, false)),
        handle: tokio::runtime::Handle::current(),
    });
    let groups = plan.groups(0..plan.units.len());
    use futures::{StreamExt, TryStreamExt};
    let written = futures::stream::iter(groups)
        .map(|g| {
            let ctx = ctx.clone();
            async move {
                tokio::task::spawn_blocking(move || ctx.group(&g))
                    .await
                    .map_err(joined)?
            }
        })
        .buffer_unordered(TASKS)
        .try_collect::<()>()
        .await;
    drop(ctx);
    tokio::task::spawn_blocking(move || {
        let staging = ws
            .open_dir(&name)
            .map_err(|e| Error::io("open the restore directory", e))?;
        let unmark = || {
            ws.remove_file(RESTORE_MARKER)
                .map_err(|e| Error::io("unmark the restore", e))
        };
        let drop_staging = || {
            if let Err(e) = ws.remove_dir_all(&name) {
                tracing::warn!(error = %e, "could not remove the restore directory");
            }
        };
        match written {
            // Nothing was moved: the workspace is as it was.
            Err(e) => {
                drop_staging();
                unmark()?;
                Err(e)
            }
            Ok(()) => match merge_into(&staging, &ws, 0) {
                Ok(()) => {
                    drop_staging();
                    unmark()
                }
                // Stopped half-way: the workspace is partial and stays marked.
                Err(e) => {
                    drop_staging();
                    Err(Error::io("move restored entries into place", e))
                }
            },
        }
    })
    .await
    .map_err(joined)?
}
