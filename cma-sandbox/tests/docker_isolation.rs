//! Isolation of Docker sandboxes, checked from inside one: the only reachable address is the
//! egress endpoint (TCP, UDP, DNS and raw IP tried), no capabilities, no privilege gain, a
//! non-root user, resource limits, and no Anthropic credential in env, files or processes.
//! Needs dockerd and the test image (`.ci/setup.d/20-docker.sh`).

mod docker_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cma_sandbox::{EgressEndpoint, ExecRequest, SandboxBackend, SandboxErrorKind, SandboxSpec};
use tokio::io::AsyncReadExt;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBcma-test-egress-ca\n-----END CERTIFICATE-----\n";

async fn py(sb: &std::sync::Arc<dyn cma_sandbox::Sandbox>, code: &str) -> String {
    let mut req = ExecRequest::argv(["python3", "-c", code]);
    req.timeout = Duration::from_secs(20);
    let out = sb.exec(req).await.unwrap();
    assert!(
        out.success(),
        "python failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_egress_endpoint_is_reachable_from_a_sandbox() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let gw: IpAddr = backend
        .gateway()
        .expect("the sandbox network has a gateway");
    // The egress endpoint: a TCP listener on the host's address on the sandbox network.
    let egress = tokio::net::TcpListener::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let egress_port = egress.local_addr().unwrap().port();
    // Another host service on the same address, which must stay unreachable.
    let other = tokio::net::TcpListener::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let other_port = other.local_addr().unwrap().port();
    let udp = tokio::net::UdpSocket::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port();

    let mut spec = SandboxSpec::new();
    spec.session_id = Some("sess_isolation".into());
    spec.egress = Some(EgressEndpoint {
        proxy_url: format!("http://{gw}:{egress_port}"),
        ca_cert_pem: Some(CA.into()),
    });
    let sb = backend.create(&spec).await.unwrap();

    // TCP to the egress endpoint works (the host sees the bytes).
    let accept = tokio::spawn(async move {
        let (mut s, _) = egress.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        buf
    });
    let out = py(
        &sb,
        &format!(
            "import socket\ns=socket.create_connection(('{gw}',{egress_port}),timeout=5)\ns.sendall(b'hello')\nprint('ok')"
        ),
    )
    .await;
    assert_eq!(out, "ok");
    let got = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello");
    // The proxy settings and the CA bundle are in place.
    let out = sb
        .exec(ExecRequest::shell(
            "echo $HTTPS_PROXY; echo $SSL_CERT_FILE; grep -c cma-test-egress-ca \"$SSL_CERT_FILE\"",
        ))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("http://{gw}:{egress_port}\n/etc/cma/ca-bundle.pem\n1\n")
    );

    // Everything else fails: another port on the same host address, an outside address (a
    // TEST-NET one: never routed anywhere), UDP to the host, DNS (resolver and the engine's
    // embedded one), raw sockets.
    let probe = format!(
        r#"
import socket, struct
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close(); return 'open'
    except OSError as e: return 'closed'
print('tcp-other', tcp('{gw}', {other_port}))
print('tcp-out', tcp('192.0.2.10', 80))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b'udp-leak', ('{gw}', {udp_port})); print('udp sent')
except OSError: print('udp sent')
try:
    socket.getaddrinfo('example.com', 80); print('dns resolved')
except OSError: print('dns failed')
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\x07example\x03com\x00' + struct.pack('>HH', 1, 1)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.settimeout(3)
try:
    d.sendto(q, ('127.0.0.11', 53)); r = d.recv(512)
    print('embedded answers', struct.unpack('>H', r[6:8])[0])
except OSError: print('embedded answers 0')
for fam, typ, proto in [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0)]:
    try:
        socket.socket(fam, typ, proto); print('raw allowed')
    except PermissionError: print('raw denied')
"#
    );
    let out = py(&sb, &probe).await;
    assert_eq!(
        out,
        "tcp-other closed\ntcp-out closed\nudp sent\ndns failed\nembedded answers 0\nraw denied\nraw denied",
    );
    let mut buf = [0u8; 64];
    let udp_got = tokio::time::timeout(Duration::from_millis(500), udp.recv_from(&mut buf)).await;
    assert!(udp_got.is_err(), "a UDP datagram reached the host");
    // Nothing ever connected to the other host port.
    let other_got = tokio::time::timeout(Duration::from_millis(100), other.accept()).await;
    assert!(other_got.is_err(), "a sandbox reached another host port");
    let resolv = sb.read_file("/etc/resolv.conf", None).await.unwrap();
    assert!(String::from_utf8_lossy(&resolv).contains("nameserver 127.0.0.1"));
    backend.destroy(sb.id()).await.unwrap();
    backend.close_egress_port(egress_port).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_unprivileged_limited_and_free_of_credentials() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let mut spec = SandboxSpec::new();
    spec.env
        .insert("ANTHROPIC_API_KEY".into(), "sk-ant-canary".into());
    let err = backend
        .create(&spec)
        .await
        .err()
        .expect("credential refused");
    assert_eq!(err.kind(), SandboxErrorKind::InvalidInput, "{err}");

    let mut spec = SandboxSpec::new();
    spec.session_id = Some("sess_1".into());
    spec.environment_id = Some("env_1".into());
    spec.memory_bytes = Some(256 << 20);
    spec.pids = Some(64);
    spec.cpus = Some(0.5);
    let sb = backend.create(&spec).await.unwrap();
    let out = sb
        .exec(ExecRequest::shell(
            "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '; \
             cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null \
               || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; \
             env | grep -c '^ANTHROPI[C]_' || true; \
             cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c 'ANTHROPI[C]' || true; \
             grep -rIl --exclude-dir=proc --exclude-dir=sys -e 'sk-an[t]' -e 'ANTHROPI[C]_API_KEY' / 2>/dev/null | grep -vc '^/usr/lib/python3' || true",
        ))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "CapPrm: 0000000000000000",
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "NoNewPrivs: 1",
            "268435456",
            "64",
            "0",
            "0",
            "0",
        ],
        "{text}"
    );
    backend.destroy(sb.id()).await.unwrap();
}
