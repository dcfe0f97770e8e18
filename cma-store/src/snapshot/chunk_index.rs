//! The chunk index: which pack holds each chunk, at which offset, how long.
//!
//! Manifests name chunks by content hash only, so packs can be rewritten (see `gc`) without
//! touching any snapshot; the index says where a chunk is now. It is a set of immutable index
//! objects, `index/<sha256 of the object, hex>`: each save adds one for the packs it wrote, and
//! garbage collection replaces many with one. A chunk may be listed more than once (two saves
//! stored it at the same time, or a collection copied it and did not yet delete the old copy);
//! readers try each place in turn. Every chunk read is verified by its hash whatever the index
//! says, so a wrong entry can cost a failed read, never wrong data.
//!
//! Index object: `cmaidx01`, `u32` pack count, the packs' ids (32 bytes each), `u32` record
//! count, then per record the chunk's name (its hash, see `ChunkHash`), `u32` size, `u32` pack number, `u32` offset,
//! `u32` stored length (little-endian). Its name covers every byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::chunk::{MAX_CHUNK_BYTES, MAX_STORED_CHUNK_BYTES};
use super::error::{Error, Result};
use super::manifest::ChunkHash;
use super::pack::{MAX_PACK_BYTES, PackId};
use super::{SnapshotStore, is_not_found};

const MAGIC: &[u8; 8] = b"cmaidx01";
const RECORD: usize = 48;
/// Largest index object read, against a hostile or corrupt store.
pub(crate) const MAX_INDEX_OBJECT: u64 = 512 << 20;
/// Records per index object written by garbage collection.
pub(crate) const RECORDS_PER_OBJECT: usize = 100_000;

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub pack: PackId,
    pub offset: u32,
    pub len: u32,
}

/// One record of an index object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexRecord {
    pub hash: ChunkHash,
    pub size: u32,
    pub at: Location,
}

/// The key of an index object.
pub(crate) fn index_key(name: &str) -> Path {
    Path::from(format!("index/{name}"))
}

/// Serialize records; returns the object's name and bytes.
pub(crate) fn encode(records: &[IndexRecord]) -> (String, Bytes) {
    let mut packs: Vec<PackId> = Vec::new();
    let mut numbers: HashMap<PackId, u32> = HashMap::new();
    for r in records {
        numbers.entry(r.at.pack).or_insert_with(|| {
            packs.push(r.at.pack);
            (packs.len() - 1) as u32
        });
    }
    let mut out = Vec::with_capacity(16 + packs.len() * 32 + records.len() * RECORD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in &packs {
        out.extend_from_slice(&p.0);
    }
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.hash.0);
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&numbers[&r.at.pack].to_le_bytes());
        out.extend_from_slice(&r.at.offset.to_le_bytes());
        out.extend_from_slice(&r.at.len.to_le_bytes());
    }
    let name = ChunkHash::sha256_of(&out).to_hex();
    (name, Bytes::from(out))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse and verify an index object against its name.
pub(crate) fn decode(name: &str, data: &[u8]) -> Result<Vec<IndexRecord>> {
    let what = || format!("index {name}");
    if ChunkHash::sha256_of(data).to_hex() != name {
        return Err(Error::corrupt(what(), "does not hash to its name"));
    }
    let bad = || Error::corrupt(what(), "malformed");
    if data.len() < 16 || &data[..8] != MAGIC {
        return Err(bad());
    }
    let packs_n = u32_at(data, 8) as usize;
    let packs_end = 12 + packs_n.checked_mul(32).ok_or_else(bad)?;
    if data.len() < packs_end + 4 {
        return Err(bad());
    }
    let packs: Vec<PackId> = data[12..packs_end]
        .chunks_exact(32)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            ChunkHash(id)
        })
        .collect();
    let n = u32_at(data, packs_end) as usize;
    let body = &data[packs_end + 4..];
    if Some(body.len()) != n.checked_mul(RECORD) {
        return Err(bad());
    }
    body.chunks_exact(RECORD)
        .map(|r| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&r[..32]);
            let pack = *packs.get(u32_at(r, 36) as usize).ok_or_else(bad)?;
            // A place no writer makes (a chunk or a range larger than any chunk, past the end
            // of any pack) would size a read or a buffer: the object is damaged.
            let (size, offset, len) = (u32_at(r, 32), u32_at(r, 40), u32_at(r, 44));
            if size > MAX_CHUNK_BYTES
                || len > MAX_STORED_CHUNK_BYTES
                || u64::from(offset) + u64::from(len) > MAX_PACK_BYTES
            {
                return Err(Error::corrupt(
                    what(),
                    format!("a record places {size} bytes at {offset}+{len}, beyond any chunk"),
                ));
            }
            Ok(IndexRecord {
                hash: ChunkHash(hash),
                size: u32_at(r, 32),
                at: Location {
                    pack,
                    offset: u32_at(r, 40),
                    len: u32_at(r, 44),
                },
            })
        })
        .collect()
}

/// Where a chunk is, compactly: the pack by number in [`ChunkIndex::packs`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    len: u32,
}

/// The index as loaded: every index object's records merged.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkIndex {
    objects: BTreeMap<String, Arc<Vec<IndexRecord>>>,
    /// Index objects that failed verification, with why.
    bad: BTreeMap<String, String>,
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    first: HashMap<ChunkHash, Slot>,
    /// Further places of chunks listed more than once.
    more: HashMap<ChunkHash, Vec<Slot>>,
}

impl ChunkIndex {
    /// Take in the good index object `name`.
    fn insert_object(&mut self, name: String, records: Vec<IndexRecord>) {
        self.add(&records);
        self.objects.insert(name, Arc::new(records));
    }

    fn add(&mut self, records: &[IndexRecord]) {
        for r in records {
            let next = self.packs.len() as u32;
            let pack = *self.pack_numbers.entry(r.at.pack).or_insert(next);
            if pack == next {
                self.packs.push(r.at.pack);
            }
            let slot = Slot {
                pack,
                offset: r.at.offset,
                len: r.at.len,
            };
            match self.first.get(&r.hash) {
                None => {
                    self.first.insert(r.hash, slot);
                }
                Some(s) if (s.pack, s.offset) == (slot.pack, slot.offset) => {}
                Some(_) => self.more.entry(r.hash).or_default().push(slot),
            }
        }
    }

    fn rebuild(&mut self) {
        let objects = std::mem::take(&mut self.objects);
        let bad = std::mem::take(&mut self.bad);
        *self = Self::default();
        for records in objects.values() {
            self.add(records);
        }
        self.objects = objects;
        self.bad = bad;
    }

    fn location(&self, s: &Slot) -> Location {
        Location {
            pack: self.packs[s.pack as usize],
            offset: s.offset,
            len: s.len,
        }
    }

    /// Every place the chunk is listed, the first listed first.
    pub fn locate(&self, hash: &ChunkHash) -> Vec<Location> {
        let Some(first) = self.first.get(hash) else {
            return Vec::new();
        };
        let mut out = vec![self.location(first)];
        if let Some(more) = self.more.get(hash) {
            out.extend(more.iter().map(|s| self.location(s)));
        }
        out
    }

    /// The stored length of a chunk the index lists.
    pub fn stored_len(&self, hash: &ChunkHash) -> Option<u32> {
        self.first.get(hash).map(|s| s.len)
    }

    /// Names of the index objects loaded (good ones).
    pub fn object_names(&self) -> impl Iterator<Item = &String> {
        self.objects.keys()
    }

    /// Every record of every good index object.
    pub fn records(&self) -> impl Iterator<Item = &IndexRecord> {
        self.objects.values().flat_map(|r| r.iter())
    }

    /// The first index object that failed verification, as an error.
    pub fn damage(&self) -> Option<Error> {
        self.bad
            .iter()
            .next()
            .map(|(name, why)| Error::corrupt(format!("index {name}"), why.clone()))
    }
}

/// The index shared by a store's clones, refreshed from the store when it changed.
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    current: std::sync::Mutex<Arc<ChunkIndex>>,
    refresh: tokio::sync::Mutex<()>,
    /// Whether the index was ever loaded from the store.
    loaded: std::sync::atomic::AtomicBool,
}

impl SnapshotStore {
    /// The index as last loaded (loading it if it never was): enough for readers, which verify
    /// every chunk and reload the index when a chunk is not where it says.
    pub(crate) async fn recent_index(&self) -> Result<Arc<ChunkIndex>> {
        if self.index.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(self.cached_index());
        }
        self.load_index().await
    }

    /// Add the index object `name` this store just wrote to the cached index, so the next
    /// save's [`load_index`](Self::load_index) finds it listed and known, rather than reading
    /// it back. Blocking (it copies the index): run on the blocking pool. Skipped while the
    /// index is being loaded or changed meanwhile (the next load reads the object instead).
    /// (The cache is a hint for what the store holds: `load_index` always squares it with the
    /// listing, so an object added here that a collection removes meanwhile is dropped again
    /// there.)
    pub(super) fn remember_index(&self, name: String, records: Vec<IndexRecord>) {
        let Ok(_loading) = self.index.refresh.try_lock() else {
            return;
        };
        let cur = self.cached_index();
        if cur.objects.contains_key(&name) || cur.bad.contains_key(&name) {
            return;
        }
        let mut next = (*cur).clone();
        next.insert_object(name, records);
        let mut current = self.index.current.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, &cur) {
            *current = Arc::new(next);
        }
    }

    pub(super) fn cached_index(&self) -> Arc<ChunkIndex> {
        self.index
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The index as the store holds it now: lists `index/` and reads the objects not yet
    /// loaded (one listing when nothing changed). Damaged objects are recorded, not fatal.
    pub(crate) async fn load_index(&self) -> Result<Arc<ChunkIndex>> {
        let _guard = self.index.refresh.lock().await;
        let listed = self.list_all("index").await?;
        let names: BTreeMap<String, u64> = listed
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                (m.location.parts().count() == 2 && ChunkHash::from_hex(&name).is_some())
                    .then_some((name, m.size))
            })
            .collect();
        let cur = self.cached_index();
        let same = cur.objects.len() + cur.bad.len() == names.len()
            && names
                .keys()
                .all(|n| cur.objects.contains_key(n) || cur.bad.contains_key(n));
        if same {
            self.index
                .loaded
                .store(true, std::sync::atomic::Ordering::Release);
            return Ok(cur);
        }
        let mut next = (*cur).clone();
        let before = next.objects.len();
        next.objects.retain(|n, _| names.contains_key(n));
        next.bad.retain(|n, _| names.contains_key(n));
        if next.objects.len() != before {
            next.rebuild();
        }
        let todo: Vec<(String, u64)> = names
            .into_iter()
            .filter(|(n, _)| !next.objects.contains_key(n) && !next.bad.contains_key(n))
            .collect();
        let loaded: Vec<(String, Option<Result<Vec<IndexRecord>>>)> = futures::stream::iter(todo)
            .map(|(name, size)| async move {
                if size > MAX_INDEX_OBJECT {
                    let e = Error::corrupt(format!("index {name}"), "too large");
                    return Ok::<_, Error>((name, Some(Err(e))));
                }
                match self.get_bytes(&index_key(&name), MAX_INDEX_OBJECT).await {
                    Ok(b) => {
                        let n = name.clone();
                        let parsed = tokio::task::spawn_blocking(move || decode(&n, &b))
                            .await
                            .map_err(super::joined)?;
                        Ok((name, Some(parsed)))
                    }
                    // Replaced by a garbage collection meanwhile.
                    Err(Error::Store { source, .. }) if is_not_found(&source) => Ok((name, None)),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(self.config.download_concurrency)
            .try_collect()
            .await?;
        for (name, parsed) in loaded {
            match parsed {
                Some(Ok(records)) => next.insert_object(name, records),
                Some(Err(e)) => {
                    tracing::warn!(index = %name, error = %e, "an index object fails verification");
                    next.bad.insert(name, e.to_string());
                }
                None => {}
            }
        }
        let next = Arc::new(next);
        *self.index.current.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
        self.index
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(next)
    }

    /// Write an index object for `records`; returns its name.
    pub(crate) async fn write_index(&self, records: &[IndexRecord]) -> Result<String> {
        let (name, bytes) = encode(records);
        self.put(&index_key(&name), bytes, object_store::PutMode::Overwrite)
            .await?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, pack: u8) -> IndexRecord {
        IndexRecord {
            hash: ChunkHash::of(&[i]),
            size: u32::from(i) * 10,
            at: Location {
                pack: ChunkHash::of(&[pack, pack]),
                offset: u32::from(i) * 100,
                len: u32::from(i) + 1,
            },
        }
    }

    #[test]
    fn index_objects_round_trip_and_are_checked_against_their_name() {
        let records = vec![rec(1, 1), rec(2, 2), rec(3, 1)];
        let (name, bytes) = encode(&records);
        assert_eq!(decode(&name, &bytes).unwrap(), records);
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 1;
            assert!(decode(&name, &bad).is_err(), "byte {i}");
        }
        let (empty, bytes) = encode(&[]);
        assert!(decode(&empty, &bytes).unwrap().is_empty());
    }

    #[test]
    fn a_chunk_listed_twice_has_two_places() {
        let mut idx = ChunkIndex::default();
        let a = rec(1, 1);
        let mut b = a;
        b.at.pack = ChunkHash::of(b"other");
        idx.add(&[a, a, b]);
        assert_eq!(idx.locate(&a.hash), vec![a.at, b.at]);
        assert_eq!(idx.stored_len(&a.hash), Some(2));
        assert!(idx.locate(&ChunkHash::of(b"none")).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saves_own_index_object_is_known_without_reading_it_back() {
        use crate::{SnapshotConfig, SnapshotStore};
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("f"), vec![5u8; 300_000]).unwrap();
        let store =
            SnapshotStore::local(dir.path().join("store"), SnapshotConfig::default()).unwrap();
        let mut saved = Vec::new();
        for round in 0..2u8 {
            std::fs::write(ws.join("g"), vec![round; 100_000]).unwrap();
            let m = store
                .save_dir("sesn_1", std::fs::File::open(&ws).unwrap(), None)
                .await
                .unwrap();
            saved.push(m);
            let listed: std::collections::BTreeSet<String> =
                std::fs::read_dir(dir.path().join("store/index"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
            // (Added in the background once the save has returned: waited for, a while.)
            let mut cached = store.cached_index();
            for _ in 0..500 {
                if cached.object_names().count() == listed.len() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                cached = store.cached_index();
            }
            let known: std::collections::BTreeSet<String> =
                cached.object_names().cloned().collect();
            assert_eq!(known, listed, "round {round}");
            for m in &saved {
                for c in m.chunks.iter().chain(&m.table).chain(&m.files) {
                    assert!(cached.stored_len(&c.hash).is_some(), "round {round}");
                }
            }
        }
    }
}
