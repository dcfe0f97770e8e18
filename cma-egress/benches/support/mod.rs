//! Fixtures shared by the proxy benchmark and the `egress_bench` example (used by
//! `scripts/egress-mitm-bench.sh`): a test PKI, a minimal local upstream (HTTP and HTTPS,
//! HTTP/1.1 + HTTP/2) that answers `hello` and says whether it saw the injected header, our proxy
//! configured to route and inject for it, and keep-alive clients for each path.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_egress::secrets::{MemorySecretStore, Secret, SecretName};
use cma_egress::{
    EgressProxy, ListeningProxy, PolicySelector, PolicyStore, SandboxCa, SandboxIdentity,
    SessionContext,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The header both proxies inject, and its value.
pub const INJECTED_HEADER: &str = "authorization";
pub const INJECTED_VALUE: &str = "Bearer bench-secret-value";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and a server certificate for `localhost`, `api.test` and 127.0.0.1.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cma egress bench upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "api.test".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

/// Start the upstream on 127.0.0.1 (TLS when `tls` is given).
pub async fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            serve(s).await;
                        }
                    }
                    None => serve(tcp).await,
                }
            });
        }
    });
    addr
}

async fn serve<I>(io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(|req: Request<Incoming>| async move {
        let saw = req
            .headers()
            .get(INJECTED_HEADER)
            .is_some_and(|v| v == INJECTED_VALUE);
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("x-saw-injected", if saw { "yes" } else { "no" })
                .body(Full::new(Bytes::from_static(b"hello, world\n")))
                .unwrap(),
        )
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Our proxy, with 127.0.0.1 registered as a sandbox: `api.test` (plain HTTP) and
/// `localhost:<https>` are allowed and routed to the upstreams; HTTPS requests get the header
/// injected from a secret (so HTTPS tunnels are intercepted).
pub async fn start_proxy(
    roots: rustls::RootCertStore,
    http_upstream: SocketAddr,
    https_upstream: SocketAddr,
    listen: SocketAddr,
) -> (EgressProxy, ListeningProxy, Arc<SandboxCa>) {
    let policy = serde_json::json!({"policies": [{"id": "pol_bench", "apply_to_all": true, "rules": [
        {"type": "allow", "host": format!("api.test,localhost:{}", https_upstream.port())},
        {"type": "route", "host": "api.test", "upstream": format!("http://{http_upstream}")},
        {"type": "route", "host": format!("localhost:{}", https_upstream.port()),
         "upstream": format!("https://{https_upstream}"), "server_name": "localhost"},
        {"type": "inject", "host": format!("localhost:{}", https_upstream.port()),
         "header": INJECTED_HEADER, "secret": "BENCH_TOKEN", "value": "Bearer {secret}"},
    ]}]});
    let selector = PolicySelector::from_json(policy.to_string().as_bytes()).unwrap();
    let secrets = MemorySecretStore::new();
    secrets.insert(
        SecretName::new("BENCH_TOKEN").unwrap(),
        Secret::new(INJECTED_VALUE.strip_prefix("Bearer ").unwrap()),
    );
    let proxy = EgressProxy::builder(Arc::new(PolicyStore::new(selector)))
        .secrets(secrets)
        .upstream_roots(roots)
        .build()
        .unwrap();
    let ca = Arc::new(SandboxCa::generate("sbx_bench").unwrap());
    proxy
        .registry()
        .register(
            "127.0.0.1".parse().unwrap(),
            SandboxIdentity::new("sbx_bench", SessionContext::new("sesn_bench"))
                .with_ca(ca.clone()),
        )
        .unwrap();
    let listening = proxy.listen(listen).await.unwrap();
    (proxy, listening, ca)
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: http::Uri,
    host: String,
}

impl Client {
    async fn over<I>(io: I, uri: &str, host: &str) -> Self
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self {
            sender,
            uri: uri.parse().unwrap(),
            host: host.to_owned(),
        }
    }

    /// Plain HTTP straight to `addr`.
    pub async fn direct_http(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Self::over(tcp, "/", "api.test").await
    }

    /// Absolute-form requests for `http://api.test/` through the proxy.
    pub async fn proxy_http(proxy: SocketAddr) -> Self {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Self::over(tcp, "http://api.test/", "api.test").await
    }

    /// TLS straight to `addr` as `localhost`, trusting `ca`.
    pub async fn direct_https(addr: SocketAddr, ca: CertificateDer<'static>) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tls(tcp, "localhost", ca).await;
        Self::over(tls, "/", &format!("localhost:{}", addr.port())).await
    }

    /// `CONNECT localhost:<port>` through `proxy`, then TLS trusting `ca` (the proxy's sandbox
    /// CA, or mitmproxy's).
    pub async fn proxy_https(proxy: SocketAddr, port: u16, ca: CertificateDer<'static>) -> Self {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let authority = format!("localhost:{port}");
        tcp.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                tcp.read(&mut b).await.unwrap(),
                1,
                "proxy closed during CONNECT"
            );
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let tls = tls(tcp, "localhost", ca).await;
        Self::over(tls, "/", &authority).await
    }

    /// One `GET`; returns whether the upstream saw the injected header.
    pub async fn get(&mut self) -> bool {
        let req = Request::builder()
            .uri(self.uri.clone())
            .header("host", self.host.as_str())
            .body(Empty::new())
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let saw = resp
            .headers()
            .get("x-saw-injected")
            .is_some_and(|v| v == "yes");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello, world\n");
        saw
    }
}

async fn tls(
    tcp: TcpStream,
    name: &str,
    ca: CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

/// The `p`-th percentile (0–100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
