//! Shared test support for the client tests: a capture server on 127.0.0.1 and vector parsing.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use bytes::Bytes;
use cma_core::client::{Client, ClientConfig, ClientConfigBuilder};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// The query, percent-decoded into ordered pairs (`+` is a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        decode_query(self.query.as_deref().unwrap_or(""))
    }
}

/// Decode `a=b&c=d` form encoding into ordered pairs.
pub fn decode_query(q: &str) -> Vec<(String, String)> {
    if q.is_empty() {
        return Vec::new();
    }
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Vec<u8>>,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.into()],
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
        }
    }

    pub fn sse(chunks: Vec<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Fallback = Arc<dyn Fn(&Captured) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Fallback,
}

/// A server on 127.0.0.1 that records every request and answers from a script, else a fallback.
pub struct CaptureServer {
    pub base: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Shared>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let captured = Captured {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    };
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| (shared.fallback)(&captured));
    shared.log.lock().unwrap().push(captured);
    let mut b = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (k, v) in &reply.headers {
        b = b.header(k, v);
    }
    let chunks: Vec<Result<Bytes, std::io::Error>> = reply
        .chunks
        .into_iter()
        .map(|c| Ok(Bytes::from(c)))
        .collect();
    b.body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap()
}

impl CaptureServer {
    pub async fn start(fallback: impl Fn(&Captured) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Shared {
            log: Arc::default(),
            script: Arc::default(),
            fallback: Arc::new(fallback),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}"),
            shared,
            task,
        }
    }

    pub fn push(&self, reply: Reply) {
        self.shared.script.lock().unwrap().push_back(reply);
    }

    pub fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }

    pub fn config(&self) -> ClientConfigBuilder {
        ClientConfig::builder().base_url(self.base.clone())
    }

    pub fn client(&self) -> Client {
        Client::new(self.config().build().unwrap()).unwrap()
    }
}

/// Every number (integer or decimal) in `s`, in order.
pub fn numbers(s: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<f64>| {
        let t = cur.trim_end_matches('.');
        if !t.is_empty()
            && let Ok(n) = t.parse()
        {
            out.push(n);
        }
        cur.clear();
    };
    for c in s.chars() {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) {
            cur.push(c);
        } else {
            flush(&mut cur, &mut out);
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// A tiny deterministic PRNG for chunk boundaries.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Split `bytes` at random boundaries.
pub fn random_chunks(bytes: &[u8], rng: &mut XorShift) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let n = 1 + rng.below(8.min(bytes.len() - i));
        out.push(bytes[i..i + n].to_vec());
        i += n;
    }
    out
}
