//! Behaviour of `execute` on the isolate backend: results, console, async code, the egress hook,
//! and the heap cap taken from the spec; plus list/resume details of the backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cma_sandbox::isolate::{EgressHook, FetchError, FetchRequest, FetchResponse, IsolateBackend};
use cma_sandbox::{ExecuteRequest, Mount, SandboxBackend, SandboxErrorKind, SandboxSpec};

async fn run(code: &str) -> cma_sandbox::ExecOutput {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    sb.execute(ExecuteRequest::new(code)).await.unwrap()
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn results_are_printed_strings_raw_and_values_as_json() {
    assert_eq!(text(&run("'plain'").await.stdout), "plain\n");
    assert_eq!(
        text(&run("({a: 1, b: [true, null]})").await.stdout),
        "{\"a\":1,\"b\":[true,null]}\n"
    );
    let out = run("let x = 1;").await;
    assert_eq!((out.exit_code, text(&out.stdout)), (Some(0), String::new()));
}

#[tokio::test]
async fn console_goes_to_stdout_and_stderr_in_order() {
    let out =
        run("console.log('a', 1, {k: 'v'}); console.error('oops'); console.info('b'); 7").await;
    assert_eq!(text(&out.stdout), "a 1 {\"k\":\"v\"}\nb\n7\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert!(!out.truncated);
}

#[tokio::test]
async fn async_functions_and_promises_are_awaited() {
    let out = run("async () => { const v = await Promise.resolve(20); return v + 1; }").await;
    assert_eq!(text(&out.stdout), "21\n");
    let out = run("Promise.reject(new TypeError('nope'))").await;
    assert_eq!(out.exit_code, Some(1));
    assert!(
        text(&out.stderr).starts_with("Uncaught TypeError: nope"),
        "{out:?}"
    );
    let out = run("new Promise(() => {})").await;
    assert_eq!(out.exit_code, Some(1));
    assert!(text(&out.stderr).contains("never settled"), "{out:?}");
}

#[tokio::test]
async fn exceptions_exit_1_with_name_message_and_stack() {
    let out = run("function inner() { throw new RangeError('bad range'); }\ninner()").await;
    assert_eq!(out.exit_code, Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("Uncaught RangeError: bad range"), "{err}");
    assert!(err.contains("inner"), "{err}");
    let out = run("throw 'just a string'").await;
    assert_eq!(text(&out.stderr), "Uncaught just a string\n");
    let out = run("syntax error here").await;
    assert!(
        text(&out.stderr).starts_with("Uncaught SyntaxError"),
        "{out:?}"
    );
}

#[tokio::test]
async fn fs_functions_cover_the_documented_api() {
    let out = run(r#"
        fs.mkdir('a/b');
        fs.writeFile('a/b/f.txt', 'héllo');
        fs.symlink('b/f.txt', 'a/link');
        const st = fs.stat('a/link'), lst = fs.lstat('a/link');
        const out = [
            fs.readFile('/workspace/a/link'),
            fs.readdir('a').join(','),
            fs.readdir().join(','),
            st.type, st.size, lst.type, typeof st.mtimeMs,
            fs.readlink('a/link'),
            fs.exists('a/b/f.txt'), fs.exists('nope'),
        ];
        fs.remove('a', {recursive: true});
        out.push(fs.exists('a'));
        try { fs.readFile('missing'); } catch (e) { out.push(e.message); }
        try { fs.remove('/workspace'); } catch (e) { out.push(e.message); }
        out.join('|')
    "#)
    .await;
    assert_eq!(
        text(&out.stdout),
        "héllo|b,link|a|file|6|symlink|number|b/f.txt|true|false|false|\
         /workspace/missing: no such file or directory|\
         /workspace: cannot remove the root of a mount\n",
        "{out:?}"
    );
}

/// Records requests and answers with a fixed JSON body.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<FetchRequest>>,
}

impl EgressHook for Recorder {
    fn fetch(&self, request: FetchRequest) -> Result<FetchResponse, FetchError> {
        let deny = request.url.contains("blocked");
        self.seen.lock().unwrap().push(request);
        if deny {
            return Err(FetchError {
                message: "egress denied: blocked by test policy".into(),
            });
        }
        Ok(FetchResponse {
            status: 201,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Bytes::from_static(br#"{"ok":true}"#),
        })
    }
}

#[tokio::test]
async fn fetch_goes_through_the_egress_hook() {
    let root = tempfile::tempdir().unwrap();
    let hook = Arc::new(Recorder::default());
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_egress(hook.clone());
    assert!(backend.capabilities().network);
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let out = sb
        .execute(ExecuteRequest::new(
            r#"async () => {
                const r = await fetch('https://api.example.test/v1', {
                    method: 'post', headers: {'X-One': '1'}, body: 'payload' });
                const j = await r.json();
                let denied;
                try { await fetch('https://blocked.test/'); } catch (e) { denied = e.name + ': ' + e.message; }
                return [r.status, r.ok, r.headers['content-type'], j.ok, denied].join('|');
            }"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "201|true|application/json|true|TypeError: egress denied: blocked by test policy\n",
        "{out:?}"
    );
    let seen = hook.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].url, "https://api.example.test/v1");
    assert_eq!(
        seen[0].headers,
        vec![("X-One".to_string(), "1".to_string())]
    );
    assert_eq!(seen[0].body.as_deref(), Some(&b"payload"[..]));
    assert_eq!(&seen[0].sandbox, sb.id());
    assert!(seen[1].body.is_none());
}

#[tokio::test]
async fn the_default_backend_reports_no_network() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    assert!(!backend.capabilities().network);
}

#[tokio::test]
async fn spec_memory_caps_the_script_heap() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let mut spec = SandboxSpec::new();
    spec.memory_bytes = Some(8 * 1024 * 1024);
    let sb = backend.create(&spec).await.unwrap();
    let err = sb
        .execute(ExecuteRequest::new(
            "const a = []; while (true) a.push('x'.repeat(65536) + a.length);",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::ResourceLimit);
    assert!(err.to_string().contains("8388608"), "{err}");
    // The cap survives resume (it is persisted with the sandbox).
    sb.stop().await.unwrap();
    let again = backend.resume(sb.id()).await.unwrap();
    let err = again
        .execute(ExecuteRequest::new(
            "const a = []; while (true) a.push('x'.repeat(65536) + a.length);",
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("8388608"), "{err}");
}

#[tokio::test]
async fn list_reports_session_and_labels_and_resume_keeps_mounts() {
    let root = tempfile::tempdir().unwrap();
    let mem = tempfile::tempdir().unwrap();
    std::fs::write(mem.path().join("n.md"), "note").unwrap();
    let backend = IsolateBackend::new(root.path().join("s")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.session_id = Some("sesn_123".into());
    spec.labels = BTreeMap::from([("team".to_string(), "a b".to_string())]);
    spec.mounts = vec![Mount::read_only("/memory/notes", mem.path())];
    let sb = backend.create(&spec).await.unwrap();
    let info = backend.list().await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].session_id.as_deref(), Some("sesn_123"));
    assert_eq!(info[0].labels.get("team").map(String::as_str), Some("a b"));
    assert!(info[0].created_at.is_some());
    sb.stop().await.unwrap();
    // A second backend over the same root (a restarted process) resumes it.
    let backend2 = IsolateBackend::new(root.path().join("s")).unwrap();
    let again = backend2.resume(sb.id()).await.unwrap();
    assert_eq!(
        &again.read_file("/memory/notes/n.md", None).await.unwrap()[..],
        b"note"
    );
    let err = again
        .write_file("/memory/notes/n.md", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::PermissionDenied);
    // Destroy from one backend stops live handles of that backend.
    backend2.destroy(sb.id()).await.unwrap();
    let err = again.stat("/workspace").await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::Stopped);
}
