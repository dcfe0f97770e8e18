//! Policy parsing, validation, decisions and fingerprints (table-driven).

use serde_json::json;

use super::*;
use crate::host::Host;

fn policy(v: serde_json::Value) -> EgressPolicy {
    EgressPolicy::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn with_rules(rules: serde_json::Value) -> EgressPolicy {
    policy(json!({"id": "p", "rules": rules}))
}

/// Decide `METHOD url` (`https://host[:port]/path`) and return (verdict, deciding rule index).
fn decide(p: &EgressPolicy, method: &str, url: &str) -> (Verdict, Option<usize>) {
    facts(p, method, url, |d| (d.verdict, d.rule.map(|r| r.index)))
}

fn facts<T>(p: &EgressPolicy, method: &str, url: &str, f: impl FnOnce(&Decision<'_>) -> T) -> T {
    let uri: http::Uri = url.parse().unwrap();
    let scheme = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let host = Host::parse(uri.host().unwrap()).unwrap();
    let path = PathView::new(uri.path());
    let req = RequestFacts {
        host: &host,
        port: uri.port_u16().unwrap_or(scheme),
        method,
        path: &path,
    };
    f(&p.decide(&req))
}

#[test]
fn every_rule_kind_parses_and_round_trips() {
    let p = with_rules(json!([
        {"type": "allow", "host": "a.com", "methods": ["get", "HEAD"], "path_prefix": "/x"},
        {"type": "deny", "host": ["b.com", "c.com:22"]},
        {"type": "inject", "host": "a.com", "header": "Authorization", "secret": "TOKEN",
         "value": "Bearer {secret}"},
        {"type": "placeholder", "host": "a.com", "secret": "KEY", "allow_plain_http": true},
        {"type": "route", "host": "svc.internal", "upstream": "https://10.0.0.5:8443",
         "server_name": "svc.internal"},
        {"type": "custom", "host": "sign.example", "service": "aws-sigv4"}
    ]));
    let kinds: Vec<_> = p.rules().iter().map(Rule::kind).collect();
    assert_eq!(
        kinds,
        [
            RuleKind::Allow,
            RuleKind::Deny,
            RuleKind::Inject,
            RuleKind::Placeholder,
            RuleKind::Route,
            RuleKind::Custom
        ]
    );
    let again = EgressPolicy::from_json(p.to_canonical_json().as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), p.fingerprint());
    assert_eq!(again.to_canonical_json(), p.to_canonical_json());
    let Rule::Inject(i) = &p.rules()[2] else {
        panic!()
    };
    assert_eq!(i.header.as_str(), "authorization");
    assert_eq!(i.value.parts(), ("Bearer ", ""));
    let Rule::Route(r) = &p.rules()[4] else {
        panic!()
    };
    assert_eq!(r.upstream.to_string(), "https://10.0.0.5:8443");
    assert_eq!(
        p.secret_names()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["KEY", "TOKEN"]
    );
    assert_eq!(
        p.service_names().into_iter().collect::<Vec<_>>(),
        ["aws-sigv4"]
    );
}

#[test]
fn validation_errors_name_the_field() {
    let cases = [
        (json!({"id": "p", "rules": [{"type": "allow"}]}), "rules[0]"),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com", "hots": 1}]}),
            "rules[0]",
        ),
        (
            json!({"id": "p", "rules": [{"type": "bogus", "host": "a.com"}]}),
            "rules[0].type",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com,*x.com"}]}),
            "rules[0].host[1]",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": ["a.com", "b.com:0"]}]}),
            "rules[0].host[1]",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com", "methods": []}]}),
            "rules[0].methods",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com", "methods": ["G T"]}]}),
            "rules[0].methods[0]",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com", "path_prefix": "x"}]}),
            "rules[0].path_prefix",
        ),
        (
            json!({"id": "p", "rules": [{"type": "allow", "host": "a.com", "path_prefix": "/a/../b"}]}),
            "rules[0].path_prefix",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "bad header", "secret": "S"}]}),
            "rules[0].header",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "host", "secret": "S"}]}),
            "rules[0].header",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "proxy-authorization", "secret": "S"}]}),
            "rules[0].header",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "x", "secret": "../S"}]}),
            "rules[0].secret",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "x", "secret": "S", "value": "Bearer"}]}),
            "rules[0].value",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "x", "secret": "S", "value": "{secret}{secret}"}]}),
            "rules[0].value",
        ),
        (
            json!({"id": "p", "rules": [{"type": "inject", "host": "a.com", "header": "x", "secret": "S", "value": "a\r\n{secret}"}]}),
            "rules[0].value",
        ),
        (
            json!({"id": "p", "rules": [{"type": "route", "host": "a.com", "upstream": "ftp://x"}]}),
            "rules[0].upstream",
        ),
        (
            json!({"id": "p", "rules": [{"type": "route", "host": "a.com", "upstream": "http://u:p@x"}]}),
            "rules[0].upstream",
        ),
        (
            json!({"id": "p", "rules": [{"type": "route", "host": "a.com", "upstream": "http://x/path"}]}),
            "rules[0].upstream",
        ),
        (
            json!({"id": "p", "rules": [{"type": "route", "host": "a.com", "upstream": "http://x", "server_name": "a b"}]}),
            "rules[0].server_name",
        ),
        (
            json!({"id": "p", "rules": [{"type": "custom", "host": "a.com", "service": "a/b"}]}),
            "rules[0].service",
        ),
        (json!({"id": "", "rules": []}), "id"),
        (json!({"id": "p q", "rules": []}), "id"),
        (json!({"id": "p", "name": "", "rules": []}), "name"),
        (
            json!({"id": "p", "default": "maybe", "rules": []}),
            "default",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to_all": true,
                "apply_to": [{"field": "agent_id", "op": "equals", "value": "a"}]}),
            "apply_to_all",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "agent", "op": "equals", "value": "a"}]}),
            "apply_to[0].field",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "agent_id", "op": "like", "value": "a"}]}),
            "apply_to[0].op",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "agent_id", "op": "equals"}]}),
            "apply_to[0].value",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "agent_id", "op": "matches", "value": "("}]}),
            "apply_to[0].value",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "agent_id", "op": "one_of", "values": []}]}),
            "apply_to[0].values",
        ),
        (
            json!({"id": "p", "rules": [], "apply_to": [{"field": "metadata..x", "op": "equals", "value": "a"}]}),
            "apply_to[0].field",
        ),
        (json!({"id": "p"}), ""),
    ];
    for (doc, field) in cases {
        let e = EgressPolicy::from_json(doc.to_string().as_bytes()).expect_err(&doc.to_string());
        assert_eq!(e.kind(), EgressErrorKind::InvalidPolicy, "{doc}: {e}");
        assert_eq!(e.field().unwrap_or(""), field, "{doc}: {e}");
    }
}

#[test]
fn deny_beats_allow_and_an_allow_list_denies_the_rest() {
    let p = with_rules(json!([
        {"type": "allow", "host": "*.example.com"},
        {"type": "deny", "host": "secret.example.com"},
        {"type": "allow", "host": "secret.example.com"},
    ]));
    let cases = [
        ("GET", "https://www.example.com/", Verdict::Allow, Some(0)),
        ("GET", "https://secret.example.com/", Verdict::Deny, Some(1)),
        // Deny without a port covers every port.
        (
            "GET",
            "https://secret.example.com:8443/",
            Verdict::Deny,
            Some(1),
        ),
        // Allow without a port covers 80 and 443 only.
        ("GET", "https://www.example.com:8443/", Verdict::Deny, None),
        ("GET", "http://www.example.com/", Verdict::Allow, Some(0)),
        ("GET", "https://example.com/", Verdict::Deny, None),
        ("GET", "https://other.org/", Verdict::Deny, None),
    ];
    for (m, url, verdict, rule) in cases {
        assert_eq!(decide(&p, m, url), (verdict, rule), "{m} {url}");
    }
}

#[test]
fn a_policy_without_allow_rules_denies_everything_unless_its_default_allows() {
    let deny_only = with_rules(json!([{"type": "deny", "host": "bad.com"}]));
    assert_eq!(
        decide(&deny_only, "GET", "https://good.com/"),
        (Verdict::Deny, None)
    );
    let deny_list = policy(
        json!({"id": "p", "default": "allow", "rules": [{"type": "deny", "host": "bad.com"}]}),
    );
    assert_eq!(
        decide(&deny_list, "GET", "https://good.com/"),
        (Verdict::Allow, None)
    );
    assert_eq!(
        decide(&deny_list, "GET", "https://bad.com/"),
        (Verdict::Deny, Some(0))
    );
    assert_eq!(
        decide(&EgressPolicy::deny_all(), "GET", "https://a.com/"),
        (Verdict::Deny, None)
    );
    assert_eq!(
        decide(&EgressPolicy::allow_all(), "GET", "https://a.com/"),
        (Verdict::Allow, None)
    );
}

#[test]
fn method_and_path_conditions() {
    let p = with_rules(json!([
        {"type": "deny", "host": "api.com", "methods": ["DELETE"]},
        {"type": "deny", "host": "api.com", "path_prefix": "/admin"},
        {"type": "allow", "host": "api.com", "methods": ["GET", "POST"], "path_prefix": "/repos/acme"},
        {"type": "allow", "host": "api.com", "path_prefix": "/public/"},
    ]));
    let cases = [
        ("GET", "https://api.com/repos/acme", Verdict::Allow, Some(2)),
        (
            "get",
            "https://api.com/repos/acme/x",
            Verdict::Allow,
            Some(2),
        ),
        (
            "POST",
            "https://api.com/repos/acme;v=1",
            Verdict::Allow,
            Some(2),
        ),
        ("PUT", "https://api.com/repos/acme/x", Verdict::Deny, None),
        (
            "GET",
            "https://api.com/repos/acme-evil",
            Verdict::Deny,
            None,
        ),
        ("GET", "https://api.com/repos/ACME", Verdict::Deny, None),
        (
            "GET",
            "https://api.com/repos/%61cme/x",
            Verdict::Allow,
            Some(2),
        ),
        ("GET", "https://api.com/public/a", Verdict::Allow, Some(3)),
        ("GET", "https://api.com/public", Verdict::Deny, None),
        ("DELETE", "https://api.com/public/a", Verdict::Deny, Some(0)),
        ("delete", "https://api.com/public/a", Verdict::Deny, Some(0)),
        // Deny path prefixes are broad: case-insensitive, plain prefix, escapes decoded.
        ("GET", "https://api.com/admin", Verdict::Deny, Some(1)),
        ("GET", "https://api.com/ADMIN/x", Verdict::Deny, Some(1)),
        ("GET", "https://api.com/admin-panel", Verdict::Deny, Some(1)),
        ("GET", "https://api.com/%61dmin", Verdict::Deny, Some(1)),
        // Ambiguous paths match every conditional deny and no conditional allow.
        (
            "GET",
            "https://api.com/public/../admin",
            Verdict::Deny,
            Some(1),
        ),
        (
            "GET",
            "https://api.com/repos/acme/%2e%2e/x",
            Verdict::Deny,
            Some(1),
        ),
        ("GET", "https://api.com//admin", Verdict::Deny, Some(1)),
        (
            "GET",
            "https://api.com/repos/acme%2fx",
            Verdict::Deny,
            Some(1),
        ),
        (
            "GET",
            "https://api.com/repos/acme/%zz",
            Verdict::Deny,
            Some(1),
        ),
    ];
    for (m, url, verdict, rule) in cases {
        assert_eq!(decide(&p, m, url), (verdict, rule), "{m} {url}");
    }
}

#[test]
fn actions_apply_only_to_allowed_requests_and_in_order() {
    let p = with_rules(json!([
        {"type": "inject", "host": "api.com", "header": "authorization", "secret": "FIRST"},
        {"type": "inject", "host": "api.com", "header": "Authorization", "secret": "SECOND"},
        {"type": "inject", "host": "api.com", "header": "x-extra", "secret": "EXTRA", "methods": ["POST"]},
        {"type": "placeholder", "host": "*.api.com", "secret": "PH"},
        {"type": "custom", "host": "api.com", "service": "svc", "path_prefix": "/custom"},
        {"type": "route", "host": "api.com", "upstream": "http://10.0.0.1:8080"},
        {"type": "route", "host": "api.com", "upstream": "http://10.0.0.2:8080"},
        {"type": "allow", "host": "api.com,*.api.com"},
    ]));
    facts(&p, "GET", "https://api.com/x", |d| {
        assert!(d.is_allowed());
        assert_eq!(d.rule.map(|r| r.index), Some(7));
        let inj: Vec<_> = d
            .injections
            .iter()
            .map(|(r, i)| (r.index, i.secret.as_str()))
            .collect();
        assert_eq!(inj, [(0, "FIRST")]);
        assert!(d.placeholders.is_empty());
        assert_eq!(d.route.map(|(r, _)| r.index), Some(5));
        assert!(d.custom.is_none());
    });
    facts(&p, "POST", "https://api.com/custom/y", |d| {
        let inj: Vec<_> = d
            .injections
            .iter()
            .map(|(_, i)| i.header.as_str())
            .collect();
        assert_eq!(inj, ["authorization", "x-extra"]);
        assert!(
            matches!(d.custom, Some((rule, custom)) if rule.index == 4 && custom.service == "svc")
        );
        // The service's rewrite still goes where the route says.
        assert_eq!(d.route.map(|(r, _)| r.index), Some(5));
    });
    facts(&p, "GET", "https://v1.api.com/", |d| {
        assert!(d.injections.is_empty());
        assert_eq!(d.placeholders.len(), 1);
        assert!(d.route.is_none() && d.custom.is_none());
    });
    // Actions never allow by themselves.
    let only_actions = with_rules(json!([
        {"type": "inject", "host": "api.com", "header": "x", "secret": "S"},
        {"type": "route", "host": "api.com", "upstream": "http://10.0.0.1"},
    ]));
    facts(&only_actions, "GET", "https://api.com/", |d| {
        assert!(!d.is_allowed());
        assert!(d.injections.is_empty());
    });
}

#[test]
fn connect_decisions_splice_only_when_nothing_inside_matters() {
    let p = with_rules(json!([
        {"type": "allow", "host": "plain.com"},
        {"type": "allow", "host": "ssh.com:22"},
        {"type": "deny", "host": "blocked.com"},
        {"type": "allow", "host": "blocked.com"},
        {"type": "allow", "host": "cond.com", "path_prefix": "/ok"},
        {"type": "allow", "host": "mixed.com"},
        {"type": "deny", "host": "mixed.com", "methods": ["DELETE"]},
        {"type": "allow", "host": "inj.com"},
        {"type": "inject", "host": "inj.com", "header": "x", "secret": "S"},
        {"type": "allow", "host": "both.com"},
        {"type": "allow", "host": "both.com", "path_prefix": "/x"},
    ]));
    let h = |s: &str| Host::parse(s).unwrap();
    let splice = |i| ConnectDecision::Splice {
        rule: Some(RuleRef {
            index: i,
            kind: RuleKind::Allow,
        }),
        route: None,
    };
    assert_eq!(p.decide_connect(&h("plain.com"), 443), splice(0));
    assert!(matches!(
        p.decide_connect(&h("plain.com"), 22),
        ConnectDecision::Refuse { rule: None, .. }
    ));
    assert_eq!(p.decide_connect(&h("ssh.com"), 22), splice(1));
    assert!(matches!(
        p.decide_connect(&h("ssh.com"), 443),
        ConnectDecision::Refuse { .. }
    ));
    assert!(matches!(
        p.decide_connect(&h("blocked.com"), 443),
        ConnectDecision::Refuse {
            rule: Some(RuleRef {
                index: 2,
                kind: RuleKind::Deny
            }),
            ..
        }
    ));
    assert_eq!(
        p.decide_connect(&h("cond.com"), 443),
        ConnectDecision::Intercept
    );
    assert_eq!(
        p.decide_connect(&h("mixed.com"), 443),
        ConnectDecision::Intercept
    );
    assert_eq!(
        p.decide_connect(&h("inj.com"), 443),
        ConnectDecision::Intercept
    );
    assert_eq!(p.decide_connect(&h("both.com"), 443), splice(9));
    assert!(matches!(
        p.decide_connect(&h("other.com"), 443),
        ConnectDecision::Refuse { .. }
    ));
    // A deny list splices what it does not deny.
    let deny_list = policy(
        json!({"id": "p", "default": "allow", "rules": [{"type": "deny", "host": "bad.com"}]}),
    );
    assert_eq!(
        deny_list.decide_connect(&h("good.com"), 443),
        ConnectDecision::Splice {
            rule: None,
            route: None
        }
    );
    assert!(matches!(
        EgressPolicy::deny_all().decide_connect(&h("a.com"), 443),
        ConnectDecision::Refuse { .. }
    ));
}

#[test]
fn tcp_routes_splice_and_other_routes_intercept() {
    let p = with_rules(json!([
        {"type": "allow", "host": "db.internal:5432,git.internal:22,web.internal,cond.internal,first.internal"},
        {"type": "route", "host": "db.internal:5432", "upstream": "tcp://10.0.0.7:5432"},
        {"type": "route", "host": "git.internal:22", "upstream": "tcp://[fd00::1]:2222"},
        {"type": "route", "host": "web.internal", "upstream": "https://10.0.0.8"},
        {"type": "route", "host": "cond.internal", "upstream": "tcp://10.0.0.9:443", "methods": ["GET"]},
        {"type": "custom", "host": "first.internal", "service": "svc"},
        {"type": "route", "host": "first.internal", "upstream": "tcp://10.0.0.10:443"},
    ]));
    let h = |s: &str| Host::parse(s).unwrap();
    let route_of = |d: ConnectDecision| match d {
        ConnectDecision::Splice { route, .. } => route.map(|u| u.to_string()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        route_of(p.decide_connect(&h("db.internal"), 5432)).as_deref(),
        Some("tcp://10.0.0.7:5432")
    );
    assert_eq!(
        route_of(p.decide_connect(&h("git.internal"), 22)).as_deref(),
        Some("tcp://[fd00::1]:2222")
    );
    assert_eq!(
        p.decide_connect(&h("web.internal"), 443),
        ConnectDecision::Intercept
    );
    assert_eq!(
        p.decide_connect(&h("cond.internal"), 443),
        ConnectDecision::Intercept
    );
    assert_eq!(
        p.decide_connect(&h("first.internal"), 443),
        ConnectDecision::Intercept
    );
    let e = EgressPolicy::from_json(
        json!({"id": "p", "rules": [{"type": "route", "host": "a", "upstream": "tcp://10.0.0.1"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("rules[0].upstream"));
}

#[test]
fn fingerprints_are_stable_under_reordering_and_respelling() {
    let a = br#"{"id":"p","name":"n","rules":[{"type":"allow","host":"Example.COM.","methods":["post","GET"]},
        {"type":"inject","host":"api.com","header":"Authorization","secret":"TOKEN"}]}"#;
    let b = br#"{"rules":[{"methods":["GET","POST"],"host":"example.com","type":"allow"},
        {"secret":"TOKEN","header":"authorization","type":"inject","host":["api.com"]}],"name":"n","id":"p","default":"deny"}"#;
    let fa = EgressPolicy::from_json(a).unwrap();
    let fb = EgressPolicy::from_json(b).unwrap();
    assert_eq!(fa.fingerprint(), fb.fingerprint());
    assert!(fa.fingerprint().as_str().starts_with("fp1-"));
    assert_eq!(fa.fingerprint().as_str().len(), 4 + 32);

    let changed = [
        br#"{"id":"p","name":"n","rules":[{"type":"allow","host":"example.org","methods":["GET","POST"]},{"type":"inject","host":"api.com","header":"authorization","secret":"TOKEN"}]}"#.as_slice(),
        br#"{"id":"p","name":"n","rules":[{"type":"allow","host":"example.com","methods":["GET"]},{"type":"inject","host":"api.com","header":"authorization","secret":"TOKEN"}]}"#,
        br#"{"id":"p","name":"n","rules":[{"type":"allow","host":"example.com","methods":["GET","POST"]},{"type":"inject","host":"api.com","header":"authorization","secret":"OTHER"}]}"#,
        br#"{"id":"p","name":"n","default":"allow","rules":[{"type":"allow","host":"example.com","methods":["GET","POST"]},{"type":"inject","host":"api.com","header":"authorization","secret":"TOKEN"}]}"#,
        br#"{"id":"p","name":"n","rules":[{"type":"inject","host":"api.com","header":"authorization","secret":"TOKEN"},{"type":"allow","host":"example.com","methods":["GET","POST"]}]}"#,
    ];
    for doc in changed {
        let p = EgressPolicy::from_json(doc).unwrap();
        assert_ne!(
            p.fingerprint(),
            fa.fingerprint(),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
}

#[tokio::test]
async fn secret_values_never_touch_the_fingerprint() {
    use crate::secrets::{MemorySecretStore, Secret, SecretStore};
    let p =
        with_rules(json!([{"type": "inject", "host": "a.com", "header": "x", "secret": "TOKEN"}]));
    let store = MemorySecretStore::new();
    let name = SecretName::new("TOKEN").unwrap();
    store.insert(name.clone(), Secret::new("value-one"));
    let before = p.fingerprint().clone();
    store.insert(name.clone(), Secret::new("value-two"));
    assert_eq!(
        store.get(&name).await.unwrap().unwrap().expose(),
        b"value-two"
    );
    // The policy holds names only: re-validating it after a rotation gives the same fingerprint,
    // and neither value appears in its canonical form.
    let again = EgressPolicy::from_json(p.to_canonical_json().as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), &before);
    assert!(!p.to_canonical_json().contains("value-"));
    assert!(!format!("{p:?}").contains("value-"));
}

#[test]
fn paths_normalise_or_are_ambiguous() {
    let cases = [
        ("", Some("/")),
        ("/a/b", Some("/a/b")),
        ("/%7Euser/%41", Some("/~user/A")),
        ("/a%20b", Some("/a%20b")),
        ("/a%2a", Some("/a%2A")),
        ("/a/./b", None),
        ("/a/../b", None),
        ("/a/..;x/b", None),
        ("/a/%2E%2E/b", None),
        ("/a//b", None),
        ("/a%2Fb", None),
        ("/a%5cb", None),
        ("/a\\b", None),
        ("/a%", None),
        ("/a%g0", None),
        ("*", None),
        ("a/b", None),
        ("/...", Some("/...")),
    ];
    for (raw, want) in cases {
        assert_eq!(decide::normalize_path(raw).as_deref(), want, "{raw:?}");
    }
}
