//! The isolate backend passes the shared conformance suite, with the capabilities it must have
//! pinned here (a capability switched off would otherwise skip its checks).

use cma_sandbox::Capabilities;
use cma_sandbox::isolate::IsolateBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_backend_passes_the_conformance_suite() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path().join("sandboxes")).unwrap();
    let mut expected = Capabilities::default();
    expected.execute_js = true;
    expected.files = true;
    expected.symlinks = true;
    expected.archive = true;
    expected.resume = true;
    expected.disk_quota = true;
    // No shell, no processes; `fetch` is denied until an egress hook is set.
    expected.shell_exec = false;
    expected.persistent_shell = false;
    expected.network = false;
    cma_sandbox::conformance::run_all(&backend, expected).await;
}
