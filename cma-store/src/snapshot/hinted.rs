//! A changed big file cut along its parent's chunks: only the chunks that changed are cut and
//! hashed again.
//!
//! A file that changes between saves (a database, a log, an image being edited) is read whole
//! again. Cutting and naming every byte of it costs far more than the few chunks that
//! changed. So the file table keeps, for each chunk of a big file's unit, a *check*: the
//! BLAKE3 hash of the chunk (of chunk 0 without the unit's tar header, whose times change with
//! every write). It is kept apart from the chunk's name because chunk 0's differs, and because
//! chunks of snapshots older than manifest format 4 are named by SHA-256. The next save of the
//! changed file compares each parent chunk's check with the same bytes of the new file, and:
//!
//! - a chunk whose bytes are the parent's keeps the parent's name for it and is not stored again;
//! - where FastCDC would cut after such a chunk is the parent's cut, when nothing it reads to
//!   decide differs: its decision depends only on where the chunk starts, the bytes from
//!   `min_size` through the byte at the cut, and how many bytes remain up to `max_size`
//!   (see [`cuts`]);
//! - everywhere else the file is cut as [`chunk::cut_all`](super::chunk::cut_all) cuts it, from
//!   the last cut on, until a cut meets one of the parent's again.
//!
//! The result is exactly the chunks a full cut gives (a test compares them over many kinds of
//! edit), so hints change the time a save takes, never what it stores.
//!
//! A chunk named by BLAKE3 (manifest format 4) has its name as its check, but for chunk 0:
//! only chunk 0's is computed, and a save of a workspace directory records checks for every
//! big file it reads whole (up to `walk::READ_ELSEWHERE`), a first save too (saves from a
//! listing or an export stream, and bigger files, record none). With SHA-256 names (a store set to format 3) checks cost a hash of
//! their own, so they are computed only when a save with a parent file table reads a big file
//! (it is new or changed since the parent; files that change once tend to change again), not
//! in a first save, where nearly every file is read and they would cost a few percent of the
//! save; a file's first change after such a save is read, cut and hashed in full.

use super::chunk::next_cut;
use super::manifest::{ChunkRef, ChunkerParams};

/// A chunk's check: the BLAKE3 hash of its bytes (for chunk 0 of a unit, after the header).
pub(crate) type Check = [u8; 32];

/// The check of chunk `index` of a unit whose tar header is `head` bytes.
pub(crate) fn check_of(index: usize, chunk: &[u8], head: usize) -> Check {
    let from = if index == 0 { head.min(chunk.len()) } else { 0 };
    *blake3::hash(&chunk[from..]).as_bytes()
}

/// The checks of a unit's chunks (`chunks[0]` being its chunk `first`), on two threads when
/// they are many bytes.
pub(crate) fn checks_of(chunks: &[&[u8]], first: usize, head: usize) -> Vec<Check> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let all = |range: std::ops::Range<usize>| -> Vec<Check> {
        range
            .map(|i| check_of(first + i, chunks[i], head))
            .collect()
    };
    if total < PARALLEL_BYTES || chunks.len() < 2 {
        return all(0..chunks.len());
    }
    let mid = chunks.len() / 2;
    std::thread::scope(|s| {
        // A thread the system refuses only costs the speed-up.
        let second = std::thread::Builder::new()
            .spawn_scoped(s, || all(mid..chunks.len()))
            .ok();
        let mut out = all(0..mid);
        match second.and_then(|t| t.join().ok()) {
            Some(rest) => out.extend(rest),
            None => out.extend(all(mid..chunks.len())),
        }
        out
    })
}

/// Units at least this long have their checks computed on two threads.
const PARALLEL_BYTES: usize = 4 << 20;

/// The parent's chunks of a big file's unit, with their checks.
#[derive(Debug, Clone)]
pub(crate) struct Hints {
    pub refs: Vec<ChunkRef>,
    pub checks: Vec<Check>,
}

/// One chunk of the new unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Where it ends in the unit.
    pub end: usize,
    /// The parent's chunk (an index into [`Hints::refs`]) with exactly these bytes, if known.
    pub same_as: Option<usize>,
}

/// The chunks of `data` (a whole unit whose tar header is `head` bytes, longer than
/// `max_size`, cut with the parent's setting) as [`cut_all`](super::chunk::cut_all) cuts it,
/// found with the parent's chunks: only where bytes differ from the parent's is the rolling
/// hash run.
///
/// A parent chunk `k` starting where a new chunk starts gives the new chunk's end when: its
/// bytes are the same (its check matches), so are the next chunk's (the byte at the cut is read
/// to decide it) or it ended the parent's unit and the new unit ends at the same place; and as
/// many bytes remain up to `max_size` (FastCDC shortens its search near the end). Chunk 0's
/// check leaves out the header, which FastCDC never reads when it is no longer than
/// `min_size` (rounded down to even), so a file whose times alone changed keeps its cuts.
pub(crate) fn cuts(params: &ChunkerParams, data: &[u8], head: usize, hints: &Hints) -> Vec<Cut> {
    let (len, max) = (data.len() as u64, u64::from(params.max_size));
    // Checks that do not pair with the chunks one to one are no hints at all.
    let n = if hints.refs.len() == hints.checks.len() {
        hints.refs.len()
    } else {
        0
    };
    // Where each parent chunk starts, and where the last one ends: `n + 1` offsets.
    let mut starts = Vec::with_capacity(n + 1);
    let mut at = 0u64;
    starts.push(at);
    for r in &hints.refs[..n] {
        at += u64::from(r.size);
        starts.push(at);
    }
    let old_len = at;
    // Which parent chunks have the same bytes here: all checked first (on two threads when
    // that is many bytes), since most of them normally are.
    let candidates: Vec<usize> = (0..n)
        .filter(|&k| {
            let (a, b) = (starts[k], starts[k + 1]);
            a < b && b - a <= max && b <= len
        })
        .collect();
    let slices: Vec<&[u8]> = candidates
        .iter()
        .map(|&k| &data[starts[k] as usize..starts[k + 1] as usize])
        .collect();
    let got = match candidates.first() {
        // Only chunk 0 leaves out the header.
        Some(0) => {
            let mut got = vec![check_of(0, slices[0], head)];
            got.extend(checks_of(&slices[1..], 1, head));
            got
        }
        _ => checks_of(&slices, 1, head),
    };
    let mut same = vec![false; n];
    for (&k, c) in candidates.iter().zip(&got) {
        same[k] = *c == hints.checks[k];
    }
    // Chunk 0's cut may be the parent's only if FastCDC does not read the header.
    if n > 0 && head > (params.min_size as usize & !1) {
        same[0] = false;
    }
    let remaining = |from: u64, total: u64| (total - from).min(max);
    let mut out = Vec::new();
    let (mut pos, mut k) = (0u64, 0usize);
    while pos < len {
        while k < n && starts[k] < pos {
            k += 1;
        }
        let hinted = k < n
            && starts[k] == pos
            && same[k]
            && remaining(pos, len) == remaining(pos, old_len)
            && if k + 1 < n {
                same[k + 1]
            } else {
                starts[k + 1] == len
            };
        if hinted {
            pos = starts[k + 1];
            // Chunk 0 holds the header: its bytes are not known to be the parent's.
            let same_as = (k > 0 || head == 0).then_some(k);
            out.push(Cut {
                end: pos as usize,
                same_as,
            });
        } else {
            pos += next_cut(params, &data[pos as usize..]) as u64;
            out.push(Cut {
                end: pos as usize,
                same_as: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::chunk::cut_all;
    use super::super::manifest::ChunkHash;
    use super::*;
    use bytes::Bytes;

    const P: ChunkerParams = ChunkerParams {
        min_size: 1024,
        avg_size: 4096,
        max_size: 16384,
        normalization: 1,
    };

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn random(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng(seed) as u8).collect()
    }

    fn full_cut(data: &[u8]) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        cut_all(&P, Bytes::copy_from_slice(data), &mut chunks);
        chunks
    }

    fn ends(chunks: &[Bytes]) -> Vec<usize> {
        let mut at = 0;
        chunks
            .iter()
            .map(|c| {
                at += c.len();
                at
            })
            .collect()
    }

    /// The unit's chunks as a save cuts it, with their checks: what the file table records.
    fn saved(data: &[u8], head: usize) -> (Vec<Bytes>, Hints) {
        let chunks = full_cut(data);
        let slices: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        let hints = Hints {
            refs: chunks
                .iter()
                .map(|c| ChunkRef {
                    hash: ChunkHash::of(c),
                    size: c.len() as u32,
                    stored_size: 0,
                })
                .collect(),
            checks: checks_of(&slices, 0, head),
        };
        (chunks, hints)
    }

    /// Hinted cuts of `new` against `old` equal a full cut's, and every chunk said to be the
    /// parent's has the parent's bytes. Returns how many were.
    fn agree(old: &[u8], new: &[u8], head: usize) -> usize {
        let (old_chunks, hints) = saved(old, head);
        let got = cuts(&P, new, head, &hints);
        let got_ends: Vec<usize> = got.iter().map(|c| c.end).collect();
        assert_eq!(
            got_ends,
            ends(&full_cut(new)),
            "cuts differ from a full cut"
        );
        let mut start = 0;
        let mut reused = 0;
        for c in &got {
            if let Some(k) = c.same_as {
                assert_eq!(&new[start..c.end], &old_chunks[k][..], "chunk {k} differs");
                reused += 1;
            }
            start = c.end;
        }
        reused
    }

    #[test]
    fn hinted_cuts_are_a_full_cuts_for_every_kind_of_edit() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let head = 512;
        let mut reused = 0;
        for round in 0..400 {
            let len = 20_000 + (rng(&mut seed) % 200_000) as usize;
            let mut old = random(&mut seed, len);
            // Some files hold runs of zeros (cut at max_size without a hash match).
            if round % 3 == 0 {
                let a = (rng(&mut seed) as usize) % len;
                let b = (a + (rng(&mut seed) as usize) % 60_000).min(len);
                old[a..b].fill(0);
            }
            let mut new = old.clone();
            // Every other edit starts right at one of the parent's cuts (the byte there
            // decides the cut before it).
            let at = if round % 2 == 0 {
                let cuts = ends(&full_cut(&old));
                cuts[(rng(&mut seed) as usize) % cuts.len()] % len
            } else {
                (rng(&mut seed) as usize) % len
            };
            let n = 1 + (rng(&mut seed) as usize) % 20_000;
            match round % 8 {
                // Overwritten in place.
                0 | 1 => {
                    let end = (at + n).min(len);
                    let fresh = random(&mut seed, end - at);
                    new[at..end].copy_from_slice(&fresh);
                }
                // One byte.
                2 => new[at] ^= 1,
                // Bytes inserted.
                3 => {
                    let fresh = random(&mut seed, n);
                    new.splice(at..at, fresh);
                }
                // Bytes removed.
                4 => {
                    new.drain(at..(at + n).min(len));
                }
                // Truncated or extended.
                5 => new.truncate(at.max(1)),
                6 => new.extend(random(&mut seed, n)),
                // The header alone.
                _ => {
                    let fresh = random(&mut seed, head);
                    new[..head].copy_from_slice(&fresh);
                }
            }
            if new.len() <= P.max_size as usize {
                continue;
            }
            reused += agree(&old, &new, head);
        }
        // The hints were used, not only found harmless.
        assert!(reused > 2000, "{reused}");
    }

    #[test]
    fn unchanged_chunks_are_found_and_the_header_is_never_taken() {
        let mut seed = 7;
        let old = random(&mut seed, 400_000);
        let mut new = old.clone();
        new[..512].copy_from_slice(&random(&mut seed, 512));
        new[200_000..210_000].copy_from_slice(&random(&mut seed, 10_000));
        let (chunks, hints) = saved(&old, 512);
        assert_eq!(cuts(&P, &new, 512, &hints)[0].same_as, None);
        let reused = agree(&old, &new, 512);
        // All but the header's chunk and the few around the change.
        assert!(reused + 6 >= chunks.len(), "{reused} of {}", chunks.len());
        // The same file: everything but chunk 0.
        assert_eq!(agree(&old, &old, 512), chunks.len() - 1);
        // A header longer than FastCDC's skip: chunk 0 is cut again, the rest still found.
        let long_head = P.min_size as usize + 2;
        assert_eq!(agree(&old, &old, long_head), chunks.len() - 1);
    }

    #[test]
    fn broken_hints_cost_time_not_correctness() {
        let mut seed = 11;
        let data = random(&mut seed, 300_000);
        let (_, good) = saved(&data, 512);
        // Zero-size and oversized chunks (a claimed length past the data), a wrong check.
        let mut bad = good.clone();
        bad.refs[1].size = 0;
        bad.refs[3].size = u32::MAX;
        bad.checks[5] = [0; 32];
        // Fewer checks than chunks.
        let mut short = good.clone();
        short.checks.pop();
        let empty = Hints {
            refs: Vec::new(),
            checks: Vec::new(),
        };
        let want = full_cut(&data);
        for hints in [&bad, &short, &empty, &good] {
            let got = cuts(&P, &data, 512, hints);
            assert_eq!(got.iter().map(|c| c.end).collect::<Vec<_>>(), ends(&want));
        }
        let named = |h: &Hints| {
            cuts(&P, &data, 512, h)
                .iter()
                .filter(|c| c.same_as.is_some())
                .count()
        };
        // The good hints name every chunk but the header's; the short ones none.
        assert_eq!(named(&good), want.len() - 1);
        assert_eq!(named(&short), 0);
    }
}
