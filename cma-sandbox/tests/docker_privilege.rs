//! Who a Docker sandbox runs as and what it can leave on the host: an image that would run as
//! root runs as `nobody` (owning its workdir); a root sandbox gets no writable host mount; read-only
//! mounts are `nosuid,nodev`; no setuid-root file or device node created inside reaches a host
//! directory; the backend's own host files are private; a hostile file helper (an agent that is
//! root in its container replaces `python3`) cannot make the host buffer what it announces.
//! Needs dockerd and the test image (`.ci/setup.d/20-docker.sh`).

mod docker_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::docker::FALLBACK_USER;
use cma_sandbox::{ExecRequest, Mount, Sandbox, SandboxBackend, SandboxErrorKind, SandboxSpec};

async fn sh(sb: &Arc<dyn Sandbox>, cmd: &str) -> (i32, String) {
    let out = sb.exec(ExecRequest::shell(cmd)).await.unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.exit_code.unwrap_or(-1), text)
}

/// The test image with `USER root`, committed from a container of it (no build, no registry).
async fn root_image(docker: &bollard::Docker) -> String {
    use bollard::query_parameters::{CommitContainerOptions, CreateContainerOptions};
    let tag = "cma-sandbox-test-root";
    let name = format!("cma-root-image-{}", uuid::Uuid::new_v4().simple());
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            bollard::models::ContainerCreateBody {
                image: Some(docker_support::image()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .commit_container(
            CommitContainerOptions {
                container: Some(name.clone()),
                repo: Some(tag.into()),
                tag: Some("1".into()),
                changes: Some("USER root".into()),
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
    format!("{tag}:1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_would_run_as_root_runs_as_nobody_owning_its_workdir() {
    let (probe, _c0) = docker_support::connect(docker_support::config()).await;
    let image = root_image(probe.client()).await;
    let mut cfg = docker_support::config();
    cfg.image = image;
    let (backend, _cleanup) = docker_support::connect(cfg).await;
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let (code, id) = sh(&sb, "id -u; id -g").await;
    assert_eq!(code, 0);
    assert_eq!(
        id.split_whitespace().collect::<Vec<_>>().join(":"),
        FALLBACK_USER
    );
    // It owns the workdir: the tools and commands can write there.
    sb.write_file("notes.txt", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(sh(&sb, "touch made && ls").await.0, 0);
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_sandbox_gets_no_writable_mount_and_read_only_mounts_are_nosuid_nodev() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let mut cfg = docker_support::config();
    cfg.user = Some("0".into());
    let (root_backend, _c1) = docker_support::connect(cfg).await;
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::new("/m", dir.path()));
    let Err(e) = root_backend.create(&spec).await else {
        panic!("a root sandbox got a writable host mount");
    };
    assert_eq!(e.kind(), SandboxErrorKind::Unsupported, "{e}");

    let (backend, _c2) = docker_support::connect(docker_support::config()).await;
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::read_only("/ro", dir.path()));
    let sb = backend.create(&spec).await.unwrap();
    let (code, line) = sh(&sb, "grep ' /ro ' /proc/mounts").await;
    assert_eq!(code, 0, "{line}");
    let opts: Vec<&str> = line.split_whitespace().nth(3).unwrap().split(',').collect();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(opts.contains(&want), "{want} missing from {line}");
    }
    assert_eq!(&sb.read_file("/ro/f", None).await.unwrap()[..], b"x");
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_setuid_root_file_or_device_made_inside_reaches_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // The sandbox user must be able to write there (the memory dirs of a real host are made
    // for it the same way).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::new("/m", dir.path()));
    let sb = backend.create(&spec).await.unwrap();
    // Every way to a privileged file: copy a shell and make it setuid, give it to root,
    // make device nodes.
    let (_, out) = sh(
        &sb,
        "cp /bin/sh /m/sh; chmod 4755 /m/sh; chown 0:0 /m/sh; chmod 6755 /m/sh; \
         mknod /m/null c 1 3; mknod /m/blk b 7 0; mkfifo /m/fifo; \
         cp -p /bin/sh /m/sh2 2>&1; ls -ln /m",
    )
    .await;
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        seen += 1;
        let privileged = meta.mode() & 0o6000 != 0 && meta.uid() == 0;
        assert!(
            !privileged,
            "{:?} is setuid/setgid root on the host: {out}",
            entry.path()
        );
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "{:?} is a device node on the host",
            entry.path()
        );
    }
    assert!(seen >= 1, "the sandbox could write to its mount: {out}");
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_whatever_it_was_before() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cfg = docker_support::config();
    cfg.state_dir = state.clone();
    let (_backend, _cleanup) = docker_support::connect(cfg).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("resolv.conf")), 0o644);
    // A symlink in its place is refused.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let mut cfg = docker_support::config();
    cfg.state_dir = link;
    assert!(
        cma_sandbox::docker::DockerBackend::connect(cfg)
            .await
            .is_err()
    );
}

/// Replace the container's `python3` (the file helper's interpreter) by `script`.
async fn hostile_helper(sb: &Arc<dyn Sandbox>, script: &str) {
    let (code, out) = sh(
        sb,
        &format!(
            "rm -f /usr/bin/python3 && printf '%s' '{script}' > /usr/bin/python3 && chmod 755 /usr/bin/python3"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_file_helper_cannot_make_the_host_buffer_what_it_announces() {
    let mut cfg = docker_support::config();
    // Root in its container: it can replace the helper's interpreter.
    cfg.user = Some("0".into());
    let (backend, _cleanup) = docker_support::connect(cfg).await;
    let cases = [
        // Announces far more data than a stat may carry, then floods.
        "#!/bin/sh\nwhile read l; do printf \"{\\\"n\\\":99999999999}\\n\"; head -c 50000000 /dev/zero; done\n",
        // A header that never ends.
        "#!/bin/sh\nread l; exec cat /dev/zero\n",
        // A listing of a million empty entries.
        "#!/bin/sh\nread l; printf \"{\\\"entries\\\":[\"; i=0; while [ $i -lt 200000 ]; do printf \"{\\\"name\\\":\\\"\\\"},\"; i=$((i+1)); done; printf \"{\\\"name\\\":\\\"x\\\"}]}\\n\"\n",
        // A header of nested arrays.
        "#!/bin/sh\nread l; head -c 100000 /dev/zero | tr \"\\\\0\" \"[\"; echo\n",
    ];
    for script in cases {
        let sb = backend.create(&SandboxSpec::new()).await.unwrap();
        hostile_helper(&sb, script).await;
        for op in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(60), async {
                if op == 0 {
                    sb.stat("/workspace").await.map(|_| ())
                } else {
                    sb.read_dir("/workspace").await.map(|_| ())
                }
            })
            .await
            .expect("a hostile helper must not hang the call");
            let e = r.expect_err("a hostile helper's reply is refused");
            assert!(
                matches!(
                    e.kind(),
                    SandboxErrorKind::Backend
                        | SandboxErrorKind::Unavailable
                        | SandboxErrorKind::Io
                ),
                "{e}"
            );
        }
        backend.destroy(sb.id()).await.unwrap();
    }
}
