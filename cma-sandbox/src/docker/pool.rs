//! The warm pool ([`DockerConfig::prestart`](super::DockerConfig::prestart)): containers created
//! and started ahead of time from [`DockerConfig::pool_spec`](super::DockerConfig::pool_spec),
//! isolated exactly like any sandbox, named like any sandbox (`cma-<uuid>`), carrying
//! [`LABEL_POOL`], waiting unassigned.
//!
//! * **Claim.** `create` takes a ready container when the spec is compatible with the template
//!   (see [`compatible`]): its name becomes the sandbox id, and the sandbox's identity (session,
//!   environment, labels) is recorded durably in a claim file on the host, under
//!   [`DockerConfig::state_dir`](super::DockerConfig::state_dir)`/claims/<instance>/<id>.json`
//!   (written and synced before `create` returns). Container labels cannot change after
//!   creation, and renaming a container or writing into it costs the Engine tens of
//!   milliseconds each, more than the rest of a claim: the host file costs well under one.
//!   `list`/`reconcile` read a pool container's identity from its claim file.
//! * **Spare process.** Each pool container also gets one attached exec started ahead (a shell
//!   waiting for a script on stdin); the claiming sandbox's first eligible `exec` runs on it,
//!   which saves the Engine's exec start (tens of milliseconds on the first command).
//! * **Refill.** After a claim (and after `reconcile`) one background task per backend creates
//!   containers until `prestart` are ready or in flight; a failure stops it until the next claim.
//! * **Shutdown and restart.** [`DockerBackend::close_pool`] removes the ready containers.
//!   After a restart, `reconcile` removes every pool container that has no claim file (never
//!   hands it out again: a claim file lost with the state directory must not let one session's
//!   container reach another) and the claim files of containers that are gone.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptions;
use serde_json::json;

use super::privilege;
use super::{DockerBackend, DockerConfig, map_docker_err, process};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::{SandboxId, SandboxSpec};

/// Label on pool containers (claimed or not): the fingerprint of the template they were made
/// from.
pub const LABEL_POOL: &str = "cma.pool";

/// Counters of a backend's warm pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Started containers waiting to be claimed.
    pub ready: usize,
    /// Containers being created for the pool right now.
    pub in_flight: usize,
    /// Sandboxes created from the pool since connect.
    pub claimed: u64,
}

/// A ready container: its name and (when it could be started) a spare process for the first
/// command of the sandbox that claims it.
type Member = (String, Option<process::Started>);

#[derive(Default)]
struct State {
    ready: VecDeque<Member>,
    /// Names of the containers being made (not removable as leftovers).
    making: HashSet<String>,
    in_flight: usize,
    filler: bool,
    closed: bool,
    claimed: u64,
}

/// A backend's pool bookkeeping (the containers themselves live in the engine).
pub(crate) struct Pool {
    state: std::sync::Mutex<State>,
    fingerprint: String,
}

impl Pool {
    pub(crate) fn new(cfg: &DockerConfig) -> Self {
        Self {
            state: std::sync::Mutex::new(State::default()),
            fingerprint: fingerprint(cfg),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve a slot for one more container when the pool is short of `target`.
    fn reserve(&self, target: usize) -> bool {
        let mut st = self.lock();
        if st.closed || st.ready.len() + st.in_flight >= target {
            return false;
        }
        st.in_flight += 1;
        true
    }
}

/// What a spec must share with the template to be served from the pool.
#[derive(PartialEq)]
struct Shape {
    image: String,
    cpus: u64,
    memory: u64,
    pids: u32,
    disk: Option<u64>,
    env: BTreeMap<String, String>,
}

fn shape(cfg: &DockerConfig, spec: &SandboxSpec) -> Shape {
    Shape {
        image: spec.image.clone().unwrap_or_else(|| cfg.image.clone()),
        cpus: spec.cpus.unwrap_or(cfg.cpus).to_bits(),
        memory: spec.memory_bytes.unwrap_or(cfg.memory_bytes),
        pids: spec.pids.unwrap_or(cfg.pids),
        disk: spec.disk_bytes,
        env: spec.env.clone(),
    }
}

/// Whether `spec` can be served by a pool container: same image, CPU, memory, process and
/// disk limits and environment variables as [`DockerConfig::pool_spec`] (each resolved
/// against the config's defaults), and no mounts or egress endpoint (those are fixed when a
/// container is created). Session, environment and labels are the sandbox's identity and may
/// differ.
pub(crate) fn compatible(cfg: &DockerConfig, spec: &SandboxSpec) -> bool {
    spec.mounts.is_empty()
        && spec.egress.is_none()
        && shape(cfg, spec) == shape(cfg, &cfg.pool_spec)
}

/// A stable digest (FNV-1a 64) of everything a pool container is made from.
fn fingerprint(cfg: &DockerConfig) -> String {
    let s = shape(cfg, &cfg.pool_spec);
    // `nonroot`: containers made before sandboxes stopped running as an image's root user
    // differ, and are not handed out.
    let text = format!(
        "nonroot\n{}\n{}\n{}\n{}\n{:?}\n{:?}\n{:?}\n{}\n{}\n{}",
        s.image,
        s.cpus,
        s.memory,
        s.pids,
        s.disk,
        s.env,
        cfg.user,
        cfg.workdir,
        cfg.network,
        cfg.host_firewall
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Check the pool template at connect.
pub(crate) fn check_template(cfg: &DockerConfig) -> Result<()> {
    let t = &cfg.pool_spec;
    if cfg.prestart > 0
        && (!t.mounts.is_empty()
            || t.egress.is_some()
            || t.session_id.is_some()
            || t.environment_id.is_some()
            || !t.labels.is_empty()
            || t.env.keys().any(|k| super::is_credential(k)))
    {
        return Err(SandboxError::new(
            SandboxErrorKind::InvalidInput,
            "docker: the pool template (DockerConfig::pool_spec) takes no mounts, egress endpoint, identity, labels or credentials",
        ));
    }
    Ok(())
}

/// The directory of this instance's claim files.
fn claims_dir(cfg: &DockerConfig) -> PathBuf {
    let instance: String = cfg
        .instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    cfg.state_dir.join("claims").join(format!("i-{instance}"))
}

fn claim_file(cfg: &DockerConfig, id: &str) -> PathBuf {
    claims_dir(cfg).join(format!("{id}.json"))
}

/// A claimed sandbox's identity, from its claim file.
pub(crate) struct Identity {
    pub(crate) session_id: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

/// Write the claim file (temporary file, sync, rename, sync the directory).
async fn write_claim(cfg: &DockerConfig, id: &str, spec: &SandboxSpec) -> Result<()> {
    let doc = json!({
        "session_id": spec.session_id,
        "environment_id": spec.environment_id,
        "labels": spec.labels,
    })
    .to_string();
    let dir = claims_dir(cfg);
    let path = claim_file(cfg, id);
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        // Private to this user: 0700 directories, a 0600 file (it names sessions).
        if let Some(claims) = dir.parent() {
            privilege::private_dir(claims)?;
        }
        privilege::private_dir(&dir)?;
        privilege::write_file(&path, doc.as_bytes(), 0o600)
    })
    .await
    .map_err(|e| {
        SandboxError::new(SandboxErrorKind::Backend, "docker: claim task failed").with_source(e)
    })?
    .map_err(|e| {
        SandboxError::new(SandboxErrorKind::Io, "docker: cannot record a pool claim").with_source(e)
    })
}

/// The identity recorded for a pool container; `None`: not claimed (or the record is gone).
pub(crate) fn read_claim(cfg: &DockerConfig, id: &str) -> Option<Identity> {
    let data = std::fs::read(claim_file(cfg, id)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let labels = v
        .get("labels")
        .and_then(|l| l.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some(Identity {
        session_id: v
            .get("session_id")
            .and_then(|x| x.as_str())
            .map(str::to_owned),
        labels,
    })
}

/// Forget a sandbox's claim file (after its container is removed).
pub(crate) fn remove_claim(cfg: &DockerConfig, id: &str) {
    let _ = std::fs::remove_file(claim_file(cfg, id));
}

/// Create one pool container (with its spare process).
async fn make_member(b: &DockerBackend) -> Result<Member> {
    let name = format!("cma-{}", uuid::Uuid::new_v4().simple());
    let mut labels = b.base_labels();
    labels.insert(LABEL_POOL.into(), b.shared.pool.fingerprint.clone());
    b.shared.pool.lock().making.insert(name.clone());
    let made = b
        .make_container(&name, &b.shared.cfg.pool_spec, labels)
        .await;
    let spare = match made {
        Ok(()) => process::start_spare(&b.shared.docker, &name).await.ok(),
        Err(_) => None,
    };
    b.shared.pool.lock().making.remove(&name);
    made.map(|()| (name, spare))
}

/// Put a finished member in the pool, or remove it when the pool was closed meanwhile.
async fn settle(b: &DockerBackend, made: Result<Member>) -> Result<()> {
    let (name, spare) = made?;
    let closed = {
        let mut st = b.shared.pool.lock();
        if !st.closed {
            st.ready.push_back((name.clone(), spare));
        }
        st.closed
    };
    if closed {
        let _ = b.remove_container(&name).await;
    }
    Ok(())
}

/// Start the background refill unless it runs already or the pool is full.
pub(crate) fn refill(b: &DockerBackend) {
    let target = b.shared.cfg.prestart;
    {
        let mut st = b.shared.pool.lock();
        if target == 0 || st.closed || st.filler || st.ready.len() + st.in_flight >= target {
            return;
        }
        st.filler = true;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        b.shared.pool.lock().filler = false;
        return;
    };
    let b = b.clone();
    rt.spawn(async move {
        while b.shared.pool.reserve(target) {
            let made = make_member(&b).await;
            let settled = settle(&b, made).await;
            b.shared.pool.lock().in_flight -= 1;
            if settled.is_err() {
                // Stop on failure; the next claim tries again.
                break;
            }
        }
        b.shared.pool.lock().filler = false;
    });
}

/// Fill the pool now (until `prestart` containers are ready), waiting for the background
/// refill's containers too.
pub(crate) async fn fill(b: &DockerBackend) -> Result<()> {
    let target = b.shared.cfg.prestart;
    while b.shared.pool.reserve(target) {
        let made = make_member(b).await;
        let settled = settle(b, made).await;
        b.shared.pool.lock().in_flight -= 1;
        settled?;
    }
    // Any configured timeout, without overflowing an instant.
    let deadline = Instant::now()
        + b.shared
            .cfg
            .request_timeout
            .min(Duration::from_secs(1 << 32));
    while b.shared.pool.lock().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Stop refilling and remove every ready container (and those being made, once made).
pub(crate) async fn close(b: &DockerBackend) -> Result<()> {
    let names: Vec<String> = {
        let mut st = b.shared.pool.lock();
        st.closed = true;
        st.ready.drain(..).map(|(n, _)| n).collect()
    };
    let mut first_err = None;
    for n in names {
        if let Err(e) = b.remove_container(&n).await
            && e.kind() != SandboxErrorKind::NotFound
        {
            first_err.get_or_insert(e);
        }
    }
    // Containers still being made are removed by `settle` when they finish: wait for them.
    // Any configured timeout, without overflowing an instant.
    let deadline = Instant::now()
        + b.shared
            .cfg
            .request_timeout
            .min(Duration::from_secs(1 << 32));
    while b.shared.pool.lock().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first_err.map_or(Ok(()), Err)
}

pub(crate) fn stats(b: &DockerBackend) -> PoolStats {
    let st = b.shared.pool.lock();
    PoolStats {
        ready: st.ready.len(),
        in_flight: st.in_flight,
        claimed: st.claimed,
    }
}

/// Take a ready container for `spec` when it is compatible and record its identity: the
/// sandbox id and the container's spare process. `None`: create one the usual way.
pub(crate) async fn claim(
    b: &DockerBackend,
    spec: &SandboxSpec,
) -> Result<Option<(SandboxId, Option<process::Started>)>> {
    let cfg = &b.shared.cfg;
    if cfg.prestart == 0 || !compatible(cfg, spec) {
        return Ok(None);
    }
    loop {
        let name = b.shared.pool.lock().ready.pop_front();
        refill(b);
        let Some((name, spare)) = name else {
            return Ok(None);
        };
        // A container that stopped while it waited (killed, engine restarted) is dropped.
        let running = b
            .shared
            .docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|i| i.state?.running)
            .unwrap_or(false);
        if !running {
            drop(spare);
            let _ = b.remove_container(&name).await;
            continue;
        }
        let id = SandboxId::parse(name.clone())?;
        if let Err(e) = write_claim(cfg, &name, spec).await {
            let _ = b.remove_container(&name).await;
            return Err(e);
        }
        b.shared.pool.lock().claimed += 1;
        return Ok(Some((id, spare)));
    }
}

/// After a restart: remove this instance's pool containers that have no claim file (except
/// those this backend holds or is making) and the claim files of containers that are gone.
/// Returns how many containers were removed.
pub(crate) async fn remove_unclaimed(b: &DockerBackend) -> Result<usize> {
    let cfg = &b.shared.cfg;
    let mut filters: HashMap<String, Vec<String>> = b.own_filters();
    if let Some(l) = filters.get_mut("label") {
        l.push(LABEL_POOL.to_owned());
    }
    let found = b
        .shared
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| map_docker_err(e, "list"))?;
    let mut removed = 0;
    let mut present = HashSet::new();
    for c in found {
        let Some(name) = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
        else {
            continue;
        };
        present.insert(name.clone());
        if claim_file(cfg, &name).exists() {
            continue;
        }
        let ours = {
            let st = b.shared.pool.lock();
            st.ready.iter().any(|(n, _)| n == &name) || st.making.contains(&name)
        };
        if ours {
            continue;
        }
        match b.remove_container(&name).await {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Ok(dir) = std::fs::read_dir(claims_dir(cfg)) {
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let id = name.trim_end_matches(".json").trim_end_matches(".tmp");
            if !present.contains(id) {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    refill(b);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{EgressEndpoint, Mount};

    #[test]
    fn identity_may_differ_but_the_shape_must_not() {
        let mut cfg = DockerConfig::new("img:1");
        cfg.prestart = 1;
        let mut spec = SandboxSpec::new();
        spec.session_id = Some("sess".into());
        spec.environment_id = Some("env".into());
        spec.labels.insert("k".into(), "v".into());
        assert!(compatible(&cfg, &spec));
        spec.image = Some("img:1".into());
        spec.memory_bytes = Some(cfg.memory_bytes);
        assert!(
            compatible(&cfg, &spec),
            "explicit defaults are the template's"
        );
        let differs: [fn(&mut SandboxSpec); 6] = [
            |s| s.image = Some("other:1".into()),
            |s| s.memory_bytes = Some(1 << 20),
            |s| s.cpus = Some(0.25),
            |s| {
                s.env.insert("A".into(), "1".into());
            },
            |s| {
                s.mounts.push(Mount {
                    host_path: "/tmp".into(),
                    sandbox_path: "/mnt".into(),
                    read_only: true,
                })
            },
            |s| {
                s.egress = Some(EgressEndpoint {
                    proxy_url: "http://10.0.0.1:3128".into(),
                    ca_cert_pem: None,
                })
            },
        ];
        for change in differs {
            let mut s = spec.clone();
            change(&mut s);
            assert!(!compatible(&cfg, &s));
        }
        cfg.pool_spec.env.insert("A".into(), "1".into());
        let mut s = spec.clone();
        s.env.insert("A".into(), "1".into());
        assert!(compatible(&cfg, &s), "the template's env");
    }

    #[test]
    fn the_fingerprint_follows_the_template() {
        let cfg = DockerConfig::new("img:1");
        let mut other = cfg.clone();
        assert_eq!(fingerprint(&cfg), fingerprint(&other));
        other.pool_spec.pids = Some(7);
        assert_ne!(fingerprint(&cfg), fingerprint(&other));
    }

    #[test]
    fn the_template_takes_no_identity_mounts_or_credentials() {
        let mut cfg = DockerConfig::new("img:1");
        cfg.pool_spec.session_id = Some("s".into());
        assert!(check_template(&cfg).is_ok(), "no pool, no check");
        cfg.prestart = 1;
        assert_eq!(
            check_template(&cfg).unwrap_err().kind(),
            SandboxErrorKind::InvalidInput
        );
        cfg.pool_spec = SandboxSpec::new();
        cfg.pool_spec
            .env
            .insert("ANTHROPIC_API_KEY".into(), "x".into());
        assert!(check_template(&cfg).is_err());
    }
}
