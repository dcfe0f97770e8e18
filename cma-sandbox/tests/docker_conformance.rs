//! The conformance suite on the Docker backend (needs dockerd and the test image; see
//! `.ci/setup.d/20-docker.sh`).

mod docker_support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_passes_the_conformance_suite() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    cma_sandbox::conformance::run_all(&backend).await;
}
