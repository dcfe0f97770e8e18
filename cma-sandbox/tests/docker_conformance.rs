//! The conformance suite on the Docker backend (needs dockerd and the test image; see
//! `.ci/setup.d/20-docker.sh`).

mod docker_support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_passes_the_conformance_suite() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let expected = docker_support::expected_capabilities(&backend).await;
    cma_sandbox::conformance::run_all(&backend, expected).await;
}

/// The same suite with the file operations served by one-shot execs of POSIX tools (what images
/// without `python3` get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_without_the_python_helper_passes_the_conformance_suite() {
    let mut cfg = docker_support::config();
    cfg.python_helper = false;
    let (backend, _cleanup) = docker_support::connect(cfg).await;
    let expected = docker_support::expected_capabilities(&backend).await;
    cma_sandbox::conformance::run_all(&backend, expected).await;
}

/// An image without `python3` (made here from the test image) still gets every file operation,
/// through the automatic fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_python3_falls_back_to_posix_tools() {
    use bytes::Bytes;
    use cma_sandbox::{SandboxBackend, SandboxSpec};
    use futures::StreamExt;

    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let docker = backend.client();
    let tag = "cma-sandbox-test-nopython";
    let name = format!("cma-nopy-build-{}", uuid::Uuid::new_v4().simple());
    docker
        .create_container(
            Some(bollard::query_parameters::CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            bollard::models::ContainerCreateBody {
                image: Some(docker_support::image()),
                user: Some("0".into()),
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "rm -f /usr/bin/python3*".into(),
                ]),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker.start_container(&name, None).await.unwrap();
    let mut wait = docker.wait_container(&name, None);
    while wait.next().await.is_some() {}
    docker
        .commit_container(
            bollard::query_parameters::CommitContainerOptions {
                container: Some(name.clone()),
                repo: Some(tag.into()),
                tag: Some("latest".into()),
                changes: Some("USER sandbox".into()),
                ..Default::default()
            },
            bollard::models::ContainerConfig::default(),
        )
        .await
        .unwrap();
    let _ = docker
        .remove_container(
            &name,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;

    let mut spec = SandboxSpec::new();
    spec.image = Some(format!("{tag}:latest"));
    let sb = backend.create(&spec).await.unwrap();
    let out = sb
        .exec(cma_sandbox::ExecRequest::shell(
            "command -v python3 || echo none; id -u",
        ))
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"none\n1000\n");
    sb.write_file("d/a.txt", Bytes::from_static(b"no python\n"))
        .await
        .unwrap();
    assert_eq!(
        &sb.read_file("d/a.txt", None).await.unwrap()[..],
        b"no python\n"
    );
    let entries = sb.read_dir("d").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].name.as_str(), entries[0].stat.size),
        ("a.txt", 10)
    );
    backend.destroy(sb.id()).await.unwrap();
    let _ = docker
        .remove_image(
            &format!("{tag}:latest"),
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}
