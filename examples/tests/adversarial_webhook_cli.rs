//! Adversarial suite, class "webhook listener" (issue 11), on the real binary: `cma run` with
//! its webhook listener, flooded from this process with thousands of silent connections and a
//! crowd of slowloris heads. Meanwhile the emulator's signed deliveries still reach it, the
//! session they announce is claimed and served, and the child's descriptors and threads
//! (`/proc/<pid>/fd`, `/proc/<pid>/task`) stay near what it had before the attack — bounded by the
//! connection cap, not by the attackers.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cma_core::emulator::{
    Emulator, EmulatorConfig, Script, ScriptEnd, ScriptedCall, WebhookConfig,
};
use cma_core::webhook::WebhookSecret;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CAP: usize = 32;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Descriptors this process may still open.
fn fd_headroom() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    soft.saturating_sub(count("/proc/self/fd"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cma_run_keeps_serving_webhooks_under_a_connection_flood() {
    tokio::time::timeout(Duration::from_secs(150), attack())
        .await
        .expect("the case finished within its bound");
}

async fn attack() {
    let hook_port = free_port();
    let hook: SocketAddr = format!("127.0.0.1:{hook_port}").parse().unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().webhook(WebhookConfig::new(
        format!("http://{hook}/webhooks"),
        WebhookSecret::parse(SECRET).unwrap(),
    )))
    .await
    .unwrap();
    let env = emulator.add_environment("env_flood", "flood").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        json!({
            "environment_id": env.id,
            "base_url": emulator.base_url(),
            "data_dir": dir.path().join("data"),
            "max_idle_seconds": 1,
            // Only webhooks (and the drain at start) claim work during the test.
            "webhook": {"listen": hook.to_string(), "max_connections": CAP,
                        "fallback_poll_seconds": 3600},
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
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cma run");
    let pid = child.id();
    let (fd_dir, task_dir) = (format!("/proc/{pid}/fd"), format!("/proc/{pid}/task"));
    // The listener is up once it accepts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(hook).await.is_err() {
        assert!(Instant::now() < deadline, "cma run never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A first session, served by a webhook-triggered drain, settles the process (sandbox
    // backend, pools) before it is measured.
    let call = |p: &str| ScriptedCall::tool("write", json!({"file_path": p, "content": "x"}));
    let first = emulator
        .create_session(
            &env.id,
            Script::new(vec![call("a.txt")], ScriptEnd::Terminate),
        )
        .unwrap();
    let served = |sid: String| {
        move |e: &Emulator| {
            e.tool_results()
                .iter()
                .filter(|r| r.session_id == sid)
                .count()
                == 1
        }
    };
    assert!(
        emulator
            .wait_for(Duration::from_secs(30), served(first))
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fds_before, threads_before) = (count(&fd_dir), count(&task_dir));

    // The flood: silent connections, and heads trickled a byte at a time.
    let flood = fd_headroom().saturating_sub(512).min(5_000);
    assert!(
        flood >= CAP * 4,
        "not enough descriptors for a flood ({flood})"
    );
    let mut silent = Vec::with_capacity(flood);
    for _ in 0..flood {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(hook)).await {
            Ok(Ok(s)) => silent.push(s),
            _ => break,
        }
    }
    assert!(
        silent.len() >= CAP * 4,
        "only {} connections opened",
        silent.len()
    );
    let trickle: Vec<_> = (0..CAP * 2)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(hook).await else {
                    return;
                };
                for b in b"POST /webhooks HTTP/1.1\r\nhost: x\r\nx-pad: ".repeat(1000) {
                    if s.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();

    // During the attack: a new session's webhooks reach cma run, which claims and serves it.
    let delivered_before = emulator
        .webhook_deliveries()
        .iter()
        .filter(|d| d.last_status == Some(200))
        .count();
    let second = emulator
        .create_session(
            &env.id,
            Script::new(vec![call("b.txt")], ScriptEnd::Terminate),
        )
        .unwrap();
    let mut peak = (count(&fd_dir), count(&task_dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = false;
    while Instant::now() < deadline {
        peak = (peak.0.max(count(&fd_dir)), peak.1.max(count(&task_dir)));
        if served(second.clone())(&emulator) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done,
        "the session announced during the attack was not served"
    );
    let delivered = emulator
        .webhook_deliveries()
        .iter()
        .filter(|d| d.last_status == Some(200))
        .count();
    assert!(
        delivered > delivered_before,
        "no delivery accepted during the attack"
    );
    eprintln!(
        "cma run under a flood of {} connections: fds {fds_before} → peak {}, threads {threads_before} → peak {}",
        silent.len(),
        peak.0,
        peak.1
    );
    // Descriptors: the cap's worth of connections (and the new session's own), never the flood.
    assert!(
        peak.0 <= fds_before + CAP + 16,
        "cma run held {} descriptors under a flood of {} (before: {fds_before})",
        peak.0,
        silent.len()
    );
    assert!(
        peak.1 <= threads_before + 16,
        "cma run ran {} threads under the flood (before: {threads_before})",
        peak.1
    );
    for t in trickle {
        t.abort();
    }
    drop(silent);

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cma run did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "cma run exited {status}");
    emulator.shutdown().await;
}
