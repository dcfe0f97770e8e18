//! The two traits every backend implements: [`SandboxBackend`] (create, resume, list, destroy)
//! and [`Sandbox`] (one live sandbox: files, commands, archives, life cycle).
//!
//! Both are dyn-safe and held as `Arc<dyn …>`. Paths are *sandbox paths*: absolute,
//! `/`-separated, in the sandbox's own namespace (the isolate backend shows its workspace as
//! `/workspace` and each [`Mount`](crate::Mount) at its `sandbox_path`); relative paths are
//! resolved against [`Sandbox::workdir`]. The sandbox enforces confinement: no path or symlink
//! reaches outside its mounts, and errors name sandbox paths, never host paths. The *policy*
//! of the official file tools (allowed roots, exact error texts, following symlinks to check them;
//! docs/protocol.md §6.1) belongs to the tools layer on top.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::error::SandboxError;
use crate::exec::{
    ExecEvent, ExecExit, ExecOutput, ExecRequest, ExecStream, ExecuteRequest, InteractiveProcess,
};
use crate::file::{
    ByteStream, DirEntry, FileReader, FileStat, FoundLines, TreeFound, TreeSearch, WorkspaceEntry,
};
use crate::spec::{Capabilities, SandboxId, SandboxInfo, SandboxSpec, SandboxStatus};

/// A kind of sandbox (isolate, Docker, Cloudflare): creates and finds sandboxes.
#[async_trait]
pub trait SandboxBackend: Send + Sync {
    /// Short backend name (`isolate`, `docker`, ...), for logs and selection rules.
    fn name(&self) -> &str;

    /// What this backend's sandboxes can do.
    fn capabilities(&self) -> Capabilities;

    /// Create and start a new sandbox.
    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>>;

    /// Reattach to an existing sandbox (running or stopped) by id, starting it again if needed.
    /// Fails with [`NotFound`](crate::SandboxErrorKind::NotFound) when it does not exist.
    async fn resume(&self, id: &SandboxId) -> Result<Arc<dyn Sandbox>>;

    /// Every sandbox this backend knows about.
    async fn list(&self) -> Result<Vec<SandboxInfo>>;

    /// Stop a sandbox and delete it with its files. Fails with
    /// [`NotFound`](crate::SandboxErrorKind::NotFound) when it does not exist.
    async fn destroy(&self, id: &SandboxId) -> Result<()>;
}

/// One sandbox. Operations on a stopped sandbox fail with
/// [`Stopped`](crate::SandboxErrorKind::Stopped).
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Its id.
    fn id(&self) -> &SandboxId;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// The working directory, an absolute sandbox path (e.g. `/workspace`). Relative paths are
    /// resolved against it.
    fn workdir(&self) -> &str;

    /// Metadata of `path`, following symlinks (within the sandbox).
    async fn stat(&self, path: &str) -> Result<FileStat>;

    /// Metadata of `path` itself, not following a final symlink.
    async fn lstat(&self, path: &str) -> Result<FileStat>;

    /// The target of the symlink at `path`, exactly as stored (may be relative).
    async fn read_link(&self, path: &str) -> Result<String>;

    /// The whole content of a regular file. With `max_bytes`, a larger file fails with
    /// [`TooLarge`](crate::SandboxErrorKind::TooLarge) carrying its size, before anything is read.
    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes>;

    /// Several small files at once: one result per path, in order, each exactly what
    /// [`read_file`](Sandbox::read_file)`(path, Some(max_bytes_each))` returns. The caller
    /// bounds memory (up to `paths.len() × max_bytes_each` bytes are held). The default reads
    /// them one by one; backends whose calls cost a round trip (Docker) serve the batch in one.
    async fn read_files(
        &self,
        paths: &[String],
        max_bytes_each: u64,
    ) -> Result<Vec<Result<Bytes>>> {
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.read_file(p, Some(max_bytes_each)).await);
        }
        Ok(out)
    }

    /// For each of several small files, the lines that contain `needle` (a search prefilter:
    /// only those lines cross from the sandbox). One result per path, in order; a file fails as
    /// [`read_file`](Sandbox::read_file)`(path, Some(max_bytes_each))` would. Lines are split
    /// at `\n`; a file whose first 512 bytes hold a NUL is reported as binary without lines;
    /// the text of a line longer than `max_line` bytes is left out (its length is given). The
    /// default reads the files with [`read_files`](Sandbox::read_files) and scans them here.
    async fn find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max_bytes_each: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        Ok(self
            .read_files(paths, max_bytes_each)
            .await?
            .into_iter()
            .map(|r| r.map(|d| FoundLines::scan(&d, needle.as_bytes(), max_line)))
            .collect())
    }

    /// Walk the directory `root` depth first (a directory's entries in the order
    /// [`read_dirs_unsorted`](Sandbox::read_dirs_unsorted) gives them, its regular files before
    /// its subdirectories; symlinks and special files are not followed or read;
    /// [`TreeSearch::skip_dirs`] not entered) and find, in each regular file, the lines holding
    /// `needle` as [`find_lines`](Sandbox::find_lines) does (binary files left out); with an
    /// empty `needle`, each text file's whole content instead. Unreadable files and directories
    /// are passed over. One call for a whole tree: the search runs where the files are.
    /// Backends that cannot do better than the caller's own walk fail with
    /// [`Unsupported`](crate::SandboxErrorKind::Unsupported) (the default).
    async fn search_tree(&self, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
        let _ = (root, needle, opts);
        Err(SandboxError::unsupported(
            "search_tree: walk with read_dirs and find_lines instead",
        ))
    }

    /// A streaming reader over a regular file (for ranged reads of big files).
    async fn open_read(&self, path: &str) -> Result<FileReader>;

    /// Create or overwrite a regular file with `data`, creating missing parent directories.
    async fn write_file(&self, path: &str, data: Bytes) -> Result<()>;

    /// Create a directory and its missing parents; succeeds when it already exists.
    async fn create_dir_all(&self, path: &str) -> Result<()>;

    /// The entries of a directory (without `.` and `..`), sorted by name.
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>>;

    /// Several directories at once: one result per path, in order, each exactly what
    /// [`read_dir`](Sandbox::read_dir) returns. The default lists them one by one; backends
    /// whose calls cost a round trip (Docker) serve the batch in one.
    async fn read_dirs(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.read_dir(p).await);
        }
        Ok(out)
    }

    /// Several directories at once like [`read_dirs`](Sandbox::read_dirs), but each listing in
    /// the order the file system returns its entries (`readdir`, which is what Python's
    /// `os.scandir` sees, so the order the official `glob` and `grep` tools walk in and keep for
    /// equal mtimes) instead of by name. The order is the file system's own (hash order on
    /// ext4, creation order on others): stable while the directory does not change, not
    /// meaningful otherwise. Backends with no file-system order of their own (in-memory ones)
    /// return name order: the default is [`read_dirs`](Sandbox::read_dirs).
    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.read_dirs(paths).await
    }

    /// Remove a file, symlink (not its target) or directory. A non-empty directory needs
    /// `recursive`, else [`DirectoryNotEmpty`](crate::SandboxErrorKind::DirectoryNotEmpty).
    async fn remove(&self, path: &str, recursive: bool) -> Result<()>;

    /// Run a command to completion and return its bounded output. A non-zero exit is an
    /// `Ok` with that exit code; a timeout is an `Err` of kind
    /// [`Timeout`](crate::SandboxErrorKind::Timeout). Backends without a shell fail with
    /// [`Unsupported`](crate::SandboxErrorKind::Unsupported).
    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput>;

    /// Run a command and stream its output. The default runs [`exec`](Sandbox::exec) and replays
    /// its output as one stdout chunk, one stderr chunk and the exit; backends with real
    /// streaming override it.
    async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream> {
        let out = self.exec(req).await?;
        let mut events = Vec::with_capacity(3);
        if !out.stdout.is_empty() {
            events.push(Ok(ExecEvent::Stdout(out.stdout)));
        }
        if !out.stderr.is_empty() {
            events.push(Ok(ExecEvent::Stderr(out.stderr)));
        }
        events.push(Ok(ExecEvent::Exit(ExecExit {
            exit_code: out.exit_code,
            truncated: out.truncated,
        })));
        Ok(Box::pin(futures::stream::iter(events)))
    }

    /// Start a long-lived process with an open stdin and merged stdout+stderr (the persistent
    /// shell of the `bash` tool). `req.timeout`, `req.stdin` and `req.max_output_bytes` do not
    /// apply: the caller bounds reads and kills the process. Backends that cannot keep a process
    /// alive between calls fail with [`Unsupported`](crate::SandboxErrorKind::Unsupported) (the
    /// default); those that can report [`Capabilities::persistent_shell`].
    async fn open_interactive(&self, req: ExecRequest) -> Result<InteractiveProcess> {
        let _ = req;
        Err(SandboxError::unsupported(
            "open_interactive: this sandbox cannot keep a process running between calls",
        ))
    }

    /// Run a JavaScript program (the `execute` tool). An uncaught exception is an `Ok` with exit
    /// code 1 and the message on stderr; running out of time or memory is an `Err`
    /// ([`Timeout`](crate::SandboxErrorKind::Timeout),
    /// [`ResourceLimit`](crate::SandboxErrorKind::ResourceLimit)). Backends without a JS engine
    /// fail with [`Unsupported`](crate::SandboxErrorKind::Unsupported).
    async fn execute(&self, req: ExecuteRequest) -> Result<ExecOutput>;

    /// The workspace (the [`workdir`](Sandbox::workdir) tree, not extra mounts) as a tar stream.
    /// Entry names are relative to the workspace.
    async fn export_workspace(&self) -> Result<ByteStream>;

    /// Unpack a tar stream (as made by [`export_workspace`](Sandbox::export_workspace)) into the
    /// workspace. Entries that would escape the workspace (absolute names, `..`, entries beneath
    /// a symlink of the archive, hard links, device nodes) fail the import with
    /// [`InvalidArchive`](crate::SandboxErrorKind::InvalidArchive) or
    /// [`OutsideSandbox`](crate::SandboxErrorKind::OutsideSandbox); nothing is ever written
    /// outside the workspace. A symlink's target is link text, restored as it is whatever it
    /// says (absolute, outside the workspace, dangling), as an export writes it; writing it
    /// never follows it.
    async fn import_workspace(&self, tar: ByteStream) -> Result<()>;

    /// Every entry of the workspace (the [`workdir`](Sandbox::workdir) tree, not extra mounts)
    /// with its metadata, in one call: depth first, each directory's entries in byte order of
    /// their names, a directory before its contents; symlinks listed, not followed; special
    /// files left out. Incremental snapshots of sandboxes whose workspace is not on this host
    /// compare it with the previous snapshot's and read only what changed. A tree deeper than
    /// the backend walks fails with [`TooLarge`](crate::SandboxErrorKind::TooLarge); backends
    /// that cannot list it in one call fail with
    /// [`Unsupported`](crate::SandboxErrorKind::Unsupported) (the default), and snapshots then
    /// read the whole [`export_workspace`](Sandbox::export_workspace).
    async fn workspace_entries(&self) -> Result<Vec<WorkspaceEntry>> {
        Err(SandboxError::unsupported(
            "workspace_entries: this sandbox cannot list its workspace in one call",
        ))
    }

    /// An open handle on the host directory that holds the workspace, for backends that keep
    /// it on this host (the isolate backend); `None` (the default) otherwise. Snapshots use it
    /// to read the workspace directly and skip files unchanged since the previous snapshot.
    /// A reader must treat the tree as untrusted: never follow a symlink out of it (open it
    /// with `cap_std::fs::Dir::from_std_file`) and expect files to change while it reads.
    fn local_workspace(&self) -> Option<std::fs::File> {
        None
    }

    /// The address this sandbox's outbound connections come from on the network it shares with
    /// its egress proxy (a Docker container's address on the sandbox network), so the proxy can
    /// tell sandboxes apart by the peer address alone. `None` (the default) for sandboxes
    /// without such a network (the isolate backend's `fetch` goes through a hook instead). It
    /// can change when a stopped sandbox is started again: read it after every resume.
    async fn network_address(&self) -> Result<Option<std::net::IpAddr>> {
        Ok(None)
    }

    /// Its current state.
    async fn status(&self) -> Result<SandboxStatus>;

    /// Stop it, keeping its files; [`SandboxBackend::resume`] brings it back. Idempotent.
    async fn stop(&self) -> Result<()>;
}

// Both traits must stay dyn-safe and shareable across tasks: this fails to compile otherwise.
const _: fn(Arc<dyn Sandbox>, Arc<dyn SandboxBackend>) = |s, b| {
    fn assert_send_sync<T: Send + Sync + ?Sized>(_: &T) {}
    assert_send_sync(&*s);
    assert_send_sync(&*b);
};
