//! Shared fixtures of the Docker backend tests: connect (failing loudly when the engine or the
//! test image is missing), a unique control-plane instance per test so runs never touch each
//! other's containers, and a guard that removes that instance's containers even on panic.
#![allow(dead_code)]

use std::collections::HashMap;

use cma_sandbox::Capabilities;
use cma_sandbox::docker::{DockerBackend, DockerConfig, LABEL_INSTANCE, LABEL_MANAGED};

/// The test image (built by `scripts/docker-image.sh`).
pub fn image() -> String {
    std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:2".into())
}

/// A config for one test: unique instance label.
pub fn config() -> DockerConfig {
    let mut cfg = DockerConfig::new(image());
    cfg.instance = format!("test-{}", uuid::Uuid::new_v4().simple());
    cfg
}

/// Connect or fail with instructions.
pub async fn connect(cfg: DockerConfig) -> (DockerBackend, Cleanup) {
    let instance = cfg.instance.clone();
    let backend = match DockerBackend::connect(cfg).await {
        Ok(b) => b,
        Err(e) => panic!(
            "the Docker backend tests need a running dockerd and the test image: {e}\n\
             start it with `source .ci/setup.d/20-docker.sh` (installs docker.io, starts dockerd, \
             builds the image with scripts/docker-image.sh)"
        ),
    };
    if backend.client().inspect_image(&image()).await.is_err() {
        panic!(
            "test image {} is missing: run scripts/docker-image.sh (or source .ci/setup.d/20-docker.sh)",
            image()
        );
    }
    (backend, Cleanup { instance })
}

/// The engine's storage driver and the file system under it, as `docker info` reports them.
pub async fn storage(docker: &bollard::Docker) -> (String, String) {
    let info = docker.info().await.expect("docker info");
    let backing = info
        .driver_status
        .unwrap_or_default()
        .into_iter()
        .find(|kv| kv.first().map(String::as_str) == Some("Backing Filesystem"))
        .and_then(|kv| kv.get(1).cloned())
        .unwrap_or_default();
    (info.driver.unwrap_or_default(), backing)
}

/// What the Docker backend's sandboxes (from the empty spec) must be able to do, pinned for the
/// conformance suite. `disk_quota` depends on the engine's storage: overlay2 enforces a size
/// only on xfs with `pquota`; this project's machines run overlay2 on ext4 (no quota). Any other
/// storage setup must be pinned here before the suite runs on it.
pub async fn expected_capabilities(backend: &DockerBackend) -> Capabilities {
    let (driver, backing) = storage(backend.client()).await;
    assert!(
        driver == "overlay2" && backing != "xfs",
        "storage driver {driver} on {backing:?}: pin whether it enforces disk_bytes in \
         docker_support::expected_capabilities"
    );
    let mut c = Capabilities::default();
    c.shell_exec = true;
    c.persistent_shell = true;
    c.files = true;
    c.symlinks = true;
    c.archive = true;
    c.resume = true;
    // No JavaScript engine in the backend; no network without an egress endpoint in the spec.
    c.execute_js = false;
    c.network = false;
    c.disk_quota = false;
    c
}

/// Removes every container of the instance when dropped.
pub struct Cleanup {
    pub instance: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let instance = self.instance.clone();
        let t = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_socket_defaults() else {
                    return;
                };
                let Ok(docker) = docker.negotiate_version().await else {
                    return;
                };
                let filters = HashMap::from([(
                    "label".to_owned(),
                    vec![
                        format!("{LABEL_MANAGED}=1"),
                        format!("{LABEL_INSTANCE}={instance}"),
                    ],
                )]);
                let Ok(list) = docker
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        all: true,
                        filters: Some(filters),
                        ..Default::default()
                    }))
                    .await
                else {
                    return;
                };
                for c in list {
                    if let Some(id) = c.id {
                        let _ = docker
                            .remove_container(
                                &id,
                                Some(bollard::query_parameters::RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await;
                    }
                }
            });
        });
        let _ = t.join();
    }
}
