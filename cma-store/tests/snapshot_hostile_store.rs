//! A hostile object store costs bounded memory and ends in a typed error: chunks whose stored
//! form decompresses to far more than their record says (zstd bombs, with and without the
//! frame's content size), records claiming gigabytes, an index whose records place chunks
//! beyond any pack, objects far larger than anything the store writes, and packs larger than
//! their index says. Memory is measured with a counting global allocator (the largest single
//! request while the hostile store is read); every case runs in the one test of this binary so
//! nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cma_store::snapshot::{ErrorKind, SnapshotStore};
use common::*;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

/// The system allocator, recording the largest single request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Largest single allocation allowed while a hostile store is read: far below what the cases
/// claim (gigabytes) or decompress to (64 MiB).
const BOUND: usize = 24 << 20;

/// Run `f`, and check it ends in an error of `kind` with no allocation above [`BOUND`].
async fn bounded<T: std::fmt::Debug>(
    what: &str,
    kind: ErrorKind,
    f: impl std::future::Future<Output = cma_store::snapshot::Result<T>>,
) {
    LARGEST.store(0, Ordering::Relaxed);
    let r = f.await;
    let largest = LARGEST.load(Ordering::Relaxed);
    let e = r.expect_err(what);
    assert_eq!(e.kind(), kind, "{what}: {e}");
    assert!(largest < BOUND, "{what}: a {largest}-byte allocation");
}

/// A zstd chunk's stored form (tag, frame, SHA-256 of the frame).
fn zstd_chunk(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(frame);
    out.extend_from_slice(&Sha256::digest(frame));
    out
}

async fn keys(store: &dyn ObjectStore, prefix: &str) -> Vec<Path> {
    store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_store_costs_bounded_memory_and_ends_in_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let mut cfg = config();
    cfg.pack_bytes = 256 * 1024;
    let store = SnapshotStore::in_memory(cfg).unwrap();
    let dst = iso.sandbox().await;

    // Decompression bombs: 64 MiB of zeros in a few kilobytes, recorded as a 64 KiB chunk.
    let zeros = vec![0u8; 64 << 20];
    let hash: [u8; 32] = Sha256::digest(&zeros[..65536]).into();
    let with_size = zstd::bulk::compress(&zeros, 3).unwrap();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&zeros).unwrap();
    let without_size = enc.finish().unwrap();
    drop(zeros);
    for (what, frame) in [
        ("bomb recording its size", with_size),
        ("bomb recording no size", without_size),
    ] {
        let id = forge_snapshot(
            &store,
            "sesn_bomb",
            (hash, 65536, zstd_chunk(&frame)),
            (0, 0),
        )
        .await;
        bounded(what, ErrorKind::Corrupt, store.verify(&id)).await;
        bounded(
            what,
            ErrorKind::Corrupt,
            store.restore(&id, dst.sandbox.as_ref()),
        )
        .await;
    }

    // A record claiming 4 GiB for a few bytes.
    let id = forge_snapshot(
        &store,
        "sesn_huge",
        (hash, u32::MAX, zstd_chunk(b"tiny")),
        (0, 0),
    )
    .await;
    bounded("a 4 GiB record", ErrorKind::Corrupt, store.verify(&id)).await;

    // A chunk object far larger than any chunk (a stored form is at most 16 MiB and a byte).
    let big = vec![7u8; 40 << 20];
    let id = forge_snapshot(&store, "sesn_fat", (hash, 65536, big), (0, 0)).await;
    bounded(
        "a 40 MiB chunk object",
        ErrorKind::TooLarge,
        store.verify(&id),
    )
    .await;

    // A real snapshot, then its store turned hostile.
    let src = iso.sandbox().await;
    fill_random(&src.host, 9, 40);
    let good = store
        .save("sesn_real", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    let os = store.object_store().clone();
    let reopened = || SnapshotStore::new(os.clone(), store.config().clone()).unwrap();

    // An `ids/` record (it names one key) of 8 MiB.
    let id_key = Path::from(format!("ids/{}", good.id.as_str()));
    let id_record = os.get(&id_key).await.unwrap().bytes().await.unwrap();
    os.put(&id_key, Bytes::from(vec![b'x'; 8 << 20]).into())
        .await
        .unwrap();
    bounded(
        "an 8 MiB id record",
        ErrorKind::TooLarge,
        reopened().manifest(&good.id),
    )
    .await;
    os.put(&id_key, id_record.into()).await.unwrap();

    // A pack far larger than its index says: restores read only their ranges and are exact;
    // verify reads it whole and finds no trailer.
    let packs = keys(os.as_ref(), "packs").await;
    let pack = &packs[0];
    let pack_bytes = os.get(pack).await.unwrap().bytes().await.unwrap();
    let mut fat = pack_bytes.to_vec();
    fat.resize(fat.len() + (16 << 20), 0xee);
    os.put(pack, Bytes::from(fat).into()).await.unwrap();
    let restored = iso.sandbox().await;
    reopened()
        .restore(&good.id, restored.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(listing(&restored.host), listing(&src.host));
    let e = reopened().verify(&good.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    os.put(pack, pack_bytes.into()).await.unwrap();

    // An index whose record places a chunk 2 GiB long (renamed to its new hash, as a hostile
    // store can): the index is damage, reported as such, nothing sized by it.
    let [index] = &keys(os.as_ref(), "index").await[..] else {
        panic!("one index object")
    };
    let data = os.get(index).await.unwrap().bytes().await.unwrap().to_vec();
    let packs_n = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize;
    let first_record = 12 + 32 * packs_n + 4;
    let mut lying = data.clone();
    lying[first_record + 44..first_record + 48].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    let name: String = Sha256::digest(&lying)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    os.delete(index).await.unwrap();
    os.put(&Path::from(format!("index/{name}")), lying.into())
        .await
        .unwrap();
    let before = listing(&dst.host);
    bounded(
        "a lying index",
        ErrorKind::Corrupt,
        reopened().restore(&good.id, dst.sandbox.as_ref()),
    )
    .await;
    assert_eq!(listing(&dst.host), before);
    // A truncated index object does not hash to its name: damage too.
    os.delete(&Path::from(format!("index/{name}")))
        .await
        .unwrap();
    os.put(index, Bytes::from(data[..data.len() / 2].to_vec()).into())
        .await
        .unwrap();
    bounded(
        "a truncated index",
        ErrorKind::Corrupt,
        reopened().restore(&good.id, dst.sandbox.as_ref()),
    )
    .await;
    assert_eq!(listing(&dst.host), before);
}
