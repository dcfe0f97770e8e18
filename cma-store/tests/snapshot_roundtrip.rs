//! Round trips on the isolate backend: random workspaces saved and restored byte-identical with
//! the local and in-memory stores; incremental saves upload only what changed; listing, latest,
//! delete and retention.

mod common;

use std::time::Duration;

use cma_store::snapshot::{ErrorKind, RetentionPolicy, SnapshotStore};
use common::*;

async fn round_trip(store: &SnapshotStore, iso: &Isolate, seed: u64, files: usize) {
    let src = iso.sandbox().await;
    fill_random(&src.host, seed, files);
    let want = listing(&src.host);
    let m = store
        .save("sesn_rt", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert!(m.file_count > 0);
    let dst = iso.sandbox().await;
    let restored = store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(restored, m);
    assert_eq!(listing(&dst.host), want);
    store.verify(&m.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workspaces_round_trip_on_the_local_store() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = local_store(&tmp.path().join("store"));
    for seed in 0..3 {
        round_trip(&store, &iso, seed, 150).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workspaces_round_trip_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = SnapshotStore::in_memory(config()).unwrap();
    for seed in 10..13 {
        round_trip(&store, &iso, seed, 150).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_workspace_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = SnapshotStore::in_memory(config()).unwrap();
    let src = iso.sandbox().await;
    let m = store
        .save("sesn_empty", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((m.file_count, m.content_bytes), (0, 0));
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert!(listing(&dst.host).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_save_uploads_only_changed_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = local_store(&tmp.path().join("store"));
    let src = iso.sandbox().await;
    fill_random(&src.host, 42, 300);
    // Old enough that no entry counts as just changed (whose unit would be read again and
    // marked differently in the file table, however slow this machine is).
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let first = store
        .save("sesn_inc", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    // Every chunk once, plus the chunk and file tables, in a few packs and one index object:
    // exactly the bytes now in the store besides the manifest.
    let chunk_bytes =
        first.stored_bytes - dup_bytes(&first) + stored(&first.table) + stored(&first.files);
    let (packs, pack_bytes) = objects(&store, "packs").await;
    let (indexes, index_bytes) = objects(&store, "index").await;
    assert_eq!(first.uploaded_bytes, pack_bytes + index_bytes);
    assert!(chunk_bytes < pack_bytes && pack_bytes < chunk_bytes + chunk_bytes / 20);
    assert_eq!(indexes, 1);
    assert!(packs >= 1 && packs <= 1 + pack_bytes / store.config().pack_bytes as u64);

    // Nothing changed: nothing uploaded.
    let same = store
        .save("sesn_inc", src.sandbox.as_ref(), Some(&first.id))
        .await
        .unwrap();
    assert_eq!(same.uploaded_bytes, 0);
    assert_eq!(same.chunks, first.chunks);

    // 256 KiB of new random data in one file: uploads about that much, not the workspace.
    let mut data = vec![0u8; 256 * 1024];
    rand::RngCore::fill_bytes(&mut seeded(7), &mut data);
    std::fs::write(src.host.join("d1/new.bin"), &data).unwrap();
    let next = store
        .save("sesn_inc", src.sandbox.as_ref(), Some(&same.id))
        .await
        .unwrap();
    assert!(next.uploaded_bytes >= 256 * 1024, "{}", next.uploaded_bytes);
    assert!(
        next.uploaded_bytes < first.uploaded_bytes / 2,
        "{} of {}",
        next.uploaded_bytes,
        first.uploaded_bytes
    );
    assert_eq!(next.parent.as_ref(), Some(&same.id));
    let want = listing(&src.host);
    let dst = iso.sandbox().await;
    store.restore(&next.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), want);
}

/// Stored bytes of repeated chunks (uploaded once).
fn dup_bytes(m: &cma_store::SnapshotManifest) -> u64 {
    let mut seen = std::collections::HashSet::new();
    m.chunks
        .iter()
        .filter(|c| !seen.insert(c.hash))
        .map(|c| u64::from(c.stored_size))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_latest_delete_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = SnapshotStore::in_memory(config()).unwrap();
    assert!(store.latest("sesn_a").await.unwrap().is_none());
    let src = iso.sandbox().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        std::fs::write(src.host.join("gen"), format!("{i}")).unwrap();
        let parent = store.latest("sesn_a").await.unwrap().map(|m| m.id);
        ids.push(
            store
                .save("sesn_a", src.sandbox.as_ref(), parent.as_ref())
                .await
                .unwrap()
                .id,
        );
    }
    store
        .save("sesn_b", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    let listed: Vec<_> = store
        .list("sesn_a")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(store.latest("sesn_a").await.unwrap().unwrap().id, ids[3]);

    store.delete(&ids[3]).await.unwrap();
    assert_eq!(store.latest("sesn_a").await.unwrap().unwrap().id, ids[2]);
    let e = store
        .restore(&ids[3], src.sandbox.as_ref())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Everything is young: keep_within protects it all.
    let r = store
        .apply_retention(RetentionPolicy {
            keep_last: 1,
            keep_within: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    assert!(r.deleted.is_empty());
    let r = store
        .apply_retention(RetentionPolicy {
            keep_last: 1,
            keep_within: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(r.deleted.len(), 2);
    assert_eq!(r.kept, 2);
    let left: Vec<_> = store
        .list("sesn_a")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, vec![ids[2].clone()]);
    assert_eq!(store.list("sesn_b").await.unwrap().len(), 1);

    // GC frees the chunks only the deleted snapshots used, and the survivors still restore.
    let report = store.gc().await.unwrap();
    assert!(!report.incomplete);
    let dst = iso.sandbox().await;
    store.restore(&ids[2], dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(std::fs::read_to_string(dst.host.join("gen")).unwrap(), "2");
}

#[tokio::test]
async fn bad_session_ids_are_refused() {
    let store = SnapshotStore::in_memory(config()).unwrap();
    let e = store.list("../x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}
