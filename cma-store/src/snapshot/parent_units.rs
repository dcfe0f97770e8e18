//! The parent snapshot's units, as a save reuses them: a unit whose entries all have the
//! metadata the parent recorded is not read again, its chunks (and its entries' keys) are the
//! parent's.

use std::collections::HashMap;

use super::hinted::{Check, Hints};
use super::manifest::ChunkRef;
use super::parent_dirs::ParentDirs;
use super::tables::{EntryKey, Kind, Unit};

/// The parent snapshot's units, for reuse, and its directories' names.
pub(crate) struct ParentUnits {
    reuse: Reuse,
    /// Its directories' names, for those that did not change.
    pub dirs: ParentDirs,
}

/// The parent's units by their first path.
pub(crate) struct Reuse {
    /// First path of each unit → the unit.
    by_first: HashMap<Vec<u8>, ParentUnit>,
    /// Whether the parent was cut with this save's chunker setting (else its chunks are no
    /// hints for cutting).
    same_cuts: bool,
}

/// One unit of the parent.
pub(crate) struct ParentUnit {
    /// Its entries' keys, in archive order.
    pub entries: Vec<EntryKey>,
    /// Its chunks, in order.
    pub refs: Vec<ChunkRef>,
    /// Their checks (see the `hinted` module), or none.
    pub checks: Vec<Check>,
    /// Changed too recently then to be trusted now (see `walk::RACY_WINDOW`).
    racy: bool,
}

impl ParentUnits {
    /// Pair the parent's units with its chunk list; `None` if they do not add up. `same_cuts`:
    /// whether the parent was cut with this save's chunker setting; `complete`: whether its
    /// save left nothing out (see `ParentDirs::new`).
    pub fn new(
        units: Vec<Unit>,
        chunks: &[ChunkRef],
        same_cuts: bool,
        complete: bool,
    ) -> Option<Self> {
        let dirs = ParentDirs::new(&units, complete);
        let mut by_first = HashMap::with_capacity(units.len());
        let mut at = 0usize;
        for u in units {
            let end = at.checked_add(u.chunk_count as usize)?;
            let refs = chunks.get(at..end)?.to_vec();
            at = end;
            if let Some(first) = u.entries.first() {
                // Checks of chunks cut with another setting are no hints for this one; nor are
                // they passed on by a unit reused as it is.
                let checks = if same_cuts && u.checks.len() == refs.len() {
                    u.checks
                } else {
                    Vec::new()
                };
                by_first.insert(
                    first.path.clone(),
                    ParentUnit {
                        entries: u.entries,
                        refs,
                        checks,
                        racy: u.racy,
                    },
                );
            }
        }
        (at == chunks.len()).then_some(Self {
            reuse: Reuse {
                by_first,
                same_cuts,
            },
            dirs,
        })
    }

    /// The parent's chunks (and their checks) for a unit of exactly these entries, if it had
    /// one whose times can be trusted.
    pub fn reusable(&self, entries: &[EntryKey]) -> Option<(&[ChunkRef], &[Check])> {
        let first = entries.first()?;
        let u = self.reuse.by_first.get(&first.path)?;
        (!u.racy && u.entries == entries).then_some((&u.refs, &u.checks))
    }

    /// The units to take from (by one walk) and, apart, the directories (read by the walk's
    /// listing threads meanwhile).
    pub fn split(&mut self) -> (&mut Reuse, &ParentDirs) {
        (&mut self.reuse, &self.dirs)
    }
}

impl Reuse {
    /// Take out the parent's unit of `n` entries whose first path is `first`, if its times can
    /// be trusted and `same(i, key)` says its entry `i` is the walk's entry `i`: the walk then
    /// has its chunks, checks and entry keys without copying them (each unit is met once).
    pub fn take_if(
        &mut self,
        first: &[u8],
        n: usize,
        same: impl Fn(usize, &EntryKey) -> bool,
    ) -> Option<ParentUnit> {
        let u = self.by_first.get(first)?;
        let matches = !u.racy
            && u.entries.len() == n
            && u.entries.iter().enumerate().all(|(i, e)| same(i, e));
        if matches {
            self.by_first.remove(first)
        } else {
            None
        }
    }

    /// The parent's chunks and checks of the big file `key` names, as hints to cut and hash
    /// its new content (see the `hinted` module): its times do not matter, every byte is
    /// checked.
    pub fn hints(&self, key: &EntryKey) -> Option<Hints> {
        let u = self.by_first.get(&key.path)?;
        let file = matches!(u.entries.as_slice(), [e] if e.kind == Kind::File);
        (self.same_cuts && file && !u.checks.is_empty()).then(|| Hints {
            refs: u.refs.clone(),
            checks: u.checks.clone(),
        })
    }
}

/// Whether the parent's entry `parent` is the walk's entry `key` at `path` (the walk keeps
/// the paths of the entries it may not need apart, see `walk`).
pub(crate) fn same_entry(parent: &EntryKey, key: &EntryKey, path: &[u8]) -> bool {
    // Every field by name (no `..`): a field added to the key must be compared here too.
    let EntryKey {
        path: parent_path,
        kind,
        mode,
        size,
        mtime_ns,
        ctime_ns,
        ino,
    } = parent;
    parent_path == path
        && *kind == key.kind
        && *mode == key.mode
        && *size == key.size
        && *mtime_ns == key.mtime_ns
        && *ctime_ns == key.ctime_ns
        && *ino == key.ino
}
