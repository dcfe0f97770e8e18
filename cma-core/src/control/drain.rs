//! Coalescing drain requests: a webhook storm costs one drain at a time plus at most one queued
//! re-drain, never one task per delivery.
//!
//! A webhook only says "work may be waiting". While a drain runs, any number of further requests
//! collapse into one re-drain after it (a request that arrives after the running drain's last,
//! empty poll must still be served, and the gate cannot tell when that poll happened). The gate
//! is a plain state machine so its rules are unit-tested; the plane holds it under a mutex.

/// The state of the plane's drains.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DrainGate {
    running: bool,
    queued: bool,
}

impl DrainGate {
    /// A drain was requested: `true` if the caller must start one now; otherwise one is running
    /// and a re-drain is queued behind it (at most one, however many requests come).
    pub(crate) fn request(&mut self) -> bool {
        if self.running {
            self.queued = true;
            false
        } else {
            self.running = true;
            true
        }
    }

    /// The running drain finished: `true` if it must run once more (a request came meanwhile);
    /// otherwise the gate is idle again.
    pub(crate) fn finished(&mut self) -> bool {
        if self.queued {
            self.queued = false;
            true
        } else {
            self.running = false;
            false
        }
    }

    /// Forget the running drain and any queued one (it stopped for good: shutdown, a fatal
    /// error, or it could not be started).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_costs_one_drain_and_one_re_drain() {
        let mut g = DrainGate::default();
        assert!(g.request(), "the first request starts a drain");
        let started = (0..100).filter(|_| g.request()).count();
        assert_eq!(started, 0, "requests during a drain start nothing");
        assert!(g.finished(), "one re-drain was queued");
        assert!(!g.request(), "still running: queued again");
        assert!(g.finished());
        assert!(!g.finished(), "nothing queued: idle");
        assert!(g.request(), "idle again: a request starts a drain");
        g.reset();
        assert!(g.request());
    }
}
