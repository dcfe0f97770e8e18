//! The isolate backend's `execute` worker processes: how they are confined, that a flood of
//! scripts and a crowd of runaways neither wedge the backend nor starve tokio's blocking pool,
//! that each script gets a fresh runtime, the explicit worker program, and that nothing a worker
//! sends is trusted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cma_sandbox::isolate::{IsolateBackend, MAX_SCRIPT_BYTES, WorkerConfig};
use cma_sandbox::{ExecuteRequest, SandboxBackend, SandboxErrorKind, SandboxSpec};

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Child processes of this process.
fn children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            stat[close + 2..].split_whitespace().nth(1) == Some(&me.to_string())
        })
        .collect()
}

/// The soft address-space limit of process `pid`, if it has one.
fn address_space_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether process `pid` is a confined worker; `Err` says what is not.
fn confined(pid: u32) -> Result<(), String> {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|e| format!("{what}: {e}"))
    };
    let status = read("status")?;
    let limits = read("limits")?;
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("fd: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let mut env: Vec<&[u8]> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| v.split(|b| *b == b'=').next().unwrap_or_default())
        .collect();
    env.sort();
    let checks = [
        ("seccomp", field("Seccomp:") == "2"),
        ("no_new_privs", field("NoNewPrivs:") == "1"),
        (
            "effective capabilities",
            field("CapEff:") == "0000000000000000",
        ),
        (
            "permitted capabilities",
            field("CapPrm:") == "0000000000000000",
        ),
        ("core", limit("Max core file size").contains("0 0 bytes")),
        ("open files", limit("Max open files").contains("3 3 files")),
        (
            "processes",
            limit("Max processes").contains("0 0 processes"),
        ),
        // Inherited descriptors are closed.
        ("descriptors", fds == ["0", "1", "2"]),
        // Nothing of the host's environment: the worker marker and the time zone.
        (
            "environment",
            env == [&b"CMA_SANDBOX_ISOLATE_WORKER"[..], b"TZ"],
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        None => Ok(()),
        Some((what, _)) => Err(format!("{pid}: {what}: {fds:?} {}", limit("Max"))),
    }
}

fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_confined_and_hold_nothing_of_the_host() {
    let root = tempfile::tempdir().unwrap();
    // A descriptor without close-on-exec, as a careless library in the host could leave: the
    // workers started from now on inherit it, and must close it.
    let leaked = std::fs::File::open("/proc/self/status").unwrap();
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let out = sb.execute(ExecuteRequest::new("6 * 7")).await.unwrap();
    assert_eq!(text(&out.stdout), "42\n");
    // Local time works (the C library read its zone data before the filter) and is UTC.
    let out = sb
        .execute(ExecuteRequest::new(
            "[new Date(0).getTimezoneOffset(), new Date(0).getHours(), typeof new Date().toString()].join(' ')",
        ))
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "0 0 string\n");
    assert!(
        eventually(|| {
            let workers = children();
            !workers.is_empty() && workers.into_iter().all(|p| confined(p).is_ok())
        }),
        "{:?}",
        children().into_iter().map(confined).collect::<Vec<_>>()
    );
    // The worker that ran the scripts has an address-space limit: above what a default script
    // needs (so it counts the worker's own size), and not absurdly larger.
    assert!(eventually(|| children()
        .into_iter()
        .filter_map(address_space_limit)
        .any(|soft| soft > 256 << 20 && soft < 2 << 30)));
    drop(leaked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_scripts_larger_than_the_pool_all_complete() {
    let root = tempfile::tempdir().unwrap();
    let mut config = WorkerConfig::new();
    config.idle_workers = 1;
    config.max_busy = 3;
    config.max_warm = 2;
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_workers(config);
    let mut sandboxes = Vec::new();
    for _ in 0..4 {
        sandboxes.push(backend.create(&SandboxSpec::new()).await.unwrap());
    }
    let calls = (0..24).map(|i| {
        let sb = sandboxes[i % sandboxes.len()].clone();
        async move {
            let code = format!(
                "let s = 0; for (let k = 0; k < 20000; k++) s += k; fs.writeFile('f{i}', String(s + {i})); fs.readFile('f{i}')"
            );
            let out = sb.execute(ExecuteRequest::new(code)).await.unwrap();
            (i, text(&out.stdout))
        }
    });
    for (i, out) in futures::future::join_all(calls).await {
        assert_eq!(out, format!("{}\n", 199_990_000 + i), "call {i}");
    }
}

#[test]
fn runaway_scripts_do_not_starve_the_blocking_pool_or_other_calls() {
    // Few blocking threads: were scripts run on them, 20 runaways would take them all.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let backend = IsolateBackend::new(root.path()).unwrap();
        let victim = backend.create(&SandboxSpec::new()).await.unwrap();
        let other = backend.create(&SandboxSpec::new()).await.unwrap();
        let runaways: Vec<_> = (0..20)
            .map(|i| {
                let sb = victim.clone();
                tokio::spawn(async move {
                    let code = if i % 2 == 0 {
                        "Array.prototype.indexOf.call({length: 2**53 - 1}, 1)"
                    } else {
                        "for (;;) { try { while (true) {} } catch (e) {} }"
                    };
                    let mut req = ExecuteRequest::new(code);
                    req.timeout = Duration::from_secs(120);
                    sb.execute(req).await
                })
            })
            .collect();
        // Other calls, including those that use the blocking pool, keep working meanwhile.
        let big = Bytes::from(vec![b'y'; 1 << 20]);
        other.write_file("big.bin", big.clone()).await.unwrap();
        assert_eq!(other.read_file("big.bin", None).await.unwrap(), big);
        let names: Vec<String> = other
            .read_dir("/workspace")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["big.bin"]);
        let out = other
            .execute(ExecuteRequest::new(
                "fs.writeFile('n.txt', 'x'.repeat(100000)); fs.readFile('n.txt').length",
            ))
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "100000\n");
        assert!(runaways.iter().all(|h| !h.is_finished()));
        // Cancelling the runaways kills their workers.
        for h in &runaways {
            h.abort();
        }
        for h in runaways {
            assert!(h.await.unwrap_err().is_cancelled());
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_script_gets_a_fresh_runtime_and_bounded_output() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    for _ in 0..3 {
        let out = sb
            .execute(ExecuteRequest::new(
                "const seen = typeof globalThis.leak; globalThis.leak = 1; Array.prototype.evil = 1; seen + ' ' + [].evil",
            ))
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "undefined 1\n");
    }
    let mut req = ExecuteRequest::new(
        "for (let i = 0; i < 10000; i++) { console.log('o'.repeat(100)); console.error('e'.repeat(100)); }",
    );
    req.max_output_bytes = 1000;
    let out = sb.execute(req).await.unwrap();
    assert!(out.truncated);
    assert!(
        out.stdout.len() <= 1000 && out.stderr.len() <= 1000,
        "{out:?}"
    );
    // Scripts over the size limit are refused before reaching a worker.
    let err = sb
        .execute(ExecuteRequest::new(" ".repeat(MAX_SCRIPT_BYTES + 1)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::InvalidInput);
    // Large files cross the worker boundary both ways (and the heap limit still applies).
    let out = sb
        .execute(ExecuteRequest::new(
            "fs.writeFile('big.txt', 'z'.repeat(3 << 20)); fs.readFile('big.txt').length",
        ))
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), format!("{}\n", 3 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_worker_program_runs_scripts() {
    let root = tempfile::tempdir().unwrap();
    let mut config = WorkerConfig::new();
    config.program = Some(env!("CARGO_BIN_EXE_cma-sandbox-worker").into());
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_workers(config);
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    sb.write_file("in.txt", Bytes::from_static(b"data"))
        .await
        .unwrap();
    let out = sb
        .execute(ExecuteRequest::new("fs.readFile('in.txt').toUpperCase()"))
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "DATA\n");
    let mut req = ExecuteRequest::new("Array.prototype.indexOf.call({length: 2**53 - 1}, 1)");
    req.timeout = Duration::from_millis(300);
    let err = sb.execute(req).await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::Timeout);
}

async fn execute_with_program(program: &Path) -> cma_sandbox::SandboxError {
    let root = tempfile::tempdir().unwrap();
    let mut config = WorkerConfig::new();
    config.program = Some(program.to_path_buf());
    config.idle_workers = 0;
    config.start_timeout = Duration::from_secs(2);
    let backend = IsolateBackend::new(root.path().join("r"))
        .unwrap()
        .with_workers(config);
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let mut req = ExecuteRequest::new("1");
    req.timeout = Duration::from_secs(5);
    sb.execute(req).await.unwrap_err()
}

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    // The worker's socket is its standard input; what it says goes there too.
    std::fs::write(&path, format!("#!/bin/sh\nexec >&0\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The `Hello` frame of protocol 1: length 14, tag 0, version 1, vm size 0, confined.
const HELLO: &str = r"\016\000\000\000\000\001\000\000\000\000\000\000\000\000\000\000\000\000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_worker_sends_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    // Not a worker at all: never says hello.
    let err = execute_with_program(Path::new("/bin/true")).await;
    assert_eq!(err.kind(), SandboxErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("did not report ready"), "{err}");
    let err = execute_with_program(&dir.path().join("missing")).await;
    assert_eq!(err.kind(), SandboxErrorKind::Backend, "{err}");
    // A hello announcing a 4 GiB frame is refused before anything is read.
    let huge = script(
        dir.path(),
        "huge",
        r"printf '\377\377\377\377'; exec /bin/sleep 60",
    );
    let err = execute_with_program(&huge).await;
    assert!(err.to_string().contains("did not report ready"), "{err}");
    // A valid hello, then a 4 GiB frame instead of an answer: a protocol violation.
    let liar = script(
        dir.path(),
        "liar",
        &format!(r"printf '{HELLO}'; printf '\377\377\377\377'; exec /bin/sleep 60"),
    );
    let err = execute_with_program(&liar).await;
    assert_eq!(err.kind(), SandboxErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("protocol"), "{err}");
    // A valid hello, then a frame of garbage.
    let garbage = script(
        dir.path(),
        "garbage",
        &format!(r"printf '{HELLO}'; printf '\003\000\000\000\377\377\377'; exec /bin/sleep 60"),
    );
    let err = execute_with_program(&garbage).await;
    assert!(err.to_string().contains("protocol"), "{err}");
    // A valid hello, then silence: the deadline still ends it.
    let mute = script(
        dir.path(),
        "mute",
        &format!(r"printf '{HELLO}'; exec /bin/sleep 60"),
    );
    let err = execute_with_program(&mute).await;
    assert_eq!(err.kind(), SandboxErrorKind::Timeout, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_script_after_a_big_one_is_not_starved_of_memory() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    for _ in 0..2 {
        // Grows the worker's heap (the allocator may keep it after the runtime is gone)...
        let mut big = ExecuteRequest::new(
            "const keep = []; for (let i = 0; i < 96; i++) keep.push(new Uint8Array(1 << 20).fill(i)); keep.length",
        );
        big.memory_limit = 256 << 20;
        let out = sb.execute(big).await.unwrap();
        assert_eq!(text(&out.stdout), "96\n");
        // ...and the next script, with a far smaller limit, still gets its whole heap.
        let mut small = ExecuteRequest::new(
            "const keep = []; for (let i = 0; i < 4; i++) keep.push(new Uint8Array(1 << 20)); keep.length",
        );
        small.memory_limit = 16 << 20;
        let out = sb.execute(small).await.unwrap();
        assert_eq!(text(&out.stdout), "4\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_arguments_convert_like_string() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let out = sb
        .execute(ExecuteRequest::new(
            r#"
            fs.writeFile({ toString() { return 'n.txt'; } }, 42);
            fs.mkdir('d/e');
            const out = [fs.readFile('n.txt'), fs.readdir(undefined).join(','), fs.readdir().join(',')];
            // Only an object with a truthy `recursive` removes recursively.
            for (const opts of [true, 'yes', { recursive: 0 }]) {
                try { fs.remove('d', opts); out.push('removed'); } catch (e) { out.push('kept'); }
            }
            fs.remove('d', { recursive: 'yes' });
            out.push(fs.exists('d'), Object.isFrozen(fs), typeof fs.readFile);
            out.join('|')
            "#,
        ))
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "42|d,n.txt|d,n.txt|kept|kept|kept|false|true|function\n",
        "{out:?}"
    );
}
