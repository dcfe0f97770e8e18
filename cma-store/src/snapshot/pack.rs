//! Pack objects: many stored chunks in one object, so a snapshot is tens of objects rather
//! than one per chunk (each object costs a request on S3 and an inode on a local disk).
//!
//! A pack (`packs/<first two hex digits>/<64 hex digits>`) is the stored forms of its chunks
//! (see the `chunk` module) one after another from offset 0, then a trailer that lists them:
//! per chunk its name (its content hash), size and stored size (`u32` little-endian each), then the chunk count
//! (`u32`), the SHA-256 of the listing, and the magic `cmapack1`. Readers find a chunk through
//! the index (see `chunk_index`) and read just its range; the trailer lets a pack be checked
//! (or an index rebuilt) on its own. Every byte is covered by a checksum: each chunk's stored
//! form by its own, the listing by the trailer's.
//!
//! A pack's name is random, not a hash of its bytes: hashing every stored byte once more would
//! cost a third of a save's hashing, and a random name also means a pack one process writes is
//! never one another deletes as an old copy of the same chunks.

use bytes::Bytes;
use object_store::path::Path;
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use super::local_store::ALIGN;
use super::manifest::ChunkHash;

/// The name of a pack: 32 random bytes.
pub(crate) type PackId = ChunkHash;

const MAGIC: &[u8; 8] = b"cmapack1";
/// Bytes per chunk in the trailer's listing.
const LISTED: usize = 40;
/// Bytes after the listing: count, checksum, magic.
const TAIL: usize = 4 + 32 + 8;
/// Largest pack accepted or written (read whole by verify and garbage collection, so this bounds
/// their memory per pack): the largest configurable pack size, plus the one chunk and trailer a
/// pack may run over it by. Offsets are `u32`.
pub(crate) const MAX_PACK_BYTES: u64 = (1 << 30) + (64 << 20);

/// One chunk of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackEntry {
    pub hash: ChunkHash,
    /// Uncompressed size.
    pub size: u32,
    /// Where its stored form starts in the pack.
    pub offset: u32,
    /// Length of its stored form.
    pub len: u32,
}

/// The object key of a pack.
pub(crate) fn pack_key(id: &PackId) -> Path {
    let h = id.to_hex();
    Path::from(format!("packs/{}/{h}", &h[..2]))
}

/// The pack id in a key under `packs/`, if it is one.
pub(crate) fn parse_pack_key(key: &Path) -> Option<PackId> {
    let mut parts = key.parts();
    if parts.next()?.as_ref() != "packs" {
        return None;
    }
    let dir = parts.next()?;
    let id = ChunkHash::from_hex(parts.next()?.as_ref())?;
    (parts.next().is_none() && dir.as_ref() == &id.to_hex()[..2]).then_some(id)
}

/// Collects stored chunks into a pack.
#[derive(Default)]
pub(crate) struct PackBuilder {
    buf: Vec<u8>,
    /// Where the pack starts in `buf` (the bytes before are padding, never uploaded).
    start: usize,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
pub(crate) struct SealedPack {
    pub id: PackId,
    /// The pack.
    pub bytes: Bytes,
    /// The whole buffer `bytes` is a slice of (for reuse once `bytes` is dropped).
    pub buffer: Bytes,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_buffer(Vec::with_capacity(bytes))
    }

    /// A builder writing into `buf` (cleared): a buffer of an uploaded pack, reused so its
    /// pages need not be faulted in again. The pack starts at the first page boundary in it
    /// if it has room for that: a local store then writes it around the page cache without
    /// copying it (see `local_store`).
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        let start = buf.as_ptr().align_offset(ALIGN);
        let start = if start < ALIGN && start < buf.capacity() / 2 {
            buf.resize(start, 0);
            start
        } else {
            0
        };
        Self {
            buf,
            start,
            entries: Vec::new(),
        }
    }

    /// The buffer back, for a pack that will not be sealed (its content is dropped).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes of chunks so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The names of the chunks in it so far, in order.
    pub fn hashes(&self) -> impl Iterator<Item = ChunkHash> + '_ {
        self.entries.iter().map(|e| e.hash)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append a chunk's stored form; returns its length.
    pub fn push(&mut self, hash: ChunkHash, size: u32, stored: &[u8]) -> Result<u32> {
        let len = self.entry(hash, size, stored.len())?;
        self.buf.extend_from_slice(stored);
        Ok(len)
    }

    /// Append the raw stored form of a chunk's content (see `chunk::append_raw`); returns its
    /// length.
    pub fn push_raw(
        &mut self,
        coding: super::chunk::Coding,
        hash: ChunkHash,
        size: u32,
        data: &[u8],
    ) -> Result<u32> {
        let len = self.entry(hash, size, super::chunk::raw_len(data.len()))?;
        super::chunk::append_raw(coding, data, &mut self.buf);
        Ok(len)
    }

    /// List a chunk of `len` stored bytes that starts at the current end.
    fn entry(&mut self, hash: ChunkHash, size: u32, len: usize) -> Result<u32> {
        let at = self.len();
        let offset = u32::try_from(at).ok();
        let end = at.checked_add(len).filter(|e| u32::try_from(*e).is_ok());
        let (Some(offset), Some(_), Ok(len)) = (offset, end, u32::try_from(len)) else {
            return Err(Error::TooLarge {
                what: "pack".into(),
                size: (at as u64).saturating_add(len as u64),
                limit: MAX_PACK_BYTES,
            });
        };
        self.entries.push(PackEntry {
            hash,
            size,
            offset,
            len,
        });
        Ok(len)
    }

    /// Add the trailer and name the pack.
    pub fn seal(mut self) -> SealedPack {
        let mut listing = Vec::with_capacity(self.entries.len() * LISTED);
        for e in &self.entries {
            listing.extend_from_slice(&e.hash.0);
            listing.extend_from_slice(&e.size.to_le_bytes());
            listing.extend_from_slice(&e.len.to_le_bytes());
        }
        let sum: [u8; 32] = Sha256::digest(&listing).into();
        self.buf.extend_from_slice(&listing);
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&sum);
        self.buf.extend_from_slice(MAGIC);
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        id[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let id = ChunkHash(id);
        let buffer = Bytes::from(self.buf);
        SealedPack {
            id,
            bytes: buffer.slice(self.start..),
            buffer,
            entries: self.entries,
        }
    }
}

/// Check a whole pack's trailer and read its listing (the chunks themselves are checked when
/// they are decoded, see [`verify`]).
pub(crate) fn parse(id: &PackId, pack: &[u8]) -> Result<Vec<PackEntry>> {
    let what = || format!("pack {}", id.to_hex());
    let n = pack.len();
    if n < TAIL || &pack[n - 8..] != MAGIC {
        return Err(Error::corrupt(what(), "no pack trailer"));
    }
    let count = u32::from_le_bytes(pack[n - 44..n - 40].try_into().unwrap_or([0; 4]));
    let listing_len = (count as usize)
        .checked_mul(LISTED)
        .filter(|l| *l <= n - TAIL)
        .ok_or_else(|| Error::corrupt(what(), "bad chunk count"))?;
    let data_end = n - TAIL - listing_len;
    let listing = &pack[data_end..n - TAIL];
    if Sha256::digest(listing).as_slice() != &pack[n - 40..n - 8] {
        return Err(Error::corrupt(what(), "listing fails its checksum"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut offset = 0u64;
    for rec in listing.chunks_exact(LISTED) {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&rec[..32]);
        let size = u32::from_le_bytes([rec[32], rec[33], rec[34], rec[35]]);
        let len = u32::from_le_bytes([rec[36], rec[37], rec[38], rec[39]]);
        entries.push(PackEntry {
            hash: ChunkHash(hash),
            size,
            offset: offset as u32,
            len,
        });
        offset += u64::from(len);
    }
    if offset != data_end as u64 {
        return Err(Error::corrupt(what(), "listing does not cover the data"));
    }
    Ok(entries)
}

/// Check a whole pack: its trailer, and every chunk in it decoded against its hash.
pub(crate) fn verify(id: &PackId, pack: &Bytes) -> Result<()> {
    for e in parse(id, pack)? {
        let at = e.offset as usize;
        let blob = pack.slice(at..at + e.len as usize);
        super::chunk::decode(blob, &e.hash, e.size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const B3: super::super::chunk::Coding = super::super::chunk::Coding {
        level: 1,
        names: super::super::ChunkNames::Blake3,
    };

    #[test]
    fn packs_list_their_chunks_and_any_flipped_byte_is_caught() {
        let mut b = PackBuilder::default();
        let contents: [&[u8]; 3] = [b"first", b"", &[7u8; 5000]];
        let mut blobs = Vec::new();
        for data in contents {
            let blob = super::super::chunk::encode(data, B3).unwrap();
            b.push(ChunkHash::of(data), data.len() as u32, &blob)
                .unwrap();
            blobs.push(blob);
        }
        let sealed = b.seal();
        let entries = parse(&sealed.id, &sealed.bytes).unwrap();
        assert_eq!(entries, sealed.entries);
        for (e, blob) in entries.iter().zip(&blobs) {
            let at = e.offset as usize;
            assert_eq!(&sealed.bytes[at..at + e.len as usize], &blob[..]);
        }
        verify(&sealed.id, &sealed.bytes).unwrap();
        for i in 0..sealed.bytes.len() {
            let mut bad = sealed.bytes.to_vec();
            bad[i] ^= 4;
            assert!(verify(&sealed.id, &Bytes::from(bad)).is_err(), "byte {i}");
        }
        assert_eq!(parse_pack_key(&pack_key(&sealed.id)), Some(sealed.id));
        // A builder with room starts its pack at a page boundary; the pack reads the same and
        // its whole buffer comes back for reuse once the pack is dropped.
        let mut b = PackBuilder::with_capacity(1 << 20);
        for data in contents {
            let blob = super::super::chunk::encode(data, B3).unwrap();
            b.push(ChunkHash::of(data), data.len() as u32, &blob)
                .unwrap();
        }
        let aligned = b.seal();
        assert_eq!(aligned.bytes.as_ptr().align_offset(ALIGN), 0);
        assert_eq!(parse(&aligned.id, &aligned.bytes).unwrap(), sealed.entries);
        assert_eq!(&aligned.bytes[..], &sealed.bytes[..]);
        drop(aligned.bytes);
        let back = Vec::from(aligned.buffer.try_into_mut().unwrap());
        assert!(back.capacity() >= 1 << 20);
        assert_eq!(parse_pack_key(&Path::from("packs/zz/abc")), None);
    }
}
