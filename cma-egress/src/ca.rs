//! The per-sandbox certificate authority used to intercept TLS.
//!
//! Each sandbox gets its own CA (ECDSA P-256, generated in memory, constrained to sign leaf
//! certificates only). The backend installs the CA *certificate* in the sandbox; the key never
//! leaves this process. Leaf certificates are minted on demand for the host the sandbox asked to
//! `CONNECT` to, all with one per-CA leaf key (signing is the only per-host cost), and cached per
//! host in a bounded cache together with their rustls server configuration (so TLS session
//! resumption toward the sandbox works).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::error::{EgressError, EgressErrorKind, Result};
use crate::host::Host;

/// Default number of hosts whose leaf certificate a CA keeps.
pub const DEFAULT_LEAF_CACHE: usize = 256;
/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a leaf certificate is valid (capped by the CA's validity).
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// A cached leaf is re-minted after this long, well before it expires.
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clock skew allowance: certificates start being valid this long before now.
const BACKDATE: Duration = Duration::from_secs(3600);

/// ALPN protocols offered to the sandbox on intercepted connections.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

struct Leaf {
    config: Arc<rustls::ServerConfig>,
    minted: Instant,
    last_used: u64,
}

struct LeafCache {
    entries: HashMap<Host, Leaf>,
    tick: u64,
}

/// A sandbox's interception CA. Cheap to share (`Arc`).
pub struct SandboxCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    not_after: time::OffsetDateTime,
    capacity: usize,
    cache: Mutex<LeafCache>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

fn cert_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> EgressError {
    EgressError::new(EgressErrorKind::Certificate, format!("cannot {what}")).with_source(e)
}

impl SandboxCa {
    /// A fresh CA whose certificate's common name mentions `label` (the sandbox id), caching up to
    /// [`DEFAULT_LEAF_CACHE`] leaf certificates.
    pub fn generate(label: &str) -> Result<Self> {
        Self::with_cache_capacity(label, DEFAULT_LEAF_CACHE)
    }

    /// As [`SandboxCa::generate`], keeping at most `capacity` leaf certificates (least recently
    /// used are dropped first).
    pub fn with_cache_capacity(label: &str, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(EgressError::new(
                EgressErrorKind::Config,
                "the leaf certificate cache needs room for at least one host",
            ));
        }
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = KeyPair::generate_for(alg).map_err(|e| cert_error("generate a CA key", e))?;
        let leaf_key =
            KeyPair::generate_for(alg).map_err(|e| cert_error("generate a leaf key", e))?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(64)
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cma egress proxy");
        dn.push(DnType::CommonName, format!("cma egress CA {label}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(serial(&[label.as_bytes(), ca_key.public_key_raw()]));
        let cert = params
            .self_signed(&ca_key)
            .map_err(|e| cert_error("sign the CA certificate", e))?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            not_after: params.not_after,
            issuer: Issuer::new(params, ca_key),
            leaf_key,
            capacity,
            cache: Mutex::new(LeafCache {
                entries: HashMap::new(),
                tick: 0,
            }),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The CA certificate in PEM, to install in the sandbox's trust stores.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// How many leaf certificates are cached.
    pub fn cached_leaves(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// The TLS server configuration presenting a certificate for `host` (minted and cached on
    /// first use), offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self, host: &Host) -> Result<Arc<rustls::ServerConfig>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some(leaf) = cache.entries.get_mut(host)
            && leaf.minted.elapsed() < LEAF_REFRESH
        {
            leaf.last_used = tick;
            return Ok(leaf.config.clone());
        }
        let config = Arc::new(self.mint(host)?);
        if cache.entries.len() >= self.capacity && !cache.entries.contains_key(host) {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, l)| l.last_used)
                .map(|(h, _)| h.clone());
            if let Some(h) = oldest {
                cache.entries.remove(&h);
            }
        }
        cache.entries.insert(
            host.clone(),
            Leaf {
                config: config.clone(),
                minted: Instant::now(),
                last_used: tick,
            },
        );
        Ok(config)
    }

    fn mint(&self, host: &Host) -> Result<rustls::ServerConfig> {
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host {
            Host::Name(n) => SanType::DnsName(
                n.to_string()
                    .try_into()
                    .map_err(|e| cert_error("encode the host name", e))?,
            ),
            Host::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        let nanos = now.unix_timestamp_nanos().to_be_bytes();
        params.serial_number = Some(serial(&[host.to_string().as_bytes(), &nanos]));
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| cert_error("sign a leaf certificate", e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error("configure TLS", e))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key)
            .map_err(|e| cert_error("configure TLS", e))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(config)
    }
}

/// A positive 16-byte serial number derived from `parts`.
fn serial(parts: &[&[u8]]) -> SerialNumber {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let mut bytes = h.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_per_host_and_bounded() {
        let ca = SandboxCa::with_cache_capacity("sbx_1", 2).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = Host::parse("a.example").unwrap();
        let b = Host::parse("b.example").unwrap();
        let c = Host::parse("10.0.0.1").unwrap();
        let first = ca.server_config(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &ca.server_config(&a).unwrap()));
        ca.server_config(&b).unwrap();
        ca.server_config(&a).unwrap();
        ca.server_config(&c).unwrap();
        assert_eq!(ca.cached_leaves(), 2);
        // `b` was least recently used and is gone; `a` survived.
        assert!(Arc::ptr_eq(&first, &ca.server_config(&a).unwrap()));
        assert_eq!(
            first.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(SandboxCa::with_cache_capacity("x", 0).is_err());
    }

    #[test]
    fn each_sandbox_gets_its_own_ca() {
        let a = SandboxCa::generate("a").unwrap();
        let b = SandboxCa::generate("b").unwrap();
        assert_ne!(a.cert_der(), b.cert_der());
        assert!(!format!("{a:?}").contains("BEGIN"));
    }
}
