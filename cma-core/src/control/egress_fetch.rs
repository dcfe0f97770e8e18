//! The isolate backend's `fetch`, through the egress policy in process (features `egress` and
//! `isolate`): [`SessionEgress::isolate_hook`] is the
//! [`EgressHook`](cma_sandbox::isolate::EgressHook) to hand to `IsolateBackend::with_egress`.
//!
//! Each script's request is sent by the [`InProcessClient`](cma_egress::InProcessClient) of the
//! sandbox that made it (attached at placement), so the same policy, secrets, address guard and
//! audit apply as for a Docker sandbox's proxy connection. A sandbox the host never attached,
//! a refusal and a failure all reach the script as a thrown error: refusals read
//! `egress denied: <METHOD> <url>: <reason>`, other failures `fetch failed: <METHOD> <url>: …`.
//! Response bodies are capped ([`FetchLimits::max_body`](super::egress::FetchLimits)) and every
//! call ends within the script's remaining time (at most
//! [`FetchLimits::max_timeout`](super::egress::FetchLimits)).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::isolate::{EgressHook, FetchError, FetchRequest, FetchResponse};

use super::egress::SessionEgress;

/// Longest URL accepted from a script (the proxy's own caps apply after this).
const MAX_URL_LEN: usize = 8192;

/// The hook; see the module docs.
struct IsolateHook {
    egress: Weak<SessionEgress>,
    runtime: tokio::runtime::Handle,
}

impl SessionEgress {
    /// The [`EgressHook`] for an `IsolateBackend` whose sandboxes this wiring attaches (call
    /// [`in_process_for`](SessionEgress::in_process_for) with the backend's name too). Must be
    /// called inside a Tokio runtime: requests run on it.
    pub fn isolate_hook(self: &Arc<Self>) -> Arc<dyn EgressHook> {
        Arc::new(IsolateHook {
            egress: Arc::downgrade(self),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

fn denied(req: &FetchRequest, reason: &str) -> FetchError {
    FetchError {
        message: format!(
            "egress denied: {} {}: {reason}",
            req.method,
            shown_url(&req.url)
        ),
    }
}

/// The URL as shown in errors: without its query string (keys often travel there) and capped.
fn shown_url(url: &str) -> String {
    let cut = url.split(['?', '#']).next().unwrap_or("");
    let mut end = cut.len().min(200);
    while !cut.is_char_boundary(end) {
        end -= 1;
    }
    cut[..end].to_owned()
}

fn build(req: &FetchRequest) -> Result<http::Request<Bytes>, String> {
    if req.url.len() > MAX_URL_LEN {
        return Err(format!("the URL is longer than {MAX_URL_LEN} bytes"));
    }
    let method =
        http::Method::from_bytes(req.method.as_bytes()).map_err(|_| "invalid method".to_owned())?;
    let uri: http::Uri = req.url.parse().map_err(|_| "invalid URL".to_owned())?;
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in &req.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| "invalid header name".to_owned())?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("invalid value of header {name}"))?;
        b = b.header(name, value);
    }
    b.body(req.body.clone().unwrap_or_default())
        .map_err(|_| "invalid request".to_owned())
}

impl EgressHook for IsolateHook {
    fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        let Some(egress) = self.egress.upgrade() else {
            return Err(denied(&req, "the egress proxy is gone"));
        };
        let Some(client) = egress.client(req.sandbox.as_str()) else {
            return Err(denied(&req, "this sandbox has no egress registration"));
        };
        let request = build(&req).map_err(|e| FetchError {
            message: format!("fetch failed: {} {}: {e}", req.method, shown_url(&req.url)),
        })?;
        let limits = egress.fetch_limits();
        let timeout = req.timeout.min(limits.max_timeout);
        if timeout.is_zero() {
            return Err(FetchError {
                message: format!(
                    "fetch failed: {} {}: no time left",
                    req.method,
                    shown_url(&req.url)
                ),
            });
        }
        // Run on the runtime and wait here: the hook is called on a blocking thread (or a
        // worker process's forwarding thread), never on an async worker.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = self.runtime.spawn(async move {
            let r = client.fetch(request, timeout, limits.max_body).await;
            let _ = tx.send(r);
        });
        let result = match rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(r) => r,
            Err(_) => {
                task.abort();
                return Err(FetchError {
                    message: format!(
                        "fetch failed: {} {}: the request timed out",
                        req.method,
                        shown_url(&req.url)
                    ),
                });
            }
        };
        match result {
            Ok(reply) => Ok(FetchResponse {
                status: reply.status.as_u16(),
                headers: reply
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: reply.body,
            }),
            Err(e) if e.kind().is_refusal() => Err(denied(&req, e.context())),
            Err(e) => Err(FetchError {
                message: format!(
                    "fetch failed: {} {}: {}",
                    req.method,
                    shown_url(&req.url),
                    e.context()
                ),
            }),
        }
    }

    fn allows_network(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_drop_queries_and_fragments() {
        assert_eq!(
            shown_url("https://api.test/v1/x?api_key=abc#frag"),
            "https://api.test/v1/x"
        );
        assert_eq!(shown_url(&"a".repeat(500)).len(), 200);
    }
}
