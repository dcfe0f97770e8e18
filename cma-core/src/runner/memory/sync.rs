//! The sync of one store (see the parent module for the rules): per-path reconciliation with
//! the server from the last known baseline, uploads with their preconditions, corroborated
//! deletes, pulls, and the teardown's push-only flush.

use std::collections::{BTreeSet, HashMap};

use cma_sandbox::SandboxErrorKind;
use tokio::time::Instant;

use super::{
    DELETE_CAP_CEILING, DELETE_CAP_FLOOR, DELETE_CORROBORATION, LocalFile, MARKER_PATH,
    MAX_HASHED_FILE_BYTES, MemoryDeletions, SessionMemory, marker_text, sha_hex, write_local,
};
use crate::client::{MAX_MEMORY_CONTENT_BYTES, Memory, MemoryView};

struct DeletePass {
    mode: MemoryDeletions,
    cap: usize,
    waive_window: bool,
    attempted: usize,
    capped: usize,
}

impl SessionMemory {
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

    pub(super) async fn sync_store(&mut self, i: usize, final_sync: bool) -> Result<(), String> {
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
            if content.len() > MAX_MEMORY_CONTENT_BYTES {
                tracing::warn!(path = %rel, memory_store_id = %store.mount.store_id, bytes = content.len(), "the server sent a memory above the content limit; not written");
                continue;
            }
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

    pub(super) async fn flush_store(&mut self, i: usize) -> Result<(), String> {
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
