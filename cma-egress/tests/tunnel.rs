//! `CONNECT` tunnels: refusals, interception with the sandbox CA (HTTP/1.1 and HTTP/2),
//! injection inside TLS, server-name and Host checks, splicing through `tcp://` routes.

mod support;

use cma_egress::policy::Verdict;
use cma_egress::{AuditVia, SessionContext};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `api.test` over TLS, intercepted (an injection), routed to the local HTTPS upstream.
fn intercepted(p: Ports) -> cma_egress::PolicySelector {
    one_policy(json!([
        {"type": "allow", "host": "api.test"},
        {"type": "route", "host": "api.test", "upstream": format!("https://127.0.0.1:{}", p.https),
         "server_name": "api.test"},
        {"type": "inject", "host": "api.test", "header": "authorization", "secret": "TOKEN",
         "value": "Bearer {secret}"},
        {"type": "deny", "host": "api.test", "methods": ["DELETE"]},
        {"type": "allow", "host": "splice.test"},
        {"type": "route", "host": "splice.test", "upstream": format!("tcp://127.0.0.1:{}", p.https)},
    ]))
}

#[tokio::test]
async fn injection_reaches_the_upstream_inside_tls_with_the_header_replaced() {
    let h = Harness::new(intercepted).await;
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    let r = c
        .get(
            "/echo",
            &[
                ("host", "api.test"),
                ("authorization", "Bearer from-the-sandbox"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("authorization").unwrap(),
        format!("Bearer {SECRET_VALUE}")
    );
    // Method conditions are applied inside the tunnel.
    let r = c
        .send(request("DELETE", "/echo", &[("host", "api.test")]))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(h.https_up.hits(), 1);
    let records = h.wait_audit(2).await;
    let ok = &records[0];
    assert_eq!(ok.via, AuditVia::Tunnel);
    assert!(ok.intercepted);
    assert_eq!(ok.scheme, Some("https"));
    assert_eq!(ok.injected, ["authorization"]);
    assert_eq!(records[1].rule.map(|r| r.index), Some(3));
    assert!(!h.audit_json().contains(SECRET_VALUE));
    assert_eq!(h.ca.cached_leaves(), 1);
}

#[tokio::test]
async fn http2_works_on_both_sides_of_an_intercepted_tunnel() {
    let h = Harness::new(intercepted).await;
    let mut c = h.tunnel_client("api.test:443", "api.test", true).await;
    for _ in 0..3 {
        let r = c.get("https://api.test/echo", &[]).await;
        assert_eq!(r.status, 200);
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
        assert_eq!(echo["authority"], "api.test");
        assert_eq!(
            r.echoed("authorization").unwrap(),
            format!("Bearer {SECRET_VALUE}")
        );
    }
    // A stream naming another authority in the same tunnel is refused.
    let r = c.get("https://other.test/echo", &[]).await;
    assert_eq!(r.status, 421);
    assert_eq!(h.https_up.hits(), 3);
}

#[tokio::test]
async fn a_server_name_other_than_the_connect_target_is_refused() {
    let h = Harness::new(intercepted).await;
    // Intercepted: the proxy aborts the handshake.
    let res = h
        .tunnel_tls("api.test:443", "evil.test", &[b"http/1.1"])
        .await;
    assert!(res.is_err(), "handshake must fail");
    // Spliced: the ClientHello is read and refused before anything reaches the upstream.
    let (status, stream) = h.connect("splice.test:443").await;
    assert_eq!(status, 200);
    let res = tls_client(stream, "evil.test", h.pki.ca_der.clone(), &[b"http/1.1"]).await;
    assert!(res.is_err(), "handshake must fail");
    assert_eq!(h.https_up.hits(), 0);
    let records = h.wait_audit(2).await;
    assert!(
        records.iter().all(|r| r.verdict == Verdict::Deny),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.reason.as_deref().unwrap_or("").contains("evil.test"))
    );
}

#[tokio::test]
async fn a_host_header_other_than_the_connect_target_is_refused() {
    let h = Harness::new(intercepted).await;
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    let r = c.get("/echo", &[("host", "other.test")]).await;
    assert_eq!(r.status, 421);
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    let r = c
        .get("http://other.test/echo", &[("host", "api.test")])
        .await;
    assert_eq!(r.status, 421);
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    let r = c.get("/echo", &[("host", "api.test:8443")]).await;
    assert_eq!(r.status, 421);
    // No CONNECT inside a tunnel.
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    let r = c
        .send(request(
            "CONNECT",
            "api.test:443",
            &[("host", "api.test:443")],
        ))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(h.https_up.hits(), 0);
}

#[tokio::test]
async fn connect_refusals() {
    let h = Harness::new(intercepted).await;
    // A port the allow rule does not cover (no port = 80/443 only).
    let (status, _) = h.connect("api.test:22").await;
    assert_eq!(status, 403);
    // A host no rule allows.
    let (status, _) = h.connect("github.com:443").await;
    assert_eq!(status, 403);
    // The metadata address and loopback, even by IP literal.
    for target in ["169.254.169.254:443", "127.0.0.1:443", "[::1]:443"] {
        let (status, _) = h.connect(target).await;
        assert_eq!(status, 403, "{target}");
    }
    // Malformed request lines are refused by the HTTP parser before any decision.
    let (status, _) = h.connect("not a host:443").await;
    assert_eq!(status, 400);
    let (status, _) = h.connect("api.test").await;
    assert_eq!(status, 400);
    let records = h.wait_audit(6).await;
    assert_eq!(records.len(), 6);
    assert!(
        records
            .iter()
            .all(|r| r.verdict == Verdict::Deny && r.via == AuditVia::Connect)
    );
}

#[tokio::test]
async fn tcp_routes_splice_tls_end_to_end() {
    let h = Harness::new(intercepted).await;
    let (status, stream) = h.connect("splice.test:443").await;
    assert_eq!(status, 200);
    // The sandbox talks TLS to the upstream itself (the upstream's certificate, not the CA's).
    let tls = tls_client(stream, "splice.test", h.pki.ca_der.clone(), &[b"http/1.1"])
        .await
        .unwrap();
    let mut c = Client::h1(tls).await;
    let r = c
        .get(
            "/echo",
            &[("host", "splice.test"), ("authorization", "sandbox-own")],
        )
        .await;
    assert_eq!(r.status, 200);
    // Nothing was injected: the proxy never saw inside.
    assert_eq!(r.echoed("authorization").unwrap(), "sandbox-own");
    drop(c);
    let records = h.wait_audit(1).await;
    let t = &records[0];
    assert_eq!(t.via, AuditVia::Connect);
    assert_eq!(t.verdict, Verdict::Allow);
    assert!(!t.intercepted);
    assert!(t.bytes_in > 0 && t.bytes_out > 0);
}

#[tokio::test]
async fn policy_edits_close_spliced_tunnels_and_apply_to_the_next_request() {
    let h = Harness::new(intercepted).await;
    let (status, stream) = h.connect("splice.test:443").await;
    assert_eq!(status, 200);
    let mut spliced = tls_client(stream, "splice.test", h.pki.ca_der.clone(), &[b"http/1.1"])
        .await
        .unwrap();
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 200);

    h.store
        .replace(one_policy(json!([{"type": "deny", "host": "*"}])));
    // The kept-alive intercepted tunnel: the next request is refused.
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 403);
    // The spliced tunnel: closed by the proxy.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), spliced.read(&mut buf))
        .await
        .expect("the tunnel must be closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn unregistering_a_sandbox_cuts_its_connections() {
    let h = Harness::new(intercepted).await;
    let mut c = h.tunnel_client("api.test:443", "api.test", false).await;
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 200);
    assert!(h.proxy.registry().unregister("127.0.0.1".parse().unwrap()));
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 403);
    // New connections from an unknown peer are closed without an answer.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let _ = s
        .write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
    // Another sandbox registered at the address gets its own identity, never the old one's.
    h.proxy
        .registry()
        .register(
            "127.0.0.1".parse().unwrap(),
            cma_egress::SandboxIdentity::new("sbx_other", SessionContext::new("sesn_other"))
                .with_ca(h.ca.clone()),
        )
        .unwrap();
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 403);
    let mut c2 = h.tunnel_client("api.test:443", "api.test", false).await;
    assert_eq!(c2.get("/echo", &[("host", "api.test")]).await.status, 200);
    let records = h.wait_audit(4).await;
    assert_eq!(
        records.last().unwrap().session_id.as_deref(),
        Some("sesn_other")
    );
}

#[tokio::test]
async fn plain_http_inside_a_tunnel_is_decided_too() {
    let h = Harness::new(|p| {
        one_policy(json!([
            {"type": "allow", "host": "api.test"},
            {"type": "route", "host": "api.test", "upstream": format!("http://127.0.0.1:{}", p.http)},
            {"type": "deny", "host": "api.test", "path_prefix": "/admin"},
        ]))
    })
    .await;
    let (status, stream) = h.connect("api.test:80").await;
    assert_eq!(status, 200);
    let mut c = Client::h1(stream).await;
    assert_eq!(c.get("/echo", &[("host", "api.test")]).await.status, 200);
    assert_eq!(c.get("/admin/x", &[("host", "api.test")]).await.status, 403);
    assert_eq!(h.http_up.hits(), 1);
}

#[tokio::test]
async fn one_sandbox_cannot_take_every_connection() {
    let mut config = cma_egress::ProxyConfig::default();
    config.max_connections_per_sandbox = 2;
    let store = std::sync::Arc::new(cma_egress::PolicyStore::new(one_policy(json!([]))));
    let proxy = cma_egress::EgressProxy::builder(store)
        .config(config)
        .build()
        .unwrap();
    proxy
        .registry()
        .register(
            "127.0.0.1".parse().unwrap(),
            cma_egress::SandboxIdentity::new("sbx", SessionContext::new("s")),
        )
        .unwrap();
    let listening = proxy.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listening.local_addr();
    let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The accept queue is first in, first out: these two are admitted, the third is closed.
    let mut probe = Client::h1(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    let third = probe.try_send(request("GET", "http://x.test/", &[])).await;
    assert!(
        third.is_err(),
        "the third connection must be closed: {third:?}"
    );
    drop((_a, _b));
    // Once one closes, the sandbox gets a connection again.
    let mut ok = None;
    for _ in 0..100 {
        let mut c = Client::h1(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        if let Ok(r) = c.try_send(request("GET", "http://x.test/", &[])).await {
            ok = Some(r.status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ok, Some(http::StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn websocket_upgrades_work_inside_an_intercepted_tunnel() {
    let h = Harness::new(intercepted).await;
    let mut tls = h
        .tunnel_tls("api.test:443", "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"over-tls").await.unwrap();
    let mut buf = [0u8; 8];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over-tls");
    drop(tls);
    let records = h.wait_audit(1).await;
    assert!(records[0].upgraded && records[0].intercepted);
    assert_eq!(records[0].injected, ["authorization"]);
}
