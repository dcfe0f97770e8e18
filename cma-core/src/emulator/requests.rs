//! A bounded log of the requests the emulator received, so tests can check what a worker sent and
//! in which order (method, path, query, which kind of credential, `x-stainless-helper`, and the
//! body of `stop` calls).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::http::Shared;
use super::state::Cred;

/// Requests kept in the log (the oldest are dropped beyond).
pub const MAX_LOGGED_REQUESTS: usize = 10_000;
/// Largest `stop` body recorded (larger bodies are refused with 413; a real stop body is `{}` or
/// `{"force":true}`).
pub const MAX_LOGGED_BODY_BYTES: usize = 4096;

/// Which kind of credential a request carried (docs/protocol.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthKind {
    /// No `Authorization: Bearer` and no `x-api-key`.
    Missing,
    /// The API key.
    ApiKey,
    /// An environment key.
    EnvironmentKey,
    /// A work item's sessions token.
    SessionsToken,
    /// A credential the emulator does not know (or one whose work item was forgotten).
    Unknown,
}

/// One request as the emulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Position among arrivals and answers: every arrival and every answer takes the next number,
    /// so `a.seq < b.answered_seq` means `a` arrived before `b` was answered.
    pub seq: u64,
    /// HTTP method (`GET`, `POST`, …).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (still percent-encoded), if any.
    pub query: Option<String>,
    /// The credential's kind.
    pub auth: AuthKind,
    /// The work item a sessions token belongs to.
    pub sessions_token_work: Option<String>,
    /// `x-stainless-helper`, if sent.
    pub helper: Option<String>,
    /// `Anthropic-Worker-ID`, if sent.
    pub worker_id: Option<String>,
    /// The body of `POST …/stop` calls (other bodies are not kept).
    pub body: Option<String>,
    /// Response status, once answered (for streams: when the headers went out).
    pub status: Option<u16>,
    /// Sequence number of the answer (see [`RequestRecord::seq`]).
    pub answered_seq: Option<u64>,
}

impl RequestRecord {
    /// `path?query`, as sent.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// The log: bounded, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    records: VecDeque<RequestRecord>,
    next_seq: u64,
}

impl RequestLog {
    fn next(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn arrive(&mut self, mut rec: RequestRecord) -> u64 {
        let seq = self.next();
        rec.seq = seq;
        if self.records.len() >= MAX_LOGGED_REQUESTS {
            self.records.pop_front();
        }
        self.records.push_back(rec);
        seq
    }

    fn answer(&mut self, seq: u64, status: u16) {
        let answered = self.next();
        // Records are in seq order; a dropped (old) record is simply not updated.
        if let Ok(i) = self.records.binary_search_by_key(&seq, |r| r.seq) {
            let r = &mut self.records[i];
            r.status = Some(status);
            r.answered_seq = Some(answered);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.records.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.records.clear();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Middleware: log the request on arrival, and its status when the handler answers.
pub(crate) async fn log_requests(
    AxState(app): AxState<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let (auth, sessions_token_work) = match super::http::credential(&parts.headers) {
        None => (AuthKind::Missing, None),
        Some(token) => match app.lock().resolve(&token) {
            Some(Cred::Api) => (AuthKind::ApiKey, None),
            Some(Cred::Env(_)) => (AuthKind::EnvironmentKey, None),
            Some(Cred::Sessions(w)) => (AuthKind::SessionsToken, Some(w)),
            None => (AuthKind::Unknown, None),
        },
    };
    let is_stop = parts.method == Method::POST && parts.uri.path().ends_with("/stop");
    let (body, recorded_body) = if is_stop {
        match axum::body::to_bytes(body, MAX_LOGGED_BODY_BYTES).await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (Body::from(bytes), Some(text))
            }
            Err(_) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!("a stop body is at most {MAX_LOGGED_BODY_BYTES} bytes"),
                )
                .into_response();
            }
        }
    } else {
        (body, None)
    };
    let rec = RequestRecord {
        seq: 0,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        auth,
        sessions_token_work,
        helper: header(&parts.headers, "x-stainless-helper"),
        worker_id: header(&parts.headers, "anthropic-worker-id"),
        body: recorded_body,
        status: None,
        answered_seq: None,
    };
    let seq = app.request_log().arrive(rec);
    let resp = next.run(Request::from_parts(parts, body)).await;
    app.request_log().answer(seq, resp.status().as_u16());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> RequestRecord {
        RequestRecord {
            seq: 0,
            method: "GET".into(),
            path: path.into(),
            query: None,
            auth: AuthKind::Missing,
            sessions_token_work: None,
            helper: None,
            worker_id: None,
            body: None,
            status: None,
            answered_seq: None,
        }
    }

    #[test]
    fn arrivals_and_answers_share_one_sequence_and_the_log_is_bounded() {
        let mut log = RequestLog::default();
        let a = log.arrive(rec("/a"));
        let b = log.arrive(rec("/b"));
        log.answer(a, 200);
        let snap = log.snapshot();
        assert_eq!(snap[0].answered_seq, Some(3));
        assert!(snap[1].seq < snap[0].answered_seq.unwrap());
        assert_eq!(snap[1].seq, b);
        assert_eq!(snap[1].status, None);
        for i in 0..MAX_LOGGED_REQUESTS {
            log.arrive(rec(&format!("/{i}")));
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), MAX_LOGGED_REQUESTS);
        assert_eq!(snap[0].path, "/0");
        // Answering a dropped record is harmless.
        log.answer(a, 500);
        log.clear();
        assert!(log.snapshot().is_empty());
    }
}
