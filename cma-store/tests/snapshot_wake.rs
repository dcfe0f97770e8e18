//! Waking before the restore ends (`SnapshotStore::wake`): tools get the sandbox as soon as the
//! snapshot is checked, each operation waits only for what it touches, the workspace ends up
//! exactly the snapshot's, and a restore that fails half-way fails what waits for it with a
//! typed error and leaves no partial file under a real name.
//!
//! Pack reads go through a store wrapper that delays each one, so the background restore is
//! slow enough to be observed half-way.

mod common;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{ExecuteRequest, SandboxErrorKind};
use cma_store::snapshot::{ErrorKind, RESTORE_MARKER, SnapshotStore, restore_unfinished};
use common::*;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Delays every ranged read of a pack by `delay_ms`; a read covering the held place (pack,
/// offset) also waits for a permit of `release`.
struct Slow {
    inner: InMemory,
    delay_ms: AtomicU64,
    hold: std::sync::Mutex<Option<(Path, u64)>>,
    release: tokio::sync::Semaphore,
}

impl fmt::Debug for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slow")
    }
}

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slow")
    }
}

#[async_trait]
impl ObjectStore for Slow {
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
        if options.range.is_some() && location.as_ref().starts_with("packs/") {
            let ms = self.delay_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let held = self.hold.lock().unwrap().clone();
            if let (Some((pack, at)), Some(object_store::GetRange::Bounded(r))) =
                (held, &options.range)
                && pack == *location
                && r.contains(&at)
            {
                let _ = self.release.acquire().await;
            }
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
        self.inner.list(prefix)
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

struct Fixture {
    _tmp: tempfile::TempDir,
    iso: Isolate,
    slow: Arc<Slow>,
    store: SnapshotStore,
    src: TestSandbox,
    id: cma_store::SnapshotId,
}

/// A workspace of many small files and several big ones, saved (no delay while saving).
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let slow = Arc::new(Slow {
        inner: InMemory::new(),
        delay_ms: AtomicU64::new(0),
        hold: std::sync::Mutex::new(None),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut cfg = config();
    cfg.pack_bytes = 256 * 1024;
    let store = SnapshotStore::new(slow.clone(), cfg).unwrap();
    let src = iso.sandbox().await;
    fill_random(&src.host, 31, 400);
    let mut rng = seeded(5);
    for i in 0..4 {
        let mut data = vec![0u8; 3 << 20];
        rand::RngCore::fill_bytes(&mut rng, &mut data);
        std::fs::create_dir_all(src.host.join("big")).unwrap();
        std::fs::write(src.host.join(format!("big/blob{i}.bin")), &data).unwrap();
    }
    std::fs::write(src.host.join("hello.txt"), b"hello from the snapshot").unwrap();
    let id = store
        .save("sesn_wake", src.sandbox.as_ref(), None)
        .await
        .unwrap()
        .id;
    slow.delay_ms.store(40, Ordering::Relaxed);
    Fixture {
        _tmp: tmp,
        iso,
        slow,
        store,
        src,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_read_before_the_restore_ends_and_the_workspace_ends_exact() {
    let f = fixture().await;
    let dst = f.iso.sandbox().await;
    let woken = f.store.wake(&f.id, dst.sandbox.clone()).await.unwrap();
    assert!(woken.is_background());
    let hello = woken.sandbox.read_file("hello.txt", None).await.unwrap();
    assert_eq!(&hello[..], b"hello from the snapshot");
    // Answered while much of the workspace was still to come.
    let local = woken.sandbox.local_workspace();
    assert!(local.is_none(), "the restore was already complete");
    // A directory listing waits for its children only, and is exact.
    let mut names: Vec<String> = woken
        .sandbox
        .read_dir("/workspace/odd")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    let mut want: Vec<String> = std::fs::read_dir(f.src.host.join("odd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(names, want);

    woken.finished().await.unwrap();
    assert_eq!(listing(&dst.host), listing(&f.src.host));
    assert!(woken.sandbox.local_workspace().is_some());
    assert!(!restore_unfinished(dst.sandbox.as_ref()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_wait_for_what_they_touch_and_are_never_overwritten() {
    let f = fixture().await;
    let dst = f.iso.sandbox().await;
    let woken = f.store.wake(&f.id, dst.sandbox.clone()).await.unwrap();
    let sb = woken.sandbox.clone();
    // A tool overwrites a big file and removes a directory while they are still to come.
    sb.write_file("/workspace/big/blob3.bin", Bytes::from_static(b"mine now"))
        .await
        .unwrap();
    sb.remove("/workspace/d3", true).await.unwrap();
    sb.write_file("fresh/new.txt", Bytes::from_static(b"new"))
        .await
        .unwrap();
    // `execute` can touch anything: it waits for the whole workspace.
    let out = sb
        .execute(ExecuteRequest::new("fs.readFile('big/blob3.bin')"))
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"mine now\n");
    woken.finished().await.unwrap();
    assert_eq!(
        std::fs::read(dst.host.join("big/blob3.bin")).unwrap(),
        b"mine now"
    );
    assert!(!dst.host.join("d3").exists());
    // Everything else is exactly the snapshot's.
    let mut want = listing(&f.src.host);
    let mut got = listing(&dst.host);
    want.retain(|k, _| !k.starts_with(b"d3") && k != b"big/blob3.bin");
    got.retain(|k, _| k != b"big/blob3.bin" && !k.starts_with(b"fresh"));
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_failing_half_way_fails_what_waits_and_leaves_no_partial_file() {
    let f = fixture().await;
    // Damage the pack holding the end of the last big file (the restore reaches it last).
    let os: Arc<dyn ObjectStore> = f.slow.clone();
    let mut packs: Vec<ObjectMeta> =
        futures::TryStreamExt::try_collect(os.list(Some(&Path::from("packs"))))
            .await
            .unwrap();
    packs.sort_by_key(|p| p.location.clone());
    let mut damaged = None;
    for p in &packs {
        let data = os.get(&p.location).await.unwrap().bytes().await.unwrap();
        // Chunks are stored in order, each raw random data here: find it by its bytes.
        let probe = std::fs::read(f.src.host.join("big/blob3.bin")).unwrap();
        let tail = &probe[probe.len() - 4096..];
        if let Some(at) = data.windows(tail.len()).position(|w| w == tail) {
            let mut bad = data.to_vec();
            bad[at] ^= 0x40;
            os.put(&p.location, Bytes::from(bad).into()).await.unwrap();
            // The damaged bytes are read only once the small file was: a restore running
            // its tasks at once must not reach them first, however the machine schedules it.
            *f.slow.hold.lock().unwrap() = Some((p.location.clone(), at as u64));
            damaged = Some(p.location.clone());
            break;
        }
    }
    assert!(
        damaged.is_some(),
        "found the pack holding the end of big/blob3.bin"
    );

    let dst = f.iso.sandbox().await;
    let woken = f.store.wake(&f.id, dst.sandbox.clone()).await.unwrap();
    assert_eq!(
        &woken.sandbox.read_file("hello.txt", None).await.unwrap()[..],
        b"hello from the snapshot"
    );
    f.slow
        .release
        .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    let e = woken
        .sandbox
        .read_file("big/blob3.bin", None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SandboxErrorKind::Io, "{e}");
    assert!(e.to_string().contains(f.id.as_str()), "{e}");
    assert!(woken.finished().await.is_err());
    assert!(
        woken
            .sandbox
            .execute(ExecuteRequest::new("1"))
            .await
            .is_err()
    );
    // Whatever is on disk under a snapshot name is complete; no temporary is left behind,
    // and the workspace stays marked as partial.
    let src = listing(&f.src.host);
    let mut on_disk = listing(&dst.host);
    assert!(on_disk.remove(RESTORE_MARKER.as_bytes()).is_some());
    for (path, entry) in on_disk {
        assert!(
            !String::from_utf8_lossy(&path).contains(".cma-restore-"),
            "left behind: {}",
            String::from_utf8_lossy(&path)
        );
        assert_eq!(
            src.get(&path),
            Some(&entry),
            "{}",
            String::from_utf8_lossy(&path)
        );
    }
    // Nothing to save from it: a save fails rather than storing a partial workspace.
    let err = f
        .store
        .save("sesn_wake", woken.sandbox.as_ref(), Some(&f.id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sandbox, "{err}");
    // Nor from the sandbox underneath (a control plane restarted after a crash sees this).
    assert!(restore_unfinished(dst.sandbox.as_ref()).await.unwrap());
    let err = f
        .store
        .save("sesn_wake", dst.sandbox.as_ref(), Some(&f.id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(f.store.list("sesn_wake").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_refused_before_the_wake_and_the_previous_one_is_used() {
    let f = fixture().await;
    let os: Arc<dyn ObjectStore> = f.slow.clone();
    std::fs::write(f.src.host.join("hello.txt"), b"second version").unwrap();
    let second = f
        .store
        .save("sesn_wake", f.src.sandbox.as_ref(), Some(&f.id))
        .await
        .unwrap();
    let key: Vec<ObjectMeta> =
        futures::TryStreamExt::try_collect(os.list(Some(&Path::from("manifests"))))
            .await
            .unwrap();
    let newest = key
        .iter()
        .find(|k| k.location.as_ref().ends_with(second.id.as_str()))
        .unwrap();
    let mut bad = os
        .get(&newest.location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bad[7] ^= 1;
    os.put(&newest.location, Bytes::from(bad).into())
        .await
        .unwrap();
    let dst = f.iso.sandbox().await;
    let before = listing(&dst.host);
    let e = f
        .store
        .wake(&second.id, dst.sandbox.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!(listing(&dst.host), before);
    let woken = f
        .store
        .wake_latest("sesn_wake", dst.sandbox.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woken.manifest.id, f.id);
    assert_eq!(
        &woken.sandbox.read_file("hello.txt", None).await.unwrap()[..],
        b"hello from the snapshot"
    );
    woken.finished().await.unwrap();
}
