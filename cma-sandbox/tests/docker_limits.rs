//! Every spec knob on the Docker backend is applied or refused at create, never ignored:
//! `disk_bytes` where the storage driver cannot enforce a size (this machine's overlay2 on
//! ext4) fails with `Unsupported`; limits the engine would read as unlimited fail with
//! `InvalidInput`; the others show up in the container's configuration. A sandbox has network
//! exactly when its spec names an egress endpoint, also after a resume. Needs dockerd and the
//! test image (`.ci/setup.d/20-docker.sh`).

mod docker_support;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use cma_sandbox::{EgressEndpoint, ExecRequest, SandboxBackend, SandboxErrorKind, SandboxSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_bytes_is_enforced_or_refused_never_ignored() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let (driver, backing) = docker_support::storage(backend.client()).await;
    let caps = backend.capabilities();
    let mut spec = SandboxSpec::new();
    spec.disk_bytes = Some(64 << 20);
    if driver == "overlay2" && backing != "xfs" {
        // This machine's engine (Debian dockerd, overlay2 on ext4) cannot limit a size.
        assert!(!caps.disk_quota, "overlay2 on {backing} reported a quota");
    }
    if !caps.disk_quota {
        let before = backend.list().await.unwrap().len();
        let err = backend
            .create(&spec)
            .await
            .err()
            .expect("disk_bytes accepted");
        assert_eq!(err.kind(), SandboxErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("disk_bytes"), "{err}");
        assert_eq!(
            backend.list().await.unwrap().len(),
            before,
            "a refused spec left a container behind"
        );
        return;
    }
    // An engine that enforces it: writing past the size fails, typed.
    let sb = backend.create(&spec).await.unwrap();
    let out = sb
        .exec(ExecRequest::shell(
            "head -c 100000000 /dev/zero > big 2>/dev/null; echo $?",
        ))
        .await
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    sb.exec(ExecRequest::shell("rm -f big")).await.unwrap();
    let err = sb
        .write_file("big2", Bytes::from(vec![0u8; 100 << 20]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            SandboxErrorKind::StorageFull | SandboxErrorKind::QuotaExceeded
        ),
        "{err}"
    );
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_or_refused() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    type SetKnob = Box<dyn Fn(&mut SandboxSpec)>;
    let refused: Vec<(&str, SetKnob)> = vec![
        ("cpus 0", Box::new(|s| s.cpus = Some(0.0))),
        ("cpus NaN", Box::new(|s| s.cpus = Some(f64::NAN))),
        ("memory 0", Box::new(|s| s.memory_bytes = Some(0))),
        ("pids 0", Box::new(|s| s.pids = Some(0))),
        (
            "env name with =",
            Box::new(|s| drop(s.env.insert("A=B".into(), "v".into()))),
        ),
        (
            "egress off the gateway",
            Box::new(|s| {
                s.egress = Some(EgressEndpoint {
                    proxy_url: "http://192.0.2.10:3128".into(),
                    ca_cert_pem: None,
                })
            }),
        ),
    ];
    for (what, set) in refused {
        let mut spec = SandboxSpec::new();
        set(&mut spec);
        let err = backend.create(&spec).await.err().expect(what);
        assert_eq!(err.kind(), SandboxErrorKind::InvalidInput, "{what}: {err}");
    }
    assert!(backend.list().await.unwrap().is_empty());

    let mut spec = SandboxSpec::new();
    spec.cpus = Some(0.5);
    spec.memory_bytes = Some(256 << 20);
    spec.pids = Some(64);
    spec.env.insert("CMA_KNOB".into(), "on".into());
    let sb = backend.create(&spec).await.unwrap();
    let info = backend
        .client()
        .inspect_container(sb.id().as_str(), None)
        .await
        .unwrap();
    let hc = info.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.memory, Some(256 << 20));
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.storage_opt.unwrap_or_default().get("size"), None);
    let out = sb.exec(ExecRequest::shell("echo $CMA_KNOB")).await.unwrap();
    assert_eq!(&out.stdout[..], b"on\n");
    assert!(!sb.capabilities().network);
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_has_network_exactly_when_its_spec_names_an_egress_endpoint() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    assert!(
        !backend.capabilities().network,
        "the empty spec has no egress endpoint, so no network"
    );
    let gw: IpAddr = backend.gateway().expect("a gateway");
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(gw, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = SandboxSpec::new();
    spec.egress = Some(EgressEndpoint {
        proxy_url: format!("http://{gw}:{port}"),
        ca_cert_pem: None,
    });
    let with = backend.create(&spec).await.unwrap();
    let without = backend.create(&SandboxSpec::new()).await.unwrap();
    assert!(with.capabilities().network);
    assert!(!without.capabilities().network);
    with.stop().await.unwrap();
    without.stop().await.unwrap();
    let with_again = backend.resume(with.id()).await.unwrap();
    let without_again = backend.resume(without.id()).await.unwrap();
    assert!(with_again.capabilities().network, "lost on resume");
    assert!(!without_again.capabilities().network);
    backend.destroy(with.id()).await.unwrap();
    backend.destroy(without.id()).await.unwrap();
    backend.close_egress_port(port).await.unwrap();
}
