//! The secret scan and policy edits on running sandboxes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::egress_support::{secret, sha256_hex};
use super::{CURL, assert_no_secret, bed, egress_support, sh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_sandbox_the_audit_or_the_logs() {
    use cma_core::control::egress_record::{StateAuditConfig, StateAuditSink};
    use cma_core::store::state::{MemoryStateStore, StateStore};
    use futures::StreamExt as _;

    let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let sink = Arc::new(StateAuditSink::new(
        state.clone(),
        StateAuditConfig::default(),
    ));
    let bed = bed(Some(sink), None).await;
    let a = bed.a.as_ref();
    let digest = sha256_hex(secret());

    // Injected calls: the key reaches the servers (they report its digest), never the sandbox.
    let injected = [
        "curl -sS --max-time 8 https://api.test/inject/tls",
        "curl -sS --max-time 8 --http2 https://api.test/inject/h2",
        "python3 /workspace/probe.py fetch https://api.test/inject/urllib",
        "curl -sS --max-time 8 http://local.test/inject/local",
        // The sandbox's own value for the header is replaced, not kept or appended.
        "curl -sS --max-time 8 -H 'x-api-key: a-guess' https://api.test/inject/override",
        // Error bodies from the upstream.
        "curl -sS --max-time 8 https://api.test/error/upstream",
    ];
    let mut outputs = Vec::new();
    for cmd in injected {
        let out = sh(a, cmd).await;
        assert!(
            out.contains(&digest),
            "{cmd}: the key was not injected: {out}"
        );
        assert!(!out.contains(&sha256_hex("a-guess")), "{cmd}: {out}");
        outputs.push(out);
    }
    // Refusals and failures: the proxy's error bodies.
    for cmd in [
        "curl -sS --max-time 8 http://api.test/refused/plain-http",
        "curl -sS --max-time 8 -H 'x-api-key: cma-secret:API_KEY' http://denied.test/refused/placeholder",
        "curl -sS --max-time 8 https://api.test:8443/refused/port",
        "curl -sS --max-time 8 -x '' http://api.test/refused/direct",
        "python3 /workspace/probe.py fetch http://rebind-meta.test/x",
        "python3 /workspace/probe.py fetch http://rebind-meta.test/refused/metadata",
    ] {
        outputs.push(sh(a, cmd).await);
    }
    for (i, out) in outputs.iter().enumerate() {
        assert_no_secret(&format!("response {i}"), out.as_bytes());
    }

    // Everything the sandbox can read: environment, processes, files, its workspace snapshot.
    for cmd in [
        "env",
        "ps auxww; ps eww -e",
        "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'",
        "cat /etc/cma/ca-bundle.pem /etc/pip.conf /etc/gitconfig",
        "ls -laR /etc /tmp /workspace /home 2>/dev/null",
    ] {
        let out = sh(a, cmd).await;
        assert_no_secret(cmd, out.as_bytes());
    }
    let env = sh(a, "env").await;
    for var in [
        "HTTP_PROXY",
        "https_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ] {
        assert!(env.contains(&format!("{var}=")), "{var} is not set: {env}");
    }
    let bundle = sh(a, "cat /etc/ssl/certs/ca-certificates.crt").await;
    assert!(
        bundle.contains("BEGIN CERTIFICATE") && !bundle.contains("PRIVATE KEY"),
        "{bundle}"
    );
    // The CA's key (which would let the sandbox mint certificates its own clients trust, and
    // read or forge intercepted traffic) is nowhere the installation writes, nor anywhere else
    // the sandbox can write or read its configuration from.
    let keys = sh(
        a,
        "grep -rlI -e 'PRIVATE KEY' /etc /workspace /home /tmp /var/tmp /run /usr/local 2>/dev/null; echo scanned",
    )
    .await;
    assert_eq!(keys.trim(), "scanned", "private keys found: {keys}");
    let mut workspace = Vec::new();
    let mut stream = a.export_workspace().await.unwrap();
    while let Some(chunk) = stream.next().await {
        workspace.extend_from_slice(&chunk.unwrap());
    }
    assert_no_secret("the workspace snapshot", &workspace);
    // The whole container file system (more than the sandbox user can read) and its config.
    let docker = bollard::Docker::connect_with_socket_defaults().unwrap();
    let mut fs = Vec::new();
    let mut export = docker.export_container(a.id().as_str());
    while let Some(chunk) = export.next().await {
        fs.extend_from_slice(&chunk.unwrap());
    }
    assert!(fs.len() > 1 << 20, "the export is the whole file system");
    assert_no_secret("the container file system", &fs);
    let inspect = docker
        .inspect_container(a.id().as_str(), None)
        .await
        .unwrap();
    assert_no_secret(
        "docker inspect",
        serde_json::to_string(&inspect).unwrap().as_bytes(),
    );

    // The audit log, in memory and in the state store, and every log line of this process.
    let records = bed.proxy.audit.records();
    assert!(
        records
            .iter()
            .any(|r| r.host == "api.test" && r.injected == ["x-api-key"]),
        "{records:#?}"
    );
    assert_no_secret(
        "the audit records",
        serde_json::to_string(&records).unwrap().as_bytes(),
    );
    let stored = {
        let mut all = Vec::new();
        for _ in 0..100 {
            all = state.list_egress_audit(None, 0, 1000).await.unwrap();
            if all.len() >= records.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        all
    };
    assert!(
        stored.len() >= records.len(),
        "{} stored of {}",
        stored.len(),
        records.len()
    );
    assert!(
        stored
            .iter()
            .any(|e| e.session_id.as_deref() == Some("sesn_a") && e.allowed)
    );
    for e in &stored {
        assert_no_secret("the stored audit log", e.record.as_bytes());
    }
    let logs = egress_support::captured_logs().lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&logs).contains("egress"),
        "the audit went through tracing too"
    );
    assert_no_secret("the process's logs", &logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_a_running_sandbox_without_a_restart() {
    use cma_core::control::egress_record::EGRESS_POLICY_EVENT;
    use cma_core::store::state::{MemoryStateStore, StateStore};
    let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let bed = bed(None, Some(state.clone())).await;
    let watcher = bed
        .egress
        .watch_policies()
        .expect("the policy store changes");
    let a = bed.a.as_ref();
    let started = sh(a, "cat /proc/1/stat | cut -d' ' -f22").await;
    let before = sh(a, &format!("{CURL} http://other.test/edit/before")).await;
    assert!(before.contains("HTTP 403"), "{before}");

    let mut v: serde_json::Value = serde_json::from_str(&bed.world.policies_json()).unwrap();
    v["policies"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "allow", "host": "other.test"}));
    bed.proxy
        .store
        .replace(cma_egress::PolicySelector::from_json(v.to_string().as_bytes()).unwrap());
    let after = sh(a, &format!("{CURL} http://other.test/edit/after")).await;
    assert!(after.contains("HTTP 200"), "{after}");
    // The same container, never restarted (its init process started at the same tick).
    assert_eq!(sh(a, "cat /proc/1/stat | cut -d' ' -f22").await, started);

    // The new fingerprint is recorded: the policy's version went up, the session's log says so.
    let recorded = egress_support::eventually(Duration::from_secs(10), || {
        futures::executor::block_on(state.get_egress_policy("pol_a"))
            .unwrap()
            .is_some_and(|p| p.version == 2)
    })
    .await;
    assert!(recorded, "{:?}", state.get_egress_policy("pol_a").await);
    let log: Vec<String> = state
        .list_transitions("sesn_a", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.event == EGRESS_POLICY_EVENT)
        .map(|t| t.detail)
        .collect();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].starts_with("pol_a fp1-") && log[1].starts_with("pol_a fp1-"));
    assert_ne!(log[0], log[1]);
    let stored = state.get_egress_policy("pol_a").await.unwrap().unwrap();
    assert_eq!(log[1], format!("pol_a {}", stored.fingerprint));
    watcher.abort();
}
