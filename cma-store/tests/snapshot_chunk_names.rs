//! Chunk names: saves name new chunks by BLAKE3 (manifest format 4) unless a store is set to
//! SHA-256 (format 3, what older versions write). One store can hold both kinds: a format-4
//! save builds on a format-3 parent and shares its chunks, a SHA-256 store does not build on a
//! format-4 parent, and restores, verification and garbage collection (which repacks each kind
//! into packs of its own, so an older version still reads every pack it could read before)
//! check each chunk by the hash its stored form names.

mod common;

use std::collections::{BTreeSet, HashSet};

use cma_store::snapshot::{ChunkHash, ChunkNames, SnapshotConfig, SnapshotStore};
use cma_store::{RetentionPolicy, SnapshotManifest};
use common::*;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

fn store(dir: &std::path::Path, names: ChunkNames) -> SnapshotStore {
    let mut c: SnapshotConfig = config();
    c.chunk_names = names;
    c.gc.repack_live_percent = 100;
    SnapshotStore::local(dir, c).unwrap()
}

/// The first bytes (the tags) of the stored chunks of each pack.
async fn pack_tags(s: &SnapshotStore) -> Vec<BTreeSet<u8>> {
    let os = s.object_store();
    let keys: Vec<Path> = os
        .list(Some(&Path::from("packs")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let mut all = Vec::new();
    for key in keys {
        let mut tags = BTreeSet::new();
        let pack = os.get(&key).await.unwrap().bytes().await.unwrap();
        let n = pack.len();
        let count = u32::from_le_bytes(pack[n - 44..n - 40].try_into().unwrap()) as usize;
        let listing = &pack[n - 44 - 40 * count..n - 44];
        let mut at = 0usize;
        for rec in listing.chunks_exact(40) {
            tags.insert(pack[at]);
            at += u32::from_le_bytes(rec[36..40].try_into().unwrap()) as usize;
        }
        all.push(tags);
    }
    all
}

/// Whether a pack holds chunks of both kinds (tags 0 or 1, and 2 or 3).
fn mixed(tags: &BTreeSet<u8>) -> bool {
    tags.iter().any(|t| *t < 2) && tags.iter().any(|t| *t >= 2)
}

fn names(m: &SnapshotManifest) -> HashSet<ChunkHash> {
    m.chunks.iter().map(|c| c.hash).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_of_chunk_names_live_in_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let dir = tmp.path().join("store");
    let src = iso.sandbox().await;
    fill_random(&src.host, 91, 120);
    std::fs::create_dir_all(src.host.join("d1")).unwrap();
    std::fs::write(src.host.join("d1/a.txt"), "first text a ".repeat(900)).unwrap();
    std::fs::write(src.host.join("d1/b.txt"), "first text b ".repeat(900)).unwrap();
    // Older than the racy window, so the next saves trust the files' times.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;

    // A store set to SHA-256 writes what older versions wrote: format 3, tags 0 and 1.
    let old_store = store(&dir, ChunkNames::Sha256);
    let old = old_store
        .save("sesn_names", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(old.format_version, 3);
    let tags = pack_tags(&old_store).await;
    assert!(!tags.is_empty());
    assert!(tags.iter().all(|t| t.iter().all(|t| *t < 2)), "{tags:?}");
    let want_old = listing(&src.host);

    // This version on the same store: format 4 on a format-3 parent, sharing its chunks.
    std::fs::write(src.host.join("d1/a.txt"), "changed text a ".repeat(900)).unwrap();
    std::fs::write(src.host.join("d1/b.txt"), "changed text b ".repeat(900)).unwrap();
    let new_store = store(&dir, ChunkNames::Blake3);
    let new = new_store
        .save("sesn_names", src.sandbox.as_ref(), Some(&old.id))
        .await
        .unwrap();
    assert_eq!(new.format_version, 4);
    assert!(
        new.uploaded_bytes < old.stored_bytes / 4,
        "{} of {}",
        new.uploaded_bytes,
        old.stored_bytes
    );
    let (old_names, new_names) = (names(&old), names(&new));
    let shared = new_names.intersection(&old_names).count();
    assert!(shared > 0 && shared < new_names.len(), "{shared}");
    let tags = pack_tags(&new_store).await;
    assert!(tags.iter().any(|t| t.iter().any(|t| *t >= 2)), "{tags:?}");
    assert!(!tags.iter().any(mixed), "{tags:?}");
    std::fs::write(src.host.join("d1/b.txt"), "changed again b ".repeat(900)).unwrap();
    // (So that a save after this one could reuse every file of it.)
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let newer = new_store
        .save("sesn_names", src.sandbox.as_ref(), Some(&new.id))
        .await
        .unwrap();
    let want = listing(&src.host);

    // A SHA-256 store does not build on a format-4 snapshot (its readers could not read the
    // BLAKE3-named chunks): it reads the workspace again, names it by SHA-256 (stores what the
    // store does not have under those names), and records the parent.
    let back = old_store
        .save("sesn_names", src.sandbox.as_ref(), Some(&newer.id))
        .await
        .unwrap();
    assert_eq!(back.format_version, 3);
    assert_eq!(back.parent.as_ref(), Some(&newer.id));
    let newer_names = names(&newer);
    let blake3_only: HashSet<_> = newer_names.difference(&old_names).copied().collect();
    assert!(!blake3_only.is_empty());
    assert!(names(&back).is_disjoint(&blake3_only));

    // Every snapshot verifies and restores exactly, from either store.
    for (s, m, w) in [
        (&new_store, &old, &want_old),
        (&old_store, &newer, &want),
        (&new_store, &back, &want),
    ] {
        s.verify(&m.id).await.unwrap();
        let dst = iso.sandbox().await;
        s.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
        assert_eq!(&listing(&dst.host), w, "{}", m.id.as_str());
    }

    // Without the first two snapshots, packs of both kinds hold dead chunks (the first a.txt
    // and b.txt in the SHA-256 pack, the second b.txt in the BLAKE3 one, and the tables of
    // both); collection rewrites them, each kind into packs of its own.
    new_store.delete(&old.id).await.unwrap();
    new_store.delete(&new.id).await.unwrap();
    settled(&new_store).await;
    let before = pack_tags(&new_store).await.len();
    let report = new_store.gc().await.unwrap();
    assert!(report.packs_repacked >= 2, "{report:?}");
    assert!(report.packs_written >= 2, "{report:?}");
    let tags = pack_tags(&new_store).await;
    assert!(!tags.iter().any(mixed), "{tags:?}");
    assert_eq!(
        tags.len(),
        before - report.packs_repacked + report.packs_written
    );
    for m in [&newer, &back] {
        new_store.verify(&m.id).await.unwrap();
        let dst = iso.sandbox().await;
        new_store
            .restore(&m.id, dst.sandbox.as_ref())
            .await
            .unwrap();
        assert_eq!(listing(&dst.host), want);
    }
    new_store
        .apply_retention(RetentionPolicy {
            keep_last: 0,
            keep_within: std::time::Duration::ZERO,
        })
        .await
        .unwrap();
    settled(&new_store).await;
    new_store.gc().await.unwrap();
    assert_eq!(objects(&new_store, "packs").await, (0, 0));
}
