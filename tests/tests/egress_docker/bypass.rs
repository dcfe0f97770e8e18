//! The bypass suite: every way out a sandbox might try.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use super::egress_support::{reached, secret, sha256_hex};
use super::{CURL, bed, sh};

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
    type Check = Box<dyn Fn(&str) -> bool>;
    let controls: Vec<(&str, Who, String, Check)> = vec![
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
