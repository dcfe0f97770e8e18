//! Regression tests for findings of the `snapshot_decode` fuzz target (fuzz/): a hostile store
//! writes objects in the stored format by hand (format 2: zstd manifest behind a header line,
//! 40-byte chunk-table records, tagged chunks) and a read must end in a typed error with
//! bounded memory.
//!
//! Memory is measured with a counting global allocator: the largest single request made while
//! the store reads the hostile snapshot must stay far below what the snapshot claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cma_store::SnapshotId;
use cma_store::snapshot::{FORMAT_VERSION, SnapshotConfig, SnapshotStore};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

async fn put(s: &dyn ObjectStore, key: String, data: Vec<u8>) {
    s.put(&Path::from(key), PutPayload::from(Bytes::from(data)))
        .await
        .unwrap();
}

/// Store a snapshot of session `s` whose archive is the one chunk `chunk` (stored bytes),
/// claimed to be `size` bytes of content hashing to `hash`; returns its id.
async fn hostile_snapshot(
    store: &SnapshotStore,
    hash: [u8; 32],
    chunk: Vec<u8>,
    size: u32,
) -> SnapshotId {
    let os = store.object_store().as_ref();
    let h = hex(&hash);
    let stored_size = chunk.len() as u32;
    put(os, format!("chunks/{}/{h}", &h[..2]), chunk).await;
    // The chunk table: one record, itself stored as a raw chunk.
    let mut table = hash.to_vec();
    table.extend_from_slice(&size.to_le_bytes());
    table.extend_from_slice(&stored_size.to_le_bytes());
    let th = hex(&sha(&table));
    let tstored = [&[0u8][..], &table].concat();
    put(os, format!("chunks/{}/{th}", &th[..2]), tstored.clone()).await;
    let wire = json!({
        "format_version": FORMAT_VERSION,
        "session_id": "s",
        "created_at": "2026-05-01T00:00:00Z",
        "parent": null,
        "file_count": 0,
        "content_bytes": 0,
        "archive_bytes": u64::from(size),
        "stored_bytes": u64::from(stored_size),
        "uploaded_bytes": 0,
        "chunker": {"min_size": 16384, "avg_size": 65536, "max_size": 262144, "normalization": 1},
        "compression": "zstd",
        "table": [[th, table.len(), tstored.len()]],
        "files": [],
    });
    let body = serde_json::to_vec(&wire).unwrap();
    let mut plain = format!(
        "cma-snapshot-manifest {FORMAT_VERSION} {}\n",
        hex(&sha(&body))
    )
    .into_bytes();
    plain.extend_from_slice(&body);
    let manifest = zstd::bulk::compress(&plain, 1).unwrap();
    let id = hex(&sha(&manifest));
    let key = format!("manifests/s/{:020}-{id}", 1_700_000_000_000_000u64);
    put(os, format!("ids/{id}"), key.clone().into_bytes()).await;
    put(os, key, manifest).await;
    SnapshotId::from_hex(&id).unwrap()
}

// Finding (snapshot_decode, malloc limit): a chunk-table record may claim any size up to 4 GiB,
// far above the manifest's own `chunker.max_size`, and a zstd chunk whose frame does not
// record its content size is decompressed into a buffer of the claimed size, allocated up
// front (`zstd::bulk::decompress(frame, size)`): a 50-byte object costs 3 GB per chunk, times
// the download concurrency.
#[tokio::test]
async fn a_chunk_claiming_gigabytes_is_refused_without_allocating_them() {
    let store = SnapshotStore::in_memory(SnapshotConfig::default()).unwrap();
    let frame = b"not a zstd frame at all".to_vec();
    let mut chunk = vec![1u8];
    chunk.extend_from_slice(&frame);
    chunk.extend_from_slice(&sha(&frame));
    let id = hostile_snapshot(&store, sha(b"whatever"), chunk, 3_000_000_000).await;
    let before = LARGEST.swap(0, Ordering::Relaxed);
    let r = store.verify(&id).await;
    let largest = LARGEST.load(Ordering::Relaxed);
    LARGEST.fetch_max(before, Ordering::Relaxed);
    assert!(
        r.is_err(),
        "a chunk that is not what its record says must fail"
    );
    assert!(
        largest < 64 * 1024 * 1024,
        "reading a 50-byte chunk made a {largest}-byte allocation"
    );
}
