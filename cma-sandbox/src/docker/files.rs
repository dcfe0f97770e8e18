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

/// One sandbox's helper connection, started lazily and restarted after a failure. When the image
/// has no `python3` (or the helper is disabled), every operation runs as a one-shot exec of
/// POSIX tools instead ([`shell_call`]): slower (one process start per operation), same results.
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
            return finish(shell_call(docker, container, &req, payload).await?, path);
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
                return finish(shell_call(docker, container, &req, payload).await?, path);
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

/// The errno named by a tool's error message (`cat: x: No such file or directory`).
fn errno_of(stderr: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(stderr);
    [
        ("No such file or directory", 2),
        ("Not a directory", 20),
        ("Is a directory", 21),
        ("Permission denied", 13),
        ("Operation not permitted", 1),
        ("File exists", 17),
        ("Directory not empty", 39),
        ("Too many levels of symbolic links", 40),
        ("Read-only file system", 30),
        ("No space left on device", 28),
        ("File name too long", 36),
    ]
    .iter()
    .find(|(m, _)| text.contains(m))
    .map_or(5, |(_, e)| *e)
}

async fn sh(
    docker: &Docker,
    container: &str,
    script: &str,
    args: &[&str],
    stdin: Option<Bytes>,
    cap: usize,
) -> Result<crate::exec::ExecOutput> {
    let mut argv = vec!["/bin/sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    let mut req = ExecRequest::argv(argv);
    req.stdin = stdin;
    req.timeout = OP_TIMEOUT;
    req.max_output_bytes = cap;
    process::run(docker, container, req, "/").await
}

fn os_err(out: &crate::exec::ExecOutput) -> Reply {
    Reply {
        head: json!({"e": "os", "errno": errno_of(&out.stderr), "msg": String::from_utf8_lossy(&out.stderr).trim().to_owned()}),
        data: Bytes::new(),
    }
}

fn ok(head: Value) -> Reply {
    Reply {
        head,
        data: Bytes::new(),
    }
}

/// Parse `stat -c '%F|%s|%Y'` output.
fn parse_stat_line(line: &str) -> Value {
    let mut it = line.rsplitn(3, '|');
    let (m, s, f) = (it.next(), it.next(), it.next());
    let k = match f.unwrap_or("") {
        "regular file" | "regular empty file" => "f",
        "directory" => "d",
        "symbolic link" => "l",
        _ => "o",
    };
    let secs: i64 = m.and_then(|m| m.trim().parse().ok()).unwrap_or(0);
    json!({"k": k, "s": s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0), "m": secs.saturating_mul(1_000_000_000)})
}

/// One helper request served by POSIX tools in a one-shot exec.
async fn shell_call(
    docker: &Docker,
    container: &str,
    req: &Value,
    payload: Bytes,
) -> Result<Reply> {
    let op = req.get("op").and_then(Value::as_str).unwrap_or("");
    let p = req.get("p").and_then(Value::as_str).unwrap_or("/");
    const SMALL: usize = 1 << 20;
    match op {
        "stat" => {
            let script = if req.get("f").and_then(Value::as_bool) == Some(true) {
                "exec stat -L -c '%F|%s|%Y' -- \"$1\""
            } else {
                "exec stat -c '%F|%s|%Y' -- \"$1\""
            };
            let out = sh(docker, container, script, &[p], None, SMALL).await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(parse_stat_line(
                String::from_utf8_lossy(&out.stdout).trim(),
            )))
        }
        "readlink" => {
            let out = sh(
                docker,
                container,
                "exec readlink -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !out.success() {
                let mut r = os_err(&out);
                if out.stderr.is_empty() {
                    r.head = json!({"e": "os", "errno": 22});
                }
                return Ok(r);
            }
            let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
            if t.ends_with('\n') {
                t.pop();
            }
            Ok(ok(json!({"t": t})))
        }
        "read" => {
            let st = sh(
                docker,
                container,
                "exec stat -L -c '%F|%s|%Y' -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !st.success() {
                return Ok(os_err(&st));
            }
            let head = parse_stat_line(String::from_utf8_lossy(&st.stdout).trim());
            match head.get("k").and_then(Value::as_str) {
                Some("d") => return Ok(ok(json!({"e": "os", "errno": 21}))),
                Some("f") => {}
                _ => return Ok(ok(json!({"e": "notreg"}))),
            }
            let size = head.get("s").and_then(Value::as_u64).unwrap_or(0);
            if let Some(max) = req.get("max").and_then(Value::as_u64)
                && size > max
            {
                return Ok(ok(json!({"e": "big", "size": size, "max": max})));
            }
            let off = req.get("off").and_then(Value::as_u64).unwrap_or(0);
            let len = req.get("len").and_then(Value::as_u64);
            let cap = usize::try_from(len.unwrap_or(size).saturating_add(1)).unwrap_or(usize::MAX);
            let out = match len {
                None => sh(docker, container, "exec cat -- \"$1\"", &[p], None, cap).await?,
                Some(l) => {
                    let (off, l) = (off.to_string(), l.to_string());
                    sh(
                        docker,
                        container,
                        "exec tail -c +$(($2 + 1)) -- \"$1\" | head -c \"$3\"",
                        &[p, &off, &l],
                        None,
                        cap,
                    )
                    .await?
                }
            };
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(Reply {
                head: json!({"size": size}),
                data: out.stdout,
            })
        }
        "write" => {
            let out = sh(
                docker,
                container,
                "d=$(dirname -- \"$1\")\n\
                 if [ -e \"$d\" ] && [ ! -d \"$d\" ]; then echo 'Not a directory' >&2; exit 1; fi\n\
                 [ -d \"$d\" ] || mkdir -p -- \"$d\" || exit 1\n\
                 if [ -d \"$1\" ]; then echo 'Is a directory' >&2; exit 1; fi\n\
                 exec cat > \"$1\"",
                &[p],
                Some(payload),
                SMALL,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "mkdirs" => {
            let out = sh(
                docker,
                container,
                "exec mkdir -p -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "list" => {
            let out = sh(
                docker,
                container,
                "[ -d \"$1\" ] || { [ -e \"$1\" ] && echo 'Not a directory' >&2 || echo 'No such file or directory' >&2; exit 1; }; exec find \"$1\" -mindepth 1 -maxdepth 1 -printf '%f\\0%y\\0%s\\0%T@\\0'",
                &[p],
                None,
                64 << 20,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            let fields: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
            let entries: Vec<Value> = fields
                .chunks(4)
                .filter(|c| c.len() == 4)
                .map(|c| {
                    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    let k = match &s(c[1])[..] {
                        "f" => "f",
                        "d" => "d",
                        "l" => "l",
                        _ => "o",
                    };
                    let secs: f64 = s(c[3]).parse().unwrap_or(0.0);
                    json!({"name": s(c[0]), "k": k, "s": s(c[2]).parse::<u64>().unwrap_or(0), "m": (secs * 1e9) as i64})
                })
                .collect();
            Ok(ok(json!({"entries": entries})))
        }
        "remove" => {
            let script = if req.get("r").and_then(Value::as_bool) == Some(true) {
                "[ -e \"$1\" ] || [ -L \"$1\" ] || { echo 'No such file or directory' >&2; exit 1; }; exec rm -rf -- \"$1\""
            } else {
                "if [ -d \"$1\" ] && [ ! -L \"$1\" ]; then exec rmdir -- \"$1\"; else exec rm -- \"$1\"; fi"
            };
            let out = sh(docker, container, script, &[p], None, SMALL).await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "id" => {
            let out = sh(
                docker,
                container,
                "echo $(id -u) $(id -g)",
                &[],
                None,
                SMALL,
            )
            .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text
                .split_whitespace()
                .map(|x| x.parse::<u64>().unwrap_or(0));
            Ok(ok(
                json!({"uid": it.next().unwrap_or(0), "gid": it.next().unwrap_or(0)}),
            ))
        }
        _ => Ok(ok(json!({"e": "other", "msg": "unknown op"}))),
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

/// Split a `listmany` reply into one listing per requested path (see [`split_many`]).
pub(crate) fn split_dirs(
    reply: &Reply,
    paths: &[String],
    abs: Vec<Result<String>>,
) -> Vec<Result<Vec<DirEntry>>> {
    per_path(reply, paths, abs, |h, _| Ok(parse_entries(h)))
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
