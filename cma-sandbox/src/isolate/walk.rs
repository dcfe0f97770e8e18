//! Walking a directory tree with directory handles: every step is one `openat` of a single name
//! relative to an open directory, never a path resolved again from the root, so a walk costs the
//! same per entry at any depth (a chain 2000 levels deep is walked 20× slower than one 100 deep,
//! not 400×). Nothing recurses: the levels are a [`DirStack`] on the heap.
//!
//! At most [`MAX_OPEN_DIRS`] handles are open at once, whatever the depth. Deeper levels close
//! the handles of shallower ones; coming back up, a closed parent is reopened as `..` of its
//! child and accepted only when it is the very directory that was left (same device and inode),
//! so a tree renamed while it is walked can never lead the walk anywhere else: the step fails
//! instead.
//!
//! Users: the `walk_tree` listing stream, the in-sandbox `search_tree`, workspace export,
//! recursive removal (also `destroy`) and quota measurement.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::{Dir, Metadata};
use rustix::fs::{Mode, OFlags};

/// Most directory handles a walk keeps open.
pub(crate) const MAX_OPEN_DIRS: usize = 32;
/// Most subdirectory names a walk keeps waiting to be entered (over all levels): a tree wider
/// than this is refused rather than held in memory.
pub(crate) const MAX_PENDING_DIRS: usize = 1 << 20;

/// One level of the walk.
struct Level {
    /// Its handle; `None` once closed to stay within [`MAX_OPEN_DIRS`].
    dir: Option<Dir>,
    /// Its identity, to recognise it when it is reopened as `..`.
    dev: u64,
    ino: u64,
}

/// The open directories from a walk's start down to where it is.
pub(crate) struct DirStack {
    levels: Vec<Level>,
    open: usize,
    /// Handles opened so far (every `push`, every reopen).
    pub opened: u64,
    /// Most handles open at once so far.
    pub peak_open: usize,
}

fn identity(dir: &Dir) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(dir)?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Open the directory `name` (one component) relative to `dir`, never through a symlink.
pub(crate) fn open_child(dir: &Dir, name: &OsStr) -> io::Result<Dir> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single directory name",
        ));
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Dir::from_std_file(std::fs::File::from(fd)))
}

impl DirStack {
    /// A walk starting at `start` (depth 0; its handle stays open to the end).
    pub fn new(start: Dir) -> io::Result<Self> {
        let (dev, ino) = identity(&start)?;
        Ok(Self {
            levels: vec![Level {
                dir: Some(start),
                dev,
                ino,
            }],
            open: 1,
            opened: 0,
            peak_open: 1,
        })
    }

    /// The directory the walk is in (always open).
    pub fn current(&self) -> &Dir {
        self.levels
            .last()
            .and_then(|l| l.dir.as_ref())
            .unwrap_or_else(|| unreachable!("the current level is always open"))
    }

    /// Enter the subdirectory `name` of the current directory (not through a symlink).
    pub fn push(&mut self, name: &OsStr) -> io::Result<()> {
        let dir = open_child(self.current(), name)?;
        let (dev, ino) = identity(&dir)?;
        self.opened += 1;
        self.levels.push(Level {
            dir: Some(dir),
            dev,
            ino,
        });
        self.open += 1;
        if self.open > MAX_OPEN_DIRS {
            // Close the shallowest open handle below the start.
            if let Some(l) = self.levels[1..].iter_mut().find(|l| l.dir.is_some()) {
                l.dir = None;
                self.open -= 1;
            }
        }
        self.peak_open = self.peak_open.max(self.open);
        Ok(())
    }

    /// Leave the current directory for its parent, reopening the parent as `..` when its
    /// handle was closed (and only if it is still the same directory). Returns the current
    /// directory's handle, for a last operation on it.
    pub fn pop(&mut self) -> io::Result<Dir> {
        if self.levels.len() < 2 {
            return Err(io::Error::other("the walk is at its start"));
        }
        let n = self.levels.len();
        if self.levels[n - 2].dir.is_none() {
            let child = self.levels[n - 1]
                .dir
                .as_ref()
                .unwrap_or_else(|| unreachable!("the current level is always open"));
            let fd = rustix::fs::openat(
                child,
                "..",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let parent = Dir::from_std_file(std::fs::File::from(fd));
            let (dev, ino) = identity(&parent)?;
            let want = &self.levels[n - 2];
            if (dev, ino) != (want.dev, want.ino) {
                return Err(io::Error::other(
                    "a directory was moved while the tree was walked",
                ));
            }
            self.opened += 1;
            self.levels[n - 2].dir = Some(parent);
            self.open += 1;
            self.peak_open = self.peak_open.max(self.open);
        }
        let level = self
            .levels
            .pop()
            .unwrap_or_else(|| unreachable!("checked above"));
        self.open -= 1;
        Ok(level
            .dir
            .unwrap_or_else(|| unreachable!("the current level is always open")))
    }
}

/// Open the regular file `name` (one component) in `dir` for reading: not through a symlink,
/// and without blocking on a FIFO swapped in since it was listed. `None` when it is not a
/// regular file; otherwise the file and its size.
pub(crate) fn open_regular(dir: &Dir, name: &OsStr) -> io::Result<Option<(std::fs::File, u64)>> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    Ok(Some((std::fs::File::from(fd), st.st_size as u64)))
}

/// One entry of a listing: its name and `lstat` metadata.
pub(crate) struct Listed {
    pub name: OsString,
    pub meta: Metadata,
}

/// The entries of `dir` in the order the file system gives them (entries removed meanwhile
/// are skipped); more than `max` fails with `None` in the error's place.
pub(crate) fn list(dir: &Dir, max: usize) -> io::Result<Option<Vec<Listed>>> {
    let mut out = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        if out.len() == max {
            return Ok(None);
        }
        match entry.metadata() {
            Ok(meta) => out.push(Listed {
                name: entry.file_name(),
                meta,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// Walk from `top` depth first in pre-order: `visit(dir, names)` is called for `top` (`names`
/// empty) and then for each subdirectory it asked for, `names` being the path of names from
/// `top`; it returns the subdirectories of `dir` to enter, in order, or `None` to end the walk.
/// A subdirectory that cannot be entered (gone, not a directory any more, unreadable) is
/// passed over.
pub(crate) fn preorder(
    top: Dir,
    mut visit: impl FnMut(&Dir, &[OsString]) -> io::Result<Option<Vec<OsString>>>,
) -> io::Result<WalkStats> {
    let mut stack = DirStack::new(top)?;
    let mut names: Vec<OsString> = Vec::new();
    // Per level: the subdirectories still to enter, last first.
    let mut pending: Vec<Vec<OsString>> = Vec::new();
    let mut total_pending = 0usize;
    let stats = |s: &DirStack| WalkStats {
        opened: s.opened,
        peak_open: s.peak_open,
    };
    let Some(mut subs) = visit(stack.current(), &names)? else {
        return Ok(stats(&stack));
    };
    subs.reverse();
    total_pending += subs.len();
    pending.push(subs);
    while let Some(level) = pending.last_mut() {
        let Some(name) = level.pop() else {
            pending.pop();
            if names.pop().is_some() {
                drop(stack.pop()?);
            }
            continue;
        };
        total_pending -= 1;
        match stack.push(&name) {
            Ok(()) => {}
            Err(e) if passable(&e) => continue,
            Err(e) => return Err(e),
        }
        names.push(name);
        let Some(mut subs) = visit(stack.current(), &names)? else {
            return Ok(stats(&stack));
        };
        subs.reverse();
        total_pending += subs.len();
        if total_pending > MAX_PENDING_DIRS {
            return Err(io::Error::other("directory tree too wide to walk"));
        }
        pending.push(subs);
    }
    Ok(stats(&stack))
}

/// Errors that make a walk pass over a directory rather than fail: it is gone, is no longer a
/// directory (or became a symlink), or cannot be read.
pub(crate) fn passable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Remove the non-directories of `dir`; return the names of its subdirectories.
fn clear_files(dir: &Dir) -> io::Result<Vec<OsString>> {
    let mut subs = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if ft.is_dir() {
            subs.push(entry.file_name());
            continue;
        }
        match entry.remove_file() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(subs)
}

/// Counters of a finished walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalkStats {
    /// Directory handles opened.
    pub opened: u64,
    /// Most handles open at once.
    pub peak_open: usize,
}

/// Remove everything inside the directory `top` (not `top` itself): files on the way down,
/// each directory once it is empty. Linear in the entries, at most [`MAX_OPEN_DIRS`] handles
/// and no recursion, at any depth.
pub(crate) fn remove_contents(top: Dir) -> io::Result<WalkStats> {
    let mut stack = DirStack::new(top)?;
    // Per level: its name in its parent and the subdirectories still to remove.
    let mut frames: Vec<(OsString, Vec<OsString>)> = Vec::new();
    let first = clear_files(stack.current())?;
    let mut total_pending = first.len();
    frames.push((OsString::new(), first));
    while let Some((_, pending)) = frames.last_mut() {
        if let Some(name) = pending.pop() {
            total_pending -= 1;
            match stack.push(&name) {
                Ok(()) => {}
                // Gone (or replaced by a non-directory) meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let subs = clear_files(stack.current())?;
            total_pending += subs.len();
            if total_pending > MAX_PENDING_DIRS {
                return Err(io::Error::other("directory tree too wide to walk"));
            }
            frames.push((name, subs));
            continue;
        }
        let Some((name, _)) = frames.pop() else {
            break;
        };
        if frames.is_empty() {
            break;
        }
        // Now empty: go up and remove it.
        drop(stack.pop()?);
        match stack.current().remove_dir(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(WalkStats {
        opened: stack.opened,
        peak_open: stack.peak_open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    /// `depth` nested directories `d/d/…`, each with a file and a symlink, built by handle.
    fn chain(top: &Dir, depth: usize) {
        let mut cur = top.try_clone().unwrap();
        for _ in 0..depth {
            cur.write("f", b"x").unwrap();
            cur.symlink("f", "l").unwrap();
            cur.create_dir("d").unwrap();
            cur = cur.open_dir("d").unwrap();
        }
    }

    #[test]
    fn removal_of_a_deep_chain_keeps_few_handles_and_opens_each_directory_about_once() {
        let tmp = tempfile::tempdir().unwrap();
        let top = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        top.create_dir("t").unwrap();
        let depth = 3000;
        chain(&top.open_dir("t").unwrap(), depth);
        let stats = remove_contents(top.open_dir("t").unwrap()).unwrap();
        assert!(stats.peak_open <= MAX_OPEN_DIRS, "{stats:?}");
        // Each level opened going down, and reopened once going up past the open window.
        assert!(stats.opened <= 2 * depth as u64, "{stats:?}");
        assert_eq!(top.open_dir("t").unwrap().entries().unwrap().count(), 0);
    }

    #[test]
    fn a_parent_swapped_during_the_walk_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let top = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        top.create_dir("a").unwrap();
        chain(&top.open_dir("a").unwrap(), MAX_OPEN_DIRS + 4);
        let mut stack = DirStack::new(top.open_dir("a").unwrap()).unwrap();
        for _ in 0..MAX_OPEN_DIRS + 4 {
            stack.push(OsStr::new("d")).unwrap();
        }
        // The shallow levels' handles are closed; move the tree under a fresh directory.
        top.rename("a/d/d", &top, "moved").unwrap();
        top.create_dir("a/d/d").unwrap();
        let mut failed = false;
        for _ in 0..MAX_OPEN_DIRS + 4 {
            if stack.pop().is_err() {
                failed = true;
                break;
            }
        }
        assert!(
            failed,
            "the walk must notice its parent is not the one it left"
        );
    }

    #[test]
    fn names_that_are_not_single_components_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let top = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        let mut stack = DirStack::new(top).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(stack.push(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }
}
