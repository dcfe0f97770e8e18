//! The names in each directory of the parent snapshot, so the walk does not read again a
//! directory that did not change.
//!
//! Reading a directory (`getdents`) is about a quarter of the system time of a save that finds
//! little changed (ext4 sorts each directory's entries by hash on every read). A directory's
//! modification and inode change times move whenever a name in it is added, removed or
//! renamed, and the change time cannot be set by a user: a directory whose metadata (mode,
//! times, inode) equals what the parent's file table recorded, and whose unit was not racy
//! then (see `walk::RACY_WINDOW`), holds the names it held, so the walk takes them from here
//! and only `fstatat`s each. This is the trust the save already puts in a file's metadata to
//! reuse its chunks, applied to a directory's names. The workspace root is always read (the
//! file table has no entry for it).
//!
//! Built only from a parent whose save left out no special file (its file table then names
//! every entry). A file table is input like any other: names are checked to be single path
//! components (not empty, `.`, `..`, and without `/` or NUL) and in strictly increasing order,
//! and a directory with one that is not is read as usual, so no name taken from here can
//! lead the walk outside the workspace.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::tables::{EntryKey, Kind, Unit};

/// A directory's metadata, as the walk compares it (see [`ParentDirs::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirStat {
    pub mode: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl DirStat {
    fn of(key: &EntryKey) -> Self {
        Self {
            mode: key.mode,
            mtime_ns: key.mtime_ns,
            ctime_ns: key.ctime_ns,
            ino: key.ino,
        }
    }
}

/// A directory's names (each followed by a NUL), and where each is (without its NUL).
pub(crate) type DirNames<'a> = (&'a Arc<[u8]>, &'a [Range<usize>]);

/// One directory of the parent: its metadata then, and its names in order.
struct Dir {
    stat: DirStat,
    /// The names, each followed by a NUL (shared with each listing that takes them).
    names: Arc<[u8]>,
    /// Where each name is in `names` (without its NUL).
    spans: Vec<Range<usize>>,
}

/// The names of one directory, while they are gathered.
struct Names {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
    /// Each a single component, each after the one before.
    ok: bool,
}

impl Names {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            spans: Vec::new(),
            ok: true,
        }
    }

    fn push(&mut self, name: &[u8]) {
        let in_order = self
            .spans
            .last()
            .is_none_or(|last| &self.buf[last.clone()] < name);
        self.ok &= is_component(name) && in_order;
        let start = self.buf.len();
        self.buf.extend_from_slice(name);
        self.spans.push(start..self.buf.len());
        self.buf.push(0);
    }
}

/// The parent's directories whose names can be taken as they were (see the module docs).
#[derive(Default)]
pub(crate) struct ParentDirs {
    /// By path relative to the workspace (raw bytes, as in the file table).
    dirs: HashMap<Vec<u8>, Dir>,
}

/// Whether `name` is one path component that stays in its directory.
fn is_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

impl ParentDirs {
    /// From the parent's units in archive order. `complete`: whether the parent's save left
    /// out nothing (no special file); if not, nothing is taken from it.
    pub fn new(units: &[Unit], complete: bool) -> Self {
        if !complete {
            return Self::default();
        }
        // Every directory's names (a parent's children come in name order, depth first), and
        // the metadata of the directories whose unit was not racy.
        let mut children: HashMap<&[u8], Names> = HashMap::new();
        let mut stats: Vec<(&[u8], DirStat)> = Vec::new();
        for unit in units {
            for e in &unit.entries {
                let (dir, name) = match e.path.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&e.path[..i], &e.path[i + 1..]),
                    None => (&e.path[..0], &e.path[..]),
                };
                children.entry(dir).or_insert_with(Names::new).push(name);
                if e.kind == Kind::Dir && !unit.racy {
                    stats.push((&e.path, DirStat::of(e)));
                }
            }
        }
        let mut dirs = HashMap::with_capacity(stats.len());
        for (path, stat) in stats {
            // (An empty directory has no children listed.)
            let names = children.remove(path).unwrap_or_else(Names::new);
            if names.ok {
                dirs.insert(
                    path.to_vec(),
                    Dir {
                        stat,
                        names: names.buf.into(),
                        spans: names.spans,
                    },
                );
            }
        }
        Self { dirs }
    }

    /// The names in the directory `path` (relative to the workspace), in name order, each
    /// followed by a NUL, and where each is: if the parent had it with metadata `now`.
    pub fn names(&self, path: &[u8], now: &DirStat) -> Option<DirNames<'_>> {
        let d = self.dirs.get(path)?;
        (d.stat == *now).then_some((&d.names, &d.spans[..]))
    }

    /// How many directories it knows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.dirs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, kind: Kind, ino: u64) -> EntryKey {
        EntryKey {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == Kind::Dir { 0o40755 } else { 0o100644 },
            size: 0,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
            ino,
        }
    }

    fn unit(racy: bool, entries: Vec<EntryKey>) -> Unit {
        Unit {
            chunk_count: 1,
            racy,
            entries,
            checks: Vec::new(),
        }
    }

    fn names_of(d: &ParentDirs, path: &str, stat: &DirStat) -> Option<Vec<String>> {
        d.names(path.as_bytes(), stat).map(|(buf, spans)| {
            spans
                .iter()
                .map(|s| String::from_utf8(buf[s.clone()].to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn names_come_back_for_a_directory_with_the_same_metadata_only() {
        let a = key("a", Kind::Dir, 10);
        let units = vec![
            unit(false, vec![a.clone(), key("a/x", Kind::File, 11)]),
            unit(
                false,
                vec![key("a/y", Kind::Dir, 12), key("a/z", Kind::File, 13)],
            ),
            unit(
                true,
                vec![key("b", Kind::Dir, 20), key("b/q", Kind::File, 21)],
            ),
        ];
        let d = ParentDirs::new(&units, true);
        let same = DirStat::of(&a);
        assert_eq!(names_of(&d, "a", &same).unwrap(), ["x", "y", "z"]);
        // An empty directory: no names.
        let y = DirStat::of(&key("a/y", Kind::Dir, 12));
        assert_eq!(names_of(&d, "a/y", &y).unwrap(), Vec::<String>::new());
        // Any field moved: read it.
        for changed in [
            DirStat { ino: 99, ..same },
            DirStat {
                mtime_ns: 1_001,
                ..same
            },
            DirStat {
                ctime_ns: 2_001,
                ..same
            },
            DirStat {
                mode: 0o40700,
                ..same
            },
        ] {
            assert!(names_of(&d, "a", &changed).is_none());
        }
        // A racy unit's directory, and one the parent did not have: read them.
        assert!(names_of(&d, "b", &DirStat::of(&key("b", Kind::Dir, 20))).is_none());
        assert!(names_of(&d, "c", &same).is_none());
        // The root is never taken from the parent.
        assert!(names_of(&d, "", &same).is_none());
        // A parent that left out special files: nothing.
        assert_eq!(ParentDirs::new(&units, false).len(), 0);
    }

    #[test]
    fn a_directory_with_a_name_that_could_leave_it_is_read() {
        let a = key("a", Kind::Dir, 10);
        for bad in ["a/..", "a/.", "a/"] {
            let units = vec![unit(false, vec![a.clone(), key(bad, Kind::Dir, 11)])];
            let d = ParentDirs::new(&units, true);
            assert!(names_of(&d, "a", &DirStat::of(&a)).is_none(), "{bad:?}");
        }
        let nul = EntryKey {
            path: b"a/x\0y".to_vec(),
            ..key("", Kind::File, 11)
        };
        let d = ParentDirs::new(&[unit(false, vec![a.clone(), nul])], true);
        assert!(names_of(&d, "a", &DirStat::of(&a)).is_none());
        // Out of order, or twice: read it too.
        for pair in [["a/y", "a/x"], ["a/x", "a/x"]] {
            let units = vec![unit(
                false,
                vec![
                    a.clone(),
                    key(pair[0], Kind::File, 11),
                    key(pair[1], Kind::File, 12),
                ],
            )];
            let d = ParentDirs::new(&units, true);
            assert!(names_of(&d, "a", &DirStat::of(&a)).is_none(), "{pair:?}");
        }
    }
}
