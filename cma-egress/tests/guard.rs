//! Never a path around the proxy: IP literals, the metadata address, DNS rebinding, the host's
//! own addresses — refused even when a policy allows every host, unless a route names them.

mod support;

use std::net::IpAddr;

use cma_egress::policy::Verdict;
use cma_egress::{EgressErrorKind, SandboxIdentity, SessionContext};
use serde_json::json;
use support::*;

/// Allow every host on every port: only the address guard stands in the way.
fn open_policy(_: Ports) -> cma_egress::PolicySelector {
    one_policy(json!([{"type": "allow", "host": "*:*"}]))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn internal_addresses_are_refused_by_literal_and_by_name() {
    let h = Harness::new(open_policy).await;
    let live = h.ports.http;
    h.resolver.insert("loopback.test", vec![ip("127.0.0.1")]);
    h.resolver
        .insert("metadata.test", vec![ip("169.254.169.254")]);
    h.resolver
        .insert("mapped.test", vec![ip("::ffff:127.0.0.1")]);
    h.resolver.insert("nat64.test", vec![ip("64:ff9b::7f00:1")]);
    h.resolver.insert("private.test", vec![ip("10.1.2.3")]);
    // One internal answer among public ones refuses the name (no connection is attempted).
    h.resolver
        .insert("mixed.test", vec![ip("8.8.8.8"), ip("127.0.0.1")]);
    let mut c = h.forward_conn().await;
    let urls = [
        format!("http://127.0.0.1:{live}/echo"),
        format!("http://[::ffff:127.0.0.1]:{live}/echo"),
        format!("http://[::1]:{live}/echo"),
        format!("http://localhost.:{live}/echo"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        format!("http://loopback.test:{live}/echo"),
        "http://metadata.test/".to_owned(),
        format!("http://mapped.test:{live}/"),
        format!("http://nat64.test:{live}/"),
        "http://private.test/".to_owned(),
        format!("http://mixed.test:{live}/"),
    ];
    for url in &urls {
        let r = c.get(url, &[]).await;
        // `localhost.` is not in the test resolver: it fails to resolve (502), never reaching
        // the system resolver's loopback answer.
        let want = if url.contains("localhost") { 502 } else { 403 };
        assert_eq!(
            r.status,
            want,
            "{url}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(
        h.http_up.hits(),
        0,
        "no request reached the live loopback server"
    );
    let records = h.wait_audit(urls.len()).await;
    let refused = records
        .iter()
        .filter(|r| r.verdict == Verdict::Deny)
        .count();
    assert_eq!(refused, urls.len() - 1);
    let reason = records[4].reason.as_deref().unwrap();
    assert!(reason.contains("link-local"), "{reason}");
}

#[tokio::test]
async fn dns_rebinding_gains_nothing() {
    let h = Harness::new(open_policy).await;
    let live = h.ports.http;
    // First answer internal, then "public": each connection resolves and checks afresh; the
    // internal answer is refused and the second connection goes to the address just checked.
    h.resolver.insert_sequence(
        "rebind.test",
        vec![vec![ip("127.0.0.1")], vec![ip("192.0.2.10")]],
    );
    let mut c = h.forward_conn().await;
    let r = c.get(&format!("http://rebind.test:{live}/"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(h.resolver.lookups("rebind.test"), 1);
    // 192.0.2.0/24 is documentation space: refused as well (and never dialled).
    let r = c.get(&format!("http://rebind.test:{live}/"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(h.resolver.lookups("rebind.test"), 2);
    assert_eq!(h.http_up.hits(), 0);
}

#[tokio::test]
async fn the_hosts_own_addresses_are_refused() {
    let guard = cma_egress::addr::AddressGuard::default();
    guard.add_host_addresses([ip("203.0.114.7")]);
    assert!(guard.check(ip("203.0.114.7")).is_refused());
    let store = std::sync::Arc::new(cma_egress::PolicyStore::new(open_policy(Ports {
        http: 0,
        https: 0,
    })));
    let proxy = cma_egress::EgressProxy::builder(store)
        .address_guard(guard)
        .build()
        .unwrap();
    let client = proxy.in_process(SandboxIdentity::new("sbx", SessionContext::new("s")));
    let e = client
        .send(request("GET", "http://203.0.114.7/", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::ForbiddenAddress);
    assert!(e.to_string().contains("proxy host"), "{e}");
}

#[tokio::test]
async fn a_route_is_the_one_way_to_an_internal_address() {
    let h = Harness::new(|p| {
        one_policy(json!([
            {"type": "allow", "host": "internal.test,down.test"},
            {"type": "route", "host": "internal.test", "upstream": format!("http://127.0.0.1:{}", p.http)},
            {"type": "route", "host": "down.test", "upstream": "http://127.0.0.1:1"},
        ]))
    })
    .await;
    let mut c = h.forward_conn().await;
    assert_eq!(c.get("http://internal.test/echo", &[]).await.status, 200);
    // The same server by its address is still refused (and not allowed by the policy either).
    let r = c
        .get(&format!("http://127.0.0.1:{}/echo", h.ports.http), &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(h.http_up.hits(), 1);
    // A route that fails does not tell the sandbox where it points.
    let r = c.get("http://down.test/", &[]).await;
    assert_eq!(r.status, 502);
    let reason = r.json()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("the route for down.test"), "{reason}");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "{reason}"
    );
}
