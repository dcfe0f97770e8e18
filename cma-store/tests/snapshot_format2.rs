//! Snapshots stored by manifest format 2 (one object per chunk under `chunks/`, no packs, no
//! index) still restore, verify, wake, serve as the parent of a new save and are garbage
//! collected correctly. The old layout is made here from a new snapshot by moving each chunk
//! out of its pack into its own object and rewriting the manifest as format 2 (the formats are
//! documented in the crate; this test builds the bytes itself). The snapshot is saved with
//! SHA-256 chunk names, the stored form format 2 used.

mod common;

use bytes::Bytes;
use cma_store::snapshot::{ChunkNames, SnapshotStore};
use cma_store::{RetentionPolicy, SnapshotId};
use common::*;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn keys(os: &dyn ObjectStore, prefix: &str) -> Vec<Path> {
    os.list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap()
}

async fn get(os: &dyn ObjectStore, key: &Path) -> Bytes {
    os.get(key).await.unwrap().bytes().await.unwrap()
}

/// Turn the store's only snapshot into format 2; returns its new id.
async fn to_format_2(store: &SnapshotStore) -> SnapshotId {
    let os = store.object_store().as_ref();
    for key in keys(os, "packs").await {
        let pack = get(os, &key).await;
        let n = pack.len();
        let count = u32::from_le_bytes(pack[n - 44..n - 40].try_into().unwrap()) as usize;
        let listing = &pack[n - 44 - 40 * count..n - 44];
        let mut at = 0usize;
        for rec in listing.chunks_exact(40) {
            let len = u32::from_le_bytes(rec[36..40].try_into().unwrap()) as usize;
            let h = hex(&rec[..32]);
            let chunk = Path::from(format!("chunks/{}/{h}", &h[..2]));
            os.put(&chunk, pack.slice(at..at + len).into())
                .await
                .unwrap();
            at += len;
        }
        os.delete(&key).await.unwrap();
    }
    for key in keys(os, "index").await {
        os.delete(&key).await.unwrap();
    }
    let [mkey] = &keys(os, "manifests").await[..] else {
        panic!("one manifest")
    };
    let stored = get(os, mkey).await;
    let plain = zstd::bulk::decompress(&stored, 1 << 24).unwrap();
    let nl = plain.iter().position(|&b| b == b'\n').unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&plain[nl + 1..]).unwrap();
    json["format_version"] = 2.into();
    let body = serde_json::to_vec(&json).unwrap();
    let mut text =
        format!("cma-snapshot-manifest 2 {}\n", hex(&Sha256::digest(&body))).into_bytes();
    text.extend_from_slice(&body);
    let stored = zstd::bulk::compress(&text, 3).unwrap();
    let id = hex(&Sha256::digest(&stored));
    let old_key = mkey.to_string();
    let (prefix, old_id) = old_key.rsplit_once('-').unwrap();
    let new_key = Path::from(format!("{prefix}-{id}"));
    os.put(&new_key, Bytes::from(stored).into()).await.unwrap();
    os.put(
        &Path::from(format!("ids/{id}")),
        Bytes::from(new_key.to_string()).into(),
    )
    .await
    .unwrap();
    os.delete(mkey).await.unwrap();
    os.delete(&Path::from(format!("ids/{old_id}")))
        .await
        .unwrap();
    SnapshotId::from_hex(&id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_2_snapshots_restore_wake_and_serve_as_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    // Format 2 named chunks by SHA-256, as a store set to SHA-256 names still does.
    let mut c = config();
    c.chunk_names = ChunkNames::Sha256;
    let store = SnapshotStore::local(tmp.path().join("store"), c).unwrap();
    let src = iso.sandbox().await;
    fill_random(&src.host, 77, 120);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    store
        .save("sesn_old", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    let old = to_format_2(&store).await;
    let want = listing(&src.host);

    // A fresh process reads it: manifest, chunks one by one.
    let store = local_store(&tmp.path().join("store"));
    let m = store.manifest(&old).await.unwrap();
    assert_eq!(m.format_version, 2);
    store.verify(&old).await.unwrap();
    let dst = iso.sandbox().await;
    store.restore(&old, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), want);
    // Waking from it restores whole first (its chunks are not in packs).
    let dst = iso.sandbox().await;
    let woken = store.wake(&old, dst.sandbox.clone()).await.unwrap();
    assert!(!woken.is_background());
    assert_eq!(listing(&dst.host), want);

    // A new save after it reuses its chunks where they are and packs only what changed.
    std::fs::write(src.host.join("d1/changed.txt"), "new content ".repeat(500)).unwrap();
    let next = store
        .save("sesn_old", src.sandbox.as_ref(), Some(&old))
        .await
        .unwrap();
    let (_, chunk_bytes) = objects(&store, "chunks").await;
    assert!(
        next.uploaded_bytes < chunk_bytes / 4,
        "{}",
        next.uploaded_bytes
    );
    let want_next = listing(&src.host);
    let dst = iso.sandbox().await;
    store.restore(&next.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), want_next);

    // Collection keeps the old chunks the new snapshot uses, and removes them once unused.
    store
        .apply_retention(RetentionPolicy {
            keep_last: 1,
            keep_within: std::time::Duration::ZERO,
        })
        .await
        .unwrap();
    settled(&store).await;
    store.gc().await.unwrap();
    let dst = iso.sandbox().await;
    store.restore(&next.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), want_next);
    store.delete(&next.id).await.unwrap();
    settled(&store).await;
    store.gc().await.unwrap();
    assert_eq!(objects(&store, "chunks").await, (0, 0));
    assert_eq!(objects(&store, "packs").await, (0, 0));
}
