//! Hashing a save's work: cutting units into chunks, naming each chunk by its hash, and
//! compressing the ones the store lacks, on the blocking pool (see `pipeline` for how jobs are
//! run and their results stored). A changed big file is cut and hashed only where it differs
//! from its parent's chunks (see the `hinted` module). Each job reads into, and writes stored
//! forms into, buffers of the save's pool (see the `buffers` module).

use bytes::Bytes;

use super::buffers::BufferPool;
use super::chunk::{self, Coding, cut_all};
use super::chunk_index::ChunkIndex;
use super::hinted::{self, Check};
use super::walk::Checks;
use super::*;

/// What a save already knows about the store when it starts, to skip compressing chunks it
/// will not upload. A hint only: each batch checks again after naming its chunks.
pub(super) struct Hint {
    pub parent: HashSet<ChunkHash>,
    pub index: Arc<ChunkIndex>,
}

impl Hint {
    fn known(&self, h: &ChunkHash) -> bool {
        self.parent.contains(h) || self.index.stored_len(h).is_some()
    }
}

/// One chunk after hashing.
pub(super) struct Hashed {
    pub hash: ChunkHash,
    pub size: u32,
    pub payload: Payload,
    /// Its check, for a big file's unit (see the `hinted` module).
    pub check: Option<Check>,
}

/// What a hashed chunk carries to the pack.
pub(super) enum Payload {
    /// Nothing: a chunk of the parent snapshot taken as is, unread.
    Parent,
    /// Its content: it was expected to be stored already (compressed only if it is not).
    Known(Bytes),
    /// New, and zstd shrinks it: its stored form (a slice of its job's output buffer).
    Encoded(Bytes),
    /// New, and zstd does not shrink it: its content, stored as it is (no copy until the
    /// pack).
    Raw(Bytes),
}

impl Payload {
    /// Whether it brings data a pack may take.
    pub(super) fn has_data(&self) -> bool {
        !matches!(self, Payload::Parent)
    }
}

/// A piece of work for the blocking pool.
pub(super) enum Job {
    /// Chunks already cut.
    Cut(Vec<Bytes>),
    /// A whole unit, to cut first.
    Whole(Bytes),
    /// A whole unit of entries, to read first (see `walk::read_unit`), and what to do about
    /// its checks.
    Files(Arc<cap_std::fs::Dir>, Vec<super::walk::Found>, Checks),
}

/// Whether chunk names are the checks (see the `hinted` module) of every chunk of a unit but
/// its first: BLAKE3 names are the BLAKE3 of the chunk, as a check is (chunk 0's check leaves
/// out the unit's tar header).
pub(super) fn names_are_checks(coding: Coding) -> bool {
    coding.names == ChunkNames::Blake3
}

/// Hash a chunk; all-zero chunks (sparse files, zeroed images: cut at the maximum size, so a
/// handful of sizes) are hashed once per size.
pub(super) fn hash_chunk(names: ChunkNames, data: &[u8]) -> ChunkHash {
    static ZERO_HASHES: std::sync::Mutex<Vec<(ChunkNames, usize, ChunkHash)>> =
        std::sync::Mutex::new(Vec::new());
    if !is_zeros(data) {
        return names.name(data);
    }
    let mut memo = ZERO_HASHES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, h)) = memo
        .iter()
        .find(|(k, n, _)| *k == names && *n == data.len())
    {
        return *h;
    }
    let h = names.name(data);
    if memo.len() < 16 {
        memo.push((names, data.len(), h));
    }
    h
}

pub(super) fn chunk_len(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::TooLarge {
        what: "chunk".into(),
        size: n as u64,
        limit: u64::from(u32::MAX),
    })
}

/// Cut (if needed), hash and compress: runs on the blocking pool. Units are read into, and
/// stored forms written into, buffers of `pool` (one each per job), which come back to it when
/// the chunks are dropped.
pub(super) fn hash_job(
    job: Job,
    hint: &Hint,
    params: &ChunkerParams,
    coding: Coding,
    pool: &BufferPool,
) -> Result<Vec<Hashed>> {
    // Capacity of the pooled buffer the chunks are slices of, if they are.
    let mut pooled_input = 0usize;
    let mut hashed = match job {
        Job::Cut(c) => hash_split(c, hint, coding, pool)?,
        Job::Whole(b) => {
            let mut out = Vec::new();
            cut_all(params, b, &mut out);
            hash_split(out, hint, coding, pool)?
        }
        Job::Files(root, pack, checks) => {
            let len = pack
                .iter()
                .map(super::walk::Found::archive_len)
                .sum::<u64>();
            let mut buf = pool.take(usize::try_from(len).unwrap_or(usize::MAX));
            if let Err(e) = super::walk::read_unit(&root, &pack, &mut buf) {
                pool.give(buf);
                return Err(e);
            }
            pooled_input = buf.capacity();
            let data = pool.freeze(buf);
            let head = pack.first().map_or(0, |f| f.header.len());
            match checks {
                Checks::Hinted(h) if data.len() > params.max_size as usize => {
                    hash_hinted(params, data, head, &h, hint, coding, pool)?
                }
                checks => {
                    let mut out = Vec::new();
                    cut_all(params, data, &mut out);
                    // The checks the names do not give (see `names_are_checks`).
                    let sums = match checks {
                        Checks::None => None,
                        Checks::Compute | Checks::Hinted(_) => {
                            let n = if names_are_checks(coding) {
                                out.len().min(1)
                            } else {
                                out.len()
                            };
                            let slices: Vec<&[u8]> = out[..n].iter().map(|c| &c[..]).collect();
                            Some(hinted::checks_of(&slices, 0, head))
                        }
                    };
                    let mut hashed = hash_split(out, hint, coding, pool)?;
                    if let Some(sums) = sums {
                        for (i, h) in hashed.iter_mut().enumerate() {
                            h.check = Some(sums.get(i).copied().unwrap_or(h.hash.0));
                        }
                    }
                    hashed
                }
            }
        }
    };
    // Known chunks wait for their batch (up to `pack_bytes` of data) holding their content: a
    // few small ones must not keep a whole pooled buffer (256 KiB at least) out of the pool
    // that long, so little content is copied out of a big buffer.
    let known: usize = hashed
        .iter()
        .map(|h| match &h.payload {
            Payload::Known(d) => d.len(),
            _ => 0,
        })
        .sum();
    if known > 0 && known.saturating_mul(4) < pooled_input {
        for h in &mut hashed {
            if let Payload::Known(d) = &h.payload {
                h.payload = Payload::Known(Bytes::copy_from_slice(d));
            }
        }
    }
    Ok(hashed)
}

/// A changed big file's unit, cut and hashed where it differs from the parent's chunks (see
/// the `hinted` module): the parent's chunks it still holds are taken unread, with their
/// checks; the others are hashed (and compressed) as any, and checked.
fn hash_hinted(
    params: &ChunkerParams,
    data: Bytes,
    head: usize,
    hints: &hinted::Hints,
    hint: &Hint,
    coding: Coding,
    pool: &BufferPool,
) -> Result<Vec<Hashed>> {
    let cuts = hinted::cuts(params, &data, head, hints);
    let mut fresh = Vec::new();
    let mut fresh_at = Vec::new();
    let mut start = 0;
    for (i, c) in cuts.iter().enumerate() {
        if c.same_as.is_none() {
            fresh.push(data.slice(start..c.end));
            fresh_at.push(i);
        }
        start = c.end;
    }
    // Checks the names do not give (see `names_are_checks`): chunk 0's, or all.
    let sums: Vec<Option<Check>> = fresh_at
        .iter()
        .zip(&fresh)
        .map(|(&i, c)| (i == 0 || !names_are_checks(coding)).then(|| hinted::check_of(i, c, head)))
        .collect();
    let mut fresh = hash_split(fresh, hint, coding, pool)?
        .into_iter()
        .zip(sums)
        .map(|(mut h, c)| {
            h.check = Some(c.unwrap_or(h.hash.0));
            h
        });
    let mut out = Vec::with_capacity(cuts.len());
    for c in &cuts {
        match c.same_as {
            Some(k) => {
                let r = &hints.refs[k];
                out.push(Hashed {
                    hash: r.hash,
                    size: r.size,
                    payload: Payload::Parent,
                    check: Some(hints.checks[k]),
                });
            }
            None => out.push(
                fresh
                    .next()
                    .ok_or_else(|| Error::corrupt("save", "a hashed chunk went missing"))?,
            ),
        }
    }
    Ok(out)
}

/// Units at least this big are hashed (and compressed) on two threads: a big file is often the
/// only work of an incremental save, and one core would otherwise wait for the other.
const SPLIT_JOB_BYTES: usize = 4 << 20;

/// Hash and compress `chunks` in order: on two threads (each half of the bytes) when they are
/// many bytes, else on this one.
fn hash_split(
    chunks: Vec<Bytes>,
    hint: &Hint,
    coding: Coding,
    pool: &BufferPool,
) -> Result<Vec<Hashed>> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if total < SPLIT_JOB_BYTES || chunks.len() < 2 {
        return hash_chunks(&chunks, hint, coding, pool);
    }
    let mut first = 0usize;
    let split = chunks
        .iter()
        .position(|c| {
            first += c.len();
            first >= total / 2
        })
        .map_or(chunks.len() - 1, |i| (i + 1).min(chunks.len() - 1));
    let (first, second) = chunks.split_at(split);
    let (a, b) = std::thread::scope(|s| {
        // The second half goes to a thread of its own if the system gives one, else it is
        // hashed here after the first.
        let other = std::thread::Builder::new()
            .spawn_scoped(s, || hash_chunks(second, hint, coding, pool))
            .ok();
        let a = hash_chunks(first, hint, coding, pool);
        let b = match other {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::io(
                    "hash chunks",
                    std::io::Error::other("hashing thread panicked"),
                ))
            }),
            None => hash_chunks(second, hint, coding, pool),
        };
        (a, b)
    });
    let mut a = a?;
    a.extend(b?);
    Ok(a)
}

/// Hash `chunks` and compress the ones the store lacks (into one pooled buffer).
fn hash_chunks(
    chunks: &[Bytes],
    hint: &Hint,
    coding: Coding,
    pool: &BufferPool,
) -> Result<Vec<Hashed>> {
    // Room for every new chunk's stored form, so zstd writes straight into one buffer.
    let room: usize = chunks
        .iter()
        .map(|c| zstd::zstd_safe::compress_bound(c.len()).max(c.len()) + 1 + 32)
        .sum();
    let mut stored = pool.take(room);
    let mut hashed = Vec::with_capacity(chunks.len());
    let mut spans = Vec::new();
    for data in chunks.iter().cloned() {
        let hash = hash_chunk(coding.names, &data);
        let size = chunk_len(data.len())?;
        let payload = if hint.known(&hash) {
            Payload::Known(data)
        } else {
            let at = stored.len();
            if chunk::encode_into(&data, coding, &mut stored)? {
                spans.push((hashed.len(), at..stored.len()));
                // Filled in below, once the buffer is frozen.
                Payload::Parent
            } else {
                Payload::Raw(data)
            }
        };
        hashed.push(Hashed {
            hash,
            size,
            payload,
            check: None,
        });
    }
    if spans.is_empty() {
        pool.give(stored);
    } else {
        let stored = pool.freeze(stored);
        for (i, span) in spans {
            hashed[i].payload = Payload::Encoded(stored.slice(span));
        }
    }
    Ok(hashed)
}

impl Payload {
    /// The same payload in memory of its own (not a slice of a pooled buffer).
    pub(super) fn detached(self) -> Payload {
        match self {
            Payload::Parent => Payload::Parent,
            Payload::Known(d) => Payload::Known(Bytes::copy_from_slice(&d)),
            Payload::Encoded(b) => Payload::Encoded(Bytes::copy_from_slice(&b)),
            Payload::Raw(d) => Payload::Raw(Bytes::copy_from_slice(&d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A big file's unit as a save reads it with `checks`: its chunks and the archive bytes.
    fn hashed_file(coding: Coding, data: &[u8], checks: Checks) -> (Vec<Hashed>, Vec<u8>) {
        use super::super::tables::{EntryKey, Kind};
        use super::super::walk::{Found, read_unit};
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big.bin"), data).unwrap();
        let root =
            cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let key = EntryKey {
            path: b"big.bin".to_vec(),
            kind: Kind::File,
            mode: 0o100644,
            size: data.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 0,
            ino: 1,
        };
        let mut builder = tar::Builder::new(Vec::new());
        let mut found = Found::lazy(&mut builder, key, None).unwrap();
        found.build(&mut builder).unwrap();
        let mut unit = Vec::new();
        read_unit(&root, std::slice::from_ref(&found), &mut unit).unwrap();
        let hint = Hint {
            parent: HashSet::new(),
            index: Arc::new(ChunkIndex::default()),
        };
        let job = Job::Files(Arc::new(root), vec![found], checks);
        let pool = BufferPool::shared();
        let params = ChunkerParams::default();
        (hash_job(job, &hint, &params, coding, &pool).unwrap(), unit)
    }

    #[test]
    fn checks_taken_from_names_are_the_checks() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..3_000_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 100_000) % 3 == 0 {
                    b'a'
                } else {
                    x as u8
                }
            })
            .collect();
        for names in [ChunkNames::Blake3, ChunkNames::Sha256] {
            let coding = Coding { level: 1, names };
            let (hashed, unit) = hashed_file(coding, &data, Checks::Compute);
            let mut chunks = Vec::new();
            cut_all(&ChunkerParams::default(), Bytes::from(unit), &mut chunks);
            assert!(chunks.len() > 10);
            assert_eq!(hashed.len(), chunks.len());
            for (i, (h, c)) in hashed.iter().zip(&chunks).enumerate() {
                assert_eq!(h.hash, names.name(c), "{names:?} {i}");
                assert_eq!(h.check, Some(hinted::check_of(i, c, 512)), "{names:?} {i}");
            }
            let (none, _) = hashed_file(coding, &data, Checks::None);
            assert!(none.iter().all(|h| h.check.is_none()));
        }
    }

    #[test]
    fn zero_chunks_hash_like_any_other() {
        for n in [0usize, 1, 4096, 65536, 65537, 300_000, 4096] {
            let zeros = vec![0u8; n];
            for names in [ChunkNames::Blake3, ChunkNames::Sha256] {
                assert_eq!(hash_chunk(names, &zeros), names.name(&zeros), "{n}");
            }
            let mut one = zeros.clone();
            if let Some(last) = one.last_mut() {
                *last = 1;
                assert_eq!(
                    hash_chunk(ChunkNames::Blake3, &one),
                    ChunkHash::of(&one),
                    "{n}"
                );
            }
        }
    }
}
