//! What a workspace may hold, entry kind by entry kind, and that save and restore agree on it
//! (see the `safety` module of `cma_store::snapshot`): files, directories (empty ones too) and
//! symlinks of every kind (relative, absolute as in every Python virtualenv, pointing outside
//! the workspace, dangling) are saved and restored exactly, symlinks as link text; a hard link
//! comes back as the separate files it looks like; sockets and FIFOs are skipped and counted.
//! Checked on every restore path: straight into a local workspace, through the sandbox's
//! import (a snapshot saved from the export stream), and waking lazily.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;

/// Everything but the special files, which `listing` cannot read (opening a FIFO blocks).
fn regular_workspace(dir: &Path) {
    std::fs::write(dir.join("f.txt"), b"plain file\n").unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        dir.join("bin/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::create_dir_all(dir.join("nested/empty/dirs")).unwrap();
    // A virtualenv's interpreter links are absolute.
    std::fs::create_dir_all(dir.join("venv/bin")).unwrap();
    symlink("/usr/bin/python3", dir.join("venv/bin/python3")).unwrap();
    symlink("python3", dir.join("venv/bin/python")).unwrap();
    symlink("f.txt", dir.join("rel")).unwrap();
    symlink("../f.txt", dir.join("bin/up")).unwrap();
    symlink("../../outside/the/workspace", dir.join("escaping")).unwrap();
    symlink("/etc", dir.join("abs_dir")).unwrap();
    symlink("no/such/file", dir.join("dangling")).unwrap();
    symlink("bin", dir.join("dir_link")).unwrap();
    std::fs::hard_link(dir.join("f.txt"), dir.join("hard")).unwrap();
}

/// The special files a save leaves out.
fn special_files(dir: &Path) -> std::os::unix::net::UnixListener {
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap()
}

fn expected(want: &BTreeMap<Vec<u8>, Entry>) {
    // What the listing shows, so a change to the fixture cannot make the test vacuous.
    let kinds: Vec<(&str, Entry)> = vec![
        (
            "venv/bin/python3",
            Entry::Symlink(b"/usr/bin/python3".to_vec()),
        ),
        (
            "escaping",
            Entry::Symlink(b"../../outside/the/workspace".to_vec()),
        ),
        ("abs_dir", Entry::Symlink(b"/etc".to_vec())),
        ("dangling", Entry::Symlink(b"no/such/file".to_vec())),
        ("empty", Entry::Dir),
        ("nested/empty/dirs", Entry::Dir),
    ];
    for (name, kind) in kinds {
        assert_eq!(want.get(name.as_bytes()), Some(&kind), "{name}");
    }
    assert_eq!(want.get(&b"hard"[..]), want.get(&b"f.txt"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_kind_restores_as_saved_on_every_restore_path() {
    let tmp = tempfile::tempdir().unwrap();
    let iso = Isolate::new(&tmp.path().join("sandboxes"));
    let store = local_store(&tmp.path().join("store"));
    let src = iso.sandbox().await;
    regular_workspace(&src.host);
    let want = listing(&src.host);
    expected(&want);
    let _socket = special_files(&src.host);

    // Saved from the directory walk (with a file table).
    let walked = store
        .save("sesn_kinds", src.sandbox.as_ref(), None)
        .await
        .unwrap();
    assert!(!walked.files.is_empty());
    assert_eq!(walked.skipped_entries, 2, "the FIFO and the socket");
    store.verify(&walked.id).await.unwrap();

    // Straight into a local workspace.
    let dst = iso.sandbox().await;
    store
        .restore(&walked.id, dst.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(listing(&dst.host), want, "restore");

    // Waking: the workspace is written in the background.
    let woken_dst = iso.sandbox().await;
    let woken = store
        .wake(&walked.id, woken_dst.sandbox.clone())
        .await
        .unwrap();
    woken.finished().await.unwrap();
    assert_eq!(listing(&woken_dst.host), want, "wake");

    // Saved from the export stream (no file table), restored through the sandbox's import.
    let export = src.sandbox.export_workspace().await.unwrap();
    let streamed = store
        .save_archive("sesn_kinds", export, None)
        .await
        .unwrap();
    assert!(streamed.files.is_empty());
    let imported = iso.sandbox().await;
    store
        .restore(&streamed.id, imported.sandbox.as_ref())
        .await
        .unwrap();
    assert_eq!(listing(&imported.host), want, "import");

    // The restored links are never followed by the restore: nothing appeared outside.
    assert!(!tmp.path().join("outside").exists());
}
