//! `glob` and `grep` on a deep directory chain cost a number of sandbox calls linear in the
//! depth (issue 11: `glob` canonicalised each match with one `lstat` per component, each
//! resolving its whole path again: cubic). A wrapper counts every call the tools make, on the
//! in-memory sandbox (listings through the default `walk_tree`) and on the isolate backend
//! (its own handle walk); the counts are compared with the depth, not timed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, DirWalk, ExecOutput, ExecRequest, ExecuteRequest,
    FileReader, FileStat, FoundLines, Result, Sandbox, SandboxBackend, SandboxId, SandboxSpec,
    SandboxStatus, TreeFound, TreeSearch,
};
use cma_tools::testing::MemorySandbox;
use cma_tools::{ToolContext, ToolRegistry, agent_toolset};
use serde_json::json;

/// Forwards every call to `inner`, counting them.
struct Counting {
    inner: Arc<dyn Sandbox>,
    calls: AtomicU64,
}

impl Counting {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Sandbox for Counting {
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
        self.tick();
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.tick();
        self.inner.lstat(path).await
    }
    async fn read_link(&self, path: &str) -> Result<String> {
        self.tick();
        self.inner.read_link(path).await
    }
    async fn read_file(&self, path: &str, max: Option<u64>) -> Result<Bytes> {
        self.tick();
        self.inner.read_file(path, max).await
    }
    async fn read_files(&self, paths: &[String], max: u64) -> Result<Vec<Result<Bytes>>> {
        self.tick();
        self.inner.read_files(paths, max).await
    }
    async fn find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        self.tick();
        self.inner.find_lines(paths, needle, max, max_line).await
    }
    async fn search_tree(&self, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
        self.tick();
        self.inner.search_tree(root, needle, opts).await
    }
    async fn open_read(&self, path: &str) -> Result<FileReader> {
        self.tick();
        self.inner.open_read(path).await
    }
    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.tick();
        self.inner.write_file(path, data).await
    }
    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.tick();
        self.inner.create_dir_all(path).await
    }
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.tick();
        self.inner.read_dir(path).await
    }
    async fn read_dirs(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.tick();
        self.inner.read_dirs(paths).await
    }
    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.tick();
        self.inner.read_dirs_unsorted(paths).await
    }
    async fn walk_tree<'a>(&'a self, root: &str) -> Result<DirWalk<'a>> {
        self.tick();
        self.inner.walk_tree(root).await
    }
    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.tick();
        self.inner.remove(path, recursive).await
    }
    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        self.inner.exec(req).await
    }
    async fn execute(&self, req: ExecuteRequest) -> Result<ExecOutput> {
        self.inner.execute(req).await
    }
    async fn export_workspace(&self) -> Result<ByteStream> {
        self.inner.export_workspace().await
    }
    async fn import_workspace(&self, tar: ByteStream) -> Result<()> {
        self.inner.import_workspace(tar).await
    }
    async fn status(&self) -> Result<SandboxStatus> {
        self.inner.status().await
    }
    async fn stop(&self) -> Result<()> {
        self.inner.stop().await
    }
}

const DEPTH: usize = 300;

/// Run `tool(input)` on `sb` and return its sandbox calls and its result's line count.
async fn cost(sb: Arc<dyn Sandbox>, tool: &str, input: serde_json::Value) -> (u64, usize) {
    let counting = Arc::new(Counting {
        inner: sb,
        calls: AtomicU64::new(0),
    });
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(counting.clone());
    let r = reg.dispatch(&ctx, tool, input).await.unwrap();
    assert!(!r.is_error, "{:?}", r.text());
    let lines = r.text().unwrap_or_default().lines().count();
    (counting.calls.load(Ordering::Relaxed), lines)
}

/// The chain `a/a/…/a`, `DEPTH` deep, with a file `f` at every level.
async fn chain(sb: &Arc<dyn Sandbox>) {
    let mut dir = sb.workdir().to_owned();
    for _ in 0..DEPTH {
        dir.push_str("/a");
        sb.write_file(&format!("{dir}/f"), Bytes::from_static(b"needle\n"))
            .await
            .unwrap();
    }
}

async fn check_linear(sb: Arc<dyn Sandbox>) {
    chain(&sb).await;
    let bound = 4 * DEPTH as u64;
    for (tool, input, lines) in [
        ("glob", json!({"pattern": "**/f"}), 200),
        ("glob", json!({"pattern": "**/**/a/f"}), 200),
        ("glob", json!({"pattern": "**"}), 200),
        // Separated `**`: each starts from every level, and walks below each only once.
        ("glob", json!({"pattern": "**/a/**/a/**/f"}), 200),
        (
            "glob",
            json!({"pattern": "**/a/**/a/**/a/**/a/**/a/**/f"}),
            200,
        ),
        ("grep", json!({"pattern": "needle"}), DEPTH),
        ("grep", json!({"pattern": "ne+dle"}), DEPTH),
    ] {
        let (calls, got) = cost(sb.clone(), tool, input.clone()).await;
        assert_eq!(got, lines, "{tool} {input}");
        assert!(
            calls <= bound,
            "{tool} {input}: {calls} sandbox calls on a {DEPTH}-level chain (at most {bound})"
        );
    }
}

#[tokio::test]
async fn deep_chains_cost_calls_linear_in_depth_in_memory() {
    check_linear(Arc::new(MemorySandbox::new("/w"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_chains_cost_calls_linear_in_depth_on_the_isolate_backend() {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    check_linear(sb).await;
}
