//! Shared fixtures for the proxy tests: a test PKI, local HTTP and HTTPS upstreams on loopback
//! (HTTP/1.1 + HTTP/2, echo, redirect, WebSocket echo), a proxy harness with in-memory policy,
//! secret, audit and resolver back-ends, and small clients that go through the proxy the way a
//! sandbox would (absolute-form requests, CONNECT + TLS with the sandbox CA).
//!
//! Loopback upstreams are reachable only through `route` rules naming them: that is the
//! documented way to reach an address the proxy otherwise refuses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cma_egress::audit::MemoryAuditSink;
use cma_egress::secrets::{MemorySecretStore, Secret, SecretName};
use cma_egress::{
    CustomServices, EgressProxy, ListeningProxy, PolicySelector, PolicyStore, SandboxCa,
    SandboxIdentity, SessionContext, StaticResolver,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET_VALUE: &str = "s3cret-value-never-shown";
pub const OTHER_SECRET_VALUE: &str = "another-s3cret-value";

/// Names every test upstream certificate covers.
pub const UPSTREAM_NAMES: &[&str] = &[
    "api.test",
    "other.test",
    "splice.test",
    "ws.test",
    "evil.test",
    "localhost",
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA and a server certificate for [`UPSTREAM_NAMES`] and 127.0.0.1.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cma egress test upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut names: Vec<String> = UPSTREAM_NAMES.iter().map(|s| s.to_string()).collect();
        names.push("127.0.0.1".into());
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            ca_der: ca_cert.der().clone(),
            server: Arc::new(server),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

/// A local upstream: echoes requests as JSON, redirects on `/redirect`, echoes WebSocket bytes
/// on `/ws`, and counts every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub async fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let hits = h.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await
                        else {
                            return;
                        };
                        serve_upstream(stream, hits).await;
                    }
                    None => serve_upstream(tcp, hits).await,
                }
            });
        }
    });
    Upstream { addr, hits, task }
}

async fn serve_upstream<I>(io: I, hits: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let hits = hits.clone();
        async move { Ok::<_, std::convert::Infallible>(upstream_handler(req, hits).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

async fn upstream_handler(
    mut req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    match req.uri().path() {
        "/redirect" => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "http://denied.test/landing")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "/ws" if req.headers().contains_key("upgrade") => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        _ => {
            let mut headers = BTreeMap::new();
            for (k, v) in req.headers() {
                headers.insert(
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
            let version = format!("{:?}", req.version());
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let authority = req.uri().authority().map(|a| a.to_string());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let echo = serde_json::json!({
                "method": method, "path": path, "version": version, "authority": authority,
                "headers": headers, "body_len": body.len(),
            });
            Response::new(Full::new(Bytes::from(echo.to_string())))
        }
    }
}

/// Ports of the harness's upstreams, for building policies.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
}

/// A listening proxy with in-memory back-ends and 127.0.0.1 registered as sandbox `sbx_test`.
pub struct Harness {
    pub proxy: EgressProxy,
    pub addr: SocketAddr,
    pub audit: Arc<MemoryAuditSink>,
    pub secrets: Arc<MemorySecretStore>,
    pub resolver: Arc<StaticResolver>,
    pub store: Arc<PolicyStore>,
    pub ca: Arc<SandboxCa>,
    pub pki: Pki,
    pub http_up: Upstream,
    pub https_up: Upstream,
    pub ports: Ports,
    _listening: ListeningProxy,
}

pub fn selector(v: serde_json::Value) -> PolicySelector {
    PolicySelector::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// A selector with one policy for every session.
pub fn one_policy(rules: serde_json::Value) -> PolicySelector {
    selector(
        serde_json::json!({"policies": [{"id": "pol_test", "apply_to_all": true, "rules": rules}]}),
    )
}

impl Harness {
    pub async fn new(policy: impl FnOnce(Ports) -> PolicySelector) -> Self {
        Self::with_custom(policy, CustomServices::new()).await
    }

    pub async fn with_custom(
        policy: impl FnOnce(Ports) -> PolicySelector,
        custom: CustomServices,
    ) -> Self {
        let pki = Pki::new();
        let http_up = start_upstream(None).await;
        let https_up = start_upstream(Some(pki.server.clone())).await;
        let ports = Ports {
            http: http_up.addr.port(),
            https: https_up.addr.port(),
        };
        let store = Arc::new(PolicyStore::new(policy(ports)));
        let audit = Arc::new(MemoryAuditSink::new(10_000));
        let secrets = Arc::new(MemorySecretStore::new());
        secrets.insert(SecretName::new("TOKEN").unwrap(), Secret::new(SECRET_VALUE));
        secrets.insert(
            SecretName::new("KEY").unwrap(),
            Secret::new(OTHER_SECRET_VALUE),
        );
        let resolver = Arc::new(StaticResolver::new());
        let proxy = EgressProxy::builder(store.clone())
            .secrets(secrets.clone())
            .audit(audit.clone())
            .resolver(resolver.clone())
            .upstream_roots(pki.roots())
            .custom_services(custom)
            .build()
            .unwrap();
        let ca = Arc::new(SandboxCa::generate("sbx_test").unwrap());
        proxy
            .registry()
            .register(
                "127.0.0.1".parse().unwrap(),
                SandboxIdentity::new("sbx_test", SessionContext::new("sesn_test"))
                    .with_ca(ca.clone()),
            )
            .unwrap();
        let listening = proxy.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        Self {
            addr: listening.local_addr(),
            proxy,
            audit,
            secrets,
            resolver,
            store,
            ca,
            pki,
            http_up,
            https_up,
            ports,
            _listening: listening,
        }
    }

    /// A keep-alive HTTP/1.1 connection to the proxy, for absolute-form requests.
    pub async fn forward_conn(&self) -> Client {
        Client::h1(TcpStream::connect(self.addr).await.unwrap()).await
    }

    /// `CONNECT authority`, returning the status and the raw stream.
    pub async fn connect(&self, authority: &str) -> (u16, TcpStream) {
        connect_raw(self.addr, authority).await
    }

    /// `CONNECT` then TLS with `sni`, trusting the sandbox CA, offering `alpn`.
    pub async fn tunnel_tls(
        &self,
        authority: &str,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let (status, stream) = self.connect(authority).await;
        assert_eq!(status, 200, "CONNECT {authority}");
        tls_client(stream, sni, self.ca.cert_der().clone(), alpn).await
    }

    /// `CONNECT` + TLS + HTTP (h2 when `h2`), ready for requests.
    pub async fn tunnel_client(&self, authority: &str, sni: &str, h2: bool) -> Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = self.tunnel_tls(authority, sni, alpn).await.unwrap();
        if h2 {
            Client::h2(tls).await
        } else {
            Client::h1(tls).await
        }
    }

    /// Every audit record so far, as JSON text (to search for leaked secrets).
    pub fn audit_json(&self) -> String {
        serde_json::to_string(&self.audit.records()).unwrap()
    }

    /// Wait (briefly, polling) until at least `n` audit records exist; records of tunnels and
    /// response bodies are emitted when they end, which happens on other tasks.
    pub async fn wait_audit(&self, n: usize) -> Vec<cma_egress::AuditRecord> {
        for _ in 0..500 {
            let r = self.audit.records();
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.audit.records()
    }
}

pub async fn connect_raw(proxy: SocketAddr, authority: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s)
}

/// Read an HTTP response head byte by byte (so nothing after it is consumed).
pub async fn read_head<I: AsyncRead + Unpin>(s: &mut I) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub async fn tls_client(
    stream: TcpStream,
    sni: &str,
    ca: CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

/// A sandbox-side HTTP client on one connection.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response as the sandbox sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header the upstream echoed back.
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

impl Client {
    pub async fn h1<I>(io: I) -> Client
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Client::H1(sender)
    }

    pub async fn h2<I>(io: I) -> Client
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client::H2(sender)
    }

    /// Send a request; `Err` when the connection failed.
    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let resp = match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.try_send(req).await.unwrap()
    }

    /// `GET uri` with `headers`.
    pub async fn get(&mut self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(request("GET", uri, headers)).await
    }
}

pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}
