//! Reading chunks back for a restore or a verify: each chunk is found through the index (or,
//! for snapshots saved before packs, under its own key `chunks/<2 hex>/<sha256>`), nearby
//! chunks of a pack are read with one ranged request, requests run with bounded concurrency
//! shared by every caller of one [`Fetcher`], and every chunk is verified (its stored form and
//! its content hash) before anyone sees it.
//!
//! A pack can disappear under a reader when a garbage collection rewrites it; the fetcher then
//! reloads the index once and reads the chunk's new place. A chunk found nowhere is
//! [`Error::MissingChunk`].

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::chunk;
use super::chunk_index::{ChunkIndex, Location};
use super::error::{Error, Result};
use super::manifest::{ChunkHash, ChunkRef};
use super::pack::{PackId, pack_key};
use super::{SnapshotStore, chunk_key, is_not_found, joined};
use crate::SnapshotId;

/// Chunks of one pack further apart than this are read with separate requests.
const MAX_GAP: u64 = 256 * 1024;
/// Longest single read.
const MAX_READ: u64 = 16 << 20;

/// Reads and verifies chunks. Clones share the index and the concurrency limit.
#[derive(Clone)]
pub(crate) struct Fetcher {
    store: SnapshotStore,
    index: Arc<std::sync::Mutex<Arc<ChunkIndex>>>,
    reads: Arc<Semaphore>,
}

/// One ranged read of a pack and the chunks in it.
struct Read {
    pack: PackId,
    range: Range<u64>,
    chunks: Vec<(ChunkRef, Location)>,
}

/// What became of one chunk in a round.
enum Outcome {
    Got(ChunkHash, Bytes),
    /// Its pack is gone, or its bytes there fail verification: try elsewhere.
    Retry(ChunkHash, Error),
}

impl Fetcher {
    /// A fetcher with the index as this process last loaded it (see
    /// [`fresh`](Self::fresh)): a chunk not found where it says reloads it.
    pub async fn new(store: &SnapshotStore) -> Result<Self> {
        let index = store.recent_index().await?;
        Ok(Self::with(store, index))
    }

    /// A fetcher with the index as the store holds it now (one listing): for questions about
    /// what is stored (every pack present?) rather than reads, which recover by themselves.
    pub async fn fresh(store: &SnapshotStore) -> Result<Self> {
        let index = store.load_index().await?;
        Ok(Self::with(store, index))
    }

    fn with(store: &SnapshotStore, index: Arc<ChunkIndex>) -> Self {
        Self {
            store: store.clone(),
            index: Arc::new(std::sync::Mutex::new(index)),
            reads: Arc::new(Semaphore::new(store.config.download_concurrency)),
        }
    }

    fn index(&self) -> Arc<ChunkIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every place the index lists a chunk in.
    pub fn locate(&self, hash: &ChunkHash) -> Vec<Location> {
        self.index().locate(hash)
    }

    /// The packs the chunks are listed in (first places), and the chunks listed nowhere.
    pub fn packs_of(&self, refs: &[ChunkRef]) -> (HashSet<PackId>, Vec<ChunkRef>) {
        let index = self.index();
        let mut packs = HashSet::new();
        let mut unlisted = Vec::new();
        for r in refs {
            match index.locate(&r.hash).first() {
                Some(at) => {
                    packs.insert(at.pack);
                }
                None => unlisted.push(*r),
            }
        }
        (packs, unlisted)
    }

    /// The content of `refs` (chunks of `snapshot`), in order, each verified.
    pub async fn fetch(&self, snapshot: &SnapshotId, refs: &[ChunkRef]) -> Result<Vec<Bytes>> {
        let mut wanted: HashMap<ChunkHash, ChunkRef> = HashMap::new();
        for r in refs {
            wanted.entry(r.hash).or_insert(*r);
        }
        let mut got: HashMap<ChunkHash, Bytes> = HashMap::with_capacity(wanted.len());
        let mut tried: HashSet<(ChunkHash, PackId, u32)> = HashSet::new();
        let mut failed: HashMap<ChunkHash, Error> = HashMap::new();
        let mut reloaded = false;
        loop {
            let index = self.index();
            let mut places: Vec<(ChunkRef, Location)> = Vec::new();
            let mut legacy: Vec<ChunkRef> = Vec::new();
            for r in wanted.values().filter(|r| !got.contains_key(&r.hash)) {
                let locs = index.locate(&r.hash);
                if locs.is_empty() {
                    if !tried.contains(&(r.hash, PackId::default(), 0)) {
                        tried.insert((r.hash, PackId::default(), 0));
                        legacy.push(*r);
                    }
                    continue;
                }
                if let Some(l) = locs
                    .into_iter()
                    .find(|l| !tried.contains(&(r.hash, l.pack, l.offset)))
                {
                    tried.insert((r.hash, l.pack, l.offset));
                    places.push((*r, l));
                }
            }
            if places.is_empty() && legacy.is_empty() {
                if got.len() == wanted.len() {
                    break;
                }
                // Every listed place failed: look at the store again once, then give up.
                if !reloaded {
                    reloaded = true;
                    let fresh = self.store.load_index().await?;
                    *self.index.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                    continue;
                }
                let (hash, err) = wanted
                    .keys()
                    .find(|h| !got.contains_key(h))
                    .map(|h| (*h, failed.remove(h)))
                    .unwrap_or_default();
                return Err(match err {
                    Some(Error::MissingChunk { .. }) | None => {
                        self.missing(snapshot, &hash, &index)
                    }
                    Some(e) => e,
                });
            }
            let reads = futures::stream::iter(plan(places))
                .map(|read| self.read(snapshot, read))
                .buffer_unordered(self.store.config.download_concurrency);
            let olds = futures::stream::iter(legacy)
                .map(|r| self.legacy(snapshot, r))
                .buffer_unordered(self.store.config.download_concurrency);
            let outcomes: Vec<Vec<Outcome>> =
                futures::stream::select(reads, olds).try_collect().await?;
            for o in outcomes.into_iter().flatten() {
                match o {
                    Outcome::Got(h, b) => {
                        got.insert(h, b);
                    }
                    Outcome::Retry(h, e) => {
                        failed.insert(h, e);
                    }
                }
            }
        }
        refs.iter()
            .map(|r| {
                got.get(&r.hash)
                    .cloned()
                    .ok_or_else(|| self.missing(snapshot, &r.hash, &self.index()))
            })
            .collect()
    }

    /// The error for a chunk found nowhere: a damaged index object explains it best.
    fn missing(&self, snapshot: &SnapshotId, hash: &ChunkHash, index: &ChunkIndex) -> Error {
        index.damage().unwrap_or_else(|| Error::MissingChunk {
            snapshot: snapshot.as_str().to_owned(),
            chunk: hash.to_hex(),
        })
    }

    async fn read(&self, snapshot: &SnapshotId, read: Read) -> Result<Vec<Outcome>> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| Error::io("fetch", std::io::Error::other("closed")))?;
        let key = pack_key(&read.pack);
        let fetched = self.store.get_range(&key, read.range.clone()).await;
        let data = match fetched {
            Ok(d) => d,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                return Ok(read
                    .chunks
                    .iter()
                    .map(|(r, _)| {
                        let e = Error::MissingChunk {
                            snapshot: snapshot.as_str().to_owned(),
                            chunk: r.hash.to_hex(),
                        };
                        Outcome::Retry(r.hash, e)
                    })
                    .collect());
            }
            // A range past the end of a truncated pack: damage, not a store failure.
            Err(e) => match self.store.head(&key).await? {
                Some(meta) if meta.size < read.range.end => {
                    let what = format!("pack {}", read.pack.to_hex());
                    return Ok(read
                        .chunks
                        .iter()
                        .map(|(r, _)| Outcome::Retry(r.hash, Error::corrupt(&what, "truncated")))
                        .collect());
                }
                _ => return Err(e),
            },
        };
        let start = read.range.start;
        tokio::task::spawn_blocking(move || {
            read.chunks
                .into_iter()
                .map(|(r, l)| {
                    let at = (u64::from(l.offset) - start) as usize;
                    let blob = data.get(at..at + l.len as usize).map(|s| data.slice_ref(s));
                    let blob = match blob {
                        Some(b) => b,
                        None => {
                            let e = Error::corrupt(format!("pack {}", l.pack.to_hex()), "short");
                            return Outcome::Retry(r.hash, e);
                        }
                    };
                    match chunk::decode(blob, &r.hash, r.size) {
                        Ok(b) => Outcome::Got(r.hash, b),
                        Err(e) => Outcome::Retry(r.hash, e),
                    }
                })
                .collect()
        })
        .await
        .map_err(joined)
    }

    /// A chunk of a snapshot saved before packs, under its own key.
    async fn legacy(&self, snapshot: &SnapshotId, r: ChunkRef) -> Result<Vec<Outcome>> {
        let stored = match self
            .store
            .get_bytes(
                &chunk_key(&r.hash),
                u64::from(chunk::MAX_STORED_CHUNK_BYTES),
            )
            .await
        {
            Ok(b) => b,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                let e = Error::MissingChunk {
                    snapshot: snapshot.as_str().to_owned(),
                    chunk: r.hash.to_hex(),
                };
                return Ok(vec![Outcome::Retry(r.hash, e)]);
            }
            Err(e) => return Err(e),
        };
        let data = tokio::task::spawn_blocking(move || chunk::decode(stored, &r.hash, r.size))
            .await
            .map_err(joined)?;
        Ok(vec![match data {
            Ok(b) => Outcome::Got(r.hash, b),
            Err(e) => Outcome::Retry(r.hash, e),
        }])
    }
}

/// Group chunk places into ranged reads: per pack, by offset, merging neighbours.
fn plan(mut places: Vec<(ChunkRef, Location)>) -> Vec<Read> {
    places.sort_by_key(|(_, l)| (l.pack, l.offset));
    let mut reads: Vec<Read> = Vec::new();
    for (r, l) in places {
        let start = u64::from(l.offset);
        let end = start + u64::from(l.len);
        match reads.last_mut() {
            Some(last)
                if last.pack == l.pack
                    && start >= last.range.start
                    && start <= last.range.end + MAX_GAP
                    && end.max(last.range.end) - last.range.start <= MAX_READ =>
            {
                last.range.end = last.range.end.max(end);
                last.chunks.push((r, l));
            }
            _ => reads.push(Read {
                pack: l.pack,
                range: start..end,
                chunks: vec![(r, l)],
            }),
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(pack: u8, offset: u32, len: u32) -> (ChunkRef, Location) {
        (
            ChunkRef {
                hash: ChunkHash::of(&offset.to_le_bytes()),
                size: len,
                stored_size: len,
            },
            Location {
                pack: ChunkHash::of(&[pack]),
                offset,
                len,
            },
        )
    }

    #[test]
    fn neighbours_in_a_pack_are_read_together() {
        let reads = plan(vec![
            place(1, 1000, 10),
            place(1, 0, 100),
            place(2, 0, 5),
            place(1, 100, 50),
            place(1, 10_000_000, 1),
        ]);
        let shape: Vec<(usize, Range<u64>)> = reads
            .iter()
            .map(|r| (r.chunks.len(), r.range.clone()))
            .collect();
        let p1 = ChunkHash::of(&[1]);
        let first = if reads[0].pack == p1 { 0 } else { 1 };
        assert_eq!(shape[first], (3, 0..1010));
        assert_eq!(reads.len(), 3);
    }
}
