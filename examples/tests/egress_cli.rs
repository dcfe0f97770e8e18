//! `cma run` with an `egress` section, end to end on the isolate backend: a scripted session's
//! `execute` calls `fetch` a loopback service the policy routes to (with a key from the
//! environment injected) and a host it does not allow; the results, the state store's audit log
//! and the process's log are checked.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_core::emulator::{Emulator, EmulatorConfig, Scenario};
use cma_store::state::{SqliteStateStore, StateStore};

const KEY: &str = "sk-cli-test-6f1d2c9a8b7e4d3c";

/// A one-response-per-connection HTTP server on loopback recording each request head.
fn service() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") && buf.len() < 65536 {
                if conn.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                buf.push(byte[0]);
            }
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf).into_owned());
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nservice",
            );
        }
    });
    (port, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cma_run_applies_the_egress_section_to_isolate_sandboxes() {
    let (port, heads) = service();
    let fetch = |url: &str| {
        format!(
            "(async () => {{ try {{ const r = await fetch('{url}'); return r.status + ' ' + await r.text(); }} \
             catch (e) {{ return 'error ' + e.message; }} }})"
        )
    };
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "environments": [{"id": "env_egress"}],
        "sessions": [{"environment": "env_egress", "end": "terminate", "calls": [
            {"name": "execute", "input": {"code": fetch("http://local.test/cli/allowed")}},
            {"name": "execute", "input": {"code": fetch("https://denied.test/cli/denied")}},
        ]}]
    }))
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let env = emulator.environments().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("egress.json");
    std::fs::write(
        &policies,
        serde_json::json!({"policies": [{"id": "pol_cli", "apply_to_all": true, "rules": [
            {"type": "allow", "host": "local.test"},
            {"type": "route", "host": "local.test", "upstream": format!("http://127.0.0.1:{port}")},
            {"type": "inject", "host": "local.test", "header": "x-api-key", "secret": "CMA_TEST_API_KEY",
             "allow_plain_http": true}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "environment_id": env.id,
            "base_url": emulator.base_url(),
            "data_dir": dir.path().join("data"),
            "max_idle_seconds": 1,
            "egress": {"policies": policies, "secrets": {"env": ["CMA_TEST_API_KEY"]}},
        })
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ANTHROPIC_ENVIRONMENT_KEY", &env.key)
        .env("CMA_TEST_API_KEY", KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma run");
    let done = emulator
        .wait_for(Duration::from_secs(60), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    // Let the audit writer catch up before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let results = emulator.tool_results();
    assert!(done, "the session did not finish: {results:?}\n{log}");
    let text = |i: usize| {
        results[i].content[0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(text(0), "200 service", "{log}");
    assert!(
        text(1).starts_with("error egress denied: GET https://denied.test/cli/denied"),
        "{}",
        text(1)
    );
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("x-api-key: {KEY}")),
        "{heads:?}"
    );
    assert!(!log.contains(KEY), "the key reached the log");
    assert!(log.contains("egress"), "{log}");

    let state = SqliteStateStore::open(dir.path().join("data/state.sqlite"))
        .await
        .unwrap();
    let audit = state.list_egress_audit(None, 0, 100).await.unwrap();
    let seen: Vec<(String, bool)> = audit.iter().map(|e| (e.host.clone(), e.allowed)).collect();
    assert_eq!(
        seen,
        [
            ("local.test".to_owned(), true),
            ("denied.test".to_owned(), false)
        ],
        "{audit:#?}"
    );
    assert!(audit.iter().all(|e| !e.record.contains(KEY)));
    let session = audit[0].session_id.clone().unwrap();
    let record = state.get_session(&session).await.unwrap().unwrap();
    assert_eq!(record.egress_policy_id.as_deref(), Some("pol_cli"));
    let policy = state.get_egress_policy("pol_cli").await.unwrap().unwrap();
    assert!(policy.fingerprint.starts_with("fp1-"), "{policy:?}");
    emulator.shutdown().await;
}
