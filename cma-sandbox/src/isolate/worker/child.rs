//! The worker process's loop: confine itself, announce itself, then run one script per
//! [`Job`](super::ipc::Job) in a fresh runtime, answering with its
//! [`Outcome`](super::ipc::Outcome). Every `fs.*` and `fetch` of a script is a synchronous
//! request to the backend over the same socket; the worker has no other channel to anything.
//!
//! Single-threaded by construction (it runs before the host's `main`, and its system-call filter
//! forbids creating threads). It reads nothing it is not sent, and it exits at the end of its
//! socket: the backend closing it, or dying.

use std::cell::RefCell;
use std::io;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use super::ipc::{
    Call, FRAME_OVERHEAD, FromWorker, Hello, MAX_FRAME_BYTES, PROTOCOL_VERSION, Reply, ToWorker,
    read_frame, write_frame,
};
use super::limits;
use crate::isolate::js::{Prepared, ScriptHost, warm_up};

/// Exit codes of a worker that gives up (the backend reports them; they are never a script's).
pub(crate) const EXIT_CLEAN: i32 = 0;
/// Confinement could not be set up (or the parent is already gone).
pub(crate) const EXIT_SETUP: i32 = 120;
/// The backend sent something that is not the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 121;
/// The engine could not even build a runtime (out of memory under the address-space limit).
pub(crate) const EXIT_ENGINE: i32 = 122;
/// The worker code panicked.
pub(crate) const EXIT_PANIC: i32 = 123;

/// The worker's end of its socket.
struct Channel {
    sock: RefCell<UnixStream>,
}

impl Channel {
    fn send(&self, msg: &FromWorker) -> io::Result<()> {
        let frame = msg.encode(MAX_FRAME_BYTES)?;
        write_frame(&mut *self.sock.borrow_mut(), &frame)
    }

    fn recv(&self) -> io::Result<Option<ToWorker>> {
        let Some(payload) = read_frame(&mut *self.sock.borrow_mut(), MAX_FRAME_BYTES)? else {
            return Ok(None);
        };
        ToWorker::decode(&payload).map(Some).map_err(Into::into)
    }
}

impl ScriptHost for Channel {
    fn call(&self, call: Call) -> Result<Reply, String> {
        let msg = FromWorker::Call(call);
        // Refuse what the backend would refuse before copying it into a frame.
        let frame = msg
            .encode(MAX_FRAME_BYTES - FRAME_OVERHEAD)
            .map_err(|_| "execute: the request is too large for the sandbox".to_string())?;
        let lost = |_| "execute: lost the connection to the sandbox".to_string();
        write_frame(&mut *self.sock.borrow_mut(), &frame).map_err(lost)?;
        match self.recv() {
            Ok(Some(ToWorker::Reply(r))) => Ok(r),
            Ok(_) => Err("execute: unexpected message from the sandbox".into()),
            Err(e) => Err(lost(e)),
        }
    }
}

/// Run the worker on `sock` for the backend process `parent`; returns the exit code.
pub(crate) fn main(sock: UnixStream, parent: Option<u32>) -> i32 {
    if limits::die_with_parent(parent).is_err() {
        return EXIT_SETUP;
    }
    let chan = Rc::new(Channel {
        sock: RefCell::new(sock),
    });
    let host: Rc<dyn ScriptHost> = chan.clone();
    // What reads files on first use must have done so before the limits and the filter.
    warm_up();
    let Ok(mut next) = Prepared::new(host.clone()) else {
        return EXIT_ENGINE;
    };
    let vm_bytes = limits::vm_bytes();
    if limits::limit_resources().is_err() {
        return EXIT_SETUP;
    }
    let unconfined = limits::install_syscall_filter().err();
    let hello = FromWorker::Hello(Hello {
        version: PROTOCOL_VERSION,
        vm_bytes,
        unconfined,
    });
    if chan.send(&hello).is_err() {
        return EXIT_CLEAN;
    }
    loop {
        let job = match chan.recv() {
            Ok(Some(ToWorker::Run(job))) => job,
            Ok(None) => return EXIT_CLEAN,
            Ok(Some(ToWorker::Reply(_))) | Err(_) => return EXIT_PROTOCOL,
        };
        let outcome = next.run(&job);
        if chan.send(&FromWorker::Done(outcome)).is_err() {
            return EXIT_CLEAN;
        }
        // The next script's runtime is built while the backend handles this one's result.
        next = match Prepared::new(host.clone()) {
            Ok(p) => p,
            Err(_) => return EXIT_ENGINE,
        };
    }
}
