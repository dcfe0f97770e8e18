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

use super::posix;
use super::process::{self, Started};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::ExecRequest;
use crate::file::{DirEntry, FileKind, FileStat};

/// The helper's source.
const HELPER: &str = include_str!("helper.py");
/// Bound on one helper round trip (a large file read included).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest response header accepted.
const MAX_HEADER: usize = 64 * 1024 * 1024;

struct Conn {
    started: Started,
    buf: BytesMut,
    pid_split: process::PidSplitter,
}

/// One sandbox's helper connection, started lazily and restarted after a failure. When the image
/// has no `python3` (or the helper is disabled), every operation runs as a one-shot exec of
/// POSIX tools instead ([`posix::shell_call`]): slower (one process start per operation), same results.
pub(crate) struct Helper {
    conn: Mutex<Option<Conn>>,
    shell_only: std::sync::atomic::AtomicBool,
}

/// A successful response: its header and data.
pub(crate) struct Reply {
    pub(crate) head: Value,
    pub(crate) data: Bytes,
}

impl Helper {
    pub(crate) fn new(use_python: bool) -> Self {
        Self {
            conn: Mutex::new(None),
            shell_only: std::sync::atomic::AtomicBool::new(!use_python),
        }
    }

    /// Whether operations run as one-shot execs of POSIX tools (no `python3` helper).
    pub(crate) fn is_shell_only(&self) -> bool {
        self.shell_only.load(std::sync::atomic::Ordering::Acquire)
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
        use std::sync::atomic::Ordering;
        if self.shell_only.load(Ordering::Acquire) {
            return finish(
                posix::shell_call(docker, container, &req, payload).await?,
                path,
            );
        }
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            match start(docker, container).await {
                Ok(c) => *slot = Some(c),
                Err(e) => return Err(e),
            }
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
            Ok(Err(e)) if e.kind() == SandboxErrorKind::Unsupported => {
                // No python3 in the image: fall back to one exec per operation, for good.
                *slot = None;
                drop(slot);
                self.shell_only.store(true, Ordering::Release);
                req.as_object_mut().map(|o| o.remove("n"));
                return finish(
                    posix::shell_call(docker, container, &req, payload).await?,
                    path,
                );
            }
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
        finish(reply, path)
    }
}

fn finish(reply: Reply, path: &str) -> Result<Reply> {
    if let Some(kind) = reply.head.get("e").and_then(Value::as_str) {
        return Err(reply_error(kind, &reply.head, path));
    }
    Ok(reply)
}

/// The time `ns` nanoseconds after (negative: before) the Unix epoch.
pub(crate) fn time_from_ns(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
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
        28 => SandboxErrorKind::StorageFull,
        122 => SandboxErrorKind::QuotaExceeded,
        27 => SandboxErrorKind::ResourceLimit,
        _ => SandboxErrorKind::Io,
    }
}

pub(crate) fn reply_error(kind: &str, head: &Value, path: &str) -> SandboxError {
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
        "timeout" => {
            SandboxError::new(SandboxErrorKind::Timeout, "search timed out").with_path(path)
        }
        "notreg" => SandboxError::new(SandboxErrorKind::PermissionDenied, "not a regular file")
            .with_path(path),
        "deep" => SandboxError::new(SandboxErrorKind::TooLarge, "directory nesting too deep")
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
    let modified = v.get("m").and_then(Value::as_i64).map(time_from_ns);
    FileStat {
        kind,
        size: v.get("s").and_then(Value::as_u64).unwrap_or(0),
        modified,
    }
}

/// Parse a `list` reply into entries, sorted by name or (`sorted` false) in the order the
/// helper listed them (`readdir`'s).
pub(crate) fn parse_entries(head: &Value, sorted: bool) -> Vec<DirEntry> {
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
    if sorted {
        out.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// The per-path results of a batch reply: each requested path gets `each(head, path)` of its
/// head in order, unless it could not be resolved (`abs`: such paths were not sent), the helper
/// reported an error for it, or the reply has too few heads.
fn per_path<T>(
    reply: &Reply,
    paths: &[String],
    abs: Vec<Result<String>>,
    mut each: impl FnMut(&Value, &str) -> Result<T>,
) -> Vec<Result<T>> {
    let heads = reply
        .head
        .get("r")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut heads = heads.iter();
    paths
        .iter()
        .zip(abs)
        .map(|(path, a)| {
            a?;
            let Some(h) = heads.next() else {
                return Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    "file helper sent too few results",
                )
                .with_path(path));
            };
            if let Some(kind) = h.get("e").and_then(Value::as_str) {
                return Err(reply_error(kind, h, path));
            }
            each(h, path)
        })
        .collect()
}

fn short_batch(path: &str) -> SandboxError {
    SandboxError::new(SandboxErrorKind::Backend, "file helper sent a short batch").with_path(path)
}

/// Split a `readmany` reply into one result per requested path. `abs` holds each path's
/// resolved form (or why it could not be resolved: such paths were not sent).
pub(crate) fn split_many(
    reply: &Reply,
    paths: &[String],
    abs: Vec<Result<String>>,
) -> Vec<Result<Bytes>> {
    let mut off = 0usize;
    per_path(reply, paths, abs, |h, path| {
        let len = h.get("l").and_then(Value::as_u64).unwrap_or(0) as usize;
        let end = off.saturating_add(len);
        if end > reply.data.len() {
            return Err(short_batch(path));
        }
        let data = reply.data.slice(off..end);
        off = end;
        Ok(data)
    })
}

/// Split a `listmany` reply into one listing per requested path (see [`split_many`]), each
/// sorted by name or in `readdir` order.
pub(crate) fn split_dirs(
    reply: &Reply,
    paths: &[String],
    abs: Vec<Result<String>>,
    sorted: bool,
) -> Vec<Result<Vec<DirEntry>>> {
    per_path(reply, paths, abs, |h, _| Ok(parse_entries(h, sorted)))
}

/// Split a `findmany` reply into one result per requested path (see [`split_many`]).
pub(crate) fn split_found(
    reply: &Reply,
    paths: &[String],
    abs: Vec<Result<String>>,
) -> Vec<Result<crate::file::FoundLines>> {
    use crate::file::{FoundLines, LineMatch};
    let mut off = 0usize;
    per_path(reply, paths, abs, |h, path| {
        let mut found = FoundLines::default();
        if h.get("b").is_some() {
            found.binary = true;
            return Ok(found);
        }
        for m in h.get("m").and_then(Value::as_array).into_iter().flatten() {
            let n = |i: usize| m.get(i).and_then(Value::as_u64).unwrap_or(0);
            let kept = n(3) as usize;
            let end = off.saturating_add(kept);
            if end > reply.data.len() {
                return Err(short_batch(path));
            }
            found.lines.push(LineMatch {
                number: n(0),
                len: n(1),
                terminated: n(2) == 1,
                text: reply.data.slice(off..end),
            });
            off = end;
        }
        Ok(found)
    })
}

/// Parse a `findtree` reply.
pub(crate) fn parse_tree(reply: &Reply, root: &str) -> Result<crate::file::TreeFound> {
    use crate::file::{FoundLines, LineMatch, TreeFound, TreeMatch};
    let short = || {
        SandboxError::new(SandboxErrorKind::Backend, "file helper sent a short reply")
            .with_path(root)
    };
    let mut out = TreeFound {
        items: Vec::new(),
        complete: reply.head.get("done").and_then(Value::as_u64) == Some(1),
        files_seen: reply.head.get("seen").and_then(Value::as_u64).unwrap_or(0) as usize,
    };
    let mut off = 0usize;
    for item in reply
        .head
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = item
            .get("p")
            .and_then(Value::as_str)
            .ok_or_else(short)?
            .to_owned();
        if item.get("big").is_some() {
            out.items.push(TreeMatch::Large { path });
            continue;
        }
        if let Some(len) = item.get("c").and_then(Value::as_u64) {
            let end = off.saturating_add(len as usize);
            if end > reply.data.len() {
                return Err(short());
            }
            out.items.push(TreeMatch::Contents {
                path,
                data: reply.data.slice(off..end),
            });
            off = end;
            continue;
        }
        let mut found = FoundLines::default();
        for m in item
            .get("m")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = |i: usize| m.get(i).and_then(Value::as_u64).unwrap_or(0);
            let end = off.saturating_add(n(3) as usize);
            if end > reply.data.len() {
                return Err(short());
            }
            found.lines.push(LineMatch {
                number: n(0),
                len: n(1),
                terminated: n(2) == 1,
                text: reply.data.slice(off..end),
            });
            off = end;
        }
        out.items.push(TreeMatch::Lines { path, found });
    }
    Ok(out)
}
