//! The warm pool of the Docker backend (`DockerConfig::prestart`): pooled sandboxes pass the
//! conformance suite, are isolated like any other, and keep their identity across a
//! control-plane restart (re-adopted by `reconcile`); leftover unclaimed containers are taken
//! back or removed. Needs dockerd and the test image (`.ci/setup.d/20-docker.sh`).

mod docker_support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::docker::{DockerBackend, DockerConfig, LABEL_INSTANCE, LABEL_POOL};
use cma_sandbox::{
    Capabilities, ExecRequest, Result, Sandbox, SandboxBackend, SandboxId, SandboxInfo,
    SandboxSpec, SandboxStatus,
};

fn pooled_config(prestart: usize) -> DockerConfig {
    let mut cfg = docker_support::config();
    cfg.prestart = prestart;
    cfg
}

/// Pool containers of `instance` in the engine (any state) that are nobody's sandbox.
async fn unclaimed(backend: &DockerBackend, instance: &str) -> Vec<String> {
    let sandboxes: HashSet<String> = backend
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.as_str().to_owned())
        .collect();
    let mut names: Vec<String> = pool_containers(backend, instance)
        .await
        .into_iter()
        .filter(|n| !sandboxes.contains(n))
        .collect();
    names.sort();
    names
}

/// Every pool container of `instance` in the engine, claimed or not.
async fn pool_containers(backend: &DockerBackend, instance: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{LABEL_INSTANCE}={instance}"),
            LABEL_POOL.to_owned(),
        ],
    )]);
    backend
        .client()
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.names?.first().cloned())
        .map(|n| n.trim_start_matches('/').to_owned())
        .collect()
}

/// A backend whose every `create` is served from the pool (it fills the pool first and
/// checks that the claim counter moved).
struct AlwaysPooled(DockerBackend);

#[async_trait]
impl SandboxBackend for AlwaysPooled {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>> {
        self.0.fill_pool().await?;
        let before = self.0.pool_stats().claimed;
        let sb = self.0.create(spec).await?;
        assert_eq!(
            self.0.pool_stats().claimed,
            before + 1,
            "the sandbox did not come from the pool"
        );
        Ok(sb)
    }
    async fn resume(&self, id: &SandboxId) -> Result<Arc<dyn Sandbox>> {
        self.0.resume(id).await
    }
    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        self.0.list().await
    }
    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        self.0.destroy(id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sandboxes_pass_the_conformance_suite() {
    let (backend, _cleanup) = docker_support::connect(pooled_config(1)).await;
    let pooled = AlwaysPooled(backend.clone());
    let expected = docker_support::expected_capabilities(&backend).await;
    cma_sandbox::conformance::run_all(&pooled, expected).await;
    assert!(backend.pool_stats().claimed >= 8);
    backend.close_pool().await.unwrap();
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_is_isolated_like_any_other() {
    let mut cfg = pooled_config(1);
    cfg.pool_spec.memory_bytes = Some(256 << 20);
    cfg.pool_spec.pids = Some(64);
    cfg.pool_spec.cpus = Some(0.5);
    let instance = cfg.instance.clone();
    let (backend, _cleanup) = docker_support::connect(cfg).await;
    backend.fill_pool().await.unwrap();
    assert_eq!(backend.pool_stats().ready, 1);
    // Unclaimed containers are nobody's sandbox.
    assert!(backend.list().await.unwrap().is_empty());

    let gw: IpAddr = backend.gateway().expect("gateway");
    let host_tcp = tokio::net::TcpListener::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let tcp_port = host_tcp.local_addr().unwrap().port();
    let udp = tokio::net::UdpSocket::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port();

    let mut spec = SandboxSpec::new();
    spec.session_id = Some("sess_pool_iso".into());
    spec.memory_bytes = Some(256 << 20);
    spec.pids = Some(64);
    spec.cpus = Some(0.5);
    let sb = backend.create(&spec).await.unwrap();
    assert_eq!(backend.pool_stats().claimed, 1, "served from the pool");

    let out = sb
        .exec(ExecRequest::shell(
            "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '; \
             cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null \
               || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; \
             cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
             grep -c nameserver /etc/resolv.conf; grep nameserver /etc/resolv.conf",
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
            "50000",
            "1",
            "nameserver 127.0.0.1",
        ],
        "{text}"
    );
    // No route anywhere: the host's address on the sandbox network (TCP and UDP), an outside
    // address, DNS (resolver and the engine's embedded one), raw sockets.
    let probe = format!(
        r#"
import socket, struct
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close(); return 'open'
    except OSError: return 'closed'
print('tcp-host', tcp('{gw}', {tcp_port}))
print('tcp-out', tcp('192.0.2.10', 80))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try: u.sendto(b'udp-leak', ('{gw}', {udp_port}))
except OSError: pass
try:
    socket.getaddrinfo('example.com', 80); print('dns resolved')
except OSError: print('dns failed')
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\x07example\x03com\x00' + struct.pack('>HH', 1, 1)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.settimeout(3)
try:
    d.sendto(q, ('127.0.0.11', 53)); r = d.recv(512)
    print('embedded answers', struct.unpack('>H', r[6:8])[0])
except OSError: print('embedded answers 0')
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw allowed')
except PermissionError: print('raw denied')
"#
    );
    let mut req = ExecRequest::argv(["python3", "-c", probe.as_str()]);
    req.timeout = Duration::from_secs(20);
    let out = sb.exec(req).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tcp-host closed\ntcp-out closed\ndns failed\nembedded answers 0\nraw denied",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(500), udp.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a UDP datagram reached the host");
    let got = tokio::time::timeout(Duration::from_millis(100), host_tcp.accept()).await;
    assert!(got.is_err(), "a pooled sandbox reached a host port");

    // A spec the template cannot serve (its own env) is created the usual way.
    let mut other = spec.clone();
    other.env.insert("FOO".into(), "bar".into());
    backend.fill_pool().await.unwrap();
    let sb2 = backend.create(&other).await.unwrap();
    assert_eq!(backend.pool_stats().claimed, 1);
    let out = sb2.exec(ExecRequest::shell("echo $FOO")).await.unwrap();
    assert_eq!(&out.stdout[..], b"bar\n");

    backend.destroy(sb.id()).await.unwrap();
    backend.destroy(sb2.id()).await.unwrap();
    backend.close_pool().await.unwrap();
    assert!(unclaimed(&backend, &instance).await.is_empty());
    assert_eq!(backend.pool_stats().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_keeps_its_identity_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = pooled_config(2);
    cfg.state_dir = state.path().to_owned();
    let instance = cfg.instance.clone();
    let (first, _cleanup) = docker_support::connect(cfg.clone()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        first.fill_pool().await.unwrap();
        let mut spec = SandboxSpec::new();
        spec.session_id = Some(format!("sess_p{i}"));
        spec.environment_id = Some("env_p".into());
        spec.labels.insert("work".into(), format!("w{i}"));
        let sb = first.create(&spec).await.unwrap();
        sb.write_file("state.txt", Bytes::from(format!("pooled {i}")))
            .await
            .unwrap();
        ids.push(sb.id().clone());
    }
    assert_eq!(first.pool_stats().claimed, 3);
    first.fill_pool().await.unwrap();
    let leftovers = unclaimed(&first, &instance).await;
    assert_eq!(leftovers.len(), 2, "refilled");
    assert_eq!(
        first.list().await.unwrap().len(),
        3,
        "claimed ones are listed"
    );
    // The third sandbox's claim record is lost (say, with a wiped state directory): it must
    // never be handed to anyone again.
    let claims: Vec<_> = walk(state.path());
    let lost = claims
        .iter()
        .find(|p| p.to_string_lossy().contains(ids[2].as_str()))
        .expect("a claim file per claimed sandbox");
    std::fs::remove_file(lost).unwrap();
    // The process "dies" without closing its pool.
    drop(first);

    let second = DockerBackend::connect(cfg.clone()).await.unwrap();
    let listed = second.list().await.unwrap();
    assert_eq!(
        listed.len(),
        2,
        "claimed sandboxes with a record are listed"
    );
    for (i, id) in ids.iter().enumerate().take(2) {
        let info = listed.iter().find(|x| &x.id == id).expect("listed");
        assert_eq!(
            info.session_id.as_deref(),
            Some(format!("sess_p{i}").as_str())
        );
        assert_eq!(
            info.labels.get("work").map(String::as_str),
            Some(format!("w{i}").as_str())
        );
    }
    let keep: HashSet<_> = [ids[0].clone()].into_iter().collect();
    let done = second.reconcile(&keep).await.unwrap();
    assert_eq!(done.removed, vec![ids[1].clone()]);
    assert_eq!(done.adopted.len(), 1);
    let sb = &done.adopted[0];
    assert_eq!(sb.id(), &ids[0]);
    assert_eq!(sb.status().await.unwrap(), SandboxStatus::Running);
    assert_eq!(
        &sb.read_file("state.txt", None).await.unwrap()[..],
        b"pooled 0"
    );
    let out = sb.exec(ExecRequest::shell("echo alive")).await.unwrap();
    assert_eq!(&out.stdout[..], b"alive\n");
    // Unrecorded pool containers (the old pool's and the one whose record was lost) are gone;
    // the new pool is made afresh.
    second.fill_pool().await.unwrap();
    let now = unclaimed(&second, &instance).await;
    assert_eq!(now.len(), 2);
    for old in leftovers.iter().chain([&ids[2].as_str().to_owned()]) {
        assert!(!now.contains(old), "{old} was handed out again");
    }
    let mut all = pool_containers(&second, &instance).await;
    all.sort();
    let mut want: Vec<String> = now
        .iter()
        .cloned()
        .chain([ids[0].as_str().to_owned()])
        .collect();
    want.sort();
    assert_eq!(all, want);
    second.close_pool().await.unwrap();
    let done = second.reconcile(&HashSet::new()).await.unwrap();
    assert_eq!(done.removed, vec![ids[0].clone()]);
    second.close_pool().await.unwrap();
    assert!(second.list().await.unwrap().is_empty());
    assert!(pool_containers(&second, &instance).await.is_empty());
    assert!(
        walk(state.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".json")),
        "claim files removed"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The first command of a pooled sandbox runs on the process started ahead with the container:
/// the same output, exit code, variables, directory, user and timeout kill as an exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_command_of_a_pooled_sandbox_runs_like_any_other() {
    let (backend, _cleanup) = docker_support::connect(pooled_config(1)).await;
    let first = |req: ExecRequest| {
        let backend = backend.clone();
        async move {
            backend.fill_pool().await.unwrap();
            let before = backend.pool_stats().claimed;
            let sb = backend.create(&SandboxSpec::new()).await.unwrap();
            assert_eq!(backend.pool_stats().claimed, before + 1);
            let out = sb.exec(req).await;
            (sb, out)
        }
    };
    // The spare is the one exec running in a fresh pooled sandbox; the first command ends it
    // with the command's exit code.
    backend.fill_pool().await.unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let info = backend
        .client()
        .inspect_container(sb.id().as_str(), None)
        .await
        .unwrap();
    let execs = info.exec_ids.unwrap_or_default();
    assert_eq!(execs.len(), 1, "{execs:?}");
    let out = sb
        .exec(ExecRequest::shell("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        (&out.stdout[..], &out.stderr[..], out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], Some(3))
    );
    let spare = backend.client().inspect_exec(&execs[0]).await.unwrap();
    assert_eq!((spare.running, spare.exit_code), (Some(false), Some(3)));
    backend.destroy(sb.id()).await.unwrap();

    let mut req = ExecRequest::argv([
        "sh",
        "-c",
        "printf '%s|%s|' \"$FOO\" \"$1\"; pwd; id -u",
        "x",
        "it's $HOME \"q\"",
    ]);
    req.env.insert("FOO".into(), "b'a r".into());
    let (sb, out) = first(req).await;
    let out = out.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b'a r|it's $HOME \"q\"|/workspace\n1000\n"
    );
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    // Later commands are plain execs.
    let out = sb.exec(ExecRequest::argv(["echo", "again"])).await.unwrap();
    assert_eq!(&out.stdout[..], b"again\n");
    backend.destroy(sb.id()).await.unwrap();

    let (sb, out) = first(ExecRequest::argv(["no-such-command-here"])).await;
    assert_eq!(out.unwrap().exit_code, Some(127));
    backend.destroy(sb.id()).await.unwrap();

    let mut req = ExecRequest::shell("sleep 30; echo late");
    req.timeout = Duration::from_secs(1);
    let (sb, out) = first(req).await;
    assert_eq!(
        out.unwrap_err().kind(),
        cma_sandbox::SandboxErrorKind::Timeout
    );
    let out = sb
        .exec(ExecRequest::shell(
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 30 ' || true",
        ))
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"0\n", "the timed-out command was killed");
    backend.destroy(sb.id()).await.unwrap();
    backend.close_pool().await.unwrap();
}

/// `start_pool` removes a previous process's pool; a pool container that died while it waited is
/// removed, never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pool_container_is_not_handed_out() {
    let cfg = pooled_config(1);
    let instance = cfg.instance.clone();
    let (backend, _cleanup) = docker_support::connect(cfg.clone()).await;
    backend.fill_pool().await.unwrap();
    let old = unclaimed(&backend, &instance).await;
    assert_eq!(old.len(), 1);
    // A new process of the same instance starts its pool: the old one's container goes.
    let backend = DockerBackend::connect(cfg).await.unwrap();
    assert_eq!(backend.start_pool().await.unwrap(), 1);
    backend.fill_pool().await.unwrap();
    let waiting = unclaimed(&backend, &instance).await;
    assert_eq!(waiting.len(), 1);
    assert_ne!(waiting, old);
    backend
        .client()
        .kill_container(
            &waiting[0],
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    assert_eq!(backend.pool_stats().claimed, 0);
    assert_ne!(sb.id().as_str(), waiting[0]);
    let out = sb.exec(ExecRequest::argv(["echo", "ok"])).await.unwrap();
    assert_eq!(&out.stdout[..], b"ok\n");
    assert!(
        !pool_containers(&backend, &instance)
            .await
            .contains(&waiting[0])
    );
    backend.destroy(sb.id()).await.unwrap();
    backend.close_pool().await.unwrap();
}
