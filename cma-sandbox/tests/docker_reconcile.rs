//! Recovery after a control-plane restart: a new backend finds the old one's sandboxes by label,
//! removes those it was not asked to keep and re-adopts the others (stopped ones are started),
//! with their files intact. Needs dockerd and the test image.

mod docker_support;

use std::collections::HashSet;

use bytes::Bytes;
use cma_sandbox::docker::DockerBackend;
use cma_sandbox::{ExecRequest, SandboxBackend, SandboxSpec, SandboxStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_removes_orphans_and_readopts_the_rest() {
    let cfg = docker_support::config();
    let (first, _cleanup) = docker_support::connect(cfg.clone()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut spec = SandboxSpec::new();
        spec.session_id = Some(format!("sess_{i}"));
        spec.labels.insert("work".into(), format!("w{i}"));
        let sb = first.create(&spec).await.unwrap();
        sb.write_file("state.txt", Bytes::from(format!("session {i}")))
            .await
            .unwrap();
        if i == 2 {
            sb.stop().await.unwrap();
        }
        ids.push(sb.id().clone());
    }
    let listed = first.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed
            .iter()
            .find(|i| i.id == ids[0])
            .unwrap()
            .session_id
            .as_deref(),
        Some("sess_0")
    );
    assert_eq!(
        listed
            .iter()
            .find(|i| i.id == ids[1])
            .unwrap()
            .labels
            .get("work")
            .map(String::as_str),
        Some("w1")
    );
    // Another control-plane instance sees none of them.
    let mut foreign = docker_support::config();
    foreign.instance = format!("{}-other", cfg.instance);
    let (other, _c2) = docker_support::connect(foreign).await;
    assert!(other.list().await.unwrap().is_empty());
    assert!(
        other.resume(&ids[0]).await.is_err(),
        "resumed a foreign sandbox"
    );
    drop(first);

    // "Restart": a new backend with the same instance name.
    let second = DockerBackend::connect(cfg).await.unwrap();
    let keep: HashSet<_> = [ids[0].clone(), ids[2].clone()].into_iter().collect();
    let done = second.reconcile(&keep).await.unwrap();
    assert_eq!(done.removed, vec![ids[1].clone()]);
    let mut adopted: Vec<_> = done.adopted.iter().map(|s| s.id().clone()).collect();
    adopted.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(adopted, want);
    for sb in &done.adopted {
        assert_eq!(sb.status().await.unwrap(), SandboxStatus::Running);
        let i = ids.iter().position(|id| id == sb.id()).unwrap();
        let data = sb.read_file("state.txt", None).await.unwrap();
        assert_eq!(&data[..], format!("session {i}").as_bytes());
        let out = sb.exec(ExecRequest::shell("echo alive")).await.unwrap();
        assert_eq!(&out.stdout[..], b"alive\n");
    }
    let left: Vec<_> = second
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&ids[1]));
    // Reconciling with an empty keep-set removes everything.
    let done = second.reconcile(&HashSet::new()).await.unwrap();
    assert_eq!(done.removed.len(), 2);
    assert!(second.list().await.unwrap().is_empty());
}
