//! Durable state for `cma`: workspace snapshots ([`SnapshotStore`]) and the control plane's
//! record of sessions (`StateStore`).
//!
//! In the control plane (`cma-core` with its `store` feature, which re-exports this crate as
//! `cma_core::store`): a [`SnapshotStore`] given to `SandboxHost::builder().snapshots(…)` saves
//! a session's workspace when its work item ends and restores it into the session's next fresh
//! sandbox, with retention and chunk GC on the plane's maintenance schedule; a `StateStore`
//! given to both the `SandboxHost` and the `ControlPlane` records sandboxes, sessions, leases and
//! webhook ids so a restarted process recovers.
//!
//! [`state`] holds the [`state::StateStore`] trait and its backends: in memory, SQLite (feature
//! `sqlite`, default) and Postgres (feature `postgres`), with the conformance suite they all pass
//! (feature `conformance`). [`snapshot`] holds the [`SnapshotStore`]:
//!
//! ```no_run
//! # async fn demo(sandbox: &dyn cma_sandbox::Sandbox) -> cma_store::snapshot::Result<()> {
//! use cma_store::{SnapshotConfig, SnapshotStore};
//! let store = SnapshotStore::local_default(SnapshotConfig::default())?;
//! // Sleep: snapshot after the previous one (unchanged chunks are not uploaded again).
//! let parent = store.latest("sesn_1").await?.map(|m| m.id);
//! let saved = store.save("sesn_1", sandbox, parent.as_ref()).await?;
//! // Wake, in a fresh sandbox: restore the newest snapshot, verified.
//! store.restore(&saved.id, sandbox).await?;
//! # Ok(()) }
//! ```
//!
//! [`SnapshotStore::wake`] restores without making the caller wait for the whole workspace: it
//! returns a [`WakingSandbox`] whose operations wait only for the files they touch.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod snapshot;
pub mod state;

pub use snapshot::{
    ChunkNames, GcConfig, GcReport, RetentionPolicy, RetentionReport, SnapshotConfig, SnapshotInfo,
    SnapshotManifest, SnapshotStore, WakingSandbox, Woken,
};

/// Identifies one stored workspace snapshot (the SHA-256 of its stored manifest, hex encoded).
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
