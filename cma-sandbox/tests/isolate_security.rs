//! Security tests for the isolate backend: path escapes (`..`, absolute host paths, symlinks
//! made by scripts, archives or the host), Unicode tricks, and resource abuse in `execute`.
//! Every attack must fail with a typed error, never show a host path, and leave the canary
//! next to the sandbox root untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{
    ByteStream, ExecuteRequest, Mount, Sandbox, SandboxBackend, SandboxError, SandboxErrorKind,
    SandboxId, SandboxSpec,
};

const CANARY: &[u8] = b"canary: must never change";

/// A temp dir holding the sandbox root, a canary file and an `outside` directory next to it.
struct Fixture {
    base: tempfile::TempDir,
    backend: IsolateBackend,
}

impl Fixture {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("canary.txt"), CANARY).unwrap();
        std::fs::create_dir(base.path().join("outside")).unwrap();
        std::fs::write(base.path().join("outside/secret.txt"), CANARY).unwrap();
        let backend = IsolateBackend::new(base.path().join("sandboxes")).unwrap();
        Self { base, backend }
    }

    async fn sandbox(&self) -> Arc<dyn Sandbox> {
        self.backend.create(&SandboxSpec::new()).await.unwrap()
    }

    fn host_workspace(&self, sb: &Arc<dyn Sandbox>) -> PathBuf {
        self.base
            .path()
            .join("sandboxes")
            .join(sb.id().as_str())
            .join("workspace")
    }

    fn base_str(&self) -> String {
        self.base.path().display().to_string()
    }

    /// The canary and the `outside` directory are exactly as created; nothing new appeared
    /// next to the sandbox root.
    fn assert_host_unharmed(&self) {
        let b = self.base.path();
        assert_eq!(std::fs::read(b.join("canary.txt")).unwrap(), CANARY);
        assert_eq!(std::fs::read(b.join("outside/secret.txt")).unwrap(), CANARY);
        let mut names: Vec<_> = std::fs::read_dir(b)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["canary.txt", "outside", "sandboxes"]);
        let outside: Vec<_> = std::fs::read_dir(b.join("outside")).unwrap().collect();
        assert_eq!(outside.len(), 1, "a file appeared in the outside directory");
        assert!(!Path::new("/tmp/escape.txt").exists());
    }

    /// The error has the expected kind and does not leak the host path.
    fn assert_err(&self, err: &SandboxError, kinds: &[SandboxErrorKind]) {
        assert!(kinds.contains(&err.kind()), "unexpected kind: {err:?}");
        assert!(
            !err.to_string().contains(&self.base_str()),
            "host path leaked: {err}"
        );
    }
}

use SandboxErrorKind as K;

#[tokio::test]
async fn dot_dot_paths_never_leave_the_workspace() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    for path in [
        "../canary.txt",
        "../../canary.txt",
        "/workspace/../canary.txt",
        "/workspace/../../../../../../canary.txt",
        "a/../../canary.txt",
        "..",
        "/",
    ] {
        // `/` is the sandbox's virtual root directory: readable as a directory, nothing more.
        let err = sb.read_file(path, None).await.unwrap_err();
        fx.assert_err(&err, &[K::OutsideSandbox, K::IsADirectory]);
        let err = sb
            .write_file(path, Bytes::from_static(b"pwned"))
            .await
            .unwrap_err();
        fx.assert_err(&err, &[K::OutsideSandbox]);
        let err = sb.remove(path, true).await.unwrap_err();
        fx.assert_err(&err, &[K::OutsideSandbox]);
    }
    // `..` that stays inside is fine.
    sb.write_file("a/../inside.txt", Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert!(sb.stat("/workspace/inside.txt").await.is_ok());
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn absolute_host_paths_are_outside_the_sandbox() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    let canary = fx.base.path().join("canary.txt").display().to_string();
    let host_ws = fx.host_workspace(&sb).display().to_string();
    for path in [
        "/etc/passwd",
        "/proc/self/environ",
        canary.as_str(),
        host_ws.as_str(),
    ] {
        let err = sb.read_file(path, None).await.unwrap_err();
        assert_eq!(err.kind(), K::OutsideSandbox, "{path}: {err}");
        let err = sb.stat(path).await.unwrap_err();
        assert_eq!(err.kind(), K::OutsideSandbox, "{path}: {err}");
        let err = sb
            .write_file(path, Bytes::from_static(b"pwned"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), K::OutsideSandbox, "{path}: {err}");
    }
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn symlinks_made_by_scripts_cannot_be_followed_out() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    // An absolute target is refused at creation.
    let out = sb
        .execute(ExecuteRequest::new("fs.symlink('/etc/passwd', 'abs')"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absolute symlink"), "{stderr}");
    assert!(!stderr.contains(&fx.base_str()));

    // Relative targets may be created but never followed outside.
    let script = r#"
        fs.symlink('../../../canary.txt', 'rel');
        fs.symlink('../../..', 'up');
        fs.mkdir('d');
        fs.symlink('../up', 'd/chain');
        fs.symlink('loop2', 'loop1');
        fs.symlink('loop1', 'loop2');
        const results = [];
        for (const attempt of [
            () => fs.readFile('rel'),
            () => fs.writeFile('rel', 'pwned'),
            () => fs.writeFile('up/canary.txt', 'pwned'),
            () => fs.readFile('d/chain/canary.txt'),
            () => fs.writeFile('d/chain/outside/new.txt', 'pwned'),
            () => fs.readdir('up'),
            () => fs.remove('up/outside', {recursive: true}),
        ]) {
            try { attempt(); results.push('ALLOWED'); } catch (e) { results.push(e.message); }
        }
        results
    "#;
    let out = sb.execute(ExecuteRequest::new(script)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("ALLOWED"), "{stdout}");
    assert!(stdout.contains("outside the sandbox"), "{stdout}");
    assert!(!stdout.contains(&fx.base_str()), "{stdout}");

    // The same links through the Rust API.
    for path in ["rel", "up/canary.txt", "d/chain/canary.txt"] {
        let err = sb.read_file(path, None).await.unwrap_err();
        fx.assert_err(&err, &[K::OutsideSandbox]);
        let err = sb
            .write_file(path, Bytes::from_static(b"pwned"))
            .await
            .unwrap_err();
        fx.assert_err(&err, &[K::OutsideSandbox]);
    }
    let err = sb.read_dir("up").await.unwrap_err();
    fx.assert_err(&err, &[K::OutsideSandbox]);
    let err = sb.stat("loop1").await.unwrap_err();
    fx.assert_err(&err, &[K::SymlinkLoop]);
    // Removing the link removes the link, not what it points at.
    sb.remove("up", true).await.unwrap();
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn host_made_absolute_symlinks_in_the_workspace_are_not_followed() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    let ws = fx.host_workspace(&sb);
    std::os::unix::fs::symlink(fx.base.path().join("canary.txt"), ws.join("abs")).unwrap();
    std::os::unix::fs::symlink(fx.base.path().join("outside"), ws.join("absdir")).unwrap();
    let err = sb.read_file("abs", None).await.unwrap_err();
    fx.assert_err(&err, &[K::OutsideSandbox]);
    let err = sb
        .write_file("absdir/new.txt", Bytes::from_static(b"pwned"))
        .await
        .unwrap_err();
    fx.assert_err(&err, &[K::OutsideSandbox]);
    let err = sb.open_read("abs").await.err().unwrap();
    fx.assert_err(&err, &[K::OutsideSandbox]);
    // lstat sees the link itself.
    assert!(sb.lstat("abs").await.unwrap().is_symlink());
    fx.assert_host_unharmed();
}

/// One raw tar entry: name, type, content or link target, mode.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, u32);

fn raw_tar(entries: &[RawEntry<'_>]) -> ByteStream {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data_or_target, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
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
    let bytes = builder.into_inner().unwrap();
    Box::pin(futures::stream::iter(vec![Ok(Bytes::from(bytes))]))
}

#[tokio::test]
async fn hostile_archives_are_refused_and_write_nothing_outside() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    use tar::EntryType as T;
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &[K])> = vec![
        (
            "dot-dot name",
            vec![("../canary.txt", T::Regular, "pwned", 0o644)],
            &[K::OutsideSandbox],
        ),
        (
            "nested dot-dot",
            vec![("a/../../../canary.txt", T::Regular, "pwned", 0o644)],
            &[K::OutsideSandbox],
        ),
        (
            "absolute name",
            vec![("/tmp/escape.txt", T::Regular, "pwned", 0o644)],
            &[K::OutsideSandbox],
        ),
        (
            "absolute symlink then write through it",
            vec![
                ("abs", T::Symlink, "/etc", 0o777),
                ("abs/pwned", T::Regular, "x", 0o644),
            ],
            &[K::OutsideSandbox],
        ),
        (
            "relative symlink out then write through it",
            vec![
                ("out", T::Symlink, "../../..", 0o777),
                ("out/canary.txt", T::Regular, "pwned", 0o644),
            ],
            &[K::OutsideSandbox],
        ),
        (
            // Each link looks inside on its own; together they climb out.
            "symlink chain",
            vec![
                ("a/", T::Directory, "", 0o755),
                ("a/s", T::Symlink, "..", 0o777),
                ("a/s/x", T::Symlink, "../..", 0o777),
                ("a/s/x/canary.txt", T::Regular, "pwned", 0o644),
            ],
            &[K::OutsideSandbox],
        ),
        (
            "hard link",
            vec![("h", T::Link, "../canary.txt", 0o644)],
            &[K::InvalidArchive],
        ),
        (
            "character device",
            vec![("null", T::Char, "", 0o666)],
            &[K::InvalidArchive],
        ),
        (
            "block device",
            vec![("sda", T::Block, "", 0o666)],
            &[K::InvalidArchive],
        ),
        (
            "fifo",
            vec![("p", T::Fifo, "", 0o644)],
            &[K::InvalidArchive],
        ),
        (
            "setuid file",
            vec![("suid", T::Regular, "#!/bin/sh", 0o4755)],
            &[K::InvalidArchive],
        ),
        (
            "setgid dir",
            vec![("sgid/", T::Directory, "", 0o2755)],
            &[K::InvalidArchive],
        ),
    ];
    for (what, entries, kinds) in cases {
        let err = sb
            .import_workspace(raw_tar(&entries))
            .await
            .expect_err(what);
        assert!(kinds.contains(&err.kind()), "{what}: {err:?}");
        assert!(!err.to_string().contains(&fx.base_str()), "{what}: {err}");
        fx.assert_host_unharmed();
    }
    // Refused special entries were not created either.
    for name in ["h", "null", "sda", "p", "suid", "sgid"] {
        assert_eq!(
            sb.lstat(name).await.unwrap_err().kind(),
            K::NotFound,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_failing_archive_stream_reports_its_own_error() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    let stream: ByteStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from_static(&[0u8; 100])),
        Err(SandboxError::new(K::Unavailable, "upstream went away")),
    ]));
    let err = sb.import_workspace(stream).await.unwrap_err();
    assert_eq!(err.kind(), K::Unavailable, "{err}");
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn unicode_and_malformed_names_stay_inside_or_fail_typed() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    // Look-alikes are ordinary names: they create entries inside the workspace.
    for name in [
        "\u{FF0E}\u{FF0E}/x",        // fullwidth dots
        "\u{FF0E}\u{FF0E}\u{FF0F}y", // fullwidth dots + fullwidth solidus
        "\u{2024}\u{2024}/z",        // one-dot leaders
        "\u{202E}txt.exe",           // right-to-left override
        "\u{200F}..\u{200F}/w",      // RTL marks around dots
        "..\\..\\canary.txt",        // backslashes are not separators
        "%2e%2e/%2e%2e/canary.txt",  // percent-encoding is not decoded
        "e\u{301}",                  // combining accent
    ] {
        sb.write_file(name, Bytes::from_static(b"inside"))
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(&sb.read_file(name, None).await.unwrap()[..], b"inside");
        let host = fx.host_workspace(&sb).join(name);
        assert!(host.exists(), "{name:?} not created inside the workspace");
    }
    // NUL and over-long names are refused.
    let long_name = "n".repeat(256);
    let long_path = format!("{}/f", "d/".repeat(2100));
    for bad in [
        "a\0b",
        "/workspace/\0/../canary.txt",
        &long_name,
        &long_path,
    ] {
        let err = sb
            .write_file(bad, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        fx.assert_err(&err, &[K::InvalidInput]);
        let err = sb.stat(bad).await.unwrap_err();
        fx.assert_err(&err, &[K::InvalidInput]);
    }
    let out = sb
        .execute(ExecuteRequest::new("fs.writeFile('a\\u0000b', 'x')"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NUL"));
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn sandbox_ids_cannot_traverse_the_root() {
    let fx = Fixture::new();
    for bad in ["..", "../sandboxes", "a/b", ".", ""] {
        assert_eq!(SandboxId::parse(bad).unwrap_err().kind(), K::InvalidInput);
    }
    let missing = SandboxId::parse("sbx_missing").unwrap();
    fx.assert_err(
        &fx.backend.resume(&missing).await.err().unwrap(),
        &[K::NotFound],
    );
    fx.assert_err(
        &fx.backend.destroy(&missing).await.unwrap_err(),
        &[K::NotFound],
    );
    fx.assert_host_unharmed();
}

#[tokio::test]
async fn mounts_are_confined_and_read_only_mounts_refuse_writes() {
    let fx = Fixture::new();
    let notes = fx.base.path().join("sandboxes-mem-notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("note.md"), b"remember").unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts = vec![Mount::read_only("/memory/notes", &notes)];
    let sb = fx.backend.create(&spec).await.unwrap();
    assert_eq!(
        &sb.read_file("/memory/notes/note.md", None).await.unwrap()[..],
        b"remember"
    );
    let err = sb
        .write_file("/memory/notes/new.md", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    fx.assert_err(&err, &[K::PermissionDenied]);
    fx.assert_err(
        &sb.remove("/memory/notes/note.md", false).await.unwrap_err(),
        &[K::PermissionDenied],
    );
    // The mount's ancestors are virtual directories: stat and list work, writes do not.
    assert!(sb.lstat("/memory").await.unwrap().is_dir());
    assert!(sb.stat("/").await.unwrap().is_dir());
    let root: Vec<_> = sb
        .read_dir("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, ["memory", "workspace"]);
    let mem: Vec<_> = sb
        .read_dir("/memory")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(mem, ["notes"]);
    fx.assert_err(
        &sb.write_file("/memory/x", Bytes::from_static(b"x"))
            .await
            .unwrap_err(),
        &[K::OutsideSandbox],
    );
    fx.assert_err(
        &sb.create_dir_all("/memory/other").await.unwrap_err(),
        &[K::OutsideSandbox],
    );
    fx.assert_err(
        &sb.stat("/memoryx").await.unwrap_err(),
        &[K::OutsideSandbox],
    );
    fx.assert_err(&sb.stat("/etc").await.unwrap_err(), &[K::OutsideSandbox]);
    let err = sb
        .read_file("/memory/notes/../../canary.txt", None)
        .await
        .unwrap_err();
    fx.assert_err(&err, &[K::OutsideSandbox]);
    let out = sb
        .execute(ExecuteRequest::new(
            "try { fs.writeFile('/memory/notes/x', 'y'); 'ALLOWED' } catch (e) { e.message }",
        ))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("read-only"));
    assert_eq!(std::fs::read_dir(&notes).unwrap().count(), 1);
    // Overlapping or relative mounts are refused.
    for bad in [
        Mount::new("/workspace/sub", &notes),
        Mount::new("/", &notes),
        Mount::new("memory", &notes),
    ] {
        let mut spec = SandboxSpec::new();
        spec.mounts = vec![bad];
        let err = fx.backend.create(&spec).await.err().unwrap();
        fx.assert_err(&err, &[K::InvalidInput]);
    }
    std::fs::remove_dir_all(&notes).unwrap();
    fx.assert_host_unharmed();
}

fn script(code: &str) -> ExecuteRequest {
    let mut req = ExecuteRequest::new(code);
    req.timeout = Duration::from_millis(300);
    req.memory_limit = 16 * 1024 * 1024;
    req.max_output_bytes = 10_000;
    req
}

#[tokio::test]
async fn runaway_scripts_time_out() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    for code in [
        "while (true) {}",
        "for (;;) { try { while (true) {} } catch (e) {} }",
        "(async () => { while (true) {} })()",
        "async () => { for (;;) { await null; } }",
        "new Promise(function spin(r) { Promise.resolve().then(() => spin(r)); })",
    ] {
        let err = sb.execute(script(code)).await.unwrap_err();
        assert_eq!(err.kind(), K::Timeout, "{code}: {err}");
    }
}

#[tokio::test]
async fn memory_bombs_hit_the_resource_limit() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    for code in [
        "const a = []; while (true) a.push('x'.repeat(1 << 20) + a.length);",
        "const m = new Map(); for (let i = 0; ; i++) m.set('k' + i, [i, String(i)]);",
        "const a = []; while (true) a.push({ n: a.length, p: [1, 2, 3] });",
        "new ArrayBuffer(1 << 30)",
    ] {
        // Generous wall clock: the heap limit must be what stops these.
        let mut req = script(code);
        req.timeout = Duration::from_secs(60);
        let err = sb.execute(req).await.unwrap_err();
        assert_eq!(err.kind(), K::ResourceLimit, "{code}: {err}");
    }
    // The sandbox still works afterwards.
    let out = sb.execute(script("'still alive'")).await.unwrap();
    assert_eq!(&out.stdout[..], b"still alive\n");
}

#[tokio::test]
async fn huge_output_is_truncated_and_bounded() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    let mut req = script(
        "for (let i = 0; i < 20000; i++) { console.log('y'.repeat(100)); console.error('e'); }",
    );
    req.timeout = Duration::from_secs(30);
    let out = sb.execute(req).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert!(out.stdout.len() <= 10_000, "{}", out.stdout.len());
    assert!(out.stderr.len() <= 10_000, "{}", out.stderr.len());
    assert!(out.stdout.len() > 9_000);
    let out = sb.execute(script("'z'.repeat(50000)")).await.unwrap();
    assert!(out.truncated && out.stdout.len() <= 10_000);
}

#[tokio::test]
async fn scripts_have_no_host_access_beyond_the_workspace() {
    let fx = Fixture::new();
    let sb = fx.sandbox().await;
    let out = sb
        .execute(script(
            "[typeof require, typeof process, typeof std, typeof os, typeof Deno, typeof import_meta].join(',')",
        ))
        .await
        .unwrap();
    assert_eq!(
        &out.stdout[..],
        b"undefined,undefined,undefined,undefined,undefined,undefined\n"
    );
    // Dynamic import has no loader.
    let out = sb.execute(script("import('/etc/passwd')")).await.unwrap();
    assert_eq!(out.exit_code, Some(1), "{out:?}");
    // fetch is denied by default, as a catchable error.
    let out = sb
        .execute(script(
            "async () => { try { await fetch('http://127.0.0.1:9/'); return 'ALLOWED'; } catch (e) { return e.message; } }",
        ))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("egress denied: GET http://127.0.0.1:9/"),
        "{text}"
    );
    // Deep recursion is an exception, not a crash.
    let out = sb
        .execute(script("function f() { f(); } f()"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    fx.assert_host_unharmed();
}
