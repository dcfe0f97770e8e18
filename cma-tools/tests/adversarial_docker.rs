//! Hostile inputs for every tool on the Docker backend (the file tools' table shared with
//! `adversarial_isolate.rs`, plus the persistent `bash`: output floods, endless output, sleeps
//! past their timeout, a fork bomb against the pids limit, `exit`, background jobs) and hostile
//! archives for the backend: each case ends with a result or a typed error within its bound,
//! under the suite's memory limit, and leaves no thread, child process, container process or
//! container behind (each case is a session of its own, closed at its end). Needs dockerd and
//! the test image (`.ci/setup.d/20-docker.sh`).

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

mod adversarial_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::docker::DockerBackend;
use cma_sandbox::{
    ByteStream, ExecRequest, Sandbox, SandboxBackend, SandboxError, SandboxErrorKind, SandboxSpec,
};
use cma_tools::toolset::registry_for;
use cma_tools::{ToolContext, ToolRegistry};
use serde_json::{Value, json};

use adversarial_support::{self as adv, Expect, check, file_tool_cases};

/// The fixtures of the shared table, made inside the container (by Python: a shell's `cd`
/// costs the whole logical path at every level, so a 3000-level chain takes it minutes).
const FIXTURES: &str = r#"
import os
os.chdir("/workspace")
os.mkdir("chain")
os.chdir("chain")
for _ in range(3000):
    os.mkdir("a")
    os.chdir("a")
    with open("f", "w") as f:
        f.write("needle\n")
os.chdir("/workspace")
open("big.txt", "wb").write(b"a" * 262144)
open("line.txt", "wb").write(b"x" * 1048576)
open("nl.txt", "wb").write(b"\n" * 262144)
open("img.png", "wb").write(b"\x89" * 1048576)
os.mkdir("wide")
for i in range(3000):
    open("wide/f%d.txt" % i, "w").write("hay\nneedle\n")
os.mkfifo("fifo")
os.symlink("/dev/zero", "devzero")
os.symlink("loop2", "loop1")
os.symlink("loop1", "loop2")
os.symlink("fifo", "fifolink")
"#;

/// The file tools' table plus the persistent shell's cases.
fn tool_cases() -> Vec<(String, &'static str, Value, Expect)> {
    let mut v = file_tool_cases();
    // Six `**` walk the 2000 nameable levels of the chain once each (linear: see
    // `deep_trees.rs`), but here every level is one round trip to the file helper (~6 ms in a
    // debug build), past the 30 s a call has: the point on this backend is that the call ends
    // at its deadline with an error and leaves nothing running.
    for case in v.iter_mut().filter(|c| c.0.contains("combinatorial")) {
        case.3 = Expect::Any;
    }
    v.extend([
        (
            "bash 200 MB of output".into(),
            "bash",
            json!({"command": "yes | head -c 200000000; echo done"}),
            Expect::Ok,
        ),
        (
            "bash endless output".into(),
            "bash",
            json!({"command": "yes", "timeout_ms": 2000}),
            Expect::Err("timed out"),
        ),
        (
            "bash sleep past its timeout".into(),
            "bash",
            json!({"command": "sleep 1000", "timeout_ms": 1000}),
            Expect::Err("timed out"),
        ),
        (
            "bash fork bomb".into(),
            "bash",
            json!({"command": "f() { f | f & }; f; sleep 5", "timeout_ms": 4000}),
            Expect::Any,
        ),
        (
            "bash exit".into(),
            "bash",
            json!({"command": "exit 3"}),
            Expect::Any,
        ),
        (
            "bash background job".into(),
            "bash",
            json!({"command": "sleep 10000 & echo started"}),
            Expect::Ok,
        ),
        (
            "bash binary and escapes".into(),
            "bash",
            json!({"command": "head -c 300000 /dev/urandom; printf '\\033[31m\\033[2J'"}),
            Expect::Any,
        ),
        (
            "bash 10 MB command".into(),
            "bash",
            json!({"command": format!("echo {} | wc -c", "z".repeat(10 << 20))}),
            Expect::Any,
        ),
        (
            "bash i64::MIN timeout".into(),
            "bash",
            json!({"command": "echo hi", "timeout_ms": i64::MIN}),
            Expect::Err("timed out"),
        ),
        (
            "bash i64::MAX timeout".into(),
            "bash",
            json!({"command": "echo hi", "timeout_ms": i64::MAX}),
            Expect::Ok,
        ),
        (
            "bash restart".into(),
            "bash",
            json!({"restart": true}),
            Expect::Ok,
        ),
        (
            "bash reads stdin".into(),
            "bash",
            json!({"command": "cat; read x; echo $?"}),
            Expect::Ok,
        ),
    ]);
    v
}

fn stream(data: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::iter(
        data.chunks(64 * 1024)
            .map(|c| Ok::<_, SandboxError>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    ))
}

/// A tar whose GNU long-name entry claims a terabyte.
fn lying_long_name() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(1 << 40);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend(vec![b'a'; 1 << 20]);
    raw
}

/// A tar holding a setuid file (imported without the bit).
fn setuid_file() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o4755);
    b.append_data(&mut h, "suid", &b"#!"[..]).unwrap();
    b.into_inner().unwrap()
}

/// Processes in the container (the `ps` the Engine runs for `docker top`).
async fn container_processes(backend: &DockerBackend, sb: &Arc<dyn Sandbox>) -> Vec<String> {
    let top = backend
        .client()
        .top_processes(
            sb.id().as_str(),
            None::<bollard::query_parameters::TopOptions>,
        )
        .await
        .unwrap();
    let cmd = top
        .titles
        .unwrap_or_default()
        .iter()
        .position(|t| t == "CMD")
        .unwrap_or(0);
    top.processes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.get(cmd).cloned())
        .collect()
}

#[test]
fn adversarial_docker() {
    if !adv::in_limited_child("adversarial_docker") {
        return;
    }
    let rt = adv::runtime();
    let (backend, _cleanup) = rt.block_on(docker_support::connect(docker_support::config()));
    let sb: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let setup = rt
        .block_on(sb.exec(ExecRequest::argv(["python3", "-c", FIXTURES])))
        .unwrap();
    assert!(setup.success(), "{setup:?}");
    // The file helper runs from here on: part of the baseline.
    rt.block_on(sb.stat("/workspace")).unwrap();
    let baseline = rt.block_on(container_processes(&backend, &sb));
    let registry: Arc<ToolRegistry> = Arc::new(registry_for(&sb.capabilities()));
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let bound = Duration::from_secs(90);
    for (name, tool, input, expect) in tool_cases() {
        let reg = registry.clone();
        // A session per case, closed at its end (its shell killed).
        let mut ctx = ToolContext::new(sb.clone());
        ctx.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(30));
        let n = name.clone();
        let r = adv::run_case(&rt, &name, bound, move || async move {
            let r = reg
                .dispatch(&ctx, tool, input)
                .await
                .expect("a registered tool");
            ctx.close().await;
            check(&n, &r, expect)
        });
        match r {
            Ok(o) => report.push(o),
            Err(e) => failures.push(e),
        }
        // Nothing of the case goes on running in the container.
        let left = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = container_processes(&backend, &sb).await;
                if now.len() <= baseline.len() || tokio::time::Instant::now() > deadline {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        if left.len() > baseline.len() {
            failures.push(format!(
                "{name}: processes left in the container: {left:?} (before: {baseline:?})"
            ));
        }
    }
    let archives: Vec<(&str, Vec<u8>, Option<SandboxErrorKind>)> = vec![
        (
            "import: long name claiming 1 TB",
            lying_long_name(),
            Some(SandboxErrorKind::InvalidArchive),
        ),
        (
            "import: garbage",
            b"not a tar at all".repeat(100),
            Some(SandboxErrorKind::InvalidArchive),
        ),
        ("import: a setuid file", setuid_file(), None),
    ];
    for (name, data, want) in archives {
        let s = sb.clone();
        let r = adv::run_case(&rt, name, bound, move || async move {
            let r = s.import_workspace(stream(data)).await;
            match (&r, want) {
                (Err(e), Some(k)) => assert_eq!(e.kind(), k, "{e}"),
                (Ok(()), None) => {}
                _ => panic!("unexpected: {r:?}"),
            }
            format!("{r:?}")
        });
        match r {
            Ok(o) => report.push(o),
            Err(e) => failures.push(e),
        }
    }
    let mode = rt
        .block_on(sb.exec(ExecRequest::shell("stat -c %a /workspace/suid")))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "755");
    let s = sb.clone();
    match adv::run_case(
        &rt,
        "remove: the 3000-level chain",
        bound,
        move || async move {
            s.remove("chain", true).await.unwrap();
            assert_eq!(
                s.stat("chain").await.unwrap_err().kind(),
                SandboxErrorKind::NotFound
            );
            "removed".into()
        },
    ) {
        Ok(o) => report.push(o),
        Err(e) => failures.push(e),
    }
    let containers = rt.block_on(backend.list()).unwrap().len();
    assert_eq!(containers, 1, "one sandbox, no container left behind");
    rt.block_on(backend.destroy(sb.id())).unwrap();
    assert!(rt.block_on(backend.list()).unwrap().is_empty());
    for o in &report {
        println!(
            "{:>8.1} ms  {:<45} {}",
            o.took.as_secs_f64() * 1e3,
            o.name,
            o.summary
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
