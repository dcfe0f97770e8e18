//! The checks about what a backend declares: its capabilities (pinned by the caller, so none
//! can be switched off unnoticed) and the disk quota they promise or refuse.

use bytes::Bytes;

use crate::{Capabilities, SandboxBackend, SandboxErrorKind, SandboxSpec};

/// The quota the check asks for; large enough for any storage driver's minimum.
const QUOTA_BYTES: u64 = 16 << 20;

/// The backend and a sandbox made from the empty spec report exactly `expected`.
pub async fn capabilities(backend: &dyn SandboxBackend, expected: Capabilities) {
    assert_eq!(
        backend.capabilities(),
        expected,
        "backend {:?} reports other capabilities than the test expects",
        backend.name()
    );
    let sb = backend
        .create(&SandboxSpec::new())
        .await
        .expect("create a sandbox from an empty spec");
    assert_eq!(
        sb.capabilities(),
        expected,
        "a sandbox from the empty spec reports other capabilities than its backend"
    );
    backend.destroy(sb.id()).await.unwrap();
}

/// [`SandboxSpec::disk_bytes`]: with [`Capabilities::disk_quota`], a write past the quota
/// fails with [`QuotaExceeded`](SandboxErrorKind::QuotaExceeded) or
/// [`StorageFull`](SandboxErrorKind::StorageFull) and files written before are intact;
/// without it, `create` refuses the spec with [`Unsupported`](SandboxErrorKind::Unsupported).
pub async fn disk_quota(backend: &dyn SandboxBackend) {
    let mut spec = SandboxSpec::new();
    spec.disk_bytes = Some(QUOTA_BYTES);
    if !backend.capabilities().disk_quota {
        let before = backend.list().await.unwrap().len();
        let err = backend
            .create(&spec)
            .await
            .err()
            .expect("a spec with disk_bytes accepted by a backend without disk_quota");
        assert_eq!(err.kind(), SandboxErrorKind::Unsupported, "{err}");
        assert_eq!(
            backend.list().await.unwrap().len(),
            before,
            "a refused spec left a sandbox behind"
        );
        return;
    }
    let sb = backend
        .create(&spec)
        .await
        .expect("create a sandbox with a disk quota");
    assert!(sb.capabilities().disk_quota);
    if sb.capabilities().files {
        let keep = format!("{}/keep.txt", sb.workdir().trim_end_matches('/'));
        sb.write_file(&keep, Bytes::from_static(b"written before"))
            .await
            .unwrap();
        let big = format!("{}/big.bin", sb.workdir().trim_end_matches('/'));
        let err = sb
            .write_file(
                &big,
                Bytes::from(vec![7u8; (QUOTA_BYTES + (4 << 20)) as usize]),
            )
            .await
            .expect_err("a write past the disk quota succeeded");
        assert!(
            matches!(
                err.kind(),
                SandboxErrorKind::QuotaExceeded | SandboxErrorKind::StorageFull
            ),
            "{err}"
        );
        assert_eq!(
            &sb.read_file(&keep, None).await.unwrap()[..],
            b"written before"
        );
    }
    backend.destroy(sb.id()).await.unwrap();
}
