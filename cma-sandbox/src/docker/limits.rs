//! What the Docker backend does with each [`SandboxSpec`] knob: honour it or refuse the spec
//! at `create` with a typed error, never ignore it. Also whether this engine can enforce a disk
//! quota (`disk_bytes`, Docker's `size` storage option), found out once at connect.
//!
//! | knob | applied as | refused when |
//! |---|---|---|
//! | `image` | the container's image | missing locally (`NotFound`; never pulled) |
//! | `cpus` | `NanoCpus` | below 0.01 or not finite (`InvalidInput`); more than the host has (the engine's 400) |
//! | `memory_bytes` | memory and memory+swap limit | `0`, which the engine reads as unlimited |
//! | `pids` | `PidsLimit` | `0`, which the engine reads as unlimited |
//! | `disk_bytes` | storage option `size` | the storage driver cannot enforce it (`Unsupported`); `0` |
//! | `env` | the container's environment | a name that is empty or holds `=` or NUL, a value with NUL, an Anthropic credential |
//! | `mounts` | bind mounts (`ro` when read-only) | a relative sandbox path, a `:` in either path, a missing host directory |
//! | `egress` | proxy variables, CA bundle, a firewall opening for its port | its host is not the sandbox network's gateway (the only address a sandbox reaches) |
//! | `labels`, `session_id`, `environment_id` | container labels | never |

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

use super::{DockerConfig, LABEL_INSTANCE, LABEL_MANAGED, map_docker_err, net};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::SandboxSpec;

/// Smallest CPU limit the engine accepts, in cores.
const MIN_CPUS: f64 = 0.01;

/// Whether this engine enforces `disk_bytes`, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskQuota {
    pub enforced: bool,
    /// Why not (for the `Unsupported` error), empty when enforced.
    pub why_not: String,
}

impl DiskQuota {
    fn no(why: impl Into<String>) -> Self {
        Self {
            enforced: false,
            why_not: why.into(),
        }
    }
}

/// What `docker info` says about the storage driver, before any probe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DriverVerdict {
    /// This driver cannot limit a container's size here.
    Never(String),
    /// It may: create a container with a `size` to find out.
    Probe,
}

/// Decide from the storage driver's name and its `Backing Filesystem` status. `overlay2` (and
/// `vfs`) enforce `size` only on XFS mounted with `pquota`; `btrfs`, `zfs`, `devicemapper`
/// and `windowsfilter` can, depending on their setup; other drivers (and containerd image
/// store snapshotters) cannot.
pub(crate) fn driver_verdict(driver: &str, status: &[Vec<String>]) -> DriverVerdict {
    let backing = status
        .iter()
        .find(|kv| kv.first().map(String::as_str) == Some("Backing Filesystem"))
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
        .unwrap_or("unknown");
    match driver {
        "overlay2" | "vfs" if backing == "xfs" => DriverVerdict::Probe,
        "overlay2" | "vfs" => DriverVerdict::Never(format!(
            "the {driver} storage driver enforces a size only on xfs mounted with pquota; this engine's is on {backing}"
        )),
        "btrfs" | "zfs" | "devicemapper" | "windowsfilter" => DriverVerdict::Probe,
        other => DriverVerdict::Never(format!(
            "the {other:?} storage driver cannot limit a container's size"
        )),
    }
}

/// Find out whether `disk_bytes` can be enforced: from `docker info`, then, where the driver
/// may support it, by creating (never starting) one container with a `size` storage option
/// from [`DockerConfig::image`] and removing it again.
pub(crate) async fn detect_disk_quota(docker: &Docker, cfg: &DockerConfig) -> DiskQuota {
    let info = match docker.info().await {
        Ok(i) => i,
        Err(e) => return DiskQuota::no(format!("docker info failed: {e}")),
    };
    let driver = info.driver.unwrap_or_default();
    let status = info.driver_status.unwrap_or_default();
    if let DriverVerdict::Never(why) = driver_verdict(&driver, &status) {
        return DiskQuota::no(why);
    }
    let name = format!("cma-quota-probe-{}", uuid::Uuid::new_v4().simple());
    let body = ContainerCreateBody {
        image: Some(cfg.image.clone()),
        cmd: Some(vec!["true".into()]),
        entrypoint: Some(vec![]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_owned(), "1".to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.instance.clone()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            storage_opt: Some(HashMap::from([("size".to_owned(), "1G".to_owned())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await;
    match created {
        Ok(_) => {
            let _ = docker
                .remove_container(
                    &name,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            DiskQuota {
                enforced: true,
                why_not: String::new(),
            }
        }
        Err(e) => DiskQuota::no(format!(
            "a test container from {:?} with a size limit on the {driver} storage driver failed: {}",
            cfg.image,
            map_docker_err(e, "create").context()
        )),
    }
}

fn invalid(msg: String) -> SandboxError {
    SandboxError::new(SandboxErrorKind::InvalidInput, format!("docker: {msg}"))
}

/// Refuse a spec (resolved against `cfg`'s defaults) with a knob this backend cannot honour as
/// asked; see the module docs. Mount host paths are checked when the container is made.
pub(crate) fn check_spec(
    spec: &SandboxSpec,
    cfg: &DockerConfig,
    disk: &DiskQuota,
    gateway: Option<IpAddr>,
) -> Result<()> {
    match spec.disk_bytes {
        Some(_) if !disk.enforced => {
            return Err(SandboxError::unsupported(format!(
                "docker: SandboxSpec::disk_bytes cannot be enforced on this engine: {}",
                disk.why_not
            )));
        }
        Some(0) => {
            return Err(invalid(
                "SandboxSpec::disk_bytes must be greater than 0".into(),
            ));
        }
        _ => {}
    }
    let cpus = spec.cpus.unwrap_or(cfg.cpus);
    if !cpus.is_finite() || cpus < MIN_CPUS {
        return Err(invalid(format!(
            "a CPU limit of {cpus} cores cannot be applied (at least {MIN_CPUS})"
        )));
    }
    if spec.memory_bytes.unwrap_or(cfg.memory_bytes) == 0 {
        return Err(invalid(
            "a memory limit of 0 bytes cannot be applied (the engine reads it as unlimited)".into(),
        ));
    }
    if spec.pids.unwrap_or(cfg.pids) == 0 {
        return Err(invalid(
            "a process limit of 0 cannot be applied (the engine reads it as unlimited)".into(),
        ));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(invalid(format!(
                "environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    for m in &spec.mounts {
        if !m.sandbox_path.starts_with('/') || m.sandbox_path.contains(':') {
            return Err(invalid(format!("bad mount path {:?}", m.sandbox_path)));
        }
    }
    if let Some(egress) = &spec.egress
        && net::endpoint_port(&egress.proxy_url, gateway).is_none()
    {
        let gw = gateway.map_or_else(|| "none".to_owned(), |g| g.to_string());
        return Err(invalid(format!(
            "the egress endpoint {:?} must be host:port on the sandbox network's gateway ({gw}), the only address a sandbox can reach",
            egress.proxy_url
        )));
    }
    Ok(())
}

/// The container's storage options for `spec`: `size` when it sets `disk_bytes`.
pub(crate) fn storage_opt(spec: &SandboxSpec) -> Option<HashMap<String, String>> {
    spec.disk_bytes
        .map(|b| HashMap::from([("size".to_owned(), b.to_string())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EgressEndpoint;

    fn status(backing: &str) -> Vec<Vec<String>> {
        vec![
            vec!["Backing Filesystem".into(), backing.into()],
            vec!["Supports d_type".into(), "true".into()],
        ]
    }

    #[test]
    fn overlay2_needs_xfs_and_unknown_drivers_never_enforce_a_size() {
        assert!(matches!(
            driver_verdict("overlay2", &status("extfs")),
            DriverVerdict::Never(w) if w.contains("xfs") && w.contains("extfs")
        ));
        assert_eq!(
            driver_verdict("overlay2", &status("xfs")),
            DriverVerdict::Probe
        );
        assert_eq!(driver_verdict("btrfs", &[]), DriverVerdict::Probe);
        assert!(matches!(
            driver_verdict("fuse-overlayfs", &status("xfs")),
            DriverVerdict::Never(_)
        ));
        assert!(matches!(
            driver_verdict("overlayfs", &[]),
            DriverVerdict::Never(_)
        ));
    }

    #[test]
    fn knobs_the_engine_would_read_as_unlimited_are_refused() {
        let cfg = DockerConfig::new("img");
        let yes = DiskQuota {
            enforced: true,
            why_not: String::new(),
        };
        let no = DiskQuota::no("overlay2 on extfs");
        let gw: Option<IpAddr> = Some("172.30.0.1".parse().unwrap());
        let check = |f: &dyn Fn(&mut SandboxSpec), disk: &DiskQuota| {
            let mut s = SandboxSpec::new();
            f(&mut s);
            check_spec(&s, &cfg, disk, gw).err().map(|e| e.kind())
        };
        assert_eq!(check(&|_| {}, &no), None);
        assert_eq!(
            check(&|s| s.disk_bytes = Some(1 << 30), &no),
            Some(SandboxErrorKind::Unsupported)
        );
        assert_eq!(check(&|s| s.disk_bytes = Some(1 << 30), &yes), None);
        let bad = SandboxErrorKind::InvalidInput;
        assert_eq!(check(&|s| s.disk_bytes = Some(0), &yes), Some(bad));
        assert_eq!(check(&|s| s.cpus = Some(0.0), &no), Some(bad));
        assert_eq!(check(&|s| s.cpus = Some(f64::NAN), &no), Some(bad));
        assert_eq!(check(&|s| s.cpus = Some(0.25), &no), None);
        assert_eq!(check(&|s| s.memory_bytes = Some(0), &no), Some(bad));
        assert_eq!(check(&|s| s.pids = Some(0), &no), Some(bad));
        for k in ["", "A=B", "A\0"] {
            assert_eq!(
                check(&|s| drop(s.env.insert(k.into(), "v".into())), &no),
                Some(bad),
                "{k:?}"
            );
        }
        let egress = |url: &str| {
            let url = url.to_owned();
            move |s: &mut SandboxSpec| {
                s.egress = Some(EgressEndpoint {
                    proxy_url: url.clone(),
                    ca_cert_pem: None,
                })
            }
        };
        assert_eq!(check(&egress("http://172.30.0.1:3128"), &no), None);
        assert_eq!(check(&egress("http://10.0.0.1:3128"), &no), Some(bad));
        assert_eq!(check(&egress("http://172.30.0.1"), &no), Some(bad));
    }
}
