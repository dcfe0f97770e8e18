//! Garbage collection while saves run: the two dangerous interleavings are forced with a store
//! wrapper that pauses one call, then a randomized concurrent run checks every snapshot.

mod common;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cma_store::snapshot::{RetentionPolicy, SnapshotManifest, SnapshotStore};
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
    Head,
    List,
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
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(InMemory::new()),
            ctl: Arc::new(Ctl {
                rule: Mutex::new(None),
                reached: Notify::new(),
                release: Semaphore::new(0),
            }),
        })
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
        if options.head && self.matches(Op::Head, location.as_ref()) {
            self.ctl.release.acquire().await.unwrap().forget();
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
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

fn gated_store(gate: &Arc<Gate>) -> SnapshotStore {
    SnapshotStore::new(gate.clone(), config()).unwrap()
}

/// Save a workspace, then delete the snapshot: its chunks are in the store, unreferenced.
async fn orphaned_chunks(store: &SnapshotStore, src: &TestSandbox) -> SnapshotManifest {
    let m = store
        .save("sesn_old", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    store.delete(&m.id).await.unwrap();
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

    // The save has named its data chunks and is about to find them already stored...
    gate.arm(Op::Head, "chunks/");
    let saving = {
        let (store, sandbox) = (store.clone(), src.sandbox.clone());
        tokio::spawn(async move { store.save("sesn_new", sandbox.as_ref(), None).await })
    };
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
    assert!(
        m.uploaded_bytes <= stored(&m.table) + stored(&m.files),
        "the save reused the stored data chunks: uploaded {}",
        m.uploaded_bytes
    );

    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
    // With the save done and its snapshot gone, the same chunks are collected.
    store.delete(&m.id).await.unwrap();
    assert!(store.gc().await.unwrap().chunks_deleted > 0);
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
    let saving = {
        let (store, sandbox) = (store.clone(), src.sandbox.clone());
        tokio::spawn(async move { store.save("sesn_new", sandbox.as_ref(), None).await })
    };
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
