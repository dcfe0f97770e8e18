//! The isolate backend's disk quota (`SandboxSpec::disk_bytes`) and the spec knobs it refuses:
//! a write past the quota fails with `QuotaExceeded` before anything is written (files already
//! there keep their contents), on every write path (file writes, `execute`'s `fs.*`, archive
//! imports), across stop/resume, under concurrent writers; extra mounts do not count.

use std::sync::Arc;

use bytes::Bytes;
use cma_sandbox::isolate::{IsolateBackend, QUOTA_ENTRY_BYTES};
use cma_sandbox::{
    ByteStream, EgressEndpoint, ExecuteRequest, Mount, Sandbox, SandboxBackend, SandboxErrorKind,
    SandboxSpec,
};

const E: u64 = QUOTA_ENTRY_BYTES;

fn with_quota(bytes: u64) -> SandboxSpec {
    let mut spec = SandboxSpec::new();
    spec.disk_bytes = Some(bytes);
    spec
}

fn bytes(n: u64, fill: u8) -> Bytes {
    Bytes::from(vec![fill; n as usize])
}

fn tar_of(files: &[(&str, u64)]) -> ByteStream {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, size) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(*size);
        h.set_cksum();
        builder
            .append_data(&mut h, name, &vec![b't'; *size as usize][..])
            .unwrap();
    }
    let data = Bytes::from(builder.into_inner().unwrap());
    Box::pin(futures::stream::iter(vec![Ok(data)]))
}

async fn assert_quota_err<T: std::fmt::Debug>(r: cma_sandbox::Result<T>) {
    let err = r.expect_err("a write past the quota succeeded");
    assert_eq!(err.kind(), SandboxErrorKind::QuotaExceeded, "{err}");
    assert_eq!(err.kind().phrase(), "disk quota exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_quota_are_refused_and_leave_files_intact() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    assert!(backend.capabilities().disk_quota);
    let sb = backend.create(&with_quota(10_000)).await.unwrap();

    sb.write_file("a.txt", bytes(4000, b'a')).await.unwrap();
    // Growing a.txt to 12 000 bytes does not fit: refused, the old contents stay.
    assert_quota_err(sb.write_file("a.txt", bytes(12_000, b'A')).await).await;
    assert_eq!(
        sb.read_file("a.txt", None).await.unwrap(),
        bytes(4000, b'a')
    );
    // A new file that does not fit is not created at all.
    assert_quota_err(sb.write_file("b.txt", bytes(6000, b'b')).await).await;
    assert_eq!(
        sb.stat("b.txt").await.unwrap_err().kind(),
        SandboxErrorKind::NotFound
    );
    // One that fits exactly: 2 entries and 8 000 bytes of content, 10 000 - 2×512 - 8 000 free.
    let fits = 10_000 - 2 * E - 4000;
    sb.write_file("b.txt", bytes(fits, b'b')).await.unwrap();
    // Full: one more byte anywhere (a new entry, a directory, a symlink via an archive) fails.
    assert_quota_err(sb.write_file("c.txt", Bytes::new()).await).await;
    assert_quota_err(sb.create_dir_all("x/y").await).await;
    assert_eq!(
        sb.stat("x").await.unwrap_err().kind(),
        SandboxErrorKind::NotFound,
        "a refused create_dir_all makes no directory"
    );
    assert_quota_err(sb.write_file("b.txt", bytes(fits + 1, b'B')).await).await;
    assert_eq!(
        sb.read_file("b.txt", None).await.unwrap(),
        bytes(fits, b'b')
    );
    // Shrinking and overwriting with the same size always work.
    sb.write_file("b.txt", bytes(fits, b'c')).await.unwrap();
    sb.write_file("a.txt", bytes(10, b'a')).await.unwrap();
    // Freed: 3 990 bytes. A directory tree and a file in it now fit.
    sb.write_file("x/y/z.txt", bytes(3990 - 3 * E, b'z'))
        .await
        .unwrap();
    assert_quota_err(sb.write_file("x/one-more", Bytes::new()).await).await;
    // Removing gives everything back, recursively too.
    sb.remove("x", true).await.unwrap();
    sb.remove("b.txt", false).await.unwrap();
    sb.write_file("d.txt", bytes(10_000 - 2 * E - 10, b'd'))
        .await
        .unwrap();
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_and_archive_imports_count_against_the_quota() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&with_quota(4096)).await.unwrap();
    sb.write_file("keep.txt", bytes(1000, b'k')).await.unwrap();

    let out = sb
        .execute(ExecuteRequest::new(
            "fs.writeFile('big.txt', 'x'.repeat(5000))",
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("disk quota exceeded"), "{stderr}");
    assert!(sb.stat("big.txt").await.is_err());
    let out = sb
        .execute(ExecuteRequest::new(
            "fs.writeFile('small.txt', 'x'.repeat(100))",
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");

    // An archive whose second file does not fit: the first is imported, the import fails
    // with the quota error, the files already there are intact.
    let err = sb
        .import_workspace(tar_of(&[("one.txt", 500), ("two.txt", 3000)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::QuotaExceeded, "{err}");
    assert_eq!(sb.read_file("one.txt", None).await.unwrap().len(), 500);
    assert!(sb.stat("two.txt").await.is_err());
    assert_eq!(
        sb.read_file("keep.txt", None).await.unwrap(),
        bytes(1000, b'k')
    );
    // An archive entry replacing a file is charged the difference only.
    sb.import_workspace(tar_of(&[("keep.txt", 1200)]))
        .await
        .unwrap();
    assert_eq!(sb.read_file("keep.txt", None).await.unwrap().len(), 1200);
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_sandbox_counts_what_its_workspace_holds() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&with_quota(8192)).await.unwrap();
    sb.write_file("d/a.bin", bytes(5000, b'a')).await.unwrap();
    sb.stop().await.unwrap();
    let id = sb.id().clone();
    drop(sb);

    // A fresh backend over the same root (a restarted process) measures the workspace.
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.resume(&id).await.unwrap();
    let used = 2 * E + 5000;
    assert_quota_err(
        sb.write_file("b.bin", bytes(8192 - used - E + 1, b'b'))
            .await,
    )
    .await;
    sb.write_file("b.bin", bytes(8192 - used - E, b'b'))
        .await
        .unwrap();
    assert_eq!(sb.read_file("d/a.bin", None).await.unwrap().len(), 5000);
    backend.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_cannot_overrun_the_quota() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    // Room for exactly five 1 000-byte files.
    let sb = backend.create(&with_quota(5 * (E + 1000))).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let sb: Arc<dyn Sandbox> = sb.clone();
        tasks.push(tokio::spawn(async move {
            sb.write_file(&format!("f{i}"), bytes(1000, b'x')).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), SandboxErrorKind::QuotaExceeded, "{e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(sb.read_dir(".").await.unwrap().len(), 5);
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_mounts_do_not_count_against_the_quota() {
    let root = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let mut spec = with_quota(1024);
    spec.mounts.push(Mount::new("/memory/notes", mount.path()));
    let sb = backend.create(&spec).await.unwrap();
    sb.write_file("/memory/notes/big.md", bytes(100_000, b'm'))
        .await
        .unwrap();
    assert_quota_err(sb.write_file("w.txt", bytes(1024, b'w')).await).await;
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test]
async fn knobs_the_isolate_backend_cannot_honour_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let mut cases: Vec<(&str, SandboxSpec, SandboxErrorKind)> = Vec::new();
    let mut s = SandboxSpec::new();
    s.image = Some("debian:12".into());
    cases.push(("image", s, SandboxErrorKind::Unsupported));
    let mut s = SandboxSpec::new();
    s.cpus = Some(0.5);
    cases.push(("cpus", s, SandboxErrorKind::Unsupported));
    let mut s = SandboxSpec::new();
    s.env.insert("A".into(), "1".into());
    cases.push(("env", s, SandboxErrorKind::Unsupported));
    let mut s = SandboxSpec::new();
    s.egress = Some(EgressEndpoint {
        proxy_url: "http://127.0.0.1:3128".into(),
        ca_cert_pem: None,
    });
    cases.push(("egress", s, SandboxErrorKind::Unsupported));
    let mut s = SandboxSpec::new();
    s.memory_bytes = Some(0);
    cases.push(("memory_bytes", s, SandboxErrorKind::InvalidInput));
    for (knob, spec, kind) in cases {
        let err = backend.create(&spec).await.err().expect(knob);
        assert_eq!(err.kind(), kind, "{knob}: {err}");
        assert!(err.to_string().contains(knob), "{knob}: {err}");
    }
    assert!(
        backend.list().await.unwrap().is_empty(),
        "a refused spec left a sandbox behind"
    );
    // Honoured: pids (nothing is a process), memory, disk, labels.
    let mut s = SandboxSpec::new();
    s.pids = Some(1);
    s.memory_bytes = Some(64 << 20);
    s.disk_bytes = Some(1 << 20);
    s.labels.insert("k".into(), "v".into());
    let sb = backend.create(&s).await.unwrap();
    backend.destroy(sb.id()).await.unwrap();
}
