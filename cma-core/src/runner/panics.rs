//! Containing panics: a panic in a tool, a sandbox, a host or the runner itself ends one tool call
//! (posted as an error) or one work item (torn down, force-stopped), never the control plane.
//!
//! Every piece of code the runner calls on a session's behalf — executors, sandboxes, hosts — is
//! someone else's, and any of it may panic on input an agent chose. The runner therefore awaits
//! those futures through [`catch`], which turns an unwinding panic into an error value carrying
//! the panic message, so the caller can still post a result, tear the session down and release
//! the lease.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

/// The message of a caught panic (`&str` and `String` payloads; anything else is unnamed).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Await `fut`, turning a panic while polling it into `Err(message)`.
///
/// The future is dropped when it panics; whatever it held is released by the unwind. State
/// shared with it (mutexes, counters) may be half-updated, which is why callers only use this
/// at boundaries where they discard or re-check that state: one tool call, one item.
pub async fn catch<F: Future>(fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_messages() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let r = catch(async {
            if std::hint::black_box(true) {
                panic!("boom {}", 1);
            }
        })
        .await;
        assert_eq!(r, Err("boom 1".to_owned()));
        let r = catch(async { std::panic::panic_any(3u8) }).await;
        assert_eq!(r, Err("panic with a non-string payload".to_owned()));
    }
}
