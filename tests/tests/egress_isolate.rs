//! Egress on the isolate backend: the bypass suite's policy cases through `fetch` in `execute`
//! (the same proxy code, in process), against the same servers in a test network namespace and
//! on loopback, plus the `call_service` tool. Needs root (network namespaces) and python3.

mod egress_support;

use std::sync::Arc;
use std::time::Duration;

use cma_core::control::call_service::call_service_tool;
use cma_core::control::egress::SessionEgress;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{ExecuteRequest, Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::ToolContext;
use egress_support::{World, reached, secret, session, sha256_hex};
use serde_json::json;

struct Bed {
    world: World,
    proxy: egress_support::Proxy,
    egress: Arc<SessionEgress>,
    backend: IsolateBackend,
    a: Arc<dyn Sandbox>,
    b: Arc<dyn Sandbox>,
    _root: tempfile::TempDir,
}

async fn place(egress: &SessionEgress, backend: &IsolateBackend, sid: &str) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new();
    let prepared = egress
        .prepare("isolate", &session(sid, json!({})), &mut spec)
        .unwrap()
        .expect("isolate has egress");
    assert!(
        spec.egress.is_none(),
        "the isolate backend takes no endpoint"
    );
    let sandbox = backend.create(&spec).await.unwrap();
    egress.attach(prepared, sandbox.as_ref()).await.unwrap();
    sandbox
}

async fn bed() -> Bed {
    egress_support::captured_logs();
    let world = World::start();
    let proxy = world.proxy(None);
    let egress = Arc::new(SessionEgress::new(proxy.proxy.clone()));
    egress.in_process_for("isolate");
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_egress(egress.isolate_hook());
    let a = place(&egress, &backend, "sesn_a").await;
    let b = place(&egress, &backend, "sesn_b").await;
    Bed {
        world,
        proxy,
        egress,
        backend,
        a,
        b,
        _root: root,
    }
}

/// `fetch(url, init)` in a script; `status <code> <body>` or `error <message>`. With
/// `follow`, a 3xx is followed once by the script itself (the hook never follows).
async fn fetch(sb: &dyn Sandbox, url: &str, init: serde_json::Value, follow: bool) -> String {
    let code = format!(
        "(async () => {{ try {{ let r = await fetch({url}, {init}); \
           if ({follow} && r.status >= 300 && r.status < 400) r = await fetch(r.headers.location); \
           return 'status ' + r.status + ' ' + await r.text(); }} \
         catch (e) {{ return 'error ' + e.message; }} }})",
        url = serde_json::to_string(url).unwrap(),
    );
    let mut req = ExecuteRequest::new(code);
    req.timeout = Duration::from_secs(30);
    let out = sb.execute(req).await.unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn blocked(out: &str) -> bool {
    out.starts_with("error ") || out.starts_with("status 4") || out.starts_with("status 5")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_cases_hold_for_the_isolate_fetch() {
    let bed = bed().await;
    let w = &bed.world;
    let (api4, api6, host4) = (w.netns.api_v4(), w.netns.api_v6(), w.netns.host_v4());
    let (lo, lo6) = (w.loopback_port(), w.loopback6_port());
    let digest = sha256_hex(secret());
    let a = bed.a.as_ref();

    // Controls.
    for (url, want) in [
        ("https://api.test/control/iso-tls", Some(&digest)),
        ("http://local.test/control/iso-local", Some(&digest)),
        ("https://splice.test/control/iso-splice", None),
        ("http://rebind-lo.test/control/iso-rebind-lo", None),
        ("http://rebind-host.test/control/iso-rebind-host", None),
        ("http://rebind-meta.test/control/iso-rebind-meta", None),
    ] {
        let out = fetch(a, url, json!({}), false).await;
        assert!(out.starts_with("status 200"), "{url}: {out}");
        if let Some(d) = want {
            assert!(
                out.contains(d.as_str()),
                "{url}: the key was not injected: {out}"
            );
        }
    }
    let out = fetch(
        bed.b.as_ref(),
        "http://other.test/control/iso-b",
        json!({}),
        false,
    )
    .await;
    assert!(out.starts_with("status 200"), "{out}");

    let decimal = match api4 {
        std::net::IpAddr::V4(v4) => u32::from(v4),
        std::net::IpAddr::V6(_) => unreachable!(),
    };
    let none = json!({});
    let cases: Vec<(&str, bool, String, serde_json::Value, bool)> = vec![
        (
            "iso-ipv4-literal",
            true,
            format!("http://{api4}/bypass/iso-ipv4-literal"),
            none.clone(),
            false,
        ),
        (
            "iso-ipv4-literal-tls",
            true,
            format!("https://{api4}/bypass/iso-ipv4-literal-tls"),
            none.clone(),
            false,
        ),
        (
            "iso-ipv4-decimal",
            true,
            format!("http://{decimal}/bypass/iso-ipv4-decimal"),
            none.clone(),
            false,
        ),
        (
            "iso-ipv6-literal",
            true,
            format!("http://[{api6}]/bypass/iso-ipv6-literal"),
            none.clone(),
            false,
        ),
        (
            "iso-ipv6-mapped",
            true,
            format!("http://[::ffff:{api4}]/bypass/iso-ipv6-mapped"),
            none.clone(),
            false,
        ),
        (
            "iso-ipv6-loopback",
            true,
            format!("http://[::1]:{lo6}/bypass/iso-ipv6-loopback"),
            none.clone(),
            false,
        ),
        (
            "iso-loopback",
            true,
            format!("http://127.0.0.1:{lo}/bypass/iso-loopback"),
            none.clone(),
            false,
        ),
        (
            "iso-localhost",
            true,
            format!("http://localhost:{lo}/bypass/iso-localhost"),
            none.clone(),
            false,
        ),
        (
            "iso-host-link",
            true,
            format!("http://{host4}/bypass/iso-host-link"),
            none.clone(),
            false,
        ),
        (
            "iso-port",
            true,
            "https://api.test:8443/bypass/iso-port".into(),
            none.clone(),
            false,
        ),
        (
            "iso-http-port",
            true,
            "http://api.test:8080/bypass/iso-http-port".into(),
            none.clone(),
            false,
        ),
        (
            "iso-plain-secret",
            true,
            "http://api.test/bypass/iso-plain-secret".into(),
            none.clone(),
            false,
        ),
        (
            "iso-denied",
            true,
            "https://denied.test/bypass/iso-denied".into(),
            none.clone(),
            false,
        ),
        (
            "iso-host-header",
            true,
            "https://denied.test/bypass/iso-host-header".into(),
            json!({"headers": {"host": "api.test"}}),
            false,
        ),
        (
            "iso-redirect",
            true,
            "https://api.test/redirect?to=https://denied.test/bypass/iso-redirect".into(),
            none.clone(),
            true,
        ),
        (
            "iso-redirect-metadata",
            true,
            "https://api.test/redirect?to=http://169.254.169.254/bypass/iso-redirect-metadata"
                .into(),
            none.clone(),
            true,
        ),
        (
            "iso-rebind-lo",
            true,
            format!("http://rebind-lo.test:{lo}/bypass/iso-rebind-lo"),
            none.clone(),
            false,
        ),
        (
            "iso-rebind-host",
            true,
            "https://rebind-host.test/bypass/iso-rebind-host".into(),
            none.clone(),
            false,
        ),
        (
            "iso-rebind-meta",
            true,
            "https://rebind-meta.test/bypass/iso-rebind-meta".into(),
            none.clone(),
            false,
        ),
        (
            "iso-metadata",
            true,
            "http://169.254.169.254/latest/bypass/iso-metadata".into(),
            none.clone(),
            false,
        ),
        (
            "iso-metadata-v6",
            true,
            "http://[fd00:ec2::254]/bypass/iso-metadata-v6".into(),
            none.clone(),
            false,
        ),
        (
            "iso-metadata-name",
            true,
            "http://metadata.google.internal/bypass/iso-metadata-name".into(),
            none.clone(),
            false,
        ),
        (
            "iso-path-deny",
            true,
            "https://api.test/admin/bypass/iso-path-deny".into(),
            none.clone(),
            false,
        ),
        (
            "iso-path-encoded",
            true,
            "https://api.test/%61dmin/bypass/iso-path-encoded".into(),
            none.clone(),
            false,
        ),
        (
            "iso-path-dotdot",
            true,
            "https://api.test/x/../admin/bypass/iso-path-dotdot".into(),
            none.clone(),
            false,
        ),
        (
            "iso-connect-method",
            true,
            "https://api.test/bypass/iso-connect-method".into(),
            json!({"method": "CONNECT"}),
            false,
        ),
        (
            "iso-header-crlf",
            true,
            "https://api.test/bypass/iso-header-crlf".into(),
            json!({"headers": {"x-a": "b\r\nhost: denied.test"}}),
            false,
        ),
        (
            "iso-file-url",
            true,
            "file:///etc/passwd".into(),
            none.clone(),
            false,
        ),
        (
            "iso-ftp-url",
            true,
            format!("ftp://{api4}/bypass/iso-ftp-url"),
            none.clone(),
            false,
        ),
        (
            "iso-relative-url",
            true,
            "/bypass/iso-relative-url".into(),
            none.clone(),
            false,
        ),
        (
            "iso-placeholder-denied",
            true,
            "https://denied.test/bypass/iso-placeholder-denied".into(),
            json!({"headers": {"x-api-key": "cma-secret:API_KEY"}}),
            false,
        ),
        (
            "iso-other-sandbox",
            false,
            "https://api.test/bypass/iso-other-sandbox".into(),
            none.clone(),
            false,
        ),
        (
            "iso-other-sandbox-plain",
            false,
            "http://api.test/bypass/iso-other-sandbox-plain".into(),
            none.clone(),
            false,
        ),
    ];
    // A sandbox the wiring never attached (another backend's, or created behind its back).
    let stray = bed.backend.create(&SandboxSpec::new()).await.unwrap();
    let mut report = Vec::new();
    let mut client_side = Vec::new();
    for (name, from_a, url, init, follow) in &cases {
        let sb = if *from_a { a } else { bed.b.as_ref() };
        let out = fetch(sb, url, init.clone(), *follow).await;
        if !blocked(&out) {
            client_side.push(format!("{name}: {out}"));
        }
        report.push(format!(
            "{name:<26} {}",
            out.chars().take(120).collect::<String>()
        ));
    }
    let stray_out = fetch(
        stray.as_ref(),
        "https://api.test/bypass/iso-stray",
        json!({}),
        false,
    )
    .await;
    assert!(
        stray_out.contains("egress denied") && stray_out.contains("no egress registration"),
        "{stray_out}"
    );
    report.push(format!("{:<26} {stray_out}", "iso-stray"));
    let total = cases.len() + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = w.logs();
    // A kept-alive upstream connection is reused for the same scheme, host and port (to the
    // address checked when it opened), so the rebinding cases use a new port (a new
    // connection, a new lookup) after their control; the address they rebind to is what must
    // stay unreached.
    let mut arrived: Vec<&str> = cases
        .iter()
        .map(|c| c.0)
        .chain(["iso-stray"])
        .filter(|n| reached(&logs, n))
        .collect();
    for name in ["iso-rebind-lo", "iso-rebind-host", "iso-rebind-meta"] {
        let host = name.trim_start_matches("iso-").to_owned() + ".test";
        assert!(
            bed.proxy.audit.records().iter().any(|r| r.host == host
                && r.verdict == cma_egress::policy::Verdict::Deny
                && r.reason.as_deref().is_some_and(|x| x.contains("address"))),
            "{name}: no refusal by address"
        );
    }
    if logs.contains("sni=denied.test") {
        arrived.push("sni");
    }
    eprintln!("isolate fetch policy cases: {total}");
    for l in &report {
        eprintln!("  {l}");
    }
    eprintln!(
        "isolate fetch policy cases: {} of {total} got through (server side), {} looked successful",
        arrived.len(),
        client_side.len()
    );
    assert!(arrived.is_empty(), "{arrived:?}\n{logs}");
    assert!(client_side.is_empty(), "{client_side:#?}");
    for l in &report {
        assert!(!l.contains(secret()), "{l}");
    }
    // Every in-process request was audited as such, under the right session.
    let records = bed.proxy.audit.records();
    assert!(
        records
            .iter()
            .all(|r| r.via == cma_egress::AuditVia::InProcess),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r
                .path
                .as_deref()
                .is_some_and(|p| p.contains("iso-other-sandbox")))
            .all(|r| r.session_id.as_deref() == Some("sesn_b")
                && r.verdict == cma_egress::policy::Verdict::Deny)
    );
    let _ = &bed.egress;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_service_reaches_a_routed_service_through_the_policy() {
    let bed = bed().await;
    // The service `billing` is `billing.service` in policies: routed to the loopback server
    // with the key injected, for session A only.
    let local = format!("http://127.0.0.1:{}", bed.world.loopback_port());
    let mut v: serde_json::Value = serde_json::from_str(&bed.world.policies_json()).unwrap();
    for rule in [
        json!({"type": "allow", "host": "billing.service", "methods": ["GET", "POST"]}),
        json!({"type": "inject", "host": "billing.service", "header": "authorization",
               "secret": "API_KEY", "value": "Bearer {secret}", "allow_plain_http": true}),
        json!({"type": "route", "host": "billing.service", "upstream": local}),
    ] {
        v["policies"][0]["rules"].as_array_mut().unwrap().push(rule);
    }
    bed.proxy
        .store
        .replace(cma_egress::PolicySelector::from_json(v.to_string().as_bytes()).unwrap());
    let tool = call_service_tool(bed.egress.clone());
    let ctx_a = ToolContext::new(bed.a.clone()).with_ids("sesn_a", "work_a");
    let ctx_b = ToolContext::new(bed.b.clone()).with_ids("sesn_b", "work_b");

    let ok = tool
        .call(&ctx_a, json!({"service": "billing", "method": "POST", "path": "/v1/invoices?limit=2", "body": "{}"}))
        .await
        .unwrap();
    let text = format!("{ok:?}");
    assert!(text.contains("HTTP 200"), "{text}");
    assert!(text.contains("/v1/invoices?limit=2"), "{text}");
    assert!(
        text.contains(&sha256_hex(&format!("Bearer {}", secret()))),
        "the credential was injected: {text}"
    );
    assert!(!text.contains(secret()));
    let logs = bed.world.logs();
    assert!(
        logs.contains("POST /v1/invoices?limit=2 host=billing.service"),
        "{logs}"
    );

    // Refused for a method the rule does not list, for another session, for bad input.
    let denied = tool
        .call(
            &ctx_a,
            json!({"service": "billing", "method": "DELETE", "path": "/v1/invoices/1"}),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{denied:?}").contains("call_service: denied"),
        "{denied:?}"
    );
    let other = tool
        .call(
            &ctx_b,
            json!({"service": "billing", "path": "/v1/invoices"}),
        )
        .await
        .unwrap_err();
    assert!(format!("{other:?}").contains("denied"), "{other:?}");
    for bad in [
        json!({"service": "billing.evil", "path": "/"}),
        json!({"service": "BILLING", "path": "/"}),
        json!({"service": "billing", "path": "no-slash"}),
        json!({"service": "billing"}),
    ] {
        assert!(tool.call(&ctx_a, bad.clone()).await.is_err(), "{bad}");
    }
    // An upstream error status is a tool error too.
    let err = tool
        .call(&ctx_a, json!({"service": "billing", "path": "/error/x"}))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("HTTP 500"), "{err:?}");
    let records = bed.proxy.audit.records();
    let billing: Vec<_> = records
        .iter()
        .filter(|r| r.host == "billing.service")
        .collect();
    assert_eq!(billing.len(), 4, "{billing:#?}");
    assert!(
        billing
            .iter()
            .all(|r| r.via == cma_egress::AuditVia::InProcess)
    );
}
