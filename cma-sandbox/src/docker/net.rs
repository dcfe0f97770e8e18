//! The sandbox network: one `internal` bridge network (no outbound route through the engine,
//! inter-container traffic off, no IPv6), and host `iptables` rules that leave the sandboxes
//! only the egress endpoint on the host (engines before 26 route internal networks to the
//! host's bridge address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;

use super::{DockerConfig, LABEL_INSTANCE, LABEL_MANAGED, map_docker_err};
use crate::error::{Result, SandboxError, SandboxErrorKind};

/// The host chain holding the sandbox bridge's input rules.
const CHAIN: &str = "CMA-SANDBOX-IN";

/// How long a backend waits for a network another one is creating (see [`ensure_network`]).
const CREATE_RACE_WAIT: Duration = Duration::from_secs(5);

/// Create the network if missing; return its gateway (the host's address on it).
///
/// Backends connecting at once may all find it missing and all create it. The engine takes one
/// create; how the others fail depends on its version (409 on recent ones; engines before 23 do
/// not check names, and fail a losing create on the bridge name the winner took, before the
/// winner's network can be found by name). So a failed create is followed by more lookups,
/// for up to [`CREATE_RACE_WAIT`], and reported only if the network never appears.
pub(crate) async fn ensure_network(docker: &Docker, cfg: &DockerConfig) -> Result<Option<IpAddr>> {
    let started = tokio::time::Instant::now();
    let mut create_failed = None;
    loop {
        match docker.inspect_network(&cfg.network, None).await {
            Ok(n) => {
                if n.internal != Some(true) {
                    return Err(SandboxError::new(
                        SandboxErrorKind::Backend,
                        format!(
                            "docker: network {:?} exists but is not internal",
                            cfg.network
                        ),
                    ));
                }
                let gw = n
                    .ipam
                    .and_then(|i| i.config)
                    .and_then(|c| c.into_iter().find_map(|c| c.gateway))
                    .and_then(|g| g.parse().ok());
                return Ok(gw);
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                if let Some(e) = create_failed.take() {
                    if started.elapsed() >= CREATE_RACE_WAIT {
                        return Err(map_docker_err(e, "create network"));
                    }
                    create_failed = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match docker.create_network(network_request(cfg)).await {
                    Ok(_) => {}
                    Err(e) => create_failed = Some(e),
                }
            }
            Err(e) => return Err(map_docker_err(e, "inspect network")),
        }
    }
}

/// The sandbox network as [`ensure_network`] creates it.
fn network_request(cfg: &DockerConfig) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: cfg.network.clone(),
        driver: Some("bridge".into()),
        internal: Some(true),
        attachable: Some(false),
        options: Some(HashMap::from([
            (
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            ),
            (
                "com.docker.network.bridge.name".to_owned(),
                cfg.bridge.clone(),
            ),
        ])),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_owned(), "1".to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.instance.clone()),
        ])),
        ..Default::default()
    }
}

/// The TCP port of `proxy_url` when its host is the gateway (the proxy listens on the host).
pub(crate) fn endpoint_port(proxy_url: &str, gateway: Option<IpAddr>) -> Option<u16> {
    let rest = proxy_url.split_once("://").map_or(proxy_url, |x| x.1);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |x| x.1);
    let (host, port) = authority.rsplit_once(':')?;
    let host: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    (Some(host) == gateway).then(|| port.parse().ok())?
}

async fn iptables(args: &[&str]) -> std::io::Result<bool> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status(),
    )
    .await
    .map_err(|_| std::io::Error::other("iptables timed out"))??;
    Ok(out.success())
}

/// Make sure the host accepts from `bridge` only TCP to the gateway on `ports` (plus replies to
/// connections the host opened); everything else arriving from sandboxes is dropped. Idempotent.
pub(crate) async fn install_firewall(
    bridge: &str,
    gateway: Option<IpAddr>,
    ports: &[u16],
) -> Result<()> {
    let fail = |what: &str| {
        SandboxError::new(
            SandboxErrorKind::Backend,
            format!(
                "docker: cannot install the host firewall ({what}); run as root with iptables, or set DockerConfig::host_firewall = false"
            ),
        )
    };
    let io = |e: std::io::Error| fail("iptables not runnable").with_source(e);
    // The chain (creating it fails harmlessly when it exists).
    let _ = iptables(&["-N", CHAIN]).await.map_err(io)?;
    if !iptables(&["-C", "INPUT", "-i", bridge, "-j", CHAIN])
        .await
        .map_err(io)?
        && !iptables(&["-I", "INPUT", "1", "-i", bridge, "-j", CHAIN])
            .await
            .map_err(io)?
    {
        return Err(fail("jump rule"));
    }
    if !iptables(&["-C", CHAIN, "-j", "DROP"]).await.map_err(io)?
        && !iptables(&["-A", CHAIN, "-j", "DROP"]).await.map_err(io)?
    {
        return Err(fail("drop rule"));
    }
    let est = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ];
    let mut check = vec!["-C", CHAIN];
    check.extend(est);
    if !iptables(&check).await.map_err(io)? {
        let mut ins = vec!["-I", CHAIN, "1"];
        ins.extend(est);
        if !iptables(&ins).await.map_err(io)? {
            return Err(fail("established rule"));
        }
    }
    if let Some(gw) = gateway {
        let gw = gw.to_string();
        for port in ports {
            let port = port.to_string();
            let rule = [
                "-p",
                "tcp",
                "-d",
                gw.as_str(),
                "--dport",
                port.as_str(),
                "-j",
                "ACCEPT",
            ];
            let mut check = vec!["-C", CHAIN];
            check.extend(rule);
            if !iptables(&check).await.map_err(io)? {
                let mut ins = vec!["-I", CHAIN, "1"];
                ins.extend(rule);
                if !iptables(&ins).await.map_err(io)? {
                    return Err(fail("egress rule"));
                }
            }
        }
    }
    Ok(())
}

/// Remove the accept rule of an egress port (idempotent).
pub(crate) async fn remove_port(gateway: Option<IpAddr>, port: u16) -> Result<()> {
    let Some(gw) = gateway else { return Ok(()) };
    let (gw, port) = (gw.to_string(), port.to_string());
    let rule = [
        "-p",
        "tcp",
        "-d",
        gw.as_str(),
        "--dport",
        port.as_str(),
        "-j",
        "ACCEPT",
    ];
    loop {
        let mut del = vec!["-D", CHAIN];
        del.extend(rule);
        match iptables(&del).await {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) => {
                return Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    "docker: iptables not runnable",
                )
                .with_source(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_port_only_for_the_gateway() {
        let gw: IpAddr = "172.18.0.1".parse().unwrap();
        assert_eq!(
            endpoint_port("http://172.18.0.1:3128", Some(gw)),
            Some(3128)
        );
        assert_eq!(
            endpoint_port("http://u:p@172.18.0.1:8080/", Some(gw)),
            Some(8080)
        );
        assert_eq!(endpoint_port("http://10.0.0.1:3128", Some(gw)), None);
        assert_eq!(endpoint_port("http://172.18.0.1", Some(gw)), None);
    }
}
