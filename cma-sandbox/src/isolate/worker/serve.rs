//! The backend's side of one script: check out a worker, set its limits, send the script,
//! answer its `fs.*` and `fetch` calls from the sandbox, and end it at the deadline.
//!
//! The deadline is enforced here, not in the worker: past `timeout` (plus [`KILL_GRACE`], the
//! time a script that polls its interrupt handler gets to report its own timeout) the worker is
//! killed and reaped, and the call fails with [`Timeout`](SandboxErrorKind::Timeout). Dropping
//! the future kills the worker the same way (the lease's destructor). Nothing the worker sends
//! is trusted: frames are capped (per script, by what its heap could hold), messages are
//! decoded strictly, output is cut to the request's cap, and any violation kills the worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::process::Signal;
use tokio::net::UnixStream;

use super::MAX_SCRIPT_BYTES;
use super::child::EXIT_ENGINE;
use super::ipc::{
    Call, FRAME_OVERHEAD, FromWorker, Job, MAX_FRAME_BYTES, Outcome, Reply, StatReply, ToWorker,
    read_frame_async,
};
use super::limits::{ADDRESS_SPACE_MARGIN, Usage, address_space_limit, set_script_limits, usage};
use super::pool::{CheckoutError, Lease, Pool};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{ExecOutput, ExecuteRequest};
use crate::file::FileKind;
use crate::isolate::egress::{EgressHook, FetchRequest};
use crate::isolate::js::MAX_SCRIPT_READ_BYTES;
use crate::isolate::workspace::{Workspace, read_bounded};
use crate::isolate::{INLINE_IO_BYTES, blocking};
use crate::spec::SandboxId;

/// Time past the deadline a script gets to report its own (interrupt) timeout before its worker
/// is killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_millis(50);
/// How long the backend waits for a killed or vanished worker to exit before leaving the reaping
/// to the supervisor thread.
const REAP_WAIT: Duration = Duration::from_millis(500);
/// A deadline this far away stands for "none" (`Instant` cannot hold any duration).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a script's calls reach.
struct Target<'a> {
    sandbox: &'a SandboxId,
    ws: &'a Arc<Workspace>,
    egress: &'a Arc<dyn EgressHook>,
    read_cap: u64,
    deadline: Instant,
}

/// Why a conversation with a worker ended without an outcome.
enum Lost {
    /// The socket failed or closed: the worker died.
    Gone,
    /// The worker sent something outside the protocol.
    Protocol,
}

fn timed_out(req: &ExecuteRequest) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Timeout,
        format!("script timed out after {:?}", req.timeout),
    )
}

fn out_of_memory(req: &ExecuteRequest) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::ResourceLimit,
        format!(
            "script exceeded its memory limit of {} bytes",
            req.memory_limit
        ),
    )
}

fn backend(context: &str) -> SandboxError {
    SandboxError::new(SandboxErrorKind::Backend, context.to_string())
}

/// Run `req` for `sandbox` in one of `pool`'s workers.
pub(crate) async fn execute(
    pool: &Pool,
    sandbox: &SandboxId,
    ws: &Arc<Workspace>,
    egress: &Arc<dyn EgressHook>,
    mut req: ExecuteRequest,
) -> Result<ExecOutput> {
    if req.code.len() > MAX_SCRIPT_BYTES {
        return Err(SandboxError::new(
            SandboxErrorKind::InvalidInput,
            format!(
                "the script is {} bytes, over the {MAX_SCRIPT_BYTES}-byte limit",
                req.code.len()
            ),
        ));
    }
    let start = Instant::now();
    let deadline = start
        .checked_add(req.timeout)
        .unwrap_or_else(|| start + FAR_FUTURE);
    let kill_at = deadline.checked_add(KILL_GRACE).unwrap_or(deadline);
    let checkout = || async {
        match pool
            .checkout(sandbox, tokio::time::Instant::from_std(deadline))
            .await
        {
            Ok(l) => Ok(l),
            Err(CheckoutError::Deadline) => Err(timed_out(&req)),
            Err(CheckoutError::Failed(e)) => Err(e),
        }
    };
    let mut lease = checkout().await?;
    let mut used = usage(lease.proc.pid());
    // A reused worker whose address space did not shrink back (allocator fragmentation) is
    // retired rather than squeezed: the next worker is a fresh one.
    let grown = |lease: &Lease, used: Option<Usage>| {
        lease.runs > 1
            && used
                .is_some_and(|u| u.vm_bytes > lease.vm_bytes.saturating_add(ADDRESS_SPACE_MARGIN))
    };
    if grown(&lease, used) {
        drop(lease);
        lease = checkout().await?;
        used = usage(lease.proc.pid());
    }
    let memory_limit = req.memory_limit as u64;
    set_script_limits(
        lease.proc.pid(),
        used,
        Some(address_space_limit(lease.vm_bytes, memory_limit)),
        req.timeout,
    )
    .map_err(|e| backend("cannot set the worker's limits").with_source(e))?;
    let max_output = req.max_output_bytes;
    let job = Job {
        // Moved, not copied: it may be megabytes. The errors below use only the limits.
        code: std::mem::take(&mut req.code),
        timeout: req.timeout,
        memory_limit,
        max_output_bytes: max_output as u64,
    };
    // The largest frame a script could legitimately send: a string its heap can hold (UTF-8 of
    // UTF-16 text is at most 1.5x), or its two output streams.
    let frame_cap = memory_limit
        .saturating_mul(2)
        .saturating_add((max_output as u64).saturating_mul(2))
        .saturating_add(FRAME_OVERHEAD as u64)
        .min(MAX_FRAME_BYTES as u64) as usize;
    let target = Target {
        sandbox,
        ws,
        egress,
        read_cap: memory_limit.min(MAX_SCRIPT_READ_BYTES),
        deadline,
    };
    let talk = converse(&mut lease.sock, &job, &target, frame_cap);
    let ended = tokio::time::timeout_at(tokio::time::Instant::from_std(kill_at), talk).await;
    match ended {
        Err(_) => {
            lease.proc.kill();
            lease.proc.reap(REAP_WAIT).await;
            Err(timed_out(&req))
        }
        Ok(Err(Lost::Protocol)) => {
            lease.proc.kill();
            lease.proc.reap(REAP_WAIT).await;
            Err(backend(
                "the script's worker broke the protocol and was stopped",
            ))
        }
        Ok(Err(Lost::Gone)) => Err(died(&mut lease, &req).await),
        Ok(Ok(outcome)) => match outcome {
            Outcome::Finished {
                exit_code,
                mut stdout,
                mut stderr,
                mut truncated,
            } => {
                for buf in [&mut stdout, &mut stderr] {
                    if buf.len() > max_output {
                        buf.truncate(max_output);
                        truncated = true;
                    }
                }
                pool.give_back(lease, sandbox);
                Ok(ExecOutput {
                    exit_code: Some(exit_code),
                    stdout: Bytes::from(stdout),
                    stderr: Bytes::from(stderr),
                    truncated,
                })
            }
            Outcome::Timeout => {
                pool.give_back(lease, sandbox);
                Err(timed_out(&req))
            }
            // Not reused: its heap may be fragmented, its engine in a bad state.
            Outcome::OutOfMemory => Err(out_of_memory(&req)),
            Outcome::Engine(why) => Err(backend("JavaScript engine failure").with_source(why)),
        },
    }
}

/// The worker went away mid-script: say why, from how it ended.
async fn died(lease: &mut Lease, req: &ExecuteRequest) -> SandboxError {
    let status = lease.proc.reap(REAP_WAIT).await;
    let signal = status.as_ref().and_then(|s| s.terminating_signal());
    let code = status.as_ref().and_then(|s| s.exit_status());
    let sig = |s: Signal| Some(s.as_raw());
    if signal == sig(Signal::XCPU) {
        return timed_out(req);
    }
    // Out of address space outside the JS heap: Rust code aborts; the engine cannot start.
    if signal == sig(Signal::ABORT) || signal == sig(Signal::KILL) || code == Some(EXIT_ENGINE) {
        let mut e = out_of_memory(req);
        e = SandboxError::new(
            e.kind(),
            format!("{} (its worker ran out of memory)", e.context()),
        );
        return e;
    }
    if signal == sig(Signal::SYS) {
        return backend("the script's worker made a forbidden system call and was stopped");
    }
    match (signal, code) {
        (Some(s), _) => backend(&format!("the script's worker died (signal {s})")),
        (None, Some(c)) => backend(&format!("the script's worker exited (code {c})")),
        (None, None) => backend("the script's worker stopped answering"),
    }
}

/// Write all of `frame`. With `MSG_NOSIGNAL`: a worker that died mid-write must cost an error,
/// not `SIGPIPE` (fatal to a host that does not ignore it).
async fn send_all(sock: &UnixStream, mut frame: &[u8]) -> std::io::Result<()> {
    use rustix::net::{SendFlags, send};
    while !frame.is_empty() {
        let n = sock
            .async_io(tokio::io::Interest::WRITABLE, || {
                send(sock, frame, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).map_err(Into::into)
            })
            .await?;
        frame = &frame[n..];
    }
    Ok(())
}

/// Send the job, then answer calls until the worker reports how the script ended.
async fn converse(
    sock: &mut UnixStream,
    job: &Job,
    target: &Target<'_>,
    frame_cap: usize,
) -> std::result::Result<Outcome, Lost> {
    let frame = ToWorker::Run(job.clone())
        .encode(MAX_FRAME_BYTES)
        .map_err(|_| Lost::Protocol)?;
    send_all(sock, &frame).await.map_err(|_| Lost::Gone)?;
    loop {
        let payload = match read_frame_async(sock, frame_cap).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Lost::Gone),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(Lost::Protocol),
            Err(_) => return Err(Lost::Gone),
        };
        match FromWorker::decode(&payload).map_err(|_| Lost::Protocol)? {
            FromWorker::Done(outcome) => return Ok(outcome),
            FromWorker::Hello(_) => return Err(Lost::Protocol),
            FromWorker::Call(call) => {
                let reply = answer(target, call).await;
                let frame = ToWorker::Reply(reply)
                    .encode(MAX_FRAME_BYTES)
                    .or_else(|_| {
                        ToWorker::Reply(Reply::Error(
                            "execute: the answer is too large for the script".into(),
                        ))
                        .encode(MAX_FRAME_BYTES)
                    })
                    .map_err(|_| Lost::Protocol)?;
                send_all(sock, &frame).await.map_err(|_| Lost::Gone)?;
            }
        }
    }
}

/// One workspace operation answering a call, run inline or on the blocking pool.
type WorkspaceOp = Box<dyn FnOnce(&Workspace) -> Result<Reply> + Send>;

fn kind_code(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::Other => 3,
    }
}

/// Answer one call from the sandbox, following the backend's rule for what runs inline (a few
/// system calls, no quota lock) and what goes to the blocking pool.
async fn answer(t: &Target<'_>, call: Call) -> Reply {
    let ws = t.ws;
    let quota = ws.has_quota();
    let run = |f: WorkspaceOp, inline: bool| {
        let ws = ws.clone();
        async move {
            if inline {
                f(&ws)
            } else {
                blocking(move || f(&ws)).await
            }
        }
    };
    let result = match call {
        Call::ReadFile { path } => {
            let cap = t.read_cap;
            let given = path.clone();
            let utf8 = move |bytes: Bytes| {
                String::from_utf8(bytes.to_vec())
                    .map(Reply::Text)
                    .map_err(|_| {
                        SandboxError::new(
                            SandboxErrorKind::InvalidInput,
                            format!("{given}: not valid UTF-8 text"),
                        )
                    })
            };
            match ws.open_regular(&path) {
                Err(e) => Err(e),
                Ok((file, size, shown)) if size <= INLINE_IO_BYTES => {
                    read_bounded(file, size, Some(cap), &shown).and_then(utf8)
                }
                Ok((file, _, shown)) => {
                    // Large: read on the blocking pool (through the workspace again, which
                    // re-checks the path; the handle opened here only measured it).
                    drop(file);
                    let read = move |ws: &Workspace| ws.read_file(&shown, Some(cap)).and_then(utf8);
                    run(Box::new(read), false).await
                }
            }
        }
        Call::WriteFile { path, text } => {
            let inline = text.len() as u64 <= INLINE_IO_BYTES && !quota;
            let f =
                move |ws: &Workspace| ws.write_file(&path, text.as_bytes()).map(|()| Reply::Unit);
            run(Box::new(f), inline).await
        }
        Call::ReadDir { path } => {
            let f = move |ws: &Workspace| {
                ws.read_dir(&path)
                    .map(|v| Reply::Names(v.into_iter().map(|e| e.name).collect()))
            };
            run(Box::new(f), false).await
        }
        Call::Exists { path } => match ws.stat(&path) {
            Ok(_) => Ok(Reply::Bool(true)),
            Err(e) if e.kind() == SandboxErrorKind::NotFound => Ok(Reply::Bool(false)),
            Err(e) => Err(e),
        },
        Call::Stat { path, follow } => if follow {
            ws.stat(&path)
        } else {
            ws.lstat(&path)
        }
        .map(|st| {
            Reply::Stat(StatReply {
                kind: kind_code(st.kind),
                size: st.size,
                mtime_ms: st
                    .modified
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as f64),
            })
        }),
        Call::Mkdir { path } => {
            let f = move |ws: &Workspace| ws.create_dir_all(&path).map(|()| Reply::Unit);
            run(Box::new(f), !quota).await
        }
        Call::Remove { path, recursive } => {
            let f = move |ws: &Workspace| ws.remove(&path, recursive).map(|()| Reply::Unit);
            run(Box::new(f), !recursive && !quota).await
        }
        Call::Symlink { target, path } => {
            let f = move |ws: &Workspace| ws.symlink(&target, &path).map(|()| Reply::Unit);
            run(Box::new(f), !quota).await
        }
        Call::ReadLink { path } => ws.read_link(&path).map(Reply::Text),
        Call::Fetch {
            url,
            method,
            body,
            headers,
        } => {
            let request = FetchRequest {
                sandbox: t.sandbox.clone(),
                url,
                method,
                headers,
                body: body.map(Bytes::from),
                timeout: t.deadline.saturating_duration_since(Instant::now()),
            };
            let egress = t.egress.clone();
            let fetched = blocking(move || Ok(egress.fetch(request))).await;
            return match fetched {
                Ok(Ok(resp)) => Reply::Fetch {
                    status: resp.status,
                    headers: resp.headers,
                    body: String::from_utf8_lossy(&resp.body).into_owned(),
                },
                Ok(Err(e)) => Reply::Error(e.message),
                Err(e) => Reply::Error(e.to_string()),
            };
        }
    };
    result.unwrap_or_else(|e| Reply::Error(e.to_string()))
}
