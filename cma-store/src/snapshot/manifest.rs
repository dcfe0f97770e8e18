//! The snapshot manifest: what a snapshot is made of, and its stored form.
//!
//! Stored form (the object at `manifests/<session>/<created>-<id>`): zstd of
//! `cma-snapshot-manifest <format> <sha256 of the JSON, hex>\n<JSON>`. The snapshot id is the
//! SHA-256 of the stored (compressed) bytes, so every stored byte is covered; the inner digest
//! is the manifest's own checksum. The archive's chunk list and the file table are not in the
//! object itself but in chunks it names (see the `index` module), so a snapshot close to its
//! parent shares them too; their names, hashes of their content, chain the id's coverage to
//! every byte. Reading
//! one verifies the object, the format version, every table chunk, and that the chunk list adds
//! up to the sizes the manifest claims.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use crate::SnapshotId;

/// The manifest format this crate writes: chunks in packs, found through the index, new chunks
/// named by BLAKE3 (format 3 named every chunk by SHA-256; format 4 may name both kinds).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest manifest format this crate reads: 2, chunks stored one object each under
/// `chunks/` (they stay there and restore as before; new saves never write there).
pub const OLDEST_FORMAT_VERSION: u32 = 2;
/// Largest stored manifest accepted (decompressed), against a hostile or corrupt store. A
/// manifest names its tables' chunks, not every chunk, so a real one is kilobytes to a few
/// megabytes; memory grows with what is actually decompressed, never to this up front.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
const MAGIC: &str = "cma-snapshot-manifest";

/// A chunk's name in the store: a hash of its uncompressed bytes. Chunks stored by this
/// version are named by their BLAKE3 hash; chunks of manifest formats 2 and 3 by their
/// SHA-256. A chunk's stored form says which (see the `chunk` module), so a snapshot of format
/// 4 can name chunks of both kinds (those it shares with an older parent keep their names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The name this version gives a chunk of `data`: its BLAKE3 hash.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The name manifest formats 2 and 3 gave a chunk of `data`: its SHA-256.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parse 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

/// Which hash names the chunks a save stores ([`SnapshotConfig::chunk_names`](super::SnapshotConfig::chunk_names)).
/// Restores read both kinds whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChunkNames {
    /// BLAKE3, in manifest format 4: several times cheaper to compute than SHA-256, for saves
    /// and restores alike. Such a save reuses a parent's chunks of either kind.
    #[default]
    Blake3,
    /// SHA-256, in manifest format 3, which versions before format 4 read: for a store that
    /// older readers must still read. Such a save does not build on a parent of format 4 (whose
    /// chunks older readers cannot read): it reads every file as without a parent (what the
    /// store holds under SHA-256 names is still not stored again), and records the parent.
    Sha256,
}

impl ChunkNames {
    /// The name of a chunk of `data`.
    pub fn name(self, data: &[u8]) -> ChunkHash {
        match self {
            ChunkNames::Blake3 => ChunkHash::of(data),
            ChunkNames::Sha256 => ChunkHash::sha256_of(data),
        }
    }

    /// The manifest format a save with these names writes.
    pub fn format_version(self) -> u32 {
        match self {
            ChunkNames::Blake3 => FORMAT_VERSION,
            ChunkNames::Sha256 => 3,
        }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The id of a stored manifest object.
pub(crate) fn id_of(stored: &[u8]) -> SnapshotId {
    SnapshotId::from_hex(&hex(&Sha256::digest(stored))).expect("a SHA-256 is 64 hex digits")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Append lowercase hex of `bytes` to `s`.
pub(crate) fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// One chunk of the workspace archive, in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Its name: the hash of the uncompressed bytes (see [`ChunkHash`]).
    pub hash: ChunkHash,
    /// Uncompressed size.
    pub size: u32,
    /// Size of the stored (compressed) object.
    pub stored_size: u32,
}

/// How the archive was cut into chunks (FastCDC 2020); recorded so a reader knows what wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, except the last.
    pub min_size: u32,
    /// Target average chunk size.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
    /// FastCDC normalization level (0 to 3).
    pub normalization: u8,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    /// Check the sizes against FastCDC's bounds and each other.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as cdc;
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput {
                message: format!("chunker parameters out of range: {self:?}"),
            })
        }
    }
}

/// A stored snapshot: everything needed to rebuild the workspace archive and check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotManifest {
    /// Its id (the SHA-256 of the stored manifest object).
    pub id: SnapshotId,
    /// Manifest format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The session the workspace belongs to.
    pub session_id: String,
    /// When the save started.
    pub created_at: DateTime<Utc>,
    /// The snapshot this one was saved after (its chunks were reused), if any.
    pub parent: Option<SnapshotId>,
    /// Regular files in the workspace.
    pub file_count: u64,
    /// Bytes in those files.
    pub content_bytes: u64,
    /// Sockets, FIFOs and device nodes the save found in the workspace and left out (a
    /// snapshot holds files, directories and symlinks only); 0 where the save could not see
    /// them (a listing or export that leaves them out itself).
    pub skipped_entries: u64,
    /// Size of the workspace archive (tar).
    pub archive_bytes: u64,
    /// Sum of the stored sizes of the chunks the archive is made of (counting repeats).
    pub stored_bytes: u64,
    /// Bytes this save actually uploaded: its packs and its index object (the manifest not
    /// included).
    pub uploaded_bytes: u64,
    /// How the archive was cut.
    pub chunker: ChunkerParams,
    /// The archive's chunks, in order (read from the chunk table).
    pub chunks: Vec<ChunkRef>,
    /// The chunks holding the chunk table.
    pub table: Vec<ChunkRef>,
    /// The chunks holding the file table (empty when the save read an archive stream).
    pub files: Vec<ChunkRef>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format_version: u32,
    session_id: String,
    created_at: DateTime<Utc>,
    parent: Option<String>,
    file_count: u64,
    content_bytes: u64,
    /// Absent from manifests written before it was recorded.
    #[serde(default)]
    skipped_entries: u64,
    archive_bytes: u64,
    stored_bytes: u64,
    uploaded_bytes: u64,
    chunker: ChunkerParams,
    compression: String,
    /// The chunk table's chunks: `[hash hex, size, stored size]` triples.
    table: Vec<(String, u32, u32)>,
    /// The file table's chunks, likewise.
    files: Vec<(String, u32, u32)>,
}

fn wire_refs(refs: &[ChunkRef]) -> Vec<(String, u32, u32)> {
    refs.iter()
        .map(|c| (c.hash.to_hex(), c.size, c.stored_size))
        .collect()
}

fn parse_refs(refs: Vec<(String, u32, u32)>, what: &dyn Fn() -> String) -> Result<Vec<ChunkRef>> {
    refs.into_iter()
        .map(|(h, size, stored_size)| {
            Ok(ChunkRef {
                hash: ChunkHash::from_hex(&h)
                    .ok_or_else(|| Error::corrupt(what(), "bad chunk hash"))?,
                size,
                stored_size,
            })
        })
        .collect()
}

impl SnapshotManifest {
    /// Serialize: the stored bytes and the id they hash to. Sets `self.id`.
    pub(crate) fn encode(&mut self) -> Result<Vec<u8>> {
        let wire = Wire {
            format_version: self.format_version,
            session_id: self.session_id.clone(),
            created_at: self.created_at,
            parent: self.parent.as_ref().map(|p| p.as_str().to_owned()),
            file_count: self.file_count,
            content_bytes: self.content_bytes,
            skipped_entries: self.skipped_entries,
            archive_bytes: self.archive_bytes,
            stored_bytes: self.stored_bytes,
            uploaded_bytes: self.uploaded_bytes,
            chunker: self.chunker,
            compression: "zstd".into(),
            table: wire_refs(&self.table),
            files: wire_refs(&self.files),
        };
        let json = serde_json::to_vec(&wire).map_err(|e| Error::InvalidInput {
            message: format!("manifest does not serialize: {e}"),
        })?;
        let digest = hex(&Sha256::digest(&json));
        let mut plain = format!("{MAGIC} {} {digest}\n", self.format_version).into_bytes();
        plain.extend_from_slice(&json);
        let stored =
            zstd::bulk::compress(&plain, 3).map_err(|e| Error::io("compress manifest", e))?;
        self.id = id_of(&stored);
        Ok(stored)
    }

    /// Parse and verify stored bytes; `expected` is the id the caller looked up.
    pub(crate) fn decode(stored: &[u8], expected: Option<&SnapshotId>) -> Result<Self> {
        let what = || match expected {
            Some(id) => format!("manifest {}", id.as_str()),
            None => "manifest".to_owned(),
        };
        let id = id_of(stored);
        if let Some(expected) = expected
            && *expected != id
        {
            return Err(Error::corrupt(what(), "does not hash to its id"));
        }
        let plain = super::chunk::decompress_bounded(stored, MAX_MANIFEST_BYTES)
            .map_err(|e| Error::corrupt(what(), format!("does not decompress: {e}")))?;
        let nl = plain
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::corrupt(what(), "no header line"))?;
        let header = std::str::from_utf8(&plain[..nl])
            .map_err(|_| Error::corrupt(what(), "header is not UTF-8"))?;
        let json = &plain[nl + 1..];
        let mut parts = header.split(' ');
        let (Some(MAGIC), Some(version), Some(digest), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::corrupt(what(), "bad header line"));
        };
        let version: u32 = match version.parse() {
            Ok(v) if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v) => v,
            _ => {
                return Err(Error::corrupt(
                    what(),
                    format!("unsupported format version {version}"),
                ));
            }
        };
        let actual = hex(&Sha256::digest(json));
        if actual != digest {
            return Err(Error::corrupt(what(), "checksum mismatch"));
        }
        let wire: Wire = serde_json::from_slice(json)
            .map_err(|e| Error::corrupt(what(), format!("bad JSON: {e}")))?;
        if wire.format_version != version || wire.compression != "zstd" {
            return Err(Error::corrupt(what(), "unsupported format or compression"));
        }
        wire.chunker
            .validate()
            .map_err(|_| Error::corrupt(what(), "chunker parameters out of range"))?;
        let table = parse_refs(wire.table, &what)?;
        let files = parse_refs(wire.files, &what)?;
        let parent = match wire.parent {
            Some(p) => Some(
                SnapshotId::from_hex(&p).ok_or_else(|| Error::corrupt(what(), "bad parent id"))?,
            ),
            None => None,
        };
        Ok(Self {
            id,
            format_version: wire.format_version,
            session_id: wire.session_id,
            created_at: wire.created_at,
            parent,
            file_count: wire.file_count,
            content_bytes: wire.content_bytes,
            skipped_entries: wire.skipped_entries,
            archive_bytes: wire.archive_bytes,
            stored_bytes: wire.stored_bytes,
            uploaded_bytes: wire.uploaded_bytes,
            chunker: wire.chunker,
            chunks: Vec::new(),
            table,
            files,
        })
    }

    /// Set the chunk list read from the chunk table, checking it against the sizes the manifest
    /// claims.
    pub(crate) fn set_chunks(&mut self, chunks: Vec<ChunkRef>) -> Result<()> {
        // No chunk is larger than the chunker that cut it allows: a record claiming more is
        // damage (and would size a decompression buffer), refused before any chunk is read.
        if let Some(c) = chunks.iter().find(|c| c.size > self.chunker.max_size) {
            return Err(Error::corrupt(
                format!("manifest {}", self.id.as_str()),
                format!(
                    "chunk {} claims {} bytes, more than its chunker's largest ({})",
                    c.hash.to_hex(),
                    c.size,
                    self.chunker.max_size
                ),
            ));
        }
        let total: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
        let stored: u64 = chunks.iter().map(|c| u64::from(c.stored_size)).sum();
        if total != self.archive_bytes || stored != self.stored_bytes {
            return Err(Error::corrupt(
                format!("manifest {}", self.id.as_str()),
                "chunk sizes do not add up",
            ));
        }
        self.chunks = chunks;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotManifest {
        SnapshotManifest {
            id: SnapshotId::from_hex(&"0".repeat(64)).unwrap(),
            format_version: FORMAT_VERSION,
            session_id: "sesn_1".into(),
            created_at: Utc::now(),
            parent: None,
            file_count: 1,
            content_bytes: 3,
            skipped_entries: 1,
            archive_bytes: 7,
            stored_bytes: 9,
            uploaded_bytes: 9,
            chunker: ChunkerParams::default(),
            chunks: Vec::new(),
            files: Vec::new(),
            table: vec![
                ChunkRef {
                    hash: ChunkHash::of(b"abc"),
                    size: 3,
                    stored_size: 4,
                },
                ChunkRef {
                    hash: ChunkHash::of(b"defg"),
                    size: 4,
                    stored_size: 5,
                },
            ],
        }
    }

    #[test]
    fn round_trip_sets_and_checks_the_id() {
        let mut m = sample();
        let bytes = m.encode().unwrap();
        let back = SnapshotManifest::decode(&bytes, Some(&m.id)).unwrap();
        assert_eq!(back, m);
        // The chunk list must add up to the sizes claimed.
        let mut back = back;
        assert!(back.set_chunks(m.table[..1].to_vec()).is_err());
        back.set_chunks(m.table.clone()).unwrap();
        let other = SnapshotId::from_hex(&"1".repeat(64)).unwrap();
        let e = SnapshotManifest::decode(&bytes, Some(&other)).unwrap_err();
        assert_eq!(e.kind(), super::super::ErrorKind::Corrupt);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let mut m = sample();
        let bytes = m.encode().unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                SnapshotManifest::decode(&bad, Some(&m.id)).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn chunk_hash_hex_round_trip() {
        let h = ChunkHash::of(b"x");
        assert_eq!(ChunkHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChunkHash::from_hex("zz"), None);
    }
}
