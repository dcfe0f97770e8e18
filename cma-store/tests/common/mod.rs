//! Shared fixtures for the snapshot tests: isolate sandboxes, random workspaces written on the
//! host side of a sandbox, and a full listing (names, kinds, exec bits, content hashes, link
//! targets) to compare workspaces byte for byte.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_store::snapshot::{SnapshotConfig, SnapshotStore};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// A sandbox of the isolate backend and the host directory behind its `/workspace`.
pub struct TestSandbox {
    pub sandbox: Arc<dyn Sandbox>,
    pub host: PathBuf,
}

pub struct Isolate {
    pub backend: IsolateBackend,
    pub root: PathBuf,
}

impl Isolate {
    pub fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root).unwrap();
        Self {
            backend: IsolateBackend::new(root).unwrap(),
            root: root.to_owned(),
        }
    }

    pub async fn sandbox(&self) -> TestSandbox {
        let sandbox = self.backend.create(&SandboxSpec::new()).await.unwrap();
        let host = self.root.join(sandbox.id().as_str()).join("workspace");
        assert!(host.is_dir(), "isolate layout changed: {}", host.display());
        TestSandbox { sandbox, host }
    }
}

/// What a workspace entry is, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        exec: bool,
        size: u64,
        sha256: [u8; 32],
    },
    Symlink(Vec<u8>),
}

/// Every entry under `dir`, keyed by its relative path bytes.
pub fn listing(dir: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<Vec<u8>, Entry>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(root.join(&r)).unwrap();
        let key = r.as_os_str().as_bytes().to_vec();
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(root.join(&r)).unwrap();
            out.insert(key, Entry::Symlink(t.as_os_str().as_bytes().to_vec()));
        } else if meta.is_dir() {
            out.insert(key, Entry::Dir);
            walk(root, &r, out);
        } else {
            let mut f = std::fs::File::open(root.join(&r)).unwrap();
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            out.insert(
                key,
                Entry::File {
                    exec: meta.permissions().mode() & 0o111 != 0,
                    size: meta.len(),
                    sha256: h.finalize().into(),
                },
            );
        }
    }
}

fn write(path: &Path, data: &[u8], exec: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    if exec {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A random workspace of mixed content: empty files, text, binary, executables, a deep tree,
/// non-UTF-8 names, inward symlinks. Deterministic in `seed`.
pub fn fill_random(dir: &Path, seed: u64, files: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let words = [
        "alpha", "beta", "gamma", "delta", "fn", "let", "mut", "{", "}", "\n",
    ];
    for i in 0..files {
        let sub = format!("d{}/e{}", rng.random_range(0..8), rng.random_range(0..4));
        let path = dir.join(sub).join(format!("f{i}"));
        match rng.random_range(0..5) {
            0 => write(&path, b"", false),
            1 | 2 => {
                let n = rng.random_range(1..20_000);
                let text: String = (0..n / 4)
                    .map(|_| words[rng.random_range(0..words.len())])
                    .collect::<Vec<_>>()
                    .join(" ");
                write(&path, text.as_bytes(), false);
            }
            3 => {
                let mut data = vec![0u8; rng.random_range(1..200_000)];
                rng.fill_bytes(&mut data);
                write(&path, &data, rng.random_bool(0.3));
            }
            _ => {
                let mut data = vec![0u8; rng.random_range(1..3000)];
                rng.fill_bytes(&mut data);
                write(&path, &data, true);
            }
        }
    }
    // A deep tree.
    let mut deep = dir.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    write(&deep.join("bottom.txt"), b"the bottom", false);
    // Non-UTF-8 and odd names.
    let odd = dir.join("odd");
    write(
        &odd.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"bytes name",
        false,
    );
    write(
        &odd.join(OsStr::from_bytes(b"\xff\xfe\x80")),
        &[0, 1, 2, 255],
        false,
    );
    write(&odd.join("spaces and ünïcødé ✓"), b"utf8", false);
    write(&odd.join("n".repeat(200)), b"long name", false);
    // Inward symlinks, an empty directory.
    std::fs::create_dir_all(dir.join("d0")).unwrap();
    std::os::unix::fs::symlink("../odd/spaces and ünïcødé ✓", dir.join("d0").join("link")).unwrap();
    std::os::unix::fs::symlink("d0", dir.join("dirlink")).unwrap();
    std::fs::create_dir_all(dir.join("empty/dir")).unwrap();
}

/// A sparse file of `size` bytes with a little data at a few offsets.
pub fn sparse_file(path: &Path, size: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for off in [0, size / 3, size - 10] {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(b"0123456789").unwrap();
    }
}

/// Stored bytes of a list of chunks (a snapshot's tables, say).
pub fn stored(refs: &[cma_store::snapshot::ChunkRef]) -> u64 {
    refs.iter().map(|c| u64::from(c.stored_size)).sum()
}

/// How many objects are stored under `prefix`, and their bytes.
pub async fn objects(store: &SnapshotStore, prefix: &str) -> (u64, u64) {
    use futures::TryStreamExt;
    let metas: Vec<object_store::ObjectMeta> = store
        .object_store()
        .list(Some(&object_store::path::Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    (metas.len() as u64, metas.iter().map(|m| m.size).sum())
}

/// The save records (`inflight/`) in the store.
pub async fn records(store: &SnapshotStore) -> usize {
    use futures::TryStreamExt;
    let found: Vec<_> = store
        .object_store()
        .list(Some(&object_store::path::Path::from("inflight")))
        .try_collect()
        .await
        .unwrap();
    found.len()
}

/// Wait until no save's `inflight/` record is left: a save removes its records in a task of
/// its own after it returns, and a collection keeps the chunks a record names.
pub async fn settled(store: &SnapshotStore) {
    for _ in 0..500 {
        if records(store).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("save records are still there after 5 s");
}

pub fn config() -> SnapshotConfig {
    let mut c = SnapshotConfig::default();
    c.gc.chunk_grace = std::time::Duration::ZERO;
    c
}

pub fn local_store(dir: &Path) -> SnapshotStore {
    SnapshotStore::local(dir, config()).unwrap()
}

/// An S3 store on the server of `.ci/setup.d/30-s3.sh`, under a fresh prefix.
#[cfg(feature = "s3")]
pub async fn s3_store() -> SnapshotStore {
    let endpoint = std::env::var("CMA_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CMA_TEST_S3_ENDPOINT is not set: the S3 tests need an S3-compatible server on \
             127.0.0.1; run `source .ci/setup.d/30-s3.sh` (starts moto) first"
        )
    });
    let bucket = std::env::var("CMA_TEST_S3_BUCKET").unwrap_or_else(|_| "cma-test".into());
    // moto accepts an unsigned bucket creation; "already exists" is fine.
    let status = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .output()
        .unwrap_or_else(|e| panic!("curl is needed to create the test bucket: {e}"));
    let code = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        code == "200" || code == "409",
        "creating bucket {bucket} at {endpoint} answered {code}: is the S3 server running?"
    );
    let prefix = uuid::Uuid::new_v4();
    SnapshotStore::from_url(
        &format!("s3://{bucket}/{prefix}"),
        [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_allow_http", "true"),
            ("aws_virtual_hosted_style_request", "false"),
        ],
        config(),
    )
    .unwrap()
}

/// Generate a tar with raw entries (names and types `tar::Builder` would refuse).
/// `(name, type, mode, link target, data)` of a raw tar entry.
pub type RawEntry<'a> = (&'a [u8], tar::EntryType, u32, &'a [u8], &'a [u8]);

pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, mode, link, data) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn byte_stream(data: Vec<u8>) -> cma_sandbox::ByteStream {
    let pieces: Vec<Result<bytes::Bytes, cma_sandbox::SandboxError>> = data
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

pub fn seeded(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Store by hand, as a hostile store could hold it, a snapshot of session `session` whose
/// archive is `archive` (one raw chunk under `chunks/`, as format 2 stored chunks), bypassing
/// every check a save makes; returns its id.
pub async fn forge_archive_snapshot(
    store: &SnapshotStore,
    session: &str,
    archive: &[u8],
) -> cma_store::SnapshotId {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut a = tar::Archive::new(archive);
    for e in a.entries().unwrap().flatten() {
        if e.header().entry_type().is_file() {
            files += 1;
            bytes += e.size();
        }
    }
    let hash: [u8; 32] = Sha256::digest(archive).into();
    let stored = [&[0u8][..], archive].concat();
    forge_snapshot(
        store,
        session,
        (hash, archive.len() as u32, stored),
        (files, bytes),
    )
    .await
}

/// Store by hand a snapshot whose archive is one chunk under `chunks/`: `(hash, claimed size,
/// stored bytes)`, with `(files, bytes)` as the manifest's counts; returns its id.
pub async fn forge_snapshot(
    store: &SnapshotStore,
    session: &str,
    (hash, size, stored): ([u8; 32], u32, Vec<u8>),
    (files, bytes): (u64, u64),
) -> cma_store::SnapshotId {
    use object_store::ObjectStoreExt;
    use object_store::path::Path as Key;
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    let os = store.object_store().clone();
    let put = |key: String, data: Vec<u8>| {
        let os = os.clone();
        async move {
            os.put(&Key::from(key), bytes::Bytes::from(data).into())
                .await
                .unwrap();
        }
    };
    let stored_len = stored.len() as u32;
    put(
        format!("chunks/{}/{}", &hex(&hash)[..2], hex(&hash)),
        stored,
    )
    .await;
    let mut table = hash.to_vec();
    table.extend_from_slice(&size.to_le_bytes());
    table.extend_from_slice(&stored_len.to_le_bytes());
    let th = hex(&Sha256::digest(&table));
    put(
        format!("chunks/{}/{th}", &th[..2]),
        [&[0u8][..], &table].concat(),
    )
    .await;
    let archive_len = u64::from(size);
    let format = cma_store::snapshot::FORMAT_VERSION;
    let wire = serde_json::json!({
        "format_version": format,
        "session_id": session,
        "created_at": "2026-05-01T00:00:00Z",
        "parent": null,
        "file_count": files,
        "content_bytes": bytes,
        "archive_bytes": archive_len,
        "stored_bytes": stored_len,
        "uploaded_bytes": 0,
        "chunker": {"min_size": 16384, "avg_size": 65536, "max_size": 262144, "normalization": 1},
        "compression": "zstd",
        "table": [[th, table.len(), table.len() + 1]],
        "files": [],
    });
    let body = serde_json::to_vec(&wire).unwrap();
    let mut plain = format!(
        "cma-snapshot-manifest {format} {}\n",
        hex(&Sha256::digest(&body))
    )
    .into_bytes();
    plain.extend_from_slice(&body);
    let manifest = zstd::bulk::compress(&plain, 1).unwrap();
    let id = hex(&Sha256::digest(&manifest));
    let key = format!("manifests/{session}/{:020}-{id}", 1_700_000_000_000_000u64);
    put(format!("ids/{id}"), key.clone().into_bytes()).await;
    put(key, manifest).await;
    cma_store::SnapshotId::from_hex(&id).unwrap()
}
