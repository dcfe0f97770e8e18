//! The control-plane binaries end to end: `quickstart`, `cma run` (against an in-process emulator,
//! with its webhook listener fed by the emulator's signed deliveries) and `cma tool`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cma_core::emulator::{Emulator, EmulatorConfig, Scenario, WebhookConfig};
use cma_core::webhook::WebhookSecret;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn quickstart_runs_the_scripted_agent_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every scripted call answered once, results shown as they happen.
    assert!(stdout.contains("7/7 calls answered, 0 answered twice, 1/1 sessions ended"));
    assert!(stdout.contains("3 items: write the runner; demo the quickstart; measure everything"));
    assert!(stdout.contains("✗ error bash: this sandbox has no shell; use the execute tool"));
    assert!(stdout.contains("work items  1 claimed, 1 finished, 0 failed"));
}

#[test]
fn quickstart_reports_failure_for_a_bad_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"environments": [{"id": "env_x", "nmae": "typo"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .arg("--scenario")
        .arg(&bad)
        .env("RUST_LOG", "off")
        .output()
        .expect("run quickstart");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nmae"));
}

/// POST a body with the given webhook headers; the status code.
fn post(addr: SocketAddr, headers: &[(&str, String)], body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /webhooks HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cma_run_serves_a_session_and_verifies_webhooks() {
    let hook_port = free_port();
    let hook_addr: SocketAddr = format!("127.0.0.1:{hook_port}").parse().unwrap();
    let scenario = Scenario::from_json(include_str!("../scenarios/quickstart.json")).unwrap();
    let expected: usize = scenario.sessions.iter().map(|s| s.calls.len()).sum();
    let emulator = Emulator::start(
        EmulatorConfig::default()
            .scenario(scenario)
            .strict(true)
            .webhook(WebhookConfig::new(
                format!("http://{hook_addr}/webhooks"),
                WebhookSecret::parse(SECRET).unwrap(),
            )),
    )
    .await
    .unwrap();
    let env = emulator.environments().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "environment_id": env.id,
            "base_url": emulator.base_url(),
            "data_dir": dir.path().join("data"),
            "concurrency": 2,
            "max_idle_seconds": 2,
            "worker_id": "cma-test-worker",
            "webhook": {"listen": hook_addr.to_string()},
        })
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("ANTHROPIC_ENVIRONMENT_KEY", &env.key)
        .env("CMA_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma run");

    let done = emulator
        .wait_for(Duration::from_secs(30), |e| {
            let (total, ended, work_over) = e.scripted_progress();
            total == ended && work_over
        })
        .await;
    let records = emulator.tool_results();
    assert!(done, "the session did not finish: {records:?}");
    assert_eq!(records.len(), expected, "one result per scripted call");
    let summary = records
        .iter()
        .find(|r| r.name.as_deref() == Some("read"))
        .expect("the read result");
    assert!(summary.content.to_string().contains("3 items"));
    // Webhook-driven, yet every poll (start, deliveries, fallback) carried the configured id.
    let polls = poll_worker_ids(&emulator);
    assert!(!polls.is_empty());
    assert!(
        polls
            .iter()
            .all(|(id, status)| id.as_deref() == Some("cma-test-worker") && *status == Some(200)),
        "{polls:?}"
    );

    // The emulator's signed deliveries were verified by the listener (2xx).
    let delivered = emulator
        .wait_for(Duration::from_secs(10), |e| {
            let d = e.webhook_deliveries();
            !d.is_empty() && d.iter().all(|d| d.delivered || d.attempts == 0)
        })
        .await;
    let deliveries = emulator.webhook_deliveries();
    assert!(delivered, "webhooks not accepted: {deliveries:?}");
    assert!(deliveries.iter().any(|d| d.last_status == Some(200)));
    // A forged delivery is refused.
    let forged = post(
        hook_addr,
        &[
            ("webhook-id", "msg_forged".into()),
            ("webhook-timestamp", chrono_now().to_string()),
            (
                "webhook-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            ),
        ],
        r#"{"type":"event","id":"wevt_x","created_at":"2026-01-01T00:00:00Z","data":{"type":"session.status_run_started","id":"sesn_x"}}"#,
    );
    assert_eq!(forged, 401);

    // SIGTERM: graceful shutdown, exit 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait(&mut child, Duration::from_secs(40));
    let err = stderr_of(&mut child);
    assert!(status.success(), "cma run exited {status}: {err}");
    assert!(
        err.contains("1 item(s) claimed, 1 finished, 0 failed"),
        "{err}"
    );
    emulator.shutdown().await;
}

/// `cma run` downloads a session's skill into its sandbox and mounts, edits and syncs back its
/// memory store (mounted outside the workspace, backed by `data_dir/memory`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cma_run_serves_skills_and_memory_stores() {
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "environments": [{"id": "env_mem"}],
        "skills": [{"id": "skill_notes", "name": "notes", "files": {"SKILL.md": "# Notes skill\n"}}],
        "memory_stores": [{"id": "memstore_prefs", "memories": {"/style.md": "theme: light\n"}}],
        "sessions": [{"environment": "env_mem", "end": "terminate",
            "skills": [{"skill_id": "skill_notes"}],
            "memory_stores": [{"memory_store_id": "memstore_prefs", "mount_path": "/mnt/memory/prefs"}],
            "calls": [
                {"name": "read", "input": {"file_path": "skills/notes/SKILL.md"}},
                {"name": "edit", "input": {"file_path": "/mnt/memory/prefs/style.md",
                                           "old_string": "light", "new_string": "dark"}}
            ]}]
    }))
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let env = emulator.environments().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "environment_id": env.id,
            "base_url": emulator.base_url(),
            "data_dir": dir.path().join("data"),
            "max_idle_seconds": 1,
        })
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ANTHROPIC_ENVIRONMENT_KEY", &env.key)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma run");
    let synced = emulator
        .wait_for(Duration::from_secs(30), |e| {
            e.memories("memstore_prefs")
                .is_some_and(|m| m.get("/style.md").map(String::as_str) == Some("theme: dark\n"))
        })
        .await;
    let records = emulator.tool_results();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        synced,
        "the memory edit never reached the store: {records:?}"
    );
    assert!(
        records[0].content.to_string().contains("# Notes skill"),
        "{records:?}"
    );
    emulator.shutdown().await;
}

/// `Anthropic-Worker-ID` and status of every answered poll the emulator logged.
fn poll_worker_ids(emulator: &Emulator) -> Vec<(Option<String>, Option<u16>)> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/work/poll") && r.status.is_some())
        .map(|r| (r.worker_id, r.status))
        .collect()
}

/// Against a strict emulator (a poll without `Anthropic-Worker-ID` is a 400), `cma run`
/// long-polls with the SDK's default worker id — `<hostname>-<12 hex digits>`, the same on every
/// poll of the process — and serves the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cma_run_polls_with_a_worker_id_against_a_strict_emulator() {
    let scenario = Scenario::from_json(include_str!("../scenarios/quickstart.json")).unwrap();
    let expected: usize = scenario.sessions.iter().map(|s| s.calls.len()).sum();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario).strict(true))
        .await
        .unwrap();
    let env = emulator.environments().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "environment_id": env.id,
            "base_url": emulator.base_url(),
            "data_dir": dir.path().join("data"),
            "max_idle_seconds": 1,
        })
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ANTHROPIC_ENVIRONMENT_KEY", &env.key)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma run");
    let done = emulator
        .wait_for(Duration::from_secs(30), |e| {
            let (total, ended, work_over) = e.scripted_progress();
            total == ended && work_over
        })
        .await;
    // A few more polls after the work is done: still with the same id.
    let more = emulator
        .wait_for(Duration::from_secs(10), |e| poll_worker_ids(e).len() >= 4)
        .await;
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = wait(&mut child, Duration::from_secs(40));
    let err = stderr_of(&mut child);
    assert!(done, "the session did not finish: {err}");
    assert!(more);
    assert!(status.success(), "{err}");
    assert_eq!(emulator.tool_results().len(), expected);
    let polls = poll_worker_ids(&emulator);
    let first = polls[0].0.clone().expect("a worker id");
    let (host, suffix) = first.rsplit_once('-').expect("<hostname>-<suffix>");
    assert_eq!(host, cma_core::control::identity::host_name());
    assert_eq!(suffix.len(), 12, "{first}");
    assert!(
        suffix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{first}"
    );
    assert!(
        polls
            .iter()
            .all(|(id, status)| id.as_deref() == Some(first.as_str()) && *status == Some(200)),
        "{polls:?}"
    );
    assert!(err.contains(&format!("worker id {first}")), "{err}");
    emulator.shutdown().await;
}

fn chrono_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn cma_run_rejects_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"environment_id":"env_x","concurency":2}"#, "concurency"),
        (
            r#"{"environment_id":"env_x","concurrency":0}"#,
            "concurrency must be at least 1",
        ),
        (r#"{}"#, "environment_id"),
        (
            r#"{"environment_id":"env_x","memory_sync_interval_seconds":2}"#,
            "memory sync interval must be at least",
        ),
        (
            r#"{"environment_id":"env_x","memory_sync_deletions":"sometimes"}"#,
            "memory_sync_deletions must be",
        ),
        ("not json", "expected"),
        (
            r#"{"environment_id":"env_x","placement":{"profiles":{"x":{"backend":"dockr"}}}}"#,
            "placement.profiles.x.backend: unknown backend \"dockr\"",
        ),
        (
            r#"{"environment_id":"env_x","placement":{"profiles":{"x":{"backend":"isolate"}},"rules":[{"agent_id_pattern":"agent_(","profile":"x"}]}}"#,
            "placement.rules[0].agent_id_pattern: invalid regular expression",
        ),
        (
            r#"{"environment_id":"env_x","placement":{"profiles":{"x":{"backend":"isolate"}},"rules":[{"profile":"x"}]}}"#,
            "placement.rules[0]: empty rule",
        ),
        (
            r#"{"environment_id":"env_x","placement":{"profiles":{"x":{"backend":"isolate","cpu":1}}}}"#,
            "unknown field `cpu`",
        ),
        (
            r#"{"environment_id":"env_x","snapshot_retention_interval_seconds":0}"#,
            "snapshot_retention_interval_seconds must be at least 1",
        ),
        (
            r#"{"environment_id":"env_x","webhook":{"listen":"127.0.0.1:1","fallback_poll_seconds":0}}"#,
            "webhook.fallback_poll_seconds must be at least 1",
        ),
        (
            r#"{"environment_id":"env_x","worker_id":"has space"}"#,
            "worker_id must be",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.json"));
        std::fs::write(&p, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cma"))
            .args(["run", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text}: {err}");
    }
    // A missing key is named, not guessed.
    let p = dir.path().join("ok.json");
    std::fs::write(
        &p,
        r#"{"environment_id":"env_x","base_url":"http://127.0.0.1:9"}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["run", "--config"])
        .arg(&p)
        .env_remove("ANTHROPIC_ENVIRONMENT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ANTHROPIC_ENVIRONMENT_KEY"));
}

fn tool(workdir: &Path, name: &str, input: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["tool", name, "--input", input, "--workdir"])
        .arg(workdir)
        .output()
        .expect("run cma tool")
}

#[test]
fn cma_tool_prints_results_as_posted_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOPSECRET").unwrap();

    let out = tool(
        &ws,
        "write",
        r#"{"file_path":"a.txt","content":"one\ntwo\n"}"#,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "one\ntwo\n"
    );

    // The text exactly as posted: no newline added.
    let out = tool(&ws, "read", r#"{"file_path":"a.txt"}"#);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");

    let out = tool(&ws, "grep", r#"{"pattern":"tw."}"#);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/workspace/a.txt:2:two"
    );

    // Errors: exit 1, the posted text on stdout; nothing outside the directory is reachable.
    let out = tool(&ws, "read", r#"{"file_path":"../secret.txt"}"#);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("outside"), "{text}");
    assert!(!text.contains("TOPSECRET"), "{text}");
    let out = tool(&ws, "bash", r#"{"command":"ls"}"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("execute"));

    // An image read is posted as content blocks: printed as JSON.
    let png = [
        0x89u8, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52,
    ];
    std::fs::write(ws.join("x.png"), png).unwrap();
    let out = tool(&ws, "read", r#"{"file_path":"x.png"}"#);
    assert_eq!(out.status.code(), Some(0));
    let blocks: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("content blocks as JSON");
    assert_eq!(blocks[0]["type"], "image");
    assert_eq!(blocks[0]["source"]["media_type"], "image/png");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(blocks[0]["source"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, png);

    // Usage errors: exit 2.
    assert_eq!(tool(&ws, "nope", "{}").status.code(), Some(2));
    assert_eq!(tool(&ws, "read", "{bad").status.code(), Some(2));
    assert_eq!(
        tool(&dir.path().join("missing"), "read", "{}")
            .status
            .code(),
        Some(2)
    );
}

/// Processes still alive that were started as `execute` workers by process `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let marker = format!("CMA_SANDBOX_ISOLATE_WORKER={parent}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|v| v == marker.as_bytes())
        })
        .collect()
}

#[test]
fn cma_tool_execute_stops_a_runaway_script_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    // A built-in that loops natively without polling QuickJS's interrupt handler.
    let input =
        r#"{"code":"Array.prototype.indexOf.call({length: 2**53 - 1}, 1)","timeout_ms":1000}"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["tool", "execute", "--input", input, "--workdir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The bound only keeps a broken build from hanging the suite.
    let status = wait(&mut child, Duration::from_secs(60));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{}", stderr_of(&mut child));
    assert_eq!(stdout, "execute: timed out after 1.0s");
    // Its worker processes went with it.
    let give_up = Instant::now() + Duration::from_secs(20);
    while !workers_of(pid).is_empty() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(workers_of(pid), Vec::<u32>::new());
}
