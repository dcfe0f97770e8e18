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

use std::collections::{BTreeSet, HashMap};
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
use crate::protocol::Session;

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

/// Where one attached store lives in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryMount {
    /// `memstore_…`.
    pub store_id: String,
    /// Sandbox path of the store's folder.
    pub root: String,
    /// Attached `read_only`: pulled, never pushed, refused by `write`/`edit`.
    pub read_only: bool,
}

fn clean_absolute(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|p| p == "..") && !path.contains('\0')
}

fn single_component(name: &str) -> Option<&str> {
    let n = name.trim();
    (!n.is_empty()
        && n != "."
        && n != ".."
        && !n.contains('/')
        && !n.contains('\\')
        && !n.contains('\0'))
    .then_some(n)
}

/// The folders of every memory store attached to `session`, for a sandbox whose workdir is
/// `workdir`.
pub fn memory_mounts(session: &Session, workdir: &str) -> Result<Vec<MemoryMount>, MemoryError> {
    let mut out = Vec::new();
    for r in session
        .resources
        .iter()
        .filter(|r| r.kind == "memory_store")
    {
        let store_id = r.memory_store_id.clone().unwrap_or_default();
        let root = match r.mount_path.as_deref().filter(|p| !p.is_empty()) {
            Some(p) if clean_absolute(p) => {
                let t = p.trim_end_matches('/');
                if t.is_empty() {
                    "/".to_owned()
                } else {
                    t.to_owned()
                }
            }
            Some(p) => {
                return Err(MemoryError::BadMountPath {
                    store_id,
                    path: p.to_owned(),
                });
            }
            None => {
                let name = r
                    .name
                    .as_deref()
                    .and_then(single_component)
                    .or_else(|| single_component(&store_id))
                    .unwrap_or("store");
                format!("{}/memory/{name}", workdir.trim_end_matches('/'))
            }
        };
        if root == "/" {
            return Err(MemoryError::BadMountPath {
                store_id,
                path: root,
            });
        }
        out.push(MemoryMount {
            store_id,
            root,
            read_only: r.access.as_deref() == Some("read_only"),
        });
    }
    Ok(out)
}

/// Whether `session` has memory stores attached.
pub fn has_memory_stores(session: &Session) -> bool {
    session.resources.iter().any(|r| r.kind == "memory_store")
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

/// A memory path (`/a/b.md`) as a clean relative path, or `None` when it cannot be one.
fn rel_of(path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts.len() > MAX_PATH_SEGMENTS
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return None;
    }
    Some(rel.to_owned())
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

struct DeletePass {
    mode: MemoryDeletions,
    cap: usize,
    waive_window: bool,
    attempted: usize,
    capped: usize,
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
        let all = store
            .client
            .list_all(MemoryView::Full, MAX_MEMORIES_PER_STORE)
            .await
            .map_err(|source| MemoryError::Download {
                store_id: store_id.clone(),
                source,
            })?;
        for m in all {
            let Some(rel) = listed_rel(&m, &store_id) else {
                continue;
            };
            let content = m.content.clone().unwrap_or_default();
            if write_local(sandbox.as_ref(), &root, &rel, &content, &store_id).await {
                store.baseline.insert(rel, m.content_sha256.clone());
            }
        }
        Ok(())
    }

    async fn scan(&mut self, i: usize) -> Result<Scan, SandboxError> {
        let sandbox = self.sandbox.clone();
        let store = &mut self.stores[i];
        let root = store.mount.root.clone();
        let mut files = HashMap::new();
        let mut marker: Option<String> = None;
        let mut stack = vec![(String::new(), 0usize)];
        let mut seen_cache = HashMap::new();
        while let Some((dir, depth)) = stack.pop() {
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
                        } else if e.stat.size > MAX_HASHED_FILE_BYTES {
                            (format!("unhashed:{}", e.stat.size), true)
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

    async fn recover(&mut self, i: usize, reason: &str) -> Result<(), String> {
        let s = &self.stores[i];
        tracing::warn!(memory_store_id = %s.mount.store_id, root = %s.mount.root, "{reason}; downloading the memory store folder again instead of syncing");
        let root = s.mount.root.clone();
        self.sandbox
            .create_dir_all(&root)
            .await
            .map_err(|e| e.to_string())?;
        self.stamp_and_pull(i).await.map_err(|e| e.to_string())
    }

    async fn sync_store(&mut self, i: usize, final_sync: bool) -> Result<(), String> {
        let scan = self.scan(i).await.map_err(|e| e.to_string())?;
        if !scan.marker_ok {
            if !scan.files.is_empty() {
                let s = &self.stores[i];
                tracing::warn!(memory_store_id = %s.mount.store_id, root = %s.mount.root, "the memory folder's marker is gone or foreign; leaving the folder as found and not syncing");
                return Ok(());
            }
            return self.recover(i, "the folder or its marker is gone").await;
        }
        let remote = self.remote_map(i).await.map_err(|e| e.to_string())?;
        self.settle_sent(i, &remote);
        if scan.files.is_empty() && self.stores[i].baseline.len() > 1 {
            return self.recover(i, "every memory file is gone at once").await;
        }
        let base_len = self.stores[i].baseline.len();
        let mut deletes = DeletePass {
            mode: self.config.deletions,
            cap: (base_len / 4).clamp(DELETE_CAP_FLOOR, DELETE_CAP_CEILING),
            waive_window: final_sync,
            attempted: 0,
            capped: 0,
        };
        let paths: BTreeSet<String> = remote
            .keys()
            .chain(scan.files.keys())
            .chain(self.stores[i].baseline.keys())
            .cloned()
            .collect();
        let mut pulls: Vec<(String, Memory)> = Vec::new();
        let mut baseline = HashMap::new();
        for rel in paths {
            let remote_item = remote.get(&rel);
            let local = scan.files.get(&rel);
            let base = self.stores[i].baseline.get(&rel).cloned();
            let sha = if local.is_none()
                && base.is_some()
                && remote_item.is_some_and(|m| Some(&m.content_sha256) == base.as_ref())
                && !self.stores[i].mount.read_only
            {
                let (Some(m), Some(b)) = (remote_item, base) else {
                    continue;
                };
                self.corroborated_delete(i, &rel, m, b, &mut deletes).await
            } else {
                self.sync_path(i, &rel, remote_item, local, &mut pulls)
                    .await
            };
            if let Some(sha) = sha {
                baseline.insert(rel, sha);
            }
        }
        self.stores[i].baseline = baseline;
        self.pull_all(i, pulls).await;
        if deletes.capped > 0 {
            tracing::warn!(memory_store_id = %self.stores[i].mount.store_id, attempted = deletes.attempted, held = deletes.capped, "memory delete cap reached; the rest wait for later syncs");
        }
        Ok(())
    }

    async fn sync_path(
        &mut self,
        i: usize,
        rel: &str,
        remote: Option<&Memory>,
        local: Option<&LocalFile>,
        pulls: &mut Vec<(String, Memory)>,
    ) -> Option<String> {
        let read_only = self.stores[i].mount.read_only;
        let base = self.stores[i].baseline.get(rel).cloned();
        let mut local_sha = local.map(|l| l.sha.clone());
        let unsendable = local.is_some_and(|l| l.unsendable);
        if local_sha.is_some() {
            self.stores[i].pending_deletes.remove(rel);
        }
        let Some(remote) = remote else {
            let local = local_sha.clone()?;
            if let Some(b) = &base {
                if local == *b {
                    match self.remove_local(i, rel, b).await {
                        None => return None,
                        Some(fresh) if fresh == *b => return Some(fresh),
                        Some(fresh) => local_sha = Some(fresh),
                    }
                }
                let id = &self.stores[i].mount.store_id;
                if read_only {
                    tracing::warn!(path = %rel, memory_store_id = %id, "memory deleted remotely but edited locally; a read-only store keeps the file unsynced");
                } else {
                    tracing::info!(path = %rel, memory_store_id = %id, "memory deleted remotely but edited locally; re-creating it from the file");
                }
            }
            let local = local_sha?;
            if read_only || self.stores[i].refused.get(rel) == Some(&local) {
                return None;
            }
            return self.upload(i, rel, &local, unsendable, None).await;
        };
        let remote_sha = remote.content_sha256.clone();
        let remote_changed = Some(&remote_sha) != base.as_ref();
        let locally_edited = local_sha
            .as_ref()
            .is_some_and(|l| Some(l) != base.as_ref() && *l != remote_sha);
        let local_changed = !read_only && locally_edited;
        if local_sha.is_none() && base.is_some() {
            if remote_changed {
                tracing::warn!(path = %rel, memory_store_id = %self.stores[i].mount.store_id, "memory deleted locally but changed remotely; restoring the remote version");
                self.stores[i].pending_deletes.remove(rel);
                pulls.push((rel.to_owned(), remote.clone()));
            }
            return base;
        }
        if remote_changed {
            if local_sha.as_ref() == Some(&remote_sha) {
                return Some(remote_sha);
            }
            if locally_edited {
                tracing::warn!(path = %rel, memory_store_id = %self.stores[i].mount.store_id, "memory changed both locally and remotely; keeping the remote version");
            }
            pulls.push((rel.to_owned(), remote.clone()));
            return base;
        }
        if local_changed {
            let local = local_sha.unwrap_or_default();
            if self.stores[i].refused.get(rel) == Some(&local) {
                return Some(remote_sha);
            }
            return self
                .upload(i, rel, &local, unsendable, Some(remote))
                .await
                .or(Some(remote_sha));
        }
        Some(remote_sha)
    }

    /// Remove a file whose memory the server deleted, if it still holds `expect`. `None` when
    /// the file is gone, `Some(expect)` when it must stay, `Some(fresh)` when it was edited.
    async fn remove_local(&mut self, i: usize, rel: &str, expect: &str) -> Option<String> {
        let path = format!("{}/{rel}", self.stores[i].mount.root);
        let fresh = match self
            .sandbox
            .read_file(&path, Some(MAX_HASHED_FILE_BYTES))
            .await
        {
            Ok(d) => sha_hex(&d),
            Err(e) if e.kind() == SandboxErrorKind::NotFound => return None,
            Err(_) => return Some(expect.to_owned()),
        };
        if fresh != expect {
            return Some(fresh);
        }
        match self.sandbox.remove(&path, false).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(path = %rel, error = %e, "failed to remove a memory deleted remotely");
                Some(expect.to_owned())
            }
        }
    }

    async fn pull_all(&mut self, i: usize, pulls: Vec<(String, Memory)>) {
        let sandbox = self.sandbox.clone();
        for (rel, listed) in pulls {
            let store = &mut self.stores[i];
            let item = match store.client.retrieve(&listed.id, MemoryView::Full).await {
                Ok(item) => item,
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => {
                    tracing::warn!(path = %rel, memory_store_id = %store.mount.store_id, error = %e, "failed to fetch memory content");
                    continue;
                }
            };
            let content = item.content.clone().unwrap_or_default();
            if write_local(
                sandbox.as_ref(),
                &store.mount.root,
                &rel,
                &content,
                &store.mount.store_id,
            )
            .await
            {
                store.baseline.insert(rel, item.content_sha256);
            }
        }
    }

    /// Push one local file; `None` keeps the old baseline so a later pass retries.
    async fn upload(
        &mut self,
        i: usize,
        rel: &str,
        local_sha: &str,
        unsendable: bool,
        existing: Option<&Memory>,
    ) -> Option<String> {
        let store = &mut self.stores[i];
        let id = store.mount.store_id.clone();
        if unsendable {
            if store
                .refused
                .insert(rel.to_owned(), local_sha.to_owned())
                .as_deref()
                != Some(local_sha)
            {
                tracing::warn!(path = %rel, memory_store_id = %id, "memory file is over 100 kB or not UTF-8; it stays unsynced until it changes");
            }
            return None;
        }
        let path = format!("{}/{rel}", store.mount.root);
        let data = match self
            .sandbox
            .read_file(&path, Some(MAX_MEMORY_CONTENT_BYTES as u64))
            .await
        {
            Ok(d) => d,
            Err(e) if e.kind() == SandboxErrorKind::NotFound => return None,
            Err(e) if e.kind() == SandboxErrorKind::TooLarge => {
                store.refused.insert(rel.to_owned(), local_sha.to_owned());
                tracing::warn!(path = %rel, memory_store_id = %id, "memory file is over 100 kB; it stays unsynced until it changes");
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %rel, memory_store_id = %id, error = %e, "failed to read memory file");
                return None;
            }
        };
        let Ok(content) = std::str::from_utf8(&data) else {
            store.refused.insert(rel.to_owned(), local_sha.to_owned());
            tracing::warn!(path = %rel, memory_store_id = %id, "memory file is not UTF-8; it stays unsynced until it changes");
            return None;
        };
        store.sent.insert(rel.to_owned(), sha_hex(&data));
        let wire_path = format!("/{rel}");
        let mut existing = existing.cloned();
        loop {
            let result = match &existing {
                None => store.client.create(&wire_path, content).await,
                Some(m) => {
                    store
                        .client
                        .update(&m.id, content, Some(&m.content_sha256))
                        .await
                }
            };
            match result {
                Ok(item) => {
                    store.refused.remove(rel);
                    store.sent.remove(rel);
                    return Some(item.content_sha256);
                }
                Err(e) => {
                    let status = e.status();
                    if existing.is_some() && status == Some(404) {
                        // Deleted remotely since the listing: this file is now the only copy.
                        existing = None;
                        continue;
                    }
                    if existing.is_some() && status == Some(409) {
                        tracing::warn!(path = %rel, memory_store_id = %id, "memory changed both locally and remotely; the upload was refused and the local edit loses");
                    } else if matches!(status, Some(400 | 413)) {
                        store.refused.insert(rel.to_owned(), local_sha.to_owned());
                        tracing::warn!(path = %rel, memory_store_id = %id, error = %e, "the server rejected this memory file; it stays unsynced until it changes");
                    } else {
                        tracing::warn!(path = %rel, memory_store_id = %id, error = %e, "failed to upload memory");
                    }
                    return None;
                }
            }
        }
    }

    async fn corroborated_delete(
        &mut self,
        i: usize,
        rel: &str,
        remote: &Memory,
        base: String,
        pass: &mut DeletePass,
    ) -> Option<String> {
        if pass.mode == MemoryDeletions::Disabled {
            return Some(base);
        }
        let first = *self.stores[i]
            .pending_deletes
            .entry(rel.to_owned())
            .or_insert_with(Instant::now);
        if !pass.waive_window && first.elapsed() < DELETE_CORROBORATION {
            return Some(base);
        }
        let root = self.stores[i].mount.root.clone();
        let marker_ok = match self
            .sandbox
            .read_file(&format!("{root}/{MARKER_PATH}"), Some(4096))
            .await
        {
            Ok(d) => d == marker_text(&self.stores[i].mount.store_id).as_bytes(),
            Err(_) => false,
        };
        if !marker_ok {
            return Some(base);
        }
        match self.sandbox.lstat(&format!("{root}/{rel}")).await {
            Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
            Ok(_) => {
                self.stores[i].pending_deletes.remove(rel);
                return Some(base);
            }
            Err(_) => return Some(base),
        }
        if pass.attempted >= pass.cap {
            pass.capped += 1;
            return Some(base);
        }
        pass.attempted += 1;
        let store = &mut self.stores[i];
        if pass.mode == MemoryDeletions::LogOnly {
            tracing::info!(path = %rel, memory_store_id = %store.mount.store_id, "log-only: sync would delete this memory on the server");
            return Some(base);
        }
        match store.client.delete(&remote.id, Some(&base)).await {
            Ok(_) => {
                tracing::info!(path = %rel, memory_store_id = %store.mount.store_id, "propagated local deletion");
                store.pending_deletes.remove(rel);
                None
            }
            Err(e) if e.status() == Some(404) => {
                store.pending_deletes.remove(rel);
                None
            }
            Err(e) => {
                if matches!(e.status(), Some(409 | 412)) {
                    tracing::warn!(path = %rel, memory_store_id = %store.mount.store_id, "memory deleted locally but changed remotely; keeping the remote version");
                } else {
                    tracing::warn!(path = %rel, memory_store_id = %store.mount.store_id, error = %e, "failed to delete memory");
                }
                Some(base)
            }
        }
    }

    async fn flush_store(&mut self, i: usize) -> Result<(), String> {
        if self.stores[i].mount.read_only {
            return Ok(());
        }
        let scan = self.scan(i).await.map_err(|e| e.to_string())?;
        if !scan.marker_ok {
            let s = &self.stores[i];
            tracing::warn!(memory_store_id = %s.mount.store_id, root = %s.mount.root, "the memory folder's marker is gone or foreign; not uploading anything from it");
            return Ok(());
        }
        let store = &self.stores[i];
        let mut dirty: Vec<(String, LocalFile)> = scan
            .files
            .into_iter()
            .filter(|(rel, f)| {
                (store.baseline.get(rel) != Some(&f.sha) || store.sent.contains_key(rel))
                    && store.refused.get(rel) != Some(&f.sha)
            })
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_by(|a, b| a.0.cmp(&b.0));
        let remote = self.remote_map(i).await.map_err(|e| e.to_string())?;
        self.settle_sent(i, &remote);
        for (rel, f) in dirty {
            let base = self.stores[i].baseline.get(&rel).cloned();
            let existing = remote.get(&rel);
            if base.as_ref() == Some(&f.sha) {
                continue;
            }
            if let Some(m) = existing {
                if m.content_sha256 == f.sha {
                    self.stores[i].baseline.insert(rel, f.sha);
                    continue;
                }
                if Some(&m.content_sha256) != base.as_ref() {
                    tracing::warn!(path = %rel, memory_store_id = %self.stores[i].mount.store_id, "memory changed both locally and remotely; the flush leaves the remote version");
                    continue;
                }
            }
            if let Some(sha) = self.upload(i, &rel, &f.sha, f.unsendable, existing).await {
                self.stores[i].baseline.insert(rel, sha);
            }
        }
        Ok(())
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
