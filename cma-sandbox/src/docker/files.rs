//! File operations through one long-lived helper process per sandbox (`python3` running
//! `helper.py`, attached through an exec): a JSON request line (plus raw payload) in, a JSON
//! response line (plus raw data) out. One round trip costs a write and a read on the attached
//! connection, with no process start inside the container, so the file tools' many small
//! `lstat`/`read` calls stay sub-millisecond. Requests are serialised per sandbox.
//!
//! The helper runs as the container's user, so it has exactly that user's permissions; every path
//! lives in the container's own mount namespace, so nothing can reach the host.
//!
//! # The helper is not trusted
//! An agent that controls its container can replace the helper and answer anything. Every
//! reply is therefore read as a stream against caps fixed by the request before it is sent:
//! the header line is at most [`MAX_HEADER_BYTES`], the data it announces at most what the call
//! allows (a read's own limit, a batch's budget); nothing is allocated from an announced length,
//! a reply that breaks a cap fails the call with [`Backend`](SandboxErrorKind::Backend) and the
//! connection is dropped (the helper process with it). Batches (`readmany`, `findmany`,
//! `listmany`) carry a byte budget: the helper answers `later` for what did not fit and the
//! caller asks again, so one reply stays small whatever the batch holds.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};

use super::reply::Head;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::posix;
use super::process::{self, Started};
use super::results::reply_error;
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::ExecRequest;

/// The helper's source.
const HELPER: &str = include_str!("helper.py");
/// Bound on one helper round trip (a large file read included).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply header line accepted from the helper (a listing of [`MAX_DIR_ENTRIES`]
/// typical names fits).
pub(crate) const MAX_HEADER_BYTES: usize = 12 << 20;
/// Bytes a reply may run past its caps within the frame that crosses them (the Engine's
/// frames are far smaller).
const FRAME_SLACK: usize = 1 << 20;
/// Byte budget of one batch reply (`readmany`, `findmany`, `listmany`): what does not fit is
/// answered `later` and asked for again.
pub(crate) const BATCH_BUDGET: u64 = 2 << 20;
/// Byte budget of a single listing's header: a directory whose listing is larger fails with
/// `TooLarge`, as one of more than [`MAX_DIR_ENTRIES`] entries does.
pub(crate) const LISTING_BUDGET: u64 = (MAX_HEADER_BYTES - (1 << 20)) as u64;
/// Most entries one directory listing returns before failing with `TooLarge` (as the isolate
/// backend's `MAX_DIR_ENTRIES`).
pub(crate) const MAX_DIR_ENTRIES: usize = 100_000;

struct Conn {
    started: Started,
    buf: BytesMut,
    pid_split: process::PidSplitter,
    /// A request was sent and its reply not read to its end (the caller went away): what
    /// comes next on the connection belongs to that request, so it is not used again.
    busy: bool,
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
    pub(crate) head: Head,
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

    /// Send one request and read its response. `path` names the sandbox path in errors;
    /// `max_data` is the most data bytes the reply may carry after its header (see the module
    /// docs).
    pub(crate) async fn call(
        &self,
        docker: &Docker,
        container: &str,
        path: &str,
        mut req: Value,
        payload: Bytes,
        max_data: u64,
    ) -> Result<Reply> {
        use std::sync::atomic::Ordering;
        if self.shell_only.load(Ordering::Acquire) {
            return finish(
                posix::shell_call(docker, container, &req, payload, max_data).await?,
                path,
            );
        }
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.busy) {
            // An abandoned call's reply may still arrive: start over with a new helper.
            *slot = None;
        }
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
        conn.busy = true;
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
            read_reply(conn, max_data).await
        };
        let reply = match tokio::time::timeout(OP_TIMEOUT, io).await {
            Ok(Ok(r)) => {
                conn.busy = false;
                r
            }
            Ok(Err(e)) if e.kind() == SandboxErrorKind::Unsupported => {
                // No python3 in the image: fall back to one exec per operation, for good.
                *slot = None;
                drop(slot);
                self.shell_only.store(true, Ordering::Release);
                req.as_object_mut().map(|o| o.remove("n"));
                return finish(
                    posix::shell_call(docker, container, &req, payload, max_data).await?,
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
    if let Some(kind) = &reply.head.e {
        return Err(reply_error(kind, &reply.head, path));
    }
    Ok(reply)
}

async fn start(docker: &Docker, container: &str) -> Result<Conn> {
    let req = ExecRequest::argv(["python3", "-I", "-S", "-c", HELPER]);
    let started = process::start(docker, container, &req, "/", true).await?;
    Ok(Conn {
        started,
        buf: BytesMut::new(),
        pid_split: process::PidSplitter::default(),
        busy: false,
    })
}

fn io_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SandboxError {
    SandboxError::new(SandboxErrorKind::Io, "file helper i/o failed").with_source(e)
}

fn bad_reply(why: String) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Backend,
        format!("file helper sent a bad reply: {why}"),
    )
}

/// Read a header line and its `n` data bytes, as they arrive: the header may not pass
/// [`MAX_HEADER_BYTES`] and `n` not `max_data`, checked before anything is kept for them.
async fn read_reply(conn: &mut Conn, max_data: u64) -> Result<Reply> {
    let mut head: Option<(Head, usize)> = None;
    let mut stderr_tail = Vec::new();
    // Where the search for the header's newline goes on (bytes before it were searched).
    let mut searched = 0usize;
    loop {
        if head.is_none() {
            if let Some(nl) = conn.buf[searched..].iter().position(|&b| b == b'\n') {
                let nl = searched + nl;
                let line = conn.buf.split_to(nl + 1);
                searched = 0;
                let v: Head = serde_json::from_slice(&line[..nl]).map_err(|e| {
                    bad_reply("its header is not a valid reply".into()).with_source(e)
                })?;
                let n = v.n;
                if n > max_data {
                    return Err(bad_reply(format!(
                        "it announced {n} data bytes, more than the {max_data} this call allows"
                    )));
                }
                // `n <= max_data`, and the caller's cap is a size it can hold.
                let n = usize::try_from(n)
                    .map_err(|_| bad_reply(format!("{n} data bytes cannot be held")))?;
                head = Some((v, n));
            } else {
                searched = conn.buf.len();
            }
        }
        if let Some((_, n)) = &head
            && conn.buf.len() >= *n
        {
            let n = *n;
            let data = conn.buf.split_to(n).freeze();
            let (v, _) = head.take().unwrap_or_else(|| unreachable!("checked"));
            return Ok(Reply { head: v, data });
        }
        match conn.started.output.next().await {
            Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                // Never more than the header cap (no header yet) or the announced length, plus
                // one frame: a helper that keeps sending is cut off here, not buffered.
                let limit = match &head {
                    None => MAX_HEADER_BYTES,
                    Some((_, n)) => *n,
                };
                if conn.buf.len().saturating_add(message.len()) > limit.saturating_add(FRAME_SLACK)
                {
                    return Err(bad_reply(match head {
                        None => format!("its header is longer than {MAX_HEADER_BYTES} bytes"),
                        Some(_) => "it sent more than it announced".into(),
                    }));
                }
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
