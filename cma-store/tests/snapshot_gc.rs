//! Garbage collection while saves run: the two dangerous interleavings are forced with a store
//! wrapper that pauses one call, then a randomized concurrent run checks every snapshot.
//! Repacking: mostly-dead packs are rewritten, and a collection stopped after any one of its
//! writes or deletes (what a kill leaves) loses nothing.

mod common;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cma_store::SnapshotId;
use cma_store::snapshot::{ErrorKind, RetentionPolicy, SnapshotManifest, SnapshotStore};
use common::*;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::{Notify, Semaphore};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    List,
    /// A put paused before it reaches the store; it lands once released even if its caller
    /// is gone by then (as a request already sent does).
    Put,
}

/// Pauses the first call matching `(op, prefix)` until released.
struct Ctl {
    rule: Mutex<Option<(Op, String)>>,
    reached: Notify,
    release: Semaphore,
}

struct Gate {
    inner: Arc<InMemory>,
    ctl: Arc<Ctl>,
    /// Puts and deletes allowed before every further one fails (`None`: no limit).
    writes_left: Mutex<Option<usize>>,
}

impl Gate {
    fn new() -> Arc<Self> {
        Self::over(InMemory::new())
    }

    fn over(inner: InMemory) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(inner),
            ctl: Arc::new(Ctl {
                rule: Mutex::new(None),
                reached: Notify::new(),
                release: Semaphore::new(0),
            }),
            writes_left: Mutex::new(None),
        })
    }

    /// Let `n` more puts and deletes through, then fail every one (a process killed there).
    fn stop_after(&self, n: usize) {
        *self.writes_left.lock().unwrap() = Some(n);
    }

    fn write_allowed(&self) -> object_store::Result<()> {
        let mut left = self.writes_left.lock().unwrap();
        match left.as_mut() {
            None => Ok(()),
            Some(0) => Err(object_store::Error::Generic {
                store: "gate",
                source: "stopped here".into(),
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    fn arm(&self, op: Op, prefix: &str) {
        *self.ctl.rule.lock().unwrap() = Some((op, prefix.to_owned()));
    }

    async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.ctl.reached.notified())
            .await
            .expect("the gated call never came");
    }

    fn release(&self) {
        self.ctl.release.add_permits(1);
    }

    /// Whether this call is the one to pause (the rule fires once).
    fn matches(&self, op: Op, path: &str) -> bool {
        let mut rule = self.ctl.rule.lock().unwrap();
        let hit = rule
            .as_ref()
            .is_some_and(|(o, p)| *o == op && path.starts_with(p.as_str()));
        if hit {
            *rule = None;
            self.ctl.reached.notify_one();
        }
        hit
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate")
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate")
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.write_allowed()?;
        if self.matches(Op::Put, location.as_ref()) {
            let (ctl, inner, location) = (self.ctl.clone(), self.inner.clone(), location.clone());
            let sent = tokio::spawn(async move {
                ctl.release.acquire().await.unwrap().forget();
                inner.put_opts(&location, payload, opts).await
            });
            return sent.await.unwrap();
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if let Err(e) = self.write_allowed() {
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        if !self.matches(Op::List, &p) {
            return self.inner.list(prefix);
        }
        let (ctl, inner, prefix) = (self.ctl.clone(), self.inner.clone(), prefix.cloned());
        Box::pin(
            futures::stream::once(async move {
                ctl.release.acquire().await.unwrap().forget();
                inner.list(prefix.as_ref())
            })
            .flatten(),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// `store.save(session, src, parent)` in a task of its own.
fn spawn_save(
    store: &SnapshotStore,
    src: &TestSandbox,
    session: &'static str,
    parent: Option<&SnapshotId>,
) -> tokio::task::JoinHandle<cma_store::snapshot::Result<SnapshotManifest>> {
    let (store, sandbox, parent) = (store.clone(), src.sandbox.clone(), parent.cloned());
    tokio::spawn(async move { store.save(session, sandbox.as_ref(), parent.as_ref()).await })
}

fn gated_store(gate: &Arc<Gate>) -> SnapshotStore {
    SnapshotStore::new(gate.clone(), config()).unwrap()
}

/// Save a workspace, then delete the snapshot: its chunks are in the store, unreferenced, and
/// named by no save record (a save's records are removed in a task of their own after it
/// returns: waited for here).
async fn orphaned_chunks(store: &SnapshotStore, src: &TestSandbox) -> SnapshotManifest {
    let m = store
        .save("sesn_old", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    store.delete(&m.id).await.unwrap();
    settled(store).await;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_that_starts_during_a_save_keeps_the_chunks_the_save_reuses() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 3, 60);
    let old = orphaned_chunks(&store, &src).await;

    // The save has named its data chunks and is about to look for them in the store...
    gate.arm(Op::List, "gc");
    let saving = spawn_save(&store, &src, "sesn_new", None);
    gate.reached().await;
    // ...when a collection runs: it must keep them, although no manifest references them. It
    // may delete the old snapshot's table chunks, which the save has not named yet.
    let report = store.gc().await.unwrap();
    assert!(
        report.chunks_deleted <= old.table.len() + old.files.len(),
        "{report:?}"
    );
    assert!(report.chunks_live > 0);
    gate.release();
    let m = saving.await.unwrap().unwrap();
    // At most the tables, in a pack with its listing, and an index object.
    assert!(
        m.uploaded_bytes <= stored(&m.table) + stored(&m.files) + 4096,
        "the save reused the stored data chunks: uploaded {}",
        m.uploaded_bytes
    );

    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
    // With the save done and its snapshot gone, the same chunks are collected.
    store.delete(&m.id).await.unwrap();
    settled(&store).await;
    assert!(store.gc().await.unwrap().chunks_deleted > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_cancelled_after_naming_its_chunks_removes_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 5, 60);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let parent = store
        .save("sesn_cancel", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    std::fs::write(src.host.join("new.txt"), "new ".repeat(5000)).unwrap();

    // The save has named its parent's chunks and waits for collections...
    gate.arm(Op::List, "gc");
    let saving = {
        let (store, sandbox) = (store.clone(), src.sandbox.clone());
        tokio::spawn(async move {
            store
                .save("sesn_cancel", sandbox.as_ref(), Some(&parent.id))
                .await
        })
    };
    gate.reached().await;
    assert!(records(&store).await > 0);
    // ...when it is cancelled: its records go (in a task of their own) and do not wait until
    // a collection finds them stale.
    saving.abort();
    assert!(saving.await.unwrap_err().is_cancelled());
    gate.release();
    let mut left = records(&store).await;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = records(&store).await;
    }
    assert_eq!(left, 0, "records of the cancelled save are left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_cancelled_while_its_manifest_is_written_keeps_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 7, 40);

    // The manifest is on its way to the store when the save is cancelled...
    gate.arm(Op::Put, "manifests/");
    let saving = spawn_save(&store, &src, "sesn_doubt", None);
    gate.reached().await;
    saving.abort();
    assert!(saving.await.unwrap_err().is_cancelled());
    // ...its records stay (it may have been written), so a collection that does not see the
    // manifest yet keeps the chunks...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(records(&store).await > 0);
    let report = store.gc().await.unwrap();
    assert_eq!(report.chunks_deleted, 0, "{report:?}");
    // ...and when it lands, the snapshot restores.
    gate.release();
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = store.list("sesn_doubt").await.unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [info] = &listed[..] else {
        panic!("one snapshot: {listed:?}")
    };
    let dst = iso.sandbox().await;
    store.restore(&info.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_deleted_and_collected_while_a_save_names_its_chunks_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 6, 60);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let parent = store
        .save("sesn_parent", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    std::fs::write(src.host.join("new.txt"), "new ".repeat(5000)).unwrap();

    // The save has named its parent's chunks (from the store's memory of its last save)...
    gate.arm(Op::List, "gc");
    let saving = spawn_save(&store, &src, "sesn_parent", Some(&parent.id));
    gate.reached().await;
    // ...when its parent is deleted and a whole collection runs: the records keep every chunk.
    store.delete(&parent.id).await.unwrap();
    let report = store.gc().await.unwrap();
    assert_eq!(report.chunks_deleted, 0, "{report:?}");
    gate.release();
    // The save no longer trusts the parent (it is gone) but finds its chunks stored.
    let m = saving.await.unwrap().unwrap();
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
    assert!(
        m.uploaded_bytes < parent.stored_bytes / 2,
        "{} of {}",
        m.uploaded_bytes,
        parent.stored_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_names_its_new_chunks_before_their_pack_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 8, 40);

    // Every chunk is new (the store is empty), so the save waits for no collection and looks
    // at nothing in the store; its first record is the one for its pack. While that record
    // is on its way...
    gate.arm(Op::Put, "inflight/");
    let saving = spawn_save(&store, &src, "sesn_fresh", None);
    gate.reached().await;
    // ...no pack is written: a collection that lists a pack must find its chunks named.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        objects(&store, "packs").await.0,
        0,
        "a pack was written before the record naming its chunks"
    );
    gate.release();
    let m = saving.await.unwrap().unwrap();
    assert!(objects(&store, "packs").await.0 > 0);
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_deleted_and_collected_before_a_save_looks_is_not_found_not_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 9, 60);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let parent = store
        .save("sesn_lost", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    settled(&store).await;
    std::fs::write(src.host.join("new.txt"), "new ".repeat(5000)).unwrap();

    // A collection has listed the save records and is about to list manifests...
    gate.arm(Op::List, "manifests");
    let collecting = {
        let store = store.clone();
        tokio::spawn(async move { store.gc().await })
    };
    gate.reached().await;
    // ...when a save on the parent starts: it finds the parent there, names its chunks, and
    // waits for the collection, which did not see the record...
    let saving = spawn_save(&store, &src, "sesn_lost", Some(&parent.id));
    for _ in 0..500 {
        if records(&store).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(records(&store).await > 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...and the parent is deleted meanwhile, so the collection drops its chunks.
    store.delete(&parent.id).await.unwrap();
    gate.release();
    let report = collecting.await.unwrap().unwrap();
    assert!(report.chunks_deleted > 0, "{report:?}");
    // The save cannot take the parent's chunks: its parent is gone, and it says so.
    let err = saving.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(parent.id.as_str()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_starts_during_a_gc_waits_and_uploads_again_what_it_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let gate = Gate::new();
    let store = gated_store(&gate);
    let src = iso.sandbox().await;
    fill_random(&src.host, 4, 60);
    orphaned_chunks(&store, &src).await;

    // The collection has listed chunks and save records and is about to list manifests...
    gate.arm(Op::List, "manifests");
    let collecting = {
        let store = store.clone();
        tokio::spawn(async move { store.gc().await })
    };
    gate.reached().await;
    // ...when a save of the same content starts: the collection will not see its record.
    let saving = spawn_save(&store, &src, "sesn_new", None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !saving.is_finished(),
        "the save must wait for the running collection"
    );
    gate.release();
    let report = collecting.await.unwrap().unwrap();
    assert!(
        report.chunks_deleted > 0,
        "the collection deleted the orphaned chunks"
    );
    let m = saving.await.unwrap().unwrap();
    assert!(
        m.uploaded_bytes > 0,
        "the save uploaded again what the collection deleted"
    );

    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_retention_and_gc_running_together_never_break_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let store = SnapshotStore::in_memory(config()).unwrap();
    let mut sources = Vec::new();
    for s in 0..3u64 {
        let src = iso.sandbox().await;
        fill_random(&src.host, 100 + s, 30);
        sources.push(src);
    }
    let mut tasks = Vec::new();
    for (s, src) in sources.iter().enumerate() {
        let (store, sandbox, host) = (store.clone(), src.sandbox.clone(), src.host.clone());
        tasks.push(tokio::spawn(async move {
            let session = format!("sesn_{s}");
            for i in 0..8u64 {
                // Shared content across sessions and rounds, plus something new each round.
                std::fs::write(host.join("round"), format!("{s}-{i}")).unwrap();
                let parent = store.latest(&session).await.unwrap().map(|m| m.id);
                store
                    .save(&session, sandbox.as_ref(), parent.as_ref())
                    .await
                    .unwrap();
            }
        }));
    }
    let collector = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                store
                    .apply_retention(RetentionPolicy {
                        keep_last: 2,
                        keep_within: Duration::ZERO,
                    })
                    .await
                    .unwrap();
                store.gc().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    collector.await.unwrap();
    store.gc().await.unwrap();
    for (s, src) in sources.iter().enumerate() {
        let session = format!("sesn_{s}");
        let infos = store.list(&session).await.unwrap();
        assert!(!infos.is_empty());
        for info in infos {
            store.verify(&info.id).await.unwrap();
        }
        let latest = store.latest(&session).await.unwrap().unwrap();
        let dst = iso.sandbox().await;
        store
            .restore(&latest.id, dst.sandbox.as_ref())
            .await
            .unwrap();
        assert_eq!(listing(&dst.host), listing(&src.host));
    }
}

fn repack_config() -> cma_store::SnapshotConfig {
    let mut c = config();
    c.pack_bytes = 64 * 1024;
    c.chunker.min_size = 4 * 1024;
    c.chunker.avg_size = 16 * 1024;
    c.chunker.max_size = 64 * 1024;
    c
}

/// Three generations of a workspace where each rewrites a third of the files; retention then
/// keeps the last: the first two generations' own chunks are dead, spread over packs that
/// still hold live ones. Returns the kept snapshot and the workspace it holds.
async fn three_generations(
    store: &SnapshotStore,
    iso: &Isolate,
) -> (SnapshotManifest, std::collections::BTreeMap<Vec<u8>, Entry>) {
    let src = iso.sandbox().await;
    fill_random(&src.host, 9, 90);
    let mut parent = None;
    for g in 0..3u64 {
        if g > 0 {
            let mut rng = seeded(g);
            for (i, e) in walk_files(&src.host).into_iter().enumerate() {
                if i % 3 == g as usize % 3 {
                    let mut data = vec![0u8; rand::Rng::random_range(&mut rng, 1..40_000)];
                    rand::RngCore::fill_bytes(&mut rng, &mut data);
                    std::fs::write(e, data).unwrap();
                }
            }
        }
        let m = store
            .save("sesn_gen", src.sandbox.as_ref(), parent.as_ref())
            .await
            .unwrap();
        parent = Some(m.id);
    }
    store
        .apply_retention(RetentionPolicy {
            keep_last: 1,
            keep_within: Duration::ZERO,
        })
        .await
        .unwrap();
    let kept = store.latest("sesn_gen").await.unwrap().unwrap();
    (kept, listing(&src.host))
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(walk_files(&p));
        } else if m.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

async fn restores_exactly(
    store: &SnapshotStore,
    iso: &Isolate,
    m: &SnapshotManifest,
    want: &std::collections::BTreeMap<Vec<u8>, Entry>,
) {
    store.verify(&m.id).await.unwrap();
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(&listing(&dst.host), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mostly_dead_packs_are_repacked_and_the_store_shrinks() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let store = SnapshotStore::in_memory(repack_config()).unwrap();
    let (kept, want) = three_generations(&store, &iso).await;
    let (packs_before, bytes_before) = objects(&store, "packs").await;
    let (indexes_before, _) = objects(&store, "index").await;
    assert_eq!(indexes_before, 3, "one index object per save");

    let report = store.gc().await.unwrap();
    assert!(!report.incomplete, "{report:?}");
    assert!(report.packs_repacked > 0, "{report:?}");
    assert!(report.packs_written > 0, "{report:?}");
    assert_eq!(report.index_objects_written, 1, "{report:?}");
    assert_eq!(report.index_objects_deleted, 3, "{report:?}");
    let (packs_after, bytes_after) = objects(&store, "packs").await;
    assert!(
        bytes_after < bytes_before,
        "{bytes_after} of {bytes_before}"
    );
    assert!(
        packs_after < packs_before,
        "{packs_after} of {packs_before}"
    );
    assert_eq!(bytes_before - bytes_after, report.bytes_freed, "{report:?}");
    restores_exactly(&store, &iso, &kept, &want).await;

    // Nothing left to do: a second run changes nothing.
    let again = store.gc().await.unwrap();
    assert_eq!(
        (
            again.packs_deleted,
            again.packs_written,
            again.index_objects_written
        ),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(objects(&store, "packs").await, (packs_after, bytes_after));

    // Once the last snapshot goes, everything goes.
    store.delete(&kept.id).await.unwrap();
    store.gc().await.unwrap();
    assert_eq!(objects(&store, "packs").await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_stopped_after_any_write_or_delete_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let base = Gate::new();
    let store = SnapshotStore::new(base.clone(), repack_config()).unwrap();
    let (kept, want) = three_generations(&store, &iso).await;
    let mut stopped_at = 0;
    for n in 0.. {
        // The same starting state each time, stopped after its n-th put or delete.
        let gate = Gate::over(base.inner.fork());
        gate.stop_after(n);
        let store = SnapshotStore::new(gate.clone(), repack_config()).unwrap();
        let finished = store.gc().await.is_ok();
        gate.writes_left.lock().unwrap().take();
        // A new process: the kept snapshot is whole...
        let store = SnapshotStore::new(gate.clone(), repack_config()).unwrap();
        restores_exactly(&store, &iso, &kept, &want).await;
        // ...and the next collection finishes the work and still keeps it.
        let report = store.gc().await.unwrap();
        assert!(!report.incomplete, "{report:?}");
        restores_exactly(&store, &iso, &kept, &want).await;
        if finished {
            stopped_at = n;
            break;
        }
    }
    assert!(stopped_at > 5, "a repack takes several steps: {stopped_at}");
}
