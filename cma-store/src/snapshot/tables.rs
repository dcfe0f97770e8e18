//! The two tables a manifest points to, stored as ordinary chunks so that a snapshot that
//! differs little from its parent stores little besides its new data:
//!
//! - the *chunk table*: the archive's chunks in order, 40 bytes each (name, size, stored
//!   size, the two sizes little-endian `u32`);
//! - the *file table*: how the archive was cut into units (see `walk`), with the metadata of
//!   every entry in each unit, so the next save can reuse a unit whose entries are unchanged
//!   without reading them. It is a cache: a save that cannot use it reads everything.
//!
//! Unit record: `u32` chunk count, `u8` flags (bit 0: racy, never reuse; bit 1: checks
//! follow), `u32` entry count, then per entry: `u16` path length, path bytes, `u8` kind, `u32`
//! mode, `u64` size, `i64` mtime ns, `i64` ctime ns, `u64` inode; then, with bit 1, one 32-byte
//! check per chunk (see the `hinted` module). All little-endian. A unit's chunks follow the
//! previous unit's in the chunk table, so changing one unit changes only its own record.

use super::error::{Error, Result};
use super::hinted::Check;
use super::manifest::{ChunkHash, ChunkRef, ChunkerParams};

/// Bytes per chunk-table record.
pub(crate) const REF_BYTES: usize = 40;

/// How the tables are cut into chunks: small, so a change rewrites little.
pub(crate) const TABLE_CHUNKER: ChunkerParams = ChunkerParams {
    min_size: 2 * 1024,
    avg_size: 8 * 1024,
    max_size: 32 * 1024,
    normalization: 1,
};

/// Serialize a chunk list.
pub(crate) fn encode_chunks(refs: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * REF_BYTES);
    for r in refs {
        out.extend_from_slice(&r.hash.0);
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&r.stored_size.to_le_bytes());
    }
    out
}

/// Parse a chunk list.
pub(crate) fn decode_chunks(data: &[u8], what: &str) -> Result<Vec<ChunkRef>> {
    if !data.len().is_multiple_of(REF_BYTES) {
        return Err(Error::corrupt(
            what,
            "chunk table length is not a whole number of records",
        ));
    }
    Ok(data
        .chunks_exact(REF_BYTES)
        .map(|r| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&r[..32]);
            ChunkRef {
                hash: ChunkHash(hash),
                size: u32::from_le_bytes([r[32], r[33], r[34], r[35]]),
                stored_size: u32::from_le_bytes([r[36], r[37], r[38], r[39]]),
            }
        })
        .collect())
}

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir = 0,
    File = 1,
    Symlink = 2,
}

/// The metadata that decides whether an entry (and its archive bytes) changed. The inode
/// change time moves on every write and metadata change and cannot be set by a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryKey {
    /// Path relative to the workspace, raw bytes.
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// One unit of the archive: the entries it holds and how many chunks it was cut into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    pub chunk_count: u32,
    /// Changed too recently to trust its times next time (see `walk`).
    pub racy: bool,
    pub entries: Vec<EntryKey>,
    /// One check per chunk (see the `hinted` module), or none.
    pub checks: Vec<Check>,
}

const RACY: u8 = 1;
const CHECKED: u8 = 2;

/// Serialize units.
#[cfg(test)]
pub(crate) fn encode_units(units: &[Unit]) -> Vec<u8> {
    let mut out = Vec::new();
    for u in units {
        encode_unit(u, &mut out);
    }
    out
}

/// Serialize one unit, appended to `out`: a file table is its units' encodings one after
/// another, so a save encodes each unit as it ends (see `save`).
pub(crate) fn encode_unit(u: &Unit, out: &mut Vec<u8>) {
    // Checks that do not match the chunks one to one are left out (a save that cannot use
    // them reads the file whole).
    let checked = !u.checks.is_empty() && u.checks.len() == u.chunk_count as usize;
    out.extend_from_slice(&u.chunk_count.to_le_bytes());
    out.push(if u.racy { RACY } else { 0 } | if checked { CHECKED } else { 0 });
    out.extend_from_slice(&(u.entries.len() as u32).to_le_bytes());
    for e in &u.entries {
        // Paths longer than u16::MAX cannot exist on Linux (PATH_MAX is 4096).
        let len = u16::try_from(e.path.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&e.path[..usize::from(len)]);
        out.push(e.kind as u8);
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.ino.to_le_bytes());
    }
    if checked {
        for c in &u.checks {
            out.extend_from_slice(c);
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }
}

/// Parse units; `None` if the bytes are not a well-formed file table.
pub(crate) fn decode_units(data: &[u8]) -> Option<Vec<Unit>> {
    let mut r = Reader { data };
    let mut units = Vec::new();
    while !r.data.is_empty() {
        let chunk_count = u32::from_le_bytes(r.array()?);
        let flags = r.array::<1>()?[0];
        if flags & !(RACY | CHECKED) != 0 {
            return None;
        }
        let n = u32::from_le_bytes(r.array()?) as usize;
        // Each entry takes at least 39 bytes: bound the allocation by what is there.
        let mut entries = Vec::with_capacity(n.min(r.data.len() / 39));
        for _ in 0..n {
            let len = usize::from(u16::from_le_bytes(r.array()?));
            let path = r.take(len)?.to_vec();
            let kind = match r.array::<1>()?[0] {
                0 => Kind::Dir,
                1 => Kind::File,
                2 => Kind::Symlink,
                _ => return None,
            };
            entries.push(EntryKey {
                path,
                kind,
                mode: u32::from_le_bytes(r.array()?),
                size: u64::from_le_bytes(r.array()?),
                mtime_ns: i64::from_le_bytes(r.array()?),
                ctime_ns: i64::from_le_bytes(r.array()?),
                ino: u64::from_le_bytes(r.array()?),
            });
        }
        let checks = if flags & CHECKED != 0 {
            let n = (chunk_count as usize).checked_mul(32)?;
            r.take(n)?
                .chunks_exact(32)
                .map(|c| c.try_into().ok())
                .collect::<Option<Vec<Check>>>()?
        } else {
            Vec::new()
        };
        units.push(Unit {
            chunk_count,
            racy: flags & RACY != 0,
            entries,
            checks,
        });
    }
    Some(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, size: u64) -> EntryKey {
        EntryKey {
            path: path.as_bytes().to_vec(),
            kind: Kind::File,
            mode: 0o100644,
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: -5,
            ino: 42,
        }
    }

    #[test]
    fn chunk_table_round_trip_and_bad_length() {
        let refs = vec![
            ChunkRef {
                hash: ChunkHash::of(b"a"),
                size: 1,
                stored_size: u32::MAX,
            },
            ChunkRef {
                hash: ChunkHash::of(b"b"),
                size: 7,
                stored_size: 9,
            },
        ];
        let bytes = encode_chunks(&refs);
        assert_eq!(decode_chunks(&bytes, "t").unwrap(), refs);
        assert!(decode_chunks(&bytes[..bytes.len() - 1], "t").is_err());
    }

    #[test]
    fn units_round_trip_and_any_truncation_is_refused() {
        let units = vec![
            Unit {
                chunk_count: 3,
                racy: false,
                entries: vec![key("a", 1), key("dir/\u{e9}", 0)],
                checks: Vec::new(),
            },
            Unit {
                chunk_count: 0,
                racy: true,
                entries: vec![],
                checks: Vec::new(),
            },
            Unit {
                chunk_count: 2,
                racy: true,
                entries: vec![key("big", 1 << 20)],
                checks: vec![[7; 32], [9; 32]],
            },
        ];
        let bytes = encode_units(&units);
        assert_eq!(decode_units(&bytes).unwrap(), units);
        for cut in 1..bytes.len() {
            // A unit header with zero entries can end exactly at a cut; anything else fails.
            if let Some(back) = decode_units(&bytes[..cut]) {
                assert_ne!(back, units);
            }
        }
        let mut bad = bytes.clone();
        bad[4] = 7; // flags
        assert!(decode_units(&bad).is_none());
    }

    #[test]
    fn checks_that_do_not_match_the_chunks_are_left_out() {
        let unit = Unit {
            chunk_count: 3,
            racy: false,
            entries: vec![key("big", 1 << 20)],
            checks: vec![[1; 32]; 2],
        };
        let back = decode_units(&encode_units(std::slice::from_ref(&unit))).unwrap();
        assert!(back[0].checks.is_empty());
        assert_eq!(back[0].entries, unit.entries);
        // A record claiming checks for more chunks than its bytes hold is refused.
        let mut bytes = encode_units(&[Unit {
            chunk_count: 1,
            checks: vec![[1; 32]],
            ..unit
        }]);
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_units(&bytes).is_none());
    }
}
