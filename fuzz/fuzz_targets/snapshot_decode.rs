//! Snapshot manifest and chunk decoding in `cma-store`, through its public API over an
//! in-memory object store that the input fills like a hostile store would: a manifest (raw
//! bytes, or JSON with chosen fields behind a correct or wrong header and checksum), its chunk
//! table, and chunks in every stored form (raw, zstd, arbitrary frames, arbitrary bytes), with
//! sizes that lie. Then `manifest`, `list`/`latest`, `verify` and `restore` into a scratch isolate
//! sandbox.
//!
//! The harness writes the stored format (formats 2 to 4: zstd manifest with a header line,
//! 40-byte chunk-table records, tagged chunks named by SHA-256 (tags 0 and 1) or BLAKE3 (tags 2
//! and 3)); it follows that format, not the crate's private code. Checked: no panic, bounded memory (libFuzzer's malloc limit), nothing written outside
//! the workspace.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use cma_fuzz::{ArbJson, Scratch, runtime};
use cma_store::SnapshotId;
use cma_store::snapshot::FORMAT_VERSION;
use cma_store::{SnapshotConfig, SnapshotStore};
use libfuzzer_sys::fuzz_target;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MAGIC: &str = "cma-snapshot-manifest";
const SESSION: &str = "s";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[derive(Debug, Arbitrary)]
enum Data {
    Bytes(Vec<u8>),
    /// One tar entry (header and padded data), so chunks concatenate into archives.
    TarEntry {
        name: String,
        flag: u8,
        mode: u16,
        content: Vec<u8>,
    },
    /// The end-of-archive marker.
    TarEnd,
}

impl Data {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Bytes(b) => b.clone(),
            Data::TarEntry {
                name,
                flag,
                mode,
                content,
            } => {
                let mut out = cma_fuzz::tar::header(
                    name.as_bytes(),
                    *flag,
                    u32::from(*mode),
                    content.len() as u64,
                    b"",
                )
                .to_vec();
                out.extend_from_slice(content);
                cma_fuzz::tar::pad(&mut out);
                out
            }
            Data::TarEnd => vec![0; 1024],
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Form {
    Raw,
    Zstd,
    /// Tag 1, these bytes as the frame, a correct trailer.
    Frame(Vec<u8>),
    /// Exactly these stored bytes.
    Stored(Vec<u8>),
    /// Named by BLAKE3: tag 2, the bytes as they are.
    RawBlake3,
    /// Named by BLAKE3: tag 3, a zstd frame (these bytes, or the data compressed) and its
    /// BLAKE3.
    FrameBlake3(Option<Vec<u8>>),
}

#[derive(Debug, Arbitrary)]
struct Chunk {
    data: Data,
    form: Form,
}

impl Chunk {
    fn stored(&self, data: &[u8]) -> Vec<u8> {
        match &self.form {
            Form::Raw => [&[0u8][..], data].concat(),
            Form::Zstd | Form::Frame(_) => {
                let frame = match &self.form {
                    Form::Frame(f) => f.clone(),
                    _ => zstd::bulk::compress(data, 1).expect("zstd"),
                };
                let mut out = vec![1u8];
                out.extend_from_slice(&frame);
                out.extend_from_slice(&sha(&frame));
                out
            }
            Form::Stored(b) => b.clone(),
            Form::RawBlake3 => [&[2u8][..], data].concat(),
            Form::FrameBlake3(f) => {
                let frame = match f {
                    Some(f) => f.clone(),
                    None => zstd::bulk::compress(data, 1).expect("zstd"),
                };
                let mut out = vec![3u8];
                out.extend_from_slice(&frame);
                out.extend_from_slice(blake3::hash(&frame).as_bytes());
                out
            }
        }
    }

    /// The chunk's name: the hash its stored form says names it.
    fn name(&self, data: &[u8]) -> [u8; 32] {
        match &self.form {
            Form::RawBlake3 | Form::FrameBlake3(_) => *blake3::hash(data).as_bytes(),
            _ => sha(data),
        }
    }
}

/// A reference to a chunk: which one (by index), and optional lies about its sizes.
#[derive(Debug, Arbitrary)]
struct Ref {
    chunk: u8,
    size: Option<u32>,
    stored_size: Option<u32>,
}

#[derive(Debug, Arbitrary)]
enum Manifest {
    /// Exactly these stored bytes.
    Raw(Vec<u8>),
    /// Arbitrary JSON behind a correct header.
    Json(ArbJson),
    /// The format's fields, some replaced.
    Fields {
        format_version: Option<u32>,
        session_id: Option<String>,
        created_at: Option<String>,
        parent: Option<String>,
        archive_bytes: Option<u64>,
        stored_bytes: Option<u64>,
        file_count: Option<u64>,
        content_bytes: Option<u64>,
        compression: Option<String>,
        chunker: Option<(u32, u32, u32, u8)>,
        /// The chunk table as refs, or raw table bytes.
        table: Result<Vec<Ref>, Vec<u8>>,
        files: Vec<Ref>,
        bad_magic: bool,
        bad_digest: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    chunks: Vec<Chunk>,
    manifest: Manifest,
    restore: bool,
}

struct Stored {
    hash: [u8; 32],
    size: u32,
    stored_size: u32,
}

fn record(refs: &[Ref], stored: &[Stored]) -> (Vec<u8>, u64, u64) {
    let mut table = Vec::new();
    let (mut total, mut total_stored) = (0u64, 0u64);
    for r in refs.iter().take(64) {
        let Some(c) = stored.get(usize::from(r.chunk) % stored.len().max(1)) else {
            break;
        };
        let size = r.size.unwrap_or(c.size);
        let ssize = r.stored_size.unwrap_or(c.stored_size);
        table.extend_from_slice(&c.hash);
        table.extend_from_slice(&size.to_le_bytes());
        table.extend_from_slice(&ssize.to_le_bytes());
        total += u64::from(size);
        total_stored += u64::from(ssize);
    }
    (table, total, total_stored)
}

fn count_files(archive: &[u8]) -> (u64, u64) {
    let mut a = tar::Archive::new(archive);
    let (mut files, mut bytes) = (0, 0);
    if let Ok(entries) = a.entries() {
        for e in entries.flatten() {
            if e.header().entry_type().is_file() {
                files += 1;
                bytes += e.header().size().unwrap_or(0);
            }
        }
    }
    (files, bytes)
}

fn store() -> &'static SnapshotStore {
    static STORE: OnceLock<SnapshotStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let mut config = SnapshotConfig::default();
        config.op_timeout = std::time::Duration::from_secs(5);
        SnapshotStore::in_memory(config).expect("in-memory store")
    })
}

async fn put(s: &dyn ObjectStore, key: String, data: Vec<u8>) {
    s.put(&Path::from(key), PutPayload::from(Bytes::from(data)))
        .await
        .expect("in-memory put");
}

async fn clear(s: &dyn ObjectStore) {
    use futures::TryStreamExt;
    let all: Vec<_> = s.list(None).try_collect().await.expect("list");
    for m in all {
        let _ = s.delete(&m.location).await;
    }
}

async fn run(input: Input) {
    let snapshots = store();
    let os = snapshots.object_store().as_ref();
    clear(os).await;
    // Chunks, under the hash of their content.
    let mut stored = Vec::new();
    let mut datas = Vec::new();
    for c in input.chunks.iter().take(16) {
        let data = c.data.bytes();
        let bytes = c.stored(&data);
        let hash = c.name(&data);
        let h = hex(&hash);
        put(os, format!("chunks/{}/{h}", &h[..2]), bytes.clone()).await;
        stored.push(Stored {
            hash,
            size: data.len() as u32,
            stored_size: bytes.len() as u32,
        });
        datas.push(data);
    }
    let manifest = match input.manifest {
        Manifest::Raw(b) => b,
        Manifest::Json(j) => frame(&j.0, false, false),
        Manifest::Fields {
            format_version,
            session_id,
            created_at,
            parent,
            archive_bytes,
            stored_bytes,
            file_count,
            content_bytes,
            compression,
            chunker,
            table,
            files,
            bad_magic,
            bad_digest,
        } => {
            let (table_bytes, total, total_stored, archive) = match &table {
                Ok(refs) => {
                    let (t, a, s) = record(refs, &stored);
                    let archive: Vec<u8> = refs
                        .iter()
                        .take(64)
                        .filter_map(|r| datas.get(usize::from(r.chunk) % datas.len().max(1)))
                        .flatten()
                        .copied()
                        .collect();
                    (t, a, s, archive)
                }
                Err(raw) => (raw.clone(), 0, 0, Vec::new()),
            };
            // The chunk table is itself a (raw) chunk.
            let th = sha(&table_bytes);
            let thex = hex(&th);
            let tstored = [&[0u8][..], &table_bytes].concat();
            put(os, format!("chunks/{}/{thex}", &thex[..2]), tstored.clone()).await;
            let table_refs = json!([[thex, table_bytes.len(), tstored.len()]]);
            let (files_table, _, _) = record(&files, &stored);
            let files_refs: Vec<Value> = files_table
                .chunks(40)
                .map(|r| {
                    json!([
                        hex(&r[..32]),
                        u32::from_le_bytes([r[32], r[33], r[34], r[35]]),
                        u32::from_le_bytes([r[36], r[37], r[38], r[39]])
                    ])
                })
                .collect();
            let (files_n, bytes_n) = count_files(&archive);
            let (min, avg, max, norm) = chunker.unwrap_or((16384, 65536, 262144, 1));
            let wire = json!({
                "format_version": format_version.unwrap_or(FORMAT_VERSION),
                "session_id": session_id.unwrap_or_else(|| SESSION.to_owned()),
                "created_at": created_at.unwrap_or_else(|| "2026-05-01T00:00:00Z".to_owned()),
                "parent": parent,
                "file_count": file_count.unwrap_or(files_n),
                "content_bytes": content_bytes.unwrap_or(bytes_n),
                "archive_bytes": archive_bytes.unwrap_or(total),
                "stored_bytes": stored_bytes.unwrap_or(total_stored),
                "uploaded_bytes": 0,
                "chunker": {"min_size": min, "avg_size": avg, "max_size": max, "normalization": norm},
                "compression": compression.unwrap_or_else(|| "zstd".to_owned()),
                "table": table_refs,
                "files": files_refs,
            });
            frame(&wire, bad_magic, bad_digest)
        }
    };
    let id_hex = hex(&sha(&manifest));
    let id = SnapshotId::from_hex(&id_hex).expect("a sha256 is an id");
    let key = format!(
        "manifests/{SESSION}/{:020}-{id_hex}",
        1_700_000_000_000_000u64
    );
    put(os, format!("ids/{id_hex}"), key.clone().into_bytes()).await;
    put(os, key, manifest).await;

    let _ = snapshots.list(SESSION).await;
    let m = snapshots.manifest(&id).await;
    trace(|| format!("manifest: {:?}", m.as_ref().map(|m| m.chunks.len())));
    let Ok(m) = m else {
        return;
    };
    assert_eq!(m.id, id);
    let _ = snapshots.latest(SESSION).await;
    if input.restore {
        let scratch = Scratch::get();
        scratch.reset();
        let r = snapshots.restore(&id, scratch.sandbox.as_ref()).await;
        trace(|| format!("restore: {:?}", r.map(|m| m.file_count)));
        scratch.check_contained();
    } else {
        let r = snapshots.verify(&id).await;
        trace(|| format!("verify: {:?}", r.map(|m| m.file_count)));
    }
}

/// With `CMA_FUZZ_TRACE` set, say how far each input got (to check the harness reaches deep).
fn trace(msg: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("CMA_FUZZ_TRACE").is_some()) {
        eprintln!("{}", msg());
    }
}

/// The stored manifest: zstd of `<magic> <format> <sha256 of json>\n<json>`.
fn frame(json: &Value, bad_magic: bool, bad_digest: bool) -> Vec<u8> {
    let body = serde_json::to_vec(json).expect("json");
    let digest = if bad_digest {
        "0".repeat(64)
    } else {
        hex(&sha(&body))
    };
    let magic = if bad_magic { "cma-snapshot" } else { MAGIC };
    let mut plain = format!("{magic} {FORMAT_VERSION} {digest}\n").into_bytes();
    plain.extend_from_slice(&body);
    zstd::bulk::compress(&plain, 1).expect("zstd")
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});
