//! Connections from the proxy to upstreams: resolve (with the proxy's own resolver), check every
//! answer against the address guard, connect to an address that passed (never re-resolving),
//! speak TLS when asked (ALPN `h2`, `http/1.1`), and keep connections for reuse in a small
//! per-connection [`Pool`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::body::EgressBody;
use super::io::IdleIo;
use crate::addr::AddressGuard;
use crate::ca::ALPN_H2;
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::Host;
use crate::policy::Scheme;
use crate::resolve::Resolver;

/// Where to connect for a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Dial {
    pub scheme: Scheme,
    /// What to resolve and connect to.
    pub host: Host,
    pub port: u16,
    /// The TLS name to send and verify.
    pub tls_name: Host,
    /// A `route` upstream: the operator named it, so the address check does not apply.
    pub exempt: bool,
    /// How errors name this upstream to the sandbox (a route's private address is never
    /// revealed: errors say "the route for <host>").
    pub label: String,
}

/// A ready-to-use HTTP connection.
pub(crate) enum Sender {
    H1(http1::SendRequest<EgressBody>),
    H2(http2::SendRequest<EgressBody>),
}

impl Sender {
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Send `req`. When the request never left (the connection was found closed, for example),
    /// it comes back in [`SendError::Unsent`] so the caller can retry on a fresh connection.
    pub(crate) async fn send(
        &mut self,
        req: Request<EgressBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let ready = match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        };
        if let Err(e) = ready {
            return Err(SendError::Unsent(Box::new(req), e));
        }
        let sent = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        sent.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::Unsent(Box::new(req), e.into_error()),
            None => SendError::Sent(e.into_error()),
        })
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// Why a send failed.
pub(crate) enum SendError {
    /// The request was not written; it may be retried.
    Unsent(Box<Request<EgressBody>>, hyper::Error),
    /// The request (or part of it) was written.
    Sent(hyper::Error),
}

/// Opens upstream connections.
pub(crate) struct Dialer {
    pub resolver: Arc<dyn Resolver>,
    pub guard: Arc<AddressGuard>,
    pub tls: Arc<rustls::ClientConfig>,
    pub tls_h1: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Build the upstream TLS client configuration trusting `roots`, offering `alpn`.
pub(crate) fn client_tls(
    roots: Arc<rustls::RootCertStore>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EgressError::new(EgressErrorKind::Config, "cannot configure TLS").with_source(e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

impl Dialer {
    /// The addresses to try for `dial`, every one of them checked.
    pub(crate) async fn addresses(&self, dial: &Dial) -> Result<Vec<IpAddr>> {
        let addrs = match &dial.host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => self.resolver.resolve(name).await?,
        };
        if !dial.exempt {
            // One refused answer refuses the name: a name that mixes public and internal
            // addresses is either misconfigured or rebinding.
            for ip in &addrs {
                let class = self.guard.check(*ip);
                if class.is_refused() {
                    let what = match &dial.host {
                        Host::Ip(_) => format!("{} is a {}", dial.host, class.phrase()),
                        Host::Name(n) => format!("{n} resolves to a {} ({ip})", class.phrase()),
                    };
                    return Err(EgressError::new(
                        EgressErrorKind::ForbiddenAddress,
                        format!("{what}; only a route rule can reach it"),
                    ));
                }
            }
        }
        Ok(addrs)
    }

    /// Connect TCP to the first address that answers (all of them were checked).
    pub(crate) async fn connect_tcp(&self, dial: &Dial) -> Result<TcpStream> {
        let addrs = self.addresses(dial).await?;
        let attempt = async {
            let mut last = None;
            for ip in &addrs {
                match TcpStream::connect(SocketAddr::new(*ip, dial.port)).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => {
                return Err(EgressError::new(
                    EgressErrorKind::Timeout,
                    format!("connecting to {} timed out", dial.label),
                ));
            }
            Ok(Err(e)) => {
                let err = EgressError::new(
                    EgressErrorKind::Connect,
                    format!("cannot connect to {}", dial.label),
                );
                return Err(match e {
                    Some(e) => err.with_source(e),
                    None => err,
                });
            }
            Ok(Ok(s)) => s,
        };
        // The kernel connected where we asked; check the peer anyway so a future change to the
        // connect path cannot skip the guard.
        if !dial.exempt
            && let Ok(peer) = stream.peer_addr()
            && self.guard.check(peer.ip()).is_refused()
        {
            return Err(EgressError::new(
                EgressErrorKind::ForbiddenAddress,
                format!("connected to a refused address {}", peer.ip()),
            ));
        }
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Open an HTTP connection (HTTP/2 when the upstream picks it over TLS and `h1_only` is
    /// false; HTTP/1.1 otherwise).
    pub(crate) async fn connect_http(&self, dial: &Dial, h1_only: bool) -> Result<Sender> {
        let tcp = IdleIo::new(self.connect_tcp(dial).await?, self.idle_timeout);
        match dial.scheme {
            Scheme::Http => self.handshake_h1(TokioIo::new(tcp)).await,
            Scheme::Https => {
                let config = if h1_only { &self.tls_h1 } else { &self.tls };
                let name = match &dial.tls_name {
                    Host::Name(n) => ServerName::try_from(n.to_string()).map_err(|e| {
                        EgressError::new(
                            EgressErrorKind::Tls,
                            format!("invalid TLS name for {}", dial.label),
                        )
                        .with_source(e)
                    })?,
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                };
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls =
                    tokio::time::timeout(self.handshake_timeout, connector.connect(name, tcp))
                        .await
                        .map_err(|_| {
                            EgressError::new(
                                EgressErrorKind::Timeout,
                                format!("TLS handshake with {} timed out", dial.label),
                            )
                        })?
                        .map_err(|e| {
                            EgressError::new(
                                EgressErrorKind::Tls,
                                format!("TLS handshake with {} failed", dial.label),
                            )
                            .with_source(e)
                        })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                if h2 {
                    self.handshake_h2(TokioIo::new(tls)).await
                } else {
                    self.handshake_h1(TokioIo::new(tls)).await
                }
            }
        }
    }

    async fn handshake_h1<I>(&self, io: I) -> Result<Sender>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.max_header_bytes.max(8192))
            .max_header_size(self.max_header_bytes)
            .handshake(io)
            .await
            .map_err(upstream_error)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Sender::H1(sender))
    }

    async fn handshake_h2<I>(&self, io: I) -> Result<Sender>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_bytes as u32)
            .handshake(io)
            .await
            .map_err(upstream_error)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    }
}

pub(crate) fn upstream_error(e: hyper::Error) -> EgressError {
    EgressError::new(
        EgressErrorKind::Upstream,
        "the upstream HTTP exchange failed",
    )
    .with_source(e)
}

/// Upstream connections kept by one sandbox connection (or tunnel) for reuse.
pub(crate) struct Pool {
    cap: usize,
    entries: Mutex<Vec<(Dial, Sender)>>,
}

impl Pool {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// A kept connection for `dial` that can take a request now.
    pub(crate) fn acquire(&self, dial: &Dial) -> Option<Sender> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(_, s)| !s.is_closed());
        let pos = entries.iter().position(|(d, s)| {
            d == dial
                && match s {
                    Sender::H2(_) => true,
                    Sender::H1(h1) => h1.is_ready(),
                }
        })?;
        match &entries[pos].1 {
            Sender::H2(h2) => Some(Sender::H2(h2.clone())),
            Sender::H1(_) => Some(entries.swap_remove(pos).1),
        }
    }

    /// Keep `sender` for later requests (HTTP/1 connections become usable again once their
    /// response body is finished; HTTP/2 ones are shared). Beyond the cap it is dropped.
    pub(crate) fn release(&self, dial: Dial, sender: Sender) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Sender::H2(_) = &sender
            && entries.iter().any(|(d, s)| d == &dial && s.is_h2())
        {
            return;
        }
        if entries.len() < self.cap {
            entries.push((dial, sender));
        }
    }
}
