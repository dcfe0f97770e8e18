//! The S3 path against a real S3-compatible server on 127.0.0.1 (moto, started by
//! `.ci/setup.d/30-s3.sh`): round trip, incremental save, conditional manifest writes, retention
//! and garbage collection. Fails with a clear message when the server is absent.

mod common;

use std::time::Duration;

use cma_store::snapshot::{ErrorKind, RetentionPolicy};
use common::*;
use object_store::ObjectStoreExt;
use object_store::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_round_trip_through_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(tmp.path());
    let store = s3_store().await;
    let src = iso.sandbox().await;
    fill_random(&src.host, 21, 120);
    sparse_file(&src.host.join("big/sparse.img"), 64 << 20);
    let first = store
        .save("sesn_s3", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    let dst = iso.sandbox().await;
    store
        .restore(&first.id, dst.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));

    // Incremental: a small change uploads a small part.
    std::fs::write(src.host.join("d2/changed.txt"), "changed".repeat(1000)).unwrap();
    let parent = store.latest("sesn_s3").await.unwrap().unwrap().id;
    let next = store
        .save("sesn_s3", src.sandbox.as_ref(), Some(&parent))
        .await
        .unwrap();
    assert!(
        next.uploaded_bytes < first.uploaded_bytes / 4,
        "{} vs {}",
        next.uploaded_bytes,
        first.uploaded_bytes
    );
    let dst = iso.sandbox().await;
    store.restore(&next.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));

    // Manifests are written with a conditional put: a second create of the same key fails.
    let os = store.object_store();
    let key = Path::from("probe/once");
    os.put_opts(
        &key,
        bytes::Bytes::from_static(b"1").into(),
        object_store::PutMode::Create.into(),
    )
    .await
    .unwrap();
    let again = os
        .put_opts(
            &key,
            bytes::Bytes::from_static(b"2").into(),
            object_store::PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );

    // A snapshot is a few objects: packs, an index object per save, tables inside packs.
    let (packs, _) = objects(&store, "packs").await;
    let (indexes, _) = objects(&store, "index").await;
    assert!(
        packs <= 4 && indexes == 2,
        "{packs} packs, {indexes} index objects"
    );

    // A corrupt chunk in a pack is caught on S3 as well.
    let chunk = futures::TryStreamExt::try_collect::<Vec<_>>(os.list(Some(&Path::from("packs"))))
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|m| m.size)
        .unwrap()
        .location;
    let good = os.get(&chunk).await.unwrap().bytes().await.unwrap();
    let mut bad = good.to_vec();
    bad[good.len() / 2] ^= 0xff;
    os.put(&chunk, bytes::Bytes::from(bad).into())
        .await
        .unwrap();
    let before = listing(&dst.host);
    let e = store
        .restore(&next.id, dst.sandbox.as_ref())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(listing(&dst.host), before);
    os.put(&chunk, good.into()).await.unwrap();

    // Retention and GC.
    let r = store
        .apply_retention(RetentionPolicy {
            keep_last: 1,
            keep_within: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(r.deleted, vec![first.id.clone()]);
    let report = store.gc().await.unwrap();
    assert!(!report.incomplete);
    assert_eq!(report.index_objects_written, 1, "{report:?}");
    store.verify(&next.id).await.unwrap();
    let dst = iso.sandbox().await;
    store.restore(&next.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}
