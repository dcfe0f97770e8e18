//! The in-process entry point: requests handed over by code running next to the proxy (the
//! isolate backend's `fetch`) go through exactly the same path as requests from a sandbox
//! connection — policy, secrets, address guard, audit — without a socket on the sandbox side.

use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderMap, Request, Response, StatusCode, Version};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::ConnCtx;
use super::body::{BoxError, EgressBody};
use super::http;
use crate::audit::AuditVia;
use crate::error::{EgressError, EgressErrorKind, Result};

/// Sends requests through the policy in process; see
/// [`EgressProxy::in_process`](super::EgressProxy::in_process).
#[derive(Clone)]
pub struct InProcessClient {
    conn: Arc<ConnCtx>,
}

/// A response read whole by [`InProcessClient::fetch`].
#[derive(Debug, Clone)]
pub struct FetchReply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (at most the caller's limit).
    pub body: Bytes,
}

impl std::fmt::Debug for InProcessClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (session, sandbox) = self.conn.ids();
        f.debug_struct("InProcessClient")
            .field("session", &session)
            .field("sandbox", &sandbox)
            .finish()
    }
}

impl InProcessClient {
    pub(crate) fn new(conn: Arc<ConnCtx>) -> Self {
        Self { conn }
    }

    /// Send one request with an absolute `http://` or `https://` URI (any `Host` header is
    /// replaced by the URI's). A refusal is an `Err` whose kind
    /// [`is_refusal`](EgressErrorKind::is_refusal), with a reason the script may be shown;
    /// WebSocket upgrades are not available in process. The response body streams: bound what
    /// you read (or use [`InProcessClient::fetch`]).
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<EgressBody>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let arrival = http::Arrival {
            via: AuditVia::InProcess,
            intercepted: false,
            version: Version::HTTP_11,
        };
        let target = match http::absolute_target(req.uri()) {
            Ok(t) => t,
            Err(e) => {
                http::refuse_unparsed(&self.conn, &req, arrival, &e);
                return Err(e);
            }
        };
        http::forward(&self.conn, target, req, arrival).await
    }

    /// Send `req` and read the whole response within `timeout`, refusing bodies larger than
    /// `max_body` bytes ([`EgressErrorKind::LimitExceeded`]) — what a script's `fetch` needs.
    pub async fn fetch(
        &self,
        req: Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<FetchReply> {
        let req = req.map(http_body_util::Full::new);
        let exchange = async {
            let resp = self.send(req).await?;
            let (parts, mut body) = resp.into_parts();
            if body.size_hint().lower() > max_body as u64 {
                return Err(too_large(max_body));
            }
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    EgressError::new(EgressErrorKind::Upstream, "reading the response failed")
                        .with_source(e)
                })?;
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > max_body {
                        return Err(too_large(max_body));
                    }
                    buf.extend_from_slice(data);
                }
            }
            Ok(FetchReply {
                status: parts.status,
                headers: parts.headers,
                body: buf.freeze(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| EgressError::new(EgressErrorKind::Timeout, "the request timed out"))?
    }
}

fn too_large(max: usize) -> EgressError {
    EgressError::new(
        EgressErrorKind::LimitExceeded,
        format!("the response body is larger than {max} bytes"),
    )
}
