//! `glob` and `grep` print entries in the official tools' order, also for files and directories
//! written in the same instant. The official tools (the `anthropic` 2.10.0 SDK's
//! `agent_toolset.py`, run by the Python in `CMA_SDK_PYTHON`, default the venv `.ci/run`
//! makes) sort `glob` matches by `st_mtime` (a float) newest first and keep the walk's order for
//! equal ones; both tools walk each directory in `os.scandir` order, which is the file system's
//! (hash order on ext4), not name order. The same tree (many entries with one identical mtime,
//! others less than a microsecond apart, others seconds apart) is made once in a Docker sandbox
//! and once in an isolate sandbox; each backend's output must equal the SDK's on the same
//! files: inside the container for Docker (the SDK's package directory mounted read-only), on
//! the host directory for isolate. Needs dockerd, the test image and the SDK venv; fails loudly
//! without them.

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cma_sandbox::docker::DockerBackend;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{ExecRequest, Mount, Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::testing::call_tool_in;
use cma_tools::toolset::{GlobTool, GrepTool};
use cma_tools::{Tool, ToolContext};
use serde_json::{Value, json};

/// Makes the tree in the current directory. `tie/`: 8 directories of 6 files and 16 files
/// beside them, every entry (directories too) with the same mtime. `near/`: 40 files whose
/// mtimes are 23 ns apart, so several share one `st_mtime` double (~0.24 µs apart at this
/// date). `far/`: files one second apart.
const TREE: &str = r#"set -e
for d in 0 1 2 3 4 5 6 7; do
  mkdir -p "tie/d$d"
  for f in 0 1 2 3 4 5; do printf 'needle %s %s\nother\n' "$d" "$f" > "tie/d$d/f$f.txt"; done
done
for f in a b c d e f g h i j k l m n o p; do printf 'x needle %s\n' "$f" > "tie/$f.md"; done
find tie -exec touch -h -d @1700000000.5 {} +
mkdir near far
i=0
while [ "$i" -lt 40 ]; do
  printf 'needle near %s\n' "$i" > "near/n$i.txt"
  touch -d "@1700000001.$(printf %09d $((i * 23)))" "near/n$i.txt"
  i=$((i + 1))
done
for i in 5 3 9 1 7; do
  printf 'needle far %s\n' "$i" > "far/f$i.txt"
  touch -d "@170000001$i" "far/f$i.txt"
done
touch -d @1700000003 near far tie
"#;

/// The calls compared, as (tool, input).
fn all_calls() -> Vec<(&'static str, Value)> {
    vec![
        ("glob", json!({"pattern": "**/*"})),
        ("glob", json!({"pattern": "*"})),
        ("glob", json!({"pattern": "tie/*"})),
        ("glob", json!({"pattern": "**/*.txt"})),
        ("glob", json!({"pattern": "tie/d*/f*"})),
        ("glob", json!({"pattern": "near/*"})),
        ("glob", json!({"pattern": "far/*"})),
        ("grep", json!({"pattern": "needle"})),
        ("grep", json!({"pattern": "need.e [0-9]"})),
        ("grep", json!({"pattern": "needle", "path": "tie"})),
    ]
}

/// The calls for the POSIX-tools fallback, where every file operation is a process start (the
/// calls above take half a minute there): a few entries with equal mtimes each.
fn few_calls() -> Vec<(&'static str, Value)> {
    vec![
        ("glob", json!({"pattern": "tie/d*"})),
        ("grep", json!({"pattern": "needle", "path": "tie/d3"})),
    ]
}

/// Runs the SDK's `glob`/`grep` on `argv[1]` (the workdir) for the calls in `argv[2]`, printing
/// their texts as a JSON list (`ERROR: …` for a raised error).
const DRIVER: &str = r#"
import asyncio, json, sys
from anthropic.lib.tools.agent_toolset import AgentToolContext, beta_glob_tool, beta_grep_tool
ctx = AgentToolContext(workdir=sys.argv[1])
tools = {"glob": beta_glob_tool(ctx), "grep": beta_grep_tool(ctx)}
async def main():
    out = []
    for name, inp in json.loads(sys.argv[2]):
        try:
            out.append(str(await tools[name].call(inp)))
        except Exception as e:
            out.append("ERROR: " + str(e))
    print(json.dumps(out))
asyncio.run(main())
"#;

/// The Python with `anthropic==2.10.0`.
fn sdk_python() -> PathBuf {
    let python = std::env::var_os("CMA_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/cma-venv/bin/python")
        });
    assert!(
        python.exists(),
        "this test needs a Python with anthropic==2.10.0 at {} (set CMA_SDK_PYTHON, or run \
         `bash .ci/run`, which creates the venv)",
        python.display()
    );
    python
}

/// The SDK's `site-packages` directory.
fn site_packages(python: &Path) -> PathBuf {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import anthropic, os; print(os.path.dirname(os.path.dirname(anthropic.__file__)))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} cannot import anthropic: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A directory with the shared libraries the SDK's compiled modules need besides glibc (the
/// test image has only its own binaries' libraries, e.g. no `libgcc_s`), from `ldd`.
fn native_libs(site: &Path, into: &Path) {
    let mut stack = vec![site.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "so") {
                let out = std::process::Command::new("ldd").arg(&p).output().unwrap();
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let Some((name, rest)) = line.trim().split_once(" => ") else {
                        continue;
                    };
                    let Some(lib) = rest.split_whitespace().next() else {
                        continue;
                    };
                    if name.starts_with("libc.so") || !lib.starts_with('/') {
                        continue;
                    }
                    std::fs::copy(lib, into.join(name)).unwrap();
                }
            }
        }
    }
}

async fn ours(ctx: &ToolContext, calls: &[(&str, Value)]) -> Vec<String> {
    let mut out = Vec::new();
    for (tool, input) in calls.iter().cloned() {
        let t: &dyn Tool = if tool == "glob" { &GlobTool } else { &GrepTool };
        let r = call_tool_in(t, ctx, input.clone()).await;
        let text = r.text().unwrap_or_default().to_owned();
        assert!(!r.is_error, "{tool} {input}: {text}");
        out.push(text);
    }
    out
}

fn calls_json(calls: &[(&str, Value)]) -> String {
    serde_json::to_string(&calls.iter().map(|(t, i)| json!([t, i])).collect::<Vec<_>>()).unwrap()
}

fn compare(who: &str, calls: &[(&str, Value)], got: &[String], sdk: &[String]) {
    assert_eq!(got.len(), sdk.len());
    for (((tool, input), g), s) in calls.iter().zip(got).zip(sdk) {
        assert!(!s.starts_with("ERROR: "), "SDK {tool} {input}: {s}");
        assert!(
            s.lines().count() >= 3,
            "SDK {tool} {input}: too few lines to tell: {s}"
        );
        assert_eq!(g, s, "{who}: {tool} {input} differs from the SDK's");
    }
}

async fn docker_matches_the_sdk_in_its_container(
    backend: &DockerBackend,
    site: &Path,
    calls: &[(&str, Value)],
) {
    let libs = tempfile::tempdir().unwrap();
    native_libs(site, libs.path());
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::read_only("/sdk", site));
    spec.mounts.push(Mount::read_only("/sdk-lib", libs.path()));
    let sb = backend.create(&spec).await.unwrap();
    let made = sb.exec(ExecRequest::shell(TREE)).await.unwrap();
    assert!(made.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let mut req = ExecRequest::argv([
        "/usr/bin/python3",
        "-c",
        DRIVER,
        sb.workdir(),
        &calls_json(calls),
    ]);
    // No `rg` on the PATH: the SDK's grep uses its built-in walker, as ours always does.
    req.env.insert("PATH".into(), "/nonexistent".into());
    req.env.insert("PYTHONPATH".into(), "/sdk".into());
    req.env.insert("LD_LIBRARY_PATH".into(), "/sdk-lib".into());
    let out = sb.exec(req).await.unwrap();
    assert!(
        out.success(),
        "the SDK in the container failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();

    let ctx = ToolContext::new(sb.clone());
    let got = ours(&ctx, calls).await;
    compare("docker", calls, &got, &sdk);
    backend.destroy(sb.id()).await.unwrap();
}

/// Entries written in the same instant come out in the SDK's order on Docker, with the file
/// helper and with the POSIX-tools fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_glob_and_grep_order_is_the_sdks() {
    let site = site_packages(&sdk_python());
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    docker_matches_the_sdk_in_its_container(&backend, &site, &all_calls()).await;
    let mut cfg = docker_support::config();
    cfg.python_helper = false;
    let (backend, _cleanup2) = docker_support::connect(cfg).await;
    docker_matches_the_sdk_in_its_container(&backend, &site, &few_calls()).await;
}

/// The same on the isolate backend, against the SDK run on the sandbox's host directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_glob_and_grep_order_is_the_sdks() {
    let python = sdk_python();
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb: Arc<dyn Sandbox> = backend.create(&SandboxSpec::new()).await.unwrap();
    let host = root
        .path()
        .join(sb.id().as_str())
        .join("workspace")
        .canonicalize()
        .unwrap();
    let made = std::process::Command::new("sh")
        .args(["-c", TREE])
        .current_dir(&host)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let out = std::process::Command::new(&python)
        .args(["-c", DRIVER])
        .arg(&host)
        .arg(calls_json(&all_calls()))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_prefix = host.display().to_string();
    let sdk: Vec<String> = serde_json::from_slice::<Vec<String>>(&out.stdout)
        .unwrap()
        .into_iter()
        .map(|s| s.replace(&host_prefix, sb.workdir()))
        .collect();

    let ctx = ToolContext::new(sb.clone());
    let got = ours(&ctx, &all_calls()).await;
    compare("isolate", &all_calls(), &got, &sdk);
    backend.destroy(sb.id()).await.unwrap();
}

/// Where no two entries share an mtime the order depends on nothing but the times: both
/// backends print the same, whatever their file systems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_isolate_agree_where_the_file_system_order_does_not_matter() {
    let root = tempfile::tempdir().unwrap();
    let isolate = IsolateBackend::new(root.path()).unwrap();
    let a = isolate.create(&SandboxSpec::new()).await.unwrap();
    let host = root.path().join(a.id().as_str()).join("workspace");
    let made = std::process::Command::new("sh")
        .args(["-c", TREE])
        .current_dir(&host)
        .output()
        .unwrap();
    assert!(made.status.success());
    let (docker, _cleanup) = docker_support::connect(docker_support::config()).await;
    let b = docker.create(&SandboxSpec::new()).await.unwrap();
    assert!(b.exec(ExecRequest::shell(TREE)).await.unwrap().success());
    let (ca, cb) = (ToolContext::new(a.clone()), ToolContext::new(b.clone()));
    let far = json!({"pattern": "far/*"});
    let ga = call_tool_in(&GlobTool, &ca, far.clone()).await;
    let gb = call_tool_in(&GlobTool, &cb, far).await;
    assert_eq!(ga.text(), gb.text());
    assert_eq!(
        ga.text().unwrap(),
        ["f9", "f7", "f5", "f3", "f1"]
            .map(|f| format!("/workspace/far/{f}.txt"))
            .join("\n")
    );
    isolate.destroy(a.id()).await.unwrap();
    docker.destroy(b.id()).await.unwrap();
}
