//! Saving a workspace that is not on this host but lists in one call
//! ([`Sandbox::workspace_entries`], the Docker backend), incrementally: the listing is cut into
//! the same units as a directory walk (see `walk`), a unit whose entries' metadata (path, kind,
//! mode, size, mtime, ctime, inode) matches the parent snapshot's file table is not read at
//! all, and only the files of the other units are read, small ones many per call
//! ([`Sandbox::read_files`]), big ones streamed ([`Sandbox::open_read`]).
//!
//! Each file is read as exactly the size it was listed with (a short file padded with zeros, a
//! grown one cut, a vanished one zeros), so files that change during the save still give a
//! well-formed archive; the ctime in the file table makes the next save read them again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path as FsPath;
use std::time::SystemTime;

use bytes::Bytes;
use cma_sandbox::{FileKind, Sandbox, SandboxErrorKind, WorkspaceEntry};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::chunk::Chunker;
use super::error::{Error, Result};
use super::hinted::Check;
use super::manifest::{ChunkRef, ChunkerParams};
use super::parent_units::ParentUnits;
use super::tables::{EntryKey, Kind};
use super::walk::{
    BIG_FILE, Counts, Found, Work, ends_pack, is_racy, padding, racy_after, tar_header,
};

/// A name that cannot be passed to the sandbox's file calls (not UTF-8): the save reads the
/// whole export instead.
pub(crate) const UNREADABLE_NAME: &str = "a workspace name is not UTF-8";
/// Bytes of small files read per call.
const READ_BATCH_BYTES: u64 = 8 << 20;
/// Files read per call.
const READ_BATCH_FILES: usize = 4096;
/// Read size for big files.
const READ_BLOCK: usize = 1 << 20;

/// One unit of the archive, planned from the listing.
struct Planned {
    entries: Vec<Found>,
    big: bool,
    racy: bool,
    /// The parent's chunks (and their checks) for it, if it can be taken unread.
    reuse: Option<(Vec<ChunkRef>, Vec<Check>)>,
}

fn key_of(e: &WorkspaceEntry) -> Option<EntryKey> {
    let kind = match e.kind {
        FileKind::Dir => Kind::Dir,
        FileKind::File => Kind::File,
        FileKind::Symlink => Kind::Symlink,
        _ => return None,
    };
    Some(EntryKey {
        path: e.path.clone(),
        kind,
        mode: e.mode,
        size: if kind == Kind::File { e.size } else { 0 },
        mtime_ns: e.mtime_ns,
        ctime_ns: e.ctime_ns,
        ino: e.inode,
    })
}

/// Cut the listing into units as the directory walk would.
fn plan(
    entries: Vec<WorkspaceEntry>,
    params: &ChunkerParams,
    parent: Option<&ParentUnits>,
    racy_after: i128,
) -> Result<(Vec<Planned>, Counts)> {
    // The listing comes from inside the sandbox: it must be what a restore accepts (clean
    // names, none twice, nothing beneath a symlink or a file, non-empty link targets), or the
    // save would store a snapshot no restore takes.
    let keys: Vec<EntryKey> = entries.iter().filter_map(key_of).collect();
    super::unpack::check_entries(&keys, &|| "the sandbox's workspace listing".to_owned())?;
    drop(keys);
    if let Some(e) = entries.iter().find(|e| {
        e.kind == FileKind::Symlink && e.link_target.as_deref().is_none_or(<[u8]>::is_empty)
    }) {
        return Err(Error::unsafe_entry(
            String::from_utf8_lossy(&e.path),
            "symlink without a target",
        ));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut units = Vec::new();
    let mut pack: Vec<Found> = Vec::new();
    let mut pack_bytes = 0u64;
    let mut counts = Counts::default();
    let finish = |entries: Vec<Found>, big: bool, units: &mut Vec<Planned>| {
        if entries.is_empty() {
            return;
        }
        let keys: Vec<EntryKey> = entries.iter().map(|f| f.key.clone()).collect();
        let racy = keys.iter().any(|k| is_racy(k, racy_after));
        let reuse = (!racy)
            .then(|| {
                parent
                    .and_then(|p| p.reusable(&keys))
                    .map(|(refs, checks)| (refs.to_vec(), checks.to_vec()))
            })
            .flatten();
        units.push(Planned {
            entries,
            big,
            racy,
            reuse,
        });
    };
    for e in entries {
        let Some(key) = key_of(&e) else { continue };
        let path = FsPath::new(OsStr::from_bytes(&key.path));
        let link = e
            .link_target
            .as_deref()
            .map(|t| FsPath::new(OsStr::from_bytes(t)));
        let header = tar_header(&mut builder, path, &key, link)
            .map_err(|err| Error::io(format!("archiving /workspace/{}", path.display()), err))?;
        if key.kind == Kind::File {
            counts.files += 1;
            counts.bytes += key.size;
        }
        let found = Found::built(key, header);
        if found.key.kind == Kind::File && found.key.size >= BIG_FILE {
            finish(std::mem::take(&mut pack), false, &mut units);
            pack_bytes = 0;
            finish(vec![found], true, &mut units);
            continue;
        }
        pack_bytes += found.archive_len();
        let cut = ends_pack(params, pack_bytes, &found.key.path);
        pack.push(found);
        if cut {
            finish(std::mem::take(&mut pack), false, &mut units);
            pack_bytes = 0;
        }
    }
    finish(pack, false, &mut units);
    Ok((units, counts))
}

fn sandbox_path(workdir: &str, rel: &[u8]) -> Result<String> {
    let rel = std::str::from_utf8(rel).map_err(|_| Error::InvalidInput {
        message: UNREADABLE_NAME.to_owned(),
    })?;
    Ok(format!("{}/{rel}", workdir.trim_end_matches('/')))
}

/// Exactly `size` bytes of `data`: cut, or padded with zeros.
fn sized(mut data: Vec<u8>, size: u64) -> Vec<u8> {
    data.resize(size as usize, 0);
    data
}

struct Reader<'a> {
    sandbox: &'a dyn Sandbox,
    workdir: String,
    /// Contents read ahead, by path.
    ready: HashMap<Vec<u8>, Vec<u8>>,
}

impl Reader<'_> {
    /// Read the small files of `units[from..]` that are not reused, about a batch's worth.
    async fn fill(&mut self, units: &[Planned]) -> Result<()> {
        let (mut paths, mut keys, mut bytes) = (Vec::new(), Vec::new(), 0u64);
        for u in units.iter().filter(|u| !u.big && u.reuse.is_none()) {
            for f in u.entries.iter().filter(|f| f.key.kind == Kind::File) {
                if self.ready.contains_key(&f.key.path) {
                    continue;
                }
                paths.push(sandbox_path(&self.workdir, &f.key.path)?);
                keys.push(&f.key);
                bytes += f.key.size;
            }
            if bytes >= READ_BATCH_BYTES || paths.len() >= READ_BATCH_FILES {
                break;
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        let got = self
            .sandbox
            .read_files(&paths, BIG_FILE)
            .await
            .map_err(|e| Error::sandbox("read_files", e))?;
        for ((path, key), r) in paths.iter().zip(keys).zip(got) {
            let data = match r {
                Ok(d) => sized(d.to_vec(), key.size),
                Err(e) if e.kind() == SandboxErrorKind::NotFound => sized(Vec::new(), key.size),
                // Grown past the small-file limit since the listing: stream the listed size.
                Err(e) if e.kind() == SandboxErrorKind::TooLarge => {
                    self.read_head(path, key.size).await?
                }
                Err(e) => return Err(Error::sandbox(format!("reading {path}"), e)),
            };
            self.ready.insert(key.path.clone(), data);
        }
        Ok(())
    }

    async fn read_head(&self, path: &str, size: u64) -> Result<Vec<u8>> {
        let mut reader = match self.sandbox.open_read(path).await {
            Ok(r) => r,
            Err(e) if e.kind() == SandboxErrorKind::NotFound => return Ok(sized(Vec::new(), size)),
            Err(e) => return Err(Error::sandbox(format!("reading {path}"), e)),
        };
        let mut out = Vec::with_capacity(size as usize);
        (&mut reader)
            .take(size)
            .read_to_end(&mut out)
            .await
            .map_err(|e| Error::io(format!("reading {path}"), e))?;
        Ok(sized(out, size))
    }
}

async fn send(tx: &mpsc::Sender<Result<Vec<Work>>>, work: Work) -> Result<()> {
    tx.send(Ok(vec![work])).await.map_err(|_| Error::Busy {
        message: "save cancelled".into(),
    })
}

/// List-driven save: send the archive as [`Work`] in order; returns the counts.
pub(crate) async fn walk_listed(
    sandbox: &dyn Sandbox,
    entries: Vec<WorkspaceEntry>,
    params: ChunkerParams,
    parent: Option<&ParentUnits>,
    started: SystemTime,
    tx: mpsc::Sender<Result<Vec<Work>>>,
) -> Result<Counts> {
    let (units, counts) = plan(entries, &params, parent, racy_after(started))?;
    let mut reader = Reader {
        sandbox,
        workdir: sandbox.workdir().to_owned(),
        ready: HashMap::new(),
    };
    for (i, unit) in units.iter().enumerate() {
        let keys: Vec<EntryKey> = unit.entries.iter().map(|f| f.key.clone()).collect();
        if let Some((refs, checks)) = &unit.reuse {
            send(&tx, Work::Reused(refs.clone(), checks.clone())).await?;
        } else if unit.big {
            let f = &unit.entries[0];
            big_file(&reader, f, &params, &tx).await?;
        } else {
            let mut bytes = Vec::new();
            for f in &unit.entries {
                bytes.extend_from_slice(&f.header);
                if f.key.kind == Kind::File {
                    if !reader.ready.contains_key(&f.key.path) {
                        reader.fill(&units[i..]).await?;
                    }
                    let data = reader
                        .ready
                        .remove(&f.key.path)
                        .unwrap_or_else(|| vec![0; f.key.size as usize]);
                    bytes.extend_from_slice(&data);
                    bytes.resize(bytes.len() + padding(f.key.size), 0);
                }
            }
            send(&tx, Work::Whole(Bytes::from(bytes))).await?;
        }
        send(
            &tx,
            Work::UnitEnd {
                racy: unit.racy,
                entries: keys,
            },
        )
        .await?;
    }
    // End of archive: two zero blocks, a unit of its own with no entries.
    send(&tx, Work::Chunks(vec![Bytes::from_static(&[0u8; 1024])])).await?;
    send(
        &tx,
        Work::UnitEnd {
            racy: false,
            entries: Vec::new(),
        },
    )
    .await?;
    Ok(counts)
}

async fn big_file(
    reader: &Reader<'_>,
    f: &Found,
    params: &ChunkerParams,
    tx: &mpsc::Sender<Result<Vec<Work>>>,
) -> Result<()> {
    let path = sandbox_path(&reader.workdir, &f.key.path)?;
    let size = f.key.size;
    let mut chunker = Chunker::new(*params);
    let mut out = Vec::new();
    chunker.push(&f.header, &mut out);
    let mut left = size;
    match reader.sandbox.open_read(&path).await {
        Ok(mut file) => {
            let mut buf = vec![0u8; READ_BLOCK];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = file
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| Error::io(format!("reading {path}"), e))?;
                if n == 0 {
                    break;
                }
                chunker.push(&buf[..n], &mut out);
                left -= n as u64;
                if !out.is_empty() {
                    send(tx, Work::Chunks(std::mem::take(&mut out))).await?;
                }
            }
        }
        Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
        Err(e) => return Err(Error::sandbox(format!("reading {path}"), e)),
    }
    // Shorter than listed: zeros, as the directory walk does.
    let zeros = [0u8; 64 * 1024];
    while left > 0 {
        let n = zeros.len().min(left as usize);
        chunker.push(&zeros[..n], &mut out);
        left -= n as u64;
    }
    chunker.push(&[0u8; 512][..padding(size)], &mut out);
    chunker.finish(&mut out);
    send(tx, Work::Chunks(out)).await
}
