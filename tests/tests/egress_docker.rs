//! Egress on the Docker backend, from inside real containers: the bypass suite (every way out a
//! sandbox might try, each proven blocked by the absence of its marker in the logs of servers
//! that would have received it), the secret scan, and an end-to-end session in the emulator.
//! Needs root (network namespaces, iptables), dockerd and the test image with curl
//! (`scripts/docker-image.sh`). See `egress_support` for the world the tests run in.

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;
mod egress_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_core::control::egress::SessionEgress;
use cma_egress::AuditSink;
use cma_sandbox::docker::DockerBackend;
use cma_sandbox::{ExecRequest, Sandbox, SandboxBackend, SandboxSpec};
use egress_support::{PROBE_PY, Proxy, World, reached, secret, session, sha256_hex};
use serde_json::json;

/// Two sandboxes (sessions `sesn_a` and `sesn_b`) wired to the world's proxy.
struct Bed {
    world: World,
    proxy: Proxy,
    egress: Arc<SessionEgress>,
    _backend: DockerBackend,
    a: Arc<dyn Sandbox>,
    b: Arc<dyn Sandbox>,
    gateway: IpAddr,
    proxy_addr: SocketAddr,
    _cleanup: docker_support::Cleanup,
}

async fn place(egress: &SessionEgress, backend: &DockerBackend, sid: &str) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new();
    spec.session_id = Some(sid.into());
    let prepared = egress
        .prepare("docker", &session(sid, json!({})), &mut spec)
        .unwrap()
        .expect("docker has egress");
    let sandbox = backend.create(&spec).await.unwrap();
    egress.attach(prepared, sandbox.as_ref()).await.unwrap();
    sandbox
        .write_file(
            "/workspace/probe.py",
            Bytes::from_static(PROBE_PY.as_bytes()),
        )
        .await
        .unwrap();
    sandbox
}

async fn bed(
    extra_audit: Option<Arc<dyn AuditSink>>,
    state: Option<Arc<dyn cma_core::store::state::StateStore>>,
) -> Bed {
    egress_support::captured_logs();
    let world = World::start();
    let proxy = world.proxy(extra_audit);
    let (backend, cleanup) = docker_support::connect(docker_support::config()).await;
    let gateway = backend
        .gateway()
        .expect("the sandbox network has a gateway");
    let mut egress = SessionEgress::new(proxy.proxy.clone());
    if let Some(state) = state {
        egress = egress.with_state_store(state);
    }
    let egress = Arc::new(egress);
    let proxy_addr = egress
        .listen_for("docker", SocketAddr::new(gateway, 0))
        .await
        .unwrap();
    let a = place(&egress, &backend, "sesn_a").await;
    let b = place(&egress, &backend, "sesn_b").await;
    Bed {
        world,
        proxy,
        egress,
        _backend: backend,
        a,
        b,
        gateway,
        proxy_addr,
        _cleanup: cleanup,
    }
}

/// Run `cmd` in `sandbox`; stdout and stderr together.
async fn sh(sandbox: &dyn Sandbox, cmd: &str) -> String {
    let mut req = ExecRequest::shell(cmd);
    req.timeout = Duration::from_secs(60);
    let out = sandbox.exec(req).await.unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const CURL: &str = "curl -sS -o /dev/null -w 'HTTP %{http_code} v%{http_version}' --max-time 8 --connect-timeout 4";

fn curl_blocked(out: &str) -> bool {
    // The final status is neither a success nor a redirect (000: no connection at all).
    match out.split("HTTP ").nth(1).and_then(|s| s.get(..3)) {
        Some(code) => !code.starts_with('2') && !code.starts_with('3'),
        None => true,
    }
}

fn probe_blocked(out: &str) -> bool {
    if let Some(rest) = out.trim().strip_prefix("statuses ") {
        // Raw requests on one connection, the last being the bypass attempt: blocked when it
        // got no answer at all (the connection was closed first) or a refusal.
        let (codes, sent) = rest.split_once(" of ").unwrap_or((rest, "0"));
        let codes: Vec<&str> = codes.split(',').filter(|c| !c.is_empty()).collect();
        let sent: usize = sent.trim().parse().unwrap_or(0);
        return codes.len() < sent
            || codes
                .last()
                .is_none_or(|c| !c.starts_with('2') && !c.starts_with('3'));
    }
    !out.contains("connected")
        && !out.contains("reply ")
        && !out.contains("allowed")
        && !out.contains("resolved")
        && !out.contains("status 2")
        && !out.contains("response 2")
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    A,
    B,
}

/// One attempt to get out: who tries, the command, and the marker a server would log.
struct Case {
    name: &'static str,
    who: Who,
    cmd: String,
    curl: bool,
}

fn curl(name: &'static str, who: Who, args: &str) -> Case {
    Case {
        name,
        who,
        cmd: format!("{CURL} {args}"),
        curl: true,
    }
}

fn probe(name: &'static str, who: Who, args: &str) -> Case {
    Case {
        name,
        who,
        cmd: format!("python3 /workspace/probe.py {args}"),
        curl: false,
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_way_out_of_a_docker_sandbox_gets_past_the_policy() {
    let bed = bed(None, None).await;
    let w = &bed.world;
    let (api4, api6, host4) = (w.netns.api_v4(), w.netns.api_v6(), w.netns.host_v4());
    let gw = bed.gateway;
    let (lo, lo6, any, any_udp) = (
        w.loopback_port(),
        w.loopback6_port(),
        w.any_port(),
        w.any_udp_port(),
    );
    let proxy_port = bed.proxy_addr.port();
    let a_ip = bed.a.network_address().await.unwrap().unwrap();
    let a_mac = sh(bed.a.as_ref(), "cat /sys/class/net/eth0/address").await;
    let a_mac = a_mac.trim();
    let upstream_ca = w.pki.ca_pem.clone();
    bed.a
        .write_file("/workspace/upstream-ca.pem", Bytes::from(upstream_ca))
        .await
        .unwrap();

    // Positive controls: what the policy allows does get through (so the canaries work).
    let key_digest = sha256_hex(secret());
    let controls: Vec<(&str, Who, String, Box<dyn Fn(&str) -> bool>)> = vec![
        ("plain", Who::A, "python3 /workspace/probe.py fetch https://api.test/control/plain".into(),
         Box::new({ let d = key_digest.clone(); move |o: &str| o.starts_with("status 200") && o.contains(&d) })),
        ("tls", Who::A, "curl -sS --max-time 8 https://api.test/control/tls".into(),
         Box::new({ let d = key_digest.clone(); move |o: &str| o.contains("/control/tls") && o.contains(&d) })),
        ("h2", Who::A, format!("{CURL} --http2 https://api.test/control/h2"),
         Box::new(|o: &str| o.contains("HTTP 200 v2"))),
        ("splice", Who::A, "curl -sS --max-time 8 --cacert /workspace/upstream-ca.pem https://splice.test/control/splice".into(),
         Box::new(|o: &str| o.contains("/control/splice"))),
        ("local", Who::A, "curl -sS --max-time 8 http://local.test/control/local".into(),
         Box::new({ let d = key_digest.clone(); move |o: &str| o.contains("/control/local") && o.contains(&d) })),
        ("rebind-lo", Who::A, format!("{CURL} http://rebind-lo.test/control/rebind-lo"),
         Box::new(|o: &str| o.contains("HTTP 200"))),
        ("rebind-host", Who::A, format!("{CURL} http://rebind-host.test/control/rebind-host"),
         Box::new(|o: &str| o.contains("HTTP 200"))),
        ("rebind-meta", Who::A, format!("{CURL} http://rebind-meta.test/control/rebind-meta"),
         Box::new(|o: &str| o.contains("HTTP 200"))),
        ("b-allowed", Who::B, format!("{CURL} http://other.test/control/b"),
         Box::new(|o: &str| o.contains("HTTP 200"))),
        ("a-listener", Who::A,
         "(nohup python3 -m http.server 8000 --bind 0.0.0.0 >/tmp/a-http.log 2>&1 &) ; sleep 1; curl -s --noproxy '*' -o /dev/null -w 'HTTP %{http_code}' http://127.0.0.1:8000/".into(),
         Box::new(|o: &str| o.contains("HTTP 200"))),
    ];
    let mut control_failures = Vec::new();
    for (name, who, cmd, ok) in &controls {
        let sb = if *who == Who::A { &bed.a } else { &bed.b };
        let out = sh(sb.as_ref(), cmd).await;
        if !ok(&out) {
            control_failures.push(format!("{name}: {out}"));
        }
    }
    assert!(
        control_failures.is_empty(),
        "controls failed: {control_failures:#?}"
    );

    let decimal = u32::from(match api4 {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!(),
    });
    let unset = "env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy";
    let cases = vec![
        // IP literals, in every spelling.
        curl(
            "ipv4-literal",
            Who::A,
            &format!("http://{api4}/bypass/ipv4-literal"),
        ),
        curl(
            "ipv4-literal-tls",
            Who::A,
            &format!("https://{api4}/bypass/ipv4-literal-tls"),
        ),
        curl(
            "ipv4-decimal",
            Who::A,
            &format!("http://{decimal}/bypass/ipv4-decimal"),
        ),
        curl(
            "ipv4-hex",
            Who::A,
            &format!("http://0x{decimal:x}/bypass/ipv4-hex"),
        ),
        curl(
            "ipv6-literal",
            Who::A,
            &format!("-g 'http://[{api6}]/bypass/ipv6-literal'"),
        ),
        curl(
            "ipv6-literal-tls",
            Who::A,
            &format!("-g 'https://[{api6}]/bypass/ipv6-literal-tls'"),
        ),
        curl(
            "ipv6-mapped",
            Who::A,
            &format!("-g 'http://[::ffff:{api4}]/bypass/ipv6-mapped'"),
        ),
        curl(
            "ipv6-loopback",
            Who::A,
            &format!("--noproxy '' -g 'http://[::1]:{lo6}/bypass/ipv6-loopback'"),
        ),
        curl(
            "loopback-literal",
            Who::A,
            &format!("--noproxy '' http://127.0.0.1:{lo}/bypass/loopback-literal"),
        ),
        curl(
            "host-link",
            Who::A,
            &format!("http://{host4}/bypass/host-link"),
        ),
        // Ports the policy does not grant.
        curl(
            "connect-port",
            Who::A,
            "https://api.test:8443/bypass/connect-port",
        ),
        curl("http-port", Who::A, "http://api.test:8080/bypass/http-port"),
        curl(
            "plain-http-secret",
            Who::A,
            "http://api.test/bypass/plain-http-secret",
        ),
        curl(
            "connect-tunnel-http",
            Who::A,
            "-p http://api.test:8080/bypass/connect-tunnel-http",
        ),
        // SNI that differs from the tunnel's target or the Host.
        probe(
            "sni-splice",
            Who::A,
            "sni splice.test:443 denied.test denied.test sni-splice",
        ),
        probe(
            "sni-intercept",
            Who::A,
            "sni api.test:443 denied.test denied.test sni-intercept",
        ),
        // Absolute-form requests naming another host, alone, after an allowed one, in a tunnel.
        probe(
            "absolute-other-host",
            Who::A,
            &format!(
                "raw {}",
                hex(
                    "GET http://denied.test/bypass/absolute-other-host HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
                )
            ),
        ),
        probe(
            "keepalive-switch",
            Who::A,
            &format!(
                "raw {}",
                hex(
                    "GET http://splice.test/control/keepalive HTTP/1.1\r\nHost: splice.test\r\n\r\nGET http://denied.test/bypass/keepalive-switch HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n"
                )
            ),
        ),
        curl(
            "tunnel-absolute",
            Who::A,
            "--request-target 'http://denied.test/bypass/tunnel-absolute' https://api.test/",
        ),
        curl(
            "tunnel-host-header",
            Who::A,
            "-H 'Host: denied.test' https://api.test/bypass/tunnel-host-header",
        ),
        curl(
            "forward-host-header",
            Who::A,
            "-H 'Host: api.test' http://denied.test/bypass/forward-host-header",
        ),
        // Redirects are not followed by the proxy; the sandbox's own follow is decided afresh.
        curl(
            "redirect",
            Who::A,
            "-L 'http://api.test/redirect?to=http://denied.test/bypass/redirect'",
        ),
        curl(
            "redirect-tls",
            Who::A,
            "-L 'https://api.test/redirect?to=https://denied.test/bypass/redirect-tls'",
        ),
        curl(
            "redirect-metadata",
            Who::A,
            "-L 'http://api.test/redirect?to=http://169.254.169.254/bypass/redirect-metadata'",
        ),
        // DNS rebinding: the second answer points somewhere the guard refuses.
        curl(
            "rebind-lo",
            Who::A,
            &format!("http://rebind-lo.test:{lo}/bypass/rebind-lo"),
        ),
        curl(
            "rebind-host",
            Who::A,
            "http://rebind-host.test/bypass/rebind-host",
        ),
        curl(
            "rebind-meta",
            Who::A,
            "http://rebind-meta.test/bypass/rebind-meta",
        ),
        // Cloud metadata.
        curl(
            "metadata",
            Who::A,
            "http://169.254.169.254/latest/meta-data/bypass/metadata",
        ),
        curl(
            "metadata-v6",
            Who::A,
            "-g 'http://[fd00:ec2::254]/latest/bypass/metadata-v6'",
        ),
        curl(
            "metadata-name",
            Who::A,
            "http://metadata.google.internal/bypass/metadata-name",
        ),
        // HTTP/2.
        curl(
            "h2-denied",
            Who::A,
            "--http2 https://denied.test/bypass/h2-denied",
        ),
        curl(
            "h2-authority",
            Who::A,
            "--http2 -H 'Host: denied.test' https://api.test/bypass/h2-authority",
        ),
        curl(
            "h2c-prior-knowledge",
            Who::A,
            "--http2-prior-knowledge http://denied.test/bypass/h2c-prior-knowledge",
        ),
        // Raw TCP and UDP, around the proxy.
        probe(
            "tcp-namespace",
            Who::A,
            &format!("tcp {api4} 80 tcp-namespace"),
        ),
        probe(
            "tcp-namespace-v6",
            Who::A,
            &format!("tcp {api6} 80 tcp-namespace-v6"),
        ),
        probe(
            "tcp-gateway",
            Who::A,
            &format!("tcp {gw} {any} tcp-gateway"),
        ),
        probe(
            "tcp-host-link",
            Who::A,
            &format!("tcp {host4} 80 tcp-host-link"),
        ),
        probe(
            "udp-namespace",
            Who::A,
            &format!("udp {api4} 5353 udp-namespace"),
        ),
        probe(
            "udp-gateway",
            Who::A,
            &format!("udp {gw} {any_udp} udp-gateway"),
        ),
        // Direct DNS.
        probe("dns-resolver", Who::A, "dns api.test"),
        probe("dns-gateway", Who::A, &format!("dnsq {gw} dnsgateway")),
        probe(
            "dns-namespace",
            Who::A,
            &format!("dnsq {api4} dnsnamespace"),
        ),
        // Without the proxy variables.
        Case {
            name: "unset-proxy-name",
            who: Who::A,
            cmd: format!("{unset} {CURL} http://api.test/bypass/unset-proxy-name"),
            curl: true,
        },
        Case {
            name: "unset-proxy-ip",
            who: Who::A,
            cmd: format!("{CURL} --noproxy '*' http://{api4}/bypass/unset-proxy-ip"),
            curl: true,
        },
        Case {
            name: "unset-proxy-python",
            who: Who::A,
            cmd: format!(
                "{unset} python3 /workspace/probe.py fetch http://{api4}/bypass/unset-proxy-python"
            ),
            curl: false,
        },
        // The proxy's own address and the gateway through the proxy.
        curl(
            "proxy-self",
            Who::A,
            &format!("http://{gw}:{proxy_port}/bypass/proxy-self"),
        ),
        curl(
            "connect-gateway",
            Who::A,
            &format!("-p http://{gw}:{any}/bypass/connect-gateway"),
        ),
        // Path rules and ambiguous paths.
        curl(
            "path-deny",
            Who::A,
            "http://api.test/admin/bypass/path-deny",
        ),
        curl(
            "path-deny-encoded",
            Who::A,
            "--path-as-is 'http://api.test/%61dmin/bypass/path-deny-encoded'",
        ),
        curl(
            "path-deny-dotdot",
            Who::A,
            "--path-as-is 'http://api.test/x/../admin/bypass/path-deny-dotdot'",
        ),
        // Request smuggling and upgrades.
        probe(
            "smuggle",
            Who::A,
            &format!(
                "raw {}",
                hex(
                    "POST http://splice.test/control/smuggle HTTP/1.1\r\nHost: splice.test\r\nContent-Length: 64\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://denied.test/bypass/smuggle HTTP/1.1\r\nHost: denied.test\r\n\r\n"
                )
            ),
        ),
        curl(
            "websocket-denied",
            Who::A,
            "-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://denied.test/bypass/websocket-denied",
        ),
        // Another sandbox's identity.
        curl(
            "other-sandbox",
            Who::B,
            "http://api.test/bypass/other-sandbox",
        ),
        curl(
            "other-sandbox-tls",
            Who::B,
            "https://api.test/bypass/other-sandbox-tls",
        ),
        curl(
            "other-sandbox-headers",
            Who::B,
            "-H 'X-Cma-Sandbox: sandbox-a' -H 'Proxy-Authorization: Basic c2Vzbl9hOng=' -H 'Forwarded: for=sandbox-a' http://api.test/bypass/other-sandbox-headers",
        ),
        probe("spoof", Who::B, &format!("spoof {a_ip} spoof")),
        Case {
            name: "ip-change",
            who: Who::B,
            cmd: format!(
                "ip addr add {a_ip}/32 dev eth0; ip link set dev eth0 address {a_mac}; python3 /workspace/probe.py fetch http://api.test/bypass/ip-change"
            ),
            curl: false,
        },
        probe("b-to-a", Who::B, &format!("tcp {a_ip} 8000 b-to-a")),
    ];

    let mut report = Vec::new();
    let mut client_side_leaks = Vec::new();
    for case in &cases {
        let sb = if case.who == Who::A { &bed.a } else { &bed.b };
        let out = sh(sb.as_ref(), &case.cmd).await;
        let blocked = if case.curl {
            curl_blocked(&out)
        } else {
            probe_blocked(&out)
        };
        if !blocked {
            client_side_leaks.push(format!("{}: {out}", case.name));
        }
        report.push(format!("{:<24} {}", case.name, out.replace('\n', " | ")));
    }
    // Canaries of the canaries: datagrams the test itself sends are logged and detected.
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.send_to(b"udp-canary", ("127.0.0.1", any_udp)).unwrap();
    udp.send_to(b"udp-ns-canary", (api4, 5353)).unwrap();
    // Let servers finish logging anything that did arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = w.logs();
    assert!(
        reached(&logs, "udp-canary") && reached(&logs, "udp-ns-canary"),
        "{logs}"
    );
    assert!(
        logs.contains("GET /control/plain ") && logs.contains("GET /control/keepalive "),
        "{logs}"
    );
    let a_log = sh(bed.a.as_ref(), "cat /tmp/a-http.log").await;
    let mut arrived = Vec::new();
    for case in &cases {
        if reached(&logs, case.name) || a_log.contains(&format!("bypass/{} ", case.name)) {
            arrived.push(case.name);
        }
    }
    if logs.contains("sni=denied.test") {
        arrived.push("sni (a denied name reached a server in a ClientHello)");
    }
    eprintln!("egress bypass suite: {} cases", cases.len());
    for line in &report {
        eprintln!("  {line}");
    }
    eprintln!(
        "egress bypass suite: {} of {} got through (server side), {} looked successful to the client",
        arrived.len(),
        cases.len(),
        client_side_leaks.len()
    );
    assert!(arrived.is_empty(), "reached a server: {arrived:?}\n{logs}");
    assert!(client_side_leaks.is_empty(), "{client_side_leaks:#?}");
    assert!(cases.len() >= 50, "the suite shrank: {}", cases.len());

    // The audit log agrees: nothing was allowed to a host outside the policy, and every record
    // names the sandbox and session the request really came from.
    let records = bed.proxy.audit.records();
    let allowed_hosts = [
        "api.test",
        "splice.test",
        "local.test",
        "rebind-lo.test",
        "rebind-host.test",
        "rebind-meta.test",
        "other.test",
    ];
    for r in &records {
        if r.verdict == cma_egress::policy::Verdict::Allow {
            assert!(allowed_hosts.contains(&r.host.as_str()), "{r:?}");
            assert!(
                r.status
                    .is_none_or(|s| s < 500 || r.path.as_deref() != Some("/")),
                "{r:?}"
            );
        }
        match r.session_id.as_deref() {
            Some("sesn_b") => assert!(
                r.host == "other.test" || r.verdict == cma_egress::policy::Verdict::Deny,
                "sandbox B was allowed {r:?}"
            ),
            Some("sesn_a") | None => {}
            Some(other) => panic!("unexpected session {other}"),
        }
    }
    for name in ["rebind-lo.test", "rebind-host.test", "rebind-meta.test"] {
        assert!(
            records.iter().any(|r| r.host == name
                && r.verdict == cma_egress::policy::Verdict::Deny
                && r.reason.as_deref().is_some_and(|x| x.contains("address"))),
            "no refusal by address for {name}: {records:#?}"
        );
    }
    drop(bed.egress.clone());
}

/// Scan `haystack` for the secret; the name says where it was found.
fn assert_no_secret(what: &str, haystack: &[u8]) {
    let needle = secret().as_bytes();
    let found = haystack.windows(needle.len()).any(|w| w == needle);
    assert!(!found, "the secret value was found in {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_sandbox_the_audit_or_the_logs() {
    use cma_core::control::egress_record::{StateAuditConfig, StateAuditSink};
    use cma_core::store::state::{MemoryStateStore, StateStore};
    use futures::StreamExt as _;

    let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let sink = Arc::new(StateAuditSink::new(
        state.clone(),
        StateAuditConfig::default(),
    ));
    let bed = bed(Some(sink), None).await;
    let a = bed.a.as_ref();
    let digest = sha256_hex(secret());

    // Injected calls: the key reaches the servers (they report its digest), never the sandbox.
    let injected = [
        "curl -sS --max-time 8 https://api.test/inject/tls",
        "curl -sS --max-time 8 --http2 https://api.test/inject/h2",
        "python3 /workspace/probe.py fetch https://api.test/inject/urllib",
        "curl -sS --max-time 8 http://local.test/inject/local",
        // The sandbox's own value for the header is replaced, not kept or appended.
        "curl -sS --max-time 8 -H 'x-api-key: a-guess' https://api.test/inject/override",
        // Error bodies from the upstream.
        "curl -sS --max-time 8 https://api.test/error/upstream",
    ];
    let mut outputs = Vec::new();
    for cmd in injected {
        let out = sh(a, cmd).await;
        assert!(
            out.contains(&digest),
            "{cmd}: the key was not injected: {out}"
        );
        assert!(!out.contains(&sha256_hex("a-guess")), "{cmd}: {out}");
        outputs.push(out);
    }
    // Refusals and failures: the proxy's error bodies.
    for cmd in [
        "curl -sS --max-time 8 http://api.test/refused/plain-http",
        "curl -sS --max-time 8 -H 'x-api-key: cma-secret:API_KEY' http://denied.test/refused/placeholder",
        "curl -sS --max-time 8 https://api.test:8443/refused/port",
        "curl -sS --max-time 8 -x '' http://api.test/refused/direct",
        "python3 /workspace/probe.py fetch http://rebind-meta.test/x",
        "python3 /workspace/probe.py fetch http://rebind-meta.test/refused/metadata",
    ] {
        outputs.push(sh(a, cmd).await);
    }
    for (i, out) in outputs.iter().enumerate() {
        assert_no_secret(&format!("response {i}"), out.as_bytes());
    }

    // Everything the sandbox can read: environment, processes, files, its workspace snapshot.
    for cmd in [
        "env",
        "ps auxww; ps eww -e",
        "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'",
        "cat /etc/cma/ca-bundle.pem /etc/pip.conf /etc/gitconfig",
        "ls -laR /etc /tmp /workspace /home 2>/dev/null",
    ] {
        let out = sh(a, cmd).await;
        assert_no_secret(cmd, out.as_bytes());
    }
    let env = sh(a, "env").await;
    for var in [
        "HTTP_PROXY",
        "https_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ] {
        assert!(env.contains(&format!("{var}=")), "{var} is not set: {env}");
    }
    let bundle = sh(a, "cat /etc/ssl/certs/ca-certificates.crt").await;
    assert!(
        bundle.contains("BEGIN CERTIFICATE") && !bundle.contains("PRIVATE KEY"),
        "{bundle}"
    );
    let mut workspace = Vec::new();
    let mut stream = a.export_workspace().await.unwrap();
    while let Some(chunk) = stream.next().await {
        workspace.extend_from_slice(&chunk.unwrap());
    }
    assert_no_secret("the workspace snapshot", &workspace);
    // The whole container file system (more than the sandbox user can read) and its config.
    let docker = bollard::Docker::connect_with_socket_defaults().unwrap();
    let mut fs = Vec::new();
    let mut export = docker.export_container(a.id().as_str());
    while let Some(chunk) = export.next().await {
        fs.extend_from_slice(&chunk.unwrap());
    }
    assert!(fs.len() > 1 << 20, "the export is the whole file system");
    assert_no_secret("the container file system", &fs);
    let inspect = docker
        .inspect_container(a.id().as_str(), None)
        .await
        .unwrap();
    assert_no_secret(
        "docker inspect",
        serde_json::to_string(&inspect).unwrap().as_bytes(),
    );

    // The audit log, in memory and in the state store, and every log line of this process.
    let records = bed.proxy.audit.records();
    assert!(
        records
            .iter()
            .any(|r| r.host == "api.test" && r.injected == ["x-api-key"]),
        "{records:#?}"
    );
    assert_no_secret(
        "the audit records",
        serde_json::to_string(&records).unwrap().as_bytes(),
    );
    let stored = {
        let mut all = Vec::new();
        for _ in 0..100 {
            all = state.list_egress_audit(None, 0, 1000).await.unwrap();
            if all.len() >= records.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        all
    };
    assert!(
        stored.len() >= records.len(),
        "{} stored of {}",
        stored.len(),
        records.len()
    );
    assert!(
        stored
            .iter()
            .any(|e| e.session_id.as_deref() == Some("sesn_a") && e.allowed)
    );
    for e in &stored {
        assert_no_secret("the stored audit log", e.record.as_bytes());
    }
    let logs = egress_support::captured_logs().lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&logs).contains("egress"),
        "the audit went through tracing too"
    );
    assert_no_secret("the process's logs", &logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_a_running_sandbox_without_a_restart() {
    use cma_core::control::egress_record::EGRESS_POLICY_EVENT;
    use cma_core::store::state::{MemoryStateStore, StateStore};
    let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let bed = bed(None, Some(state.clone())).await;
    let watcher = bed
        .egress
        .watch_policies()
        .expect("the policy store changes");
    let a = bed.a.as_ref();
    let started = sh(a, "cat /proc/1/stat | cut -d' ' -f22").await;
    let before = sh(a, &format!("{CURL} http://other.test/edit/before")).await;
    assert!(before.contains("HTTP 403"), "{before}");

    let mut v: serde_json::Value = serde_json::from_str(&bed.world.policies_json()).unwrap();
    v["policies"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "allow", "host": "other.test"}));
    bed.proxy
        .store
        .replace(cma_egress::PolicySelector::from_json(v.to_string().as_bytes()).unwrap());
    let after = sh(a, &format!("{CURL} http://other.test/edit/after")).await;
    assert!(after.contains("HTTP 200"), "{after}");
    // The same container, never restarted (its init process started at the same tick).
    assert_eq!(sh(a, "cat /proc/1/stat | cut -d' ' -f22").await, started);

    // The new fingerprint is recorded: the policy's version went up, the session's log says so.
    let recorded = egress_support::eventually(Duration::from_secs(10), || {
        futures::executor::block_on(state.get_egress_policy("pol_a"))
            .unwrap()
            .is_some_and(|p| p.version == 2)
    })
    .await;
    assert!(recorded, "{:?}", state.get_egress_policy("pol_a").await);
    let log: Vec<String> = state
        .list_transitions("sesn_a", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.event == EGRESS_POLICY_EVENT)
        .map(|t| t.detail)
        .collect();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].starts_with("pol_a fp1-") && log[1].starts_with("pol_a fp1-"));
    assert_ne!(log[0], log[1]);
    let stored = state.get_egress_policy("pol_a").await.unwrap().unwrap();
    assert_eq!(log[1], format!("pol_a {}", stored.fingerprint));
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_reaches_an_allowed_server_with_an_injected_key_and_not_a_denied_one() {
    use cma_core::client::{Client, ClientConfig, Credential};
    use cma_core::control::host::{SandboxHost, SandboxHostConfig};
    use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
    use cma_core::emulator::{Emulator, EmulatorConfig, Scenario};
    use cma_core::runner::session::RunnerConfig;

    egress_support::captured_logs();
    let world = World::start();
    let proxy = world.proxy(None);
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let gateway = backend.gateway().unwrap();
    let egress = Arc::new(SessionEgress::new(proxy.proxy.clone()));
    egress
        .listen_for("docker", SocketAddr::new(gateway, 0))
        .await
        .unwrap();
    let calls = [
        "curl -sS --max-time 8 http://local.test/e2e/curl",
        "python3 -c \"import urllib.request as u; r = u.urlopen('http://local.test/e2e/urllib', timeout=8); print(r.status, r.read().decode())\"",
        "curl -sS --max-time 8 -o /dev/null -w '%{http_code}' http://denied.test/e2e/denied",
        "python3 -c \"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://denied.test/e2e/denied-urllib', timeout=8)\nexcept e.HTTPError as x: print(x.code, x.read().decode())\"",
    ];
    let scenario = Scenario::from_json(
        &json!({
            "environments": [{"id": "env_egress", "name": "egress", "environment_key": "envkey_egress"}],
            "sessions": [{"id": "sesn_a", "environment": "env_egress",
                "calls": calls.iter().map(|c| json!({"name": "bash", "input": {"command": c}})).collect::<Vec<_>>(),
                "end": "terminate"}]
        })
        .to_string(),
    )
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let env = emulator.environments()[0].clone();
    let host = SandboxHost::builder()
        .backend(backend)
        .egress(egress.clone())
        .config(SandboxHostConfig {
            keep_warm: Duration::from_secs(1),
            ..SandboxHostConfig::default()
        })
        .build()
        .unwrap();
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emulator.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let plane = ControlPlane::builder(
        client,
        env.id.clone(),
        Credential::environment_key(env.key.clone()),
        Arc::new(host),
    )
    .config(ControlPlaneConfig {
        concurrency: 1,
        runner: RunnerConfig {
            max_idle: Some(Duration::from_secs(2)),
            ..RunnerConfig::default()
        },
        ..ControlPlaneConfig::default()
    })
    .build()
    .unwrap();
    let poller = {
        let plane = plane.clone();
        tokio::spawn(async move { plane.run().await })
    };
    let done = emulator
        .wait_for(Duration::from_secs(120), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
    assert!(done, "the scripted session did not finish");

    let results = emulator.tool_results();
    assert_eq!(results.len(), calls.len(), "{results:#?}");
    let text = |i: usize| {
        results[i].content[0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let digest = sha256_hex(secret());
    let curl: serde_json::Value =
        serde_json::from_str(text(0).trim()).unwrap_or_else(|_| panic!("{}", text(0)));
    assert_eq!(curl["path"], "/e2e/curl");
    assert_eq!(
        curl["headers"]["x-api-key"],
        digest.as_str(),
        "the key was injected"
    );
    assert!(
        text(1).starts_with("200 ") && text(1).contains(&digest),
        "{}",
        text(1)
    );
    assert_eq!(text(2).trim(), "403");
    assert!(
        text(3).starts_with("403 ") && text(3).contains("egress denied"),
        "{}",
        text(3)
    );
    for i in 0..calls.len() {
        assert_no_secret(&format!("tool result {i}"), text(i).as_bytes());
    }
    let logs = world.logs();
    assert!(
        logs.contains("GET /e2e/curl ") && logs.contains("GET /e2e/urllib "),
        "{logs}"
    );
    assert!(!logs.contains("/e2e/denied"), "{logs}");

    // The audit records match what the session did, one per request, in order.
    let records: Vec<_> = proxy
        .audit
        .records()
        .into_iter()
        .filter(|r| r.path.as_deref().is_some_and(|p| p.starts_with("/e2e/")))
        .collect();
    let summary: Vec<(String, String, bool, Option<u16>, Vec<String>)> = records
        .iter()
        .map(|r| {
            (
                r.host.clone(),
                r.path.clone().unwrap_or_default(),
                r.verdict == cma_egress::policy::Verdict::Allow,
                r.status,
                r.injected.clone(),
            )
        })
        .collect();
    let key = vec!["x-api-key".to_owned()];
    assert_eq!(
        summary,
        vec![
            (
                "local.test".into(),
                "/e2e/curl".into(),
                true,
                Some(200),
                key.clone()
            ),
            (
                "local.test".into(),
                "/e2e/urllib".into(),
                true,
                Some(200),
                key.clone()
            ),
            (
                "denied.test".into(),
                "/e2e/denied".into(),
                false,
                Some(403),
                vec![]
            ),
            (
                "denied.test".into(),
                "/e2e/denied-urllib".into(),
                false,
                Some(403),
                vec![]
            ),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.session_id.as_deref() == Some("sesn_a"))
    );
    let sandbox_ids: std::collections::BTreeSet<_> =
        records.iter().map(|r| r.sandbox_id.clone()).collect();
    assert_eq!(
        sandbox_ids.len(),
        1,
        "one sandbox served the session: {sandbox_ids:?}"
    );
    assert!(
        egress.proxy().registry().is_empty(),
        "the sandbox was detached when the session ended"
    );
    emulator.shutdown().await;
}
