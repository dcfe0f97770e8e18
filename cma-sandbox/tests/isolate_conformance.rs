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

/// A directory opened in place (`open_directory`) is not under the backend's root: it reports
/// no `resume`, and indeed cannot be resumed by id.
#[tokio::test]
async fn a_directory_opened_in_place_cannot_be_resumed() {
    use cma_sandbox::{SandboxBackend, SandboxErrorKind};
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.open_directory(dir.path()).unwrap();
    let caps = sb.capabilities();
    assert!(!caps.resume);
    assert!(caps.files && caps.execute_js);
    sb.stop().await.unwrap();
    let err = backend.resume(sb.id()).await.err().unwrap();
    assert_eq!(err.kind(), SandboxErrorKind::NotFound);
}
