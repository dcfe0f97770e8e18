//! The conformance suite every backend passes (feature `conformance`).
//!
//! Each check creates its own sandbox(es) from an empty [`SandboxSpec`], exercises part of the
//! [`Sandbox`]/[`SandboxBackend`] contract with assertions (panicking on a violation, like a
//! test), and destroys what it created. Checks consult [`Capabilities`] and assert
//! [`SandboxErrorKind::Unsupported`] for what a backend declares it cannot do. So that a
//! capability switched off by mistake cannot make those checks pass vacuously, the caller
//! states the capabilities it expects and [`run_all`] first asserts the backend reports
//! exactly those ([`capabilities`]):
//!
//! ```no_run
//! # async fn demo(backend: &dyn cma_sandbox::SandboxBackend) {
//! use cma_sandbox::Capabilities;
//! let mut expected = Capabilities::default();
//! expected.files = true;
//! expected.archive = true;
//! cma_sandbox::conformance::run_all(backend, expected).await;
//! # }
//! ```
//!
//! Backend-specific confinement (what "outside" means differs between a directory and a
//! container) is tested next to each backend, not here.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::{
    ByteStream, Capabilities, ExecEvent, ExecRequest, ExecuteRequest, FileKind, Sandbox,
    SandboxBackend, SandboxErrorKind, SandboxSpec, SandboxStatus,
};

mod limits;

pub use limits::{capabilities, disk_quota};

/// Run every check in order, after asserting that the backend reports exactly the `expected`
/// capabilities (see [`capabilities`]).
pub async fn run_all(backend: &dyn SandboxBackend, expected: Capabilities) {
    capabilities(backend, expected).await;
    lifecycle(backend).await;
    file_round_trip(backend).await;
    directories(backend).await;
    batches(backend).await;
    errors_are_typed(backend).await;
    archive_round_trip(backend).await;
    archive_refuses_escapes(backend).await;
    symlinks(backend).await;
    exec(backend).await;
    execute(backend).await;
    disk_quota(backend).await;
}

async fn fresh(backend: &dyn SandboxBackend) -> Arc<dyn Sandbox> {
    backend
        .create(&SandboxSpec::new())
        .await
        .expect("create a sandbox from an empty spec")
}

async fn cleanup(backend: &dyn SandboxBackend, sb: &Arc<dyn Sandbox>) {
    backend
        .destroy(sb.id())
        .await
        .expect("destroy a sandbox created by the suite");
}

fn p(sb: &Arc<dyn Sandbox>, rel: &str) -> String {
    format!("{}/{rel}", sb.workdir().trim_end_matches('/'))
}

/// Create, list, stop (operations refused), resume (files kept), destroy (gone).
pub async fn lifecycle(backend: &dyn SandboxBackend) {
    assert!(!backend.name().is_empty(), "backend name is empty");
    let sb = fresh(backend).await;
    let id = sb.id().clone();
    assert!(sb.workdir().starts_with('/'), "workdir must be absolute");
    assert_eq!(sb.status().await.unwrap(), SandboxStatus::Running);
    assert!(
        backend.list().await.unwrap().iter().any(|i| i.id == id),
        "list() must include a new sandbox"
    );
    if !sb.capabilities().files {
        cleanup(backend, &sb).await;
        return;
    }
    sb.write_file(&p(&sb, "keep.txt"), Bytes::from_static(b"kept"))
        .await
        .unwrap();
    sb.stop().await.unwrap();
    sb.stop().await.expect("stop is idempotent");
    assert_eq!(sb.status().await.unwrap(), SandboxStatus::Stopped);
    let err = sb.read_file(&p(&sb, "keep.txt"), None).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::Stopped, "{err}");
    if backend.capabilities().resume {
        let listed = backend.list().await.unwrap();
        let info = listed
            .iter()
            .find(|i| i.id == id)
            .expect("stopped sandbox listed");
        assert_eq!(info.status, SandboxStatus::Stopped);
        let again = backend.resume(&id).await.expect("resume a stopped sandbox");
        assert_eq!(again.id(), &id);
        assert_eq!(again.status().await.unwrap(), SandboxStatus::Running);
        let data = again.read_file(&p(&again, "keep.txt"), None).await.unwrap();
        assert_eq!(&data[..], b"kept", "files survive stop/resume");
    }
    backend.destroy(&id).await.unwrap();
    assert!(
        !backend.list().await.unwrap().iter().any(|i| i.id == id),
        "destroyed sandbox still listed"
    );
    let err = backend.destroy(&id).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotFound, "{err}");
    let err = backend
        .resume(&id)
        .await
        .err()
        .expect("resume after destroy fails");
    assert_eq!(err.kind(), SandboxErrorKind::NotFound, "{err}");
}

/// Write (creating parents), read back, stat, overwrite, stream, size cap, relative paths.
pub async fn file_round_trip(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().files {
        cleanup(backend, &sb).await;
        return;
    }
    let path = p(&sb, "a/b/c.txt");
    sb.write_file(&path, Bytes::from_static(b"hello\r\nworld"))
        .await
        .unwrap();
    assert_eq!(
        &sb.read_file(&path, None).await.unwrap()[..],
        b"hello\r\nworld"
    );
    let st = sb.stat(&path).await.unwrap();
    assert_eq!((st.kind, st.size), (FileKind::File, 12));
    assert!(st.is_file());
    assert!(sb.stat(&p(&sb, "a/b")).await.unwrap().is_dir());
    assert_eq!(sb.lstat(&path).await.unwrap().kind, FileKind::File);

    sb.write_file(&path, Bytes::from_static(b"short"))
        .await
        .unwrap();
    assert_eq!(&sb.read_file(&path, None).await.unwrap()[..], b"short");
    assert_eq!(
        &sb.read_file("a/b/c.txt", None).await.unwrap()[..],
        b"short",
        "relative paths resolve against workdir"
    );

    let err = sb.read_file(&path, Some(4)).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::TooLarge, "{err}");
    assert_eq!(err.size(), Some(5));
    assert_eq!(&sb.read_file(&path, Some(5)).await.unwrap()[..], b"short");

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let big_path = p(&sb, "big.bin");
    sb.write_file(&big_path, Bytes::from(big.clone()))
        .await
        .unwrap();
    assert_eq!(sb.read_file(&big_path, None).await.unwrap(), big);
    let mut reader = sb.open_read(&big_path).await.unwrap();
    let mut streamed = Vec::new();
    reader.read_to_end(&mut streamed).await.unwrap();
    assert_eq!(streamed, big, "open_read streams the whole file");

    let empty = p(&sb, "empty");
    sb.write_file(&empty, Bytes::new()).await.unwrap();
    assert_eq!(sb.stat(&empty).await.unwrap().size, 0);
    cleanup(backend, &sb).await;
}

/// create_dir_all, read_dir (sorted, lstat kinds), remove (file, dir, recursive).
pub async fn directories(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().files {
        cleanup(backend, &sb).await;
        return;
    }
    let d = p(&sb, "d");
    sb.create_dir_all(&p(&sb, "d/x/y")).await.unwrap();
    sb.create_dir_all(&p(&sb, "d/x/y"))
        .await
        .expect("idempotent");
    sb.write_file(&p(&sb, "d/b.txt"), Bytes::from_static(b"b"))
        .await
        .unwrap();
    sb.write_file(&p(&sb, "d/a.txt"), Bytes::from_static(b"aa"))
        .await
        .unwrap();
    let entries = sb.read_dir(&d).await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.txt", "b.txt", "x"]);
    assert_eq!(entries[0].stat.size, 2);
    assert_eq!(entries[2].stat.kind, FileKind::Dir);

    let err = sb.remove(&p(&sb, "d/x"), false).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::DirectoryNotEmpty, "{err}");
    sb.remove(&p(&sb, "d/x/y"), false)
        .await
        .expect("remove empty dir");
    sb.remove(&p(&sb, "d/a.txt"), false).await.unwrap();
    sb.remove(&d, true).await.expect("recursive remove");
    let err = sb.stat(&d).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotFound, "{err}");
    assert!(sb.read_dir(sb.workdir()).await.unwrap().is_empty());
    cleanup(backend, &sb).await;
}

/// `read_files` and `read_dirs` give, per path and in order, what `read_file` (with the cap)
/// and `read_dir` give; `find_lines` finds the lines holding a string.
pub async fn batches(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().files {
        cleanup(backend, &sb).await;
        return;
    }
    sb.write_file(&p(&sb, "m/a.txt"), Bytes::from_static(b"alpha"))
        .await
        .unwrap();
    sb.write_file(&p(&sb, "m/big.txt"), Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    sb.write_file(&p(&sb, "m/sub/e"), Bytes::new())
        .await
        .unwrap();
    let paths: Vec<String> = [
        "m/a.txt",
        "m/missing",
        "m/sub",
        "m/big.txt",
        "m/sub/e",
        "m/a.txt",
    ]
    .iter()
    .map(|x| p(&sb, x))
    .collect();
    let got = sb.read_files(&paths, 8).await.unwrap();
    assert_eq!(got.len(), paths.len());
    assert_eq!(&got[0].as_ref().unwrap()[..], b"alpha");
    let kind = |r: &crate::Result<Bytes>| r.as_ref().err().map(|e| e.kind());
    assert_eq!(kind(&got[1]), Some(SandboxErrorKind::NotFound));
    assert_eq!(kind(&got[2]), Some(SandboxErrorKind::IsADirectory));
    assert_eq!(kind(&got[3]), Some(SandboxErrorKind::TooLarge));
    assert_eq!(got[3].as_ref().unwrap_err().size(), Some(10));
    assert!(got[4].as_ref().unwrap().is_empty());
    assert_eq!(&got[5].as_ref().unwrap()[..], b"alpha");
    assert!(sb.read_files(&[], 8).await.unwrap().is_empty());

    sb.write_file(
        &p(&sb, "m/t.txt"),
        Bytes::from_static(b"a needle\nno\n\nneedle b"),
    )
    .await
    .unwrap();
    sb.write_file(&p(&sb, "m/bin"), Bytes::from_static(b"x\0needle\n"))
        .await
        .unwrap();
    let paths: Vec<String> = ["m/t.txt", "m/bin", "m/missing", "m/a.txt"]
        .iter()
        .map(|x| p(&sb, x))
        .collect();
    let found = sb.find_lines(&paths, "needle", 1024, 1024).await.unwrap();
    assert_eq!(found.len(), 4);
    let t = found[0].as_ref().unwrap();
    assert!(!t.binary);
    let got: Vec<(u64, u64, bool, &[u8])> = t
        .lines
        .iter()
        .map(|l| (l.number, l.len, l.terminated, &l.text[..]))
        .collect();
    assert_eq!(
        got,
        [
            (1, 8, true, &b"a needle"[..]),
            (4, 8, false, &b"needle b"[..])
        ]
    );
    assert!(found[1].as_ref().unwrap().binary);
    assert_eq!(
        found[2].as_ref().err().map(|e| e.kind()),
        Some(SandboxErrorKind::NotFound)
    );
    assert!(found[3].as_ref().unwrap().lines.is_empty());
    let found = sb.find_lines(&paths[..1], "needle", 1024, 5).await.unwrap();
    let t = found[0].as_ref().unwrap();
    assert_eq!(t.lines.len(), 2);
    assert!(t.lines.iter().all(|l| l.text.is_empty() && l.len == 8));
    let found = sb.find_lines(&paths[..1], "needle", 4, 1024).await.unwrap();
    assert_eq!(
        found[0].as_ref().err().map(|e| e.kind()),
        Some(SandboxErrorKind::TooLarge)
    );

    let dirs: Vec<String> = ["m", "m/nope", "m/a.txt", "m/sub"]
        .iter()
        .map(|x| p(&sb, x))
        .collect();
    let got = sb.read_dirs(&dirs).await.unwrap();
    assert_eq!(got.len(), dirs.len());
    let names = |r: &crate::Result<Vec<crate::DirEntry>>| -> Vec<String> {
        r.as_ref().unwrap().iter().map(|e| e.name.clone()).collect()
    };
    assert_eq!(names(&got[0]), ["a.txt", "big.txt", "bin", "sub", "t.txt"]);
    assert_eq!(got[0].as_ref().unwrap()[3].stat.kind, FileKind::Dir);
    assert_eq!(
        got[1].as_ref().err().map(|e| e.kind()),
        Some(SandboxErrorKind::NotFound)
    );
    assert_eq!(
        got[2].as_ref().err().map(|e| e.kind()),
        Some(SandboxErrorKind::NotADirectory)
    );
    assert_eq!(names(&got[3]), ["e"]);
    // The same listings in the file system's order: the same entries, the same failures.
    let unsorted = sb.read_dirs_unsorted(&dirs).await.unwrap();
    assert_eq!(unsorted.len(), dirs.len());
    for ((u, s), d) in unsorted.iter().zip(&got).zip(&dirs) {
        match (u, s) {
            (Ok(u), Ok(s)) => {
                let mut u = u.clone();
                u.sort_by(|a, b| a.name.cmp(&b.name));
                assert_eq!(&u, s, "read_dirs_unsorted({d}) lists other entries");
            }
            (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "{d}"),
            _ => panic!("read_dirs_unsorted({d}) and read_dirs disagree: {u:?} / {s:?}"),
        }
    }
    cleanup(backend, &sb).await;
}

/// Missing files, wrong kinds and malformed paths give the documented kinds, naming the
/// sandbox path.
pub async fn errors_are_typed(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().files {
        cleanup(backend, &sb).await;
        return;
    }
    let missing = p(&sb, "missing.txt");
    let err = sb.read_file(&missing, None).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotFound, "{err}");
    assert_eq!(err.path(), Some(missing.as_str()));
    assert_eq!(
        err.to_string(),
        format!("{missing}: no such file or directory")
    );
    assert!(!err.is_retryable());
    assert_eq!(
        sb.stat(&missing).await.unwrap_err().kind(),
        SandboxErrorKind::NotFound
    );
    assert_eq!(
        sb.remove(&missing, false).await.unwrap_err().kind(),
        SandboxErrorKind::NotFound
    );
    assert_eq!(
        sb.read_dir(&missing).await.unwrap_err().kind(),
        SandboxErrorKind::NotFound
    );

    let dir = p(&sb, "dir");
    sb.create_dir_all(&dir).await.unwrap();
    let err = sb.read_file(&dir, None).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::IsADirectory, "{err}");
    let err = sb
        .write_file(&dir, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::IsADirectory, "{err}");

    let file = p(&sb, "file");
    sb.write_file(&file, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let err = sb.read_dir(&file).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotADirectory, "{err}");
    let err = sb
        .write_file(&p(&sb, "file/child"), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotADirectory, "{err}");
    let err = sb.read_link(&file).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            SandboxErrorKind::InvalidInput | SandboxErrorKind::Io
        ),
        "read_link on a regular file: {err}"
    );

    let err = sb.read_file(&p(&sb, "nul\0byte"), None).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::InvalidInput, "{err}");
    cleanup(backend, &sb).await;
}

fn tar_stream(bytes: Vec<u8>) -> ByteStream {
    // Uneven chunks exercise the importer's buffering.
    let chunks: Vec<_> = bytes
        .chunks(777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("export chunk"));
    }
    out
}

/// Export a workspace and import it into a fresh sandbox: same files, same contents.
pub async fn archive_round_trip(backend: &dyn SandboxBackend) {
    let a = fresh(backend).await;
    let caps: Capabilities = a.capabilities();
    if !caps.archive {
        assert_eq!(
            a.export_workspace().await.err().map(|e| e.kind()),
            Some(SandboxErrorKind::Unsupported)
        );
        cleanup(backend, &a).await;
        return;
    }
    a.write_file(&p(&a, "src/main.rs"), Bytes::from_static(b"fn main() {}\n"))
        .await
        .unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    a.write_file(&p(&a, "data/big.bin"), Bytes::from(big.clone()))
        .await
        .unwrap();
    a.create_dir_all(&p(&a, "empty/dir")).await.unwrap();
    let tar = collect(a.export_workspace().await.unwrap()).await;

    let b = fresh(backend).await;
    b.import_workspace(tar_stream(tar)).await.unwrap();
    assert_eq!(
        &b.read_file(&p(&b, "src/main.rs"), None).await.unwrap()[..],
        b"fn main() {}\n"
    );
    assert_eq!(
        b.read_file(&p(&b, "data/big.bin"), None).await.unwrap(),
        big
    );
    assert!(b.stat(&p(&b, "empty/dir")).await.unwrap().is_dir());
    cleanup(backend, &a).await;
    cleanup(backend, &b).await;
}

fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data_or_target) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        // Write names raw so `..` and absolute paths survive (the builder refuses them).
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if kind.is_symlink() || kind.is_hard_link() {
            h.set_size(0);
            let t = data_or_target.as_bytes();
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
            h.set_cksum();
            builder.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data_or_target.len() as u64);
            h.set_cksum();
            builder.append(&h, data_or_target.as_bytes()).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// Imports with `..`, absolute names, entries beneath a symlink of the archive or hard links
/// fail with a typed error; symlinks themselves are link text, imported whatever they point at.
pub async fn archive_refuses_escapes(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().archive {
        cleanup(backend, &sb).await;
        return;
    }
    use tar::EntryType as T;
    let cases: [&[(&str, T, &str)]; 6] = [
        &[("../escape.txt", T::Regular, "x")],
        &[("/tmp/escape.txt", T::Regular, "x")],
        &[
            ("link", T::Symlink, "/etc"),
            ("link/passwd", T::Regular, "x"),
        ],
        &[
            ("sub/link", T::Symlink, "../../outside"),
            ("sub/link/f", T::Regular, "x"),
        ],
        &[("inward", T::Symlink, "."), ("inward/f", T::Regular, "x")],
        &[("hard", T::Link, "/etc/passwd")],
    ];
    for case in cases {
        let err = sb
            .import_workspace(tar_stream(tar_with(case)))
            .await
            .expect_err("escaping archive entry accepted");
        assert!(
            matches!(
                err.kind(),
                SandboxErrorKind::OutsideSandbox | SandboxErrorKind::InvalidArchive
            ),
            "{:?}: {err}",
            case[0].0
        );
    }
    let err = sb
        .import_workspace(tar_stream(b"definitely not a tar archive".repeat(40)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::InvalidArchive, "{err}");
    // The links alone are link text: kept exactly as they were exported.
    let links = [
        ("abs", "/etc/passwd"),
        ("sub/out", "../../outside"),
        ("dangling", "no/such/file"),
    ];
    let entries: Vec<(&str, T, &str)> = links.iter().map(|(n, t)| (*n, T::Symlink, *t)).collect();
    let with_dir: Vec<(&str, T, &str)> = std::iter::once(("sub/", T::Directory, ""))
        .chain(entries)
        .collect();
    sb.import_workspace(tar_stream(tar_with(&with_dir)))
        .await
        .unwrap();
    for (name, target) in links {
        assert_eq!(sb.read_link(&p(&sb, name)).await.unwrap(), target, "{name}");
    }
    cleanup(backend, &sb).await;
}

/// Symlinks (brought in by an archive): lstat sees the link, stat follows it, read_link returns
/// the stored target, remove deletes the link only.
pub async fn symlinks(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    let caps = sb.capabilities();
    if !(caps.symlinks && caps.archive) {
        cleanup(backend, &sb).await;
        return;
    }
    use tar::EntryType as T;
    let tar = tar_with(&[
        ("dir/", T::Directory, ""),
        ("dir/file.txt", T::Regular, "target"),
        ("link", T::Symlink, "dir/file.txt"),
        ("dir/up", T::Symlink, "../dir/file.txt"),
        ("dirlink", T::Symlink, "dir"),
    ]);
    sb.import_workspace(tar_stream(tar)).await.unwrap();
    let link = p(&sb, "link");
    assert_eq!(sb.lstat(&link).await.unwrap().kind, FileKind::Symlink);
    assert_eq!(sb.stat(&link).await.unwrap().kind, FileKind::File);
    assert_eq!(sb.read_link(&link).await.unwrap(), "dir/file.txt");
    assert_eq!(&sb.read_file(&link, None).await.unwrap()[..], b"target");
    assert_eq!(
        &sb.read_file(&p(&sb, "dir/up"), None).await.unwrap()[..],
        b"target"
    );
    let listed = sb.read_dir(sb.workdir()).await.unwrap();
    let kinds: Vec<_> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.stat.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("dir", FileKind::Dir),
            ("dirlink", FileKind::Symlink),
            ("link", FileKind::Symlink)
        ]
    );
    // Writing through a symlink to a directory lands in the directory.
    sb.write_file(
        &p(&sb, "dirlink/sub/new.txt"),
        Bytes::from_static(b"via link"),
    )
    .await
    .unwrap();
    sb.create_dir_all(&p(&sb, "dirlink/other")).await.unwrap();
    assert_eq!(
        &sb.read_file(&p(&sb, "dir/sub/new.txt"), None)
            .await
            .unwrap()[..],
        b"via link"
    );
    assert!(sb.stat(&p(&sb, "dir/other")).await.unwrap().is_dir());
    sb.remove(&link, false).await.unwrap();
    assert!(
        sb.stat(&p(&sb, "dir/file.txt")).await.is_ok(),
        "target kept"
    );
    cleanup(backend, &sb).await;
}

/// Shell commands run (or fail as Unsupported, with a message) per the capabilities.
pub async fn exec(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if sb.capabilities().shell_exec {
        let out = sb
            .exec(ExecRequest::shell("echo hi; exit 3"))
            .await
            .unwrap();
        assert_eq!(&out.stdout[..], b"hi\n");
        assert_eq!(out.exit_code, Some(3));
        let mut events = sb
            .exec_stream(ExecRequest::shell("echo streamed"))
            .await
            .unwrap();
        let mut last = None;
        while let Some(ev) = events.next().await {
            last = Some(ev.unwrap());
        }
        assert!(matches!(last, Some(ExecEvent::Exit(e)) if e.exit_code == Some(0)));
    } else {
        let err = sb.exec(ExecRequest::shell("echo hi")).await.unwrap_err();
        assert_eq!(err.kind(), SandboxErrorKind::Unsupported, "{err}");
        assert!(!err.to_string().is_empty());
        let err = sb
            .exec_stream(ExecRequest::shell("echo hi"))
            .await
            .err()
            .expect("exec_stream without a shell fails");
        assert_eq!(err.kind(), SandboxErrorKind::Unsupported, "{err}");
    }
    cleanup(backend, &sb).await;
}

/// JavaScript runs with the workspace as `fs.*` (or fails as Unsupported).
pub async fn execute(backend: &dyn SandboxBackend) {
    let sb = fresh(backend).await;
    if !sb.capabilities().execute_js {
        let err = sb.execute(ExecuteRequest::new("1")).await.unwrap_err();
        assert_eq!(err.kind(), SandboxErrorKind::Unsupported, "{err}");
        cleanup(backend, &sb).await;
        return;
    }
    let out = sb.execute(ExecuteRequest::new("1 + 2")).await.unwrap();
    assert_eq!((out.exit_code, &out.stdout[..]), (Some(0), &b"3\n"[..]));
    let out = sb
        .execute(ExecuteRequest::new(
            "fs.writeFile('out/n.txt', 'from js'); console.log(fs.readdir('out').join(','));",
        ))
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"n.txt\n");
    assert_eq!(
        &sb.read_file(&p(&sb, "out/n.txt"), None).await.unwrap()[..],
        b"from js"
    );
    let out = sb
        .execute(ExecuteRequest::new("throw new Error('boom')"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("boom"));
    cleanup(backend, &sb).await;
}
