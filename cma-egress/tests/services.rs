//! The in-process entry point (the isolate backend's `fetch`), custom services, and the example
//! policy shipped with the repository.

mod support;

use cma_egress::policy::{ConnectDecision, PathView, RequestFacts};
use cma_egress::proxy::{BoxError, EgressBody, full};
use cma_egress::{
    AuditVia, CustomOutcome, CustomServices, EgressErrorKind, PolicySelector, SandboxIdentity,
    SessionContext,
};
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::json;
use support::*;

fn routed(p: Ports) -> PolicySelector {
    one_policy(json!([
        {"type": "allow", "host": "api.test,secure.test,custom.test"},
        {"type": "route", "host": "api.test,custom.test", "upstream": format!("http://127.0.0.1:{}", p.http)},
        {"type": "route", "host": "secure.test", "upstream": format!("https://127.0.0.1:{}", p.https),
         "server_name": "api.test"},
        {"type": "inject", "host": "secure.test", "header": "x-api-key", "secret": "KEY"},
        {"type": "custom", "host": "custom.test", "service": "sign", "path_prefix": "/sign"},
        {"type": "custom", "host": "custom.test", "service": "stub", "path_prefix": "/stub"},
        {"type": "custom", "host": "custom.test", "service": "escape", "path_prefix": "/escape"},
        {"type": "custom", "host": "custom.test", "service": "ghost", "path_prefix": "/ghost"},
    ]))
}

fn services() -> CustomServices {
    let mut s = CustomServices::new();
    s.register(
        "sign",
        tower::service_fn(|mut req: Request<EgressBody>| async move {
            req.headers_mut()
                .insert("x-signed", "by-custom-service".parse().unwrap());
            *req.uri_mut() = "/echo/signed".parse().unwrap();
            Ok::<_, BoxError>(CustomOutcome::Forward(req))
        }),
    )
    .unwrap();
    s.register(
        "stub",
        tower::service_fn(|_req: Request<EgressBody>| async move {
            Ok::<_, BoxError>(CustomOutcome::Respond(Response::new(full(
                "from the custom service",
            ))))
        }),
    )
    .unwrap();
    s.register(
        "escape",
        tower::service_fn(|mut req: Request<EgressBody>| async move {
            *req.uri_mut() = "http://elsewhere.test/".parse().unwrap();
            Ok::<_, BoxError>(CustomOutcome::Forward(req))
        }),
    )
    .unwrap();
    s
}

async fn body_text(resp: Response<EgressBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn in_process_requests_go_through_the_same_policy() {
    let h = Harness::new(routed).await;
    let client = h.proxy.in_process(SandboxIdentity::new(
        "sbx_iso",
        SessionContext::new("sesn_iso"),
    ));
    let resp = client
        .send(request(
            "GET",
            "http://api.test/echo",
            &[("host", "spoofed.test")],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(echo["headers"]["host"], "api.test");
    // HTTPS through a route, with an injection.
    let resp = client
        .send(request(
            "GET",
            "https://secure.test/echo",
            &[("x-api-key", "made-up")],
        ))
        .await
        .unwrap();
    let echo: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(echo["headers"]["x-api-key"], OTHER_SECRET_VALUE);
    // Refusals are typed errors with a reason for the script.
    let e = client
        .send(request("GET", "https://example.com/", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::Denied);
    assert!(e.to_string().contains("example.com"), "{e}");
    let e = client
        .send(request("GET", "ftp://api.test/", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::Protocol);
    let records = h.wait_audit(4).await;
    assert!(records.iter().all(|r| r.via == AuditVia::InProcess));
    assert!(
        records
            .iter()
            .all(|r| r.session_id.as_deref() == Some("sesn_iso"))
    );
    assert!(!h.audit_json().contains(OTHER_SECRET_VALUE));
}

#[tokio::test]
async fn custom_services_rewrite_answer_or_are_refused() {
    let h = Harness::with_custom(routed, services()).await;
    let mut c = h.forward_conn().await;
    let r = c.get("http://custom.test/sign/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/echo/signed");
    assert_eq!(r.echoed("x-signed").unwrap(), "by-custom-service");
    let r = c.get("http://custom.test/stub", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"from the custom service");
    let r = c.get("http://custom.test/escape", &[]).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("changed the destination")
    );
    let r = c.get("http://custom.test/ghost", &[]).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("not registered")
    );
    // Only the rewritten request reached the upstream.
    assert_eq!(h.http_up.hits(), 1);
}

#[test]
fn the_example_registry_policy_parses_and_splices_registries() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/egress/package-registries.json"
    );
    let json = std::fs::read(path).unwrap();
    let selector = PolicySelector::from_json(&json).unwrap();
    let policy = selector.select(&SessionContext::new("any")).policy;
    assert_eq!(policy.id(), "pol_package_registries");
    let host = |s: &str| cma_egress::host::Host::parse(s).unwrap();
    for allowed in [
        "pypi.org",
        "files.pythonhosted.org",
        "registry.npmjs.org",
        "crates.io",
        "static.crates.io",
        "index.crates.io",
        "github.com",
        "codeload.github.com",
        "deb.debian.org",
    ] {
        assert!(
            matches!(
                policy.decide_connect(&host(allowed), 443),
                ConnectDecision::Splice { .. }
            ),
            "{allowed}"
        );
        let path = PathView::new("/");
        let facts = RequestFacts {
            host: &host(allowed),
            port: 80,
            method: "GET",
            path: &path,
        };
        assert!(policy.decide(&facts).is_allowed(), "{allowed}");
    }
    for denied in [
        "evil-pypi.org",
        "pypi.org.evil.com",
        "api.github.com",
        "example.com",
    ] {
        assert!(
            matches!(
                policy.decide_connect(&host(denied), 443),
                ConnectDecision::Refuse { .. }
            ),
            "{denied}"
        );
    }
    assert!(matches!(
        policy.decide_connect(&host("github.com"), 22),
        ConnectDecision::Refuse { .. }
    ));
}

/// Every way of failing to resolve what a request needs refuses it, and nothing reaches the
/// upstream.
#[tokio::test]
async fn every_resolution_failure_refuses() {
    use async_trait::async_trait;
    use cma_egress::secrets::{Secret, SecretName, SecretStore, SecretStores};

    struct BrokenStore;
    #[async_trait]
    impl SecretStore for BrokenStore {
        async fn get(&self, _: &SecretName) -> cma_egress::Result<Option<Secret>> {
            Err(cma_egress::EgressError::new(
                EgressErrorKind::Io,
                "store down",
            ))
        }
    }

    let up = start_upstream(None).await;
    let policy = |rules: serde_json::Value| {
        let mut all = vec![
            json!({"type": "allow", "host": "api.test"}),
            json!({"type": "route", "host": "api.test", "upstream": format!("http://{}", up.addr)}),
        ];
        all.extend(rules.as_array().cloned().unwrap_or_default());
        std::sync::Arc::new(cma_egress::PolicyStore::new(one_policy(json!(all))))
    };
    let missing_secret = json!([{"type": "inject", "host": "api.test", "header": "x", "secret": "MISSING", "allow_plain_http": true}]);
    let store_secret = json!([{"type": "inject", "host": "api.test", "header": "x", "secret": "ANY", "allow_plain_http": true}]);
    let unknown_service = json!([{"type": "custom", "host": "api.test", "service": "nobody"}]);
    let cases: Vec<(&str, cma_egress::EgressProxy, EgressErrorKind)> = vec![
        (
            "policy source down",
            cma_egress::EgressProxy::builder(cma_egress::select::UnavailablePolicySource)
                .build()
                .unwrap(),
            EgressErrorKind::PolicyResolution,
        ),
        (
            "secret missing",
            cma_egress::EgressProxy::builder(policy(missing_secret))
                .build()
                .unwrap(),
            EgressErrorKind::SecretUnavailable,
        ),
        (
            "secret store down",
            cma_egress::EgressProxy::builder(policy(store_secret))
                .secrets(SecretStores::new().with(BrokenStore))
                .build()
                .unwrap(),
            EgressErrorKind::SecretUnavailable,
        ),
        (
            "custom service unknown",
            cma_egress::EgressProxy::builder(policy(unknown_service))
                .build()
                .unwrap(),
            EgressErrorKind::Denied,
        ),
    ];
    for (what, proxy, kind) in cases {
        let client = proxy.in_process(SandboxIdentity::new("sbx", SessionContext::new("s")));
        let e = client
            .send(request("GET", "http://api.test/echo", &[]))
            .await
            .expect_err(what);
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert!(e.kind().is_refusal(), "{what}");
        assert_eq!(e.kind().http_status(), 403, "{what}");
    }
    // The name resolution the proxy does itself: a name that does not resolve, and one that
    // resolves to an address the guard refuses (the upstream's own loopback address), refuse
    // too; neither falls back to anything.
    let resolver = || {
        let r = cma_egress::resolve::StaticResolver::new();
        r.insert("rebound.test", vec![up.addr.ip()]);
        r
    };
    let public = json!([{"type": "allow",
        "host": format!("unresolvable.test, rebound.test:{}", up.addr.port())}]);
    for (what, url, kind) in [
        (
            "name does not resolve",
            "http://unresolvable.test/echo",
            EgressErrorKind::Resolve,
        ),
        (
            "name resolves to a refused address",
            &*format!("http://rebound.test:{}/echo", up.addr.port()),
            EgressErrorKind::ForbiddenAddress,
        ),
    ] {
        let proxy = cma_egress::EgressProxy::builder(policy(public.clone()))
            .resolver(resolver())
            .build()
            .unwrap();
        let e = proxy
            .in_process(SandboxIdentity::new("sbx", SessionContext::new("s")))
            .send(request("GET", url, &[]))
            .await
            .expect_err(what);
        assert_eq!(e.kind(), kind, "{what}: {e}");
    }
    assert_eq!(up.hits(), 0);
    // The same policy with everything available goes through.
    let ok = cma_egress::EgressProxy::builder(policy(json!([])))
        .build()
        .unwrap();
    let resp = ok
        .in_process(SandboxIdentity::new("sbx", SessionContext::new("s")))
        .send(request("GET", "http://api.test/echo", &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
