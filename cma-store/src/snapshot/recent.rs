//! The last snapshot a store saved, kept in memory for the next save that names it as parent.
//!
//! A session saves again and again, each save with the previous one as parent, and each save
//! starts by reading its parent: the manifest, the chunk table and the file table, decoded
//! into units. On a local store that is a few milliseconds of a save that otherwise takes
//! twenty when little changed. The saving process had all of it in memory a moment before, so
//! a store keeps its last saved snapshot (one, of a bounded size) and the next save taking it
//! as parent takes it from here instead. A snapshot never changes once saved (its id is the
//! hash of its manifest), so what is kept cannot go stale; whether it still exists is asked
//! of the store when the save starts (a deleted snapshot is no parent, as when it is read
//! from the store) and again when its chunks are named.
//!
//! The units are paired with their chunks (see `parent_units::ParentUnits`) on the blocking
//! pool after the save returns, not while it runs: a save that comes sooner reads its parent
//! as any.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::path::Path;

use super::manifest::SnapshotManifest;
use super::parent_units::ParentUnits;
use super::tables::Unit;
use crate::SnapshotId;

/// Largest file table kept, in entries (about 100 bytes of memory each).
const MAX_ENTRIES: usize = 200_000;

/// A snapshot just saved, as its next save needs it.
pub(crate) struct Recent {
    /// Where its manifest is.
    pub key: Path,
    pub manifest: SnapshotManifest,
    /// Its file table, paired with its chunks (`None` if they did not add up).
    pub units: Option<ParentUnits>,
}

/// Most chunks of a snapshot kept (its chunk list is held twice: in the manifest and with
/// the units, 40 bytes a chunk each).
const MAX_CHUNKS: usize = 500_000;

/// Whether a snapshot of this file table and this many chunks is small enough to keep.
pub(crate) fn worth_keeping(units: &[Unit], chunks: usize) -> bool {
    chunks <= MAX_CHUNKS && units.iter().map(|u| u.entries.len()).sum::<usize>() <= MAX_ENTRIES
}

/// At most one [`Recent`], shared by a store's clones.
#[derive(Default)]
pub(crate) struct RecentCache {
    /// The one kept, with its ticket.
    slot: Mutex<(u64, Option<Recent>)>,
    tickets: AtomicU64,
}

impl RecentCache {
    /// A ticket for a snapshot just saved: of two kept, the one with the later ticket stays
    /// (they are kept in whatever order their units are ready).
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Keep `recent` in place of any other with an earlier ticket.
    pub fn keep(&self, ticket: u64, recent: Recent) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if ticket > slot.0 {
            *slot = (ticket, Some(recent));
        }
    }

    /// The snapshot `id`, if it is the one kept (it is given out once).
    pub fn take(&self, id: &SnapshotId) -> Option<Recent> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.1.as_ref().is_some_and(|r| r.manifest.id == *id) {
            slot.1.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tables::{EntryKey, Kind};

    fn recent(id: u8) -> Recent {
        let manifest = SnapshotManifest {
            id: SnapshotId::from_hex(&format!("{id:02x}").repeat(32)).unwrap(),
            format_version: crate::snapshot::FORMAT_VERSION,
            session_id: "sesn_1".into(),
            created_at: chrono::Utc::now(),
            parent: None,
            file_count: 1,
            content_bytes: 1,
            skipped_entries: 0,
            archive_bytes: 0,
            stored_bytes: 0,
            uploaded_bytes: 0,
            chunker: Default::default(),
            chunks: Vec::new(),
            table: Vec::new(),
            files: Vec::new(),
        };
        Recent {
            key: Path::from("manifests/x"),
            manifest,
            units: None,
        }
    }

    fn units(entries: usize) -> Vec<Unit> {
        let key = EntryKey {
            path: b"f".to_vec(),
            kind: Kind::File,
            mode: 0o100644,
            size: 1,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 1,
        };
        vec![Unit {
            chunk_count: 0,
            racy: false,
            entries: vec![key; entries],
            checks: Vec::new(),
        }]
    }

    #[test]
    fn the_last_snapshot_is_given_once_and_only_for_its_id() {
        let cache = RecentCache::default();
        let (first, second) = (cache.ticket(), cache.ticket());
        // Kept in the wrong order: the later ticket stays.
        cache.keep(second, recent(2));
        cache.keep(first, recent(1));
        let one = SnapshotId::from_hex(&"01".repeat(32)).unwrap();
        let two = SnapshotId::from_hex(&"02".repeat(32)).unwrap();
        assert!(cache.take(&one).is_none());
        assert!(cache.take(&two).is_some());
        assert!(cache.take(&two).is_none());
        assert!(worth_keeping(&units(3), 10));
        assert!(!worth_keeping(&units(MAX_ENTRIES + 1), 10));
        assert!(!worth_keeping(&units(3), MAX_CHUNKS + 1));
    }
}
