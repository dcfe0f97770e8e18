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
use egress_support::{PROBE_PY, Proxy, World, secret, session};
use serde_json::json;

/// Two sandboxes (sessions `sesn_a` and `sesn_b`) wired to the world's proxy.
pub(crate) struct Bed {
    pub(crate) world: World,
    pub(crate) proxy: Proxy,
    pub(crate) egress: Arc<SessionEgress>,
    _port: PortGuard,
    pub(crate) a: Arc<dyn Sandbox>,
    pub(crate) b: Arc<dyn Sandbox>,
    pub(crate) gateway: IpAddr,
    pub(crate) proxy_addr: SocketAddr,
    _cleanup: docker_support::Cleanup,
}

pub(crate) async fn place(
    egress: &SessionEgress,
    backend: &DockerBackend,
    sid: &str,
) -> Arc<dyn Sandbox> {
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

pub(crate) async fn bed(
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
        _port: PortGuard(backend, proxy_addr.port()),
        a,
        b,
        gateway,
        proxy_addr,
        _cleanup: cleanup,
    }
}

/// Closes the proxy's port in the host firewall when dropped (`create` opened it).
pub(crate) struct PortGuard(pub(crate) DockerBackend, pub(crate) u16);

impl Drop for PortGuard {
    fn drop(&mut self) {
        let (backend, port) = (self.0.clone(), self.1);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(backend.close_egress_port(port));
        })
        .join();
    }
}

/// Run `cmd` in `sandbox`; stdout and stderr together.
pub(crate) async fn sh(sandbox: &dyn Sandbox, cmd: &str) -> String {
    let mut req = ExecRequest::shell(cmd);
    req.timeout = Duration::from_secs(60);
    let out = sandbox.exec(req).await.unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) const CURL: &str = "curl -sS -o /dev/null -w 'HTTP %{http_code} v%{http_version}' --max-time 8 --connect-timeout 4";

/// Scan `haystack` for the secret; the name says where it was found.
pub(crate) fn assert_no_secret(what: &str, haystack: &[u8]) {
    let needle = secret().as_bytes();
    let found = haystack.windows(needle.len()).any(|w| w == needle);
    assert!(!found, "the secret value was found in {what}");
}

#[path = "egress_docker/bypass.rs"]
mod bypass;
#[path = "egress_docker/secrets.rs"]
mod secrets;
#[path = "egress_docker/session.rs"]
mod session;
