//! The store side of a save, as a pipeline that keeps both cores busy: chunks are hashed (and
//! new ones compressed) on the blocking pool (see the `hashing` module), several jobs at once,
//! while the walk reads ahead and finished packs upload; the results are taken back in
//! archive order and named in `inflight/` records (see the module docs of `snapshot` for
//! why): the parent's chunks at the start, beside the walk (see `name_parent`); a batch that
//! takes chunks as stored, before it looks at the store; chunks the save stores itself, in a
//! record written just before their pack. A save's records are removed when its state is
//! dropped, whether it ended or was cancelled. New chunks are copied into the pack being
//! filled as soon as they are taken back (so the buffers of their job return to the save's
//! pool at once, see the `buffers` module), and a pack is sealed and uploaded once it reaches
//! [`SnapshotConfig::pack_bytes`], always after the record that names every chunk in it.
//! Memory stays bounded: the walk's queue, [`MAX_JOBS`] jobs of at most a few MiB, one batch's
//! chunk list (records hold at most a batch's worth of names, the parent's split likewise),
//! the pack being filled and the packs uploading.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::buffers::BufferPool;
use super::chunk::{self, Coding};
use super::chunk_index::{ChunkIndex, IndexRecord, Location};
use super::hashing::{Hashed, Payload, chunk_len};
use super::pack::{PackBuilder, pack_key};
use super::*;

/// Hashing jobs in flight at once (each a unit of small files or about 1 MiB of a big file).
pub(super) const MAX_JOBS: usize = 8;
/// Most chunks named by one `inflight/` record.
const MAX_BATCH_PIECES: usize = 4096;

/// What naming the parent's chunks found (see [`SnapshotStore::name_parent`]).
pub(super) enum ParentNamed {
    /// The parent's manifest was not in the store when the save started.
    Missing,
    Named {
        /// The index, read after the records.
        index: Arc<ChunkIndex>,
        /// Whether the parent's manifest was still there then.
        still_there: bool,
    },
}

/// A pack uploaded: its size, its index records, its buffer if it can be reused.
type Uploaded = (u64, Vec<IndexRecord>, Option<Vec<u8>>);

struct ParentInfo {
    key: Path,
    chunks: HashMap<ChunkHash, u32>,
}

/// The state of one save's store side.
pub(super) struct SaveState {
    pub save_id: uuid::Uuid,
    pub seq: u32,
    pub first_record: Option<Instant>,
    /// Chunks known to be in the store (or in a pack of this save), with their stored sizes.
    confirmed: HashMap<ChunkHash, u32>,
    parent: Option<ParentInfo>,
    pub index: Arc<ChunkIndex>,
    pack: PackBuilder,
    uploads: JoinSet<Result<Uploaded>>,
    /// Where packs' buffers come from and go back to once uploaded.
    pool: BufferPool,
    /// Index records of the packs uploaded so far.
    pub records: Vec<IndexRecord>,
    /// Bytes of packs uploaded so far.
    pub uploaded_bytes: u64,
    /// New chunks already in the pack being filled (or an earlier one), with their stored
    /// sizes: a chunk met twice is packed once.
    appended: HashMap<ChunkHash, u32>,
    /// The parent, if it was deleted while its chunks were named: a chunk of it that is gone
    /// from the store then means the parent is gone, not that the store is damaged.
    parent_gone: Option<String>,
    batch: Vec<Batched>,
    batch_bytes: usize,
    /// The store, to remove the save's records when the state goes (see `Drop`).
    store: SnapshotStore,
    /// Set while the manifest is being written: a save that fails or is cancelled then may
    /// have written it all the same, so its records stay (until a collection finds them
    /// stale) to keep its chunks.
    pub commit_in_doubt: bool,
}

impl Drop for SaveState {
    /// The buffer of the pack being filled goes back to the pool (after a save, the empty pack
    /// that would have followed the last one holds a whole pack's buffer: dropped, each save
    /// would fault a new one in).
    ///
    /// The save's `inflight/` records are removed in a task of their own, whether the save
    /// ended or was cancelled, unless whether its manifest was written is not known (see
    /// `commit_in_doubt`). Nothing waits for that task; a record left behind, as when no
    /// runtime is there any more, is removed by a collection once stale.
    fn drop(&mut self) {
        let pack = std::mem::replace(&mut self.pack, PackBuilder::with_buffer(Vec::new()));
        self.pool.give(pack.into_buffer());
        if self.seq > 0
            && !self.commit_in_doubt
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (store, save_id, records) = (self.store.clone(), self.save_id, self.seq);
            rt.spawn(async move { store.drop_records(save_id, records).await });
        }
    }
}

/// A chunk accepted, waiting for its batch's record.
struct Batched {
    hash: ChunkHash,
    size: u32,
    held: Held,
}

enum Held {
    /// Taken from the parent, unread.
    Parent,
    /// Expected to be stored already: its content, in case it is not.
    Known(Bytes),
    /// New: its stored form is in the pack being filled already (copied there when accepted,
    /// so the job's buffer goes back to the pool at once). The pack is uploaded only after the
    /// record naming it, so a collection never sees it unnamed.
    Appended(u32),
    /// Stored form ready, but the store (or the parent) may have it already: packed only if
    /// it still lacks it once the batch is named.
    Ready(Payload),
}

impl SnapshotStore {
    /// A save's store side, with the parent's chunks trusted if configured (the parent's
    /// manifest, and where it is).
    pub(super) async fn save_state(
        &self,
        parent: Option<(&SnapshotManifest, &Path)>,
        index: Arc<ChunkIndex>,
        pool: BufferPool,
    ) -> Result<SaveState> {
        let parent = match parent {
            Some((m, key)) if self.config.trust_parent_chunks => Some(ParentInfo {
                key: key.clone(),
                chunks: m
                    .chunks
                    .iter()
                    .chain(&m.table)
                    .chain(&m.files)
                    .map(|c| (c.hash, c.stored_size))
                    .collect(),
            }),
            _ => None,
        };
        Ok(SaveState {
            save_id: uuid::Uuid::new_v4(),
            seq: 0,
            first_record: None,
            // (The parent's chunks move in whole once named, see `name_parent`.)
            confirmed: HashMap::new(),
            parent,
            index,
            pack: PackBuilder::with_buffer(pool.take(self.pack_capacity())),
            uploads: JoinSet::new(),
            pool,
            records: Vec::new(),
            uploaded_bytes: 0,
            appended: HashMap::new(),
            parent_gone: None,
            batch: Vec::new(),
            batch_bytes: 0,
            store: self.clone(),
            commit_in_doubt: false,
        })
    }

    /// Take hashed chunks in archive order; returns their refs once their batch is stored
    /// (possibly later: see [`flush`](Self::flush)).
    pub(super) async fn accept(
        &self,
        st: &mut SaveState,
        pieces: Vec<Hashed>,
        refs: &mut Vec<ChunkRef>,
    ) -> Result<()> {
        for p in pieces {
            // New data fills packs; chunks taken from the parent only fill the record.
            if p.payload.has_data() {
                st.batch_bytes += p.size as usize;
            }
            let held = match p.payload {
                Payload::Parent => Held::Parent,
                Payload::Known(data) => Held::Known(data),
                Payload::Encoded(_) | Payload::Raw(_)
                    if st.confirmed.contains_key(&p.hash) || st.appended.contains_key(&p.hash) =>
                {
                    // Met before in this save: placed (or to be placed) once.
                    Held::Parent
                }
                payload
                    if st.index.stored_len(&p.hash).is_some()
                        || st
                            .parent
                            .as_ref()
                            .is_some_and(|x| x.chunks.contains_key(&p.hash)) =>
                {
                    // Rare outside tables (the hashing job's view of the store said new). Held
                    // in memory of its own, not keeping a pooled buffer until the flush.
                    Held::Ready(payload.detached())
                }
                Payload::Encoded(blob) => {
                    let n = st.pack.push(p.hash, p.size, &blob)?;
                    st.appended.insert(p.hash, n);
                    Held::Appended(n)
                }
                Payload::Raw(data) => {
                    let n = st.pack.push_raw(self.coding(), p.hash, p.size, &data)?;
                    st.appended.insert(p.hash, n);
                    Held::Appended(n)
                }
            };
            st.batch.push(Batched {
                hash: p.hash,
                size: p.size,
                held,
            });
            if st.batch_bytes >= self.config.pack_bytes
                || st.pack.len() >= self.config.pack_bytes
                || st.batch.len() >= MAX_BATCH_PIECES
            {
                self.flush(st, refs).await?;
            }
        }
        Ok(())
    }

    /// Chunks accepted but not yet stored.
    pub(super) fn pending(st: &SaveState) -> usize {
        st.batch.len()
    }

    /// Name the chunks `named` in an `inflight/` record, wait for any collection that may
    /// predate it, then read the index and whether the parent still exists. Returns whether
    /// the parent's chunks may be taken unread (some are named and its manifest is there).
    async fn name(&self, st: &mut SaveState, named: &[ChunkHash]) -> Result<bool> {
        for (key, body) in records_of(st, named) {
            self.put(&key, body, PutMode::Overwrite).await?;
        }
        // First: no collection that predates the record may still run (one that starts
        // later sees the record). Only then the index and whether the parent (whose chunks
        // are taken unread) still exists, read side by side: read before the last such
        // collection is seen to have ended, either could predate its deletions.
        self.wait_for_gc().await?;
        let parent_key = st
            .parent
            .as_ref()
            .filter(|p| named.iter().any(|h| p.chunks.contains_key(h)))
            .map(|p| p.key.clone());
        let head_parent = async {
            match &parent_key {
                Some(k) => self.head(k).await.map(|h| Some(h.is_some())),
                None => Ok(None),
            }
        };
        let (index, parent_there) = tokio::join!(self.load_index(), head_parent);
        st.index = index?;
        let mut trusted = false;
        if let Some(there) = parent_there? {
            trusted = there;
            if !trusted {
                st.parent = None;
            }
        }
        Ok(trusted)
    }

    /// Name every chunk of the parent when a save starts, beside the walk rather than after
    /// it: if the parent is still there they are all confirmed, and the batches then name only
    /// the chunks that are new. The returned future checks that the parent's manifest (at
    /// `parent_key`) is there (it may come from memory, see `recent`, and a snapshot deleted
    /// since is no parent) while it writes the records, waits for any collection that may
    /// predate them, then reads the index and whether the parent is still there. It does not
    /// hold the state, so the save takes work and starts hashing meanwhile. Its outcome goes
    /// to [`parent_named`](Self::parent_named).
    pub(super) fn name_parent<'a>(
        &'a self,
        st: &mut SaveState,
        parent_key: Path,
    ) -> impl Future<Output = Result<ParentNamed>> + Send + use<'a> {
        let hashes: Vec<ChunkHash> = st
            .parent
            .as_ref()
            .map(|p| p.chunks.keys().copied().collect())
            .unwrap_or_default();
        let records = records_of(st, &hashes);
        async move {
            let there = |key: &Path| {
                let key = key.clone();
                async move { self.head(&key).await.map(|h| h.is_some()) }
            };
            let write = async {
                for (key, body) in records {
                    self.put(&key, body, PutMode::Overwrite).await?;
                }
                Ok::<_, Error>(())
            };
            let (was_there, written) = tokio::join!(there(&parent_key), write);
            if !was_there? {
                return Ok(ParentNamed::Missing);
            }
            written?;
            // As in `name`: the index and the parent read only once no collection that
            // predates the records runs.
            if !hashes.is_empty() {
                self.wait_for_gc().await?;
            }
            let (index, still) = tokio::join!(self.load_index(), there(&parent_key));
            Ok(ParentNamed::Named {
                index: index?,
                still_there: still?,
            })
        }
    }

    /// Take what [`name_parent`](Self::name_parent) found: the index, and the parent's chunks
    /// confirmed. A parent missing when the save started is [`Error::NotFound`]; one deleted
    /// while its chunks were named is not trusted (its chunks are looked for in the index).
    pub(super) fn parent_named(
        &self,
        st: &mut SaveState,
        named: ParentNamed,
        parent: Option<&SnapshotId>,
    ) -> Result<()> {
        let parent_id = || parent.map(|p| p.as_str().to_owned()).unwrap_or_default();
        let (index, still_there) = match named {
            ParentNamed::Missing => return Err(Error::NotFound { what: parent_id() }),
            ParentNamed::Named { index, still_there } => (index, still_there),
        };
        st.index = index;
        if !still_there {
            st.parent = None;
            st.parent_gone = Some(parent_id());
            return Ok(());
        }
        if let Some(p) = &mut st.parent {
            // Moved, not copied: nothing asks the parent's map after this.
            let chunks = std::mem::take(&mut p.chunks);
            if st.confirmed.is_empty() {
                st.confirmed = chunks;
            } else {
                st.confirmed.extend(chunks);
            }
        }
        Ok(())
    }

    /// Store the current batch: if it takes any chunk as stored, name its chunks in an
    /// `inflight/` record, wait for any collection that may predate the record and look at the
    /// store again; then pack what the store lacks (every pack is named again by a record of
    /// its own, see [`seal`](Self::seal)). Appends the batch's refs, in order.
    pub(super) async fn flush(&self, st: &mut SaveState, refs: &mut Vec<ChunkRef>) -> Result<()> {
        let batch = std::mem::take(&mut st.batch);
        st.batch_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let named: Vec<ChunkHash> = batch
            .iter()
            .map(|p| p.hash)
            .filter(|h| !st.confirmed.contains_key(h) && seen.insert(*h))
            .collect();
        // Chunks the save would take as stored need the whole protocol: named, collections
        // that predate the record waited for, the store looked at again. When there are none,
        // every chunk named here goes into one of this save's own packs, and the record written
        // before each pack (see `seal`) is all it needs: nothing in the store is relied on.
        let relies = batch
            .iter()
            .any(|p| !st.confirmed.contains_key(&p.hash) && relies_on_store(st, p));
        let trusted = relies && self.name(st, &named).await?;
        for p in batch {
            let stored = match st.confirmed.get(&p.hash) {
                Some(s) => *s,
                None => match self.place(st, p.hash, p.size, p.held, trusted)? {
                    Some(s) => s,
                    // A chunk of a snapshot saved before packs, with the parent not trusted.
                    None => match self.head(&chunk_key(&p.hash)).await? {
                        Some(meta) => {
                            let s = chunk_len(meta.size as usize)?;
                            st.confirmed.insert(p.hash, s);
                            s
                        }
                        None => return Err(gone(&p.hash, st.parent_gone.as_deref())),
                    },
                },
            };
            refs.push(ChunkRef {
                hash: p.hash,
                size: p.size,
                stored_size: stored,
            });
            if st.pack.len() >= self.config.pack_bytes {
                self.seal(st).await?;
            }
        }
        Ok(())
    }

    /// Where an unconfirmed chunk is: already stored (the parent's, or listed in the index),
    /// or appended to the pack now. `None` if it has no data and is not stored.
    fn place(
        &self,
        st: &mut SaveState,
        hash: ChunkHash,
        size: u32,
        held: Held,
        trusted: bool,
    ) -> Result<Option<u32>> {
        let parent = st
            .parent
            .as_ref()
            .filter(|_| trusted)
            .and_then(|p| p.chunks.get(&hash).copied());
        if let Some(s) = parent.or_else(|| st.index.stored_len(&hash)) {
            st.confirmed.insert(hash, s);
            return Ok(Some(s));
        }
        let n = match (st.appended.get(&hash), held) {
            // In a pack of this save already (met earlier, or accepted with this batch).
            (Some(n), _) => *n,
            (None, Held::Appended(n)) => n,
            // Expected to be stored, but it is not (a collection removed it): compress now.
            (None, Held::Known(data)) => {
                let n = st
                    .pack
                    .push(hash, size, &chunk::encode(&data, self.coding())?)?;
                st.appended.insert(hash, n);
                n
            }
            (None, Held::Ready(Payload::Encoded(blob))) => {
                let n = st.pack.push(hash, size, &blob)?;
                st.appended.insert(hash, n);
                n
            }
            (None, Held::Ready(Payload::Raw(data))) => {
                let n = st.pack.push_raw(self.coding(), hash, size, &data)?;
                st.appended.insert(hash, n);
                n
            }
            (None, Held::Ready(Payload::Known(data))) => {
                let n = st
                    .pack
                    .push(hash, size, &chunk::encode(&data, self.coding())?)?;
                st.appended.insert(hash, n);
                n
            }
            (None, Held::Parent | Held::Ready(Payload::Parent)) => return Ok(None),
        };
        st.confirmed.insert(hash, n);
        Ok(Some(n))
    }

    /// Room a pack's buffer starts with: the target size, and the one chunk (at most 256 KiB
    /// stored) and, in most packs, the trailer a pack may run over it by.
    fn pack_capacity(&self) -> usize {
        self.config.pack_bytes.saturating_add(1 << 20)
    }

    /// How this store's saves store chunks.
    pub(super) fn coding(&self) -> Coding {
        Coding {
            level: self.config.zstd_level,
            names: self.config.chunk_names,
        }
    }

    /// Seal the pack being filled and start its upload (waiting if enough are uploading): a
    /// record naming every chunk in it first, then the pack.
    pub(super) async fn seal(&self, st: &mut SaveState) -> Result<()> {
        if st.pack.is_empty() {
            return Ok(());
        }
        // Collect the uploads already done first: their buffers serve the next packs (a new
        // buffer costs a page fault per 4 KiB written into it).
        while let Some(done) = st.uploads.try_join_next() {
            Self::finished(st, done)?;
        }
        while st.uploads.len() >= self.config.upload_concurrency {
            self.finish_one(st).await?;
        }
        let next = PackBuilder::with_buffer(st.pool.take(self.pack_capacity()));
        let pack = std::mem::replace(&mut st.pack, next);
        // A record naming every chunk in the pack is written before the pack, by the pack's own
        // upload task (whatever the other uploads do): a collection that lists the pack then
        // lists the record too, since it lists packs first. Chunks a batch named already are
        // named again: a record per pack, never a wait.
        let hashes: Vec<ChunkHash> = pack.hashes().collect();
        let records = records_of(st, &hashes);
        let store = self.clone();
        st.uploads.spawn(async move {
            // (The pack is sealed meanwhile: only its upload waits for the record.)
            let write = async {
                for (key, body) in records {
                    store.put(&key, body, PutMode::Overwrite).await?;
                }
                Ok::<_, Error>(())
            };
            let seal = async {
                tokio::task::spawn_blocking(move || pack.seal())
                    .await
                    .map_err(joined)
            };
            let (written, sealed) = tokio::join!(write, seal);
            written?;
            let sealed = sealed?;
            let n = sealed.bytes.len() as u64;
            store
                .put(&pack_key(&sealed.id), sealed.bytes, PutMode::Overwrite)
                .await?;
            let buffer = sealed.buffer.try_into_mut().ok().map(Vec::from);
            let records = sealed
                .entries
                .iter()
                .map(|e| IndexRecord {
                    hash: e.hash,
                    size: e.size,
                    at: Location {
                        pack: sealed.id,
                        offset: e.offset,
                        len: e.len,
                    },
                })
                .collect();
            Ok((n, records, buffer))
        });
        Ok(())
    }

    async fn finish_one(&self, st: &mut SaveState) -> Result<()> {
        if let Some(done) = st.uploads.join_next().await {
            Self::finished(st, done)?;
        }
        Ok(())
    }

    fn finished(
        st: &mut SaveState,
        done: std::result::Result<Result<Uploaded>, tokio::task::JoinError>,
    ) -> Result<()> {
        let (n, records, buffer) = done.map_err(joined)??;
        st.uploaded_bytes += n;
        st.records.extend(records);
        if let Some(buffer) = buffer {
            st.pool.give(buffer);
        }
        Ok(())
    }

    /// Seal the last pack and wait for every upload.
    pub(super) async fn finish_uploads(&self, st: &mut SaveState) -> Result<()> {
        self.seal(st).await?;
        while !st.uploads.is_empty() {
            self.finish_one(st).await?;
        }
        Ok(())
    }

    /// Remove the save's `inflight/` records (best effort: stale ones are collected later).
    pub(super) async fn drop_records(&self, save_id: uuid::Uuid, records: u32) {
        for seq in 0..records {
            let key = Path::from(format!("inflight/{save_id}/{seq:08}"));
            if let Err(e) = self.delete_key(&key).await {
                tracing::warn!(error = %e, "could not remove a save record; gc removes it later");
            }
        }
    }
}

/// The `inflight/` records naming `names` (at most [`MAX_BATCH_PIECES`] each), numbered as
/// the save's next ones (taken now, so `SaveState`'s `Drop` removes them even if they are
/// still to be written).
fn records_of(st: &mut SaveState, names: &[ChunkHash]) -> Vec<(Path, Bytes)> {
    if names.is_empty() {
        return Vec::new();
    }
    if st.first_record.is_none() {
        st.first_record = Some(Instant::now());
    }
    names
        .chunks(MAX_BATCH_PIECES)
        .map(|part| {
            let mut body = String::with_capacity(part.len() * 65);
            for h in part {
                super::manifest::push_hex(&mut body, &h.0);
                body.push('\n');
            }
            let key = Path::from(format!("inflight/{}/{:08}", st.save_id, st.seq));
            st.seq += 1;
            (key, Bytes::from(body))
        })
        .collect()
}

/// Whether an unconfirmed chunk would be taken as stored rather than packed by this save:
/// the index or the parent says the store has it, or the save has no data for it.
fn relies_on_store(st: &SaveState, p: &Batched) -> bool {
    if st.appended.contains_key(&p.hash) {
        // In a pack of this save (named by the record written before that pack).
        return false;
    }
    matches!(p.held, Held::Parent | Held::Ready(Payload::Parent))
        || st.index.stored_len(&p.hash).is_some()
        || st
            .parent
            .as_ref()
            .is_some_and(|x| x.chunks.contains_key(&p.hash))
}

/// A chunk taken from the parent that the store lacks: the parent deleted during the save
/// (`parent_gone`), or a damaged store.
fn gone(hash: &ChunkHash, parent_gone: Option<&str>) -> Error {
    if let Some(parent) = parent_gone {
        return Error::NotFound {
            what: format!(
                "{parent} (the parent, deleted during the save: its chunk {} is gone)",
                hash.to_hex()
            ),
        };
    }
    Error::corrupt(
        format!("chunk {}", hash.to_hex()),
        "the parent snapshot's chunk is gone from the store",
    )
}
