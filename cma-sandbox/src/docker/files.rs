//! File operations through one long-lived helper process per sandbox (`python3` running
//! `helper.py`, attached through an exec): a JSON request line (plus raw payload) in, a JSON
//! response line (plus raw data) out. One round trip costs a write and a read on the attached
//! connection, with no process start inside the container, so the file tools' many small
//! `lstat`/`read` calls stay sub-millisecond. Requests are serialised per sandbox.
//!
//! The helper runs as the container's user, so it has exactly that user's permissions; every path
//! lives in the container's own mount namespace, so nothing can reach the host.

use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::container::LogOutput;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::process::{self, Started};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::ExecRequest;
use crate::file::{DirEntry, FileKind, FileStat};

/// The helper's source.
const HELPER: &str = include_str!("helper.py");
/// Bound on one helper round trip (a large file read included).
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest response header accepted.
const MAX_HEADER: usize = 64 * 1024 * 1024;

struct Conn {
    started: Started,
    buf: BytesMut,
    pid_split: process::PidSplitter,
}

/// One sandbox's helper connection, started lazily and restarted after a failure.
pub(crate) struct Helper {
    conn: Mutex<Option<Conn>>,
}

/// A successful response: its header and data.
pub(crate) struct Reply {
    pub(crate) head: Value,
    pub(crate) data: Bytes,
}

impl Helper {
    pub(crate) fn new() -> Self {
        Self {
            conn: Mutex::new(None),
        }
    }

    /// Drop the connection (the container stopped); the next call starts a new helper.
    pub(crate) async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    /// Send one request and read its response. `path` names the sandbox path in errors.
    pub(crate) async fn call(
        &self,
        docker: &Docker,
        container: &str,
        path: &str,
        mut req: Value,
        payload: Bytes,
    ) -> Result<Reply> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            *slot = Some(start(docker, container).await?);
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("just set")
        };
        req["n"] = json!(payload.len());
        let mut line = serde_json::to_vec(&req).map_err(|e| {
            SandboxError::new(SandboxErrorKind::InvalidInput, "file request").with_source(e)
        })?;
        line.push(b'\n');
        let io = async {
            conn.started.input.write_all(&line).await.map_err(io_err)?;
            if !payload.is_empty() {
                conn.started
                    .input
                    .write_all(&payload)
                    .await
                    .map_err(io_err)?;
            }
            conn.started.input.flush().await.map_err(io_err)?;
            read_reply(conn).await
        };
        let reply = match tokio::time::timeout(OP_TIMEOUT, io).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                *slot = None;
                return Err(e.with_path(path));
            }
            Err(_) => {
                *slot = None;
                return Err(SandboxError::new(
                    SandboxErrorKind::Timeout,
                    "file operation timed out",
                )
                .with_path(path));
            }
        };
        if let Some(kind) = reply.head.get("e").and_then(Value::as_str) {
            return Err(reply_error(kind, &reply.head, path));
        }
        Ok(reply)
    }
}

async fn start(docker: &Docker, container: &str) -> Result<Conn> {
    let req = ExecRequest::argv(["python3", "-I", "-S", "-c", HELPER]);
    let started = process::start(docker, container, &req, "/", true).await?;
    Ok(Conn {
        started,
        buf: BytesMut::new(),
        pid_split: process::PidSplitter::default(),
    })
}

fn io_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SandboxError {
    SandboxError::new(SandboxErrorKind::Io, "file helper i/o failed").with_source(e)
}

/// Read a header line and its `n` data bytes.
async fn read_reply(conn: &mut Conn) -> Result<Reply> {
    let mut head: Option<(Value, usize)> = None;
    let mut stderr_tail = Vec::new();
    loop {
        if head.is_none()
            && let Some(nl) = conn.buf.iter().position(|&b| b == b'\n')
        {
            let line = conn.buf.split_to(nl + 1);
            let v: Value = serde_json::from_slice(&line[..nl]).map_err(|e| {
                SandboxError::new(SandboxErrorKind::Backend, "file helper sent a bad reply")
                    .with_source(e)
            })?;
            let n = v.get("n").and_then(Value::as_u64).unwrap_or(0) as usize;
            head = Some((v, n));
        }
        if let Some((_, n)) = &head
            && conn.buf.len() >= *n
        {
            let n = *n;
            let data = conn.buf.split_to(n).freeze();
            let (v, _) = head.take().unwrap_or_else(|| unreachable!("checked"));
            return Ok(Reply { head: v, data });
        }
        if head.is_none() && conn.buf.len() > MAX_HEADER {
            return Err(SandboxError::new(
                SandboxErrorKind::Backend,
                "file helper reply header too long",
            ));
        }
        match conn.started.output.next().await {
            Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                conn.buf.extend_from_slice(&message)
            }
            Some(Ok(LogOutput::StdErr { message })) => {
                let (_, rest) = conn.pid_split.feed(message);
                stderr_tail.extend_from_slice(&rest);
                if stderr_tail.len() > 4096 {
                    let cut = stderr_tail.len() - 4096;
                    stderr_tail.drain(..cut);
                }
            }
            Some(Ok(LogOutput::StdIn { .. })) => {}
            Some(Err(e)) => return Err(io_err(e)),
            None => {
                let msg = String::from_utf8_lossy(&stderr_tail);
                let missing = msg.contains("not found") || msg.contains("No such file");
                return Err(if missing {
                    SandboxError::unsupported(
                        "file operations on the docker backend need python3 in the image",
                    )
                } else {
                    SandboxError::new(
                        SandboxErrorKind::Unavailable,
                        format!("file helper exited: {}", msg.trim()),
                    )
                });
            }
        }
    }
}

/// Map an errno from the helper to a kind.
pub(crate) fn errno_kind(errno: i64) -> SandboxErrorKind {
    match errno {
        2 => SandboxErrorKind::NotFound,
        20 => SandboxErrorKind::NotADirectory,
        21 => SandboxErrorKind::IsADirectory,
        1 | 13 | 30 => SandboxErrorKind::PermissionDenied,
        17 => SandboxErrorKind::AlreadyExists,
        39 => SandboxErrorKind::DirectoryNotEmpty,
        40 => SandboxErrorKind::SymlinkLoop,
        22 | 36 => SandboxErrorKind::InvalidInput,
        28 | 122 => SandboxErrorKind::ResourceLimit,
        _ => SandboxErrorKind::Io,
    }
}

fn reply_error(kind: &str, head: &Value, path: &str) -> SandboxError {
    match kind {
        "os" => {
            let errno = head.get("errno").and_then(Value::as_i64).unwrap_or(0);
            let k = errno_kind(errno);
            if k == SandboxErrorKind::Io {
                let msg = head
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("i/o error")
                    .to_lowercase();
                SandboxError::new(k, msg).with_path(path)
            } else {
                SandboxError::at_path(k, path)
            }
        }
        "notreg" => SandboxError::new(SandboxErrorKind::PermissionDenied, "not a regular file")
            .with_path(path),
        "big" => {
            let size = head.get("size").and_then(Value::as_u64).unwrap_or(0);
            SandboxError::too_large(
                path,
                size,
                head.get("max").and_then(Value::as_u64).unwrap_or(0),
            )
        }
        _ => SandboxError::new(
            SandboxErrorKind::Backend,
            head.get("msg")
                .and_then(Value::as_str)
                .unwrap_or("file helper error")
                .to_owned(),
        )
        .with_path(path),
    }
}

/// Parse a stat object (`k`, `s`, `m`).
pub(crate) fn parse_stat(v: &Value) -> FileStat {
    let kind = match v.get("k").and_then(Value::as_str) {
        Some("f") => FileKind::File,
        Some("d") => FileKind::Dir,
        Some("l") => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let modified = v
        .get("m")
        .and_then(Value::as_i64)
        .and_then(|ns| u64::try_from(ns).ok())
        .map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns));
    FileStat {
        kind,
        size: v.get("s").and_then(Value::as_u64).unwrap_or(0),
        modified,
    }
}

/// Parse a `list` reply into sorted entries.
pub(crate) fn parse_entries(head: &Value) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = head
        .get("entries")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(DirEntry {
                        name: e.get("name")?.as_str()?.to_owned(),
                        stat: parse_stat(e),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
