//! TLS toward the sandbox: reading a tunnel's ClientHello (to check its server name against the
//! `CONNECT` target, for spliced and intercepted tunnels alike) and terminating TLS with the
//! sandbox's CA.
//!
//! A ClientHello whose SNI names another host than the `CONNECT` target is refused: otherwise a
//! sandbox could open a tunnel to an allowed host and talk to another one behind the same front
//! (or make the proxy mint a certificate for a name the policy never saw). A ClientHello without
//! SNI is accepted; the certificate presented is the target's anyway.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ca::SandboxCa;
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::Host;

/// The TLS record type of a handshake: the first byte of every ClientHello.
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;
/// Most bytes read while looking for the end of a ClientHello.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

fn tls_error(what: &str) -> EgressError {
    EgressError::new(EgressErrorKind::Tls, what.to_owned())
}

/// Refuse a server name that differs from the tunnel's target.
pub(crate) fn check_sni(sni: Option<&str>, target: &Host) -> Result<()> {
    match sni {
        None => Ok(()),
        Some(name) => match Host::parse(name) {
            Ok(h) if &h == target => Ok(()),
            _ => Err(EgressError::denied(format!(
                "TLS server name {:?} does not match the CONNECT target {target}",
                name.chars().take(255).collect::<String>()
            ))),
        },
    }
}

/// What a spliced tunnel's first bytes turned out to be.
pub(crate) struct Opening {
    /// Every byte read (to be forwarded upstream first).
    pub bytes: Bytes,
    /// `Some(sni)` if the stream opened with a TLS ClientHello (`sni` itself may be absent).
    pub tls: Option<Option<String>>,
}

/// Read the opening of a tunnel: a whole ClientHello if it starts like TLS, else whatever the
/// first read returned.
pub(crate) async fn read_opening<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> Result<Opening> {
    tokio::time::timeout(timeout, read_opening_inner(io))
        .await
        .map_err(|_| {
            EgressError::new(
                EgressErrorKind::Timeout,
                "the tunnel's first bytes did not arrive in time",
            )
        })?
}

async fn read_opening_inner<I: AsyncRead + Unpin>(io: &mut I) -> Result<Opening> {
    let mut seen = BytesMut::with_capacity(4096);
    let mut acceptor = Acceptor::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await.map_err(|e| {
            EgressError::new(EgressErrorKind::Io, "reading the tunnel failed").with_source(e)
        })?;
        if n == 0 {
            return Err(tls_error(
                "the tunnel closed before its first message was complete",
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen[0] != TLS_HANDSHAKE {
            return Ok(Opening {
                bytes: seen.freeze(),
                tls: None,
            });
        }
        if seen.len() > MAX_CLIENT_HELLO {
            return Err(tls_error("the ClientHello is too large"));
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor.read_tls(&mut chunk).map_err(|e| {
                EgressError::new(EgressErrorKind::Tls, "malformed ClientHello").with_source(e)
            })?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Opening {
                    bytes: seen.freeze(),
                    tls: Some(sni),
                });
            }
            Err((e, _)) => {
                return Err(
                    EgressError::new(EgressErrorKind::Tls, "malformed ClientHello").with_source(e),
                );
            }
        }
    }
}

/// Terminate the sandbox's TLS with a certificate for `target` from its CA, after checking the
/// ClientHello's server name.
pub(crate) async fn accept_intercepted<I>(
    io: I,
    target: &Host,
    ca: &SandboxCa,
    timeout: Duration,
) -> Result<TlsStream<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(|e| {
                EgressError::new(EgressErrorKind::Tls, "malformed ClientHello").with_source(e)
            })?;
        check_sni(start.client_hello().server_name(), target)?;
        let config = ca.server_config(target)?;
        start.into_stream(config).await.map_err(|e| {
            EgressError::new(
                EgressErrorKind::Tls,
                "the TLS handshake with the sandbox failed",
            )
            .with_source(e)
        })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| {
            EgressError::new(
                EgressErrorKind::Timeout,
                "the TLS handshake with the sandbox timed out",
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_must_match_the_target() {
        let target = Host::parse("api.example.com").unwrap();
        assert!(check_sni(None, &target).is_ok());
        assert!(check_sni(Some("API.example.com"), &target).is_ok());
        assert!(check_sni(Some("api.example.com."), &target).is_ok());
        let e = check_sni(Some("evil.com"), &target).unwrap_err();
        assert_eq!(e.kind(), EgressErrorKind::Denied);
        assert!(check_sni(Some("x..y"), &target).is_err());
    }

    #[tokio::test]
    async fn non_tls_openings_pass_through() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"SSH-2.0-x\r\n")
            .await
            .unwrap();
        let o = read_opening(&mut a, Duration::from_secs(5)).await.unwrap();
        assert!(o.tls.is_none());
        assert_eq!(&o.bytes[..], b"SSH-2.0-x\r\n");
    }

    #[tokio::test]
    async fn malformed_client_hellos_are_refused() {
        // A handshake record holding an empty ClientHello.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0, 0, 0])
            .await
            .unwrap();
        let e = read_opening(&mut a, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), EgressErrorKind::Tls, "{e}");
        // A handshake byte and then the stream ends.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, &[0x16, 0x03])
            .await
            .unwrap();
        drop(b);
        assert!(read_opening(&mut a, Duration::from_secs(5)).await.is_err());
    }
}
