//! The isolate backend: one confined directory per sandbox, native file operations, and
//! JavaScript `execute` in a fresh QuickJS runtime per call, inside a pre-started worker
//! process that is killed at the script's deadline. No shell, no VM: a sandbox costs a
//! directory and a file descriptor, and starts in microseconds.
//!
//! # Layout and confinement
//! [`IsolateBackend::new`] opens `root_dir` (the only use of ambient authority besides the host
//! directories of [`Mount`]s). Each sandbox is `<root>/<id>/` holding `workspace/` (shown inside
//! the sandbox as `/workspace`, its [`workdir`](crate::Sandbox::workdir)), `sandbox.meta`
//! (labels, mounts, for [`list`](crate::SandboxBackend::list) and
//! [`resume`](crate::SandboxBackend::resume)) and, while stopped, a `stopped` marker.
//! Every file operation goes through a `cap_std::fs::Dir` of the workspace or a mount, so no
//! path, `..` or symlink (absolute, relative or chained) can leave them. Symlinks must be
//! relative to be followable; absolute targets are refused at creation by the file operations
//! (a workspace import restores them as link text, as exported) and fail at use with
//! [`OutsideSandbox`](crate::SandboxErrorKind::OutsideSandbox).
//!
//! The sandbox namespace also has *virtual* directories: `/` and every ancestor of a mount
//! (`/memory` for a mount at `/memory/notes`). They can be `stat`ed and listed (their entries are
//! the next components of the mounts), so a caller that walks a path component by component
//! (as the file tools' symlink policy does) finds them; they cannot be written. Any other path
//! outside the mounts fails with `OutsideSandbox`.
//!
//! # What runs where
//! Bounded operations (metadata, single-entry changes, reads and writes up to
//! [`INLINE_IO_BYTES`]) run inline on the calling task: they are a few system calls on a local
//! directory, cheaper than a hand-off to a thread. Larger reads and writes, listings, recursive
//! removal and archives run on tokio's blocking pool. `execute` scripts run in worker
//! processes (Linux only; see [`WorkerConfig`]): each script in a fresh runtime of a worker that
//! has no file system or network of its own, a system-call filter, and address-space and CPU
//! limits; its `fs.*` calls and `fetch` are requests answered here, by the sandbox's workspace
//! and [`EgressHook`]. At the deadline, or when the `execute` future is dropped, the worker is
//! killed and reaped, whatever the script is doing (even in a built-in that never polls
//! QuickJS's interrupt handler). A few idle workers are kept started so a call does not pay
//! for a process start.
//!
//! # `execute`: the script's world
//! The code runs as a classic (non-module, sloppy-mode) script. Its completion value is the
//! result; if that is a function (`async () => { … }`), it is called with no arguments; if the
//! result is a promise, it is awaited. A result other than `undefined` is printed to stdout
//! (strings as is, other values as JSON). An uncaught exception gives exit code 1 with
//! `Uncaught <Name>: <message>` (and the stack) on stderr.
//!
//! Globals provided (all synchronous except `fetch`; paths are sandbox paths, relative ones are
//! resolved against `/workspace`; every failure throws an `Error` whose message is
//! `<sandbox path>: <reason>`):
//! - `console.log/info/debug(...args)` → stdout, `console.warn/error(...args)` → stderr; one line
//!   per call, arguments joined by spaces.
//! - `fs.readFile(path) → string` (UTF-8; invalid UTF-8 throws),
//!   `fs.writeFile(path, text)` (creates parent directories, overwrites),
//!   `fs.readdir(path = ".") → string[]` (sorted names), `fs.exists(path) → boolean`,
//!   `fs.stat(path)` / `fs.lstat(path) → {type: "file"|"dir"|"symlink"|"other", size, mtimeMs}`,
//!   `fs.mkdir(path)` (with parents), `fs.remove(path, {recursive})`,
//!   `fs.symlink(target, path)` (relative targets only), `fs.readlink(path) → string`.
//! - `fetch(url, {method, headers, body}) → Promise<{status, ok, headers, text(), json()}>`
//!   (`headers` is a plain object with lower-case names); refused requests reject with a
//!   `TypeError` such as `egress denied: GET https://…: …`.
//!
//! Local time is UTC.
//!
//! Limits: [`ExecuteRequest::timeout`](crate::ExecuteRequest::timeout) (wall clock: QuickJS's
//! interrupt handler stops a script that polls it, and the worker process is killed shortly
//! after the deadline in any case; also when the caller drops the future),
//! [`ExecuteRequest::memory_limit`](crate::ExecuteRequest::memory_limit) (heap; capped further by
//! the spec's `memory_bytes`), [`SCRIPT_STACK_BYTES`] (recursion), and
//! [`ExecuteRequest::max_output_bytes`](crate::ExecuteRequest::max_output_bytes) per stream.
//!
//! # Runtime
//! The backend must be used from within a tokio runtime (it uses the blocking pool).
//!
//! # The spec's knobs
//! - `memory_bytes`: caps the heap of `execute` scripts (a request's own
//!   [`memory_limit`](crate::ExecuteRequest::memory_limit) can only lower it); `0` is refused.
//! - `disk_bytes`: a quota on the workspace, enforced on every write path (file writes,
//!   `execute`'s `fs.*`, archive imports); see [`QUOTA_ENTRY_BYTES`] for what counts. A write
//!   that would pass it fails with [`QuotaExceeded`](crate::SandboxErrorKind::QuotaExceeded)
//!   and leaves what was there intact. Resumed sandboxes count what their workspace holds.
//! - `pids`: honoured trivially: a script runs in one worker process and cannot start others.
//! - `mounts`, `labels`, `session_id`, `environment_id`: applied and recorded.
//! - `image`, `cpus`, `env` and `egress` are refused with
//!   [`Unsupported`](crate::SandboxErrorKind::Unsupported): there is no image, no CPU limit, no
//!   command that could read an environment, and outbound `fetch` goes through the backend's
//!   [`EgressHook`] ([`IsolateBackend::with_egress`]) rather than a proxy endpoint.
//!
//! # Not supported
//! [`exec`](crate::Sandbox::exec) and [`open_interactive`](crate::Sandbox::open_interactive)
//! (no shell: use `execute`).

mod archive;
mod egress;
mod js;
mod meta;
mod quota;
mod worker;
mod workspace;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use tokio::sync::mpsc;

pub use egress::{DenyAllEgress, EgressHook, FetchError, FetchRequest, FetchResponse};
pub use js::{MAX_SCRIPT_READ_BYTES, SCRIPT_STACK_BYTES};
pub use quota::QUOTA_ENTRY_BYTES;
pub use worker::{MAX_RUNS_PER_WORKER, MAX_SCRIPT_BYTES, WorkerConfig, worker_entry_linked};
pub use workspace::{MAX_DIR_ENTRIES, MAX_NAME_BYTES, MAX_PATH_BYTES};

use self::meta::{MAX_META_BYTES, Meta};
use self::quota::Quota;
use self::workspace::{MountPoint, Workspace, map_io, normalize, read_bounded};
use crate::backend::{Sandbox, SandboxBackend};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{ExecOutput, ExecRequest, ExecuteRequest};
use crate::file::{ByteStream, DirEntry, FileReader, FileStat};
use crate::spec::{Capabilities, Mount, SandboxId, SandboxInfo, SandboxSpec, SandboxStatus};

/// The sandbox path of the workspace, and every isolate sandbox's working directory.
pub const WORKDIR: &str = "/workspace";
/// Reads and writes up to this many bytes run inline on the calling task; larger ones on the
/// blocking pool.
pub const INLINE_IO_BYTES: u64 = 64 * 1024;
/// Backend name reported by [`SandboxBackend::name`].
pub const BACKEND_NAME: &str = "isolate";

const WORKSPACE_DIR: &str = "workspace";
const META_FILE: &str = "sandbox.meta";
const STOPPED_FILE: &str = "stopped";
/// Chunks buffered between an export's blocking writer and its consumer.
const EXPORT_CHANNEL_CHUNKS: usize = 4;

/// The isolate [`SandboxBackend`]. Cheap to clone; clones share the root and the egress hook.
#[derive(Clone)]
pub struct IsolateBackend {
    inner: Arc<Inner>,
    egress: Arc<dyn EgressHook>,
    workers: Arc<Workers>,
}

/// Where `execute` scripts run.
#[cfg(target_os = "linux")]
type Workers = worker::Pool;
/// Where `execute` scripts run: nowhere (worker processes need Linux).
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
struct Workers;

#[cfg(not(target_os = "linux"))]
impl Workers {
    fn new(_: WorkerConfig) -> Self {
        Workers
    }
}

struct Inner {
    root: Dir,
    /// Stop flags of sandboxes handed out by this backend, so `destroy` stops live handles.
    live: Mutex<HashMap<SandboxId, Weak<AtomicBool>>>,
    seed: u64,
    counter: AtomicU64,
}

impl fmt::Debug for IsolateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolateBackend").finish_non_exhaustive()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        SandboxError::new(SandboxErrorKind::Backend, "blocking task failed").with_source(e)
    })?
}

impl IsolateBackend {
    /// A backend keeping its sandboxes under `root_dir` (created if missing). Outbound `fetch`
    /// from scripts is denied ([`DenyAllEgress`]) until [`with_egress`](Self::with_egress).
    pub fn new(root_dir: impl AsRef<Path>) -> Result<Self> {
        let root_err = |e| {
            SandboxError::new(
                SandboxErrorKind::Io,
                "isolate backend: cannot open its root directory",
            )
            .with_source(e)
        };
        let root_dir = root_dir.as_ref();
        Dir::create_ambient_dir_all(root_dir, ambient_authority()).map_err(root_err)?;
        let root = Dir::open_ambient_dir(root_dir, ambient_authority()).map_err(root_err)?;
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                live: Mutex::new(HashMap::new()),
                seed,
                counter: AtomicU64::new(0),
            }),
            egress: Arc::new(DenyAllEgress),
            workers: Arc::new(Workers::new(WorkerConfig::new())),
        })
    }

    /// Run `execute` scripts in worker processes configured by `config` (see
    /// [`WorkerConfig`]). Applies to sandboxes created or resumed through the returned backend;
    /// the workers of the previous configuration are stopped once no sandbox uses them.
    #[must_use]
    pub fn with_workers(mut self, config: WorkerConfig) -> Self {
        self.workers = Arc::new(Workers::new(config));
        self
    }

    /// Route every script `fetch` through `hook` (for example one applying the session's
    /// egress policy). Applies to sandboxes created or resumed through the returned backend;
    /// clones made before keep their hook.
    #[must_use]
    pub fn with_egress(mut self, hook: Arc<dyn EgressHook>) -> Self {
        self.egress = hook;
        self
    }

    /// A sandbox whose `/workspace` is the existing host directory `dir`, used in place: the
    /// backend neither creates, lists nor destroys it, and nothing is written outside it. Meant
    /// for one-off tool runs over a directory (the `cma tool` command, debugging, comparing with
    /// other workers); the same confinement applies as for managed sandboxes.
    pub fn open_directory(&self, dir: impl AsRef<Path>) -> Result<Arc<dyn Sandbox>> {
        let dir = Dir::open_ambient_dir(dir.as_ref(), ambient_authority()).map_err(|e| {
            let kind = map_io(std::io::Error::new(e.kind(), ""), WORKDIR).kind();
            SandboxError::new(kind, format!("cannot open the directory: {e}"))
        })?;
        let id = self.new_id();
        let stopped = self.register(&id);
        let mounts = vec![MountPoint {
            path: WORKDIR.to_string(),
            dir,
            read_only: false,
            quota: None,
        }];
        Ok(Arc::new(IsolateSandbox {
            id,
            ws: Arc::new(Workspace::new(WORKDIR.to_string(), mounts)),
            stopped,
            backend: self.inner.clone(),
            egress: self.egress.clone(),
            workers: self.workers.clone(),
            memory_cap: None,
            managed: false,
        }))
    }

    fn new_id(&self) -> SandboxId {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix(self.inner.seed ^ n);
        let b = splitmix(a ^ n.rotate_left(17));
        // Always valid: `sbx_` and 32 hex digits.
        SandboxId::parse(format!("sbx_{a:016x}{b:016x}"))
            .unwrap_or_else(|_| unreachable!("generated ids are valid"))
    }

    fn register(&self, id: &SandboxId) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut live) = self.inner.live.lock() {
            if live.len() >= 64 && live.len().is_power_of_two() {
                live.retain(|_, w| w.strong_count() > 0);
            }
            live.insert(id.clone(), Arc::downgrade(&flag));
        }
        flag
    }

    fn open_mounts(mounts: &[Mount]) -> Result<Vec<MountPoint>> {
        let mut out: Vec<MountPoint> = Vec::with_capacity(mounts.len());
        for m in mounts {
            let bad = |why: &str| {
                SandboxError::new(
                    SandboxErrorKind::InvalidInput,
                    format!("mount {}: {why}", m.sandbox_path),
                )
            };
            if !m.sandbox_path.starts_with('/') {
                return Err(bad("sandbox path must be absolute"));
            }
            let path = normalize(WORKDIR, &m.sandbox_path)?;
            let overlaps = |a: &str, b: &str| {
                a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
            };
            if path == "/" || overlaps(&path, WORKDIR) {
                return Err(bad("must not be / or overlap /workspace"));
            }
            if out.iter().any(|o| overlaps(&o.path, &path)) {
                return Err(bad("overlaps another mount"));
            }
            let dir = Dir::open_ambient_dir(&m.host_path, ambient_authority()).map_err(|e| {
                let kind = map_io(e, &path).kind();
                SandboxError::new(
                    kind,
                    format!("mount {path}: host directory cannot be opened"),
                )
            })?;
            out.push(MountPoint {
                path,
                dir,
                read_only: m.read_only,
                quota: None,
            });
        }
        Ok(out)
    }

    /// Open a sandbox's mounts and workspace. With a quota, `fresh` says the workspace is
    /// known to be empty; otherwise what it holds is measured first.
    async fn open_sandbox(
        &self,
        id: SandboxId,
        meta: &Meta,
        fresh: bool,
    ) -> Result<Arc<dyn Sandbox>> {
        let mut mounts = Self::open_mounts(&meta.mounts)?;
        let ws_rel = format!("{id}/{WORKSPACE_DIR}");
        let dir = self
            .inner
            .root
            .open_dir(&ws_rel)
            .map_err(|e| map_io(e, WORKDIR))?;
        let (dir, quota) = match meta.disk_bytes {
            None => (dir, None),
            Some(limit) if fresh => (dir, Some(Quota::new(limit, 0))),
            Some(limit) => {
                blocking(move || {
                    let used = quota::measure(&dir, Path::new(""), WORKDIR)?;
                    Ok((dir, Some(Quota::new(limit, used))))
                })
                .await?
            }
        };
        mounts.push(MountPoint {
            path: WORKDIR.to_string(),
            dir,
            read_only: false,
            quota,
        });
        let stopped = self.register(&id);
        Ok(Arc::new(IsolateSandbox {
            id,
            ws: Arc::new(Workspace::new(WORKDIR.to_string(), mounts)),
            stopped,
            backend: self.inner.clone(),
            egress: self.egress.clone(),
            workers: self.workers.clone(),
            memory_cap: meta.memory_bytes,
            managed: true,
        }))
    }

    fn read_meta(&self, id: &SandboxId) -> Result<Meta> {
        let not_found = || {
            SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("sandbox {id} not found"),
            )
        };
        let file = self
            .inner
            .root
            .open(format!("{id}/{META_FILE}"))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => not_found(),
                _ => map_io(e, WORKDIR),
            })?;
        let mut text = String::new();
        file.take(MAX_META_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| {
                SandboxError::new(SandboxErrorKind::Backend, "corrupt sandbox metadata")
                    .with_source(e)
            })?;
        Meta::decode(&text)
    }

    fn capabilities_of(egress: &dyn EgressHook) -> Capabilities {
        Capabilities {
            execute_js: true,
            files: true,
            symlinks: true,
            archive: true,
            resume: true,
            network: egress.allows_network(),
            disk_quota: true,
            ..Capabilities::default()
        }
    }

    /// Refuse the spec's knobs this backend cannot honour (see the module docs).
    fn check_spec(spec: &SandboxSpec) -> Result<()> {
        let unsupported = |knob: &str, why: &str| {
            Err(SandboxError::unsupported(format!(
                "isolate backend: SandboxSpec::{knob} cannot be honoured: {why}"
            )))
        };
        if spec.image.is_some() {
            return unsupported("image", "an isolate sandbox runs no container image");
        }
        if spec.cpus.is_some() {
            return unsupported("cpus", "the isolate backend has no CPU limit");
        }
        if !spec.env.is_empty() {
            return unsupported(
                "env",
                "an isolate sandbox runs no command that could read environment variables",
            );
        }
        if spec.egress.is_some() {
            return unsupported(
                "egress",
                "scripts reach the network only through the backend's EgressHook (IsolateBackend::with_egress)",
            );
        }
        if spec.memory_bytes == Some(0) {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "isolate backend: SandboxSpec::memory_bytes must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl SandboxBackend for IsolateBackend {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::capabilities_of(&*self.egress)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>> {
        // Validate the spec and its mounts before touching the root.
        Self::check_spec(spec)?;
        drop(Self::open_mounts(&spec.mounts)?);
        let meta = Meta::from_spec(spec, spec.mounts.clone());
        let encoded = meta.encode()?;
        let root = &self.inner.root;
        let mut attempt = 0;
        let id = loop {
            let id = self.new_id();
            match root.create_dir(id.as_str()) {
                Ok(()) => break id,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(SandboxError::new(
                        map_io(e, WORKDIR).kind(),
                        "isolate backend: cannot create the sandbox directory",
                    ));
                }
            }
        };
        let setup = root
            .create_dir(format!("{id}/{WORKSPACE_DIR}"))
            .and_then(|()| root.write(format!("{id}/{META_FILE}"), encoded.as_bytes()));
        if let Err(e) = setup {
            let _ = root.remove_dir_all(id.as_str());
            return Err(SandboxError::new(
                map_io(e, WORKDIR).kind(),
                "isolate backend: cannot set up the sandbox directory",
            ));
        }
        match self.open_sandbox(id.clone(), &meta, true).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = root.remove_dir_all(id.as_str());
                Err(e)
            }
        }
    }

    async fn resume(&self, id: &SandboxId) -> Result<Arc<dyn Sandbox>> {
        let meta = self.read_meta(id)?;
        match self.inner.root.remove_file(format!("{id}/{STOPPED_FILE}")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(map_io(e, WORKDIR)),
        }
        self.open_sandbox(id.clone(), &meta, false).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let this = self.clone();
        blocking(move || {
            let root = &this.inner.root;
            let mut out = Vec::new();
            let entries = root.entries().map_err(|e| {
                SandboxError::new(
                    SandboxErrorKind::Io,
                    "isolate backend: cannot list sandboxes",
                )
                .with_source(e)
            })?;
            for entry in entries.flatten() {
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| SandboxId::parse(n).ok())
                else {
                    continue;
                };
                let info = match this.read_meta(&id) {
                    Ok(meta) => {
                        let stopped = root.exists(format!("{id}/{STOPPED_FILE}"));
                        SandboxInfo {
                            id,
                            status: if stopped {
                                SandboxStatus::Stopped
                            } else {
                                SandboxStatus::Running
                            },
                            created_at: meta.created,
                            session_id: meta.session_id,
                            labels: meta.labels,
                        }
                    }
                    Err(e) if e.kind() == SandboxErrorKind::NotFound => continue,
                    Err(e) => SandboxInfo {
                        id,
                        status: SandboxStatus::Failed {
                            reason: e.to_string(),
                        },
                        created_at: None,
                        session_id: None,
                        labels: Default::default(),
                    },
                };
                out.push(info);
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let meta_exists = self
            .inner
            .root
            .symlink_metadata(id.as_str())
            .is_ok_and(|m| m.is_dir());
        if !meta_exists {
            return Err(SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("sandbox {id} not found"),
            ));
        }
        if let Ok(mut live) = self.inner.live.lock()
            && let Some(flag) = live.remove(id).and_then(|w| w.upgrade())
        {
            flag.store(true, Ordering::SeqCst);
        }
        let this = self.clone();
        let id = id.clone();
        blocking(move || {
            this.inner
                .root
                .remove_dir_all(id.as_str())
                .map_err(|e| map_io(e, WORKDIR))
        })
        .await
    }
}

/// One isolate sandbox (see the [module docs](self)).
pub struct IsolateSandbox {
    id: SandboxId,
    ws: Arc<Workspace>,
    stopped: Arc<AtomicBool>,
    backend: Arc<Inner>,
    egress: Arc<dyn EgressHook>,
    workers: Arc<Workers>,
    memory_cap: Option<u64>,
    /// Made by `create`/`resume` (under the backend's root), not `open_directory`: it can be
    /// resumed by id.
    managed: bool,
}

impl fmt::Debug for IsolateSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolateSandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl IsolateSandbox {
    fn live(&self) -> Result<&Arc<Workspace>> {
        if self.stopped.load(Ordering::SeqCst) {
            Err(SandboxError::new(
                SandboxErrorKind::Stopped,
                format!("sandbox {} is stopped", self.id),
            ))
        } else {
            Ok(&self.ws)
        }
    }
}

#[async_trait]
impl Sandbox for IsolateSandbox {
    fn id(&self) -> &SandboxId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = IsolateBackend::capabilities_of(&*self.egress);
        // A directory opened in place is not the backend's: `resume` cannot find it.
        caps.resume = self.managed;
        caps
    }

    fn workdir(&self) -> &str {
        WORKDIR
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        self.live()?.stat(path)
    }

    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.live()?.lstat(path)
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        self.live()?.read_link(path)
    }

    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        let (file, size, shown) = self.live()?.open_regular(path)?;
        if size <= INLINE_IO_BYTES {
            read_bounded(file, size, max_bytes, &shown)
        } else {
            blocking(move || read_bounded(file, size, max_bytes, &shown)).await
        }
    }

    async fn open_read(&self, path: &str) -> Result<FileReader> {
        let (file, _, _) = self.live()?.open_regular(path)?;
        Ok(Box::pin(tokio::fs::File::from_std(file.into_std())))
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        let ws = self.live()?;
        // With a quota, writes wait for each other's lock: never on a runtime thread.
        if data.len() as u64 <= INLINE_IO_BYTES && !ws.has_quota() {
            ws.write_file(path, &data)
        } else {
            let ws = ws.clone();
            let path = path.to_string();
            blocking(move || ws.write_file(&path, &data)).await
        }
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        let ws = self.live()?;
        if !ws.has_quota() {
            return ws.create_dir_all(path);
        }
        let ws = ws.clone();
        let path = path.to_string();
        blocking(move || ws.create_dir_all(&path)).await
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let ws = self.live()?.clone();
        let path = path.to_string();
        blocking(move || ws.read_dir(&path)).await
    }

    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        let ws = self.live()?.clone();
        let paths = paths.to_vec();
        blocking(move || Ok(paths.iter().map(|p| ws.read_dir_unsorted(p)).collect())).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let ws = self.live()?;
        if recursive || ws.has_quota() {
            let ws = ws.clone();
            let path = path.to_string();
            blocking(move || ws.remove(&path, true)).await
        } else {
            ws.remove(path, false)
        }
    }

    async fn exec(&self, _req: ExecRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported(
            "exec: the isolate backend has no shell; run JavaScript with the `execute` tool instead",
        ))
    }

    async fn execute(&self, mut req: ExecuteRequest) -> Result<ExecOutput> {
        let ws = self.live()?.clone();
        if let Some(cap) = self.memory_cap {
            req.memory_limit = req
                .memory_limit
                .min(usize::try_from(cap).unwrap_or(usize::MAX));
        }
        #[cfg(target_os = "linux")]
        return worker::execute(&self.workers, &self.id, &ws, &self.egress, req).await;
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (ws, req, &self.workers);
            Err(SandboxError::unsupported(
                "execute: the isolate backend runs scripts in worker processes, which need Linux",
            ))
        }
    }

    fn local_workspace(&self) -> Option<std::fs::File> {
        let ws = self.live().ok()?;
        let dir = ws.workspace_dir()?.try_clone().ok()?;
        Some(dir.into_std_file())
    }

    async fn export_workspace(&self) -> Result<ByteStream> {
        let ws = self.live()?.clone();
        let (tx, rx) = mpsc::channel(EXPORT_CHANNEL_CHUNKS);
        tokio::task::spawn_blocking(move || match ws.workspace_dir() {
            Some(dir) => archive::export(dir, tx),
            None => {
                let _ = tx.blocking_send(Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    "workspace mount missing",
                )));
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn import_workspace(&self, tar: ByteStream) -> Result<()> {
        let ws = self.live()?.clone();
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::Backend,
                "import_workspace: the isolate backend needs a tokio runtime",
            )
            .with_source(e)
        })?;
        blocking(move || {
            let mount = ws.workspace_mount().ok_or_else(|| {
                SandboxError::new(SandboxErrorKind::Backend, "workspace mount missing")
            })?;
            let mut reader = archive::StreamReader::new(tar, handle);
            archive::import(&mount.dir, mount.quota.as_ref(), &mut reader)
        })
        .await
    }

    async fn status(&self) -> Result<SandboxStatus> {
        Ok(if self.stopped.load(Ordering::SeqCst) {
            SandboxStatus::Stopped
        } else {
            SandboxStatus::Running
        })
    }

    async fn stop(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match self
            .backend
            .root
            .write(format!("{}/{STOPPED_FILE}", self.id), b"")
        {
            Ok(()) => Ok(()),
            // Destroyed meanwhile: stopped all the same.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_io(e, WORKDIR)),
        }
    }
}
