//! Conformance with the real SDK: the official Python `anthropic` 2.10.0 `EnvironmentWorker`,
//! unmodified, runs against the emulator and must complete scripted sessions.
//!
//! How it runs, and why:
//! * Three tests start the emulator in this process (`cma_core::emulator`) so they can inspect
//!   its state afterwards (work items, session status, consumed faults); one runs the real `cma`
//!   binary (`cma emulator --record OUT.jsonl --exit-when-done`) and reads the record file. The
//!   binary is built once per test process with `cargo build --workspace --all-features --bin
//!   cma` (or taken from `CMA_BIN`): a test in this package cannot use `CARGO_BIN_EXE_cma`, which
//!   only exists for the binary's own package, and building it here keeps it fresh however the
//!   tests start.
//! * The worker is `tests/sdk/worker.py` run by the Python in `CMA_SDK_PYTHON` (default
//!   `/root/.cache/cma-venv/bin/python`, which `.ci/run` prepares). A missing interpreter or SDK
//!   fails the test: this check must never pass silently.
//! * The scenarios are `tests/sdk/*.json`; [`expected_results`] holds what the SDK's tools answer
//!   to each scripted call (docs/protocol.md §5.5, §6), and every test checks each call got that
//!   answer (or none, for denied calls). They also check how the work item ended: `stopped` by
//!   the worker's final `stop {"force": true}` (§3.4, §5.3), in the fault test only after a 412
//!   made the worker drop it, the lease ran out and the worker claimed it again.
//!
//! Everything listens on and talks to 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use cma_core::emulator::{
    Emulator, EmulatorConfig, Scenario, ScenarioEnvironment, ToolResultRecord,
};
use cma_core::protocol::{SessionStatus, WorkData, WorkState};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;

/// Upper bound for one SDK worker run (the scenarios take a few seconds).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);
/// The default location of the venv `.ci/run` creates.
const DEFAULT_SDK_PYTHON: &str = "/root/.cache/cma-venv/bin/python";

fn workspace_root() -> PathBuf {
    // Cargo runs tests in their package's directory; prefer it to the compile-time path (a
    // shared target dir may hold this test built from another checkout).
    let here = std::env::current_dir()
        .ok()
        .filter(|d| d.join("sdk").join("worker.py").is_file());
    here.as_deref()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python interpreter with `anthropic==2.10.0`; panics with instructions when it is missing.
fn sdk_python() -> PathBuf {
    let python = std::env::var_os("CMA_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SDK_PYTHON));
    assert!(
        python.exists(),
        "SDK conformance needs a Python with anthropic==2.10.0 at {} (set CMA_SDK_PYTHON, or run \
         `bash .ci/run`, which creates the venv)",
        python.display()
    );
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('anthropic'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && version == "2.10.0",
        "{} must have anthropic==2.10.0 installed, found {version:?} ({})",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    python
}

/// The `cma` binary: `CMA_BIN`, else built (once per process) with the cargo running the tests.
///
/// Built for the whole workspace with every feature, as `.ci/run`'s `cargo test --workspace
/// --all-features` builds it: there this is a no-op, and elsewhere it never replaces the shared
/// `target/debug/cma` with one that lacks a feature other tests spawn it for (the Docker
/// backend of `examples/tests/crash_docker.rs` failed every run after this built a default one).
fn cma_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CMA_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--workspace",
                "--all-features",
                "--bin",
                "cma",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build for the cma binary");
        assert!(
            out.status.success(),
            "cargo build --workspace --all-features --bin cma failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "cma")
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no executable for the cma binary")
    })
}

/// A scenario file of `tests/sdk/`.
fn scenario_path(name: &str) -> PathBuf {
    workspace_root().join("tests/sdk").join(name)
}

/// What one scripted call must get back from the SDK worker.
#[derive(Debug)]
enum Expect {
    /// One text block with this text and this `is_error`.
    Text(String, bool),
    /// Nothing: the call was denied (by policy or by the user) and must not run.
    Nothing,
}

/// The results the SDK's tools give (docs/protocol.md §5.4, §5.5, §6) for the calls of a scenario of
/// `tests/sdk/`, in call order, for a worker whose working directory is `workdir` (canonical).
fn expected_results(file: &str, workdir: &Path) -> Vec<(&'static str, Expect)> {
    let ok = |text: &str| Expect::Text(text.to_owned(), false);
    let err = |text: &str| Expect::Text(text.to_owned(), true);
    let wd = workdir.display();
    match file {
        "scenario.json" | "scenario-faults.json" => vec![
            ("write", ok("wrote 18 bytes to notes/a.txt")),
            ("read", ok("hello conformance\n")),
            ("edit", ok("edited notes/a.txt (1 replacement(s))")),
            ("glob", ok(&format!("{wd}/notes/a.txt"))),
            ("grep", ok(&format!("{wd}/notes/a.txt:1:hello emulator"))),
            ("bash", ok("hello emulator\nsum=42")),
        ],
        "scenario-idle.json" => vec![
            ("write", ok("wrote 8 bytes to gated.txt")),
            ("bash", Expect::Nothing),
            ("bash", Expect::Nothing),
            ("read", ok("allowed\n")),
            ("bash", err("failing")),
            ("read", err("read: missing.txt: no such file or directory")),
        ],
        other => panic!("no expectations for {other}"),
    }
}

/// Each of the scenario's scripted calls got exactly the expected answer (or none, if it must
/// not run). With `allow_repeats`, a call may be answered more than once (a worker that lost
/// its lease may run a call again), but every answer must be the expected one.
fn assert_results(
    file: &str,
    scenario: &Scenario,
    records: &[ToolResultRecord],
    workdir: &Path,
    allow_repeats: bool,
) {
    let session = &scenario.sessions[0];
    let sid = session
        .id
        .as_deref()
        .expect("the scenario names its session");
    let expected = expected_results(file, workdir);
    let names: Vec<&str> = session.calls.iter().map(|c| c.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, expected_names,
        "{file}: scenario calls and expectations drifted apart"
    );
    assert!(
        records.iter().all(|r| r.session_id == sid),
        "results for another session: {records:#?}"
    );
    let mut answered = 0;
    for (call, (name, expect)) in session.calls.iter().zip(&expected) {
        let answers: Vec<&ToolResultRecord> = records
            .iter()
            .filter(|r| r.name.as_deref() == Some(*name) && r.input == call.input)
            .collect();
        let (text, is_error) = match expect {
            Expect::Nothing => {
                assert!(
                    answers.is_empty(),
                    "{name} {} must not run: {answers:#?}",
                    call.input
                );
                continue;
            }
            Expect::Text(text, is_error) => (text, *is_error),
        };
        assert!(
            !answers.is_empty(),
            "no result for {name} {}; recorded: {records:#?}",
            call.input
        );
        if !allow_repeats {
            assert_eq!(
                answers.len(),
                1,
                "{name} {} was answered more than once",
                call.input
            );
        }
        answered += answers.len();
        for answer in answers {
            assert_eq!(answer.is_error, Some(is_error), "{name}: {answer:#?}");
            assert_eq!(
                answer.content,
                json!([{"type": "text", "text": text}]),
                "{name} {} result",
                call.input
            );
        }
    }
    assert_eq!(
        answered,
        records.len(),
        "results for calls the scenario does not make: {records:#?}"
    );
}

/// A canonical temporary working directory for the worker's tools.
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cma-sdkconf-")
        .tempdir()
        .expect("create a temporary workdir");
    let canonical = dir.path().canonicalize().expect("canonical workdir");
    (dir, canonical)
}

/// Runs `tests/sdk/worker.py` to completion; panics with its transcript unless it exits 0.
/// Returns its stderr (the SDK's log).
async fn run_sdk_worker(
    base_url: &str,
    env: &ScenarioEnvironment,
    workdir: &Path,
    stop: &[&str],
) -> String {
    let key = env
        .environment_key
        .as_deref()
        .expect("the scenario fixes the environment key");
    let mut cmd = Command::new(sdk_python());
    cmd.arg(workspace_root().join("tests/sdk/worker.py"))
        .args([
            "--base-url",
            base_url,
            "--environment-id",
            &env.id,
            "--environment-key",
            key,
        ])
        .arg("--workdir")
        .arg(workdir)
        .args(["--timeout", &DRIVER_TIMEOUT.as_secs().to_string()])
        .args(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn the SDK worker driver");
    let out = tokio::time::timeout(
        DRIVER_TIMEOUT + Duration::from_secs(30),
        child.wait_with_output(),
    )
    .await
    .expect("the SDK worker driver outlived its own deadline")
    .expect("wait for the SDK worker driver");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "SDK worker driver failed ({}):\n--- stdout\n{}\n--- stderr\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The session's work item went through a lease and ended `stopped` by a direct stop from a
/// live state: the worker's final `stop {"force": true}` (the SDK worker never sends a
/// graceful stop, and a graceful one would have left `stopping` first, at a later time).
fn assert_force_stopped(emu: &Emulator, sid: &str) {
    let items = emu.session_work(sid);
    assert_eq!(items.len(), 1, "one work item for the session: {items:#?}");
    let work = &items[0];
    assert_eq!(work.state, WorkState::Stopped, "{work:#?}");
    assert!(
        work.started_at.is_some(),
        "the item was never heartbeaten: {work:#?}"
    );
    assert!(work.stopped_at.is_some(), "{work:#?}");
    assert_eq!(
        work.stop_requested_at, work.stopped_at,
        "not a direct (force) stop: {work:#?}"
    );
}

/// Starts the emulator in this process with a scenario file.
async fn start_in_process(file: &str) -> (Emulator, Scenario) {
    let scenario = Scenario::from_file(scenario_path(file)).expect("load the scenario");
    let emu = Emulator::start(EmulatorConfig::default().scenario(scenario.clone()))
        .await
        .expect("start the emulator");
    (emu, scenario)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_runs_every_builtin_tool_and_force_stops() {
    let (emu, scenario) = start_in_process("scenario.json").await;
    let (_dir, wd) = workdir();
    let sid = scenario.sessions[0].id.clone().expect("session id");
    // The queue also carries non-session items, which the worker stops without serving (§5.3).
    let healthcheck: WorkData =
        serde_json::from_value(json!({"type": "healthcheck", "id": "hc_sdkconf"}))
            .expect("work data");
    let healthcheck = emu
        .enqueue_work(&scenario.environments[0].id, healthcheck)
        .expect("queue a healthcheck item");

    run_sdk_worker(
        &emu.base_url(),
        &scenario.environments[0],
        &wd,
        &["--until-stopped", "2"],
    )
    .await;

    let hc = emu.work(&healthcheck).expect("the healthcheck item");
    assert_eq!(hc.state, WorkState::Stopped, "{hc:#?}");
    assert!(
        hc.acknowledged_at.is_some(),
        "the healthcheck item was not claimed: {hc:#?}"
    );
    assert!(
        hc.started_at.is_none(),
        "the healthcheck item was heartbeaten: {hc:#?}"
    );

    assert_results("scenario.json", &scenario, &emu.tool_results(), &wd, false);
    assert_force_stopped(&emu, &sid);
    assert_eq!(emu.session_status(&sid), Some(SessionStatus::Terminated));
    // The files the tools wrote are really there, as the last results say.
    assert_eq!(
        std::fs::read_to_string(wd.join("notes/a.txt")).expect("notes/a.txt"),
        "hello emulator\n"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_follows_permissions_and_ends_an_idle_session_after_max_idle() {
    let (emu, scenario) = start_in_process("scenario-idle.json").await;
    let (_dir, wd) = workdir();
    let sid = scenario.sessions[0].id.clone().expect("session id");

    let log = run_sdk_worker(
        &emu.base_url(),
        &scenario.environments[0],
        &wd,
        &["--until-stopped", "1"],
    )
    .await;

    // `ask` + allow runs, `ask` + deny and `deny` never run (docs/protocol.md §5.4), a failing
    // command and a missing file are error results (§6.2, §6.1).
    assert_results(
        "scenario-idle.json",
        &scenario,
        &emu.tool_results(),
        &wd,
        false,
    );
    assert!(wd.join("gated.txt").exists());
    assert!(
        !wd.join("denied-by-user.txt").exists(),
        "a user-denied call ran"
    );
    assert!(
        !wd.join("denied-by-policy.txt").exists(),
        "a policy-denied call ran"
    );
    // The session stays idle; the worker's idle rule (max_idle, 1 s here) ended its run.
    assert!(
        log.contains("session idle for"),
        "the run did not end on the idle rule:\n{log}"
    );
    assert_eq!(emu.session_status(&sid), Some(SessionStatus::Idle));
    assert_force_stopped(&emu, &sid);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_completes_despite_412_heartbeat_dropped_stream_and_429() {
    let (emu, scenario) = start_in_process("scenario-faults.json").await;
    let endpoints: Vec<String> = scenario
        .faults
        .iter()
        .map(|f| f.endpoint.to_string())
        .collect();
    assert_eq!(
        endpoints,
        ["heartbeat", "stream", "events_send"],
        "the faults this test is about"
    );
    let (_dir, wd) = workdir();
    let sid = scenario.sessions[0].id.clone().expect("session id");

    let log = run_sdk_worker(
        &emu.base_url(),
        &scenario.environments[0],
        &wd,
        &["--until-stopped", "1"],
    )
    .await;

    assert_eq!(emu.faults_remaining(), 0, "every injected fault was hit");
    // The 412 made the worker drop the item without stopping it (docs/protocol.md §3.4); the
    // emulator re-queued it when the lease ran out and the worker claimed it again.
    assert!(
        log.contains("lease lost"),
        "the SDK did not report the lost lease:\n{log}"
    );
    assert_results(
        "scenario-faults.json",
        &scenario,
        &emu.tool_results(),
        &wd,
        true,
    );
    assert_force_stopped(&emu, &sid);
    assert_eq!(emu.session_status(&sid), Some(SessionStatus::Terminated));
    emu.shutdown().await;
}

/// The real `cma emulator` binary, as a user runs it: `--record` and `--exit-when-done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_against_the_cma_emulator_binary_fills_the_record_file() {
    let scenario_file = scenario_path("scenario.json");
    let scenario = Scenario::from_file(&scenario_file).expect("load the scenario");
    let (dir, wd) = workdir();
    let record = dir.path().join("record.jsonl");
    // The record lives next to the workdir's files: keep it out of the tools' view.
    let tools_dir = wd.join("work");
    std::fs::create_dir(&tools_dir).expect("create the tools' workdir");

    let mut emulator = Command::new(cma_binary())
        .arg("emulator")
        .args(["--port", "0", "--exit-when-done", "--scenario"])
        .arg(&scenario_file)
        .arg("--record")
        .arg(&record)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cma emulator");
    let stdout = emulator.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let base_url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read the emulator banner") {
            if let Some(url) = line.strip_prefix("cma emulator listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("cma emulator exited without printing its address");
    })
    .await
    .expect("cma emulator printed no banner within 60 s");
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
    // Keep draining stdout so the emulator never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    run_sdk_worker(
        &base_url,
        &scenario.environments[0],
        &tools_dir,
        &["--until-unreachable"],
    )
    .await;

    let out = tokio::time::timeout(Duration::from_secs(30), emulator.wait_with_output())
        .await
        .expect("cma emulator did not exit after the scenario ended")
        .expect("wait for cma emulator");
    drain.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cma emulator failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("every scripted session has terminated"),
        "cma emulator exited for another reason:\n{stderr}"
    );
    let text = std::fs::read_to_string(&record).expect("read the record file");
    let records: Vec<ToolResultRecord> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("record line {line:?}: {e}"))
        })
        .collect();
    assert_results("scenario.json", &scenario, &records, &tools_dir, false);
}
