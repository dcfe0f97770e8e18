//! The forward proxy with absolute-form requests (`GET http://host/…`): decisions per request,
//! injection, placeholders, hop-by-hop handling, redirects, upgrades, audit.

mod support;

use cma_egress::EgressErrorKind;
use cma_egress::policy::Verdict;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `api.test` and `other.test` are allowed and routed to the local HTTP upstream.
fn routed(p: Ports, extra: serde_json::Value) -> cma_egress::PolicySelector {
    let mut rules = vec![
        json!({"type": "allow", "host": "api.test,other.test,ws.test"}),
        json!({"type": "route", "host": "api.test,other.test,ws.test", "upstream": format!("http://127.0.0.1:{}", p.http)}),
    ];
    rules.extend(extra.as_array().cloned().unwrap_or_default());
    one_policy(json!(rules))
}

#[tokio::test]
async fn allowed_and_denied_requests_on_one_kept_alive_connection() {
    let h = Harness::new(|p| routed(p, json!([]))).await;
    let mut c = h.forward_conn().await;
    let r = c.get("http://api.test/echo?api_key=hidden", &[]).await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["headers"]["host"], "api.test");
    // The next request on the same connection names another host: decided on its own.
    let r = c.get("http://denied.test/", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-cma-egress"], "denied");
    let body = r.json();
    assert_eq!(body["error"], "egress denied");
    assert!(
        body["reason"].as_str().unwrap().contains("denied.test"),
        "{body}"
    );
    let r = c.get("http://other.test/again", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.http_up.hits(), 2);

    let records = h.wait_audit(3).await;
    assert_eq!(records.len(), 3);
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.host.as_str(), r.verdict, r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("api.test", Verdict::Allow, Some(200)),
            ("denied.test", Verdict::Deny, Some(403)),
            ("other.test", Verdict::Allow, Some(200)),
        ]
    );
    let first = &records[0];
    assert_eq!(first.session_id.as_deref(), Some("sesn_test"));
    assert_eq!(first.sandbox_id.as_deref(), Some("sbx_test"));
    assert_eq!(first.policy_id.as_deref(), Some("pol_test"));
    assert!(first.fingerprint.as_deref().unwrap().starts_with("fp1-"));
    assert_eq!(first.path.as_deref(), Some("/echo"));
    assert!(first.had_query);
    assert!(
        !h.audit_json().contains("hidden"),
        "query strings never reach the audit log"
    );
    assert_eq!(first.rule.map(|r| r.index), Some(0));
    assert!(first.bytes_out > 0);
    assert!(records[1].rule.is_none());
}

#[tokio::test]
async fn injection_over_plain_http_needs_an_explicit_opt_in() {
    let h = Harness::new(|p| {
        routed(
            p,
            json!([
                {"type": "inject", "host": "api.test", "header": "authorization", "secret": "TOKEN",
                 "value": "Bearer {secret}", "allow_plain_http": true},
                {"type": "inject", "host": "other.test", "header": "authorization", "secret": "TOKEN"},
            ]),
        )
    })
    .await;
    let mut c = h.forward_conn().await;
    let r = c
        .get(
            "http://api.test/echo",
            &[("authorization", "Bearer sandbox-made-this-up")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("authorization").unwrap(),
        format!("Bearer {SECRET_VALUE}")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("sandbox-made-this-up"));
    let r = c.get("http://other.test/echo", &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["reason"].as_str().unwrap().contains("plain http"));
    // TRACE would reflect the injected header: refused.
    let r = c.send(request("TRACE", "http://api.test/echo", &[])).await;
    assert_eq!(r.status, 403);
    assert_eq!(h.http_up.hits(), 1);
    let records = h.wait_audit(3).await;
    assert_eq!(records[0].injected, ["authorization"]);
    assert!(!h.audit_json().contains(SECRET_VALUE));
}

#[tokio::test]
async fn placeholders_are_filled_only_where_a_rule_permits_them() {
    let h = Harness::new(|p| {
        routed(
            p,
            json!([{"type": "placeholder", "host": "api.test", "secret": "KEY", "allow_plain_http": true}]),
        )
    })
    .await;
    let mut c = h.forward_conn().await;
    let r = c
        .get(
            "http://api.test/echo",
            &[
                ("x-api-key", "cma-secret:KEY"),
                ("x-other", "k=cma-secret:KEY;"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-api-key").unwrap(), OTHER_SECRET_VALUE);
    assert_eq!(
        r.echoed("x-other").unwrap(),
        format!("k={OTHER_SECRET_VALUE};")
    );
    // The same placeholder to a host without the rule: refused, never sent.
    let r = c
        .get("http://other.test/echo", &[("x-api-key", "cma-secret:KEY")])
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("placeholder for secret KEY")
    );
    // A secret no rule mentions, even to the permitted host.
    let r = c
        .get("http://api.test/echo", &[("x-api-key", "cma-secret:TOKEN")])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(h.http_up.hits(), 1);
    let records = h.wait_audit(3).await;
    assert_eq!(records[0].injected.len(), 2);
    assert!(!h.audit_json().contains(OTHER_SECRET_VALUE));
    assert!(!h.audit_json().contains(SECRET_VALUE));
}

#[tokio::test]
async fn missing_secrets_and_unavailable_policies_fail_closed() {
    let h = Harness::new(|p| {
        routed(
            p,
            json!([{"type": "inject", "host": "api.test", "header": "x-key", "secret": "NOT_THERE",
                    "allow_plain_http": true}]),
        )
    })
    .await;
    let mut c = h.forward_conn().await;
    let r = c.get("http://api.test/echo", &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["reason"].as_str().unwrap().contains("NOT_THERE"));
    assert_eq!(h.http_up.hits(), 0);

    // A policy source that cannot answer refuses everything.
    let proxy = cma_egress::EgressProxy::builder(cma_egress::select::UnavailablePolicySource)
        .build()
        .unwrap();
    let client = proxy.in_process(cma_egress::SandboxIdentity::new(
        "sbx",
        cma_egress::SessionContext::new("s"),
    ));
    let e = client
        .send(request("GET", "http://api.test/", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::PolicyResolution);
    assert!(e.kind().is_refusal());
}

#[tokio::test]
async fn hop_by_hop_and_proxy_headers_never_reach_the_upstream() {
    let h = Harness::new(|p| routed(p, json!([]))).await;
    let mut c = h.forward_conn().await;
    let r = c
        .get(
            "http://api.test/echo",
            &[
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("proxy-connection", "keep-alive"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("upgrade", "h2c"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].clone();
    for gone in [
        "proxy-authorization",
        "proxy-connection",
        "x-hop",
        "upgrade",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} leaked: {headers}");
    }
    assert_eq!(headers["x-kept"], "yes");
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let h = Harness::new(|p| routed(p, json!([]))).await;
    let mut c = h.forward_conn().await;
    let r = c.get("http://api.test/redirect", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://denied.test/landing");
    assert_eq!(h.http_up.hits(), 1);
    // Following it is the sandbox's own, separately decided request.
    let r = c.get("http://denied.test/landing", &[]).await;
    assert_eq!(r.status, 403);
    let records = h.wait_audit(2).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].status, Some(302));
}

#[tokio::test]
async fn malformed_and_origin_form_requests_are_refused() {
    let h = Harness::new(|p| routed(p, json!([]))).await;
    let mut c = h.forward_conn().await;
    let r = c.get("/echo", &[("host", "api.test")]).await;
    assert_eq!(r.status, 400);
    let r = c.get("http://user:pw@api.test/", &[]).await;
    assert_eq!(r.status, 400);
    let r = c.get("http://2130706433/", &[]).await;
    assert_eq!(r.status, 400);
    let r = c.get("http://0177.0.0.1/", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(h.http_up.hits(), 0);
    assert_eq!(h.wait_audit(4).await.len(), 4);
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let h = Harness::new(|p| routed(p, json!([]))).await;
    let mut c = h.forward_conn().await;
    let big = "x".repeat(80 * 1024);
    let r = c
        .try_send(request("GET", "http://api.test/echo", &[("x-big", &big)]))
        .await;
    // Either a 431 or a closed connection: both refuse.
    if let Ok(reply) = r {
        assert_eq!(reply.status, 431);
    }
    assert_eq!(h.http_up.hits(), 0);
}

#[tokio::test]
async fn websocket_upgrades_are_decided_then_relayed() {
    let h = Harness::new(|p| {
        routed(
            p,
            json!([{"type": "deny", "host": "ws.test", "path_prefix": "/ws-denied"}]),
        )
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET http://ws.test/ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping-bytes").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping-bytes");
    drop(s);
    // The record is emitted when the relay ends, with the relayed bytes.
    let records = h.wait_audit(1).await;
    let ws = &records[0];
    assert!(ws.upgraded);
    assert_eq!(ws.status, Some(101));
    assert_eq!((ws.bytes_in, ws.bytes_out), (10, 10));

    // A denied upgrade request never reaches the upstream.
    let before = h.http_up.hits();
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET http://ws.test/ws-denied HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(h.http_up.hits(), before);
}
