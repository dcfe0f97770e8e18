//! Workspace snapshots: [`SnapshotStore`] saves a sandbox's workspace archive as content-defined,
//! BLAKE3-named, zstd-compressed chunks packed into pack objects, plus a manifest, in any
//! `object_store` backend, and restores it verified. (Snapshots of manifest formats 2 and 3
//! named their chunks by SHA-256; they still restore and serve as parents, see [`ChunkHash`].)
//!
//! # Saving
//! A sandbox whose workspace is a directory on this host ([`Sandbox::local_workspace`], the
//! isolate backend) is read directly: the archive is cut at file boundaries into units (a big
//! file, or a pack of small entries), and a unit whose entries' metadata is unchanged since the
//! parent snapshot is not read again: its chunks are the parent's. A sandbox that lists its
//! workspace in one call ([`Sandbox::workspace_entries`], the Docker backend) is saved the same
//! way from the listing, reading only the files of changed units (see the `remote` module).
//! Other sandboxes are saved from their export stream ([`Sandbox::export_workspace`]), cut into
//! chunks as it comes. All give the same kind of archive, and restore the same way. Reading, cutting, hashing, compressing and
//! uploading overlap (see the `pipeline` module), so both cores stay busy.
//!
//! # Layout in the store
//! - `packs/<2 hex>/<64 hex>`: many chunks in one object (see the `pack` module), under a
//!   random name. A snapshot is a few packs, not one object per chunk.
//! - `index/<sha256>`: which pack holds each chunk, where (see the `chunk_index` module). Each
//!   save adds one; garbage collection merges them.
//! - `manifests/<session>/<created µs, 20 digits>-<snapshot id>`: a manifest (see
//!   [`SnapshotManifest`]); listing a session's prefix lists its snapshots in time order.
//!   Manifests name chunks by hash only, so packs can be rewritten without touching them.
//!   Besides the archive's chunks, each snapshot's chunk list and file table are chunks too
//!   (see the `tables` module).
//! - `ids/<snapshot id>`: the key of the manifest, so a snapshot can be found by id alone.
//! - `inflight/<save>/<n>`: the chunks a running save is about to use (see *Garbage collection*).
//! - `gc/<run>`: present while a garbage collection runs.
//! - `chunks/<2 hex>/<sha256>`: one chunk per object, as manifest format 2 stored them (named
//!   by the SHA-256 of their content). Such
//!   snapshots still restore (a chunk the index does not list is looked for there), their chunks
//!   stay until no manifest uses them, and new saves never write there.
//!
//! # Crash safety
//! A save uploads its packs first, then its index object and `ids/<id>` (side by side), and
//! then the manifest (`ids/<id>` and the manifest with `PutMode::Create`). A manifest therefore exists only once every
//! chunk it lists is stored and indexed; a crash at any point leaves at most packs no index
//! lists, a dangling `ids/` entry or stale `inflight/` records, which garbage collection
//! removes once they are older than [`GcConfig::inflight_ttl`].
//!
//! # Garbage collection while saves run
//! A save names every chunk it uses in an `inflight/` record. Chunks it would take as stored
//! (the parent's, or ones the index lists) are named *before* it looks at the store: it then
//! waits until no garbage collection that started earlier is still running, and only then
//! reloads the index (or, for chunks of the parent snapshot, checks that the parent manifest
//! still exists) and packs what the store lacks. The parent's chunks are named this way once,
//! when the save starts (while the walk runs and work is hashed); if the parent is still there
//! then, they are all confirmed. A collection lists packs, then live `inflight/` records, then
//! manifests, then reads the index, and drops only chunks named by none of them. A collection
//! that started after the save's record was written sees the record and keeps those chunks;
//! one that started before is still running when the save looks (and the save waits for it)
//! or has finished (and the save sees what it dropped, and stores again what it needs).
//! Chunks the save stores itself (new ones, which the index it holds does not list) rely on
//! nothing in the store: they are named in a record written before their pack, and nothing
//! waits. A collection that lists the pack lists the record after it and keeps them; one that
//! does not list the pack never deletes it. A manifest, once written, keeps its chunks alive. Both sides bound their own
//! duration ([`GcConfig`]) so a crashed process's marker or records expire. How packs are
//! rewritten without losing anything to a kill is in the `gc` module.
//!
//! # Restore
//! Chunks are read from their packs in ranges, several at once, each checked (stored form, size,
//! content hash). Into a sandbox whose workspace is on this host, a snapshot with a file table is
//! written directly, many files at once, into a hidden directory moved into place at the end
//! (see the `unpack` module). Otherwise the chunks are written at their place in a spool file
//! (zero runs become holes), the whole archive is checked entry by entry (no `..`, absolute
//! names, entries beneath a symlink, hard links, devices, FIFOs or setuid/setgid/sticky bits;
//! symlink targets are link text, kept whatever they say), and only
//! then streamed into [`Sandbox::import_workspace`]. Either way a snapshot that fails any check
//! leaves the sandbox as it was.
//!
//! # Formats and upgrades
//! This version writes manifest format 4 ([`FORMAT_VERSION`]): new chunks are named by BLAKE3.
//! It reads formats 2 and 3 (chunks named by SHA-256) as before, builds new snapshots on them
//! (sharing their chunks), and collects them. A version before format 4 refuses a format-4
//! manifest: it cannot restore such a snapshot, and its garbage collection stops (deleting
//! nothing) while one exists. Where older versions still read or collect the same store, set
//! [`SnapshotConfig::chunk_names`] to [`ChunkNames::Sha256`] until all are upgraded: saves
//! then write format 3, and collection keeps the two kinds of chunk in packs of their own.

mod buffers;
mod chunk;
mod chunk_index;
mod error;
mod fetch;
mod gate;
mod hashing;
mod hinted;
mod lister;
mod local_store;
mod manifest;
mod marker;
mod pack;
mod parent_dirs;
mod parent_units;
mod pipeline;
mod recent;
mod remote;
mod safety;
mod tables;
mod tar_scan;
mod unpack;
mod wake;
mod walk;

use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use cma_sandbox::{ByteStream, Sandbox, SandboxError, SandboxErrorKind};
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::mpsc;

pub use error::{Error, ErrorKind, Result};
pub use gate::WakingSandbox;
pub use manifest::{
    ChunkHash, ChunkNames, ChunkRef, ChunkerParams, FORMAT_VERSION, OLDEST_FORMAT_VERSION,
    SnapshotManifest,
};
pub use marker::{RESTORE_MARKER, restore_unfinished};
pub use wake::Woken;

use self::chunk::Chunker;
use self::parent_units::ParentUnits;
use self::tables::Unit;
use self::tar_scan::TarScan;
use self::walk::{Counts, Work};
use crate::SnapshotId;

/// Chunks per message from an export stream's reader.
const BATCH_CHUNKS: usize = 16;
/// Messages between the reader of a save and its uploader.
const WORK_QUEUE: usize = 16;
/// Largest chunk or file table accepted, against a hostile or corrupt store.
const MAX_TABLE_BYTES: u64 = 1 << 30;
/// Largest `ids/` record read (it holds one manifest key).
const MAX_ID_RECORD: u64 = 4096;
/// Largest `inflight/` record read (a save's records name at most a few thousand chunks).
const MAX_INFLIGHT_RECORD: u64 = 64 << 20;
/// Size of the pieces a restore streams into the sandbox.
const IMPORT_PIECE_BYTES: usize = 256 * 1024;
/// A block of zeros, for finding holes cheaply.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Whether `data` is all zeros (compared a block at a time, at memory speed).
fn is_zeros(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Timing bounds of the garbage-collection protocol (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcConfig {
    /// Chunks younger than this are never collected, referenced or not (a second line of
    /// defence; the protocol does not need it).
    pub chunk_grace: Duration,
    /// A save must reach its manifest within half of this after it names its first chunks;
    /// a collection treats older `inflight/` records (and dangling `ids/` entries) as left by a
    /// crashed save.
    pub inflight_ttl: Duration,
    /// A collection stops deleting once it has run this long (it reports itself incomplete; the
    /// next run continues). Saves treat a marker older than twice this as left by a crash.
    pub gc_deadline: Duration,
    /// How long a save waits for a running collection before failing with [`Error::Busy`].
    pub max_wait: Duration,
    /// A pack whose live chunks fill less than this percentage of it is rewritten with only
    /// them (0 never rewrites; 100 rewrites every pack holding a dead chunk).
    pub repack_live_percent: u8,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            chunk_grace: Duration::from_secs(15 * 60),
            inflight_ttl: Duration::from_secs(6 * 3600),
            gc_deadline: Duration::from_secs(120),
            max_wait: Duration::from_secs(300),
            repack_live_percent: 50,
        }
    }
}

/// Tuning of a [`SnapshotStore`]. `SnapshotConfig::default()` then set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotConfig {
    /// How archives are cut (only affects new saves; restores read it from the manifest).
    pub chunker: ChunkerParams,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// Which hash names new chunks, and so which manifest format a save writes (see
    /// [`ChunkNames`]; restores read every format whatever this says).
    pub chunk_names: ChunkNames,
    /// Target size of a pack (stored bytes of chunks); a pack is sealed once it reaches this.
    pub pack_bytes: usize,
    /// Pack uploads in flight at once.
    pub upload_concurrency: usize,
    /// Ranged reads of packs in flight at once.
    pub download_concurrency: usize,
    /// Limit on every single store call.
    pub op_timeout: Duration,
    /// Where restores spool the verified archive (default: the system temp dir).
    pub spool_dir: Option<PathBuf>,
    /// Largest archive a save, restore or verify accepts (a save refuses a workspace whose files
    /// add up to more, before reading past the limit).
    pub max_archive_bytes: u64,
    /// Trust that chunks listed by the parent manifest exist while that manifest exists, instead
    /// of checking each one (one request per batch instead of one per chunk).
    pub trust_parent_chunks: bool,
    /// Garbage-collection timing.
    pub gc: GcConfig,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            chunker: ChunkerParams::default(),
            zstd_level: 1,
            chunk_names: ChunkNames::default(),
            pack_bytes: 16 << 20,
            upload_concurrency: 4,
            download_concurrency: 8,
            op_timeout: Duration::from_secs(60),
            spool_dir: None,
            max_archive_bytes: 64 * 1024 * 1024 * 1024,
            trust_parent_chunks: true,
            gc: GcConfig::default(),
        }
    }
}

/// A snapshot as listed (from its key, without reading the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// Its session.
    pub session_id: String,
    /// When its save started.
    pub created_at: DateTime<Utc>,
    /// Size of the stored manifest.
    pub manifest_bytes: u64,
}

/// Which snapshots [`SnapshotStore::apply_retention`] keeps: per session, the newest
/// `keep_last`, and every one younger than `keep_within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Newest snapshots kept per session.
    pub keep_last: usize,
    /// Snapshots younger than this are kept.
    pub keep_within: Duration,
}

/// What [`SnapshotStore::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Snapshots kept.
    pub kept: usize,
    /// Snapshots deleted.
    pub deleted: Vec<SnapshotId>,
}

/// What [`SnapshotStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Chunks referenced by a manifest or a running save.
    pub chunks_live: usize,
    /// Chunks no longer kept: dropped from the index, and old-format chunk objects deleted.
    pub chunks_deleted: usize,
    /// Packs in the store when the run started.
    pub packs_scanned: usize,
    /// Packs deleted (dead, left by a crashed save, or repacked).
    pub packs_deleted: usize,
    /// Packs whose live chunks were copied into new packs.
    pub packs_repacked: usize,
    /// New packs written by repacking.
    pub packs_written: usize,
    /// Index objects written (the whole index, rewritten when anything changed).
    pub index_objects_written: usize,
    /// Index objects deleted (replaced by the new ones).
    pub index_objects_deleted: usize,
    /// Stored bytes freed (deleted minus written).
    pub bytes_freed: u64,
    /// Bytes of new packs written.
    pub bytes_written: u64,
    /// Manifests read.
    pub manifests: usize,
    /// Records of crashed saves and dangling id entries removed.
    pub stale_records_deleted: usize,
    /// The run hit [`GcConfig::gc_deadline`] before doing everything it could.
    pub incomplete: bool,
}

/// Workspace snapshots in an object store. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    config: Arc<SnapshotConfig>,
    index: Arc<chunk_index::IndexCache>,
    /// The last snapshot saved, for the next save (see the `recent` module).
    recent: Arc<recent::RecentCache>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("store", &self.store.to_string())
            .field("config", &self.config)
            .finish()
    }
}

/// The directory snapshots go to by default: `$CMA_DATA_DIR/snapshots`, else
/// `$XDG_DATA_HOME/cma/snapshots`, else `$HOME/.local/share/cma/snapshots`.
pub fn default_data_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("CMA_DATA_DIR") {
        return Some(d.join("snapshots"));
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return Some(d.join("cma").join("snapshots"));
    }
    env("HOME").map(|h| h.join(".local/share/cma/snapshots"))
}

/// Session ids become part of object keys: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with '.'.
fn check_session_id(session_id: &str) -> Result<()> {
    let ok = !session_id.is_empty()
        && session_id.len() <= 128
        && !session_id.starts_with('.')
        && session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            message: format!(
                "session id {session_id:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.'"
            ),
        })
    }
}

fn chunk_key(hash: &ChunkHash) -> Path {
    let hex = hash.to_hex();
    Path::from(format!("chunks/{}/{hex}", &hex[..2]))
}

fn id_key(id: &SnapshotId) -> Path {
    Path::from(format!("ids/{}", id.as_str()))
}

fn manifest_key(session_id: &str, created_at: DateTime<Utc>, id: &SnapshotId) -> Path {
    let micros = created_at.timestamp_micros().max(0);
    Path::from(format!(
        "manifests/{session_id}/{micros:020}-{}",
        id.as_str()
    ))
}

/// `(session, created, id)` from a manifest key.
fn parse_manifest_key(key: &Path) -> Option<(String, DateTime<Utc>, SnapshotId)> {
    let mut parts = key.parts();
    if parts.next()?.as_ref() != "manifests" {
        return None;
    }
    let session = parts.next()?.as_ref().to_owned();
    let leaf = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let (micros, id) = leaf.as_ref().split_once('-')?;
    let created = Utc.timestamp_micros(micros.parse().ok()?).single()?;
    Some((session, created, SnapshotId::from_hex(id)?))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::io("worker thread", std::io::Error::other(e.to_string()))
}

impl SnapshotStore {
    /// A store over any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, config: SnapshotConfig) -> Result<Self> {
        config.chunker.validate()?;
        // FastCDC reads two bytes at a time and asks for even sizes (an odd one shifts its
        // boundaries by a byte, and a debug build of it panics). Snapshots written with odd
        // sizes still read: only new saves are refused.
        let c = &config.chunker;
        if [c.min_size, c.avg_size, c.max_size]
            .iter()
            .any(|n| n % 2 != 0)
        {
            return Err(Error::InvalidInput {
                message: format!("chunk sizes must be even: {c:?}"),
            });
        }
        if config.upload_concurrency == 0 || config.download_concurrency == 0 {
            return Err(Error::InvalidInput {
                message: "concurrency limits must be at least 1".into(),
            });
        }
        if !(64 * 1024..=1 << 30).contains(&config.pack_bytes) {
            return Err(Error::InvalidInput {
                message: format!(
                    "pack size {} must be between 64 KiB and 1 GiB",
                    config.pack_bytes
                ),
            });
        }
        Ok(Self {
            store,
            config: Arc::new(config),
            index: Arc::default(),
            recent: Arc::default(),
        })
    }

    /// A store in a local directory (created if missing). Large objects (packs) are written
    /// around the page cache where the file system allows (`O_DIRECT` on Linux): they are
    /// rarely read back, and through the page cache they would cost a fresh page per 4 KiB
    /// and evict what sandboxes use (see `local_store`).
    pub fn local(dir: impl AsRef<FsPath>, config: SnapshotConfig) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::store(format!("open {}", dir.display()), e))?
            .with_automatic_cleanup(true);
        Self::new(Arc::new(local_store::LocalStore::new(fs)), config)
    }

    /// A store under [`default_data_dir`].
    pub fn local_default(config: SnapshotConfig) -> Result<Self> {
        let dir = default_data_dir().ok_or_else(|| Error::InvalidInput {
            message: "no data directory: set CMA_DATA_DIR or HOME".into(),
        })?;
        Self::local(dir, config)
    }

    /// A store in memory (tests, ephemeral use).
    pub fn in_memory(config: SnapshotConfig) -> Result<Self> {
        Self::new(Arc::new(InMemory::new()), config)
    }

    /// A store from a URL: `file:///dir` (as [`local`](Self::local) writes it, but the
    /// directory is not created until something is stored), `memory:///`, and with the matching feature
    /// `s3://bucket/prefix` (`s3`), `gs://bucket/prefix` (`gcs`), `az://container/prefix`
    /// (`azure`). `options` are the backend's configuration keys (for S3, e.g.
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`).
    pub fn from_url<I, K, V>(url: &str, options: I, config: SnapshotConfig) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let parsed = url::Url::parse(url).map_err(|e| Error::InvalidInput {
            message: format!("bad store URL {url:?}: {e}"),
        })?;
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| Error::store(format!("open {url}"), e))?;
        // A `file` URL is the file system's root and a prefix: the same root, with large objects
        // written around the page cache as in `local`.
        let store: Box<dyn ObjectStore> = if parsed.scheme() == "file" {
            Box::new(local_store::LocalStore::new(
                object_store::local::LocalFileSystem::new(),
            ))
        } else {
            store
        };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Self::new(store, config)
    }

    /// The underlying object store (for tests and tools).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    async fn timed<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::store(what(), e)),
            Err(_) => Err(Error::Timeout {
                operation: what(),
                after: self.config.op_timeout,
            }),
        }
    }

    /// Read a whole object of at most `limit` bytes: a larger one (as its size says, or as its
    /// body turns out) is [`Error::TooLarge`] after holding at most `limit` bytes of it.
    async fn get_bytes(&self, key: &Path, limit: u64) -> Result<Bytes> {
        self.get_bounded(key, None, limit).await
    }

    /// Read `range` of an object: exactly its bytes, or an error; a store that answers with
    /// more is not believed past the range's length.
    async fn get_range(&self, key: &Path, range: std::ops::Range<u64>) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        let data = self.get_bounded(key, Some(range.clone()), want).await?;
        if data.len() as u64 != want {
            return Err(Error::corrupt(
                format!("object {key}"),
                format!(
                    "bytes {}..{} came back as {} bytes",
                    range.start,
                    range.end,
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    async fn get_bounded(
        &self,
        key: &Path,
        range: Option<std::ops::Range<u64>>,
        limit: u64,
    ) -> Result<Bytes> {
        let store = self.store.clone();
        let k = key.clone();
        let opts = object_store::GetOptions {
            range: range.clone().map(object_store::GetRange::Bounded),
            ..Default::default()
        };
        let what = || match &range {
            Some(r) => format!("get {key} bytes {}..{}", r.start, r.end),
            None => format!("get {key}"),
        };
        let got = self
            .timed(what, async move {
                let got = store.get_opts(&k, opts).await?;
                let claimed = got.range.end.saturating_sub(got.range.start);
                if claimed > limit {
                    return Ok(Err(claimed));
                }
                if let object_store::GetResultPayload::File(..) = got.payload {
                    // A file on this host: its length is what the file system says.
                    return got.bytes().await.map(Ok);
                }
                // A body from the network: count it as it comes, whatever it announced.
                let mut body = got.into_stream();
                let mut pieces: Vec<Bytes> = Vec::new();
                let mut held = 0u64;
                while let Some(piece) = body.next().await {
                    let piece = piece?;
                    held += piece.len() as u64;
                    if held > limit {
                        return Ok(Err(held));
                    }
                    pieces.push(piece);
                }
                Ok(Ok(match pieces.len() {
                    0 => Bytes::new(),
                    1 => pieces.swap_remove(0),
                    _ => Bytes::from(pieces.concat()),
                }))
            })
            .await?;
        got.map_err(|size| Error::TooLarge {
            what: format!("object {key}"),
            size,
            limit,
        })
    }

    async fn put(&self, key: &Path, data: Bytes, mode: PutMode) -> Result<()> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.timed(
            || format!("put {key}"),
            self.store.put_opts(key, PutPayload::from(data), opts),
        )
        .await
        .map(|_| ())
    }

    async fn head(&self, key: &Path) -> Result<Option<object_store::ObjectMeta>> {
        match self
            .timed(|| format!("head {key}"), self.store.head(key))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(Error::Store { source, .. }) if is_not_found(&source) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_key(&self, key: &Path) -> Result<()> {
        match self
            .timed(|| format!("delete {key}"), self.store.delete(key))
            .await
        {
            Err(Error::Store { source, .. }) if is_not_found(&source) => Ok(()),
            r => r,
        }
    }

    async fn list_all(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let p = Path::from(prefix);
        let store = self.store.clone();
        self.timed(|| format!("list {prefix}"), async move {
            store.list(Some(&p)).try_collect::<Vec<_>>().await
        })
        .await
    }

    // ---- reading manifests ----

    async fn manifest_key_of(&self, id: &SnapshotId) -> Result<Path> {
        let raw = match self.get_bytes(&id_key(id), MAX_ID_RECORD).await {
            Ok(b) => b,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                return Err(Error::NotFound {
                    what: id.as_str().to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let key = std::str::from_utf8(&raw)
            .ok()
            .map(Path::from)
            .filter(|k| parse_manifest_key(k).is_some_and(|(_, _, kid)| kid == *id))
            .ok_or_else(|| {
                Error::corrupt(format!("id entry {}", id.as_str()), "bad manifest key")
            })?;
        Ok(key)
    }

    async fn read_manifest_at(&self, key: &Path, id: &SnapshotId) -> Result<SnapshotManifest> {
        let fetcher = fetch::Fetcher::new(self).await?;
        self.read_manifest_with(&fetcher, key, id).await
    }

    /// [`read_manifest_at`](Self::read_manifest_at) with a fetcher of the caller's.
    async fn read_manifest_with(
        &self,
        fetcher: &fetch::Fetcher,
        key: &Path,
        id: &SnapshotId,
    ) -> Result<SnapshotManifest> {
        let stored = match self
            .get_bytes(key, manifest::MAX_MANIFEST_BYTES as u64)
            .await
        {
            Ok(b) => b,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                return Err(Error::NotFound {
                    what: id.as_str().to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut m = SnapshotManifest::decode(&stored, Some(id))?;
        match parse_manifest_key(key) {
            Some((session, _, _)) if session == m.session_id => {}
            _ => {
                return Err(Error::corrupt(
                    format!("manifest {}", id.as_str()),
                    "stored under another session",
                ));
            }
        }
        let table = self.load_table(fetcher, id, &m.table).await?;
        let chunks = tables::decode_chunks(&table, &format!("manifest {}", id.as_str()))?;
        m.set_chunks(chunks)?;
        Ok(m)
    }

    /// Fetch, verify and join the chunks of a table.
    async fn load_table(
        &self,
        fetcher: &fetch::Fetcher,
        id: &SnapshotId,
        refs: &[ChunkRef],
    ) -> Result<Vec<u8>> {
        let total: u64 = refs.iter().map(|c| u64::from(c.size)).sum();
        if total > MAX_TABLE_BYTES {
            return Err(Error::TooLarge {
                what: format!("table of snapshot {}", id.as_str()),
                size: total,
                limit: MAX_TABLE_BYTES,
            });
        }
        // Sized by what arrives (each part verified), not by what the manifest claims.
        let mut out = Vec::new();
        for part in fetcher.fetch(id, refs).await? {
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// Read and verify a snapshot's manifest.
    pub async fn manifest(&self, id: &SnapshotId) -> Result<SnapshotManifest> {
        let key = self.manifest_key_of(id).await?;
        self.read_manifest_at(&key, id).await
    }

    /// A session's snapshots, oldest first (from the listing; manifests are not read).
    pub async fn list(&self, session_id: &str) -> Result<Vec<SnapshotInfo>> {
        check_session_id(session_id)?;
        let mut out: Vec<SnapshotInfo> = self
            .list_all(&format!("manifests/{session_id}"))
            .await?
            .into_iter()
            .filter_map(|meta| {
                let (session, created_at, id) = parse_manifest_key(&meta.location)?;
                (session == session_id).then_some(SnapshotInfo {
                    id,
                    session_id: session,
                    created_at,
                    manifest_bytes: meta.size,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// The session's newest snapshot, verified; `None` if it has none.
    pub async fn latest(&self, session_id: &str) -> Result<Option<SnapshotManifest>> {
        match self.list(session_id).await?.pop() {
            None => Ok(None),
            Some(info) => {
                let key = manifest_key(session_id, info.created_at, &info.id);
                self.read_manifest_at(&key, &info.id).await.map(Some)
            }
        }
    }

    /// Delete a snapshot (its manifest; chunks go at the next [`gc`](Self::gc)).
    pub async fn delete(&self, id: &SnapshotId) -> Result<()> {
        let key = self.manifest_key_of(id).await?;
        self.delete_key(&key).await?;
        self.delete_key(&id_key(id)).await
    }

    /// Apply a retention policy to every session.
    pub async fn apply_retention(&self, policy: RetentionPolicy) -> Result<RetentionReport> {
        let now = Utc::now();
        let within =
            chrono::Duration::from_std(policy.keep_within).unwrap_or(chrono::Duration::MAX);
        let mut by_session: HashMap<String, Vec<(DateTime<Utc>, SnapshotId, Path)>> =
            HashMap::new();
        for meta in self.list_all("manifests").await? {
            if let Some((session, created, id)) = parse_manifest_key(&meta.location) {
                by_session
                    .entry(session)
                    .or_default()
                    .push((created, id, meta.location));
            }
        }
        let mut report = RetentionReport::default();
        for (_, mut snaps) in by_session {
            snaps.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
            for (i, (created, id, key)) in snaps.into_iter().enumerate() {
                let young = now.signed_duration_since(created) < within;
                if i < policy.keep_last || young {
                    report.kept += 1;
                } else {
                    self.delete_key(&key).await?;
                    self.delete_key(&id_key(&id)).await?;
                    report.deleted.push(id);
                }
            }
        }
        Ok(report)
    }
}

mod gc;
mod restore;
mod save;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_round_trip() {
        let id = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        let t = Utc.timestamp_micros(1_700_000_000_123_456).unwrap();
        let key = manifest_key("sesn_1", t, &id);
        assert_eq!(parse_manifest_key(&key), Some(("sesn_1".into(), t, id)));
    }

    #[tokio::test]
    async fn a_file_url_store_is_the_local_store_under_that_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("snaps");
        let url = format!("file://{}", root.display());
        let store =
            SnapshotStore::from_url(&url, std::iter::empty::<(&str, &str)>(), Default::default())
                .unwrap();
        // A large object (written around the page cache) and a small one land as files.
        let big = vec![7u8; local_store::DIRECT_MIN + 3];
        for (key, body) in [("packs/ab/big", big.clone()), ("ids/small", b"x".to_vec())] {
            store
                .object_store()
                .put(
                    &Path::from(key),
                    PutPayload::from(local_store::page_aligned(&body)),
                )
                .await
                .unwrap();
            assert_eq!(std::fs::read(root.join(key)).unwrap(), body, "{key}");
        }
        if local_store::takes_direct(&root) {
            assert!(
                local_store::written_directly(&root.join("packs/ab/big")),
                "not written around the page cache"
            );
        }
        let local = SnapshotStore::local(&root, SnapshotConfig::default()).unwrap();
        let got = local
            .object_store()
            .get(&Path::from("packs/ab/big"))
            .await
            .unwrap();
        assert_eq!(got.bytes().await.unwrap(), big);
    }

    #[test]
    fn odd_chunk_sizes_are_refused_for_saving() {
        for odd in [
            ChunkerParams {
                min_size: 16 * 1024 + 1,
                ..ChunkerParams::default()
            },
            ChunkerParams {
                avg_size: 64 * 1024 - 1,
                ..ChunkerParams::default()
            },
            ChunkerParams {
                max_size: 256 * 1024 + 1,
                ..ChunkerParams::default()
            },
        ] {
            let config = SnapshotConfig {
                chunker: odd,
                ..SnapshotConfig::default()
            };
            let err = SnapshotStore::in_memory(config).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        assert!(SnapshotStore::in_memory(SnapshotConfig::default()).is_ok());
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(check_session_id("sesn_01ABC-x.y").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
    }
}
