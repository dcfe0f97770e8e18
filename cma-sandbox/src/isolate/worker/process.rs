//! Worker processes from the backend's side: starting one, killing it, reaping it.
//!
//! Every worker is started by one long-lived thread of this process (the *supervisor*), for two
//! reasons: `PR_SET_PDEATHSIG` fires when the *thread* that started a process ends, not the
//! process (a worker started from a short-lived blocking-pool thread would be killed when that
//! thread idles out); and `fork`+`exec` blocks for a while, which must not happen on an async
//! runtime's threads. The same thread reaps killed workers, so none stays a zombie even when the
//! future that owned it was dropped or its runtime is gone.
//!
//! A worker is addressed through a pidfd, never its pid, for signals and reaping: no race with
//! pid reuse, and no interference with anything else in the process that waits for children.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus, pidfd_open, pidfd_send_signal,
    waitid,
};
use tokio::sync::oneshot;

use super::entry::{WORKER_ENV, anchor};

/// Name a worker shows in `ps`.
const WORKER_ARGV0: &str = "cma-sandbox-worker";
/// How often a task waiting for a worker to exit looks again.
const REAP_STEP: Duration = Duration::from_millis(2);
/// How often the supervisor looks again at killed workers that have not exited yet.
const REAP_POLL: Duration = Duration::from_millis(20);

/// A started worker process. Dropping it kills and reaps it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pid: Pid,
    /// `None` once reaped.
    pidfd: Option<OwnedFd>,
}

impl WorkerProcess {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Send `SIGKILL` (idempotent; the process cannot block or outlive it).
    pub(crate) fn kill(&self) {
        if let Some(fd) = &self.pidfd {
            let _ = pidfd_send_signal(fd, Signal::KILL);
        }
    }

    /// Wait up to `limit` for the process to end, and reap it. `None` if it has not ended (it is
    /// then still owned, and dropping it kills and reaps it).
    pub(crate) async fn reap(&mut self, limit: Duration) -> Option<WaitIdStatus> {
        // Polled: a dying process is gone within milliseconds, and a pidfd cannot be handed to
        // the reactor without `unsafe`.
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            let fd = self.pidfd.as_ref()?;
            match waitid(
                WaitId::PidFd(fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(status)) => {
                    self.pidfd = None;
                    return Some(status);
                }
                Ok(None) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(REAP_STEP).await;
                }
                // Not yet, or reaped by someone else (waitid failed): leave it to `Drop`.
                _ => return None,
            }
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd.take() {
            let _ = pidfd_send_signal(&fd, Signal::KILL);
            reap_later(fd);
        }
    }
}

enum Job {
    Spawn {
        program: PathBuf,
        reply: oneshot::Sender<io::Result<(WorkerProcess, UnixStream)>>,
    },
    Reap(OwnedFd),
}

/// The supervisor's queue; `None` if its thread could not be started.
fn supervisor() -> Option<&'static mpsc::Sender<Job>> {
    static SUPERVISOR: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SUPERVISOR
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("cma-sandbox-workers".into())
                .stack_size(256 * 1024)
                .spawn(move || supervise(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// The supervisor thread: start workers on request; reap killed ones without ever blocking on
/// one that is slow to exit.
fn supervise(rx: &mpsc::Receiver<Job>) {
    let mut dying: Vec<OwnedFd> = Vec::new();
    loop {
        let job = if dying.is_empty() {
            rx.recv().ok()
        } else {
            match rx.recv_timeout(REAP_POLL) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        match job {
            Some(Job::Spawn { program, reply }) => {
                // If the requester is gone, the worker is dropped here: killed and queued.
                let _ = reply.send(spawn_now(&program));
            }
            Some(Job::Reap(fd)) => dying.push(fd),
            None if dying.is_empty() => return,
            None => {}
        }
        dying.retain(|fd| !try_reap(fd));
    }
}

/// Reap if it has exited; `true` when there is nothing left to wait for.
fn try_reap(fd: &OwnedFd) -> bool {
    !matches!(
        waitid(
            WaitId::PidFd(fd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ),
        Ok(None)
    )
}

/// Hand a killed worker to the supervisor for reaping (or reap it here if there is none).
fn reap_later(fd: OwnedFd) {
    let fd = match supervisor() {
        Some(tx) => match tx.send(Job::Reap(fd)) {
            Ok(()) => return,
            Err(mpsc::SendError(Job::Reap(fd))) => fd,
            Err(_) => return,
        },
        None => fd,
    };
    let _ = waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
}

/// Start a worker running `program` (on the supervisor thread); returns it and the backend's
/// end of its socket.
pub(crate) async fn spawn(program: &Path) -> io::Result<(WorkerProcess, UnixStream)> {
    let Some(tx) = supervisor() else {
        return spawn_now(program);
    };
    let (reply, answer) = oneshot::channel();
    tx.send(Job::Spawn {
        program: program.to_path_buf(),
        reply,
    })
    .map_err(|_| io::Error::other("the worker supervisor thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the worker supervisor thread is gone"))?
}

fn spawn_now(program: &Path) -> io::Result<(WorkerProcess, UnixStream)> {
    let _ = anchor();
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(program);
    cmd.arg0(WORKER_ARGV0)
        .env_clear()
        .env(
            WORKER_ENV,
            rustix::process::getpid().as_raw_nonzero().to_string(),
        )
        // Scripts see UTC, not the host's zone.
        .env("TZ", "UTC")
        .current_dir("/")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn()?;
    let pid = Pid::from_child(&child);
    drop(child);
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok((
            WorkerProcess {
                pid,
                pidfd: Some(fd),
            },
            ours,
        )),
        Err(e) => {
            // Not reaped yet, so the pid is still this child's: kill and reap it by pid.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("pidfd_open (Linux 5.3 or later is needed): {e}"),
            ))
        }
    }
}
