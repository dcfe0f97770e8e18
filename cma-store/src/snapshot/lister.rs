//! Directory listings for the walk, read ahead on worker threads.
//!
//! A save that finds most files unchanged spends its time in system calls: a `getdents` and an
//! open per directory, an `fstatat` per entry (a profile of an incremental save of a 256 MiB
//! workspace: four fifths of the walk in the kernel). They run here, on [`WORKERS`] threads,
//! for several directories at once, while the walk (which must visit entries in archive order)
//! takes each directory's listing when it reaches it. The walk lists a directory itself when
//! no worker has started on it, and lists others while a worker finishes the one it wants:
//! threads sleep only with nothing to do, and are woken only for something to do (each
//! wake-up is a context switch; waiting for each directory cost a sixth of a save's CPU time).
//!
//! Order and bounds: a listed directory's subdirectories are queued first (so listings come
//! roughly in the walk's depth-first order); at most [`READY_AHEAD`] listings, of at most
//! [`READY_BYTES`] together, wait for the walk, and past that only the walk lists (what it needs
//! next), so memory and open directory handles stay bounded (each queued directory holds its
//! parent's handle: the handles held are those of the directories along the walk's frontier,
//! at most about [`MAX_DEPTH`] plus the listings read ahead).
//! A directory that did not change since the parent snapshot is not read (`getdents`): its
//! names are the parent's (see the `parent_dirs` module).
//! Directories are opened by name beneath their parent's descriptor without following symlinks
//! (see `list`), entries are `fstatat`-ed with `AT_SYMLINK_NOFOLLOW`: nothing outside the
//! workspace is ever looked at.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::error::{Error, Result};
use super::parent_dirs::{DirStat, ParentDirs};
use super::tables::Kind;
use super::walk::{MAX_DEPTH, TOO_DEEP};

/// Threads listing directories for one walk.
pub(crate) const WORKERS: usize = 2;
/// Listings waiting for the walk before the workers stop running ahead. Workers that stop
/// sleep until the walk has taken half of them: the further ahead they may run, the fewer
/// times they sleep and are woken (32 cost about 60 more context switches per save of 1,000
/// directories than this).
pub(crate) const READY_AHEAD: usize = 128;
/// Bytes of listings (entries, names, symlink targets) waiting for the walk before the
/// workers stop running ahead: the memory read ahead stays bounded however large the
/// directories (a listing the walk lists itself is as large as its directory, read ahead or
/// not).
const READY_BYTES: usize = 32 << 20;

/// One entry of a directory, as `fstatat` found it.
pub(crate) struct Listed {
    /// Where its name is in [`Listing::names`] (see [`Listing::name`]).
    pub name: std::ops::Range<usize>,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    /// Nanoseconds since the epoch (saturating), as the file table keeps them.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    /// A symlink's target.
    pub target: Option<PathBuf>,
}

/// A directory's entries in name order, and how many special files (sockets, FIFOs, devices)
/// it left out.
pub(crate) struct Listing {
    pub entries: Vec<Listed>,
    pub skipped: u64,
    /// The entries' names, one after another, each followed by a NUL (one allocation per
    /// directory, not one per name; none for a directory whose names are the parent's).
    names: NameBuf,
}

/// Names as `getdents` gave them, or the parent's (see the `parent_dirs` module), shared.
enum NameBuf {
    /// Read from the directory.
    Read(Vec<u8>),
    /// The parent's, shared with every listing of the directory that takes them.
    Parent(Arc<[u8]>),
}

impl std::ops::Deref for NameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            NameBuf::Read(v) => v,
            NameBuf::Parent(a) => a,
        }
    }
}

impl Listing {
    /// The name of `entry`, one of this listing's.
    pub fn name(&self, entry: &Listed) -> &OsStr {
        OsStr::from_bytes(&self.names[entry.name.clone()])
    }
}

/// The names `getdents` gave, each followed by a NUL in `buf`: `spans` says where (without the
/// NUL).
struct Names {
    buf: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl Names {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(512),
            spans: Vec::with_capacity(16),
        }
    }

    fn add(&mut self, name: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(name);
        self.spans.push(start..self.buf.len());
        self.buf.push(0);
    }

    fn bytes(&self, span: &std::ops::Range<usize>) -> &[u8] {
        &self.buf[span.clone()]
    }

    /// In name order, once each (a directory renamed while it is read can come back twice
    /// from `getdents`).
    fn sort(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.bytes(a).cmp(self.bytes(b)));
        spans.dedup_by(|a, b| self.bytes(a) == self.bytes(b));
        self.spans = spans;
    }
}

/// A directory to list: by its parent's handle and its name (the workspace itself: its own
/// handle).
struct Queued {
    rel: PathBuf,
    depth: usize,
    at: Place,
    /// Its metadata as its parent's listing found it (the workspace itself: `None`).
    stat: Option<DirStat>,
}

enum Place {
    Root(OwnedFd),
    /// Its parent's handle, and where its name starts in its path.
    Child(Arc<OwnedFd>, usize),
}

/// `None`: the directory vanished before it could be opened.
type Outcome = Result<Option<Listing>>;

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// By path, compared as bytes: every path here is built by joining single components, so
    /// equal bytes are equal paths (a `Path`'s own comparison and hash walk its components).
    ready: HashMap<OsString, Outcome>,
    /// Bytes of `ready`'s listings (see [`bytes_of`]).
    ready_bytes: usize,
    /// Directories being listed now.
    busy: Vec<PathBuf>,
    /// The directory the walk waits for (being listed by a worker).
    wanted: Option<PathBuf>,
    /// Workers waiting for something to do.
    idle: usize,
    stop: bool,
}

impl State {
    /// Whether a worker has something to do: list ahead of the walk. (What the walk waits
    /// for is being listed already: it lists a queued directory it wants itself.)
    fn has_work(&self) -> bool {
        !self.queue.is_empty() && self.ready.len() < READY_AHEAD && self.ready_bytes < READY_BYTES
    }

    /// Queue a listed directory's subdirectories first, so listings come in about the walk's
    /// order.
    fn queue_first(&mut self, subdirs: Vec<Queued>) {
        for q in subdirs.into_iter().rev() {
            self.queue.push_front(q);
        }
    }
}

/// The memory a listing made holds, about.
fn bytes_of(out: &Outcome) -> usize {
    match out {
        Ok(Some(listing)) => {
            let targets: usize = listing
                .entries
                .iter()
                .filter_map(|e| e.target.as_ref())
                .map(|t| t.as_os_str().len())
                .sum();
            listing.entries.len() * std::mem::size_of::<Listed>() + listing.names.len() + targets
        }
        _ => 0,
    }
}

/// Threads wait only when there is nothing for them to do, and are woken only when there is
/// (a wake-up costs both cores a context switch, and a save makes one per directory
/// otherwise).
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Workers wait here for work.
    work: Condvar,
    /// The walk waits here for a listing a worker is making.
    listed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake a waiting worker if there is one and it has something to do, and, when the
    /// workers ran ahead as far as they may, only once the walk has taken half of that (a
    /// worker woken for each listing taken would list one and sleep again).
    fn wake_worker(&self, st: &State) {
        if st.idle > 0
            && !st.queue.is_empty()
            && st.ready.len() <= READY_AHEAD / 2
            && st.ready_bytes <= READY_BYTES / 2
        {
            self.work.notify_one();
        }
    }
}

/// The walk's side: takes listings in any order it likes.
pub(crate) struct Lister<'a> {
    shared: Arc<Shared>,
    /// The parent's names of directories that did not change (see the `parent_dirs` module).
    dirs: Option<&'a ParentDirs>,
}

/// Run `walk` with a [`Lister`] over the workspace `root`, its workers beside it; they stop
/// when `walk` returns. `dirs`: the parent's directories, whose names are taken when they did
/// not change.
pub(crate) fn with_lister<T>(
    root: Dir,
    dirs: Option<&ParentDirs>,
    walk: impl FnOnce(&Lister) -> T,
) -> T {
    let shared = Arc::new(Shared::default());
    shared.lock().queue.push_back(Queued {
        rel: PathBuf::new(),
        depth: 0,
        at: Place::Root(root.into()),
        stat: None,
    });
    let lister = Lister {
        shared: shared.clone(),
        dirs,
    };
    std::thread::scope(|s| {
        // Stops the workers however this ends (`walk` returning or unwinding, or a worker that
        // could not be started), so the scope can join them.
        let _stop = StopOnDrop(&shared);
        for _ in 0..WORKERS {
            let shared = shared.clone();
            // Named, for profilers and debuggers. A thread the system refuses is a panic, as
            // with `spawn`: the walk's task fails (its error is the save's) and `_stop` ends
            // the other workers.
            std::thread::Builder::new()
                .name("cma-snap-list".into())
                .spawn_scoped(s, move || work(&shared, dirs))
                .expect("a thread to list directories");
        }
        walk(&lister)
    })
}

struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.work.notify_all();
    }
}

impl Lister<'_> {
    /// The listing of the directory `rel` (the workspace is the empty path), once listed;
    /// `None` if it vanished first. Each directory is taken once, after its parent.
    ///
    /// The walk lists a directory itself when no worker has started on it, and while a worker
    /// lists the one it wants it lists the next queued one, so it waits only when there is
    /// nothing else to do.
    pub fn take(&self, rel: &std::path::Path) -> Outcome {
        let shared = &*self.shared;
        let mut st = shared.lock();
        loop {
            if let Some(out) = st.ready.remove(rel.as_os_str()) {
                st.ready_bytes -= bytes_of(&out);
                // A slot freed up: a worker may run ahead again.
                shared.wake_worker(&st);
                return out;
            }
            if let Some(i) = st
                .queue
                .iter()
                .position(|q| q.rel.as_os_str() == rel.as_os_str())
            {
                let item = st.queue.remove(i).expect("a queued directory");
                drop(st);
                let (_, outcome, subdirs) = list_caught(item, self.dirs);
                let mut st = shared.lock();
                st.queue_first(subdirs);
                shared.wake_worker(&st);
                return outcome;
            }
            // Neither listed, nor being listed, nor queued: it never will be (taken twice, or
            // not a directory its parent's listing named). An error, never a wait forever.
            if !st.busy.iter().any(|b| b.as_os_str() == rel.as_os_str()) {
                return Err(Error::io(
                    format!("reading /workspace/{}", rel.display()),
                    io::Error::other("directory not listed (changed during the walk)"),
                ));
            }
            // A worker is listing it: list another meanwhile, if any may be read ahead.
            if st.has_work()
                && let Some(item) = st.queue.pop_front()
            {
                st.busy.push(item.rel.clone());
                drop(st);
                st = finish(shared, item, self.dirs);
                continue;
            }
            st.wanted = Some(rel.to_owned());
            st = shared.listed.wait(st).unwrap_or_else(|e| e.into_inner());
            st.wanted = None;
        }
    }
}

/// List `item`, catching a panic as its error (the walk would wait for it forever otherwise);
/// its path, its outcome, and its subdirectories to list next.
fn list_caught(item: Queued, dirs: Option<&ParentDirs>) -> (PathBuf, Outcome, Vec<Queued>) {
    let Queued {
        rel,
        depth,
        at,
        stat,
    } = item;
    let parent = dirs.zip(stat);
    let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        list(&rel, depth, at, parent)
    }))
    .unwrap_or_else(|_| {
        Err(Error::io(
            format!("reading /workspace/{}", rel.display()),
            io::Error::other("listing the directory panicked"),
        ))
    });
    match listed {
        Ok(Some((listing, subdirs))) => (rel, Ok(Some(listing)), subdirs),
        Ok(None) => (rel, Ok(None), Vec::new()),
        Err(e) => (rel, Err(e), Vec::new()),
    }
}

/// Seconds and nanoseconds as nanoseconds since the epoch, saturating (as the file table
/// keeps times).
pub(crate) fn ns(secs: i64, nsec: u64) -> i64 {
    secs.saturating_mul(1_000_000_000)
        .saturating_add(i64::try_from(nsec).unwrap_or(0))
}

/// A directory's metadata as the file table keeps it (see the `parent_dirs` module).
// (The casts are no-ops on some targets only: `stat`'s field types vary.)
#[allow(clippy::unnecessary_cast)]
fn dir_stat(st: &rustix::fs::Stat) -> DirStat {
    DirStat {
        mode: st.st_mode as u32,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as u64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as u64),
        ino: st.st_ino as u64,
    }
}

/// List `item` (marked busy) for the walk to take later; the state after.
fn finish<'s>(
    shared: &'s Shared,
    item: Queued,
    dirs: Option<&ParentDirs>,
) -> MutexGuard<'s, State> {
    let (rel, outcome, subdirs) = list_caught(item, dirs);
    let mut st = shared.lock();
    st.queue_first(subdirs);
    st.busy.retain(|b| b.as_os_str() != rel.as_os_str());
    if st
        .wanted
        .as_ref()
        .is_some_and(|w| w.as_os_str() == rel.as_os_str())
    {
        shared.listed.notify_one();
    }
    st.ready_bytes += bytes_of(&outcome);
    st.ready.insert(rel.into_os_string(), outcome);
    shared.wake_worker(&st);
    st
}

fn work(shared: &Shared, dirs: Option<&ParentDirs>) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let next = if st.has_work() {
            st.queue.pop_front()
        } else {
            None
        };
        match next {
            Some(item) => {
                st.busy.push(item.rel.clone());
                drop(st);
                st = finish(shared, item, dirs);
            }
            None => {
                st.idle += 1;
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
                st.idle -= 1;
            }
        }
    }
}

/// The names in the open directory `fd`, without `.` and `..`, in the order `getdents` gives.
#[cfg(target_os = "linux")]
fn read_names(fd: &OwnedFd) -> rustix::io::Result<Names> {
    use std::cell::RefCell;
    use std::mem::MaybeUninit;
    // The `getdents` buffer of this thread, kept between directories (a fresh 16 KiB for each
    // one was a large share of a save's allocator time) and for the thread's life: 16 KiB for
    // each thread that ever listed.
    thread_local! {
        static BUF: RefCell<Box<[MaybeUninit<u8>]>> =
            RefCell::new(vec![MaybeUninit::uninit(); 16 << 10].into_boxed_slice());
    }
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => names_from(fd, &mut buf),
        // (Not reentrant; if it ever were, a buffer of its own.)
        Err(_) => names_from(fd, &mut vec![MaybeUninit::uninit(); 16 << 10]),
    })
}

/// [`read_names`] with `getdents` reading into `buf`.
#[cfg(target_os = "linux")]
fn names_from(fd: &OwnedFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> rustix::io::Result<Names> {
    // Straight from `getdents` on the descriptor itself: no duplicate to open and close.
    let mut dir = rustix::fs::RawDir::new(fd, buf);
    let mut names = Names::new();
    while let Some(entry) = dir.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(Errno::INTR) => continue,
            // Removed since it was opened: what was read is all there is (as `Dir` reads it).
            Err(Errno::NOENT) => break,
            Err(e) => return Err(e),
        };
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.add(name);
        }
    }
    Ok(names)
}

/// The names in the open directory `fd`, without `.` and `..`.
#[cfg(not(target_os = "linux"))]
fn read_names(fd: &OwnedFd) -> rustix::io::Result<Names> {
    // Read through a duplicate: the stream owns (and closes) its descriptor.
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
    let mut stream = rustix::fs::Dir::new(dup)?;
    let mut names = Names::new();
    while let Some(entry) = stream.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.add(name);
        }
    }
    Ok(names)
}

fn io_err(rel: &std::path::Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(format!("reading /workspace/{}", rel.display()), e)
}

/// Open and list one directory; its subdirectories, to list next. With `parent` (the
/// parent's directories, and this one's metadata now), the names of a directory that did not
/// change are the parent's (see the `parent_dirs` module); others are read.
///
/// A subdirectory is opened by its name (one component, as `getdents` gave it; `.` and `..`
/// are skipped) relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`: a symlink
/// swapped in is refused, never followed, so the walk cannot leave the workspace. Two system
/// calls fewer per directory than `cap_std`'s `open_dir` then `entries` (which reopens `.`).
fn list(
    rel: &std::path::Path,
    depth: usize,
    at: Place,
    parent: Option<(&ParentDirs, DirStat)>,
) -> Result<Option<(Listing, Vec<Queued>)>> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidInput {
            message: TOO_DEEP.to_owned(),
        });
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match at {
        // The workspace's handle may be an `O_PATH` one, which cannot be read: reopen it.
        Place::Root(fd) => {
            rustix::fs::openat(&fd, ".", flags, Mode::empty()).map_err(|e| io_err(rel)(e.into()))?
        }
        Place::Child(parent, at) => {
            let name = OsStr::from_bytes(&rel.as_os_str().as_bytes()[at..]);
            match rustix::fs::openat(&*parent, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(io_err(rel)(e.into())),
            }
        }
    };
    // The parent's names if the directory did not change: by the metadata its parent's
    // listing found, and again by the directory actually opened (one swapped in since is read).
    let known = parent.and_then(|(dirs, seen)| {
        let names = dirs.names(rel.as_os_str().as_bytes(), &seen)?;
        let opened = rustix::fs::fstat(&fd).ok()?;
        (dir_stat(&opened) == seen).then_some(names)
    });
    let read;
    let (buf, spans) = match known {
        // (In name order and once each already.)
        Some((buf, spans)) => (NameBuf::Parent(buf.clone()), spans),
        None => {
            let mut names = read_names(&fd).map_err(|e| io_err(rel)(e.into()))?;
            names.sort();
            read = names.spans;
            (NameBuf::Read(names.buf), &read[..])
        }
    };
    let fd = Arc::new(fd);
    let mut entries = Vec::with_capacity(spans.len());
    let mut skipped = 0;
    let mut subdirs = Vec::new();
    for span in spans {
        let name = OsStr::from_bytes(&buf[span.clone()]);
        // NUL-terminated for the system call, without a copy. (A name cannot hold a NUL; if
        // one did, the empty name would fail the call.)
        let c_name = CStr::from_bytes_with_nul(&buf[span.start..=span.end]).unwrap_or_default();
        let st = match rustix::fs::statat(&*fd, c_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(io_err(&rel.join(name))(e.into())),
        };
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            // Sockets, FIFOs and devices are not part of a workspace snapshot (no restore
            // could make them mean the same): left out, and counted in the manifest.
            _ => {
                tracing::debug!(path = %rel.join(name).display(), "snapshot save skips a special file");
                skipped += 1;
                continue;
            }
        };
        let target = match kind {
            Kind::Symlink => {
                let t = rustix::fs::readlinkat(&*fd, c_name, Vec::new())
                    .map_err(|e| io_err(&rel.join(name))(e.into()))?;
                Some(PathBuf::from(OsString::from_vec(t.into_bytes())))
            }
            _ => None,
        };
        let (mtime, ctime) = (
            ns(st.st_mtime as i64, st.st_mtime_nsec as u64),
            ns(st.st_ctime as i64, st.st_ctime_nsec as u64),
        );
        if kind == Kind::Dir {
            let rel = rel.join(name);
            let at = rel.as_os_str().len() - name.len();
            subdirs.push(Queued {
                rel,
                depth: depth + 1,
                at: Place::Child(fd.clone(), at),
                stat: Some(dir_stat(&st)),
            });
        }
        entries.push(Listed {
            name: span.clone(),
            kind,
            mode: st.st_mode as u32,
            size: if kind == Kind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime_ns: mtime,
            ctime_ns: ctime,
            ino: st.st_ino as u64,
            target,
        });
    }
    let listing = Listing {
        entries,
        skipped,
        names: buf,
    };
    Ok(Some((listing, subdirs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use std::path::Path;

    fn open(root: &Path) -> Dir {
        Dir::open_ambient_dir(root, ambient_authority()).unwrap()
    }

    /// Depth-first through the lister, as the walk goes: every path, in order.
    fn walk(l: &Lister, rel: &Path, out: &mut Vec<String>) -> Result<()> {
        let Some(listing) = l.take(rel)? else {
            return Ok(());
        };
        for e in &listing.entries {
            let p = rel.join(listing.name(e));
            out.push(p.display().to_string());
            if e.kind == Kind::Dir {
                walk(l, &p, out)?;
            }
        }
        Ok(())
    }

    /// The same, with std alone.
    fn expected(root: &Path, rel: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = rel.join(&n);
            out.push(p.display().to_string());
            if std::fs::symlink_metadata(root.join(&p)).unwrap().is_dir() {
                expected(root, &p, out);
            }
        }
    }

    #[test]
    fn listings_come_in_walk_order_for_a_wide_and_deep_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Far more directories than the read-ahead bound, wide and deep.
        for i in 0..40 {
            for j in 0..5 {
                let d = root.join(format!("d{i}/e{j}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("f"), b"x").unwrap();
            }
        }
        let mut deep = root.join("deep");
        for k in 0..60 {
            deep = deep.join(format!("{k}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let mut got = Vec::new();
        with_lister(open(root), None, |l| walk(l, Path::new(""), &mut got)).unwrap();
        let mut want = Vec::new();
        expected(root, Path::new(""), &mut want);
        assert_eq!(got, want);
        assert!(got.len() > 300);
    }

    #[test]
    fn symlinks_are_read_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("up")).unwrap();
        let listing = with_lister(open(tmp.path()), None, |l| l.take(Path::new("")))
            .unwrap()
            .unwrap();
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.entries[0].kind, Kind::Symlink);
        assert_eq!(listing.entries[0].target.as_deref(), Some(Path::new("/")));
    }

    #[test]
    fn a_walk_that_stops_early_or_panics_does_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::create_dir_all(tmp.path().join(format!("a{i}/b"))).unwrap();
        }
        // Takes only the root listing; the workers still have work queued.
        let n = with_lister(open(tmp.path()), None, |l| {
            l.take(Path::new("")).unwrap().unwrap().entries.len()
        });
        assert_eq!(n, 100);
        let caught = std::panic::catch_unwind(|| {
            with_lister(open(tmp.path()), None, |_| panic!("the walk failed"))
        });
        assert!(caught.is_err());
    }

    #[test]
    fn a_directory_removed_after_it_was_opened_lists_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("gone");
        std::fs::create_dir(&sub).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(rustix::fs::CWD, &sub, flags, Mode::empty()).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        assert!(read_names(&fd).unwrap().spans.is_empty());
    }

    #[test]
    fn a_directory_taken_twice_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        let (first, second, unknown) = with_lister(open(tmp.path()), None, |l| {
            l.take(Path::new("")).unwrap();
            let first = l.take(Path::new("a")).map(|o| o.is_some());
            let second = l.take(Path::new("a")).map(|o| o.is_some());
            let unknown = l.take(Path::new("nope")).map(|o| o.is_some());
            (first, second, unknown)
        });
        assert!(first.unwrap());
        assert!(second.is_err());
        assert!(unknown.is_err());
    }

    /// The file table's key of `path` beneath `root`, as a walk records it.
    fn key_of(root: &Path, path: &str) -> crate::snapshot::tables::EntryKey {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(root.join(path)).unwrap();
        crate::snapshot::tables::EntryKey {
            path: path.as_bytes().to_vec(),
            kind: if m.is_dir() { Kind::Dir } else { Kind::File },
            mode: m.mode(),
            size: if m.is_dir() { 0 } else { m.size() },
            mtime_ns: ns(m.mtime(), m.mtime_nsec() as u64),
            ctime_ns: ns(m.ctime(), m.ctime_nsec() as u64),
            ino: m.ino(),
        }
    }

    #[test]
    fn an_unchanged_directory_is_listed_with_the_parents_names_a_changed_one_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("a")).unwrap();
        for f in ["x", "y"] {
            std::fs::write(root.join("a").join(f), f).unwrap();
        }
        // A parent that saw only `x` in `a` (as if `y` came without `a` changing): the
        // listing is the parent's, so `y` is not there.
        let unit = crate::snapshot::tables::Unit {
            chunk_count: 1,
            racy: false,
            entries: vec![key_of(root, "a"), key_of(root, "a/x")],
            checks: Vec::new(),
        };
        let dirs = ParentDirs::new(std::slice::from_ref(&unit), true);
        let names = |dirs: &ParentDirs| {
            let mut got = Vec::new();
            with_lister(open(root), Some(dirs), |l| walk(l, Path::new(""), &mut got)).unwrap();
            got
        };
        assert_eq!(names(&dirs), ["a", "a/x"]);
        // Once `a` changes (a name added: its times move), it is read again.
        std::fs::write(root.join("a/z"), "z").unwrap();
        assert_eq!(names(&dirs), ["a", "a/x", "a/y", "a/z"]);
        // A parent whose save left something out is not used.
        let unit = crate::snapshot::tables::Unit {
            entries: vec![key_of(root, "a"), key_of(root, "a/x")],
            ..unit
        };
        let incomplete = ParentDirs::new(std::slice::from_ref(&unit), false);
        assert_eq!(names(&incomplete), ["a", "a/x", "a/y", "a/z"]);
        assert_eq!(names(&ParentDirs::new(&[unit], true)), ["a", "a/x"]);
    }

    #[test]
    fn workers_stop_running_ahead_at_either_bound() {
        let queued = || Queued {
            rel: PathBuf::from("d"),
            depth: 1,
            at: Place::Root(rustix::fs::open(".", OFlags::RDONLY, Mode::empty()).unwrap()),
            stat: None,
        };
        let listing = |n: usize| -> Outcome {
            Ok(Some(Listing {
                entries: (0..n)
                    .map(|_| Listed {
                        name: 0..0,
                        kind: Kind::File,
                        mode: 0,
                        size: 0,
                        mtime_ns: 0,
                        ctime_ns: 0,
                        ino: 0,
                        target: None,
                    })
                    .collect(),
                skipped: 0,
                names: NameBuf::Read(Vec::new()),
            }))
        };
        let mut st = State::default();
        assert!(!st.has_work(), "nothing queued");
        st.queue.push_back(queued());
        assert!(st.has_work());
        // Few listings, but large ones: stop.
        let big = listing(READY_BYTES.div_ceil(std::mem::size_of::<Listed>()));
        assert!(bytes_of(&big) >= READY_BYTES);
        st.ready_bytes = bytes_of(&big);
        st.ready.insert(OsString::from("big"), big);
        assert!(!st.has_work());
        st.ready.clear();
        st.ready_bytes = 0;
        // Many small listings: stop too.
        for i in 0..READY_AHEAD {
            st.ready_bytes += bytes_of(&listing(1));
            st.ready.insert(OsString::from(i.to_string()), listing(1));
        }
        assert!(!st.has_work());
        st.ready.remove(OsStr::new("0"));
        st.ready_bytes -= bytes_of(&listing(1));
        assert!(st.has_work());
        // Symlink targets count.
        let mut linked = listing(1);
        if let Ok(Some(l)) = &mut linked {
            l.entries[0].target = Some(PathBuf::from("t".repeat(4000)));
        }
        assert!(bytes_of(&linked) >= bytes_of(&listing(1)) + 4000);
    }

    #[test]
    fn too_deep_trees_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_owned();
        for _ in 0..=MAX_DEPTH {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let mut got = Vec::new();
        let err =
            with_lister(open(tmp.path()), None, |l| walk(l, Path::new(""), &mut got)).unwrap_err();
        assert!(err.to_string().contains(TOO_DEEP), "{err}");
    }
}
