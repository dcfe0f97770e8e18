//! [`VerifyLayer`]: tower middleware that authenticates webhook deliveries before the handler
//! sees them (docs/protocol.md §7.1, ECOSYSTEM.md §5).
//!
//! It buffers the body under a cap and a deadline, verifies it with a [`Verifier`], parses the
//! envelope and hands the inner service the same request with the buffered body. It does not
//! deduplicate by `webhook-id`. Slow or absent request heads, idle connections and connection
//! floods are the server's to bound: serve it with [`crate::listener::Listener`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use super::{HEADER_ID, Verifier, WebhookError};

/// The default bound on reading a delivery's body (30 s).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default cap on a delivery's body (1 MiB). CMA payloads are thin (ids only, §7.2); the
/// figure follows the peers' receivers (ECOSYSTEM.md §5).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The boxed future of [`VerifyService`].
pub type VerifyFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// The verified `webhook-id` of a delivery, put in the request extensions by [`VerifyService`].
/// Use it as the idempotency key. Bytes that are not UTF-8 are replaced (U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookId(pub String);

/// Tower layer that wraps a service in [`VerifyService`].
///
/// Responses:
/// * `413 Payload Too Large` when the body exceeds the cap (by `Content-Length` or while reading);
/// * `408 Request Timeout` when the body does not arrive within the deadline (the layer's
///   [`VerifyLayer::body_timeout`], or the listener's body deadline);
/// * `401 Unauthorized` for missing or invalid headers, a timestamp outside the tolerance, or no
///   matching signature;
/// * `400 Bad Request` when the body cannot be read, or is authentic but not a webhook event.
///
/// Each has a small JSON body: `{"error":{"type":"…","message":"…"}}`; for 401 the message is
/// the SDK's verification message (e.g. `No matching signature found`).
///
/// On success the inner service receives an `http::Request<`[`Full<Bytes>`]`>` with the original
/// parts and the exact body bytes, and with the parsed [`WebhookEvent`](super::WebhookEvent) and
/// the [`WebhookId`] in its extensions.
///
/// With axum (handlers read the event through `Extension`):
///
/// ```
/// use axum::{Extension, Router, routing::post};
/// use cma_core::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookId, WebhookSecret};
///
/// async fn on_event(Extension(id): Extension<WebhookId>, Extension(ev): Extension<WebhookEvent>) -> &'static str {
///     tracing::info!(webhook_id = %id.0, kind = %ev.data.kind, "event");
///     "ok"
/// }
///
/// let secret = WebhookSecret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
/// let app: Router = Router::new()
///     .route("/webhooks/cma", post(on_event))
///     .layer(VerifyLayer::new(Verifier::new(secret)).body_limit(64 * 1024));
/// ```
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    verifier: Arc<Verifier>,
    limit: usize,
    timeout: Duration,
}

impl VerifyLayer {
    /// Verify with `verifier`, capping bodies at [`DEFAULT_BODY_LIMIT`].
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier: Arc::new(verifier),
            limit: DEFAULT_BODY_LIMIT,
            timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// Cap bodies at `limit` bytes; larger deliveries are answered with 413 unread.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Answer `408 Request Timeout` when the body takes longer than `timeout` to arrive
    /// (default [`DEFAULT_BODY_TIMEOUT`]).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            verifier: self.verifier.clone(),
            limit: self.limit,
            timeout: self.timeout,
        }
    }
}

/// The service built by [`VerifyLayer`]; see there for the behaviour.
#[derive(Debug, Clone)]
pub struct VerifyService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    limit: usize,
    timeout: Duration,
}

impl<S> VerifyService<S> {
    /// Wrap `inner` directly (same as `VerifyLayer::new(verifier).layer(inner)`).
    pub fn new(inner: S, verifier: Verifier) -> Self {
        VerifyLayer::new(verifier).layer(inner)
    }
}

impl<S, B, ResBody> Service<Request<B>> for VerifyService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = S::Error;
    type Future = VerifyFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Hand the future the instance that was polled ready; keep a fresh clone for later calls.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let verifier = self.verifier.clone();
        let limit = self.limit;
        let timeout = self.timeout;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match read_body(&parts.headers, body, limit, timeout).await {
                Ok(bytes) => bytes,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            let event = match verifier.verify_event(&parts.headers, &bytes) {
                Ok(event) => event,
                Err(err) => {
                    tracing::debug!(error = %err, "webhook delivery rejected");
                    return Ok(Rejection::from(err).into_response());
                }
            };
            let id = parts
                .headers
                .get(HEADER_ID)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let mut req = Request::from_parts(parts, Full::new(bytes));
            req.extensions_mut().insert(WebhookId(id));
            req.extensions_mut().insert(event);
            inner.call(req).await.map(|resp| resp.map(Either::Left))
        })
    }
}

async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Rejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::TooLarge { limit });
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| Rejection::TimedOut { timeout })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Rejection::TooLarge { limit }),
        Err(err) => {
            // The listener's deadline, however many body wrappers (axum's, …) lie between.
            let chain = std::iter::successors(
                Some(err.as_ref() as &(dyn std::error::Error + 'static)),
                |e| e.source(),
            );
            match chain
                .filter_map(|e| e.downcast_ref::<crate::listener::BodyTimeout>())
                .next()
            {
                Some(t) => Err(Rejection::TimedOut { timeout: t.0 }),
                None => Err(Rejection::Unreadable(err.to_string())),
            }
        }
    }
}

enum Rejection {
    TooLarge { limit: usize },
    TimedOut { timeout: Duration },
    Unreadable(String),
    Webhook(WebhookError),
}

impl From<WebhookError> for Rejection {
    fn from(err: WebhookError) -> Self {
        Self::Webhook(err)
    }
}

impl Rejection {
    fn into_response<T>(self) -> Response<Either<T, Full<Bytes>>> {
        let (status, kind, message) = match self {
            Self::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("webhook body exceeds {limit} bytes"),
            ),
            Self::TimedOut { timeout } => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the webhook body did not arrive within {timeout:?}"),
            ),
            Self::Unreadable(why) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("could not read webhook body: {why}"),
            ),
            Self::Webhook(err) if err.is_authentication_failure() => (
                StatusCode::UNAUTHORIZED,
                "webhook_verification_error",
                err.to_string(),
            ),
            Self::Webhook(err) => (StatusCode::BAD_REQUEST, "invalid_payload", err.to_string()),
        };
        let body = serde_json::json!({ "error": { "type": kind, "message": message } }).to_string();
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use tower::ServiceExt as _;

    use super::*;
    use crate::webhook::{WebhookEvent, WebhookSecret, sign_headers};

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"type":"event","id":"wevt_t","created_at":"2026-05-01T12:00:00Z","data":{"type":"agent.created","id":"agent_1","organization_id":"o","workspace_id":"w"}}"#;

    fn secret() -> WebhookSecret {
        WebhookSecret::from_bytes(b"layer test key".to_vec()).unwrap()
    }

    fn layer(limit: usize) -> VerifyLayer {
        let verifier =
            Verifier::new(secret()).with_clock(|| UNIX_EPOCH + Duration::from_secs(NOW as u64));
        VerifyLayer::new(verifier).body_limit(limit)
    }

    /// An inner service that records what it was given and counts its calls.
    fn recorder(
        calls: &'static AtomicUsize,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |req: Request<Full<Bytes>>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let id = req.extensions().get::<WebhookId>().cloned();
            let kind = req
                .extensions()
                .get::<WebhookEvent>()
                .map(|e| e.data.kind.to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let echo = format!("{id:?}|{kind:?}|{}", String::from_utf8_lossy(&body));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(echo))))
        })
    }

    async fn call<S>(svc: S, req: Request<Full<Bytes>>) -> (StatusCode, String)
    where
        S: Service<
                Request<Full<Bytes>>,
                Response = Response<Either<Full<Bytes>, Full<Bytes>>>,
                Error = Infallible,
            >,
    {
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn request(headers: HeaderMap, body: &[u8]) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
        *req.headers_mut() = headers;
        req
    }

    #[tokio::test]
    async fn inner_gets_the_exact_bytes_and_the_extensions() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let svc = layer(DEFAULT_BODY_LIMIT).layer(recorder(&CALLS));
        let headers = sign_headers(&secret(), "msg_t", NOW, BODY).unwrap();
        let (status, echo) = call(svc, request(headers, BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            echo,
            format!(
                "Some(WebhookId(\"msg_t\"))|Some(\"agent.created\")|{}",
                String::from_utf8_lossy(BODY)
            )
        );
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rejected_deliveries_never_reach_the_inner_service() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let good = sign_headers(&secret(), "msg_t", NOW, BODY).unwrap();
        let cases = [
            (
                layer(DEFAULT_BODY_LIMIT),
                HeaderMap::new(),
                BODY,
                StatusCode::UNAUTHORIZED,
            ),
            (
                layer(DEFAULT_BODY_LIMIT),
                good.clone(),
                &BODY[1..],
                StatusCode::UNAUTHORIZED,
            ),
            (
                layer(BODY.len() - 1),
                good.clone(),
                BODY,
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (layer, headers, body, want) in cases {
            let (status, resp) = call(layer.layer(recorder(&CALLS)), request(headers, body)).await;
            assert_eq!(status, want, "{resp}");
            let json: serde_json::Value = serde_json::from_str(&resp).unwrap();
            assert!(json["error"]["message"].is_string(), "{resp}");
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
    }
}
