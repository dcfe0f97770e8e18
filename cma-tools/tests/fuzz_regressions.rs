//! Regression tests for findings of the `tool_run` fuzz target (fuzz/).
//!
//! Cost is measured without clocks: a wrapper sandbox counts the file-system calls a tool makes,
//! and a walk must make a number of calls linear in the entries it visits. Past its budget the
//! wrapper fails every call, so a superlinear walk ends quickly (and the test fails) instead of
//! running for minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, ExecOutput, ExecRequest, ExecuteRequest, FileReader,
    FileStat, Result, Sandbox, SandboxError, SandboxErrorKind, SandboxId, SandboxStatus,
};
use cma_tools::testing::{MemorySandbox, call_tool};
use cma_tools::toolset::{GlobTool, ReadTool};
use serde_json::json;

/// A [`MemorySandbox`] that counts the metadata and listing calls made on it, and fails them
/// once there were more than `budget`.
struct Counting {
    inner: MemorySandbox,
    calls: AtomicUsize,
    budget: AtomicUsize,
}

impl Counting {
    fn count(&self) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.budget.load(Ordering::Relaxed) {
            return Err(SandboxError::new(
                SandboxErrorKind::Io,
                "call budget exhausted",
            ));
        }
        Ok(())
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
        self.count()?;
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.count()?;
        self.inner.lstat(path).await
    }
    async fn read_link(&self, path: &str) -> Result<String> {
        self.count()?;
        self.inner.read_link(path).await
    }
    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        self.count()?;
        self.inner.read_file(path, max_bytes).await
    }
    async fn open_read(&self, path: &str) -> Result<FileReader> {
        self.count()?;
        self.inner.open_read(path).await
    }
    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.inner.write_file(path, data).await
    }
    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.count()?;
        self.inner.read_dir(path).await
    }
    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
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

/// A workspace holding one chain of `depth` nested directories `d` with a file at the bottom.
fn chain(depth: usize) -> Arc<Counting> {
    let inner = MemorySandbox::new("/workspace");
    let dirs = vec!["d"; depth].join("/");
    inner.add_file(&format!("/workspace/{dirs}/leaf.txt"), "leaf\n");
    Arc::new(Counting {
        inner,
        calls: AtomicUsize::new(0),
        budget: AtomicUsize::new(usize::MAX),
    })
}

/// Calls one `glob` made, or `None` when it needed more than `budget`.
async fn glob_calls(sandbox: &Arc<Counting>, pattern: &str, budget: usize) -> Option<usize> {
    sandbox.calls.store(0, Ordering::Relaxed);
    sandbox.budget.store(budget, Ordering::Relaxed);
    let r = call_tool(&GlobTool, sandbox.clone(), json!({ "pattern": pattern })).await;
    let calls = sandbox.calls.load(Ordering::Relaxed);
    if calls > budget {
        return None;
    }
    assert!(!r.is_error, "{:?}", r.text());
    Some(calls)
}

// Finding (tool_run, hang): `glob` with `**` on a chain of a few hundred directories took more
// than 5 s (the cost grows with the cube of the depth: every match is canonicalized component
// by component, and each `**` level re-walks the tree below it).
#[tokio::test]
async fn glob_on_a_deep_chain_makes_calls_linear_in_its_entries() {
    let depth = 200;
    let sandbox = chain(depth);
    let entries = depth + 1;
    let calls = glob_calls(&sandbox, "**/*", 20 * entries).await;
    assert!(
        calls.is_some(),
        "glob **/* over {entries} entries made more than {} file-system calls",
        20 * entries
    );
}

// Finding (tool_run, hang): `**/**/**/**/**/**/*` — every extra `**` segment multiplied the
// walk (it matches exactly what `**/*` matches).
#[tokio::test]
async fn repeated_double_star_segments_cost_what_one_costs() {
    let depth = 40;
    let sandbox = chain(depth);
    let one = glob_calls(&sandbox, "**/*", usize::MAX)
        .await
        .expect("no budget");
    let many = glob_calls(&sandbox, "**/**/**/**/**/**/*", 2 * one).await;
    assert!(
        many.is_some(),
        "glob with six `**` segments made more than twice the {one} calls of one"
    );
}

// Finding (tool_run, panic "attempt to subtract with overflow" in `select_lines`): a
// `view_range` starting at `i64::MIN` on an existing file panicked in a debug build (and wraps
// in release). Every integer of the input must be handled whatever its value.
#[tokio::test]
async fn read_with_extreme_view_ranges_answers_without_panicking() {
    let sandbox = Arc::new(MemorySandbox::new("/workspace"));
    sandbox.add_file("/workspace/a", "one\ntwo\n");
    for (start, end) in [
        (i64::MIN, 1),
        (i64::MIN, i64::MIN),
        (1, i64::MIN),
        (i64::MAX, i64::MAX),
        (i64::MIN, i64::MAX),
    ] {
        let r = call_tool(
            &ReadTool,
            sandbox.clone(),
            json!({"file_path": "a", "view_range": [start, end]}),
        )
        .await;
        assert!(r.text().is_some(), "[{start}, {end}]: {r:?}");
    }
}
