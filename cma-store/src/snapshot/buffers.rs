//! Buffers saves reuse: the memory a hashing job reads a unit into and writes its chunks'
//! stored forms into, and the packs' memory, come back to the pool once done with (for job
//! buffers: when the last chunk cut from one is dropped), so saves fault fresh pages in only
//! while the pool warms up. (A profile of a 256 MiB save showed an eighth of its CPU time in
//! page faults on buffers allocated once and thrown away; with a pool per save, a third of the
//! faults were still each save's first pack and read buffers.)
//!
//! [`BufferPool::shared`] is the pool every save of the process uses. It keeps at most
//! [`BufferPool::KEEP_BYTES`] of spare capacity, and lets it all go once no save has run for
//! [`BufferPool::IDLE_RELEASE`] (see [`BufferPool::save_started`]), so an idle host holds none.
//! A buffer handed out is turned into [`Bytes`] by [`BufferPool::freeze`], whose slices keep it
//! alive, and returns to the pool when the last of them is dropped (or is freed, when the pool
//! is full or gone).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    /// Released for being idle: buffers given back now (by a job of a save that failed and
    /// returned before its jobs ended) are freed, until a save starts.
    idle: bool,
}

/// Spare buffers, for saves.
#[derive(Clone, Default)]
pub(crate) struct BufferPool {
    spare: Arc<Mutex<Spare>>,
    activity: Arc<Activity>,
}

/// Saves running, and how many have started (to tell whether one ran meanwhile).
#[derive(Default)]
struct Activity {
    running: AtomicUsize,
    started: AtomicU64,
}

static SHARED: LazyLock<BufferPool> = LazyLock::new(BufferPool::default);

/// Marks a save as running on a pool, until dropped (see [`BufferPool::save_started`]).
pub(crate) struct SaveRunning {
    pool: BufferPool,
}

impl Drop for SaveRunning {
    fn drop(&mut self) {
        if self.pool.activity.running.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last save running: release the spare buffers unless another starts soon.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.pool.clear();
            return;
        };
        // Released when the timer fires, or when the task is dropped unrun (the runtime shut
        // down first): either way no spare buffer outlives an idle pool.
        let release = ReleaseOnDrop {
            pool: self.pool.clone(),
            started: self.pool.activity.started.load(Ordering::Acquire),
        };
        rt.spawn(async move {
            tokio::time::sleep(BufferPool::IDLE_RELEASE).await;
            drop(release);
        });
    }
}

/// Releases the pool's spare buffers when dropped, if it is still idle (see
/// [`BufferPool::release_if_idle_since`]).
struct ReleaseOnDrop {
    pool: BufferPool,
    started: u64,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.pool.release_if_idle_since(self.started);
    }
}

impl BufferPool {
    /// Most spare capacity kept, in bytes (a buffer that would take the pool past it is freed):
    /// about what one save has in use at its peak (the jobs' input and output buffers, the pack
    /// being filled and one uploading).
    pub const KEEP_BYTES: usize = 96 << 20;
    /// How long the spare buffers outlive the last save that ran.
    pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

    /// The pool every save of this process uses.
    pub fn shared() -> BufferPool {
        SHARED.clone()
    }

    /// Note a save starting; when the last running one ends (the guard is dropped) and none
    /// starts within [`IDLE_RELEASE`](Self::IDLE_RELEASE), the spare buffers are freed (at once
    /// outside a Tokio runtime).
    pub fn save_started(&self) -> SaveRunning {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.idle = false;
        self.activity.started.fetch_add(1, Ordering::AcqRel);
        self.activity.running.fetch_add(1, Ordering::AcqRel);
        SaveRunning { pool: self.clone() }
    }

    /// Free the spare buffers if no save is running and none started since the count was
    /// `started`.
    fn release_if_idle_since(&self, started: u64) {
        // Under the lock, so a save starting now finds either all spare buffers or none.
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if self.activity.running.load(Ordering::Acquire) == 0
            && self.activity.started.load(Ordering::Acquire) == started
        {
            *spare = Spare {
                idle: true,
                ..Spare::default()
            };
        }
    }

    fn clear(&self) {
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = Spare {
            idle: true,
            ..Spare::default()
        };
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest spare one that is
    /// big enough, else a new one (growing a spare one would copy what it held).
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let found = {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            let pick = spare
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            pick.map(|i| {
                let b = spare.buffers.swap_remove(i);
                spare.bytes -= b.capacity();
                b
            })
        };
        match found {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(size_class(capacity)),
        }
    }

    /// `buf` as [`Bytes`]; the buffer comes back to this pool when the last slice of it is
    /// dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: Arc::downgrade(&self.spare),
        })
    }

    /// Give a buffer back (kept if there is room).
    pub fn give(&self, buf: Vec<u8>) {
        give(&self.spare, buf);
    }

    /// Spare capacity held now, in bytes.
    #[cfg(test)]
    pub fn spare_bytes(&self) -> usize {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// The capacity a new buffer gets for a request of `n` bytes: a few sizes only, so a buffer
/// given back fits the next requests of about its size (256 KiB at least, powers of two up
/// to 1 MiB, whole MiB above).
fn size_class(n: usize) -> usize {
    const MIB: usize = 1 << 20;
    if n <= MIB {
        n.max(256 << 10).next_power_of_two()
    } else {
        n.div_ceil(MIB).saturating_mul(MIB)
    }
}

fn give(home: &Mutex<Spare>, buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > BufferPool::KEEP_BYTES {
        return;
    }
    let mut spare = home.lock().unwrap_or_else(|e| e.into_inner());
    if spare.idle {
        return;
    }
    // Full: the smallest spare buffers make room for a bigger one (big ones are the costly
    // ones to fault in again), else this one is freed.
    while spare.bytes + buf.capacity() > BufferPool::KEEP_BYTES {
        let smallest = spare
            .buffers
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, b)| (i, b.capacity()));
        match smallest {
            Some((i, cap)) if cap < buf.capacity() => {
                spare.buffers.swap_remove(i);
                spare.bytes -= cap;
            }
            _ => return,
        }
    }
    spare.bytes += buf.capacity();
    spare.buffers.push(buf);
}

/// A pooled buffer owned by [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    home: Weak<Mutex<Spare>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            give(&home, std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped() {
        let pool = BufferPool::default();
        let mut buf = pool.take(1000);
        assert!(buf.capacity() >= 1000);
        buf.extend_from_slice(&[7u8; 1000]);
        let ptr = buf.as_ptr();
        let bytes = pool.freeze(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.spare_bytes(), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert!(pool.spare_bytes() >= 1000);
        let again = pool.take(500);
        assert_eq!(again.as_ptr(), ptr, "the same memory is reused");
        assert!(again.is_empty());
    }

    #[test]
    fn new_buffers_come_in_a_few_sizes() {
        assert_eq!(size_class(0), 256 << 10);
        assert_eq!(size_class(300 << 10), 512 << 10);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class(16 << 20), 16 << 20);
        assert_eq!(size_class(usize::MAX), usize::MAX);
        let pool = BufferPool::default();
        assert!(pool.take(70_000).capacity() >= 256 << 10);
    }

    #[tokio::test(start_paused = true)]
    async fn spare_buffers_are_freed_once_no_save_ran_for_a_while() {
        let pool = BufferPool::default();
        let first = pool.save_started();
        pool.give(Vec::with_capacity(1 << 20));
        drop(first);
        // A save starting before the release keeps them.
        tokio::time::sleep(BufferPool::IDLE_RELEASE / 2).await;
        let second = pool.save_started();
        tokio::time::sleep(BufferPool::IDLE_RELEASE).await;
        assert!(pool.spare_bytes() >= 1 << 20, "kept while a save runs");
        drop(second);
        tokio::time::sleep(BufferPool::IDLE_RELEASE / 2).await;
        assert!(pool.spare_bytes() >= 1 << 20, "kept for a while after it");
        tokio::time::sleep(BufferPool::IDLE_RELEASE).await;
        assert_eq!(pool.spare_bytes(), 0, "freed once idle");
        // A job of a failed save that gives its buffers back after the release: freed too.
        pool.give(Vec::with_capacity(1 << 20));
        assert_eq!(pool.spare_bytes(), 0, "not kept while idle");
        let third = pool.save_started();
        pool.give(Vec::with_capacity(1 << 20));
        assert!(pool.spare_bytes() >= 1 << 20, "kept again once a save runs");
        drop(third);
        // Outside a runtime, the last save's end frees them at once.
        let pool = BufferPool::default();
        let save = pool.save_started();
        pool.give(Vec::with_capacity(1 << 20));
        std::thread::spawn(move || drop(save)).join().unwrap();
        assert_eq!(pool.spare_bytes(), 0);
    }

    #[test]
    fn a_runtime_shutting_down_before_the_release_still_releases() {
        let pool = BufferPool::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let save = pool.save_started();
            pool.give(Vec::with_capacity(1 << 20));
            drop(save);
        });
        assert!(pool.spare_bytes() >= 1 << 20, "the release waits");
        drop(rt);
        assert_eq!(pool.spare_bytes(), 0, "released when its timer was dropped");
    }

    #[test]
    fn the_pool_keeps_a_bounded_amount() {
        let pool = BufferPool::default();
        for _ in 0..4 {
            pool.give(Vec::with_capacity(BufferPool::KEEP_BYTES / 3));
        }
        assert!(pool.spare_bytes() <= BufferPool::KEEP_BYTES);
        // A buffer outliving its pool is simply freed.
        let bytes = pool.freeze(vec![1, 2, 3]);
        drop(pool);
        drop(bytes);
    }
}
