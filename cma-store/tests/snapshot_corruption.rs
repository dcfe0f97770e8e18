//! Corruption and unsafe archives: every failure is detected, reported with a typed error, and
//! leaves the target sandbox exactly as it was (full listing with content hashes compared).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cma_store::SnapshotId;
use cma_store::snapshot::{ErrorKind, SnapshotStore};
use common::*;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

struct Fixture {
    _tmp: tempfile::TempDir,
    iso: Isolate,
    src: TestSandbox,
    store: SnapshotStore,
    id: SnapshotId,
    dst: TestSandbox,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    // Small packs: several of them, so every kind of damage lands somewhere.
    let mut cfg = config();
    cfg.pack_bytes = 64 * 1024;
    let store = SnapshotStore::in_memory(cfg).unwrap();
    let src = iso.sandbox().await;
    fill_random(&src.host, 5, 80);
    let id = store
        .save("sesn_c", src.sandbox.as_ref(), None)
        .await
        .unwrap()
        .id;
    // The restore target already holds a workspace of its own.
    let dst = iso.sandbox().await;
    fill_random(&dst.host, 6, 20);
    Fixture {
        _tmp: tmp,
        iso,
        src,
        store,
        id,
        dst,
    }
}

async fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<Path> {
    let mut v: Vec<Path> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

async fn get(store: &Arc<dyn ObjectStore>, key: &Path) -> Vec<u8> {
    store
        .get(key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn put(store: &Arc<dyn ObjectStore>, key: &Path, data: Vec<u8>) {
    store.put(key, Bytes::from(data).into()).await.unwrap();
}

impl Fixture {
    /// Another handle on the same store, as a new process would open it (nothing cached).
    fn reopened(&self) -> SnapshotStore {
        SnapshotStore::new(
            self.store.object_store().clone(),
            self.store.config().clone(),
        )
        .unwrap()
    }
}

/// Restore must fail with `kind` and leave the sandbox as it was; `verify` must fail too.
async fn assert_refused(f: &Fixture, id: &SnapshotId, kind: ErrorKind) {
    let before = listing(&f.dst.host);
    let e = f
        .reopened()
        .restore(id, f.dst.sandbox.as_ref())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(listing(&f.dst.host), before, "sandbox changed after: {e}");
    assert_eq!(f.store.verify(id).await.unwrap_err().kind(), kind);
}

/// Where a pack's chunk data ends and its trailer (the listing, for checks and rebuilds)
/// begins: 40 bytes per chunk, then `u32` count, 32-byte checksum, 8-byte magic.
fn pack_data_end(pack: &[u8]) -> usize {
    let n = pack.len();
    let count = u32::from_le_bytes(pack[n - 44..n - 40].try_into().unwrap()) as usize;
    n - 44 - 40 * count
}

/// The hash of the chunk whose stored form holds byte `pos` of a pack (from the pack's own
/// listing: stored forms lie one after another from offset 0).
fn pack_chunk_at(pack: &[u8], pos: usize) -> Option<[u8; 32]> {
    let end = pack_data_end(pack);
    let mut at = 0usize;
    for entry in pack[end..pack.len() - 44].chunks(40) {
        let len = u32::from_le_bytes(entry[36..40].try_into().unwrap()) as usize;
        if pos < at + len {
            return Some(entry[..32].try_into().unwrap());
        }
        at += len;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_anywhere_in_a_pack_or_an_index_object_is_detected() {
    let f = fixture().await;
    let os = f.store.object_store().clone();
    let packs = keys(&os, "packs").await;
    let indexes = keys(&os, "index").await;
    assert!(packs.len() > 3, "{} packs", packs.len());
    assert_eq!(indexes.len(), 1);
    let want = listing(&f.src.host);
    // The one chunk a restore has no need to read: the end-of-archive marker (two zero blocks,
    // a unit with no entries). Damage there is for `verify` (the position drawn below lands in
    // it in some runs, as the file table's timestamps move the packs' layout).
    let m = f.store.manifest(&f.id).await.unwrap();
    let unread: Vec<[u8; 32]> = m
        .chunks
        .last()
        .filter(|c| c.size == 1024)
        .map(|c| c.hash.0)
        .into_iter()
        .collect();
    let mut rng = seeded(1);
    for key in packs.iter().chain(&indexes) {
        let good = get(&os, key).await;
        let is_pack = key.as_ref().starts_with("packs/");
        for pos in [
            0,
            good.len() / 2,
            good.len() - 1,
            rand::Rng::random_range(&mut rng, 0..good.len()),
        ] {
            let mut bad = good.clone();
            bad[pos] ^= 0x10;
            put(&os, key, bad).await;
            // `verify` reads every pack whole: any flipped byte is reported.
            let e = f.store.verify(&f.id).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{key} byte {pos}: {e}");
            let in_unread_chunk =
                is_pack && pack_chunk_at(&good, pos).is_some_and(|h| unread.contains(&h));
            if is_pack && (pos >= pack_data_end(&good) || in_unread_chunk) {
                // Only the trailer or a chunk restores do not read: the restore is exact.
                let fresh = f.iso.sandbox().await;
                f.reopened()
                    .restore(&f.id, fresh.sandbox.as_ref())
                    .await
                    .unwrap();
                assert_eq!(listing(&fresh.host), want, "{key} byte {pos}");
            } else {
                let before = listing(&f.dst.host);
                let e = f
                    .reopened()
                    .restore(&f.id, f.dst.sandbox.as_ref())
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{key} byte {pos}: {e}");
                assert!(!e.is_retryable());
                assert_eq!(listing(&f.dst.host), before, "{key} byte {pos}");
            }
        }
        put(&os, key, good).await;
    }
    // Repaired: restores again.
    let fresh = f.iso.sandbox().await;
    f.store
        .restore(&f.id, fresh.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(listing(&fresh.host), want);
    f.store.verify(&f.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_manifest_is_detected() {
    let f = fixture().await;
    let os = f.store.object_store().clone();
    let [key] = &keys(&os, "manifests").await[..] else {
        panic!("one manifest")
    };
    let good = get(&os, key).await;
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        put(&os, key, bad).await;
        let e = f.store.manifest(&f.id).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "byte {pos}: {e}");
        if pos % 97 == 0 {
            assert_refused(&f, &f.id, ErrorKind::Corrupt).await;
            assert_eq!(
                f.store.latest("sesn_c").await.unwrap_err().kind(),
                ErrorKind::Corrupt
            );
        }
    }
    put(&os, key, good).await;
    f.store.verify(&f.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_truncated_chunk_is_detected() {
    let f = fixture().await;
    let os = f.store.object_store().clone();
    let packs = keys(&os, "packs").await;
    let key = &packs[packs.len() / 2];
    let good = get(&os, key).await;

    os.delete(key).await.unwrap();
    let before = listing(&f.dst.host);
    let e = f
        .store
        .restore(&f.id, f.dst.sandbox.as_ref())
        .await
        .unwrap_err();
    assert!(
        matches!(e, cma_store::snapshot::Error::MissingChunk { .. }),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!(listing(&f.dst.host), before);

    for len in [0, 1, good.len() / 2, pack_data_end(&good) - 1] {
        put(&os, key, good[..len].to_vec()).await;
        assert_refused(&f, &f.id, ErrorKind::Corrupt).await;
    }
    put(&os, key, good.clone()).await;

    // The index object gone: no chunk can be found.
    let [ikey] = &keys(&os, "index").await[..] else {
        panic!("one index object")
    };
    let igood = get(&os, ikey).await;
    os.delete(ikey).await.unwrap();
    let e = f
        .reopened()
        .restore(&f.id, f.dst.sandbox.as_ref())
        .await
        .unwrap_err();
    assert!(
        matches!(e, cma_store::snapshot::Error::MissingChunk { .. }),
        "{e}"
    );
    put(&os, ikey, igood).await;
    // The manifest itself truncated.
    let [mkey] = &keys(&os, "manifests").await[..] else {
        panic!()
    };
    let mgood = get(&os, mkey).await;
    put(&os, key, good).await;
    put(&os, mkey, mgood[..mgood.len() / 2].to_vec()).await;
    assert_refused(&f, &f.id, ErrorKind::Corrupt).await;
}

/// Every entry a restore refuses is refused by the save first (a save never stores what a
/// restore refuses); a store that holds one anyway (forged by hand) is refused by the restore
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsafe_entry_is_refused_before_anything_is_written() {
    use tar::EntryType as T;
    let f = fixture().await;
    let good: RawEntry<'_> = (b"good.txt", T::Regular, 0o644, b"", b"written only if safe");
    let cases: Vec<(&str, Vec<RawEntry<'_>>)> = vec![
        (
            "parent dir",
            vec![(b"../evil", T::Regular, 0o644, b"", b"x")],
        ),
        (
            "nested parent dir",
            vec![(b"a/../../evil", T::Regular, 0o644, b"", b"x")],
        ),
        (
            "absolute path",
            vec![(b"/tmp/evil", T::Regular, 0o644, b"", b"x")],
        ),
        ("hard link", vec![(b"hl", T::Link, 0o644, b"good.txt", b"")]),
        ("char device", vec![(b"dev", T::Char, 0o644, b"", b"")]),
        ("block device", vec![(b"blk", T::Block, 0o644, b"", b"")]),
        ("fifo", vec![(b"fifo", T::Fifo, 0o644, b"", b"")]),
        ("setuid", vec![(b"suid", T::Regular, 0o4755, b"", b"x")]),
        ("setgid", vec![(b"sgid", T::Regular, 0o2755, b"", b"x")]),
        ("sticky dir", vec![(b"tmp", T::Directory, 0o1777, b"", b"")]),
        (
            "write through an inward symlink",
            vec![
                (b"s", T::Symlink, 0o777, b".", b""),
                (b"s/through", T::Regular, 0o644, b"", b"x"),
            ],
        ),
        (
            "write through an outward symlink",
            vec![
                (b"out", T::Symlink, 0o777, b"/etc", b""),
                (b"out/passwd", T::Regular, 0o644, b"", b"x"),
            ],
        ),
        ("empty symlink", vec![(b"e", T::Symlink, 0o777, b"", b"")]),
    ];
    for (what, bad) in cases {
        let tar = raw_tar(&[&[good][..], &bad[..]].concat());
        // The save refuses it and stores no snapshot.
        let e = f
            .store
            .save_archive("sesn_evil", byte_stream(tar.clone()), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafeEntry, "{what}: {e}");
        assert!(
            f.store.list("sesn_evil").await.unwrap().is_empty(),
            "{what}"
        );
        // Forged into the store anyway: the restore refuses it, the sandbox untouched.
        let id = forge_archive_snapshot(&f.store, "sesn_forged", &tar).await;
        let before = listing(&f.dst.host);
        let e = f
            .store
            .restore(&id, f.dst.sandbox.as_ref())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafeEntry, "{what}: {e}");
        assert_eq!(listing(&f.dst.host), before, "{what}");
        assert!(!f.dst.host.join("good.txt").exists(), "{what}");
    }

    // Symlinks are link text, whatever they point at: saved, and restored exactly.
    let tar = raw_tar(&[
        good,
        (b"a/link", T::Symlink, 0o777, b"../good.txt", b""),
        (b"out", T::Symlink, 0o777, b"../outside", b""),
        (b"a/deep", T::Symlink, 0o777, b"b/../../../x", b""),
        (b"abs", T::Symlink, 0o777, b"/etc/passwd", b""),
    ]);
    let m = f
        .store
        .save_archive("sesn_links", byte_stream(tar), None)
        .await
        .unwrap();
    let fresh = f.iso.sandbox().await;
    f.store
        .restore(&m.id, fresh.sandbox.as_ref())
        .await
        .unwrap();
    let got = listing(&fresh.host);
    for (name, target) in [
        ("a/link", "../good.txt"),
        ("out", "../outside"),
        ("a/deep", "b/../../../x"),
        ("abs", "/etc/passwd"),
    ] {
        assert_eq!(
            got.get(name.as_bytes()),
            Some(&Entry::Symlink(target.as_bytes().to_vec())),
            "{name}"
        );
    }
    assert!(fresh.host.join("good.txt").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_latest_falls_back_to_the_newest_snapshot_that_verifies() {
    let f = fixture().await;
    let os = f.store.object_store().clone();
    let empty = f.iso.sandbox().await;
    assert!(
        f.store
            .restore_latest("sesn_none", empty.sandbox.as_ref())
            .await
            .unwrap()
            .is_none()
    );
    // A second, newer snapshot whose manifest is then damaged.
    let src = f.iso.sandbox().await;
    fill_random(&src.host, 77, 10);
    let newer = f
        .store
        .save_session("sesn_c", src.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(newer.parent.as_ref(), Some(&f.id));
    let mkeys = keys(&os, "manifests").await;
    let newest = mkeys
        .iter()
        .find(|k| k.as_ref().ends_with(newer.id.as_str()))
        .unwrap();
    let mut bad = get(&os, newest).await;
    bad[10] ^= 1;
    put(&os, newest, bad).await;
    let dst = f.iso.sandbox().await;
    let m = f
        .store
        .restore_latest("sesn_c", dst.sandbox.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.id, f.id);
    // A save after a damaged newest snapshot still works (no parent).
    let again = f
        .store
        .save_session("sesn_c", src.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(again.parent, None);
}
