//! `CONNECT` tunnels: decide on host and port, then refuse, splice or intercept.
//!
//! A spliced tunnel connects upstream (resolved and address-checked) *before* answering `200`,
//! reads the sandbox's opening bytes, refuses a ClientHello naming another host, and copies bytes
//! both ways. It is closed as soon as a policy or registry change means it would no longer be
//! spliced (a policy edit reaches tunnels already open). An intercepted tunnel terminates TLS with
//! the sandbox's CA (or serves plain HTTP/1.1 when the sandbox does not speak TLS inside) and
//! sends each request inside through the common request path, after checking it names the
//! tunnel's destination.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use ::http::header;
use ::http::{Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ConnCtx;
use super::body::{AuditTicket, EgressBody, empty};
use super::http::{self, Arrival, Target, base_record, error_response};
use super::io::{IdleIo, Rewind, splice};
use super::tls::{self, TLS_HANDSHAKE};
use super::upstream::Dial;
use crate::audit::{AuditRecord, AuditVia};
use crate::ca::SandboxCa;
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::{Host, parse_authority};
use crate::policy::{ConnectDecision, Scheme, Upstream, Verdict};
use crate::registry::SandboxIdentity;

/// Answer a `CONNECT` request.
pub(crate) async fn handle(conn: Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<EgressBody> {
    let started = Instant::now();
    let arrival = Arrival {
        via: AuditVia::Connect,
        intercepted: false,
        version: req.version(),
    };
    let parsed = req
        .uri()
        .authority()
        .ok_or_else(|| EgressError::new(EgressErrorKind::Protocol, "CONNECT needs host:port"))
        .and_then(|a| parse_authority(a.as_str()))
        .and_then(|(h, p)| match p {
            Some(p) => Ok((h, p)),
            None => Err(EgressError::new(
                EgressErrorKind::Protocol,
                "CONNECT needs host:port",
            )),
        });
    let (host, port) = match parsed {
        Ok(hp) => hp,
        Err(e) => return http::refuse_unparsed(&conn, &req, arrival, &e),
    };
    let mut rec = base_record(&conn, arrival, "CONNECT", host.to_string(), port, None);
    let fail = |conn: &ConnCtx, mut rec: AuditRecord, e: EgressError| {
        if e.kind().is_refusal() {
            rec.verdict = Verdict::Deny;
        }
        rec.reason = Some(e.to_string());
        rec.status = Some(e.kind().http_status().as_u16());
        rec.latency = started.elapsed();
        rec.duration = rec.latency;
        conn.shared.audit.record(rec);
        error_response(&e, arrival.version)
    };
    let (identity, decision) = match decide(&conn, &host, port, &mut rec).await {
        Ok(d) => d,
        Err(e) => return fail(&conn, rec, e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    match decision {
        ConnectDecision::Refuse { rule, reason } => {
            rec.rule = rule;
            fail(&conn, rec, EgressError::denied(reason))
        }
        ConnectDecision::Splice { rule, route } => {
            rec.rule = rule;
            rec.verdict = Verdict::Allow;
            let dial = match &route {
                None => Dial {
                    scheme: Scheme::Http,
                    host: host.clone(),
                    port,
                    tls_name: host.clone(),
                    exempt: false,
                    label: host.authority(port),
                },
                Some(up) => Dial {
                    scheme: Scheme::Http,
                    host: up.host.clone(),
                    port: up.port,
                    tls_name: up.host.clone(),
                    exempt: true,
                    label: format!("the route for {}", host.authority(port)),
                },
            };
            let upstream = match conn.shared.dialer.connect_tcp(&dial).await {
                Ok(s) => s,
                Err(e) => return fail(&conn, rec, e),
            };
            rec.status = Some(200);
            rec.latency = started.elapsed();
            let ticket = AuditTicket::new(conn.shared.audit.clone(), rec, started);
            tokio::spawn(splice_tunnel(
                conn, on_upgrade, upstream, host, port, route, ticket,
            ));
            established()
        }
        ConnectDecision::Intercept => {
            let Some(ca) = identity.ca.clone() else {
                return fail(
                    &conn,
                    rec,
                    EgressError::denied(format!(
                        "the policy must see inside tunnels to {} but this sandbox has no interception CA",
                        host.authority(port)
                    )),
                );
            };
            tokio::spawn(intercepted_tunnel(
                conn,
                on_upgrade,
                Target {
                    scheme: Scheme::Https,
                    host,
                    port,
                },
                ca,
                rec,
                started,
            ));
            established()
        }
    }
}

fn established() -> Response<EgressBody> {
    Response::new(empty())
}

/// The sandbox's identity and the policy's verdict on `host:port`, recording the policy used.
async fn decide(
    conn: &ConnCtx,
    host: &Host,
    port: u16,
    rec: &mut AuditRecord,
) -> Result<(Arc<SandboxIdentity>, ConnectDecision)> {
    let identity = conn.identity()?;
    let selection = conn
        .shared
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
    rec.policy_id = Some(selection.policy.id().to_owned());
    rec.fingerprint = Some(selection.policy.fingerprint().to_string());
    let decision = selection.policy.decide_connect(host, port);
    Ok((identity, decision))
}

/// Resolves when a policy or registry change means this tunnel would no longer be spliced (to
/// the same place), or at shutdown.
async fn until_revoked(conn: Arc<ConnCtx>, host: Host, port: u16, route: Option<Upstream>) {
    let shutdown = conn.shared.shutdown.clone();
    let mut policies = conn.shared.policies.changes();
    let mut registry = conn.shared.registry.changes();
    loop {
        let policy_changed = async {
            match policies.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = policy_changed => {}
            r = registry.changed() => if r.is_err() { return },
        }
        let mut scratch = base_record(
            &conn,
            Arrival {
                via: AuditVia::Connect,
                intercepted: false,
                version: ::http::Version::HTTP_11,
            },
            "CONNECT",
            String::new(),
            port,
            None,
        );
        match decide(&conn, &host, port, &mut scratch).await {
            Ok((_, ConnectDecision::Splice { route: now, .. })) if now == route => continue,
            _ => return,
        }
    }
}

async fn splice_tunnel(
    conn: Arc<ConnCtx>,
    on_upgrade: OnUpgrade,
    upstream: TcpStream,
    host: Host,
    port: u16,
    route: Option<Upstream>,
    mut ticket: AuditTicket,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut sandbox = TokioIo::new(upgraded);
    let opening = match tls::read_opening(&mut sandbox, conn.shared.config.handshake_timeout).await
    {
        Ok(o) => o,
        Err(e) => {
            ticket.record_mut().reason = Some(e.to_string());
            return;
        }
    };
    if let Some(sni) = &opening.tls
        && let Err(e) = tls::check_sni(sni.as_deref(), &host)
    {
        let r = ticket.record_mut();
        r.verdict = Verdict::Deny;
        r.reason = Some(e.to_string());
        return;
    }
    ticket.bytes_in.fetch_add(
        opening.bytes.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let idle = conn.shared.config.idle_timeout;
    let mut upstream = IdleIo::new(upstream, idle);
    if upstream.write_all(&opening.bytes).await.is_err() {
        return;
    }
    splice(
        sandbox,
        upstream,
        ticket.bytes_in.clone(),
        ticket.bytes_out.clone(),
        until_revoked(conn.clone(), host, port, route),
    )
    .await;
}

async fn intercepted_tunnel(
    conn: Arc<ConnCtx>,
    on_upgrade: OnUpgrade,
    target: Target,
    ca: Arc<SandboxCa>,
    mut rec: AuditRecord,
    started: Instant,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let timeout = conn.shared.config.handshake_timeout;
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(timeout, io.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    let io = Rewind::new(Bytes::copy_from_slice(&first[..n]), io);
    if first[0] != TLS_HANDSHAKE {
        let target = Target {
            scheme: Scheme::Http,
            ..target
        };
        serve_tunnel_h1(conn, io, target, false).await;
        return;
    }
    match tls::accept_intercepted(io, &target.host, &ca, timeout).await {
        Ok(stream) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(crate::ca::ALPN_H2);
            if h2 {
                serve_tunnel_h2(conn, stream, target).await;
            } else {
                serve_tunnel_h1(conn, stream, target, true).await;
            }
        }
        Err(e) => {
            if e.kind().is_refusal() {
                rec.verdict = Verdict::Deny;
            }
            rec.intercepted = true;
            rec.reason = Some(e.to_string());
            rec.latency = started.elapsed();
            rec.duration = rec.latency;
            conn.shared.audit.record(rec);
        }
    }
}

fn tunnel_service(
    conn: Arc<ConnCtx>,
    target: Target,
    intercepted: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<EgressBody>,
    Error = Infallible,
    Future = impl Future<Output = std::result::Result<Response<EgressBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        let target = target.clone();
        async move { Ok(tunnel_request(conn, target, req, intercepted).await) }
    })
}

async fn serve_tunnel_h1<I>(conn: Arc<ConnCtx>, io: I, target: Target, intercepted: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_buf_size(shared.config.max_header_bytes)
        .max_header_size(shared.config.max_header_bytes);
    let served = builder
        .serve_connection(TokioIo::new(io), tunnel_service(conn, target, intercepted))
        .with_upgrades();
    tokio::select! {
        _ = served => {}
        _ = shared.shutdown.cancelled() => {}
    }
}

async fn serve_tunnel_h2<I>(conn: Arc<ConnCtx>, io: I, target: Target)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.config.max_concurrent_streams)
        .max_header_list_size(shared.config.max_header_bytes as u32)
        .serve_connection(TokioIo::new(io), tunnel_service(conn, target, true));
    tokio::select! {
        _ = served => {}
        _ = shared.shutdown.cancelled() => {}
    }
}

/// One request inside a tunnel: it must name the tunnel's destination.
async fn tunnel_request(
    conn: Arc<ConnCtx>,
    target: Target,
    req: Request<Incoming>,
    intercepted: bool,
) -> Response<EgressBody> {
    let arrival = Arrival {
        via: AuditVia::Tunnel,
        intercepted,
        version: req.version(),
    };
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let matches = match named.as_deref().map(parse_authority) {
        Some(Ok((h, p))) => h == target.host && p.is_none_or(|p| p == target.port),
        _ => false,
    };
    if !matches {
        let e = EgressError::denied(format!(
            "the request names {:?} but this tunnel goes to {}",
            named
                .as_deref()
                .unwrap_or("no host")
                .chars()
                .take(255)
                .collect::<String>(),
            target.host.authority(target.port)
        ));
        let mut rec = base_record(
            &conn,
            arrival,
            req.method().as_str(),
            target.host.to_string(),
            target.port,
            req.uri().path_and_query().map(|p| p.as_str()),
        );
        rec.scheme = Some(target.scheme.as_str());
        rec.reason = Some(e.to_string());
        rec.status = Some(StatusCode::MISDIRECTED_REQUEST.as_u16());
        conn.shared.audit.record(rec);
        let mut resp = error_response(&e, arrival.version);
        *resp.status_mut() = StatusCode::MISDIRECTED_REQUEST;
        return resp;
    }
    http::respond(&conn, target, req, arrival).await
}
