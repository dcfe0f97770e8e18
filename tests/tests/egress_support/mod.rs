//! Shared world of the egress tests: a test PKI, a network namespace with "public" test
//! servers (addresses in 198.18.N.0/24 and fd00:77:N::/64, which the proxy's address guard is
//! told to treat as reachable), canary servers on the host (loopback, every interface, the
//! namespace link's host side), a static resolver naming them, and one policy set:
//!
//! * `pol_a` (session `sesn_a`): `api.test` allowed with `x-api-key` injected from the secret
//!   `API_KEY` (so its tunnels are intercepted; over plain HTTP it is refused, the key would
//!   travel in clear), `/admin` denied; `splice.test` allowed (spliced
//!   tunnels); three rebinding names allowed; `local.test` routed to the loopback canary with the
//!   key injected (the one documented way to reach loopback).
//! * `pol_b` (session `sesn_b`): only `other.test`.
//!
//! Every server logs each request, TLS handshake (with its SNI) and datagram it receives, so a
//! test proves a bypass failed by the *absence* of its marker in the logs, not only by what the
//! client saw. Needs root (`ip netns`), python3 and, for the Docker tests, dockerd and the test
//! image (`scripts/docker-image.sh`, which includes curl).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cma_egress::addr::AddressGuard;
use cma_egress::audit::MemoryAuditSink;
use cma_egress::secrets::{MemorySecretStore, Secret, SecretName};
use cma_egress::{AuditSink, EgressProxy, PolicySelector, PolicyStore, StaticResolver};
use serde_json::json;

pub const UPSTREAM_PY: &str = include_str!("upstream.py");
pub const PROBE_PY: &str = include_str!("probe.py");

/// The secret the proxy injects; random per process so no file anywhere holds it by chance.
pub fn secret() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| format!("sk-cma-test-{}", uuid::Uuid::new_v4().simple()))
}

/// The SHA-256 hex digest of `s` (what the upstreams report instead of header values).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything logged through `tracing` in this process, from the first call on.
pub fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = move || CaptureWriter(buf);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct CaptureWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn must(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair: the host side is `198.18.N.1` /
/// `fd00:77:N::1`, the namespace holds `.2` and `.3` (and `::2`). Removed on drop.
pub struct Netns {
    pub name: String,
    host_if: String,
    pub n: u8,
}

impl Netns {
    pub fn create() -> Netns {
        for _ in 0..20 {
            let n: u8 = 10 + (rand_u32() % 240) as u8;
            let name = format!("cma-egress-{n}");
            let host_if = format!("cmaeg{n}h");
            let ns_if = format!("cmaeg{n}n");
            if !run("ip", &["netns", "add", &name]) {
                continue;
            }
            let ns = Netns {
                name: name.clone(),
                host_if: host_if.clone(),
                n,
            };
            if !run(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
                ],
            ) {
                continue; // `ns` is dropped: removed again.
            }
            must("ip", &["link", "set", &ns_if, "netns", &name]);
            must(
                "ip",
                &["addr", "add", &format!("198.18.{n}.1/24"), "dev", &host_if],
            );
            must(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:77:{n}::1/64"),
                    "dev",
                    &host_if,
                    "nodad",
                ],
            );
            must("ip", &["link", "set", &host_if, "up"]);
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", name.as_str(), "ip"];
                all.extend_from_slice(args);
                must("ip", &all);
            };
            exec(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", &ns_if]);
            exec(&["addr", "add", &format!("198.18.{n}.3/24"), "dev", &ns_if]);
            exec(&[
                "-6",
                "addr",
                "add",
                &format!("fd00:77:{n}::2/64"),
                "dev",
                &ns_if,
                "nodad",
            ]);
            exec(&["link", "set", &ns_if, "up"]);
            exec(&["link", "set", "lo", "up"]);
            return ns;
        }
        panic!("could not create a test network namespace (run as root with iproute2)");
    }

    pub fn host_v4(&self) -> IpAddr {
        format!("198.18.{}.1", self.n).parse().unwrap()
    }
    pub fn api_v4(&self) -> IpAddr {
        format!("198.18.{}.2", self.n).parse().unwrap()
    }
    pub fn denied_v4(&self) -> IpAddr {
        format!("198.18.{}.3", self.n).parse().unwrap()
    }
    pub fn api_v6(&self) -> IpAddr {
        format!("fd00:77:{}::2", self.n).parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run("ip", &["netns", "del", &self.name]);
        run("ip", &["link", "del", &self.host_if]);
    }
}

fn rand_u32() -> u32 {
    let id = uuid::Uuid::new_v4();
    u32::from_le_bytes(id.as_bytes()[..4].try_into().unwrap())
}

/// Every name the test server certificate covers.
pub const NAMES: &[&str] = &[
    "api.test",
    "denied.test",
    "other.test",
    "splice.test",
    "local.test",
    "rebind-lo.test",
    "rebind-host.test",
    "rebind-meta.test",
];

/// The test PKI: a CA and a server certificate for [`NAMES`], as PEM files.
pub struct Pki {
    pub ca_der: Vec<u8>,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cma egress test upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Pki {
            ca_der: ca_cert.der().to_vec(),
            ca_pem: ca_cert.pem(),
            cert: cert_path,
            key: key_path,
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        roots
    }
}

/// A python upstream process (see `upstream.py`).
pub struct Upstreams {
    child: Child,
    pub ports: Vec<u16>,
    pub log: PathBuf,
}

impl Upstreams {
    /// Start listeners `(kind, addr, port)` (in `netns` when given); waits until they are up.
    pub fn start(
        netns: Option<&str>,
        listeners: &[(&str, &str, u16)],
        pki: &Pki,
        dir: &Path,
        tag: &str,
    ) -> Upstreams {
        let script = dir.join("upstream.py");
        std::fs::write(&script, UPSTREAM_PY).unwrap();
        let log = dir.join(format!("{tag}.log"));
        std::fs::write(&log, "").unwrap();
        let config = json!({
            "listeners": listeners.iter().map(|(k, a, p)| json!({"kind": k, "addr": a, "port": p})).collect::<Vec<_>>(),
            "cert": pki.cert, "key": pki.key,
        });
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg(&script)
            .arg(config.to_string())
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("upstreams start");
        let ports: Vec<u16> = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("upstreams did not start: {line:?}"))
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        Upstreams { child, ports, log }
    }

    /// Everything the upstreams logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespace, its servers and the host canaries.
pub struct World {
    pub netns: Netns,
    pub pki: Pki,
    /// In the namespace: TCP 80, 443, 8080, 8443 and UDP 53, 5353 on every address.
    pub ns_up: Upstreams,
    /// On the host: HTTP on 127.0.0.1, [::1], 0.0.0.0 and the veth's host side (port 80), UDP on
    /// 0.0.0.0.
    pub host_up: Upstreams,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let netns = Netns::create();
        let pki = Pki::create(dir.path());
        let ns_up = Upstreams::start(
            Some(&netns.name),
            &[
                ("http", "::", 80),
                ("https", "::", 443),
                ("http", "::", 8080),
                ("https", "::", 8443),
                ("udp", "::", 53),
                ("udp", "::", 5353),
            ],
            &pki,
            dir.path(),
            "ns",
        );
        let host_v4 = netns.host_v4().to_string();
        let host_up = Upstreams::start(
            None,
            &[
                ("http", "127.0.0.1", 0),
                ("http", "::1", 0),
                ("http", "0.0.0.0", 0),
                ("http", &host_v4, 80),
                ("udp", "0.0.0.0", 0),
            ],
            &pki,
            dir.path(),
            "host",
        );
        World {
            netns,
            pki,
            ns_up,
            host_up,
            dir,
        }
    }

    pub fn loopback_port(&self) -> u16 {
        self.host_up.ports[0]
    }
    pub fn loopback6_port(&self) -> u16 {
        self.host_up.ports[1]
    }
    pub fn any_port(&self) -> u16 {
        self.host_up.ports[2]
    }
    pub fn any_udp_port(&self) -> u16 {
        self.host_up.ports[4]
    }

    /// Both upstream logs.
    pub fn logs(&self) -> String {
        format!("{}{}", self.ns_up.log(), self.host_up.log())
    }

    /// The policy set described in the module docs.
    pub fn policies(&self) -> PolicySelector {
        PolicySelector::from_json(self.policies_json().as_bytes()).unwrap()
    }

    /// [`World::policies`] as JSON text.
    pub fn policies_json(&self) -> String {
        let local = format!("http://127.0.0.1:{}", self.loopback_port());
        let v = json!({"default": "deny", "policies": [
            {"id": "pol_a", "apply_to": [{"field": "session_id", "op": "equals", "value": "sesn_a"}],
             "rules": [
                {"type": "deny", "host": "api.test", "path_prefix": "/admin"},
                {"type": "allow", "host": "api.test"},
                {"type": "inject", "host": "api.test", "header": "x-api-key", "secret": "API_KEY"},
                {"type": "allow", "host": "splice.test"},
                {"type": "allow", "host": "rebind-lo.test:*,rebind-host.test,rebind-meta.test"},
                {"type": "allow", "host": "local.test"},
                {"type": "inject", "host": "local.test", "header": "x-api-key", "secret": "API_KEY",
                 "allow_plain_http": true},
                {"type": "route", "host": "local.test", "upstream": local},
             ]},
            {"id": "pol_b", "apply_to": [{"field": "session_id", "op": "equals", "value": "sesn_b"}],
             "rules": [{"type": "allow", "host": "other.test"}]},
        ]});
        v.to_string()
    }

    /// The resolver: test names to namespace addresses; rebinding names answer a namespace
    /// address first and then loopback, the host itself, the metadata address.
    pub fn resolver(&self) -> StaticResolver {
        let r = StaticResolver::new();
        let (api, denied) = (self.netns.api_v4(), self.netns.denied_v4());
        r.insert("api.test", vec![api]);
        r.insert("splice.test", vec![api]);
        r.insert("denied.test", vec![denied]);
        r.insert("other.test", vec![denied]);
        r.insert("v6.test", vec![self.netns.api_v6()]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        r.insert_sequence("rebind-lo.test", vec![vec![api], vec![lo]]);
        r.insert_sequence(
            "rebind-host.test",
            vec![vec![api], vec![self.netns.host_v4()]],
        );
        r.insert_sequence("rebind-meta.test", vec![vec![api], vec![meta]]);
        r
    }

    /// The proxy for this world, with in-memory policies, secret and audit (and `extra`, a
    /// second audit sink, when given).
    pub fn proxy(&self, extra: Option<Arc<dyn AuditSink>>) -> Proxy {
        let store = Arc::new(PolicyStore::new(self.policies()));
        let audit = Arc::new(MemoryAuditSink::new(100_000));
        let secrets = Arc::new(MemorySecretStore::new());
        secrets.insert(SecretName::new("API_KEY").unwrap(), Secret::new(secret()));
        let resolver = Arc::new(self.resolver());
        // Built after the namespace exists, so its host side counts as the host's own address.
        let guard = AddressGuard::with_host_addresses();
        guard
            .permit_network(format!("198.18.{}.0", self.netns.n).parse().unwrap(), 24)
            .unwrap();
        guard
            .permit_network(format!("fd00:77:{}::", self.netns.n).parse().unwrap(), 64)
            .unwrap();
        let proxy = EgressProxy::builder(store.clone())
            .secrets(secrets.clone())
            .audit(Tee(audit.clone(), extra))
            .resolver(resolver.clone())
            .upstream_roots(self.pki.roots())
            .address_guard(guard)
            .build()
            .unwrap();
        Proxy {
            proxy,
            store,
            audit,
            resolver,
        }
    }
}

/// An audit sink feeding two.
struct Tee(Arc<MemoryAuditSink>, Option<Arc<dyn AuditSink>>);

impl AuditSink for Tee {
    fn record(&self, r: cma_egress::AuditRecord) {
        if let Some(extra) = &self.1 {
            extra.record(r.clone());
        }
        self.0.record(r);
    }
}

/// A proxy and its in-memory parts.
pub struct Proxy {
    pub proxy: EgressProxy,
    pub store: Arc<PolicyStore>,
    pub audit: Arc<MemoryAuditSink>,
    pub resolver: Arc<StaticResolver>,
}

/// A session as the CMA API returns it.
pub fn session(id: &str, metadata: serde_json::Value) -> cma_core::protocol::Session {
    serde_json::from_value(json!({"type": "session", "id": id, "status": "running",
        "agent": {"id": "agent_egress", "skills": []}, "resources": [], "metadata": metadata}))
    .unwrap()
}

/// Wait until `f` holds (polling), at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Whether any upstream log line shows case `name` arriving: a request whose path (without its
/// query: a redirect's first hop names the next target there) holds `bypass/<name>`, or a
/// datagram or DNS query carrying the name.
pub fn reached(logs: &str, name: &str) -> bool {
    let marker = format!("bypass/{name}");
    let dns = name.replace('-', "");
    logs.lines().any(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        match f.first().copied() {
            Some("http" | "https") => f
                .get(3)
                .and_then(|p| p.split('?').next())
                .is_some_and(|p| p.contains(&marker)),
            Some("udp") => line.contains(&format!("data={name}")) || line.contains(&dns),
            _ => false,
        }
    })
}
