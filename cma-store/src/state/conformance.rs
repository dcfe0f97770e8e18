//! The behaviour every [`StateStore`] must show, as one suite each backend's tests run.
//!
//! `run` takes an opener that returns a *new handle on the same database* each time it is called
//! (a clone for [`MemoryStateStore`](super::MemoryStateStore), a fresh connection pool for SQL
//! stores), so the suite can race two handles for one lease and check that a reopened handle sees
//! everything the first wrote. Every check uses ids of its own, so the checks share one database.
//! Times are fixed (no wall clock), so nothing depends on how fast the machine is.
//!
//! Failures panic with the name of the check: this is test support, not a library API.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{
    EgressAuditEntry, EgressPolicyRecord, LeaseClaim, MAX_ID_BYTES, Precondition, SandboxQuery,
    SandboxRecord, SecretMetadata, SessionQuery, SessionRecord, SessionStatus, StateError,
    StateErrorKind, StateStore,
};
use crate::SnapshotId;

/// Run every check. `open` returns a new handle on the same (initially empty) database.
pub async fn run<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn StateStore>, StateError>>,
{
    let store = open().await.expect("conformance: open the store");
    sessions(store.as_ref()).await;
    transitions(store.as_ref()).await;
    webhooks(store.as_ref()).await;
    leases(store.as_ref()).await;
    sandboxes(store.as_ref()).await;
    egress_policies_and_secrets(store.as_ref()).await;
    egress_audit(store.as_ref()).await;
    bad_input(store.as_ref()).await;
    let other = open().await.expect("conformance: open a second handle");
    lease_race(store.clone(), other).await;
    reopen_sees_everything(store, &open).await;
}

/// A fixed instant plus `secs` seconds and `ms` milliseconds.
pub fn at(secs: i64, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0)
        .single()
        .expect("a valid fixed instant")
        + chrono::Duration::seconds(secs)
        + chrono::Duration::milliseconds(ms)
}

fn kind<T: std::fmt::Debug>(check: &str, result: Result<T, StateError>) -> StateErrorKind {
    match result {
        Ok(v) => panic!("{check}: expected an error, got Ok({v:?})"),
        Err(e) => e.kind(),
    }
}

fn snapshot(n: u8) -> SnapshotId {
    SnapshotId::from_hex(&format!("{n:02x}").repeat(32)).expect("a valid snapshot id")
}

/// Sessions: conditional writes, versions, status filters, paging, delete.
pub async fn sessions(store: &dyn StateStore) {
    let check = "sessions";
    let mut a = SessionRecord::new("conf_sess_a", "isolate", at(0, 123));
    assert_eq!(
        store.get_session("conf_sess_a").await.unwrap(),
        None,
        "{check}: empty at first"
    );
    assert_eq!(
        store.put_session(&a, Precondition::Absent).await.unwrap(),
        1,
        "{check}: first version"
    );
    let stored = store
        .get_session("conf_sess_a")
        .await
        .unwrap()
        .expect("stored");
    a.version = 1;
    assert_eq!(stored, a, "{check}: round trip");
    assert_eq!(
        kind(check, store.put_session(&a, Precondition::Absent).await),
        StateErrorKind::Conflict,
        "{check}: Absent on an existing session"
    );

    a.status = SessionStatus::Running;
    a.sandbox_id = Some("sbx_1".into());
    a.last_work_id = Some("work_1".into());
    a.last_snapshot = Some(snapshot(0xab));
    a.egress_policy_id = Some("pol_default".into());
    a.updated_at = at(5, 999);
    assert_eq!(
        store
            .put_session(&a, Precondition::Version(1))
            .await
            .unwrap(),
        2,
        "{check}: CAS"
    );
    assert_eq!(
        kind(check, store.put_session(&a, Precondition::Version(1)).await),
        StateErrorKind::Conflict,
        "{check}: stale version"
    );
    assert_eq!(
        kind(
            check,
            store.put_session(&a, Precondition::Version(u64::MAX)).await
        ),
        StateErrorKind::Conflict,
        "{check}: a version never written"
    );
    let missing = SessionRecord::new("conf_sess_missing", "isolate", at(0, 0));
    assert_eq!(
        kind(
            check,
            store.put_session(&missing, Precondition::Version(1)).await
        ),
        StateErrorKind::Conflict,
        "{check}: Version on a missing session"
    );
    a.version = 2;
    assert_eq!(
        store.get_session("conf_sess_a").await.unwrap(),
        Some(a.clone()),
        "{check}: after CAS"
    );
    a.status = SessionStatus::Idle;
    assert_eq!(
        store.put_session(&a, Precondition::Any).await.unwrap(),
        3,
        "{check}: Any overwrites"
    );

    for (id, status) in [
        ("conf_sess_b", SessionStatus::Sleeping),
        ("conf_sess_c", SessionStatus::Idle),
        ("conf_sess_d", SessionStatus::Terminated),
    ] {
        let mut r = SessionRecord::new(id, "docker", at(1, 0));
        r.status = status;
        store.put_session(&r, Precondition::Any).await.unwrap();
    }
    let ours = |records: Vec<SessionRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| r.session_id)
            .filter(|id| id.starts_with("conf_sess_"))
            .collect()
    };
    let idle = store
        .list_sessions(&SessionQuery {
            status: Some(SessionStatus::Idle),
            ..SessionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ours(idle),
        ["conf_sess_a", "conf_sess_c"],
        "{check}: status filter"
    );
    let page1 = store
        .list_sessions(&SessionQuery {
            status: None,
            after: Some("conf_sess_".into()),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        ours(page1),
        ["conf_sess_a", "conf_sess_b"],
        "{check}: first page"
    );
    let page2 = store
        .list_sessions(&SessionQuery {
            status: None,
            after: Some("conf_sess_b".into()),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        ours(page2),
        ["conf_sess_c", "conf_sess_d"],
        "{check}: second page"
    );

    assert!(
        store.delete_session("conf_sess_d").await.unwrap(),
        "{check}: delete"
    );
    assert!(
        !store.delete_session("conf_sess_d").await.unwrap(),
        "{check}: delete twice"
    );
    assert_eq!(
        store.get_session("conf_sess_d").await.unwrap(),
        None,
        "{check}: deleted"
    );
}

/// The transition log: append order, per-session filtering, paging, deletion with the session.
pub async fn transitions(store: &dyn StateStore) {
    let check = "transitions";
    let s = "conf_tr_a";
    store
        .put_session(
            &SessionRecord::new(s, "isolate", at(0, 0)),
            Precondition::Any,
        )
        .await
        .unwrap();
    let t1 = store
        .append_transition(s, at(0, 1), "placed", "")
        .await
        .unwrap();
    let other = store
        .append_transition("conf_tr_b", at(0, 2), "placed", "")
        .await
        .unwrap();
    let t2 = store
        .append_transition(s, at(0, 3), "sandbox_created", "isolate/sbx_9")
        .await
        .unwrap();
    let t3 = store
        .append_transition(s, at(0, 4), "running", "work_1")
        .await
        .unwrap();
    assert!(
        t1.seq < other.seq && other.seq < t2.seq && t2.seq < t3.seq,
        "{check}: seq grows"
    );
    assert_eq!(t2.at, at(0, 3), "{check}: time kept");
    assert_eq!(t2.detail, "isolate/sbx_9", "{check}: detail kept");

    let all = store.list_transitions(s, 0, 100).await.unwrap();
    assert_eq!(
        all,
        [t1.clone(), t2.clone(), t3.clone()],
        "{check}: only this session, in order"
    );
    let after = store.list_transitions(s, t1.seq, 1).await.unwrap();
    assert_eq!(after, [t2], "{check}: page after t1, limit 1");
    assert!(
        store
            .list_transitions(s, t3.seq, 100)
            .await
            .unwrap()
            .is_empty(),
        "{check}: end"
    );

    assert!(store.delete_session(s).await.unwrap());
    assert!(
        store.list_transitions(s, 0, 100).await.unwrap().is_empty(),
        "{check}: deleted with the session"
    );
    assert_eq!(
        store.list_transitions("conf_tr_b", 0, 100).await.unwrap(),
        [other],
        "{check}: other sessions keep theirs"
    );
}

/// Webhook ids: new once, duplicates after, pruning by age.
pub async fn webhooks(store: &dyn StateStore) {
    let check = "webhooks";
    assert!(
        store
            .record_webhook("conf_msg_old", at(0, 0))
            .await
            .unwrap(),
        "{check}: new"
    );
    assert!(
        !store
            .record_webhook("conf_msg_old", at(9, 0))
            .await
            .unwrap(),
        "{check}: duplicate"
    );
    assert!(
        store
            .record_webhook("conf_msg_new", at(100, 0))
            .await
            .unwrap(),
        "{check}: new"
    );
    // Other checks' ids are not older than at(50), so exactly one goes.
    assert_eq!(
        store.prune_webhooks(at(50, 0)).await.unwrap(),
        1,
        "{check}: prune the old one"
    );
    assert!(
        !store
            .record_webhook("conf_msg_new", at(101, 0))
            .await
            .unwrap(),
        "{check}: kept"
    );
    assert!(
        store
            .record_webhook("conf_msg_old", at(102, 0))
            .await
            .unwrap(),
        "{check}: a pruned id is new again"
    );
    assert_eq!(
        store.prune_webhooks(at(100, 0)).await.unwrap(),
        0,
        "{check}: boundary is kept"
    );
}

fn claim(work: &str, owner: &str, ttl_secs: u64) -> LeaseClaim {
    LeaseClaim {
        work_id: work.into(),
        session_id: "conf_lease_session".into(),
        owner: owner.into(),
        ttl: Duration::from_secs(ttl_secs),
    }
}

/// Leases: claim, hold against others, renew, expire, take over, release.
pub async fn leases(store: &dyn StateStore) {
    let check = "leases";
    let w = "conf_work_1";
    let first = store
        .claim_lease(&claim(w, "replica_a", 30), at(0, 0))
        .await
        .unwrap();
    assert_eq!(first.owner, "replica_a");
    assert_eq!(
        (first.acquired_at, first.expires_at),
        (at(0, 0), at(30, 0)),
        "{check}: times"
    );
    assert!(
        first.is_live(at(29, 999)) && !first.is_live(at(30, 0)),
        "{check}: is_live"
    );

    match store
        .claim_lease(&claim(w, "replica_b", 30), at(10, 0))
        .await
    {
        Err(StateError::LeaseHeld {
            owner, expires_at, ..
        }) => {
            assert_eq!(
                (owner.as_str(), expires_at),
                ("replica_a", at(30, 0)),
                "{check}: holder named"
            );
        }
        other => panic!("{check}: a live lease must not be taken, got {other:?}"),
    }
    let again = store
        .claim_lease(&claim(w, "replica_a", 30), at(10, 0))
        .await
        .unwrap();
    assert_eq!(
        (again.acquired_at, again.expires_at),
        (at(0, 0), at(40, 0)),
        "{check}: re-claim extends"
    );
    assert_eq!(
        kind(
            check,
            store
                .renew_lease(w, "replica_b", Duration::from_secs(5), at(11, 0))
                .await
        ),
        StateErrorKind::LeaseLost,
        "{check}: renew by a non-holder"
    );
    let renewed = store
        .renew_lease(w, "replica_a", Duration::from_secs(5), at(20, 0))
        .await
        .unwrap();
    assert_eq!(
        renewed.expires_at,
        at(25, 0),
        "{check}: renew sets now + ttl"
    );
    assert_eq!(
        store.get_lease(w).await.unwrap(),
        Some(renewed),
        "{check}: get"
    );

    // At the expiry instant the lease is no longer live: another owner takes it over.
    let taken = store
        .claim_lease(&claim(w, "replica_b", 30), at(25, 0))
        .await
        .unwrap();
    assert_eq!(taken.owner, "replica_b");
    assert_eq!(
        taken.acquired_at,
        at(25, 0),
        "{check}: a take-over starts a new lease"
    );
    assert_eq!(
        kind(
            check,
            store
                .renew_lease(w, "replica_a", Duration::from_secs(5), at(26, 0))
                .await
        ),
        StateErrorKind::LeaseLost,
        "{check}: the old holder lost it"
    );
    assert!(
        !store.release_lease(w, "replica_a").await.unwrap(),
        "{check}: release by non-holder"
    );
    // Renewing an expired lease nobody took over is allowed.
    let late = store
        .renew_lease(w, "replica_b", Duration::from_secs(5), at(100, 0))
        .await
        .unwrap();
    assert_eq!(late.expires_at, at(105, 0), "{check}: late renewal");

    store
        .claim_lease(&claim("conf_work_2", "replica_a", 30), at(0, 0))
        .await
        .unwrap();
    let held_by_a: Vec<String> = store
        .list_leases(Some("replica_a"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.work_id)
        .filter(|w| w.starts_with("conf_work_"))
        .collect();
    assert_eq!(held_by_a, ["conf_work_2"], "{check}: list by owner");
    let all: Vec<String> = store
        .list_leases(None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.work_id)
        .filter(|w| w.starts_with("conf_work_"))
        .collect();
    assert_eq!(
        all,
        ["conf_work_1", "conf_work_2"],
        "{check}: list all, by work id"
    );

    assert!(
        store.release_lease(w, "replica_b").await.unwrap(),
        "{check}: release"
    );
    assert_eq!(store.get_lease(w).await.unwrap(), None, "{check}: released");
    let fresh = store
        .claim_lease(&claim(w, "replica_a", 1), at(200, 0))
        .await
        .unwrap();
    assert_eq!(
        fresh.acquired_at,
        at(200, 0),
        "{check}: claim after release"
    );
}

/// Sandboxes: upsert, filter by backend, order, remove.
pub async fn sandboxes(store: &dyn StateStore) {
    let check = "sandboxes";
    let mut one = SandboxRecord {
        backend: "conf_docker".into(),
        sandbox_id: "c2".into(),
        session_id: Some("sesn_1".into()),
        created_at: at(1, 1),
    };
    let two = SandboxRecord {
        backend: "conf_docker".into(),
        sandbox_id: "c1".into(),
        session_id: None,
        created_at: at(2, 2),
    };
    let three = SandboxRecord {
        backend: "conf_isolate".into(),
        sandbox_id: "c1".into(),
        session_id: Some("sesn_2".into()),
        created_at: at(3, 3),
    };
    for r in [&one, &two, &three] {
        store.put_sandbox(r).await.unwrap();
    }
    assert_eq!(
        store
            .list_sandboxes(&SandboxQuery::backend("conf_docker"))
            .await
            .unwrap(),
        [two.clone(), one.clone()],
        "{check}: by backend, ordered by id"
    );
    one.session_id = None;
    store.put_sandbox(&one).await.unwrap();
    assert_eq!(
        store.get_sandbox("conf_docker", "c2").await.unwrap(),
        Some(one.clone()),
        "{check}: update"
    );
    // Paging: pages of one, each after the previous page's last record, in order, across the
    // backend boundary, and the backend filter applies to later pages too.
    let mut paged = Vec::new();
    let mut query = SandboxQuery {
        limit: 1,
        ..SandboxQuery::default()
    };
    loop {
        let page = store.list_sandboxes(&query).await.unwrap();
        assert!(page.len() <= 1, "{check}: a page holds at most `limit`");
        let Some(last) = page.last() else { break };
        query = query.after(last);
        paged.extend(page);
    }
    let paged: Vec<_> = paged
        .into_iter()
        .filter(|s| s.backend.starts_with("conf_"))
        .collect();
    assert_eq!(
        paged,
        [two.clone(), one.clone(), three.clone()],
        "{check}: paged one by one"
    );
    let after_first = SandboxQuery {
        limit: 10,
        ..SandboxQuery::backend("conf_docker")
    }
    .after(&two);
    assert_eq!(
        store.list_sandboxes(&after_first).await.unwrap(),
        [one.clone()],
        "{check}: the backend's next page"
    );
    assert!(
        store
            .list_sandboxes(&SandboxQuery {
                limit: 0,
                ..SandboxQuery::default()
            })
            .await
            .is_err(),
        "{check}: a zero limit is refused"
    );
    let ours: Vec<_> = store
        .list_sandboxes(&SandboxQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.backend.starts_with("conf_"))
        .collect();
    assert_eq!(
        ours,
        [two, one, three],
        "{check}: all, ordered by backend then id"
    );
    assert!(
        store.remove_sandbox("conf_isolate", "c1").await.unwrap(),
        "{check}: remove"
    );
    assert!(
        !store.remove_sandbox("conf_isolate", "c1").await.unwrap(),
        "{check}: remove twice"
    );
    assert_eq!(store.get_sandbox("conf_isolate", "c1").await.unwrap(), None);
}

/// The egress audit log: append in order, list per session and after a sequence number,
/// prune by time, refuse oversized records.
pub async fn egress_audit(store: &dyn StateStore) {
    let check = "egress_audit";
    let entry = |secs: i64, session: Option<&str>, host: &str, allowed: bool| EgressAuditEntry {
        seq: 0,
        at: at(secs, 250),
        session_id: session.map(str::to_owned),
        sandbox_id: session.map(|s| format!("{s}_sbx")),
        host: host.to_owned(),
        allowed,
        record: format!(r#"{{"host":"{host}","n":{secs}}}"#),
    };
    let a = store
        .append_egress_audit(&entry(100, Some("conf_audit_a"), "pypi.org", true))
        .await
        .unwrap();
    let b = store
        .append_egress_audit(&entry(101, None, "conf-unknown.test", false))
        .await
        .unwrap();
    let c = store
        .append_egress_audit(&entry(102, Some("conf_audit_a"), "evil.test", false))
        .await
        .unwrap();
    assert!(
        a < b && b < c,
        "{check}: sequence numbers increase ({a}, {b}, {c})"
    );
    let mine = store
        .list_egress_audit(Some("conf_audit_a"), 0, 100)
        .await
        .unwrap();
    let hosts: Vec<(&str, bool)> = mine.iter().map(|e| (e.host.as_str(), e.allowed)).collect();
    assert_eq!(
        hosts,
        [("pypi.org", true), ("evil.test", false)],
        "{check}: per session, in order"
    );
    let mut want = entry(102, Some("conf_audit_a"), "evil.test", false);
    want.seq = c;
    assert_eq!(mine[1], want, "{check}: round trip");
    let after = store
        .list_egress_audit(Some("conf_audit_a"), a, 100)
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "{check}: after a sequence number");
    let all = store.list_egress_audit(None, a, 100).await.unwrap();
    assert!(
        all.iter().any(|e| e.seq == b && e.session_id.is_none()),
        "{check}: unidentified peers are listed too"
    );
    assert_eq!(
        store.list_egress_audit(None, 0, 1).await.unwrap().len(),
        1,
        "{check}: limit"
    );
    let pruned = store.prune_egress_audit(at(101, 250)).await.unwrap();
    assert!(pruned >= 1, "{check}: prune");
    let left = store
        .list_egress_audit(Some("conf_audit_a"), 0, 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{check}: the entry before the cut is gone");
    let mut big = entry(103, Some("conf_audit_a"), "x.test", true);
    big.record = "x".repeat(super::MAX_DETAIL_BYTES + 1);
    assert_eq!(
        kind(check, store.append_egress_audit(&big).await),
        StateErrorKind::InvalidInput,
        "{check}: oversized record"
    );
}

/// Egress policy records and secret metadata: upsert, list, remove.
pub async fn egress_policies_and_secrets(store: &dyn StateStore) {
    let check = "egress_policies_and_secrets";
    let mut policy = EgressPolicyRecord {
        policy_id: "conf_pol_a".into(),
        version: 1,
        fingerprint: "fp1".into(),
        updated_at: at(0, 7),
    };
    store.put_egress_policy(&policy).await.unwrap();
    policy.version = 2;
    policy.fingerprint = "fp2".into();
    store.put_egress_policy(&policy).await.unwrap();
    assert_eq!(
        store.get_egress_policy("conf_pol_a").await.unwrap(),
        Some(policy.clone()),
        "{check}: policy update"
    );
    let listed: Vec<_> = store
        .list_egress_policies()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.policy_id.starts_with("conf_"))
        .collect();
    assert_eq!(listed, [policy], "{check}: policy list");
    assert!(store.remove_egress_policy("conf_pol_a").await.unwrap());
    assert!(!store.remove_egress_policy("conf_pol_a").await.unwrap());
    assert_eq!(store.get_egress_policy("conf_pol_a").await.unwrap(), None);

    let secret = SecretMetadata {
        name: "conf_GITHUB_TOKEN".into(),
        version: i64::MAX as u64,
        fingerprint: "hmac-sha256:0011".into(),
        updated_at: at(3, 0),
    };
    store.put_secret_metadata(&secret).await.unwrap();
    assert_eq!(
        store
            .get_secret_metadata("conf_GITHUB_TOKEN")
            .await
            .unwrap(),
        Some(secret.clone()),
        "{check}: secret round trip, largest version"
    );
    let listed: Vec<_> = store
        .list_secret_metadata()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name.starts_with("conf_"))
        .collect();
    assert_eq!(listed, [secret], "{check}: secret list");
    assert!(
        store
            .remove_secret_metadata("conf_GITHUB_TOKEN")
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_secret_metadata("conf_GITHUB_TOKEN")
            .await
            .unwrap(),
        None
    );
}

/// Oversized, empty and NUL-bearing ids, out-of-range numbers and times: typed errors, no panic,
/// nothing written. Ids of exactly the limit (and non-ASCII ones) are accepted.
pub async fn bad_input(store: &dyn StateStore) {
    let check = "bad_input";
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let invalid = StateErrorKind::InvalidInput;
    for bad in [long.as_str(), "", "nul\0byte"] {
        let r = SessionRecord::new(bad, "isolate", at(0, 0));
        assert_eq!(
            kind(check, store.put_session(&r, Precondition::Any).await),
            invalid,
            "{check}: session id"
        );
        assert_eq!(
            kind(check, store.get_session(bad).await),
            invalid,
            "{check}: get id"
        );
        assert_eq!(
            kind(check, store.record_webhook(bad, at(0, 0)).await),
            invalid,
            "{check}: webhook id"
        );
        assert_eq!(
            kind(
                check,
                store.claim_lease(&claim(bad, "o", 1), at(0, 0)).await
            ),
            invalid,
            "{check}: work id"
        );
        assert_eq!(
            kind(
                check,
                store
                    .claim_lease(&claim("conf_bad_w", bad, 1), at(0, 0))
                    .await
            ),
            invalid,
            "{check}: owner"
        );
        assert_eq!(
            kind(check, store.get_sandbox("isolate", bad).await),
            invalid,
            "{check}: sandbox id"
        );
        assert_eq!(
            kind(
                check,
                store.append_transition(bad, at(0, 0), "placed", "").await
            ),
            invalid,
            "{check}: transition session id"
        );
    }
    let mut r = SessionRecord::new("conf_bad_s", "isolate", at(0, 0));
    r.sandbox_id = Some(long.clone());
    assert_eq!(
        kind(check, store.put_session(&r, Precondition::Any).await),
        invalid,
        "{check}: sandbox_id"
    );
    let r = SessionRecord::new(
        "conf_bad_s",
        "isolate",
        Utc.timestamp_millis_opt(-1).unwrap(),
    );
    assert_eq!(
        kind(check, store.put_session(&r, Precondition::Any).await),
        invalid,
        "{check}: pre-1970"
    );
    assert_eq!(
        store.get_session("conf_bad_s").await.unwrap(),
        None,
        "{check}: nothing written"
    );
    assert_eq!(
        kind(
            check,
            store
                .append_transition("conf_bad_s", at(0, 0), &"e".repeat(65), "")
                .await
        ),
        invalid,
        "{check}: long event"
    );
    assert_eq!(
        kind(
            check,
            store
                .append_transition("conf_bad_s", at(0, 0), "placed", &"d".repeat(4097))
                .await
        ),
        invalid,
        "{check}: long detail"
    );
    assert_eq!(
        kind(
            check,
            store
                .claim_lease(&claim("conf_bad_w", "o", 0), at(0, 0))
                .await
        ),
        invalid,
        "{check}: zero ttl"
    );
    assert_eq!(
        kind(
            check,
            store
                .renew_lease("conf_bad_w", "o", Duration::from_secs(u64::MAX), at(0, 0))
                .await
        ),
        invalid,
        "{check}: huge ttl"
    );
    let secret = SecretMetadata {
        name: "conf_bad_secret".into(),
        version: u64::MAX,
        fingerprint: String::new(),
        updated_at: at(0, 0),
    };
    assert_eq!(
        kind(check, store.put_secret_metadata(&secret).await),
        invalid,
        "{check}: version range"
    );
    assert_eq!(
        kind(
            check,
            store
                .list_sessions(&SessionQuery {
                    limit: 0,
                    ..SessionQuery::default()
                })
                .await
        ),
        invalid,
        "{check}: zero limit"
    );
    assert_eq!(
        store.get_lease("conf_bad_w").await.unwrap(),
        None,
        "{check}: no lease written"
    );

    // The limit itself, and ids that are not ASCII, are fine.
    let edge = format!("conf_{}", "é".repeat((MAX_ID_BYTES - 5) / 2));
    assert!(edge.len() <= MAX_ID_BYTES);
    let r = SessionRecord::new(edge.as_str(), "isolate", at(0, 0));
    store.put_session(&r, Precondition::Any).await.unwrap();
    assert_eq!(
        store
            .get_session(&edge)
            .await
            .unwrap()
            .map(|r| r.session_id),
        Some(edge.clone())
    );
    let max = "m".repeat(MAX_ID_BYTES);
    assert!(
        store.record_webhook(&max, at(200, 0)).await.unwrap(),
        "{check}: id at the limit"
    );
}

/// Two handles on one database race for the same leases: exactly one claim wins each.
pub async fn lease_race(a: Arc<dyn StateStore>, b: Arc<dyn StateStore>) {
    let check = "lease_race";
    const WORK_ITEMS: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..WORK_ITEMS {
        for (owner, store) in [
            ("racer_a", a.clone()),
            ("racer_b", b.clone()),
            ("racer_c", a.clone()),
        ] {
            let work = format!("conf_race_{i:02}");
            tasks.push(tokio::spawn(async move {
                let result = store.claim_lease(&claim(&work, owner, 60), at(0, 0)).await;
                (work, owner, result)
            }));
        }
    }
    let mut winners = std::collections::BTreeMap::new();
    for task in tasks {
        let (work, owner, result) = task.await.expect("race task");
        match result {
            Ok(lease) => {
                assert_eq!(lease.owner, owner);
                assert!(
                    winners.insert(work.clone(), owner).is_none(),
                    "{check}: two winners for {work}"
                );
            }
            Err(StateError::LeaseHeld { .. }) => {}
            Err(e) => panic!("{check}: unexpected error for {work}/{owner}: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        WORK_ITEMS,
        "{check}: every work item has a winner"
    );
    for (work, owner) in winners {
        let held = b.get_lease(&work).await.unwrap().expect("lease stored");
        assert_eq!(
            held.owner, owner,
            "{check}: the stored holder is the winner"
        );
    }
}

/// A handle opened after the first is dropped sees everything the first wrote.
pub async fn reopen_sees_everything<F, Fut>(first: Arc<dyn StateStore>, open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn StateStore>, StateError>>,
{
    let check = "reopen_sees_everything";
    let mut session = SessionRecord::new("conf_reopen", "isolate", at(7, 7));
    session.status = SessionStatus::Sleeping;
    session.last_snapshot = Some(snapshot(0x42));
    session.version = first
        .put_session(&session, Precondition::Any)
        .await
        .unwrap();
    let transition = first
        .append_transition("conf_reopen", at(7, 8), "sleeping", "")
        .await
        .unwrap();
    first
        .record_webhook("conf_reopen_msg", at(300, 0))
        .await
        .unwrap();
    let lease = first
        .claim_lease(&claim("conf_reopen_work", "replica_a", 60), at(7, 0))
        .await
        .unwrap();
    drop(first);

    let second = open().await.expect("conformance: reopen");
    assert_eq!(
        second.get_session("conf_reopen").await.unwrap(),
        Some(session),
        "{check}: session"
    );
    assert_eq!(
        second.list_transitions("conf_reopen", 0, 10).await.unwrap(),
        [transition],
        "{check}: transitions"
    );
    assert!(
        !second
            .record_webhook("conf_reopen_msg", at(301, 0))
            .await
            .unwrap(),
        "{check}: webhook"
    );
    assert_eq!(
        second.get_lease("conf_reopen_work").await.unwrap(),
        Some(lease),
        "{check}: lease"
    );
    assert_eq!(
        second
            .get_sandbox("conf_docker", "c1")
            .await
            .unwrap()
            .map(|s| s.created_at),
        Some(at(2, 2)),
        "{check}: sandboxes"
    );
}
