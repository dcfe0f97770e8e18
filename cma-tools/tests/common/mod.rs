//! Shared fixtures of the cma-tools integration tests: a host-directory sandbox (sandbox paths
//! are host paths, so a real local bash and the file tools see the same files) and vector
//! helpers.
#![allow(dead_code)]

use std::io;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use cma_sandbox::{
    ByteStream, Capabilities, DirEntry, ExecOutput, ExecRequest, ExecuteRequest, FileKind,
    FileReader, FileStat, Result, Sandbox, SandboxError, SandboxErrorKind, SandboxId,
    SandboxStatus,
};
use cma_tools::PostedResult;
use cma_vectors::{Field as _, Value};

/// A sandbox over a host directory without confinement (tests only): sandbox path = host path.
pub struct HostSandbox {
    id: SandboxId,
    workdir: String,
    /// Report `shell_exec` and run `exec` with `/bin/bash -c` on the host.
    pub shell_exec: bool,
}

impl HostSandbox {
    pub fn new(workdir: &Path) -> Self {
        Self {
            id: SandboxId::parse("host").unwrap(),
            workdir: workdir.to_str().unwrap().to_owned(),
            shell_exec: false,
        }
    }
}

fn kind_of(e: &io::Error) -> SandboxErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => SandboxErrorKind::NotFound,
        io::ErrorKind::NotADirectory => SandboxErrorKind::NotADirectory,
        io::ErrorKind::IsADirectory => SandboxErrorKind::IsADirectory,
        io::ErrorKind::PermissionDenied => SandboxErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => SandboxErrorKind::AlreadyExists,
        _ if e.raw_os_error() == Some(40) => SandboxErrorKind::SymlinkLoop,
        _ => SandboxErrorKind::Io,
    }
}

fn err(path: &str) -> impl Fn(io::Error) -> SandboxError + '_ {
    move |e| SandboxError::at_path(kind_of(&e), path)
}

fn stat_of(m: &std::fs::Metadata) -> FileStat {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    FileStat {
        kind,
        size: m.len(),
        modified: m.modified().ok(),
    }
}

#[async_trait]
impl Sandbox for HostSandbox {
    fn id(&self) -> &SandboxId {
        &self.id
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.files = true;
        c.symlinks = true;
        c.shell_exec = self.shell_exec;
        c
    }
    fn workdir(&self) -> &str {
        &self.workdir
    }
    async fn stat(&self, path: &str) -> Result<FileStat> {
        std::fs::metadata(path)
            .map(|m| stat_of(&m))
            .map_err(err(path))
    }
    async fn lstat(&self, path: &str) -> Result<FileStat> {
        std::fs::symlink_metadata(path)
            .map(|m| stat_of(&m))
            .map_err(err(path))
    }
    async fn read_link(&self, path: &str) -> Result<String> {
        std::fs::read_link(path)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(err(path))
    }
    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        let data = std::fs::read(path).map_err(err(path))?;
        match max_bytes {
            Some(m) if data.len() as u64 > m => {
                Err(SandboxError::too_large(path, data.len() as u64, m))
            }
            _ => Ok(Bytes::from(data)),
        }
    }
    async fn open_read(&self, path: &str) -> Result<FileReader> {
        let f = tokio::fs::File::open(path).await.map_err(err(path))?;
        Ok(Box::pin(f))
    }
    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        std::fs::write(path, &data).map_err(err(path))
    }
    async fn create_dir_all(&self, path: &str) -> Result<()> {
        std::fs::create_dir_all(path).map_err(err(path))
    }
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path).map_err(err(path))? {
            let e = e.map_err(err(path))?;
            let m = std::fs::symlink_metadata(e.path()).map_err(err(path))?;
            out.push(DirEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                stat: stat_of(&m),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        if recursive {
            std::fs::remove_dir_all(path).map_err(err(path))
        } else {
            std::fs::remove_file(path).map_err(err(path))
        }
    }
    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        let cma_sandbox::ExecCommand::Shell(cmd) = req.command.clone() else {
            return Err(SandboxError::unsupported("argv"));
        };
        if !self.shell_exec {
            return Err(SandboxError::unsupported("no exec"));
        }
        let child = tokio::process::Command::new("/bin/bash")
            .args(["-c", &cmd])
            .current_dir(&self.workdir)
            .envs(&req.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::new(SandboxErrorKind::Io, e.to_string()))?;
        match tokio::time::timeout(req.timeout, child.wait_with_output()).await {
            Err(_) => Err(SandboxError::new(SandboxErrorKind::Timeout, "timed out")),
            Ok(Err(e)) => Err(SandboxError::new(SandboxErrorKind::Io, e.to_string())),
            Ok(Ok(o)) => {
                let cap = |v: Vec<u8>| {
                    let cut = v.len().saturating_sub(req.max_output_bytes);
                    (cut > 0, Bytes::from(v[cut..].to_vec()))
                };
                let (t1, stdout) = cap(o.stdout);
                let (t2, stderr) = cap(o.stderr);
                Ok(ExecOutput {
                    exit_code: o.status.code(),
                    stdout,
                    stderr,
                    truncated: t1 || t2,
                })
            }
        }
    }
    async fn execute(&self, _req: ExecuteRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported("no js"))
    }
    async fn export_workspace(&self) -> Result<ByteStream> {
        Err(SandboxError::unsupported("no archive"))
    }
    async fn import_workspace(&self, _tar: ByteStream) -> Result<()> {
        Err(SandboxError::unsupported("no archive"))
    }
    async fn status(&self) -> Result<SandboxStatus> {
        Ok(SandboxStatus::Running)
    }
    async fn stop(&self) -> Result<()> {
        Ok(())
    }
}

/// One tool case of the vectors' `tool_results` section, as a check against a posted result.
pub struct ToolCase<'a> {
    pub id: &'a str,
    pub tool: &'a str,
    pub input: &'a Value,
    pub is_error: bool,
    /// The posted content, the `/W` placeholder replaced by the working directory.
    pub content: Value,
}

impl<'a> ToolCase<'a> {
    pub fn new(case: &'a Value, workdir: &str) -> Self {
        Self {
            id: case.req_str("id"),
            tool: case.req_str("tool"),
            input: case.req("input"),
            is_error: case.req_bool("is_error"),
            content: cma_vectors::expand_placeholders(case.req("content"), "/W", workdir),
        }
    }

    /// A mismatch description, or `None` when `got` is what the SDK posted.
    pub fn check(&self, got: &PostedResult) -> Option<String> {
        let got_content = serde_json::to_value(&got.content).unwrap();
        (got.is_error != self.is_error || got_content != self.content).then(|| {
            format!(
                "{}: want is_error={} {}, got is_error={} {got_content}",
                self.id, self.is_error, self.content, got.is_error
            )
        })
    }
}

/// The cases of group `group` of the vectors' `tool_results` section, in the order they ran.
pub fn tool_cases(group: &str) -> &'static [Value] {
    cma_vectors::Vectors::load()
        .section("tool_results")
        .req(group)
        .req_array("cases")
}

/// Compare a shell's output and exit code with an X case: the whole output, or (for long
/// outputs) its head, tail and length in characters.
pub fn check_exec(case: &Value, output: &str, exit_code: i32) -> Vec<String> {
    let id = case.id();
    let mut failures = Vec::new();
    if i64::from(exit_code) != case.req_i64("exit_code") {
        failures.push(format!(
            "{id}: exit {exit_code} != {}",
            case.req("exit_code")
        ));
    }
    match case.opt_str("output") {
        Some(want) if output != want => failures.push(format!("{id}: {output:?} != {want:?}")),
        Some(_) => {}
        None => {
            let (head, tail) = (case.req_str("output_head"), case.req_str("output_tail"));
            let chars = output.chars().count() as u64;
            if !output.starts_with(head)
                || !output.ends_with(tail)
                || chars != case.req_u64("output_chars")
            {
                failures.push(format!(
                    "{id}: {chars} chars, {:?}…",
                    &output[..30.min(output.len())]
                ));
            }
        }
    }
    failures
}

/// Copy a host directory tree (files, directories, symlinks as stored, mtimes) into a memory
/// sandbox at the same absolute paths.
pub fn copy_into_memory(host: &Path, sb: &cma_tools::testing::MemorySandbox) {
    let mut stack = vec![host.to_path_buf()];
    while let Some(dir) = stack.pop() {
        sb.add_dir(dir.to_str().unwrap());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let name = p.to_str().unwrap();
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                sb.add_symlink(name, t.to_str().unwrap());
            } else if m.is_dir() {
                stack.push(p.clone());
            } else {
                sb.add_file(name, std::fs::read(&p).unwrap());
            }
            if !m.file_type().is_symlink() {
                sb.set_mtime(name, m.modified().unwrap());
            }
        }
    }
}
