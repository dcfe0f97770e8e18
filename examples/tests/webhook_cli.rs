//! `cma webhook sign|verify` end to end: the built binary, body on stdin, exit statuses.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use cma_vectors::{Field as _, Vectors};

fn cma(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(args)
        .env_remove("ANTHROPIC_WEBHOOK_SIGNING_KEY")
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write body");
    child.wait_with_output().expect("cma exits")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct S1 {
    secret: String,
    body: Vec<u8>,
    id: String,
    ts: String,
    sig: String,
}

fn s1() -> S1 {
    let v = Vectors::load();
    let row = v.case("webhooks", "signing", "S1");
    S1 {
        secret: row.req_str("secret").to_owned(),
        body: row.req_str("body").as_bytes().to_vec(),
        id: row.req_str("webhook_id").to_owned(),
        ts: row.req_i64("timestamp").to_string(),
        sig: row.req_str("signature").to_owned(),
    }
}

#[test]
fn sign_prints_the_vector_signature_and_headers() {
    let v = s1();
    let out = cma(
        &[
            "webhook",
            "sign",
            "--secret",
            &v.secret,
            "--id",
            &v.id,
            "--timestamp",
            &v.ts,
            "--signature-only",
        ],
        &v.body,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}\n", v.sig));

    let out = cma(
        &[
            "webhook",
            "sign",
            "--secret",
            &v.secret,
            "--id",
            &v.id,
            "--timestamp",
            &v.ts,
        ],
        &v.body,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "webhook-id: {}\nwebhook-timestamp: {}\nwebhook-signature: {}\n",
            v.id, v.ts, v.sig
        )
    );
}

#[test]
fn verify_accepts_the_vector_at_its_time_and_rejects_it_later() {
    let v = s1();
    let args = [
        "webhook",
        "verify",
        "--secret",
        &v.secret,
        "--id",
        &v.id,
        "--timestamp",
        &v.ts,
        "--signature",
        &v.sig,
    ];

    let mut at_time = args.to_vec();
    at_time.extend(["--now", &v.ts]);
    let out = cma(&at_time, &v.body);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("valid: session.status_idled sesn_01"),
        "{}",
        text(&out.stdout)
    );

    // The real clock is long past the vector's timestamp (or far before it): rejected as stale.
    let out = cma(&args, &v.body);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Message timestamp too old") || err.contains("Message timestamp too new"),
        "{err}"
    );

    // A wide enough tolerance accepts it again.
    let mut tolerant = args.to_vec();
    tolerant.extend(["--tolerance-secs", "100000000000"]);
    assert_eq!(cma(&tolerant, &v.body).status.code(), Some(0));
}

#[test]
fn verify_rejects_a_tampered_body_with_the_reason() {
    let v = s1();
    let mut body = v.body.clone();
    body.push(b' ');
    let out = cma(
        &[
            "webhook",
            "verify",
            "--secret",
            &v.secret,
            "--id",
            &v.id,
            "--timestamp",
            &v.ts,
            "--signature",
            &v.sig,
            "--now",
            &v.ts,
        ],
        &body,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "invalid: No matching signature found"
    );
}

#[test]
fn sign_then_verify_round_trips_with_the_real_clock() {
    let secret = "whsec_c2lnbmluZyBrZXk=";
    let body = b"{\"not\":\"an event\"}";
    let out = cma(&["webhook", "sign", "--secret", secret], body);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let headers = text(&out.stdout);
    let get = |name: &str| {
        headers
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} in {headers}"))
    };
    let (id, ts, sig) = (
        get("webhook-id: "),
        get("webhook-timestamp: "),
        get("webhook-signature: "),
    );
    assert!(id.starts_with("msg_"), "{id}");
    let out = cma(
        &[
            "webhook",
            "verify",
            "--secret",
            secret,
            "--id",
            &id,
            "--timestamp",
            &ts,
            "--signature",
            &sig,
        ],
        body,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("valid"));
}

#[test]
fn an_unusable_secret_is_a_usage_error() {
    let out = cma(&["webhook", "sign", "--secret", "whsec_"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
}
