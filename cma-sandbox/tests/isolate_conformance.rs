//! The isolate backend passes the shared conformance suite.

use cma_sandbox::isolate::IsolateBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_backend_passes_the_conformance_suite() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path().join("sandboxes")).unwrap();
    cma_sandbox::conformance::run_all(&backend).await;
}
