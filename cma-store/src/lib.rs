//! Durable state for `cma`: workspace snapshots (`SnapshotStore`) and the control plane's record of
//! sessions (`StateStore`).
//!
//! [`state`] holds the [`state::StateStore`] trait and its backends: in memory, SQLite (feature
//! `sqlite`, default) and Postgres (feature `postgres`), with the conformance suite they all pass
//! (feature `conformance`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod state;

/// Identifies one stored workspace snapshot (the SHA-256 of its manifest, hex encoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Wrap a hex SHA-256 digest; `None` unless it is exactly 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(hex.to_owned()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_id_accepts_only_lowercase_sha256_hex() {
        assert!(SnapshotId::from_hex(&"a".repeat(64)).is_some());
        assert!(SnapshotId::from_hex(&"A".repeat(64)).is_none());
        assert!(SnapshotId::from_hex("abc").is_none());
        assert!(SnapshotId::from_hex(&"g".repeat(64)).is_none());
    }
}
