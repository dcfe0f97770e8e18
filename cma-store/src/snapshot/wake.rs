//! Waking before the restore ends: [`SnapshotStore::wake`] checks a snapshot (manifest, tables,
//! file table, that every pack it needs is there) and returns at once with a sandbox that
//! waits, per operation, only for the entries that operation touches (see `gate`), while the
//! workspace is restored in the background: small units first (directories, symlinks, small
//! files), big files after, and whatever an operation is waiting for before anything else.
//!
//! Files are written in place under temporary names and renamed when complete, and an entry
//! counts as restored only when its whole unit is; an operation never sees a partial file. If
//! the restore fails (a damaged pack found late, a full disk), every operation that needs
//! something not yet restored fails with a typed error naming the cause, and so does
//! everything that needs the whole workspace; what was restored stays correct.
//!
//! Only sandboxes whose workspace is on this host and snapshots with a file table can wake
//! early; others are restored whole first (the same checks, the same result).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cma_sandbox::{Sandbox, SandboxError, SandboxErrorKind};
use tokio::sync::watch;

use super::fetch::Fetcher;
use super::gate::WakingSandbox;
use super::marker::RESTORE_MARKER;
use super::tables::Kind;
use super::unpack::{GROUP_BYTES, Plan, Restore, TASKS, Target};
use super::*;

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const DONE: u8 = 2;

/// A unit is restored after the small ones if it holds more than this.
const LARGE_UNIT: u64 = 1 << 20;

/// A snapshot being restored: the sandbox to use now, and the restore's progress.
#[derive(Clone)]
pub struct Woken {
    /// The snapshot's manifest.
    pub manifest: SnapshotManifest,
    /// The sandbox to give to tools: the one passed in, or a wrapper that waits per path
    /// while the restore runs.
    pub sandbox: Arc<dyn Sandbox>,
    state: Option<Arc<WakeState>>,
}

impl std::fmt::Debug for Woken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Woken")
            .field("snapshot", &self.manifest.id)
            .field("background", &self.state.is_some())
            .finish()
    }
}

impl Woken {
    /// Whether the restore goes on in the background (`false`: it was done whole already).
    pub fn is_background(&self) -> bool {
        self.state.is_some()
    }

    /// Wait until the whole workspace is restored; the restore's error if it failed.
    pub async fn finished(&self) -> std::result::Result<(), SandboxError> {
        match &self.state {
            Some(s) => s.wait_all().await,
            None => Ok(()),
        }
    }
}

/// Where each path is in the plan.
struct Paths {
    /// Entry index by path.
    entry: HashMap<Vec<u8>, u32>,
    /// Unit of each entry.
    unit_of: Vec<u32>,
    /// One past the last entry of each directory's subtree (entries are in depth-first order).
    subtree_end: Vec<u32>,
    /// Units holding the direct children of each directory (the workspace root at `None`).
    children: HashMap<Option<u32>, Vec<u32>>,
}

impl Paths {
    fn new(plan: &Plan) -> Self {
        let n = plan.entries.len();
        let mut unit_of = vec![0u32; n];
        for (u, unit) in plan.units.iter().enumerate() {
            for e in unit.entries.clone() {
                unit_of[e] = u as u32;
            }
        }
        let mut entry = HashMap::with_capacity(n);
        for (i, e) in plan.entries.iter().enumerate() {
            entry.insert(e.path.clone(), i as u32);
        }
        let parent_of = |path: &[u8]| -> Option<u32> {
            let cut = path.iter().rposition(|&b| b == b'/')?;
            entry.get(&path[..cut]).copied()
        };
        let mut subtree_end: Vec<u32> = (1..=n as u32).collect();
        let mut children: HashMap<Option<u32>, Vec<u32>> = HashMap::new();
        for (i, e) in plan.entries.iter().enumerate() {
            let parent = parent_of(&e.path);
            let list = children.entry(parent).or_default();
            if list.last() != Some(&unit_of[i]) {
                list.push(unit_of[i]);
            }
            // Every ancestor's subtree reaches at least this far.
            let mut p = parent;
            while let Some(a) = p {
                let a = a as usize;
                if subtree_end[a] > i as u32 {
                    break;
                }
                subtree_end[a] = i as u32 + 1;
                p = parent_of(&plan.entries[a].path);
            }
        }
        for list in children.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        Self {
            entry,
            unit_of,
            subtree_end,
            children,
        }
    }
}

/// The background restore's shared state.
pub(super) struct WakeState {
    snapshot: SnapshotId,
    plan: Arc<Plan>,
    kinds: Vec<Kind>,
    paths: Paths,
    units: Vec<AtomicU8>,
    /// Small units then large ones, in archive order; taken from the front.
    queue: Mutex<(VecDeque<usize>, VecDeque<usize>)>,
    /// Units an operation waits for, taken before the queue.
    urgent: Mutex<VecDeque<usize>>,
    /// Bumped whenever units finish or the restore fails.
    progress: watch::Sender<u64>,
    failed: OnceLock<String>,
    remaining: std::sync::atomic::AtomicUsize,
    /// Every worker has stopped (after a failure: nothing is being written any more).
    stopped: std::sync::atomic::AtomicBool,
}

/// What an operation needs restored first.
pub(super) enum Need {
    /// These units.
    Units(Vec<u32>),
    /// Everything.
    All,
}

impl WakeState {
    fn new(snapshot: SnapshotId, plan: Arc<Plan>) -> Self {
        let paths = Paths::new(&plan);
        let (mut small, mut large) = (VecDeque::new(), VecDeque::new());
        let mut units = Vec::with_capacity(plan.units.len());
        // Every unit, then removing the marker.
        let mut remaining = 1;
        for (i, u) in plan.units.iter().enumerate() {
            if u.entries.is_empty() {
                units.push(AtomicU8::new(DONE));
                continue;
            }
            units.push(AtomicU8::new(PENDING));
            remaining += 1;
            if u.bytes > LARGE_UNIT {
                large.push_back(i);
            } else {
                small.push_back(i);
            }
        }
        Self {
            snapshot,
            kinds: plan.entries.iter().map(|e| e.kind).collect(),
            plan,
            paths,
            units,
            queue: Mutex::new((small, large)),
            urgent: Mutex::new(VecDeque::new()),
            progress: watch::channel(0).0,
            failed: OnceLock::new(),
            remaining: std::sync::atomic::AtomicUsize::new(remaining),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Every unit restored (the marker may still be there).
    fn units_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) <= 1
    }

    /// The marker is gone too: the restore is complete.
    fn unmarked(&self) {
        self.remaining.fetch_sub(1, Ordering::AcqRel);
        self.progress.send_modify(|n| *n += 1);
    }

    fn done(&self, u: u32) -> bool {
        self.units[u as usize].load(Ordering::Acquire) == DONE
    }

    /// The whole workspace is restored and the marker removed.
    pub fn complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Take `u` for restoring, if nobody has.
    fn take(&self, u: usize) -> bool {
        self.units[u]
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The next group to restore: an urgent unit, else small units in order, else a large one.
    fn next_group(&self) -> Option<Vec<usize>> {
        while let Some(u) = lock(&self.urgent).pop_front() {
            if self.take(u) {
                return Some(vec![u]);
            }
        }
        let mut q = lock(&self.queue);
        let mut group: Vec<usize> = Vec::new();
        let mut bytes = 0u64;
        while let Some(&u) = q.0.front() {
            let contiguous = group.last().is_none_or(|&l| l + 1 == u);
            let fits = bytes + self.plan.units[u].bytes <= GROUP_BYTES;
            let joins = group.is_empty() || (contiguous && fits);
            if !joins {
                break;
            }
            q.0.pop_front();
            if self.take(u) {
                bytes += self.plan.units[u].bytes;
                group.push(u);
            }
        }
        if !group.is_empty() {
            return Some(group);
        }
        while let Some(u) = q.1.pop_front() {
            if self.take(u) {
                return Some(vec![u]);
            }
        }
        None
    }

    fn finish(&self, group: &[usize]) {
        for &u in group {
            self.units[u].store(DONE, Ordering::Release);
        }
        self.remaining.fetch_sub(group.len(), Ordering::AcqRel);
        self.progress.send_modify(|n| *n += 1);
    }

    fn fail(&self, why: String) {
        let _ = self.failed.set(why);
        self.progress.send_modify(|n| *n += 1);
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.progress.send_modify(|n| *n += 1);
    }

    fn error(&self, why: &str) -> SandboxError {
        SandboxError::new(
            SandboxErrorKind::Io,
            format!(
                "restoring the workspace from snapshot {} failed: {why}",
                self.snapshot.as_str()
            ),
        )
    }

    /// The units an operation on the workspace path `rel` needs, as the gate asks.
    pub fn need_path(&self, rel: &[u8], what: PathNeed) -> Need {
        let mut units = Vec::new();
        // Every ancestor in the snapshot must be in place; through a symlink, anything may be
        // reached.
        let mut at = 0;
        while let Some(i) = rel[at..].iter().position(|&b| b == b'/') {
            let prefix = &rel[..at + i];
            if let Some(&e) = self.paths.entry.get(prefix) {
                if self.kinds[e as usize] == Kind::Symlink {
                    return Need::All;
                }
                units.push(self.paths.unit_of[e as usize]);
            }
            at += i + 1;
        }
        let entry = if rel.is_empty() {
            None
        } else {
            match self.paths.entry.get(rel) {
                Some(&e) => Some(e),
                None => return Need::Units(units),
            }
        };
        if let Some(e) = entry {
            let kind = self.kinds[e as usize];
            if kind == Kind::Symlink && what != PathNeed::Itself {
                return Need::All;
            }
            units.push(self.paths.unit_of[e as usize]);
        }
        match what {
            PathNeed::Itself | PathNeed::Follow => {}
            PathNeed::Children => {
                if let Some(list) = self.paths.children.get(&entry) {
                    units.extend(list);
                }
            }
            PathNeed::Subtree => match entry {
                None => return Need::All,
                Some(e) => {
                    let end = self.paths.subtree_end[e as usize] as usize;
                    let last = self.paths.unit_of[end - 1];
                    units.extend(self.paths.unit_of[e as usize]..=last);
                }
            },
        }
        Need::Units(units)
    }

    /// Wait for `need`, asking for it first.
    pub async fn wait(&self, need: Need) -> std::result::Result<(), SandboxError> {
        let units = match need {
            Need::All => return self.wait_all().await,
            Need::Units(u) => u,
        };
        let missing: Vec<u32> = units.into_iter().filter(|u| !self.done(*u)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Picked up by the next worker that finishes what it is doing.
        lock(&self.urgent).extend(missing.iter().map(|&u| u as usize));
        let mut rx = self.progress.subscribe();
        loop {
            if missing.iter().all(|u| self.done(*u)) {
                return Ok(());
            }
            if let Some(why) = self.failed.get() {
                return Err(self.error(why));
            }
            if rx.changed().await.is_err() {
                return Err(self.error("the restore stopped"));
            }
        }
    }

    /// Wait for the whole workspace. After a failure, returns the error once nothing is being
    /// written any more.
    pub async fn wait_all(&self) -> std::result::Result<(), SandboxError> {
        let mut rx = self.progress.subscribe();
        loop {
            if self.complete() {
                return Ok(());
            }
            if let Some(why) = self.failed.get()
                && self.stopped.load(Ordering::Acquire)
            {
                return Err(self.error(why));
            }
            if rx.changed().await.is_err() {
                return Err(self.error("the restore stopped"));
            }
        }
    }
}

/// How much of a path an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathNeed {
    /// The entry itself, not following a final symlink (`lstat`, `read_link`).
    Itself,
    /// The entry, following a final symlink (`stat`, reading, writing).
    Follow,
    /// The entry and its direct children (`read_dir`).
    Children,
    /// The entry and everything beneath it (recursive removal, tree searches).
    Subtree,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One background worker: restore groups until none is left or the restore failed.
async fn worker(state: Arc<WakeState>, ctx: Arc<Restore>) {
    loop {
        if state.failed.get().is_some() {
            return;
        }
        let Some(group) = state.next_group() else {
            return;
        };
        let run = {
            let (ctx, group) = (ctx.clone(), group.clone());
            tokio::task::spawn_blocking(move || ctx.group(&group))
        };
        match run.await.map_err(joined).and_then(|r| r) {
            Ok(()) => state.finish(&group),
            Err(e) => {
                tracing::warn!(snapshot = state.snapshot.as_str(), error = %e, "background restore failed");
                state.fail(e.to_string());
                return;
            }
        }
    }
}

/// The background restore: aborted when the sandbox wrapping it goes (whoever still waits is
/// told so).
pub(super) struct Background {
    task: tokio::task::JoinHandle<()>,
    state: Arc<WakeState>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.task.abort();
        if !self.state.complete() {
            self.state
                .fail("the sandbox was released before the restore ended".into());
            self.state.stop();
        }
    }
}

impl SnapshotStore {
    /// Restore a snapshot into `sandbox`, returning before the whole workspace is written when
    /// it can (see the module docs of `wake`): the manifest, its tables and the file table are
    /// verified and every pack it needs is found first, so a snapshot that fails those checks
    /// is refused here with the sandbox untouched, as [`restore`](Self::restore) refuses it.
    /// Use [`Woken::sandbox`] from then on.
    pub async fn wake(&self, id: &SnapshotId, sandbox: Arc<dyn Sandbox>) -> Result<Woken> {
        let m = self.manifest(id).await?;
        let local = sandbox.local_workspace();
        let (Some(dir), false) = (local, m.files.is_empty()) else {
            let m = self.restore(id, sandbox.as_ref()).await?;
            return Ok(Woken {
                manifest: m,
                sandbox,
                state: None,
            });
        };
        self.check_size(&m)?;
        let fetcher = Fetcher::fresh(self).await?;
        let plan = self.plan(&fetcher, &m).await?;
        let stored: HashSet<pack::PackId> = self
            .list_all("packs")
            .await?
            .iter()
            .filter_map(|meta| pack::parse_pack_key(&meta.location))
            .collect();
        let mut legacy = false;
        for c in &m.chunks {
            let places = fetcher.locate(&c.hash);
            if places.is_empty() {
                legacy = true;
            } else if !places.iter().any(|l| stored.contains(&l.pack)) {
                return Err(Error::MissingChunk {
                    snapshot: m.id.as_str().to_owned(),
                    chunk: c.hash.to_hex(),
                });
            }
        }
        if legacy {
            // Chunks of a snapshot saved before packs (or missing): restore it whole.
            drop(dir);
            let m = self.restore(id, sandbox.as_ref()).await?;
            return Ok(Woken {
                manifest: m,
                sandbox,
                state: None,
            });
        }
        let plan = Arc::new(plan);
        let state = Arc::new(WakeState::new(m.id.clone(), plan.clone()));
        let root = cap_std::fs::Dir::from_std_file(dir);
        let root = {
            let id = m.id.as_str().to_owned();
            tokio::task::spawn_blocking(move || root.write(RESTORE_MARKER, id).map(|()| root))
                .await
                .map_err(joined)?
                .map_err(|e| Error::io("marking the restore", e))?
        };
        let ctx = Arc::new(Restore {
            fetcher,
            snapshot: m.id.clone(),
            chunks: m.chunks.clone().into(),
            plan,
            target: Arc::new(Target::new(root, true)),
            handle: tokio::runtime::Handle::current(),
        });
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                let workers: Vec<_> = (0..TASKS)
                    .map(|_| tokio::spawn(worker(state.clone(), ctx.clone())))
                    .collect();
                let target = ctx.target.clone();
                drop(ctx);
                let abort: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
                struct AbortAll(Vec<tokio::task::AbortHandle>);
                impl Drop for AbortAll {
                    fn drop(&mut self) {
                        for a in &self.0 {
                            a.abort();
                        }
                    }
                }
                let _guard = AbortAll(abort);
                for w in workers {
                    let _ = w.await;
                }
                if state.units_done() {
                    let unmarked = tokio::task::spawn_blocking(move || {
                        target.root.remove_file(RESTORE_MARKER)
                    })
                    .await;
                    if matches!(unmarked, Ok(Ok(()))) {
                        state.unmarked();
                    } else {
                        state.fail("could not remove the restore marker".into());
                    }
                } else if state.failed.get().is_none() {
                    state.fail("the restore stopped before the end".into());
                }
                state.stop();
            })
        };
        let background = Background {
            task,
            state: state.clone(),
        };
        let gate = WakingSandbox::new(sandbox, state.clone(), background);
        Ok(Woken {
            manifest: m,
            sandbox: Arc::new(gate),
            state: Some(state),
        })
    }

    /// [`wake`](Self::wake) the session's newest snapshot that passes the checks, as
    /// [`restore_latest`](Self::restore_latest) does: one that is corrupt, unsafe or gone is
    /// skipped for the one before it. `Ok(None)` if the session has no snapshot.
    pub async fn wake_latest(
        &self,
        session_id: &str,
        sandbox: Arc<dyn Sandbox>,
    ) -> Result<Option<Woken>> {
        let mut first_err = None;
        for info in self.list(session_id).await?.into_iter().rev() {
            match self.wake(&info.id, sandbox.clone()).await {
                Ok(w) => return Ok(Some(w)),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Corrupt
                            | ErrorKind::UnsafeEntry
                            | ErrorKind::NotFound
                            | ErrorKind::TooLarge
                    ) =>
                {
                    tracing::warn!(snapshot = info.id.as_str(), error = %e, "skipping a snapshot that does not restore");
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::unpack::PlannedUnit;
    use super::*;
    use crate::snapshot::tables::EntryKey;

    fn entry(path: &str, kind: Kind) -> EntryKey {
        EntryKey {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
        }
    }

    /// Units: [a, a/x, a/y] [a/z, b] [b/c, link] [] (the archive's end).
    fn state() -> WakeState {
        let entries = vec![
            entry("a", Kind::Dir),
            entry("a/x", Kind::File),
            entry("a/y", Kind::File),
            entry("a/z", Kind::File),
            entry("b", Kind::Dir),
            entry("b/c", Kind::File),
            entry("link", Kind::Symlink),
        ];
        let unit = |e: std::ops::Range<usize>| PlannedUnit {
            chunks: 0..0,
            entries: e,
            bytes: 10,
        };
        let plan = Plan {
            entries,
            units: vec![unit(0..3), unit(3..5), unit(5..7), unit(7..7)],
        };
        WakeState::new(
            SnapshotId::from_hex(&"0".repeat(64)).unwrap(),
            Arc::new(plan),
        )
    }

    fn units(n: Need) -> Vec<u32> {
        match n {
            Need::Units(mut u) => {
                u.sort_unstable();
                u.dedup();
                u
            }
            Need::All => vec![u32::MAX],
        }
    }

    #[test]
    fn each_operation_needs_the_units_of_what_it_touches() {
        let s = state();
        assert_eq!(units(s.need_path(b"a/y", PathNeed::Follow)), vec![0]);
        assert_eq!(units(s.need_path(b"a/z", PathNeed::Follow)), vec![0, 1]);
        assert_eq!(units(s.need_path(b"a", PathNeed::Children)), vec![0, 1]);
        assert_eq!(units(s.need_path(b"a", PathNeed::Subtree)), vec![0, 1]);
        assert_eq!(units(s.need_path(b"b", PathNeed::Subtree)), vec![1, 2]);
        assert_eq!(units(s.need_path(b"", PathNeed::Children)), vec![0, 1, 2]);
        assert_eq!(units(s.need_path(b"", PathNeed::Subtree)), vec![u32::MAX]);
        // Not in the snapshot: only the directories on the way.
        assert_eq!(units(s.need_path(b"b/new", PathNeed::Follow)), vec![1]);
        assert_eq!(
            units(s.need_path(b"new", PathNeed::Follow)),
            Vec::<u32>::new()
        );
        // Through or at a symlink: everything, except the link itself.
        assert_eq!(
            units(s.need_path(b"link/x", PathNeed::Follow)),
            vec![u32::MAX]
        );
        assert_eq!(
            units(s.need_path(b"link", PathNeed::Follow)),
            vec![u32::MAX]
        );
        assert_eq!(units(s.need_path(b"link", PathNeed::Itself)), vec![2]);
    }

    #[test]
    fn small_units_go_first_in_groups_and_urgent_ones_before_them() {
        let s = state();
        lock(&s.urgent).push_back(2);
        assert_eq!(s.next_group(), Some(vec![2]));
        assert_eq!(s.next_group(), Some(vec![0, 1]));
        assert_eq!(s.next_group(), None);
        assert!(!s.units_done());
        s.finish(&[0, 1, 2]);
        assert!(s.units_done() && !s.complete());
        s.unmarked();
        assert!(s.complete());
    }
}
