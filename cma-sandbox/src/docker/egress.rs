//! What a sandbox whose spec names an [`EgressEndpoint`] gets: the proxy variables every common
//! client reads, the per-sandbox CA installed where those clients look for trust anchors, and
//! the address the proxy identifies the container by.
//!
//! * Variables: `HTTP_PROXY`, `HTTPS_PROXY` (both cases) point at the endpoint; `NO_PROXY` (both
//!   cases) lists only the container's own loopback names. With a CA: `SSL_CERT_FILE`,
//!   `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, `GIT_SSL_CAINFO`, `PIP_CERT`
//!   name [`CA_BUNDLE_PATH`](super::CA_BUNDLE_PATH).
//! * Files, written into the created container before it starts, owned by root and
//!   world-readable: the image's bundle plus the CA at `CA_BUNDLE_PATH` and at the Debian
//!   system bundle path (so clients that ignore the variables trust it too: OpenSSL's default
//!   file, Python's `ssl`, curl, git), the CA alone under `/usr/local/share/ca-certificates`
//!   (kept by `update-ca-certificates` if the sandbox runs it), `/etc/pip.conf` naming the
//!   bundle when the image has none, and an `http.sslCAInfo` section appended to
//!   `/etc/gitconfig`. Only the CA *certificate* ever enters the sandbox; its key stays with
//!   the proxy.
//! * Address: the container's IPv4 address on the sandbox network, read after the container
//!   started and before anything runs in it but the init process and `sleep`; the proxy
//!   registers it before the first command.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::Docker;
use bollard::query_parameters::DownloadFromContainerOptions;
use futures::StreamExt;

use super::{CA_BUNDLE_PATH, archive, map_docker_err};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::EgressEndpoint;

/// The Debian/Ubuntu system bundle (OpenSSL's default `cafile` there).
const SYSTEM_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// Where `update-ca-certificates` picks up local CAs.
const LOCAL_CA: &str = "usr/local/share/ca-certificates/cma-egress.crt";
/// Most bytes read back from an image file we extend (bundles are ~200 KiB).
const MAX_IMAGE_FILE: usize = 4 << 20;

/// The variables a sandbox with `egress` gets (added to the spec's own).
pub(crate) fn proxy_env(egress: &EgressEndpoint, env: &mut BTreeMap<String, String>) {
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.insert(k.into(), egress.proxy_url.clone());
    }
    for k in ["NO_PROXY", "no_proxy"] {
        env.insert(k.into(), "localhost,127.0.0.1,::1".into());
    }
    if egress.ca_cert_pem.is_some() {
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
        ] {
            env.insert(k.into(), CA_BUNDLE_PATH.into());
        }
    }
}

/// Read one file of a created container (`None` if it is missing or larger than
/// [`MAX_IMAGE_FILE`]).
async fn read_container_file(docker: &Docker, container: &str, path: &str) -> Option<Vec<u8>> {
    let mut s = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions {
            path: path.to_owned(),
        }),
    );
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.ok()?;
        if tar_bytes.len() + chunk.len() > MAX_IMAGE_FILE + 64 * 1024 {
            return None;
        }
        tar_bytes.extend_from_slice(&chunk);
    }
    archive::first_file(&tar_bytes)
}

fn with_newline(mut v: Vec<u8>) -> Vec<u8> {
    if !v.is_empty() && !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

/// Install the CA certificate `ca_pem` in the created (not yet started) container `name`.
pub(crate) async fn install_ca(docker: &Docker, name: &str, ca_pem: &str) -> Result<()> {
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") || ca_pem.contains("PRIVATE KEY") {
        return Err(SandboxError::new(
            SandboxErrorKind::InvalidInput,
            "docker: the egress CA must be a PEM certificate (and never a key)",
        ));
    }
    let ca = with_newline(ca_pem.as_bytes().to_vec());
    let image_bundle = read_container_file(docker, name, &format!("/{SYSTEM_BUNDLE}"))
        .await
        .map(with_newline)
        .unwrap_or_default();
    let mut bundle = image_bundle;
    bundle.extend_from_slice(&ca);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            CA_BUNDLE_PATH.trim_start_matches('/').to_owned(),
            bundle.clone(),
        ),
        (SYSTEM_BUNDLE.to_owned(), bundle),
        (LOCAL_CA.to_owned(), ca),
    ];
    if read_container_file(docker, name, "/etc/pip.conf")
        .await
        .is_none()
    {
        files.push((
            "etc/pip.conf".to_owned(),
            format!("[global]\ncert = {CA_BUNDLE_PATH}\n").into_bytes(),
        ));
    }
    // Git accepts a section more than once: append to whatever the image configured.
    let mut gitconfig = read_container_file(docker, name, "/etc/gitconfig")
        .await
        .map(with_newline)
        .unwrap_or_default();
    gitconfig.extend_from_slice(format!("[http]\n\tsslCAInfo = {CA_BUNDLE_PATH}\n").as_bytes());
    files.push(("etc/gitconfig".to_owned(), gitconfig));
    let tar = files_tar(&files, 0o644)?;
    docker
        .upload_to_container(
            name,
            Some(bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            }),
            bollard::body_full(bytes::Bytes::from(tar)),
        )
        .await
        .map_err(|e| map_docker_err(e, "upload"))
}

/// A tar of regular files owned by root with `mode` (parent directories 0755, root-owned).
fn files_tar(files: &[(String, Vec<u8>)], mode: u32) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| SandboxError::new(SandboxErrorKind::Io, "tar").with_source(e);
    let mut b = tar::Builder::new(Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    for (rel, data) in files {
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc.push_str(part);
            acc.push('/');
            if seen.insert(acc.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &acc, std::io::empty()).map_err(io)?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, rel, data.as_slice()).map_err(io)?;
    }
    b.into_inner().map_err(io)
}

/// The container's address on `network` (`None` when it is not attached or has none yet).
pub(crate) async fn container_address(
    docker: &Docker,
    name: &str,
    network: &str,
) -> Result<Option<IpAddr>> {
    let info = docker
        .inspect_container(name, None)
        .await
        .map_err(|e| map_docker_err(e, "inspect"))?;
    Ok(info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut nets| nets.remove(network))
        .and_then(|e| e.ip_address)
        .and_then(|ip| ip.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_variables_in_both_cases_and_ca_paths() {
        let mut env = BTreeMap::new();
        proxy_env(
            &EgressEndpoint {
                proxy_url: "http://172.18.0.1:3128".into(),
                ca_cert_pem: Some("pem".into()),
            },
            &mut env,
        );
        for k in ["HTTP_PROXY", "https_proxy", "NO_PROXY", "no_proxy"] {
            assert!(env.contains_key(k), "{k}");
        }
        assert_eq!(env["SSL_CERT_FILE"], CA_BUNDLE_PATH);
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], CA_BUNDLE_PATH);
        let mut env = BTreeMap::new();
        proxy_env(
            &EgressEndpoint {
                proxy_url: "http://172.18.0.1:3128".into(),
                ca_cert_pem: None,
            },
            &mut env,
        );
        assert!(!env.contains_key("SSL_CERT_FILE"));
    }
}
