//! Cutting the workspace archive into content-defined chunks, and a chunk's stored form.
//!
//! Stored form of a chunk (inside a pack, or for manifest format 2 the whole object
//! `chunks/<first two hex digits>/<sha256 hex>`): a tag byte,
//! then either the bytes as they are (data zstd cannot shrink) or a zstd frame followed by a
//! hash of that frame. The trailer covers every stored byte of a frame (a flipped bit that
//! zstd would decode to the same data is still caught); the key covers the content.
//!
//! The tag also says which hash names the chunk and makes the trailer: tags 2 (raw) and 3
//! (zstd), the ones this version writes, BLAKE3; tags 0 and 1, written by manifest formats 2
//! and 3, SHA-256. A chunk is checked with the hash its own tag names, so a snapshot can share
//! chunks of both kinds. A hostile store cannot pass one kind off as the other without
//! content whose hash of one kind equals a given name of the other (a preimage); one that also
//! chooses what is saved needs a pair of contents whose SHA-256 and BLAKE3 are equal (a
//! collision, about 2^128 work, the bound names of one kind have anyway). Garbage collection
//! keeps the kinds in packs of their own, so an older version reads every pack it could.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{FastCDC, Normalization};

use super::error::{Error, Result};
use super::manifest::{ChunkHash, ChunkNames, ChunkerParams};

const TRAILER: usize = 32;

/// Largest chunk content any chunker writes (FastCDC's own bound on a chunk), and so the
/// largest a reader believes: a record claiming more is damage, refused before anything is
/// allocated for it.
pub(crate) const MAX_CHUNK_BYTES: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;
/// Largest stored form of a chunk: [`encode`] stores raw whenever zstd does not shrink the
/// data, so a stored form is at most the content plus its tag byte (a frame plus its trailer is
/// smaller than that).
pub(crate) const MAX_STORED_CHUNK_BYTES: u32 = MAX_CHUNK_BYTES + 1 + TRAILER as u32;

/// Cuts a byte stream into chunks as data arrives; holds at most `max_size` plus one input
/// piece.
pub(crate) struct Chunker {
    params: ChunkerParams,
    level: Normalization,
    buf: BytesMut,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        let level = level_of(&params);
        Self {
            params,
            level,
            buf: BytesMut::new(),
        }
    }

    /// Add data; returns the chunks that are now complete (a chunk is complete once at least
    /// `max_size` bytes from its start are known: its end cannot move any more).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        self.buf.extend_from_slice(data);
        let max = self.params.max_size as usize;
        if self.buf.len() >= PARALLEL_CUT_BYTES {
            // The same cuts, found on two threads (see `cut_ends_parallel`); the chunks taken
            // are exactly the ones the loop below would take.
            let ends = cut_ends_parallel(&self.params, self.level, &self.buf);
            let mut start = 0;
            let mut taken = Vec::new();
            for end in ends {
                if self.buf.len() - start < max {
                    break;
                }
                taken.push(end - start);
                start = end;
            }
            for n in taken {
                out.push(self.buf.split_to(n).freeze());
            }
        }
        while self.buf.len() >= max {
            let n = self.cut();
            out.push(self.buf.split_to(n).freeze());
        }
    }

    /// End of input: the remaining chunks.
    pub fn finish(mut self, out: &mut Vec<Bytes>) {
        while !self.buf.is_empty() {
            let n = self.cut();
            out.push(self.buf.split_to(n).freeze());
        }
    }

    fn cut(&self) -> usize {
        cut_point(&self.params, self.level, &self.buf)
    }
}

fn level_of(params: &ChunkerParams) -> Normalization {
    match params.normalization {
        0 => Normalization::Level0,
        1 => Normalization::Level1,
        2 => Normalization::Level2,
        _ => Normalization::Level3,
    }
}

/// Where the first chunk of `data` ends, `data` being the rest of a unit longer than
/// `max_size` from a chunk's start: as [`cut_all`] cuts there.
pub(crate) fn next_cut(params: &ChunkerParams, data: &[u8]) -> usize {
    cut_point(params, level_of(params), data)
}

/// Where the first chunk of `data` ends.
fn cut_point(p: &ChunkerParams, level: Normalization, data: &[u8]) -> usize {
    // A run of zeros (sparse files, zeroed images) cuts where any run of zeros does, found
    // by comparing instead of hashing each byte.
    let (min, max) = (p.min_size as usize, p.max_size as usize);
    if data.len() >= max && min < max {
        let end = zero_cut(p, level);
        // The bytes FastCDC reads to cut there: from `min_size` (rounded down to even: it
        // reads two at a time) through the byte at the cut, which its hash includes.
        if super::is_zeros(&data[min & !1..(end + 1).min(max)]) {
            return end;
        }
    }
    fastcdc_cut(p, level, data)
}

/// Where the first chunk of `max_size` or more zeros ends: where the rolling hash over zeros
/// from `min_size` on first matches, else at `max_size`. Its decision at each position depends
/// only on the bytes from `min_size` through that position, so any data whose bytes from
/// `min_size` through this point are zeros is cut here too. Computed once per chunker setting.
fn zero_cut(p: &ChunkerParams, level: Normalization) -> usize {
    type Memo = Vec<((u32, u32, u32, u8), usize)>;
    static MEMO: std::sync::Mutex<Memo> = std::sync::Mutex::new(Vec::new());
    let key = (p.min_size, p.avg_size, p.max_size, p.normalization);
    if let Some((_, end)) = MEMO
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == key)
    {
        return *end;
    }
    let end = fastcdc_cut(p, level, &vec![0u8; p.max_size as usize]);
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() < 16 {
        memo.push((key, end));
    }
    end
}

/// Where FastCDC ends the first chunk of `data`.
fn fastcdc_cut(p: &ChunkerParams, level: Normalization, data: &[u8]) -> usize {
    let cdc = FastCDC::with_level(
        data,
        p.min_size as usize,
        p.avg_size as usize,
        p.max_size as usize,
        level,
    );
    let (_, end) = cdc.cut(0, data.len());
    end.clamp(1, data.len())
}

/// Units at least this long are cut on two threads (see [`cut_ends_parallel`]).
const PARALLEL_CUT_BYTES: usize = 4 << 20;

/// Cut a whole unit (see the `walk` module) at once, without copying it. A unit no longer
/// than `max_size` is one chunk: units are reused whole when unchanged, so cutting one that
/// small buys no deduplication and costs a rolling hash over its bytes (a tenth of a save's
/// CPU time when it was done). Longer units are cut as [`Chunker`] cuts them (long ones on two
/// threads, to the same chunks).
pub(crate) fn cut_all(params: &ChunkerParams, data: Bytes, out: &mut Vec<Bytes>) {
    if !data.is_empty() && data.len() <= params.max_size as usize {
        out.push(data);
        return;
    }
    let level = level_of(params);
    let ends = if data.len() >= PARALLEL_CUT_BYTES {
        cut_ends_parallel(params, level, &data)
    } else {
        cut_ends(params, level, &data, 0, data.len())
    };
    let mut at = 0;
    for end in ends {
        out.push(data.slice(at..end));
        at = end;
    }
}

/// Where each chunk of `data[from..]` ends, cutting from `from`, until a chunk ends at or past
/// `until` (that one included).
fn cut_ends(
    params: &ChunkerParams,
    level: Normalization,
    data: &[u8],
    from: usize,
    until: usize,
) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = from;
    while at < until.min(data.len()) {
        at += cut_point(params, level, &data[at..]);
        ends.push(at);
    }
    ends
}

/// The chunk ends [`cut_ends`] finds over all of `data`, found on two threads: one cuts from
/// the start, the other from the middle. Where a chunk ends depends only on where it starts and
/// on the bytes that follow, so once the first thread's cuts meet a point where the second's
/// chunks start, every later cut is the second's. If they never meet (data with no
/// content-defined cut, such as a long run of zeros), the first thread cuts on to the end
/// itself: the result is the same either way, only the time differs.
fn cut_ends_parallel(params: &ChunkerParams, level: Normalization, data: &[u8]) -> Vec<usize> {
    let mid = data.len() / 2;
    std::thread::scope(|s| {
        // A thread the system refuses, or a panic in it (cutting has no reason for one), only
        // costs the speed-up: this thread then cuts on to the end.
        let second = std::thread::Builder::new()
            .spawn_scoped(s, || cut_ends(params, level, data, mid, data.len()))
            .ok();
        let mut ends = cut_ends(params, level, data, 0, mid);
        let theirs = second.and_then(|t| t.join().ok()).unwrap_or_default();
        let mut at = ends.last().copied().unwrap_or(0);
        let mut next = 0;
        while at < data.len() {
            // `mid` is where the second thread's first chunk starts, each of its ends where
            // another does.
            if at == mid {
                ends.extend_from_slice(&theirs);
                return ends;
            }
            while next < theirs.len() && theirs[next] < at {
                next += 1;
            }
            if theirs.get(next) == Some(&at) {
                ends.extend_from_slice(&theirs[next + 1..]);
                return ends;
            }
            at += cut_point(params, level, &data[at..]);
            ends.push(at);
        }
        ends
    })
}

/// Stored form tags: the first byte of every stored chunk. Formats 2 and 3 (SHA-256 names and
/// trailers): the bytes as they are, or a zstd frame.
const RAW_SHA256: u8 = 0;
const ZSTD_SHA256: u8 = 1;
/// Format 4 (BLAKE3 names and trailers): the bytes as they are, or a zstd frame.
const RAW: u8 = 2;
const ZSTD: u8 = 3;

/// Whether `stored` is a stored form of manifest formats 2 and 3 (a chunk named by SHA-256),
/// the only kind a version before format 4 reads.
pub(crate) fn is_sha256_form(stored: &[u8]) -> bool {
    matches!(stored.first(), Some(&(RAW_SHA256 | ZSTD_SHA256)))
}

/// How a save stores chunks: the zstd level, and which hash names them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coding {
    pub level: i32,
    pub names: ChunkNames,
}

impl Coding {
    /// The name of a chunk of `data`.
    pub fn name(self, data: &[u8]) -> ChunkHash {
        self.names.name(data)
    }

    /// The tags of a raw and of a compressed stored form.
    fn tags(self) -> (u8, u8) {
        match self.names {
            ChunkNames::Sha256 => (RAW_SHA256, ZSTD_SHA256),
            ChunkNames::Blake3 => (RAW, ZSTD),
        }
    }
}

/// Compress a chunk into its stored form: the zstd tag, the frame, and the hash of the frame;
/// or, when zstd saves less than 1/32, the raw tag and the bytes as they are (then the content
/// hash covers every stored byte).
pub(crate) fn encode(data: &[u8], coding: Coding) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if !encode_into(data, coding, &mut out)? {
        append_raw(coding, data, &mut out);
    }
    Ok(out)
}

/// Append the raw stored form of `data` to `out`.
pub(crate) fn append_raw(coding: Coding, data: &[u8], out: &mut Vec<u8>) {
    out.reserve(1 + data.len());
    out.push(coding.tags().0);
    out.extend_from_slice(data);
}

/// Length of the raw stored form of `len` bytes.
pub(crate) fn raw_len(len: usize) -> usize {
    1 + len
}

/// Append the compressed stored form of `data` to `out` and return `true`; or, when zstd does
/// not shrink it enough (see [`encode`]), leave `out` as it was and return `false`: the chunk
/// is to be stored raw ([`append_raw`]). No allocation when `out` has room: zstd writes
/// straight into it.
pub(crate) fn encode_into(data: &[u8], coding: Coding, out: &mut Vec<u8>) -> Result<bool> {
    thread_local! {
        /// One compression context per thread and level, reused: setting one up costs about as
        /// much as compressing a small chunk.
        static CONTEXT: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let start = out.len();
    let bound = zstd::zstd_safe::compress_bound(data.len()).max(data.len());
    out.reserve(1 + bound + TRAILER);
    out.push(coding.tags().1);
    let level = coding.level;
    let frame_len = CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let mut at = std::io::Cursor::new(&mut *out);
        at.set_position((start + 1) as u64);
        match slot.as_mut() {
            Some((_, c)) => c.compress_to_buffer(data, &mut at),
            None => Err(std::io::Error::other("no compression context")),
        }
    });
    let frame_len = match frame_len {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(Error::io("compress chunk", e));
        }
    };
    if frame_len + TRAILER >= data.len() - data.len() / 32 {
        out.truncate(start);
        return Ok(false);
    }
    out.truncate(start + 1 + frame_len);
    let trailer = coding.name(&out[start + 1..]);
    out.extend_from_slice(&trailer.0);
    Ok(true)
}

/// Check a stored chunk against the manifest's hash and size and return its content (a slice
/// of `stored` when it was stored raw).
pub(crate) fn decode(stored: Bytes, hash: &ChunkHash, size: u32) -> Result<Bytes> {
    let what = || format!("chunk {}", hash.to_hex());
    // The claimed size sizes the decompression buffer: bound it before anything is allocated.
    if size > MAX_CHUNK_BYTES {
        return Err(Error::corrupt(
            what(),
            format!("claims {size} bytes, more than any chunk ({MAX_CHUNK_BYTES})"),
        ));
    }
    if stored.len() > MAX_STORED_CHUNK_BYTES as usize {
        return Err(Error::corrupt(
            what(),
            format!("{} stored bytes, more than any chunk", stored.len()),
        ));
    }
    let (named, compressed) = match stored.first() {
        Some(&RAW) => (ChunkNames::Blake3, false),
        Some(&ZSTD) => (ChunkNames::Blake3, true),
        Some(&RAW_SHA256) => (ChunkNames::Sha256, false),
        Some(&ZSTD_SHA256) => (ChunkNames::Sha256, true),
        Some(_) => return Err(Error::corrupt(what(), "unknown stored form")),
        None => return Err(Error::corrupt(what(), "empty")),
    };
    let data = match compressed {
        false => stored.slice(1..),
        true => {
            let rest = &stored[1..];
            if rest.len() < TRAILER {
                return Err(Error::corrupt(what(), "truncated"));
            }
            let (frame, trailer) = rest.split_at(rest.len() - TRAILER);
            if named.name(frame).0 != trailer {
                return Err(Error::corrupt(what(), "stored bytes fail their checksum"));
            }
            // A frame that records its content size must record the claimed one (every frame
            // `encode` writes does); one that records none decompresses into at most `size`.
            match zstd::zstd_safe::get_frame_content_size(frame) {
                Ok(Some(n)) if n == u64::from(size) => {}
                Ok(None) => {}
                Ok(Some(n)) => {
                    return Err(Error::corrupt(
                        what(),
                        format!("frame holds {n} bytes, expected {size}"),
                    ));
                }
                Err(_) => return Err(Error::corrupt(what(), "not a zstd frame")),
            }
            Bytes::from(
                decompress(frame, size as usize)
                    .map_err(|e| Error::corrupt(what(), format!("does not decompress: {e}")))?,
            )
        }
    };
    if data.len() != size as usize {
        return Err(Error::corrupt(
            what(),
            format!("{} bytes, expected {size}", data.len()),
        ));
    }
    if named.name(&data) != *hash {
        return Err(Error::corrupt(what(), "content does not match its hash"));
    }
    Ok(data)
}

/// Decompress zstd data that must come to at most `limit` bytes, holding only what it actually
/// decompresses to (plus growth slack), never `limit` up front: for objects whose size is not
/// known in advance (manifests).
pub(crate) fn decompress_bounded(data: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::with_buffer(data)?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!(
            "decompresses to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// Decompress one frame of at most `capacity` bytes with this thread's context.
fn decompress(frame: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(frame, capacity),
            None => Err(std::io::Error::other("no decompression context")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes of xorshift noise from `seed`: incompressible, and the same on every run.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_input_in_order_and_respect_the_bounds() {
        let params = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        };
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut chunker = Chunker::new(params);
        let mut out = Vec::new();
        for piece in data.chunks(777) {
            chunker.push(piece, &mut out);
        }
        chunker.finish(&mut out);
        let joined: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, data);
        for c in &out[..out.len() - 1] {
            assert!(c.len() >= 1024 && c.len() <= 16384, "{}", c.len());
        }
        // Content-defined: the same data fed in other pieces cuts the same way.
        let mut again = Chunker::new(params);
        let mut out2 = Vec::new();
        again.push(&data, &mut out2);
        again.finish(&mut out2);
        assert_eq!(out, out2);
        let mut whole = Vec::new();
        cut_all(&params, Bytes::from(data), &mut whole);
        assert_eq!(out, whole);
    }

    #[test]
    fn cutting_on_two_threads_finds_the_same_chunks() {
        let params = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 2,
        };
        let noise = noise(0x2545_f491_4f6c_dd1d, 300_000);
        // Zeros never cut by content, so the two threads never meet; zeros with text every
        // 40 KB meet at the text; noise meets at once.
        let mut sparse = vec![0u8; 300_000];
        for k in (0..sparse.len()).step_by(40_000) {
            sparse[k..k + 512].copy_from_slice(&noise[k..k + 512]);
        }
        for data in [
            noise.clone(),
            vec![0u8; 300_000],
            sparse,
            noise[..16385].to_vec(),
        ] {
            for normalization in 0..=3 {
                let p = ChunkerParams {
                    normalization,
                    ..params
                };
                let level = level_of(&p);
                let one = cut_ends(&p, level, &data, 0, data.len());
                assert_eq!(one.last(), Some(&data.len()));
                assert_eq!(cut_ends_parallel(&p, level, &data), one, "{normalization}");
            }
        }
        assert!(cut_ends_parallel(&params, level_of(&params), &[]).is_empty());
    }

    #[test]
    fn runs_of_zeros_are_cut_exactly_where_fastcdc_cuts_them() {
        let small = ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
            normalization: 0,
        };
        let wide = ChunkerParams {
            min_size: 512,
            avg_size: 512,
            max_size: 2048,
            normalization: 1,
        };
        for base in [ChunkerParams::default(), small, wide] {
            for normalization in 0..=3 {
                let p = ChunkerParams {
                    normalization,
                    ..base
                };
                let level = level_of(&p);
                let (min, max) = (p.min_size as usize, p.max_size as usize);
                let end = zero_cut(&p, level);
                assert!((min..=max).contains(&end), "{p:?}: {end}");
                // A nonzero byte before, at and after every position that decides.
                let mut spots: Vec<usize> = vec![
                    0,
                    min - 2,
                    min - 1,
                    min,
                    min + 1,
                    end - 1,
                    end,
                    end + 1,
                    max - 1,
                ];
                spots.extend((min..end).step_by((end - min) / 16 + 1));
                for len in [max - 1, max, max + 1, 2 * max] {
                    let mut cases = vec![vec![0u8; len], noise(len as u64, len)];
                    for &at in spots.iter().filter(|&&at| at < len) {
                        for byte in [1u8, 2, 255] {
                            let mut one = vec![0u8; len];
                            one[at] = byte;
                            cases.push(one);
                        }
                        // Noise up to `at`, zeros after.
                        let mut prefix = noise(at as u64 + 7, len);
                        prefix[at..].fill(0);
                        cases.push(prefix);
                    }
                    for (i, data) in cases.iter().enumerate() {
                        assert_eq!(
                            cut_point(&p, level, data),
                            fastcdc_cut(&p, level, data),
                            "{p:?}, {len} bytes, case {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_stream_cut_on_two_threads_gives_the_chunks_of_one() {
        let params = ChunkerParams::default();
        let mut data = noise(0x9e37_79b9_7f4a_7c15, PARALLEL_CUT_BYTES * 5 / 2);
        // A stretch of zeros (cut only at the maximum size) in the middle.
        let third = data.len() / 3;
        data[third..2 * third].fill(0);
        let one = cut_ends(&params, level_of(&params), &data, 0, data.len());
        // Pieces big enough for the two-thread path, and not a multiple of anything.
        let mut chunker = Chunker::new(params);
        let mut out = Vec::new();
        for piece in data.chunks(PARALLEL_CUT_BYTES + 12_345) {
            chunker.push(piece, &mut out);
        }
        chunker.finish(&mut out);
        let mut at = 0;
        let streamed: Vec<usize> = out
            .iter()
            .map(|c| {
                at += c.len();
                at
            })
            .collect();
        assert_eq!(streamed, one);
    }

    #[test]
    fn stored_chunks_verify_every_byte() {
        let text = b"hello hello hello hello".repeat(100);
        let noise = noise(0x9e37_79b9_7f4a_7c15, 3000);
        for (data, tag) in [(text, ZSTD), (noise, RAW)] {
            let hash = ChunkHash::of(&data);
            let stored = encode(&data, B3).unwrap();
            assert_eq!(stored[0], tag);
            let n = data.len() as u32;
            let back = decode(Bytes::from(stored.clone()), &hash, n).unwrap();
            assert_eq!(back, data);
            for i in 0..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 1;
                assert!(decode(Bytes::from(bad), &hash, n).is_err(), "byte {i}");
            }
            let half = Bytes::copy_from_slice(&stored[..stored.len() / 2]);
            assert!(decode(half, &hash, n).is_err());
            assert!(decode(Bytes::new(), &hash, n).is_err());
        }
    }

    const B3: Coding = Coding {
        level: 1,
        names: ChunkNames::Blake3,
    };

    /// The stored forms of formats 2 and 3, built here as those formats define them: SHA-256
    /// names and trailers.
    fn legacy(data: &[u8], compressed: bool) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        if !compressed {
            return [&[RAW_SHA256][..], data].concat();
        }
        let frame = zstd::bulk::compress(data, 1).unwrap();
        let trailer = Sha256::digest(&frame);
        [&[ZSTD_SHA256][..], &frame, &trailer].concat()
    }

    #[test]
    fn chunks_named_by_sha256_still_decode_and_neither_kind_passes_for_the_other() {
        let text = b"older format older format ".repeat(200);
        let n = text.len() as u32;
        for compressed in [false, true] {
            let stored = legacy(&text, compressed);
            let sha = ChunkHash::sha256_of(&text);
            let back = decode(Bytes::from(stored.clone()), &sha, n).unwrap();
            assert_eq!(back, text);
            for i in 0..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 0x10;
                assert!(decode(Bytes::from(bad), &sha, n).is_err(), "byte {i}");
            }
            // The same bytes under the other kind's tag, or the other kind's name: refused.
            let b3 = ChunkHash::of(&text);
            assert_ne!(b3, sha);
            assert!(decode(Bytes::from(stored.clone()), &b3, n).is_err());
            let mut retagged = stored.clone();
            retagged[0] = if compressed { ZSTD } else { RAW };
            assert!(decode(Bytes::from(retagged), &sha, n).is_err());
            let new = encode(&text, B3).unwrap();
            assert!(decode(Bytes::from(new), &sha, n).is_err());
            // What a save set to SHA-256 names writes is the older formats' stored form.
            let coding = Coding {
                level: 1,
                names: ChunkNames::Sha256,
            };
            let ours = if compressed {
                encode(&text, coding).unwrap()
            } else {
                let mut out = Vec::new();
                append_raw(coding, &text, &mut out);
                out
            };
            assert_eq!(ours, stored);
        }
    }
}
