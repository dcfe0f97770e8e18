//! Secrets the proxy injects into requests, and where it gets them.
//!
//! A [`Secret`] holds a value the sandbox must never see: it has no `Display`, its `Debug` is
//! redacted, it is not serialisable, and its buffer is zeroed when dropped. A policy names secrets
//! ([`SecretName`]); a [`SecretStore`] turns a name into a value at request time, so rotating a
//! secret takes effect on the next request. Stores here: [`EnvSecretStore`] (environment
//! variables), [`FileSecretStore`] (one file per secret), [`MemorySecretStore`] and
//! [`SecretStores`] (first store that knows the name wins). A host with a vault implements the
//! same trait; the control plane's state store keeps secret *metadata* only, never values.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::error::{EgressError, EgressErrorKind, Result};

/// Largest secret value accepted, in bytes (a header value, not a file).
pub const MAX_SECRET_BYTES: usize = 16 * 1024;
/// Longest secret name accepted.
pub const MAX_SECRET_NAME_LEN: usize = 128;

/// A secret value. Never printed: `Debug` shows `Secret(<redacted>)`; the bytes are zeroed on drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// The raw bytes. Only the proxy's injection code should call this.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret's name: 1–128 characters of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`
/// (safe as an environment variable suffix and as a file name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

impl SecretName {
    /// Validate a name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= MAX_SECRET_NAME_LEN
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(SecretName(name))
        } else {
            let shown: String = name.chars().take(40).collect();
            Err(EgressError::new(
                EgressErrorKind::InvalidPolicy,
                format!(
                    "invalid secret name {shown:?}: use 1-{MAX_SECRET_NAME_LEN} characters of A-Z a-z 0-9 _ . - (not starting with . or -)"
                ),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where secret values come from.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// The value of `name`, `None` if the store does not know it. An `Err` (store unreachable)
    /// makes the proxy refuse the request, like a missing secret.
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>>;
}

#[async_trait]
impl<T: SecretStore + ?Sized> SecretStore for Arc<T> {
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>> {
        (**self).get(name).await
    }
}

fn too_large(name: &SecretName) -> EgressError {
    EgressError::new(
        EgressErrorKind::SecretUnavailable,
        format!("secret {name} is larger than {MAX_SECRET_BYTES} bytes"),
    )
}

/// Secrets from environment variables: `name` is read from `<prefix><name>`.
#[derive(Debug, Clone, Default)]
pub struct EnvSecretStore {
    prefix: String,
}

impl EnvSecretStore {
    /// Read `<prefix><name>` (for example prefix `CMA_SECRET_` and name `GITHUB_TOKEN`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
}

#[async_trait]
impl SecretStore for EnvSecretStore {
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>> {
        let var = format!("{}{}", self.prefix, name);
        match std::env::var_os(&var) {
            None => Ok(None),
            Some(v) => {
                let v = Secret::new(v.into_encoded_bytes());
                if v.len() > MAX_SECRET_BYTES {
                    return Err(too_large(name));
                }
                Ok(Some(v))
            }
        }
    }
}

/// Secrets from files: `name` is read from `<dir>/<name>`; one trailing newline is dropped.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
}

impl FileSecretStore {
    /// Read secrets from files in `dir` (for example a mounted Kubernetes or Docker secret).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

#[async_trait]
impl SecretStore for FileSecretStore {
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>> {
        // The name's character set rules out separators and `..`: the path stays in `dir`.
        let path = self.dir.join(name.as_str());
        // One blocking task for open + read (tokio::fs would hand each call, and each read, to
        // the blocking pool separately: several thread wake-ups on every injected request).
        let read = tokio::task::spawn_blocking(move || read_secret_file(&path)).await;
        let unreadable = |e: std::io::Error| {
            EgressError::new(
                EgressErrorKind::SecretUnavailable,
                format!("secret {name} could not be read"),
            )
            .with_source(e)
        };
        let mut buf = match read {
            Ok(Ok(Some(buf))) => buf,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(unreadable(e)),
            Err(join) => return Err(unreadable(std::io::Error::other(join.to_string()))),
        };
        if buf.len() > MAX_SECRET_BYTES {
            return Err(too_large(name));
        }
        if buf.ends_with(b"\n") {
            buf.pop();
            if buf.ends_with(b"\r") {
                buf.pop();
            }
        }
        Ok(Some(Secret(buf)))
    }
}

/// At most `MAX_SECRET_BYTES + 1` bytes of `path` (one more tells the caller it is too large);
/// `None` when the file does not exist.
fn read_secret_file(path: &std::path::Path) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Sized up front so the value is not left behind, unzeroed, in a buffer `read_to_end`
    // outgrew and freed.
    let limit = MAX_SECRET_BYTES as u64 + 1;
    let len = file.metadata().map_or(0, |m| m.len().min(limit));
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(limit).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Secrets held in memory (tests, or values handed over by an operator at start-up).
#[derive(Debug, Default)]
pub struct MemorySecretStore {
    values: RwLock<HashMap<SecretName, Secret>>,
}

impl MemorySecretStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set (or replace) a secret.
    pub fn insert(&self, name: SecretName, value: Secret) {
        self.values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, value);
    }

    /// Forget a secret; `true` if it was known.
    pub fn remove(&self, name: &SecretName) -> bool {
        self.values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }
}

#[async_trait]
impl SecretStore for MemorySecretStore {
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>> {
        Ok(self
            .values
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned())
    }
}

/// Several stores asked in order; the first that knows the name answers. An error from a store
/// stops the search (fail closed: a later store must not shadow an unreachable earlier one).
#[derive(Default)]
pub struct SecretStores {
    stores: Vec<Arc<dyn SecretStore>>,
}

impl SecretStores {
    /// No stores: every secret is missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a store.
    #[must_use]
    pub fn with(mut self, store: impl SecretStore) -> Self {
        self.stores.push(Arc::new(store));
        self
    }
}

impl fmt::Debug for SecretStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretStores({} stores)", self.stores.len())
    }
}

#[async_trait]
impl SecretStore for SecretStores {
    async fn get(&self, name: &SecretName) -> Result<Option<Secret>> {
        for store in &self.stores {
            if let Some(v) = store.get(name).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> SecretName {
        SecretName::new(s).unwrap()
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(<redacted>))");
        assert_eq!(s.expose(), b"hunter2-very-secret");
    }

    #[test]
    fn names_are_validated() {
        for good in ["GITHUB_TOKEN", "a", "npm.token-1", &"x".repeat(128)] {
            assert!(SecretName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(SecretName::new(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_store_reads_trims_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("TOKEN"), "abc\n").unwrap();
        std::fs::write(dir.path().join("CRLF"), "abc\r\n").unwrap();
        std::fs::write(dir.path().join("BIG"), vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let store = FileSecretStore::new(dir.path());
        assert_eq!(
            store.get(&n("TOKEN")).await.unwrap().unwrap().expose(),
            b"abc"
        );
        assert_eq!(
            store.get(&n("CRLF")).await.unwrap().unwrap().expose(),
            b"abc"
        );
        assert!(store.get(&n("MISSING")).await.unwrap().is_none());
        let e = store.get(&n("BIG")).await.unwrap_err();
        assert_eq!(e.kind(), EgressErrorKind::SecretUnavailable);
    }

    #[tokio::test]
    async fn env_store_uses_the_prefix() {
        // `set_var` is unsafe in edition 2024 (other threads read the environment): read a
        // variable every test process has instead of setting one.
        let store = EnvSecretStore::new("");
        let path = store.get(&n("PATH")).await.unwrap();
        assert_eq!(
            path.map(|s| s.expose().to_vec()),
            std::env::var_os("PATH").map(|v| v.into_encoded_bytes())
        );
        let store = EnvSecretStore::new("CMA_EGRESS_NO_SUCH_PREFIX_");
        assert!(store.get(&n("PATH")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn chain_asks_in_order_and_stops_on_errors() {
        let a = MemorySecretStore::new();
        a.insert(n("A"), Secret::new("from-a"));
        let b = MemorySecretStore::new();
        b.insert(n("A"), Secret::new("from-b"));
        b.insert(n("B"), Secret::new("from-b"));
        let chain = SecretStores::new().with(a).with(b);
        assert_eq!(
            chain.get(&n("A")).await.unwrap().unwrap().expose(),
            b"from-a"
        );
        assert_eq!(
            chain.get(&n("B")).await.unwrap().unwrap().expose(),
            b"from-b"
        );
        assert!(chain.get(&n("C")).await.unwrap().is_none());

        struct Broken;
        #[async_trait]
        impl SecretStore for Broken {
            async fn get(&self, _: &SecretName) -> Result<Option<Secret>> {
                Err(EgressError::new(EgressErrorKind::SecretUnavailable, "down"))
            }
        }
        let fallback = MemorySecretStore::new();
        fallback.insert(n("A"), Secret::new("shadow"));
        let chain = SecretStores::new().with(Broken).with(fallback);
        assert!(chain.get(&n("A")).await.is_err());
    }
}
