//! [`WakingSandbox`]: the sandbox a woken session uses while its workspace is still being
//! restored (see `wake`). Every operation first waits for what it touches, then runs on the
//! sandbox underneath unchanged:
//!
//! - a path's own entry and the directories on the way to it (`stat`, `lstat`, `read_link`,
//!   reading, writing, creating directories) — a write waits too, so the restore never
//!   overwrites what a tool wrote;
//! - a directory and its direct children (`read_dir`, removing a directory without
//!   `recursive`);
//! - everything beneath a directory (`search_tree`, recursive removal);
//! - the whole workspace: `exec`, `exec_stream`, `open_interactive`, `execute`,
//!   `export_workspace`, `import_workspace`, `workspace_entries` (a command can touch anything), a path that
//!   climbs with `..` or passes through a symlink of the snapshot, and `local_workspace`, which
//!   answers `None` until the restore is complete (a save then reads the export, which waits).
//!
//! The restore's marker (see the `marker` module) is left out of listings of the workspace
//! root, and asking about it waits for the whole restore (it goes last). Paths outside the
//! workspace (other mounts) do not wait. If the restore fails, what waits
//! fails with a [`cma_sandbox::SandboxErrorKind::Io`] error naming the snapshot and the cause.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, ExecOutput, ExecRequest, ExecStream, ExecuteRequest,
    FileReader, FileStat, FoundLines, InteractiveProcess, Result, Sandbox, SandboxError, SandboxId,
    SandboxStatus, TreeFound, TreeSearch, WorkspaceEntry,
};

use super::marker::RESTORE_MARKER;
use super::wake::{Background, Need, PathNeed, WakeState};

/// A sandbox whose workspace is being restored in the background; see the module docs of
/// `gate`. Dropping it stops the restore.
pub struct WakingSandbox {
    inner: Arc<dyn Sandbox>,
    state: Arc<WakeState>,
    _background: Background,
}

impl std::fmt::Debug for WakingSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakingSandbox")
            .field("sandbox", self.inner.id())
            .field("restored", &self.state.complete())
            .finish()
    }
}

/// Where a sandbox path falls.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// Not in the workspace.
    Outside,
    /// Cannot tell without the whole workspace (`..`, or an ancestor of the workspace).
    Unsure,
    /// This path relative to the workspace (empty: the workspace itself).
    Rel(Vec<u8>),
}

fn resolve(workdir: &str, path: &str) -> Resolved {
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{workdir}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => return Resolved::Unsure,
            c => parts.push(c),
        }
    }
    let wd: Vec<&str> = workdir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.len() < wd.len() || parts[..wd.len()] != wd[..] {
        return if wd.starts_with(&parts) {
            Resolved::Unsure
        } else {
            Resolved::Outside
        };
    }
    Resolved::Rel(parts[wd.len()..].join("/").into_bytes())
}

impl WakingSandbox {
    pub(super) fn new(
        inner: Arc<dyn Sandbox>,
        state: Arc<WakeState>,
        background: Background,
    ) -> Self {
        Self {
            inner,
            state,
            _background: background,
        }
    }

    /// The sandbox underneath.
    pub fn inner(&self) -> &Arc<dyn Sandbox> {
        &self.inner
    }

    /// Whether the whole workspace is restored.
    pub fn restored(&self) -> bool {
        self.state.complete()
    }

    /// Wait until the whole workspace is restored; the restore's error if it failed.
    pub async fn finished(&self) -> std::result::Result<(), SandboxError> {
        self.state.wait_all().await
    }

    async fn path(&self, path: &str, what: PathNeed) -> Result<()> {
        if self.state.complete() {
            return Ok(());
        }
        match resolve(self.inner.workdir(), path) {
            Resolved::Outside => Ok(()),
            Resolved::Unsure => self.state.wait_all().await,
            // The marker goes last: asking about it waits for the end.
            Resolved::Rel(rel) if rel == RESTORE_MARKER.as_bytes() => self.state.wait_all().await,
            Resolved::Rel(rel) => self.state.wait(self.state.need_path(&rel, what)).await,
        }
    }

    /// Listings of the workspace root while the restore runs leave the marker out.
    fn hide_marker(&self, path: &str, entries: &mut Vec<DirEntry>) {
        if !self.state.complete()
            && resolve(self.inner.workdir(), path) == Resolved::Rel(Vec::new())
        {
            entries.retain(|e| e.name != RESTORE_MARKER);
        }
    }

    async fn paths(&self, paths: &[String], what: PathNeed) -> Result<()> {
        for p in paths {
            self.path(p, what).await?;
        }
        Ok(())
    }

    async fn all(&self) -> Result<()> {
        self.state.wait(Need::All).await
    }
}

#[async_trait]
impl Sandbox for WakingSandbox {
    fn id(&self) -> &SandboxId {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn workdir(&self) -> &str {
        self.inner.workdir()
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        self.path(path, PathNeed::Follow).await?;
        self.inner.stat(path).await
    }

    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.path(path, PathNeed::Itself).await?;
        self.inner.lstat(path).await
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        self.path(path, PathNeed::Itself).await?;
        self.inner.read_link(path).await
    }

    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        self.path(path, PathNeed::Follow).await?;
        self.inner.read_file(path, max_bytes).await
    }

    async fn read_files(
        &self,
        paths: &[String],
        max_bytes_each: u64,
    ) -> Result<Vec<Result<Bytes>>> {
        self.paths(paths, PathNeed::Follow).await?;
        self.inner.read_files(paths, max_bytes_each).await
    }

    async fn find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max_bytes_each: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        self.paths(paths, PathNeed::Follow).await?;
        self.inner
            .find_lines(paths, needle, max_bytes_each, max_line)
            .await
    }

    async fn search_tree(&self, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
        self.path(root, PathNeed::Subtree).await?;
        self.inner.search_tree(root, needle, opts).await
    }

    async fn open_read(&self, path: &str) -> Result<FileReader> {
        self.path(path, PathNeed::Follow).await?;
        self.inner.open_read(path).await
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.path(path, PathNeed::Follow).await?;
        self.inner.write_file(path, data).await
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.path(path, PathNeed::Follow).await?;
        self.inner.create_dir_all(path).await
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.path(path, PathNeed::Children).await?;
        let mut entries = self.inner.read_dir(path).await?;
        self.hide_marker(path, &mut entries);
        Ok(entries)
    }

    async fn read_dirs(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.paths(paths, PathNeed::Children).await?;
        let mut out = self.inner.read_dirs(paths).await?;
        for (p, r) in paths.iter().zip(out.iter_mut()) {
            if let Ok(entries) = r {
                self.hide_marker(p, entries);
            }
        }
        Ok(out)
    }

    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.paths(paths, PathNeed::Children).await?;
        let mut out = self.inner.read_dirs_unsorted(paths).await?;
        for (p, r) in paths.iter().zip(out.iter_mut()) {
            if let Ok(entries) = r {
                self.hide_marker(p, entries);
            }
        }
        Ok(out)
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let what = if recursive {
            PathNeed::Subtree
        } else {
            PathNeed::Children
        };
        self.path(path, what).await?;
        self.inner.remove(path, recursive).await
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        self.all().await?;
        self.inner.exec(req).await
    }

    async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream> {
        self.all().await?;
        self.inner.exec_stream(req).await
    }

    async fn open_interactive(&self, req: ExecRequest) -> Result<InteractiveProcess> {
        self.all().await?;
        self.inner.open_interactive(req).await
    }

    async fn execute(&self, req: ExecuteRequest) -> Result<ExecOutput> {
        self.all().await?;
        self.inner.execute(req).await
    }

    async fn export_workspace(&self) -> Result<ByteStream> {
        self.all().await?;
        self.inner.export_workspace().await
    }

    async fn import_workspace(&self, tar: ByteStream) -> Result<()> {
        self.all().await?;
        self.inner.import_workspace(tar).await
    }

    async fn workspace_entries(&self) -> Result<Vec<WorkspaceEntry>> {
        self.all().await?;
        self.inner.workspace_entries().await
    }

    fn local_workspace(&self) -> Option<std::fs::File> {
        if self.state.complete() {
            self.inner.local_workspace()
        } else {
            None
        }
    }

    async fn status(&self) -> Result<SandboxStatus> {
        self.inner.status().await
    }

    async fn stop(&self) -> Result<()> {
        self.inner.stop().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_map_to_workspace_paths() {
        let r = |p: &str| resolve("/workspace", p);
        assert_eq!(r("/workspace/a/b"), Resolved::Rel(b"a/b".to_vec()));
        assert_eq!(r("a//./b/"), Resolved::Rel(b"a/b".to_vec()));
        assert_eq!(r("/workspace"), Resolved::Rel(Vec::new()));
        assert_eq!(r("."), Resolved::Rel(Vec::new()));
        assert_eq!(r("/mnt/memory/x"), Resolved::Outside);
        assert_eq!(r("/workspacex/y"), Resolved::Outside);
        assert_eq!(r("/"), Resolved::Unsure);
        assert_eq!(r("a/../b"), Resolved::Unsure);
    }
}
