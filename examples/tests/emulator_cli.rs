//! `cma emulator` end to end: the built binary, its banner, `--exit-when-done`, bad scenarios.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cma"))
        .arg("emulator")
        .args(args)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma emulator")
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("cma emulator did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn call(addr: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         anthropic-beta: managed-agents-2026-04-01\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().expect("status");
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_owned())
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cma-emu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_scenarios_exit_2_with_a_clear_message() {
    for (name, text, needle) in [
        ("typo.json", r#"{"enviroments": []}"#, "enviroments"),
        ("broken.json", "{", "line 1"),
        (
            "dangling.json",
            r#"{"sessions": [{"environment": "env_missing"}]}"#,
            "env_missing",
        ),
    ] {
        let path = temp_file(name, text);
        let mut child = spawn(&["--scenario", path.to_str().unwrap()]);
        let status = wait(&mut child, Duration::from_secs(20));
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    let mut child = spawn(&["--scenario", "/nonexistent/scenario.json"]);
    assert_eq!(wait(&mut child, Duration::from_secs(20)).code(), Some(2));
}

#[test]
fn prints_how_to_connect_and_exits_when_every_session_is_done() {
    let scenario = temp_file(
        "done.json",
        r#"{"api_key": "sk-ant-cli", "environments": [{"id": "env_cli", "environment_key": "envkey_cli"}],
            "sessions": [{"id": "sesn_cli", "environment": "env_cli", "end": "terminate"}]}"#,
    );
    let mut child = spawn(&["--scenario", scenario.to_str().unwrap(), "--exit-when-done"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let end = line.starts_with("Press Ctrl-C");
        banner.push(line);
        if end {
            break;
        }
    }
    let text = banner.join("\n");
    assert!(text.contains("envkey_cli"), "{text}");
    assert!(
        text.contains("export ANTHROPIC_ENVIRONMENT_ID=env_cli"),
        "{text}"
    );
    let base = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("export ANTHROPIC_BASE_URL=http://"))
        .expect("base url line")
        .to_owned();

    // The session has already terminated; the emulator waits for its work item to stop.
    let (status, body) = call(
        &base,
        "GET",
        "/v1/environments/env_cli/work/poll",
        "envkey_cli",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let item: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = item["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/environments/env_cli/work/{id}");
    assert_eq!(
        call(&base, "POST", &format!("{path}/ack"), "envkey_cli", "").0,
        200
    );
    let (status, _) = call(
        &base,
        "POST",
        &format!("{path}/stop"),
        "envkey_cli",
        r#"{"force":true}"#,
    );
    assert_eq!(status, 200);
    let status = wait(&mut child, Duration::from_secs(20));
    assert!(status.success());
}
