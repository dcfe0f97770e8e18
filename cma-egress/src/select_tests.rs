//! Matchers and policy selection (table-driven).

use serde_json::json;

use super::*;

fn session() -> SessionContext {
    SessionContext {
        session_id: "sesn_123".into(),
        agent_id: Some("agent_build".into()),
        metadata: json!({"team": "infra", "tier": 2, "beta": true, "tags": ["a", "b"],
                         "nested": {"region": "eu-west-1"}, "none": null, "obj": {"x": 1}})
        .as_object()
        .unwrap()
        .clone(),
        webhook: json!({"organization_id": "org_9", "workspace_id": "wrk_1"})
            .as_object()
            .unwrap()
            .clone(),
    }
}

fn matcher(v: serde_json::Value) -> Matcher {
    let raw: RawMatcher = serde_json::from_value(v).unwrap();
    Matcher::from_raw(&raw).unwrap()
}

#[test]
fn matcher_operators() {
    let s = session();
    let cases = [
        (
            json!({"field": "session_id", "op": "equals", "value": "sesn_123"}),
            true,
        ),
        (
            json!({"field": "session_id", "op": "equals", "value": "sesn_12"}),
            false,
        ),
        (
            json!({"field": "agent_id", "op": "contains", "value": "build"}),
            true,
        ),
        (
            json!({"field": "agent_id", "op": "contains", "value": "deploy"}),
            false,
        ),
        (
            json!({"field": "agent_id", "op": "matches", "value": "^agent_(build|test)$"}),
            true,
        ),
        (
            json!({"field": "agent_id", "op": "matches", "value": "^build"}),
            false,
        ),
        (
            json!({"field": "agent_id", "op": "matches", "value": "build"}),
            true,
        ),
        (
            json!({"field": "metadata.team", "op": "one_of", "values": ["infra", "web"]}),
            true,
        ),
        (
            json!({"field": "metadata.team", "op": "one_of", "values": ["web"]}),
            false,
        ),
        (
            json!({"field": "metadata.tier", "op": "equals", "value": "2"}),
            true,
        ),
        (
            json!({"field": "metadata.beta", "op": "equals", "value": "true"}),
            true,
        ),
        (
            json!({"field": "metadata.tags", "op": "equals", "value": "a,b"}),
            true,
        ),
        (
            json!({"field": "metadata.nested.region", "op": "contains", "value": "eu-"}),
            true,
        ),
        (
            json!({"field": "metadata.none", "op": "matches", "value": ".*"}),
            false,
        ),
        (
            json!({"field": "metadata.obj", "op": "matches", "value": ".*"}),
            false,
        ),
        (
            json!({"field": "metadata.missing", "op": "matches", "value": ".*"}),
            false,
        ),
        (
            json!({"field": "webhook.organization_id", "op": "equals", "value": "org_9"}),
            true,
        ),
        (
            json!({"field": "webhook.workspace_id", "op": "equals", "value": "org_9"}),
            false,
        ),
    ];
    for (m, want) in cases {
        assert_eq!(matcher(m.clone()).matches(&s), want, "{m}");
    }
    let no_agent = SessionContext::new("sesn_1");
    assert!(
        !matcher(json!({"field": "agent_id", "op": "matches", "value": ".*"})).matches(&no_agent)
    );
}

fn selector(v: serde_json::Value) -> PolicySelector {
    PolicySelector::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn selection_first_match_then_fallback_then_default() {
    let sel = selector(json!({
        "policies": [
            {"id": "draft", "rules": []},
            {"id": "fallback", "apply_to_all": true, "rules": []},
            {"id": "infra", "rules": [], "apply_to": [
                {"field": "metadata.team", "op": "equals", "value": "infra"},
                {"field": "agent_id", "op": "contains", "value": "build"}]},
            {"id": "org", "rules": [], "apply_to": [
                {"field": "webhook.organization_id", "op": "equals", "value": "org_9"}]},
            {"id": "fallback2", "apply_to_all": true, "rules": []}
        ]
    }));
    let s = session();
    let pick = |s: &SessionContext| {
        let sel = sel.select(s);
        (sel.policy.id().to_owned(), sel.by)
    };
    assert_eq!(pick(&s), ("infra".into(), SelectedBy::Matchers(2)));
    // AND: one matcher failing skips the policy; the next matching one wins.
    let mut other_agent = s.clone();
    other_agent.agent_id = Some("agent_deploy".into());
    assert_eq!(pick(&other_agent), ("org".into(), SelectedBy::Matchers(3)));
    // Nothing matches: the first fallback.
    assert_eq!(
        pick(&SessionContext::new("x")),
        ("fallback".into(), SelectedBy::Fallback(1))
    );
    // No fallback: the default (deny).
    let sel = selector(json!({"policies": [{"id": "draft", "rules": []}]}));
    let chosen = sel.select(&SessionContext::new("x"));
    assert_eq!(chosen.by, SelectedBy::Default);
    assert_eq!(chosen.policy.id(), "builtin-deny-all");
    let sel = selector(json!({"default": "allow", "policies": []}));
    assert_eq!(
        sel.select(&SessionContext::new("x")).policy.id(),
        "builtin-allow-all"
    );
}

#[test]
fn selector_errors_name_the_policy() {
    let e = PolicySelector::from_json(
        json!({"policies": [{"id": "a", "rules": []}, {"id": "b", "rules": [{"type": "allow", "host": ""}]}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("policies[1].rules[0].host[0]"));
    let e = PolicySelector::from_json(
        json!({"policies": [{"id": "a", "rules": []}, {"id": "a", "rules": []}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("policies[1].id"));
    let e = PolicySelector::from_json(br#"{"default": "open", "policies": []}"#).unwrap_err();
    assert_eq!(e.field(), Some("default"));
    let e = PolicySelector::from_json(br#"{"policies": [}"#).unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::InvalidPolicy);
}

#[tokio::test]
async fn store_replacement_is_seen_by_the_next_selection_and_notified() {
    let store = PolicyStore::new(selector(
        json!({"policies": [{"id": "v1", "apply_to_all": true, "rules": []}]}),
    ));
    let mut changes = store.changes().unwrap();
    let s = SessionContext::new("x");
    assert_eq!(store.select(&s).await.unwrap().policy.id(), "v1");
    store.replace(selector(
        json!({"policies": [{"id": "v2", "apply_to_all": true, "rules": []}]}),
    ));
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    assert_eq!(store.select(&s).await.unwrap().policy.id(), "v2");
    let e = UnavailablePolicySource.select(&s).await.unwrap_err();
    assert_eq!(e.kind(), EgressErrorKind::PolicyResolution);
}
