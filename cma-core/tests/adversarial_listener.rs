//! Adversarial suite, classes "webhook listener" and "emulator listener" (issue 11): hostile
//! HTTP clients on loopback — slowloris heads (a byte at a time), heads without their body,
//! thousands of silent connections, oversized heads, endless pipelines, idle keep-alives —
//! against a `Listener` serving a `VerifyLayer` webhook receiver, and against the emulator. While
//! each attack runs, valid signed deliveries (or API calls) are still answered; the server's
//! sockets stay under its connection cap; no thread is added.

mod adversarial;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::post;
use axum::{Extension, Router};
use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd};
use cma_core::listener::{Listener, ListenerLimits, ListenerStats};
use cma_core::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookSecret, sign_headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[test]
fn adversarial_listener() {
    adversarial::run_cases(&[
        case!(
            slowloris_heads_are_cut_and_deliveries_served,
            Duration::from_secs(60)
        ),
        case!(
            heads_without_bodies_time_out_and_deliveries_served,
            Duration::from_secs(60)
        ),
        case!(thousands_of_silent_connections, Duration::from_secs(120)),
        case!(
            oversized_heads_pipelines_and_idle_keepalives,
            Duration::from_secs(60)
        ),
        case!(
            the_emulator_under_the_same_attacks,
            Duration::from_secs(120)
        ),
    ]);
}

const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CAP: usize = 32;

/// Sockets this process holds whose local port is `port`, listening socket excluded: the
/// server's side of its connections (the attackers' sockets live in the same process, on
/// ephemeral ports).
fn server_sockets(port: u16) -> usize {
    let mut by_inode: HashMap<u64, (u16, bool)> = HashMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                .unwrap_or(0);
            let listening = f[3] == "0A";
            if let Ok(inode) = f[9].parse::<u64>() {
                by_inode.insert(inode, (local_port, listening));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .filter(|i| by_inode.get(i).is_some_and(|(p, l)| *p == port && !*l))
                .count()
        })
        .unwrap_or(0)
}

/// Open descriptors the process may still open (soft limit minus those open), for sizing the
/// connection flood to the machine.
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
    soft.saturating_sub(adversarial::Resources::now().fds)
}

struct Receiver {
    addr: SocketAddr,
    stats: ListenerStats,
    delivered: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(limits: ListenerLimits) -> Self {
        let delivered = Arc::new(AtomicUsize::new(0));
        let count = delivered.clone();
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let app = Router::new()
            .route(
                "/webhooks",
                post(move |Extension(_): Extension<WebhookEvent>| {
                    let count = count.clone();
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        "ok"
                    }
                }),
            )
            .layer(VerifyLayer::new(Verifier::new(secret)));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(tcp, limits).expect("limits");
        let addr = listener.local_addr().unwrap();
        let stats = listener.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(listener.serve(app, stop.clone()));
        Self {
            addr,
            stats,
            delivered,
            stop,
            task,
        }
    }

    /// One valid delivery on a fresh connection; the status.
    async fn deliver(&self, n: usize) -> u16 {
        let body = format!(
            r#"{{"type":"event","id":"wevt_{n}","created_at":"2026-05-01T12:00:00Z","data":{{"type":"session.created","id":"sesn_{n}","organization_id":"o","workspace_id":"w"}}}}"#
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let headers = sign_headers(
            &WebhookSecret::parse(SECRET).unwrap(),
            &format!("msg_{n}"),
            now,
            body.as_bytes(),
        )
        .unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client
            .post(format!("http://{}/webhooks", self.addr))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Deliver `n` times while asserting the server's sockets stay within the cap.
    async fn deliver_under_attack(&self, n: usize) {
        for i in 0..n {
            assert_eq!(self.deliver(i).await, 200, "delivery {i} during the attack");
            let held = server_sockets(self.addr.port());
            assert!(
                held <= CAP + 1,
                "the server holds {held} sockets (cap {CAP})"
            );
        }
        assert_eq!(self.delivered.load(Ordering::SeqCst), n);
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn limits() -> ListenerLimits {
    ListenerLimits::default()
        .max_connections(CAP)
        .header_read_timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(3))
        .body_read_timeout(Duration::from_secs(2))
}

/// `n` clients that each trickle a request head, a byte every `every`, until dropped.
fn slowloris(addr: SocketAddr, n: usize, every: Duration) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                let head = b"POST /webhooks HTTP/1.1\r\nhost: x\r\nx-pad: ".repeat(1000);
                for b in head {
                    if s.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
            })
        })
        .collect()
}

async fn slowloris_heads_are_cut_and_deliveries_served() {
    let r = Receiver::start(limits()).await;
    let threads = adversarial::Resources::now().threads;
    let attackers = slowloris(r.addr, CAP * 3, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.deliver_under_attack(20).await;
    // Past the head deadline every trickling head has been cut, however many bytes came.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        r.stats.evicted() + r.stats.timed_out() >= CAP as u64,
        "{:?}",
        (r.stats.evicted(), r.stats.timed_out())
    );
    assert!(server_sockets(r.addr.port()) <= CAP);
    assert_eq!(
        adversarial::Resources::now().threads,
        threads,
        "no thread per connection"
    );
    for a in attackers {
        a.abort();
    }
    r.stop().await;
}

async fn heads_without_bodies_time_out_and_deliveries_served() {
    let r = Receiver::start(limits()).await;
    let mut silent = Vec::new();
    for _ in 0..CAP * 2 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
            .await
            .unwrap();
        silent.push(s);
    }
    r.deliver_under_attack(20).await;
    // The last of them (not evicted) is answered 408 once its body deadline passes.
    let mut last = silent.pop().unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), last.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    drop(silent);
    r.stop().await;
}

async fn thousands_of_silent_connections() {
    let r = Receiver::start(limits()).await;
    let threads = adversarial::Resources::now().threads;
    let flood = fd_headroom().saturating_sub(512).min(10_000);
    assert!(
        flood >= CAP * 4,
        "not enough descriptors for a flood ({flood})"
    );
    let mut conns = Vec::with_capacity(flood);
    for _ in 0..flood {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(r.addr)).await {
            Ok(Ok(s)) => conns.push(s),
            _ => break,
        }
        if conns.len() % 1000 == 0 {
            let held = server_sockets(r.addr.port());
            assert!(held <= CAP + 1, "the server holds {held} sockets");
        }
    }
    assert!(
        conns.len() >= CAP * 4,
        "only {} connections opened",
        conns.len()
    );
    r.deliver_under_attack(20).await;
    let closed = (r.stats.evicted() + r.stats.timed_out()) as usize;
    assert!(
        closed >= conns.len() - CAP,
        "{closed} closed of {}",
        conns.len()
    );
    assert_eq!(adversarial::Resources::now().threads, threads);
    drop(conns);
    r.stop().await;
}

/// Send raw bytes on a fresh connection, return everything the server answers until it closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn oversized_heads_pipelines_and_idle_keepalives() {
    let r = Receiver::start(limits().max_requests_per_connection(3)).await;
    // A head far past the header cap: refused, connection closed.
    let mut huge = b"POST /webhooks HTTP/1.1\r\nhost: x\r\n".to_vec();
    huge.extend(format!("x-big: {}\r\n\r\n", "a".repeat(200_000)).as_bytes());
    let answer = exchange(r.addr, &huge).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );
    // Too many header fields.
    let mut many = b"POST /webhooks HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..500 {
        many.extend(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    let answer = exchange(r.addr, &many).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );
    // Five pipelined requests: three answers, the third closing the connection.
    let one = b"POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
    let answer = exchange(r.addr, &one.repeat(5)).await;
    assert_eq!(answer.matches("HTTP/1.1 401").count(), 3, "{answer}");
    assert!(answer.to_lowercase().contains("connection: close"));
    // A keep-alive connection left idle is closed at the idle deadline.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(one).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open"
    );
    assert!(r.stats.timed_out() >= 1);
    r.stop().await;
}

async fn the_emulator_under_the_same_attacks() {
    let emu = Emulator::start(
        EmulatorConfig::default().listener_limits(
            EmulatorConfig::default_listener_limits()
                .max_connections(CAP)
                .header_read_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .unwrap();
    let env = emu.add_environment("env_adv", "adv").unwrap();
    let sid = emu
        .create_session(&env.id, Script::new(vec![], ScriptEnd::Idle))
        .unwrap();
    let addr = emu.addr();
    let attackers = slowloris(addr, CAP * 2, Duration::from_millis(100));
    let flood = fd_headroom().saturating_sub(512).min(2_000);
    let mut silent = Vec::new();
    for _ in 0..flood {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => silent.push(s),
            _ => break,
        }
    }
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .request_timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
    .unwrap();
    let session = client.session(sid.clone(), Credential::api_key(emu.api_key()));
    for _ in 0..20 {
        let s = session
            .get()
            .await
            .expect("the emulator answers during the attack");
        assert_eq!(s.id.as_str(), sid);
        let held = server_sockets(addr.port());
        assert!(held <= CAP + 1, "the emulator holds {held} sockets");
    }
    for a in attackers {
        a.abort();
    }
    drop(silent);
    emu.shutdown().await;
}
