//! Test support for tool authors (feature `testing`, never on by default): an in-memory [`Sandbox`]
//! ([`MemorySandbox`]: files, directories, symlinks, mtimes, read-only directories; no
//! processes) and [`call_tool`], which runs one call exactly as the runner would and returns the
//! [`PostedResult`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use cma_tools::testing::{call_tool, MemorySandbox};
//! use cma_tools::toolset::ReadTool;
//! use serde_json::json;
//!
//! let sandbox = Arc::new(MemorySandbox::new("/workspace"));
//! sandbox.add_file("/workspace/a.txt", "hello\n");
//! let r = call_tool(&ReadTool, sandbox, json!({"file_path": "a.txt"})).await;
//! assert!(!r.is_error);
//! assert_eq!(r.text(), Some("hello\n"));
//! # });
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, ExecOutput, ExecRequest, ExecuteRequest, FileKind,
    FileReader, FileStat, Result, Sandbox, SandboxError, SandboxErrorKind, SandboxId,
    SandboxStatus,
};
use serde_json::Value;

use crate::context::ToolContext;
use crate::output::{PostedResult, ToolError};
use crate::registry::{Tool, run_bounded};
use crate::toolset::path::normalize;

/// Symlink hops before a loop error (Linux's `MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

#[derive(Debug, Clone)]
enum Node {
    File { data: Bytes, mtime: SystemTime },
    Dir { mtime: SystemTime },
    Symlink { target: String, mtime: SystemTime },
}

impl Node {
    fn stat(&self) -> FileStat {
        match self {
            Node::File { data, mtime } => FileStat {
                kind: FileKind::File,
                size: data.len() as u64,
                modified: Some(*mtime),
            },
            Node::Dir { mtime } => FileStat {
                kind: FileKind::Dir,
                size: 0,
                modified: Some(*mtime),
            },
            Node::Symlink { target, mtime } => FileStat {
                kind: FileKind::Symlink,
                size: target.len() as u64,
                modified: Some(*mtime),
            },
        }
    }
}

/// An in-memory sandbox for tests. Paths are absolute sandbox paths; relative ones are taken
/// from the workdir. It has no shell and no JavaScript engine unless
/// [`MemorySandbox::with_capabilities`] says otherwise (`exec`/`execute` still fail with
/// `Unsupported`).
#[derive(Debug)]
pub struct MemorySandbox {
    id: SandboxId,
    workdir: String,
    caps: Capabilities,
    nodes: Mutex<BTreeMap<String, Node>>,
    read_only: Mutex<Vec<String>>,
}

impl MemorySandbox {
    /// An empty sandbox whose workdir (created) is `workdir`.
    pub fn new(workdir: &str) -> Self {
        let mut caps = Capabilities::default();
        caps.files = true;
        caps.symlinks = true;
        let workdir = normalize(workdir);
        let sb = Self {
            id: SandboxId::parse("memory").unwrap_or_else(|_| unreachable!("valid constant id")),
            workdir: workdir.clone(),
            caps,
            nodes: Mutex::new(BTreeMap::new()),
            read_only: Mutex::new(Vec::new()),
        };
        sb.lock().insert(
            "/".into(),
            Node::Dir {
                mtime: SystemTime::now(),
            },
        );
        sb.add_dir(&workdir);
        sb
    }

    /// Report these capabilities instead (e.g. `execute_js` to see what `bash` answers there).
    #[must_use]
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn abs(&self, path: &str) -> String {
        if path.starts_with('/') {
            normalize(path)
        } else {
            normalize(&format!("{}/{path}", self.workdir))
        }
    }

    /// Create a directory and its parents.
    pub fn add_dir(&self, path: &str) {
        let path = self.abs(path);
        let mut nodes = self.lock();
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = format!("{cur}/{c}");
            nodes.entry(cur.clone()).or_insert(Node::Dir {
                mtime: SystemTime::now(),
            });
        }
    }

    /// Create or replace a file (parents created), mtime now.
    pub fn add_file(&self, path: &str, data: impl Into<Bytes>) {
        let path = self.abs(path);
        self.add_dir(&parent(&path));
        self.lock().insert(
            path,
            Node::File {
                data: data.into(),
                mtime: SystemTime::now(),
            },
        );
    }

    /// Create a symlink at `path` pointing to `target` (stored as given).
    pub fn add_symlink(&self, path: &str, target: &str) {
        let path = self.abs(path);
        self.add_dir(&parent(&path));
        self.lock().insert(
            path,
            Node::Symlink {
                target: target.into(),
                mtime: SystemTime::now(),
            },
        );
    }

    /// Set the mtime of an entry (not following symlinks).
    pub fn set_mtime(&self, path: &str, mtime: SystemTime) {
        let path = self.abs(path);
        if let Some(n) = self.lock().get_mut(&path) {
            match n {
                Node::File { mtime: m, .. }
                | Node::Dir { mtime: m }
                | Node::Symlink { mtime: m, .. } => *m = mtime,
            }
        }
    }

    /// Refuse every write under `root` with `PermissionDenied` (a read-only mount).
    pub fn set_read_only(&self, root: &str) {
        let root = self.abs(root);
        self.read_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(root);
    }

    /// The content of a file, if it exists (not following symlinks).
    pub fn file(&self, path: &str) -> Option<Bytes> {
        match self.lock().get(&self.abs(path)) {
            Some(Node::File { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }

    fn is_read_only(&self, path: &str) -> bool {
        self.read_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| path == r || path.starts_with(&format!("{}/", r.trim_end_matches('/'))))
    }

    /// Resolve `path` to the key of an existing entry (or, with `allow_missing_last`, to the
    /// key where the last component would be), following symlinks (the last one only when
    /// `follow_last`).
    fn resolve(
        &self,
        nodes: &BTreeMap<String, Node>,
        path: &str,
        follow_last: bool,
        allow_missing_last: bool,
    ) -> Result<String> {
        let err = |k| SandboxError::at_path(k, path.to_owned());
        let mut todo: std::collections::VecDeque<String> = self
            .abs_raw(path)
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let parent_key = format!("/{}", cur.join("/"));
            match nodes.get(&parent_key) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(err(SandboxErrorKind::NotADirectory)),
                None => return Err(err(SandboxErrorKind::NotFound)),
            }
            cur.push(c);
            let key = format!("/{}", cur.join("/"));
            let last = todo.is_empty();
            match nodes.get(&key) {
                None if last && allow_missing_last => return Ok(key),
                None => return Err(err(SandboxErrorKind::NotFound)),
                Some(Node::Symlink { target, .. }) if !last || follow_last => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(err(SandboxErrorKind::SymlinkLoop));
                    }
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    for t in target
                        .split('/')
                        .rev()
                        .filter(|s| !s.is_empty() && *s != ".")
                    {
                        todo.push_front(t.to_owned());
                    }
                }
                Some(_) => {}
            }
        }
        Ok(format!("/{}", cur.join("/")))
    }

    fn abs_raw(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.workdir)
        }
    }

    fn node(&self, path: &str, follow: bool) -> Result<Node> {
        let nodes = self.lock();
        let key = self.resolve(&nodes, path, follow, false)?;
        nodes
            .get(&key)
            .cloned()
            .ok_or_else(|| SandboxError::at_path(SandboxErrorKind::NotFound, path))
    }

    fn mkdirs(&self, nodes: &mut BTreeMap<String, Node>, path: &str) -> Result<()> {
        let abs = self.abs_raw(path);
        let comps: Vec<&str> = abs
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut cur = String::from("/");
        for c in comps {
            let next = if cur == "/" {
                format!("/{c}")
            } else {
                format!("{cur}/{c}")
            };
            let key = self.resolve(nodes, &next, true, true)?;
            match nodes.get(&key) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(SandboxError::at_path(SandboxErrorKind::NotADirectory, path));
                }
                None => {
                    if self.is_read_only(&key) {
                        return Err(SandboxError::at_path(
                            SandboxErrorKind::PermissionDenied,
                            path,
                        ));
                    }
                    nodes.insert(
                        key.clone(),
                        Node::Dir {
                            mtime: SystemTime::now(),
                        },
                    );
                }
            }
            cur = key;
        }
        Ok(())
    }
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

#[async_trait]
impl Sandbox for MemorySandbox {
    fn id(&self) -> &SandboxId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn workdir(&self) -> &str {
        &self.workdir
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        Ok(self.node(path, true)?.stat())
    }

    async fn lstat(&self, path: &str) -> Result<FileStat> {
        Ok(self.node(path, false)?.stat())
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        match self.node(path, false)? {
            Node::Symlink { target, .. } => Ok(target),
            _ => Err(SandboxError::at_path(SandboxErrorKind::InvalidInput, path)),
        }
    }

    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        match self.node(path, true)? {
            Node::File { data, .. } => match max_bytes {
                Some(max) if data.len() as u64 > max => {
                    Err(SandboxError::too_large(path, data.len() as u64, max))
                }
                _ => Ok(data),
            },
            Node::Dir { .. } => Err(SandboxError::at_path(SandboxErrorKind::IsADirectory, path)),
            Node::Symlink { .. } => Err(SandboxError::at_path(SandboxErrorKind::SymlinkLoop, path)),
        }
    }

    async fn open_read(&self, path: &str) -> Result<FileReader> {
        let data = self.read_file(path, None).await?;
        Ok(Box::pin(std::io::Cursor::new(data)))
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        let mut nodes = self.lock();
        self.mkdirs(&mut nodes, &parent(&self.abs_raw(path)))?;
        let key = self.resolve(&nodes, path, true, true)?;
        if matches!(nodes.get(&key), Some(Node::Dir { .. })) {
            return Err(SandboxError::at_path(SandboxErrorKind::IsADirectory, path));
        }
        if self.is_read_only(&key) {
            return Err(SandboxError::at_path(
                SandboxErrorKind::PermissionDenied,
                path,
            ));
        }
        nodes.insert(
            key,
            Node::File {
                data,
                mtime: SystemTime::now(),
            },
        );
        Ok(())
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        let mut nodes = self.lock();
        self.mkdirs(&mut nodes, path)
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let nodes = self.lock();
        let key = self.resolve(&nodes, path, true, false)?;
        match nodes.get(&key) {
            Some(Node::Dir { .. }) => {}
            Some(_) => return Err(SandboxError::at_path(SandboxErrorKind::NotADirectory, path)),
            None => return Err(SandboxError::at_path(SandboxErrorKind::NotFound, path)),
        }
        let prefix = if key == "/" {
            "/".to_owned()
        } else {
            format!("{key}/")
        };
        Ok(nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/') && k.len() > prefix.len())
            .map(|(k, n)| DirEntry {
                name: k[prefix.len()..].to_owned(),
                stat: n.stat(),
            })
            .collect())
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let mut nodes = self.lock();
        let key = self.resolve(&nodes, path, false, false)?;
        if self.is_read_only(&key) {
            return Err(SandboxError::at_path(
                SandboxErrorKind::PermissionDenied,
                path,
            ));
        }
        let prefix = format!("{key}/");
        let children: Vec<String> = nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if !children.is_empty() && !recursive {
            return Err(SandboxError::at_path(
                SandboxErrorKind::DirectoryNotEmpty,
                path,
            ));
        }
        for c in children {
            nodes.remove(&c);
        }
        nodes.remove(&key);
        Ok(())
    }

    async fn exec(&self, _req: ExecRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported("the memory sandbox has no shell"))
    }

    async fn execute(&self, _req: ExecuteRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported(
            "the memory sandbox has no JavaScript engine",
        ))
    }

    async fn export_workspace(&self) -> Result<ByteStream> {
        Err(SandboxError::unsupported(
            "the memory sandbox has no archive support",
        ))
    }

    async fn import_workspace(&self, _tar: ByteStream) -> Result<()> {
        Err(SandboxError::unsupported(
            "the memory sandbox has no archive support",
        ))
    }

    async fn status(&self) -> Result<SandboxStatus> {
        Ok(SandboxStatus::Running)
    }

    async fn stop(&self) -> Result<()> {
        Ok(())
    }
}

/// Run one call of `tool` with a fresh [`ToolContext`] over `sandbox`, as the runner would
/// (validation, 150 s bound, §5.5 conversion), and return what would be posted.
pub async fn call_tool(tool: &dyn Tool, sandbox: Arc<dyn Sandbox>, input: Value) -> PostedResult {
    call_tool_in(tool, &ToolContext::new(sandbox), input).await
}

/// Like [`call_tool`] with a context of your own (allowed roots, a shell launcher, shared
/// session state across calls).
pub async fn call_tool_in(tool: &dyn Tool, ctx: &ToolContext, input: Value) -> PostedResult {
    match run_bounded(tool, ctx, input).await {
        Ok(r) => r,
        Err(e) => PostedResult::from_error(&ToolError::runtime(e.to_string())),
    }
}
