//! Name resolution for the proxy. The proxy resolves every destination itself (the sandbox's
//! resolver is never trusted), checks the answers, and connects to an address it checked.
//!
//! [`SystemResolver`] uses the host's resolver (`getaddrinfo` on a blocking thread, through
//! tokio) with a timeout. [`StaticResolver`] answers from a table: tests use it to stage DNS
//! rebinding, and operators can use it to pin names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{EgressError, EgressErrorKind, Result};

/// Most addresses kept from one answer.
pub const MAX_ADDRESSES: usize = 16;

/// Turns a host name into addresses.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// Resolve `name` (already normalised: lower-case ASCII, no trailing dot). An empty answer
    /// is an error.
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>>;
}

#[async_trait]
impl<T: Resolver + ?Sized> Resolver for Arc<T> {
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>> {
        (**self).resolve(name).await
    }
}

/// The host's resolver, bounded by a timeout.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    timeout: Duration,
}

impl SystemResolver {
    /// A resolver that gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>> {
        let lookup = tokio::net::lookup_host((name, 0));
        let addrs = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| {
                EgressError::new(
                    EgressErrorKind::Timeout,
                    format!("resolving {name} timed out"),
                )
            })?
            .map_err(|e| {
                EgressError::new(EgressErrorKind::Resolve, format!("cannot resolve {name}"))
                    .with_source(e)
            })?;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
            if out.len() == MAX_ADDRESSES {
                break;
            }
        }
        if out.is_empty() {
            return Err(EgressError::new(
                EgressErrorKind::Resolve,
                format!("{name} has no address"),
            ));
        }
        Ok(out)
    }
}

/// A name's answers in order, and how many lookups were made.
type Answers = (Vec<Vec<IpAddr>>, usize);

/// Answers from a table; unknown names fail to resolve. Each name may hold a sequence of
/// answers, handed out in turn (the last one repeats), to stage DNS rebinding in tests.
#[derive(Debug, Default)]
pub struct StaticResolver {
    table: RwLock<HashMap<String, Answers>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer `name` with `addrs` from now on.
    pub fn insert(&self, name: &str, addrs: Vec<IpAddr>) {
        self.insert_sequence(name, vec![addrs]);
    }

    /// Answer `name` with each of `answers` in turn, then keep repeating the last one.
    pub fn insert_sequence(&self, name: &str, answers: Vec<Vec<IpAddr>>) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), (answers, 0));
    }

    /// How many times `name` has been resolved.
    pub fn lookups(&self, name: &str) -> usize {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |(_, n)| *n)
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let Some((answers, count)) = table.get_mut(name) else {
            return Err(EgressError::new(
                EgressErrorKind::Resolve,
                format!("cannot resolve {name}"),
            ));
        };
        let answer = answers
            .get(*count)
            .or(answers.last())
            .cloned()
            .unwrap_or_default();
        *count += 1;
        if answer.is_empty() {
            return Err(EgressError::new(
                EgressErrorKind::Resolve,
                format!("{name} has no address"),
            ));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_resolver_hands_out_answers_in_turn() {
        let r = StaticResolver::new();
        let a: IpAddr = "8.8.8.8".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        r.insert_sequence("rebind.test", vec![vec![a], vec![b]]);
        assert_eq!(r.resolve("rebind.test").await.unwrap(), vec![a]);
        assert_eq!(r.resolve("rebind.test").await.unwrap(), vec![b]);
        assert_eq!(r.resolve("rebind.test").await.unwrap(), vec![b]);
        assert_eq!(r.lookups("rebind.test"), 3);
        assert_eq!(
            r.resolve("unknown.test").await.unwrap_err().kind(),
            EgressErrorKind::Resolve
        );
        r.insert("empty.test", vec![]);
        assert!(r.resolve("empty.test").await.is_err());
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost() {
        let r = SystemResolver::default();
        let addrs = r.resolve("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
    }
}
