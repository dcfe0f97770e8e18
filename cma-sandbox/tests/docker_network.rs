//! The sandbox network is created by whichever backend connects first: backends (of one process
//! or several) connecting together to an engine that lacks it must all start, whichever of them
//! the engine lets create it (engines before 23 do not check network names, so a losing
//! create fails on the bridge name the winner took rather than with a conflict).

#[path = "docker_support/mod.rs"]
mod support;

use cma_sandbox::docker::DockerBackend;

/// Backends connecting at once.
const TOGETHER: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_connecting_together_to_an_engine_without_their_network_all_start() {
    // A network and bridge of this test's own (a bridge name is at most 15 bytes), so it is
    // missing when the backends connect, whatever ran before.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let network = format!("cma-test-{tag}");
    let mut cfg = support::config();
    cfg.network = network.clone();
    cfg.bridge = format!("cmat{}", &tag[..8]);
    // The firewall rules name the bridge; this test's bridge is gone after it.
    cfg.host_firewall = false;
    let (first, _cleanup) = support::connect(cfg.clone()).await;
    let docker = first.client().clone();
    for round in 0..3 {
        // Remove it (the first connect made it), then connect several backends at once.
        docker
            .remove_network(&network)
            .await
            .unwrap_or_else(|e| panic!("round {round}: remove network {network}: {e}"));
        let connects = (0..TOGETHER).map(|_| DockerBackend::connect(cfg.clone()));
        let failed: Vec<String> = futures::future::join_all(connects)
            .await
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| format!("backend {i}: {e}")))
            .collect();
        let found = docker.inspect_network(&network, None).await;
        if !failed.is_empty() || found.is_err() {
            // Leave no network behind (a losing create on an old engine may have made one).
            let _ = docker.remove_network(&network).await;
            panic!(
                "round {round}: of {TOGETHER} backends connecting together, {failed:?} failed \
                 to start; the network: {:?}",
                found.err()
            );
        }
        let n = found.unwrap();
        assert_eq!(n.internal, Some(true), "round {round}");
        assert_eq!(
            n.options
                .unwrap_or_default()
                .get("com.docker.network.bridge.name")
                .cloned(),
            Some(cfg.bridge.clone()),
            "round {round}"
        );
    }
    docker.remove_network(&network).await.unwrap();
}
