//! Saving straight from a workspace directory on this host (see
//! [`Sandbox::local_workspace`](cma_sandbox::Sandbox::local_workspace)).
//!
//! The walk writes the same archive the isolate backend's export writes (GNU tar, entries in
//! sorted depth-first order, mtime in seconds, modes 0644/0755/0777) but cuts it into *units*
//! first, and chunks each unit on its own so chunk boundaries always fall at unit boundaries:
//! - a regular file of at least [`BIG_FILE`] bytes is a unit by itself (header, data, padding);
//! - smaller entries are grouped into *packs*; a pack ends where a hash of an entry's path says
//!   so (once the pack holds `min_size` bytes) or when it reaches `max_size`. The rule depends on
//!   names and sizes only, so an added or removed file changes the packs around it and no others.
//!
//! A unit whose entries all have the same metadata as in the parent snapshot's file table
//! (path, kind, mode, size, mtime, ctime, inode) is not read at all: its chunks are the parent's.
//! An entry whose mtime or ctime is within [`RACY_WINDOW`] of the save's start could change
//! again without its times moving (coarse timestamps), so its unit is marked racy and is always
//! read next time.
//!
//! The tree is listed through `cap_std` and `statat` with `AT_SYMLINK_NOFOLLOW` on one name at a
//! time (by worker threads, ahead of the walk: see the `lister` module), so nothing outside the
//! workspace is ever read, and files that change during the walk still give a well-formed
//! archive (a file is read as exactly the size it was stat'ed with). A directory whose own
//! metadata is what the parent recorded is not read again: its names are the parent's, each
//! still `statat`-ed (see the `parent_dirs` module).

use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use rustix::fs::OFlags;
use tokio::sync::mpsc;

use super::chunk::Chunker;
use super::error::{Error, Result};
use super::hinted::{Check, Hints};
use super::lister::{Lister, with_lister};
use super::manifest::{ChunkRef, ChunkerParams};
use super::parent_units::{ParentUnits, Reuse, same_entry};
use super::tables::{EntryKey, Kind};

/// Files at least this big are units by themselves.
pub(crate) const BIG_FILE: u64 = 256 * 1024;
/// Entries changed this close to the save's start are not trusted next time.
pub(crate) const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Deepest nesting walked: a queued directory holds its parent's handle open, so this (with
/// the lister's read-ahead bound) bounds the descriptors a save holds. Deeper trees are saved from the export stream instead (see
/// [`TOO_DEEP`]).
pub(crate) const MAX_DEPTH: usize = 128;

/// The walk met a tree deeper than [`MAX_DEPTH`].
pub(crate) const TOO_DEEP: &str = "directory nesting too deep for the directory walk";
/// Read size for files streamed by the walk (past [`READ_ELSEWHERE`]): big enough that each
/// block is cut on two threads (see `chunk::Chunker::push`).
const READ_BLOCK: usize = 8 << 20;
/// Most pieces of work per message to the saver (each message costs a thread wake-up).
const SEND_BATCH: usize = 256;
/// Files up to this size are read by the job that hashes them (in memory whole), not by the
/// walk itself: the walk's own reading is the one part of a save on a single core.
const READ_ELSEWHERE: u64 = 32 << 20;

/// What the walk sends to the saver, in archive order.
pub(crate) enum Work {
    /// New archive bytes, already cut into chunks.
    Chunks(Vec<Bytes>),
    /// New archive bytes forming a whole unit, to be cut into chunks by whoever hashes them
    /// (so the cutting runs on another core than the walk).
    Whole(Bytes),
    /// A whole unit of entries whose files are still to be read (see [`read_unit`]), by
    /// whoever hashes them: reading, cutting and hashing run beside the walk.
    Files {
        root: Arc<Dir>,
        pack: Vec<Found>,
        checks: Checks,
    },
    /// Chunks taken from the parent unchanged, with their checks if it had them.
    Reused(Vec<ChunkRef>, Vec<Check>),
    /// The unit whose chunks were just sent is complete.
    UnitEnd { racy: bool, entries: Vec<EntryKey> },
}

/// What a unit's reader does about checks (see the `hinted` module).
pub(crate) enum Checks {
    /// None are computed (small entries, or a save without a parent).
    None,
    /// Computed for every chunk.
    Compute,
    /// Computed, and the parent's used to cut and hash only what changed.
    Hinted(Box<Hints>),
}

/// Counts for the manifest.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub files: u64,
    pub bytes: u64,
    /// Sockets, FIFOs and device nodes left out.
    pub skipped: u64,
}

/// One entry found by the walk.
pub(crate) struct Found {
    pub key: EntryKey,
    /// Its tar header (with any long-name records before it); built only for entries that
    /// are read (see [`Found::lazy`]), empty until then.
    pub header: Vec<u8>,
    /// The header's length, known before it is built.
    pub head_len: u64,
}

impl Work {
    /// Bytes of archive this work holds in memory once read.
    pub fn bytes(&self) -> u64 {
        match self {
            Work::Chunks(c) => c.iter().map(|b| b.len() as u64).sum(),
            Work::Whole(b) => b.len() as u64,
            Work::Files { pack, .. } => pack.iter().map(Found::archive_len).sum(),
            Work::Reused(..) | Work::UnitEnd { .. } => 0,
        }
    }
}

impl Found {
    /// An entry with its header built.
    pub fn built(key: EntryKey, header: Vec<u8>) -> Self {
        let head_len = header.len() as u64;
        Self {
            key,
            header,
            head_len,
        }
    }

    /// An entry whose header is built only if it is read ([`Found::build`]): a file's or a
    /// directory's path of at most 100 bytes fits the header's name field, so the header is one
    /// block (the tar crate writes a long-name record before it only for a longer path). Any
    /// other entry (a symlink, a long path) is built now.
    pub fn lazy(
        builder: &mut tar::Builder<Vec<u8>>,
        key: EntryKey,
        link: Option<&FsPath>,
    ) -> io::Result<Self> {
        if key.kind != Kind::Symlink && key.path.len() <= 100 {
            return Ok(Self {
                key,
                header: Vec::new(),
                head_len: 512,
            });
        }
        let header = tar_header(builder, key_path(&key), &key, link)?;
        Ok(Self::built(key, header))
    }

    /// Build the header of an entry made by [`Found::lazy`], if it is not yet.
    pub fn build(&mut self, builder: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
        if self.header.is_empty() {
            self.header = tar_header(builder, key_path(&self.key), &self.key, None)?;
            debug_assert_eq!(self.header.len() as u64, self.head_len);
        }
        Ok(())
    }

    pub fn archive_len(&self) -> u64 {
        let data = if self.key.kind == Kind::File {
            self.key.size.div_ceil(512) * 512
        } else {
            0
        };
        self.head_len + data
    }
}

/// An entry's path, as a path.
fn key_path(key: &EntryKey) -> &FsPath {
    use std::os::unix::ffi::OsStrExt;
    FsPath::new(std::ffi::OsStr::from_bytes(&key.path))
}

fn shown(k: &EntryKey) -> String {
    format!("reading /workspace/{}", String::from_utf8_lossy(&k.path))
}

fn io_err(what: &FsPath) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(format!("reading /workspace/{}", what.display()), e)
}

struct Walker<'a> {
    params: ChunkerParams,
    parent: Option<&'a mut Reuse>,
    racy_after: i128,
    tx: &'a mpsc::Sender<Result<Vec<Work>>>,
    /// Work not sent yet: sent in batches, not one message per unit.
    out: Vec<Work>,
    /// Directory listings, read ahead.
    lister: &'a Lister<'a>,
    /// Most file bytes a save takes (`SnapshotConfig::max_archive_bytes`).
    max_bytes: u64,
    /// Whether big files get checks in a save without a parent (see
    /// `hashing::names_are_checks`).
    free_checks: bool,
    /// The workspace, for whoever reads files of the walk.
    root: Arc<Dir>,
    /// The small entries of the unit being gathered. Their keys' paths are left empty (most
    /// units are the parent's, whose keys are taken instead) but for those whose header is
    /// built at once (see [`Found::lazy`]): every path is in `pack_paths`, at `pack_spans`.
    pack: Vec<Found>,
    pack_paths: Vec<u8>,
    pack_spans: Vec<Range<usize>>,
    pack_bytes: u64,
    counts: Counts,
    builder: tar::Builder<Vec<u8>>,
}

/// FNV-1a of a path: where packs end.
fn path_hash(p: &[u8]) -> u64 {
    p.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether a pack of small entries ends after `path`, `pack_bytes` of archive in: at the
/// maximum chunk size, or past the minimum where the path's hash says so (so inserting an
/// entry changes only its own pack).
pub(crate) fn ends_pack(params: &ChunkerParams, pack_bytes: u64, path: &[u8]) -> bool {
    pack_bytes >= u64::from(params.max_size)
        || (pack_bytes >= u64::from(params.min_size) && path_hash(path).is_multiple_of(8))
}

/// Times at or after this (ns since the epoch) are too recent to trust next time.
pub(crate) fn racy_after(started: SystemTime) -> i128 {
    started
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Whether an entry changed too recently to be trusted next time.
pub(crate) fn is_racy(k: &EntryKey, racy_after: i128) -> bool {
    i128::from(k.mtime_ns) >= racy_after || i128::from(k.ctime_ns) >= racy_after
}

/// An entry's tar header as the isolate export writes it (data is written separately).
pub(crate) fn tar_header(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &FsPath,
    key: &EntryKey,
    link: Option<&FsPath>,
) -> io::Result<Vec<u8>> {
    let mut h = tar::Header::new_gnu();
    h.set_mtime(u64::try_from(key.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    match (key.kind, link) {
        (Kind::Symlink, Some(target)) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            builder.append_link(&mut h, path, target)?;
        }
        (Kind::Symlink, None) => return Err(io::Error::other("symlink without a target")),
        (Kind::Dir, _) => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            builder.append_data(&mut h, path, io::empty())?;
        }
        (Kind::File, _) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if key.mode & 0o111 != 0 { 0o755 } else { 0o644 });
            h.set_size(key.size);
            builder.append_data(&mut h, path, io::empty())?;
        }
    }
    Ok(std::mem::take(builder.get_mut()))
}

/// Tar padding after `size` bytes of data.
pub(crate) fn padding(size: u64) -> usize {
    (512 - (size % 512) as usize) % 512
}

/// Open a regular file of the walk for reading, by its path from the workspace root
/// (`cap_std` resolves it beneath the root; the last component is never followed and a FIFO
/// swapped in meanwhile does not block).
fn open_in(root: &Dir, key: &EntryKey) -> Result<cap_std::fs::File> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    root.open_with(key_path(key), &opts)
        .map_err(|e| Error::io(shown(key), e))
}

/// The archive bytes of a unit of small entries, appended to `out`: each header, then each
/// file's data read as exactly the size it was found with (a short file padded with zeros, a
/// grown one cut, a vanished one zeros) and the tar padding. Reads straight into `out`'s spare
/// room (no zeroing first).
pub(crate) fn read_unit(root: &Dir, pack: &[Found], out: &mut Vec<u8>) -> Result<()> {
    let len = pack.iter().map(Found::archive_len).sum::<u64>();
    out.reserve(usize::try_from(len).map_err(|_| Error::TooLarge {
        what: "unit".into(),
        size: len,
        limit: usize::MAX as u64,
    })?);
    for f in pack {
        out.extend_from_slice(&f.header);
        if f.key.kind != Kind::File {
            continue;
        }
        let size = f.key.size as usize;
        let end = out.len() + size;
        match open_in(root, &f.key) {
            Ok(file) => {
                while out.len() < end {
                    out.reserve(end - out.len());
                    match rustix::io::read(&file, rustix::buffer::spare_capacity(out)) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(Error::io(shown(&f.key), e.into())),
                    }
                }
                // Grown since the walk: cut; shrunk: zeros.
                out.resize(end, 0);
            }
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                out.resize(end, 0);
            }
            Err(e) => return Err(e),
        }
        out.resize(out.len() + padding(size as u64), 0);
    }
    Ok(())
}

/// Walk `root`, sending the archive as [`Work`] in order; returns the counts. Runs on a
/// blocking thread. Stops quietly when the receiver is gone.
pub(crate) fn walk(
    root: Dir,
    params: ChunkerParams,
    parent: Option<&mut ParentUnits>,
    started: SystemTime,
    tx: &mpsc::Sender<Result<Vec<Work>>>,
    max_bytes: u64,
    free_checks: bool,
) -> Result<Counts> {
    let shared = root
        .try_clone()
        .map_err(|e| Error::io("reading /workspace", e))?;
    let (reuse, dirs) = match parent {
        Some(p) => {
            let (reuse, dirs) = p.split();
            (Some(reuse), Some(dirs))
        }
        None => (None, None),
    };
    with_lister(root, dirs, |lister| {
        let mut w = Walker {
            root: Arc::new(shared),
            params,
            parent: reuse,
            racy_after: racy_after(started),
            tx,
            lister,
            max_bytes,
            free_checks,
            out: Vec::new(),
            pack: Vec::new(),
            pack_paths: Vec::new(),
            pack_spans: Vec::new(),
            pack_bytes: 0,
            counts: Counts::default(),
            builder: tar::Builder::new(Vec::new()),
        };
        w.walk_dir(&mut PathBuf::new(), 0)?;
        w.flush_pack()?;
        // End of archive: two zero blocks, a unit of its own with no entries.
        w.send(Work::Chunks(vec![Bytes::from_static(&[0u8; 1024])]))?;
        w.send(Work::UnitEnd {
            racy: false,
            entries: Vec::new(),
        })?;
        w.flush_out()?;
        Ok(w.counts)
    })
}

impl Walker<'_> {
    /// Queue work; send the batch when it holds data (a job can start on it) or is long.
    fn send(&mut self, work: Work) -> Result<()> {
        let data = work.bytes() > 0;
        self.out.push(work);
        if data || self.out.len() >= SEND_BATCH {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.out);
        self.tx.blocking_send(Ok(batch)).map_err(|_| Error::Busy {
            message: "save cancelled".into(),
        })
    }

    /// Walk the directory `rel` (one path, its subdirectories' names pushed on it and taken
    /// off again as they are walked).
    fn walk_dir(&mut self, rel: &mut PathBuf, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::InvalidInput {
                message: TOO_DEEP.to_owned(),
            });
        }
        // `None`: the directory vanished since its parent was listed.
        let Some(listing) = self.lister.take(rel)? else {
            return Ok(());
        };
        self.counts.skipped += listing.skipped;
        let rel_len = rel.as_os_str().len();
        for e in &listing.entries {
            let name = listing.name(e);
            let name_bytes = name.as_encoded_bytes();
            let rel_bytes = &rel.as_os_str().as_encoded_bytes()[..rel_len];
            let big = e.kind == Kind::File && e.size >= BIG_FILE;
            // A small entry's path goes with the pack's, and into a key of its own only if its
            // header is built now (a symlink, a long path) or its unit turns out not to be the
            // parent's. A big file's goes into its key at once.
            let start = self.pack_paths.len();
            let mut path = Vec::new();
            let to = if big { &mut path } else { &mut self.pack_paths };
            to.reserve(rel_bytes.len() + 1 + name_bytes.len());
            if !rel_bytes.is_empty() {
                to.extend_from_slice(rel_bytes);
                to.push(b'/');
            }
            to.extend_from_slice(name_bytes);
            let span = start..self.pack_paths.len();
            if !big && (e.kind == Kind::Symlink || span.len() > 100) {
                path = self.pack_paths[span.clone()].to_vec();
            }
            let key = EntryKey {
                path,
                kind: e.kind,
                mode: e.mode,
                size: e.size,
                mtime_ns: e.mtime_ns,
                ctime_ns: e.ctime_ns,
                ino: e.ino,
            };
            let found = Found::lazy(&mut self.builder, key, e.target.as_deref())
                .map_err(|err| io_err(&rel.join(name))(err))?;
            match e.kind {
                _ if big => {
                    self.flush_pack()?;
                    self.big_file(found)?;
                }
                Kind::Dir => {
                    self.add_to_pack(found, span)?;
                    rel.push(name);
                    let walked = self.walk_dir(rel, depth + 1);
                    // (A name is one component, never `.` or `..`: popping it restores `rel`.)
                    rel.pop();
                    debug_assert_eq!(rel.as_os_str().len(), rel_len);
                    walked?;
                }
                _ => self.add_to_pack(found, span)?,
            }
        }
        Ok(())
    }

    fn racy(&self, k: &EntryKey) -> bool {
        is_racy(k, self.racy_after)
    }

    /// Count a file; refuses a workspace whose files add up to more than the store accepts
    /// (a sparse file claiming exabytes would otherwise be streamed as zeros for ever).
    fn count(&mut self, f: &Found) -> Result<()> {
        if f.key.kind == Kind::File {
            self.counts.files += 1;
            self.counts.bytes = self.counts.bytes.saturating_add(f.key.size);
            if self.counts.bytes > self.max_bytes {
                return Err(Error::TooLarge {
                    what: "workspace".into(),
                    size: self.counts.bytes,
                    limit: self.max_bytes,
                });
            }
        }
        Ok(())
    }

    /// Add a small entry, its path at `span` in `pack_paths`, to the pack.
    fn add_to_pack(&mut self, f: Found, span: Range<usize>) -> Result<()> {
        self.pack_bytes += f.archive_len();
        let cut = ends_pack(
            &self.params,
            self.pack_bytes,
            &self.pack_paths[span.clone()],
        );
        self.pack.push(f);
        self.pack_spans.push(span);
        if cut { self.flush_pack() } else { Ok(()) }
    }

    fn open(&self, f: &Found) -> Result<cap_std::fs::File> {
        open_in(&self.root, &f.key)
    }

    fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let mut pack = std::mem::take(&mut self.pack);
        let mut spans = std::mem::take(&mut self.pack_spans);
        let mut paths = std::mem::take(&mut self.pack_paths);
        self.pack_bytes = 0;
        let racy = pack.iter().any(|f| self.racy(&f.key));
        for f in &pack {
            self.count(f)?;
        }
        let reused = match (&mut self.parent, racy) {
            (Some(p), false) => p.take_if(&paths[spans[0].clone()], pack.len(), |i, e| {
                same_entry(e, &pack[i].key, &paths[spans[i].clone()])
            }),
            _ => None,
        };
        let entries = if let Some(unit) = reused {
            self.send(Work::Reused(unit.refs, unit.checks))?;
            // (Its room serves the next pack.)
            pack.clear();
            self.pack = pack;
            // The parent's keys: the same as these, but for the paths these lack.
            unit.entries
        } else {
            for (f, span) in pack.iter_mut().zip(&spans) {
                if f.key.path.is_empty() {
                    f.key.path = paths[span.clone()].to_vec();
                }
            }
            let entries = pack.iter().map(|f| f.key.clone()).collect();
            for f in &mut pack {
                f.build(&mut self.builder)
                    .map_err(|e| Error::io(shown(&f.key), e))?;
            }
            self.send(Work::Files {
                root: self.root.clone(),
                pack,
                checks: Checks::None,
            })?;
            entries
        };
        // (Their room serves the next pack.)
        spans.clear();
        paths.clear();
        (self.pack_spans, self.pack_paths) = (spans, paths);
        self.send(Work::UnitEnd { racy, entries })
    }

    fn big_file(&mut self, mut f: Found) -> Result<()> {
        self.count(&f)?;
        let racy = self.racy(&f.key);
        let reused = match (&mut self.parent, racy) {
            (Some(p), false) => p.take_if(&f.key.path, 1, |_, e| *e == f.key),
            _ => None,
        };
        if let Some(unit) = reused {
            self.send(Work::Reused(unit.refs, unit.checks))?;
            return self.send(Work::UnitEnd {
                racy,
                entries: unit.entries,
            });
        }
        let entries = vec![f.key.clone()];
        f.build(&mut self.builder)
            .map_err(|e| Error::io(shown(&f.key), e))?;
        if f.key.size <= READ_ELSEWHERE {
            // Read, cut and hashed whole by a job on another core; with checks in a save with
            // a parent (see the `hinted` module).
            let checks = match &self.parent {
                Some(p) => p
                    .hints(&f.key)
                    .map_or(Checks::Compute, |h| Checks::Hinted(Box::new(h))),
                // Without a parent too when the chunk names give the checks (all but chunk
                // 0's): the file's first change after this save is then hinted as well.
                None if self.free_checks => Checks::Compute,
                None => Checks::None,
            };
            self.send(Work::Files {
                root: self.root.clone(),
                pack: vec![f],
                checks,
            })?;
            return self.send(Work::UnitEnd { racy, entries });
        }
        // Bigger files are streamed here, cut as they are read.
        let mut chunker = Chunker::new(self.params);
        let mut out = Vec::new();
        chunker.push(&f.header, &mut out);
        let size = f.key.size;
        let mut reader: Box<dyn Read> = match self.open(&f) {
            Ok(file) => Box::new(file.take(size).chain(io::repeat(0)).take(size)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Box::new(io::repeat(0).take(size))
            }
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; READ_BLOCK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(shown(&f.key), e)),
            };
            chunker.push(&buf[..n], &mut out);
            if !out.is_empty() {
                self.send(Work::Chunks(std::mem::take(&mut out)))?;
            }
        }
        chunker.push(&[0u8; 512][..padding(size)], &mut out);
        chunker.finish(&mut out);
        self.send(Work::Chunks(out))?;
        self.send(Work::UnitEnd { racy, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_built_later_is_as_long_as_said_before() {
        let mut builder = tar::Builder::new(Vec::new());
        for len in 1..=300usize {
            for kind in [Kind::File, Kind::Dir, Kind::Symlink] {
                // Components of up to 50 bytes, some of them two-byte characters.
                let name: String = (0..len)
                    .map(|i| match i % 51 {
                        50 => '/',
                        7 if len % 2 == 0 => 'é',
                        _ => 'a',
                    })
                    .collect();
                let path = name.trim_end_matches('/').as_bytes().to_vec();
                let key = EntryKey {
                    path,
                    kind,
                    mode: 0o100644,
                    size: 3,
                    mtime_ns: 1_700_000_000_000_000_000,
                    ctime_ns: 0,
                    ino: 1,
                };
                let link = (kind == Kind::Symlink).then(|| FsPath::new("../t"));
                let mut found = Found::lazy(&mut builder, key.clone(), link).unwrap();
                let said = found.head_len;
                found.build(&mut builder).unwrap();
                let built = tar_header(&mut builder, key_path(&key), &key, link).unwrap();
                assert_eq!(found.header, built, "{len} {kind:?}");
                assert_eq!(said, built.len() as u64, "{len} {kind:?}");
            }
        }
    }
}
