//! Snapshots of Docker sandboxes are incremental (issue 13): the save lists the workspace in one
//! helper call (`Sandbox::workspace_entries`), and a file whose metadata is unchanged since the
//! parent snapshot is not read at all, only the changed files are. Counted through a wrapper
//! sandbox that tallies every byte read; the result restores exactly into a fresh container.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, ExecOutput, ExecRequest, ExecuteRequest, FileKind,
    FileReader, FileStat, Result, Sandbox, SandboxBackend, SandboxId, SandboxSpec, SandboxStatus,
    WorkspaceEntry,
};
use cma_store::{SnapshotConfig, SnapshotStore};

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

/// Counts what a save reads through the sandbox.
struct Counting {
    inner: Arc<dyn Sandbox>,
    read_bytes: AtomicU64,
    exports: AtomicU64,
}

#[async_trait]
impl Sandbox for Counting {
    fn id(&self) -> &SandboxId {
        self.inner.id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn workdir(&self) -> &str {
        self.inner.workdir()
    }
    async fn stat(&self, path: &str) -> Result<FileStat> {
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.inner.lstat(path).await
    }
    async fn read_link(&self, path: &str) -> Result<String> {
        self.inner.read_link(path).await
    }
    async fn read_file(&self, path: &str, max: Option<u64>) -> Result<Bytes> {
        let b = self.inner.read_file(path, max).await?;
        self.read_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }
    async fn read_files(&self, paths: &[String], max: u64) -> Result<Vec<Result<Bytes>>> {
        let out = self.inner.read_files(paths, max).await?;
        let n: usize = out.iter().flatten().map(Bytes::len).sum();
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(out)
    }
    async fn open_read(&self, path: &str) -> Result<FileReader> {
        // Streamed reads are of big files: count their whole size.
        let size = self.inner.stat(path).await?.size;
        self.read_bytes.fetch_add(size, Ordering::Relaxed);
        self.inner.open_read(path).await
    }
    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.inner.write_file(path, data).await
    }
    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.inner.read_dir(path).await
    }
    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.inner.remove(path, recursive).await
    }
    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        self.inner.exec(req).await
    }
    async fn execute(&self, req: ExecuteRequest) -> Result<ExecOutput> {
        self.inner.execute(req).await
    }
    async fn export_workspace(&self) -> Result<ByteStream> {
        self.exports.fetch_add(1, Ordering::Relaxed);
        self.inner.export_workspace().await
    }
    async fn import_workspace(&self, tar: ByteStream) -> Result<()> {
        self.inner.import_workspace(tar).await
    }
    async fn workspace_entries(&self) -> Result<Vec<WorkspaceEntry>> {
        self.inner.workspace_entries().await
    }
    async fn status(&self) -> Result<SandboxStatus> {
        self.inner.status().await
    }
    async fn stop(&self) -> Result<()> {
        self.inner.stop().await
    }
}

/// Every entry of a sandbox's workspace: kind, size, link target and content.
async fn contents(sb: &dyn Sandbox) -> BTreeMap<Vec<u8>, (FileKind, u64, Option<Vec<u8>>, Bytes)> {
    let mut out = BTreeMap::new();
    for e in sb.workspace_entries().await.unwrap() {
        let data = if e.kind == FileKind::File {
            let p = format!("/workspace/{}", String::from_utf8(e.path.clone()).unwrap());
            sb.read_file(&p, None).await.unwrap()
        } else {
            Bytes::new()
        };
        out.insert(
            e.path.clone(),
            (e.kind, e.size, e.link_target.clone(), data),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_saves_read_only_what_changed_and_restore_exactly() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = 0u64;
    for i in 0..120 {
        let text = format!("line {i}\n").repeat(1 + i * 7);
        total += text.len() as u64;
        sb.write_file(&format!("src/d{}/f{i}.txt", i % 6), Bytes::from(text))
            .await
            .unwrap();
    }
    for i in 0..2 {
        // Incompressible bytes (xorshift).
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        total += data.len() as u64;
        sb.write_file(&format!("data/blob{i}.bin"), Bytes::from(data))
            .await
            .unwrap();
    }
    let out = sb
        .exec(ExecRequest::shell(
            "ln -s ../src/d0/f0.txt data/link && mkdir -p empty/dir && chmod +x src/d1/f1.txt",
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");

    // The listing: depth first, names in byte order, a directory before its contents.
    let listed = sb.workspace_entries().await.unwrap();
    let paths: Vec<&[u8]> = listed.iter().map(|e| e.path.as_slice()).collect();
    let pos = |p: &[u8]| paths.iter().position(|x| *x == p).unwrap();
    assert!(pos(b"data") < pos(b"data/blob0.bin") && pos(b"data/link") < pos(b"empty"));
    let link = &listed[pos(b"data/link")];
    assert_eq!(
        (link.kind, link.link_target.as_deref()),
        (FileKind::Symlink, Some(&b"../src/d0/f0.txt"[..]))
    );
    assert_eq!(listed[pos(b"data/blob1.bin")].size, 1 << 20);
    assert_eq!(listed[pos(b"src/d1/f1.txt")].mode & 0o111, 0o111);

    // Old enough that the next saves trust the files' times (see the racy window).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::local(tmp.path(), SnapshotConfig::default()).unwrap();
    let counting = Counting {
        inner: sb.clone(),
        read_bytes: AtomicU64::new(0),
        exports: AtomicU64::new(0),
    };
    let first = store.save("sesn_docker", &counting, None).await.unwrap();
    assert!(!first.files.is_empty(), "saved from the listing");
    assert_eq!(counting.exports.load(Ordering::Relaxed), 0);
    assert_eq!(counting.read_bytes.load(Ordering::Relaxed), total);

    // One small file changes: the next save reads that file's unit only (the small files packed
    // with it, at most the chunker's maximum chunk size of archive).
    counting.read_bytes.store(0, Ordering::Relaxed);
    sb.write_file("src/d3/f3.txt", Bytes::from_static(b"changed\n"))
        .await
        .unwrap();
    let second = store
        .save("sesn_docker", &counting, Some(&first.id))
        .await
        .unwrap();
    let read = counting.read_bytes.load(Ordering::Relaxed);
    assert!(read > 0 && read <= 256 * 1024, "read {read} of {total}");
    assert_eq!(counting.exports.load(Ordering::Relaxed), 0);
    assert!(
        second.uploaded_bytes < first.uploaded_bytes / 10,
        "{} of {}",
        second.uploaded_bytes,
        first.uploaded_bytes
    );

    // Restored into a fresh container: exactly the workspace.
    let dst = backend.create(&SandboxSpec::new()).await.unwrap();
    store.restore(&second.id, dst.as_ref()).await.unwrap();
    assert_eq!(contents(dst.as_ref()).await, contents(sb.as_ref()).await);
    backend.destroy(dst.id()).await.unwrap();
    backend.destroy(sb.id()).await.unwrap();
}

/// What a Docker workspace may hold, saved and restored as the snapshot module documents:
/// symlinks of every kind are link text (a virtualenv's absolute interpreter link, one pointing
/// outside the workspace, a dangling one), empty directories stay, a hard link comes back as
/// two files, a FIFO is left out. Saved from the listing; the export stream of the same
/// workspace holds the FIFO and the hard link, so saving it is refused with a typed error
/// instead of storing what no restore takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_workspaces_keep_every_kind_of_symlink_and_refuse_what_cannot_restore() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let out = sb
        .exec(ExecRequest::shell(
            "mkdir -p venv/bin empty/dir && echo hi > f.txt \
             && ln -s /usr/bin/python3 venv/bin/python3 && ln -s python3 venv/bin/python \
             && ln -s ../../outside escaping && ln -s /etc abs_dir && ln -s no/such dangling \
             && ln f.txt hard && mkfifo pipe",
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::local(tmp.path(), SnapshotConfig::default()).unwrap();
    let m = store.save("sesn_kinds", sb.as_ref(), None).await.unwrap();
    assert!(!m.files.is_empty(), "saved from the listing");

    let dst = backend.create(&SandboxSpec::new()).await.unwrap();
    store.restore(&m.id, dst.as_ref()).await.unwrap();
    let got = contents(dst.as_ref()).await;
    assert_eq!(got, contents(sb.as_ref()).await);
    let link = |p: &str| got.get(p.as_bytes()).and_then(|e| e.2.clone());
    assert_eq!(
        link("venv/bin/python3").as_deref(),
        Some(&b"/usr/bin/python3"[..])
    );
    assert_eq!(link("escaping").as_deref(), Some(&b"../../outside"[..]));
    assert_eq!(link("dangling").as_deref(), Some(&b"no/such"[..]));
    assert_eq!(got[&b"hard"[..]].3, got[&b"f.txt"[..]].3);
    assert!(got.contains_key(&b"empty/dir"[..]));
    assert!(!got.contains_key(&b"pipe"[..]));

    let export = sb.export_workspace().await.unwrap();
    let e = store
        .save_archive("sesn_export", export, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), cma_store::snapshot::ErrorKind::UnsafeEntry, "{e}");
    assert!(store.list("sesn_export").await.unwrap().is_empty());
    backend.destroy(dst.id()).await.unwrap();
    backend.destroy(sb.id()).await.unwrap();
}
