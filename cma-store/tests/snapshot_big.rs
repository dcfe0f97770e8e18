//! The big round trips, on the local store: a 1 GiB sparse file, and 100,000 small files.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_sparse_file_round_trips_and_stays_cheap_to_store() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = local_store(&tmp.path().join("store"));
    let src = iso.sandbox().await;
    sparse_file(&src.host.join("disk.img"), 1 << 30);
    std::fs::write(src.host.join("note.txt"), "next to a big file").unwrap();
    let m = store
        .save("sesn_big", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert!(m.archive_bytes > 1 << 30);
    // Zero runs cut into identical chunks, stored once.
    assert!(m.uploaded_bytes < 1 << 20, "uploaded {}", m.uploaded_bytes);
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_small_files_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = local_store(&tmp.path().join("store"));
    let src = iso.sandbox().await;
    for i in 0..100_000u32 {
        let dir = src.host.join(format!("t{}/u{}", i % 100, (i / 100) % 10));
        if i < 1000 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("file {i}\n").repeat((i % 7) as usize),
        )
        .unwrap();
    }
    let m = store
        .save("sesn_many", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(m.file_count, 100_000);
    let dst = iso.sandbox().await;
    store.restore(&m.id, dst.sandbox.as_ref()).await.unwrap();
    assert_eq!(listing(&dst.host), listing(&src.host));
}
