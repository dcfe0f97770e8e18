//! The request path every allowed request takes, whatever way it arrived (absolute-form, inside
//! an intercepted tunnel, in process): identify the sandbox, look up its policy now, decide,
//! strip hop-by-hop headers, fill placeholders and inject secrets, hand to a custom service or
//! connect (route upstream or the destination, address-checked), send, and stream the response
//! back with its audit record attached. Any failure on the way is an `Err` and is audited here.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use ::http::header::{self, HeaderValue};
use ::http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use tower::ServiceExt;
use zeroize::Zeroizing;

use super::ConnCtx;
use super::body::{AuditTicket, BoxError, Counted, EgressBody, boxed, full};
use super::headers;
use super::upstream::{Dial, SendError, Sender, upstream_error};
use crate::audit::{AuditRecord, AuditVia};
use crate::custom::{CustomOutcome, CustomService};
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::{Host, parse_authority};
use crate::policy::{PathView, RequestFacts, RouteScheme, Scheme, Verdict};
use crate::secrets::{Secret, SecretName};

/// How a request reached the proxy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub via: AuditVia,
    pub intercepted: bool,
    /// The sandbox side's HTTP version (responses are sent back in it).
    pub version: Version,
}

/// The destination the sandbox asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// `host[:port]` as a `Host` header carries it (default port omitted).
    fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.url_form()
        } else {
            self.host.authority(self.port)
        }
    }
}

/// The destination of an absolute-form request (`http://host[:port]/…`).
pub(crate) fn absolute_target(uri: &Uri) -> Result<Target> {
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => {
            return Err(EgressError::new(
                EgressErrorKind::Protocol,
                "send absolute-form http:// or https:// requests, or CONNECT",
            ));
        }
    };
    let auth = uri.authority().ok_or_else(|| {
        EgressError::new(EgressErrorKind::Protocol, "the request URI has no host")
    })?;
    if auth.as_str().contains('@') {
        return Err(EgressError::new(
            EgressErrorKind::Protocol,
            "user info in the request URI is refused",
        ));
    }
    let (host, port) = parse_authority(auth.as_str())?;
    Ok(Target {
        scheme,
        port: port.unwrap_or(scheme.default_port()),
        host,
    })
}

/// The JSON refusal or error response the sandbox sees.
pub(crate) fn error_response(e: &EgressError, version: Version) -> Response<EgressBody> {
    let status = e.kind().http_status();
    let body = serde_json::json!({
        "error": e.kind().phrase(),
        "reason": e.to_string(),
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-cma-egress",
        HeaderValue::from_static(if e.kind().is_refusal() {
            "denied"
        } else {
            "error"
        }),
    );
    resp
}

/// A record for a request that never got as far as a decision.
pub(crate) fn base_record(
    conn: &ConnCtx,
    arrival: Arrival,
    method: &str,
    host: String,
    port: u16,
    path_and_query: Option<&str>,
) -> AuditRecord {
    let (session_id, sandbox_id) = conn.ids();
    let (path, had_query) = match path_and_query {
        Some(pq) => {
            let (p, q) = AuditRecord::clip_path(pq);
            (Some(p), q)
        }
        None => (None, false),
    };
    AuditRecord {
        at: SystemTime::now(),
        session_id,
        sandbox_id,
        policy_id: None,
        fingerprint: None,
        via: arrival.via,
        scheme: None,
        host,
        port,
        method: method.chars().take(32).collect(),
        path,
        had_query,
        verdict: Verdict::Deny,
        rule: None,
        reason: None,
        injected: Vec::new(),
        intercepted: arrival.intercepted,
        upgraded: false,
        status: None,
        bytes_in: 0,
        bytes_out: 0,
        latency: std::time::Duration::ZERO,
        duration: std::time::Duration::ZERO,
    }
}

/// Audit and answer a request whose destination could not even be parsed.
pub(crate) fn refuse_unparsed<B>(
    conn: &ConnCtx,
    req: &Request<B>,
    arrival: Arrival,
    e: &EgressError,
) -> Response<EgressBody> {
    let host: String = req.uri().host().unwrap_or("-").chars().take(255).collect();
    let mut r = base_record(
        conn,
        arrival,
        req.method().as_str(),
        host,
        req.uri().port_u16().unwrap_or(0),
        req.uri().path_and_query().map(|p| p.as_str()),
    );
    r.reason = Some(e.to_string());
    r.status = Some(e.kind().http_status().as_u16());
    conn.shared.audit.record(r);
    error_response(e, arrival.version)
}

/// [`forward`], with errors turned into the response the sandbox sees.
pub(crate) async fn respond<B>(
    conn: &ConnCtx,
    target: Target,
    req: Request<B>,
    arrival: Arrival,
) -> Response<EgressBody>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    match forward(conn, target, req, arrival).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e, arrival.version),
    }
}

/// Decide and forward one request; see the module docs. Every outcome is audited once.
pub(crate) async fn forward<B>(
    conn: &ConnCtx,
    target: Target,
    req: Request<B>,
    arrival: Arrival,
) -> Result<Response<EgressBody>>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let mut record = base_record(
        conn,
        arrival,
        req.method().as_str(),
        target.host.to_string(),
        target.port,
        Some(req.uri().path_and_query().map_or("/", |p| p.as_str())),
    );
    record.scheme = Some(target.scheme.as_str());
    let mut record = Some(record);
    let result = forward_inner(conn, &target, req, arrival, &mut record, started).await;
    if let Err(e) = &result
        && let Some(mut r) = record.take()
    {
        if e.kind().is_refusal() {
            r.verdict = Verdict::Deny;
        }
        r.reason = Some(e.to_string());
        r.status = Some(e.kind().http_status().as_u16());
        r.latency = started.elapsed();
        r.duration = r.latency;
        conn.shared.audit.record(r);
    }
    result
}

async fn secret(conn: &ConnCtx, name: &SecretName) -> Result<Secret> {
    match conn.shared.secrets.get(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(EgressError::new(
            EgressErrorKind::SecretUnavailable,
            format!("secret {name} is not available"),
        )),
        Err(e) => Err(EgressError::new(
            EgressErrorKind::SecretUnavailable,
            format!("secret {name} could not be read"),
        )
        .with_source(e)),
    }
}

async fn forward_inner<B>(
    conn: &ConnCtx,
    target: &Target,
    mut req: Request<B>,
    arrival: Arrival,
    record: &mut Option<AuditRecord>,
    started: Instant,
) -> Result<Response<EgressBody>>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let shared = &conn.shared;
    let rec = record
        .as_mut()
        .unwrap_or_else(|| unreachable!("the record is taken only on success"));
    // TRACE reflects the request, injected credentials included; CONNECT is only meaningful to
    // the proxy itself (not nested inside a tunnel or handed over in process).
    if req.method() == ::http::Method::TRACE || req.method() == ::http::Method::CONNECT {
        return Err(EgressError::denied(format!(
            "the {} method is refused by the egress proxy",
            req.method()
        )));
    }
    let identity = conn.identity()?;
    let selection = shared
        .policies
        .select(&identity.session)
        .await
        .map_err(|e| {
            EgressError::new(
                EgressErrorKind::PolicyResolution,
                "the session's egress policy could not be resolved",
            )
            .with_source(e)
        })?;
    let policy = selection.policy;
    rec.policy_id = Some(policy.id().to_owned());
    rec.fingerprint = Some(policy.fingerprint().to_string());
    let path = PathView::new(req.uri().path());
    let decision = policy.decide(&RequestFacts {
        host: &target.host,
        port: target.port,
        method: req.method().as_str(),
        path: &path,
    });
    rec.rule = decision.rule;
    if !decision.is_allowed() {
        return Err(EgressError::denied(decision.reason));
    }
    rec.verdict = Verdict::Allow;

    let custom = decision.custom.map(|(_, c)| c.service.clone());
    let dial = match decision.route {
        None => direct_dial(target),
        Some((_, route)) => {
            let (scheme, default_name) = match route.upstream.scheme {
                RouteScheme::Http => (Scheme::Http, &route.upstream.host),
                RouteScheme::Https => (Scheme::Https, &route.upstream.host),
                RouteScheme::Tcp => (target.scheme, &target.host),
            };
            Dial {
                scheme,
                host: route.upstream.host.clone(),
                port: route.upstream.port,
                tls_name: route
                    .server_name
                    .clone()
                    .unwrap_or_else(|| default_name.clone()),
                exempt: true,
                label: format!("the route for {}", target.host.authority(target.port)),
            }
        }
    };
    let plain = dial.scheme == Scheme::Http;

    let websocket =
        req.version() == Version::HTTP_11 && headers::is_websocket_upgrade(req.headers());
    if websocket && arrival.via == AuditVia::InProcess {
        return Err(EgressError::new(
            EgressErrorKind::Protocol,
            "WebSocket upgrades are not available in process",
        ));
    }
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, websocket);

    // Placeholders the sandbox sent: each must be permitted for this destination.
    let names = headers::placeholder_names(&parts.headers).map_err(EgressError::denied)?;
    if !names.is_empty() {
        let mut values: HashMap<String, Secret> = HashMap::new();
        for name in names {
            let Some((_, rule)) = decision
                .placeholders
                .iter()
                .find(|(_, p)| p.secret.as_str() == name)
            else {
                return Err(EgressError::denied(format!(
                    "the placeholder for secret {name} is not permitted for {}",
                    target.host.authority(target.port)
                )));
            };
            if plain && !rule.allow_plain_http {
                return Err(EgressError::denied(format!(
                    "secret {name} would leave over plain http (set allow_plain_http on its rule)"
                )));
            }
            values.insert(name, secret(conn, &rule.secret).await?);
        }
        let changed = headers::fill_placeholders(&mut parts.headers, |n| values.get(n).cloned())
            .map_err(|why| EgressError::new(EgressErrorKind::SecretUnavailable, why))?;
        rec.injected.extend(changed.iter().map(|h| h.to_string()));
    }

    // Injections replace whatever the sandbox sent.
    for (_, inj) in &decision.injections {
        if plain && !inj.allow_plain_http {
            return Err(EgressError::denied(format!(
                "secret {} would leave over plain http (set allow_plain_http on its rule)",
                inj.secret
            )));
        }
        let value = secret(conn, &inj.secret).await?;
        let (prefix, suffix) = inj.value.parts();
        let mut bytes = Zeroizing::new(Vec::with_capacity(
            prefix.len() + value.len() + suffix.len(),
        ));
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.extend_from_slice(value.expose());
        bytes.extend_from_slice(suffix.as_bytes());
        let mut hv = HeaderValue::from_bytes(&bytes).map_err(|_| {
            EgressError::new(
                EgressErrorKind::SecretUnavailable,
                format!("secret {} is not a valid header value", inj.secret),
            )
        })?;
        hv.set_sensitive(true);
        parts.headers.insert(inj.header.clone(), hv);
        if !rec.injected.iter().any(|h| h == inj.header.as_str()) {
            rec.injected.push(inj.header.to_string());
        }
    }

    let bytes_in = Arc::new(AtomicU64::new(0));
    let mut body: EgressBody = boxed(Counted::new(body, bytes_in.clone()));

    if let Some(service) = custom {
        let Some(svc) = shared.custom.get(&service) else {
            return Err(EgressError::denied(format!(
                "custom service {service} is not registered"
            )));
        };
        let outcome = tokio::time::timeout(
            shared.config.response_timeout,
            call_custom(svc, Request::from_parts(parts, body)),
        )
        .await
        .map_err(|_| {
            EgressError::new(
                EgressErrorKind::Timeout,
                format!("custom service {service} did not answer in time"),
            )
        })?
        .map_err(|e| {
            EgressError::new(
                EgressErrorKind::Upstream,
                format!("custom service {service} failed"),
            )
            .with_source(e)
        })?;
        match outcome {
            CustomOutcome::Respond(resp) => {
                let (mut p, b) = resp.into_parts();
                headers::strip_hop_by_hop(&mut p.headers, false);
                return Ok(finish(
                    conn,
                    record,
                    p,
                    b,
                    bytes_in,
                    started,
                    arrival.version,
                ));
            }
            CustomOutcome::Forward(req) => {
                let same = match (req.uri().scheme_str(), req.uri().authority()) {
                    (None, None) => true,
                    (Some(_), Some(_)) => absolute_target(req.uri()).ok().as_ref() == Some(target),
                    _ => false,
                };
                if !same {
                    return Err(EgressError::denied(format!(
                        "custom service {service} changed the destination"
                    )));
                }
                let (p, b) = req.into_parts();
                parts = p;
                body = b;
                headers::strip_hop_by_hop(&mut parts.headers, websocket);
            }
        }
    }

    let shape = Shape {
        scheme: dial.scheme,
        authority: target.authority(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    };
    let mut upstream_req = Request::from_parts(parts, body);
    let (pooled, mut sender) = if websocket {
        (false, shared.dialer.connect_http(&dial, true).await?)
    } else {
        match conn.pool.acquire(&dial) {
            Some(s) => (true, s),
            None => (false, shared.dialer.connect_http(&dial, false).await?),
        }
    };
    shape.apply(&mut upstream_req, &sender)?;
    let timeout = shared.config.response_timeout;
    let sent = tokio::time::timeout(timeout, sender.send(upstream_req)).await;
    let resp = match sent {
        Err(_) => return Err(response_timeout(&shape.authority)),
        Ok(Ok(resp)) => resp,
        Ok(Err(SendError::Unsent(req, _))) if pooled => {
            // A kept connection turned out to be closed before the request left: one retry on
            // a fresh connection is safe whatever the method.
            let mut req = *req;
            sender = shared.dialer.connect_http(&dial, false).await?;
            shape.apply(&mut req, &sender)?;
            match tokio::time::timeout(timeout, sender.send(req)).await {
                Err(_) => return Err(response_timeout(&shape.authority)),
                Ok(Ok(resp)) => resp,
                Ok(Err(SendError::Unsent(_, e) | SendError::Sent(e))) => {
                    return Err(upstream_error(e));
                }
            }
        }
        Ok(Err(SendError::Unsent(_, e) | SendError::Sent(e))) => return Err(upstream_error(e)),
    };
    if !websocket {
        conn.pool.release(dial, sender);
    }
    let mut resp = resp;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(down) = on_upgrade.filter(|_| headers::is_websocket_upgrade(resp.headers()))
        else {
            return Err(EgressError::new(
                EgressErrorKind::Upstream,
                "the upstream switched protocols without a WebSocket upgrade",
            ));
        };
        let up = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        parts.version = arrival.version;
        let mut rec = record
            .take()
            .unwrap_or_else(|| unreachable!("the record is taken only on success"));
        rec.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
        rec.upgraded = true;
        rec.latency = started.elapsed();
        let mut ticket = AuditTicket::new(shared.audit.clone(), rec, started);
        ticket.bytes_in = bytes_in;
        super::upgrade::spawn_relay(
            down,
            up,
            ticket,
            shared.config.idle_timeout,
            shared.shutdown.clone(),
        );
        return Ok(Response::from_parts(parts, super::body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Ok(finish(
        conn,
        record,
        parts,
        boxed(body),
        bytes_in,
        started,
        arrival.version,
    ))
}

/// Call a custom service behind a boxed future with every type spelled out (the compiler cannot
/// prove the erased service's future `Send` for all lifetimes otherwise).
fn call_custom(
    svc: CustomService,
    req: Request<EgressBody>,
) -> Pin<Box<dyn Future<Output = std::result::Result<CustomOutcome, BoxError>> + Send>> {
    Box::pin(svc.oneshot(req))
}

fn direct_dial(target: &Target) -> Dial {
    Dial {
        scheme: target.scheme,
        host: target.host.clone(),
        port: target.port,
        tls_name: target.host.clone(),
        exempt: false,
        label: target.host.authority(target.port),
    }
}

fn response_timeout(authority: &str) -> EgressError {
    EgressError::new(
        EgressErrorKind::Timeout,
        format!("{authority} did not answer in time"),
    )
}

/// Attach the audit ticket to the response body and hand the response back in the sandbox's
/// HTTP version.
fn finish(
    conn: &ConnCtx,
    record: &mut Option<AuditRecord>,
    mut parts: ::http::response::Parts,
    body: EgressBody,
    bytes_in: Arc<AtomicU64>,
    started: Instant,
    version: Version,
) -> Response<EgressBody> {
    let mut rec = record
        .take()
        .unwrap_or_else(|| unreachable!("the record is taken only on success"));
    rec.status = Some(parts.status.as_u16());
    rec.latency = started.elapsed();
    let mut ticket = AuditTicket::new(conn.shared.audit.clone(), rec, started);
    ticket.bytes_in = bytes_in;
    let out = ticket.bytes_out.clone();
    parts.version = version;
    Response::from_parts(parts, boxed(Counted::new(body, out).with_ticket(ticket)))
}

/// How a request is written for the upstream connection it goes out on.
struct Shape {
    scheme: Scheme,
    authority: String,
    path_and_query: String,
}

impl Shape {
    fn apply(&self, req: &mut Request<EgressBody>, sender: &Sender) -> Result<()> {
        let bad = |_| EgressError::new(EgressErrorKind::Protocol, "cannot rebuild the request URI");
        if sender.is_h2() {
            *req.version_mut() = Version::HTTP_2;
            *req.uri_mut() = Uri::builder()
                .scheme(self.scheme.as_str())
                .authority(self.authority.as_str())
                .path_and_query(self.path_and_query.as_str())
                .build()
                .map_err(bad)?;
            req.headers_mut().remove(header::HOST);
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = self.path_and_query.parse().map_err(|_| {
                EgressError::new(EgressErrorKind::Protocol, "cannot rebuild the request URI")
            })?;
            let host = HeaderValue::from_str(&self.authority).map_err(|_| {
                EgressError::new(EgressErrorKind::Protocol, "cannot build the Host header")
            })?;
            req.headers_mut().insert(header::HOST, host);
        }
        Ok(())
    }
}
