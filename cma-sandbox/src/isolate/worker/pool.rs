//! A backend's workers: fresh ones, ready for any sandbox; warm ones, kept for the sandbox whose
//! script they ran last; and the slots that bound how many scripts run at once. Policy in the
//! [module docs](super).

use std::collections::VecDeque;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ipc::{FRAME_OVERHEAD, FromWorker, PROTOCOL_VERSION, read_frame_async};
use super::process::{self, WorkerProcess};
use super::{MAX_RUNS_PER_WORKER, WorkerConfig};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::SandboxId;

/// The program started when the configuration names none: this executable, as the kernel
/// knows it (valid even if the file was replaced or deleted since).
const SELF_EXE: &str = "/proc/self/exe";

/// A started worker that is not running a script.
struct Idle {
    proc: WorkerProcess,
    sock: StdUnixStream,
    vm_bytes: u64,
    runs: u32,
    owner: Option<SandboxId>,
}

impl Idle {
    /// Still there, and has sent nothing unasked (an idle worker never speaks first).
    fn alive(&self) -> bool {
        let mut byte = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(
            rustix::net::recv(&self.sock, &mut byte, flags),
            Err(rustix::io::Errno::AGAIN)
        )
    }
}

/// A worker checked out for one script. Dropping it kills and reaps the worker; hand it back
/// with [`Pool::give_back`] when its script ended cleanly.
pub(crate) struct Lease {
    pub proc: WorkerProcess,
    pub sock: UnixStream,
    /// The worker's address-space size when it was new, with a runtime prepared.
    pub vm_bytes: u64,
    /// Scripts run by this worker, this one included.
    pub runs: u32,
    _slot: OwnedSemaphorePermit,
}

/// Why no worker could be had.
pub(crate) enum CheckoutError {
    /// The deadline passed while waiting for a slot or a start.
    Deadline,
    /// A worker could not be started.
    Failed(SandboxError),
}

#[derive(Default)]
struct State {
    fresh: Vec<Idle>,
    warm: VecDeque<Idle>,
    /// Background starts in flight.
    starting: usize,
    /// The last background start failed: no more until a start on demand succeeds.
    failing: bool,
}

/// What starting a worker needs (shared with background starts, which must not keep the
/// pool alive).
#[derive(Clone)]
struct StartParams {
    program: PathBuf,
    start_timeout: Duration,
    require_filter: bool,
}

struct Shared {
    config: WorkerConfig,
    start: StartParams,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the lists inconsistent (each change is
        // one push or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A backend's worker pool (cheap to share; dropping the last handle kills its idle workers).
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Decrements the count of background starts however the start ends (even cancelled).
struct Starting(Weak<Shared>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            let mut st = shared.state();
            st.starting = st.starting.saturating_sub(1);
        }
    }
}

impl Pool {
    pub(crate) fn new(config: WorkerConfig) -> Self {
        let start = StartParams {
            program: config
                .program
                .clone()
                .unwrap_or_else(|| PathBuf::from(SELF_EXE)),
            start_timeout: config.start_timeout,
            require_filter: config.require_syscall_filter,
        };
        Self {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(
                    config.max_busy.clamp(1, Semaphore::MAX_PERMITS),
                )),
                config,
                start,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A worker for a script of sandbox `owner`: its warm one if it has one, else a fresh one,
    /// else one started now; all before `deadline`.
    pub(crate) async fn checkout(
        &self,
        owner: &SandboxId,
        deadline: Instant,
    ) -> std::result::Result<Lease, CheckoutError> {
        let slot = tokio::time::timeout_at(deadline, self.shared.slots.clone().acquire_owned())
            .await
            .map_err(|_| CheckoutError::Deadline)?
            .map_err(|_| CheckoutError::Deadline)?;
        let idle = loop {
            let found = {
                let mut st = self.shared.state();
                match st.warm.iter().position(|w| w.owner.as_ref() == Some(owner)) {
                    Some(i) => st.warm.remove(i),
                    None => st.fresh.pop(),
                }
            };
            match found {
                Some(w) if w.alive() => break w,
                Some(dead) => drop(dead),
                None => {
                    // Started before any refill, which would queue behind it.
                    let started =
                        tokio::time::timeout_at(deadline, start(self.shared.start.clone()))
                            .await
                            .map_err(|_| CheckoutError::Deadline)?
                            .map_err(CheckoutError::Failed)?;
                    self.shared.state().failing = false;
                    break started;
                }
            }
        };
        self.refill();
        let Idle {
            proc,
            sock,
            vm_bytes,
            runs,
            owner: _,
        } = idle;
        let sock = UnixStream::from_std(sock).map_err(|e| {
            CheckoutError::Failed(
                SandboxError::new(SandboxErrorKind::Backend, "cannot use the worker's socket")
                    .with_source(e),
            )
        })?;
        Ok(Lease {
            proc,
            sock,
            vm_bytes,
            runs: runs.saturating_add(1),
            _slot: slot,
        })
    }

    /// Keep a worker whose script ended cleanly for the next script of `owner` (or retire it).
    pub(crate) fn give_back(&self, lease: Lease, owner: &SandboxId) {
        let Lease {
            proc,
            sock,
            vm_bytes,
            runs,
            _slot,
        } = lease;
        if runs >= MAX_RUNS_PER_WORKER || self.shared.config.max_warm == 0 {
            return;
        }
        let Ok(sock) = sock.into_std() else {
            return;
        };
        let idle = Idle {
            proc,
            sock,
            vm_bytes,
            runs,
            owner: Some(owner.clone()),
        };
        let evicted = {
            let mut st = self.shared.state();
            // One warm worker per sandbox: a second one (from concurrent scripts) replaces it.
            let older = st
                .warm
                .iter()
                .position(|w| w.owner.as_ref() == Some(owner))
                .and_then(|i| st.warm.remove(i));
            st.warm.push_back(idle);
            let lru = if st.warm.len() > self.shared.config.max_warm {
                st.warm.pop_front()
            } else {
                None
            };
            (older, lru)
        };
        // Killed outside the lock.
        drop(evicted);
    }

    /// Start fresh workers in the background up to the configured number (if inside a tokio
    /// runtime, and starts are not failing).
    fn refill(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let target = self.shared.config.idle_workers;
        let missing = {
            let mut st = self.shared.state();
            let missing = if st.failing {
                0
            } else {
                target.saturating_sub(st.fresh.len() + st.starting)
            };
            st.starting += missing;
            missing
        };
        for _ in 0..missing {
            let weak = Arc::downgrade(&self.shared);
            let params = self.shared.start.clone();
            handle.spawn(async move {
                let guard = Starting(weak.clone());
                let started = start(params).await;
                let Some(shared) = weak.upgrade() else {
                    return; // The pool is gone: the worker (if any) is killed here.
                };
                let extra = {
                    let mut st = shared.state();
                    match started {
                        Ok(w) if st.fresh.len() < target => {
                            st.failing = false;
                            st.fresh.push(w);
                            None
                        }
                        Ok(w) => Some(w),
                        Err(_) => {
                            st.failing = true;
                            None
                        }
                    }
                };
                drop(extra);
                drop(guard);
            });
        }
    }
}

fn start_error(context: &str, kind: SandboxErrorKind) -> SandboxError {
    SandboxError::new(kind, format!("cannot start a worker process: {context}"))
}

/// Start one worker and wait for its hello.
async fn start(params: StartParams) -> Result<Idle> {
    let (proc, sock) = process::spawn(&params.program)
        .await
        .map_err(|e| start_error("spawn failed", SandboxErrorKind::Backend).with_source(e))?;
    let io_err = |e: std::io::Error| {
        start_error("its socket failed", SandboxErrorKind::Backend).with_source(e)
    };
    sock.set_nonblocking(true).map_err(io_err)?;
    let mut sock = UnixStream::from_std(sock).map_err(io_err)?;
    let hello = tokio::time::timeout(
        params.start_timeout,
        read_frame_async(&mut sock, FRAME_OVERHEAD),
    )
    .await;
    let hello = match hello {
        Ok(Ok(Some(payload))) => FromWorker::decode(&payload).ok(),
        _ => None,
    };
    let Some(FromWorker::Hello(hello)) = hello else {
        return Err(start_error(
            "it did not report ready (is the worker program linked with cma-sandbox's \
             `isolate` feature?)",
            SandboxErrorKind::Backend,
        ));
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(start_error(
            &format!(
                "it speaks protocol {} (this build: {PROTOCOL_VERSION}); use the same build",
                hello.version
            ),
            SandboxErrorKind::Backend,
        ));
    }
    if let Some(why) = hello.unconfined
        && params.require_filter
    {
        return Err(start_error(
            &format!("it cannot install its system-call filter ({why})"),
            SandboxErrorKind::Unsupported,
        ));
    }
    let sock = sock.into_std().map_err(io_err)?;
    Ok(Idle {
        proc,
        sock,
        vm_bytes: hello.vm_bytes,
        runs: 0,
        owner: None,
    })
}
