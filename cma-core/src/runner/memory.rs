//! Memory stores: download each store attached to a session into the sandbox, sync it back while
//! the session runs, and flush it at teardown (docs/protocol.md §5.3; the behaviour follows the SDK
//! 2.10.0 worker).
//!
//! A store lands at its `mount_path` (which must be a clean absolute path) or, without one, at
//! `{workdir}/memory/<name>`. All file access goes through the [`Sandbox`] API, so this works on
//! every backend; the host must make a `mount_path` outside the workspace reachable (the
//! [`SandboxHost`](crate::control::host::SandboxHost) mounts a fresh host directory there when
//! configured with a memory directory).
//!
//! Each sync reconciles the folder with the server per path, from a baseline of the last known
//! remote `content_sha256` values:
//!
//! * changed only remotely → written to disk; changed only locally → uploaded (an update with a
//!   `content_sha256` precondition, or a create); changed on both sides → the remote wins;
//! * an upload refused by a precondition (409) is dropped: the next sync pulls the winner;
//! * a file the server refuses (400/413, not UTF-8, over 100 kB) is skipped until it changes;
//! * a file deleted locally is deleted remotely (guarded by `expected_content_sha256`) only after
//!   it stayed missing for [`DELETE_CORROBORATION`] (waived by the final sync) and within a
//!   per-sync cap, per [`MemoryDeletions`];
//! * a memory deleted remotely is deleted locally unless the file holds an unpushed edit;
//! * read-only stores pull but never push;
//! * a reserved marker file ([`MARKER_PATH`]) names the store: a folder whose marker is gone or
//!   foreign is never uploaded from, and a folder wiped entirely is downloaded again.
//!
//! Syncs never fail the session: errors are logged and the next sync retries.
//!
//! `paths` checks where stores may live and which memory paths are acceptable; `sync` holds the
//! per-store reconciliation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cma_sandbox::{FileKind, Sandbox, SandboxError, SandboxErrorKind};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::client::{
    ApiError, Client, Credential, Helper, MAX_MEMORY_CONTENT_BYTES, Memory, MemoryStoreClient,
    MemoryView,
};

mod paths;
mod sync;

use paths::rel_of;
pub use paths::{MemoryMount, has_memory_stores, memory_mounts};

/// Default sync cadence (SDK `DEFAULT_MEMORY_SYNC_INTERVAL`).
pub const DEFAULT_MEMORY_SYNC_INTERVAL: Duration = Duration::from_secs(15);
/// Smallest sync cadence accepted (SDK `MIN_MEMORY_SYNC_INTERVAL`).
pub const MIN_MEMORY_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on each teardown pass, the final sync then the flush (SDK `MEMORY_FLUSH_TIMEOUT`).
pub const MEMORY_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a file must stay missing before its server delete goes out.
pub const DELETE_CORROBORATION: Duration = Duration::from_secs(30);
/// The reserved marker at every store root: `version 1` and the store id; never synced.
pub const MARKER_PATH: &str = ".anthropic-memory-store";
/// Most memories one store may hold here (the server caps a store at 2000).
pub const MAX_MEMORIES_PER_STORE: usize = 10_000;
/// Most path segments of a memory path.
pub const MAX_PATH_SEGMENTS: usize = 20;
/// Longest memory path, in bytes (the server's own bound).
pub const MAX_MEMORY_PATH_BYTES: usize = 1024;
/// Longest segment of a memory path or a store folder name, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Most memory stores one session mounts; a session with more fails with
/// [`MemoryError::TooManyStores`].
pub const MAX_MEMORY_STORES_PER_SESSION: usize = 16;
/// Most directories one scan of a store folder visits; a folder with more is not synced (the
/// scan fails, and is retried at the next sync).
pub const MAX_SCAN_DIRS: usize = 10_000;
/// Largest local file hashed for a sync; bigger ones are never uploaded.
const MAX_HASHED_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MARKER_VERSION: u32 = 1;
const DELETE_CAP_FLOOR: usize = 8;
const DELETE_CAP_CEILING: usize = 50;

/// Whether a file deleted locally may delete its server memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryDeletions {
    /// Deletes go out (after the corroboration window).
    #[default]
    Enabled,
    /// Dry run: the same checks, only logged.
    LogOnly,
    /// Never delete server memories.
    Disabled,
}

/// Memory settings of a runner (`memory_sync_interval`, `memory_sync_deletions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    sync_interval: Option<Duration>,
    deletions: MemoryDeletions,
    flush_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sync_interval: Some(DEFAULT_MEMORY_SYNC_INTERVAL),
            deletions: MemoryDeletions::Enabled,
            flush_timeout: MEMORY_FLUSH_TIMEOUT,
        }
    }
}

impl MemoryConfig {
    /// Sync every `interval` (at least [`MIN_MEMORY_SYNC_INTERVAL`]); `None` disables memory
    /// (sessions with stores then run without them, as the SDK's opt-out).
    pub fn new(interval: Option<Duration>) -> Result<Self, MemoryError> {
        if let Some(i) = interval
            && i < MIN_MEMORY_SYNC_INTERVAL
        {
            return Err(MemoryError::IntervalTooShort(i));
        }
        Ok(Self {
            sync_interval: interval,
            ..Self::default()
        })
    }

    /// Memory disabled.
    pub fn disabled() -> Self {
        Self {
            sync_interval: None,
            ..Self::default()
        }
    }

    /// Set the deletion mode.
    #[must_use]
    pub fn with_deletions(mut self, deletions: MemoryDeletions) -> Self {
        self.deletions = deletions;
        self
    }

    /// Set the bound of each teardown pass (default [`MEMORY_FLUSH_TIMEOUT`]).
    #[must_use]
    pub fn with_flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// The sync cadence; `None` when memory is disabled.
    pub fn sync_interval(&self) -> Option<Duration> {
        self.sync_interval
    }

    /// Whether memory stores are downloaded and synced at all.
    pub fn enabled(&self) -> bool {
        self.sync_interval.is_some()
    }

    /// The deletion mode.
    pub fn deletions(&self) -> MemoryDeletions {
        self.deletions
    }

    /// The bound of each teardown pass.
    pub fn flush_timeout(&self) -> Duration {
        self.flush_timeout
    }
}

/// Memory failures that fail a work item (syncs only log).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// A sync interval below the floor.
    #[error("memory sync interval must be at least {MIN_MEMORY_SYNC_INTERVAL:?}, got {0:?}")]
    IntervalTooShort(Duration),
    /// `mount_path` is not a clean absolute path.
    #[error(
        "memory store mount_path is not a clean absolute path: {path:?} (memory_store_id={store_id})"
    )]
    BadMountPath {
        /// The store.
        store_id: String,
        /// The path.
        path: String,
    },
    /// The session has more memory stores than [`MAX_MEMORY_STORES_PER_SESSION`].
    #[error(
        "the session has {count} memory stores attached; at most {MAX_MEMORY_STORES_PER_SESSION} are mounted, so the item was failed rather than run without some of them"
    )]
    TooManyStores {
        /// How many the session has.
        count: usize,
    },
    /// Two stores would share a folder, or one would sit inside the other's.
    #[error(
        "memory stores {first} and {second} would overlap in the sandbox ({first_root} and {second_root})"
    )]
    OverlappingMounts {
        /// One store.
        first: String,
        /// Its folder.
        first_root: String,
        /// The other store.
        second: String,
        /// Its folder.
        second_root: String,
    },
    /// Something already exists at the store's path.
    #[error(
        "something already exists at the memory store's path: {path} (memory_store_id={store_id}); it must not exist (or be an empty directory) when the session starts"
    )]
    PathExists {
        /// The store.
        store_id: String,
        /// The path.
        path: String,
    },
    /// The store's folder could not be created or written.
    #[error(
        "cannot create the memory store's folder {path} (memory_store_id={store_id}): {source}; the host must make this path writable in the sandbox (SandboxHostConfig::memory_dir mounts host directories where the backend supports it)"
    )]
    Folder {
        /// The store.
        store_id: String,
        /// The path.
        path: String,
        /// The sandbox error.
        #[source]
        source: Box<SandboxError>,
    },
    /// Listing the store failed.
    #[error("failed to download memory store memory_store_id={store_id}: {source}")]
    Download {
        /// The store.
        store_id: String,
        /// The API error.
        #[source]
        source: ApiError,
    },
    /// The executor exposes no sandbox to download into.
    #[error(
        "the session has memory stores attached but its tools expose no sandbox to mount them in"
    )]
    NoSandbox,
    /// `finish` runs once.
    #[error("finish() was already called: it is the session's last sync and runs once")]
    AlreadyFinished,
}

fn sha_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn marker_text(store_id: &str) -> String {
    format!("version {MARKER_VERSION}\n{store_id}")
}

#[derive(Debug, Clone)]
struct LocalFile {
    sha: String,
    /// Above the content limit or not UTF-8: never uploaded.
    unsendable: bool,
}

struct Scan {
    files: HashMap<String, LocalFile>,
    marker_ok: bool,
}

struct Store {
    client: MemoryStoreClient,
    mount: MemoryMount,
    baseline: HashMap<String, String>,
    refused: HashMap<String, String>,
    pending_deletes: HashMap<String, Instant>,
    sent: HashMap<String, String>,
    /// (size, mtime) → sha of the last hash of each path.
    hash_cache: HashMap<String, (u64, SystemTime, String)>,
    created_root: bool,
}

/// The memory stores of one session, materialised in its sandbox.
pub struct SessionMemory {
    sandbox: Arc<dyn Sandbox>,
    stores: Vec<Store>,
    config: MemoryConfig,
    last_sync: Instant,
    finished: bool,
}

impl std::fmt::Debug for SessionMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMemory")
            .field("mounts", &self.mounts())
            .field("config", &self.config)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl SessionMemory {
    /// Download every store of `mounts` into `sandbox` with `credential` (the item's sessions
    /// token). The first store that cannot be materialised fails the whole download (stores
    /// already downloaded are removed again).
    pub async fn download(
        sandbox: Arc<dyn Sandbox>,
        client: &Client,
        credential: &Credential,
        mounts: Vec<MemoryMount>,
        config: MemoryConfig,
    ) -> Result<Self, MemoryError> {
        let mut me = Self {
            sandbox,
            stores: Vec::new(),
            config,
            last_sync: Instant::now(),
            finished: false,
        };
        for mount in mounts {
            let store = Store {
                client: client
                    .memory_store(mount.store_id.clone(), credential.clone())
                    .with_helper(Some(Helper::Worker)),
                mount,
                baseline: HashMap::new(),
                refused: HashMap::new(),
                pending_deletes: HashMap::new(),
                sent: HashMap::new(),
                hash_cache: HashMap::new(),
                created_root: false,
            };
            me.stores.push(store);
            let idx = me.stores.len() - 1;
            if let Err(e) = me.open_store(idx).await {
                me.dispose().await;
                return Err(e);
            }
            let s = &me.stores[idx];
            tracing::info!(memory_store_id = %s.mount.store_id, root = %s.mount.root, memories = s.baseline.len(), "downloaded memory store");
        }
        me.last_sync = Instant::now();
        Ok(me)
    }

    /// Every store's folder (sandbox paths): allowed roots of the file tools.
    pub fn roots(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.mount.root.clone()).collect()
    }

    /// Folders of the stores attached read-only.
    pub fn read_only_roots(&self) -> Vec<String> {
        self.stores
            .iter()
            .filter(|s| s.mount.read_only)
            .map(|s| s.mount.root.clone())
            .collect()
    }

    /// The attached stores.
    pub fn mounts(&self) -> Vec<MemoryMount> {
        self.stores.iter().map(|s| s.mount.clone()).collect()
    }

    /// The settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Sync when the interval has elapsed since the last sync (the runner calls this after each
    /// tool call). Never fails.
    pub async fn sync_if_due(&mut self) {
        let Some(interval) = self.config.sync_interval else {
            return;
        };
        if self.last_sync.elapsed() < interval {
            return;
        }
        self.sync_now().await;
    }

    /// Sync every store now. Never fails: errors are logged.
    pub async fn sync_now(&mut self) {
        self.sync_all(false).await;
    }

    /// The session's last sync, once, at a clean end: server deletes skip the waiting window.
    pub async fn finish(&mut self) -> Result<(), MemoryError> {
        if self.finished {
            return Err(MemoryError::AlreadyFinished);
        }
        self.finished = true;
        self.sync_all(true).await;
        Ok(())
    }

    async fn sync_all(&mut self, final_sync: bool) {
        for i in 0..self.stores.len() {
            if let Err(e) = self.sync_store(i, final_sync).await {
                tracing::warn!(memory_store_id = %self.stores[i].mount.store_id, error = %e, "memory sync failed");
            }
        }
        self.last_sync = Instant::now();
    }

    /// Upload new and changed files only (no deletes, no pulls): the rescue pass of a teardown.
    /// Never fails.
    pub async fn flush_writes(&mut self) {
        for i in 0..self.stores.len() {
            if let Err(e) = self.flush_store(i).await {
                tracing::warn!(memory_store_id = %self.stores[i].mount.store_id, error = %e, "memory flush failed");
            }
        }
    }

    /// Remove every store folder's contents (and the folder when the download created it). A
    /// folder whose marker is gone or foreign while it holds files is left as found.
    pub async fn dispose(&mut self) {
        let sandbox = self.sandbox.clone();
        for i in 0..self.stores.len() {
            let keep = match self.scan(i).await {
                Ok(scan) => !scan.marker_ok && !scan.files.is_empty(),
                Err(_) => false,
            };
            let store = &self.stores[i];
            if keep {
                tracing::warn!(memory_store_id = %store.mount.store_id, root = %store.mount.root, "memory folder marker is gone or foreign; leaving the folder on disk");
                continue;
            }
            let root = store.mount.root.clone();
            if store.created_root {
                if let Err(e) = sandbox.remove(&root, true).await
                    && e.kind() != SandboxErrorKind::NotFound
                {
                    tracing::warn!(root = %root, error = %e, "failed to remove the memory store folder");
                }
            } else if let Ok(entries) = sandbox.read_dir(&root).await {
                for e in entries {
                    let p = format!("{root}/{}", e.name);
                    if let Err(err) = sandbox.remove(&p, true).await {
                        tracing::warn!(path = %p, error = %err, "failed to empty the memory store folder");
                    }
                }
            }
        }
        self.stores.clear();
    }

    // ------------------------------------------------------------------ store operations

    async fn open_store(&mut self, i: usize) -> Result<(), MemoryError> {
        let sandbox = self.sandbox.clone();
        let (store_id, root) = {
            let s = &self.stores[i];
            (s.mount.store_id.clone(), s.mount.root.clone())
        };
        let folder = |source| MemoryError::Folder {
            store_id: store_id.clone(),
            path: root.clone(),
            source: Box::new(source),
        };
        match sandbox.lstat(&root).await {
            Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                self.stores[i].created_root = true;
            }
            Err(e) => return Err(folder(e)),
            Ok(st) if st.kind == FileKind::Dir => {
                let entries = sandbox.read_dir(&root).await.map_err(folder)?;
                if !entries.is_empty() {
                    return Err(MemoryError::PathExists {
                        store_id,
                        path: root,
                    });
                }
            }
            Ok(_) => {
                return Err(MemoryError::PathExists {
                    store_id,
                    path: root,
                });
            }
        }
        sandbox.create_dir_all(&root).await.map_err(folder)?;
        self.stamp_and_pull(i).await
    }

    /// Write the marker, then pull every memory (full view); pushes nothing.
    async fn stamp_and_pull(&mut self, i: usize) -> Result<(), MemoryError> {
        let sandbox = self.sandbox.clone();
        let store = &mut self.stores[i];
        store.baseline.clear();
        store.sent.clear();
        store.pending_deletes.clear();
        let root = store.mount.root.clone();
        let store_id = store.mount.store_id.clone();
        sandbox
            .write_file(
                &format!("{root}/{MARKER_PATH}"),
                Bytes::from(marker_text(&store_id)),
            )
            .await
            .map_err(|source| MemoryError::Folder {
                store_id: store_id.clone(),
                path: root.clone(),
                source: Box::new(source),
            })?;
        // Page by page: one page of contents is held at a time, whatever the store's size.
        let mut pages = store.client.pages(MemoryView::Full, MAX_MEMORIES_PER_STORE);
        loop {
            let page = pages
                .next_page()
                .await
                .map_err(|source| MemoryError::Download {
                    store_id: store_id.clone(),
                    source,
                })?;
            let Some(page) = page else {
                return Ok(());
            };
            for m in page {
                let Some(rel) = listed_rel(&m, &store_id) else {
                    continue;
                };
                let content = m.content.as_deref().unwrap_or_default();
                if write_local(sandbox.as_ref(), &root, &rel, content, &store_id).await {
                    store.baseline.insert(rel, m.content_sha256.clone());
                }
            }
        }
    }

    async fn scan(&mut self, i: usize) -> Result<Scan, SandboxError> {
        let sandbox = self.sandbox.clone();
        let store = &mut self.stores[i];
        let root = store.mount.root.clone();
        let mut files = HashMap::new();
        let mut marker: Option<String> = None;
        let mut stack = vec![(String::new(), 0usize)];
        let mut seen_cache = HashMap::new();
        let mut dirs_visited = 0usize;
        while let Some((dir, depth)) = stack.pop() {
            dirs_visited += 1;
            if dirs_visited > MAX_SCAN_DIRS {
                return Err(SandboxError::new(
                    SandboxErrorKind::TooLarge,
                    format!(
                        "the memory folder {root} holds more than {MAX_SCAN_DIRS} directories; it is not synced"
                    ),
                ));
            }
            let abs = if dir.is_empty() {
                root.clone()
            } else {
                format!("{root}/{dir}")
            };
            let entries = match sandbox.read_dir(&abs).await {
                Ok(e) => e,
                Err(e) if dir.is_empty() && e.kind() == SandboxErrorKind::NotFound => {
                    return Ok(Scan {
                        files,
                        marker_ok: false,
                    });
                }
                Err(e) => return Err(e),
            };
            for e in entries {
                let rel = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                match e.stat.kind {
                    FileKind::Dir if depth + 1 < MAX_PATH_SEGMENTS => stack.push((rel, depth + 1)),
                    FileKind::File => {
                        if files.len() >= MAX_MEMORIES_PER_STORE {
                            continue;
                        }
                        let path = format!("{root}/{rel}");
                        let cached = match (e.stat.modified, store.hash_cache.get(&rel)) {
                            (Some(m), Some((size, mtime, sha)))
                                if *size == e.stat.size && *mtime == m =>
                            {
                                Some(sha.clone())
                            }
                            _ => None,
                        };
                        let oversize = e.stat.size > MAX_MEMORY_CONTENT_BYTES as u64;
                        let (sha, unsendable) = if let Some(sha) = cached {
                            (sha, oversize)
                        } else if oversize {
                            // Never uploaded, so never hashed: its size and time stand for it
                            // (a change still shows), and no scan reads more than the largest
                            // memory per file.
                            let when = e
                                .stat
                                .modified
                                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_nanos());
                            (format!("unhashed:{}:{when}", e.stat.size), true)
                        } else {
                            match sandbox.read_file(&path, Some(MAX_HASHED_FILE_BYTES)).await {
                                Ok(data) => {
                                    let sha = sha_hex(&data);
                                    let bad = oversize || std::str::from_utf8(&data).is_err();
                                    (sha, bad)
                                }
                                Err(err) if err.kind() == SandboxErrorKind::NotFound => continue,
                                Err(err) => return Err(err),
                            }
                        };
                        if let Some(m) = e.stat.modified {
                            seen_cache.insert(rel.clone(), (e.stat.size, m, sha.clone()));
                        }
                        if rel == MARKER_PATH {
                            marker = Some(sha);
                        } else {
                            files.insert(rel, LocalFile { sha, unsendable });
                        }
                    }
                    // Symlinks and special files are never synced.
                    _ => {}
                }
            }
        }
        store.hash_cache = seen_cache;
        let marker_ok = marker.as_deref()
            == Some(sha_hex(marker_text(&store.mount.store_id).as_bytes()).as_str());
        Ok(Scan { files, marker_ok })
    }

    async fn remote_map(&mut self, i: usize) -> Result<HashMap<String, Memory>, ApiError> {
        let store = &self.stores[i];
        let list = store
            .client
            .list_all(MemoryView::Basic, MAX_MEMORIES_PER_STORE)
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|m| listed_rel(&m, &store.mount.store_id).map(|r| (r, m)))
            .collect())
    }

    /// Uploads whose response never arrived: a listed memory holding exactly the sent sha is
    /// that upload, saved after all.
    fn settle_sent(&mut self, i: usize, remote: &HashMap<String, Memory>) {
        let store = &mut self.stores[i];
        for (rel, sha) in store.sent.drain() {
            if remote.get(&rel).is_some_and(|m| m.content_sha256 == sha) {
                store.baseline.insert(rel, sha);
            }
        }
    }
}

fn listed_rel(m: &Memory, store_id: &str) -> Option<String> {
    let rel = rel_of(&m.path);
    match rel.as_deref() {
        None => {
            tracing::warn!(path = %m.path, memory_store_id = %store_id, "memory path cannot be a file path here; skipping");
            None
        }
        Some(MARKER_PATH) => {
            tracing::warn!(path = %m.path, memory_store_id = %store_id, "the server listed the reserved marker path; skipping");
            None
        }
        Some(_) => rel,
    }
}

/// Write one memory's content under `root`, refusing to write through a symlink. `false` (and a
/// warning) on failure.
async fn write_local(
    sandbox: &dyn Sandbox,
    root: &str,
    rel: &str,
    content: &str,
    store_id: &str,
) -> bool {
    let mut prefix = root.to_owned();
    for part in rel.split('/') {
        prefix.push('/');
        prefix.push_str(part);
        match sandbox.lstat(&prefix).await {
            Ok(st) if st.kind == FileKind::Symlink => {
                tracing::warn!(path = %rel, memory_store_id = %store_id, "refusing to write a memory through a symlink");
                return false;
            }
            _ => {}
        }
    }
    match sandbox
        .write_file(&prefix, Bytes::copy_from_slice(content.as_bytes()))
        .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %rel, memory_store_id = %store_id, error = %e, "failed to write memory");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Session;
    use crate::protocol::{SessionResource, SessionStatus};

    fn session_with(resources: Vec<SessionResource>) -> Session {
        Session {
            id: "sesn_1".into(),
            kind: "session".into(),
            status: SessionStatus::Idle,
            environment_id: None,
            agent: Default::default(),
            resources,
            metadata: Default::default(),
            extra: Default::default(),
        }
    }

    fn store(
        id: &str,
        mount: Option<&str>,
        name: Option<&str>,
        access: Option<&str>,
    ) -> SessionResource {
        SessionResource {
            kind: "memory_store".into(),
            memory_store_id: Some(id.into()),
            access: access.map(Into::into),
            mount_path: mount.map(Into::into),
            name: name.map(Into::into),
            extra: Default::default(),
        }
    }

    #[test]
    fn mounts_use_mount_path_or_the_workdir_fallback() {
        let s = session_with(vec![
            store(
                "memstore_a",
                Some("/mnt/memory/prefs/"),
                None,
                Some("read_only"),
            ),
            store("memstore_b", None, Some("notes"), None),
            store("memstore_c", None, Some("../x"), None),
        ]);
        let m = memory_mounts(&s, "/workspace").unwrap();
        assert_eq!(m[0].root, "/mnt/memory/prefs");
        assert!(m[0].read_only);
        assert_eq!(m[1].root, "/workspace/memory/notes");
        assert!(!m[1].read_only);
        assert_eq!(m[2].root, "/workspace/memory/memstore_c");
        for bad in ["relative/x", "/mnt/../etc", "/"] {
            let s = session_with(vec![store("memstore_a", Some(bad), None, None)]);
            assert!(
                matches!(
                    memory_mounts(&s, "/workspace"),
                    Err(MemoryError::BadMountPath { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn interval_floor_and_paths() {
        assert!(MemoryConfig::new(Some(Duration::from_secs(4))).is_err());
        assert!(MemoryConfig::new(Some(Duration::from_secs(5))).is_ok());
        assert!(!MemoryConfig::new(None).unwrap().enabled());
        assert_eq!(rel_of("/a/b.md").as_deref(), Some("a/b.md"));
        assert_eq!(rel_of("/a/../b"), None);
        assert_eq!(rel_of("/a//b"), None);
        assert_eq!(rel_of("/"), None);
        assert_eq!(sha_hex(b"").len(), 64);
    }
}
