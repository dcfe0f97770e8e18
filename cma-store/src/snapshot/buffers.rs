//! Buffers a save reuses: the memory a hashing job reads a unit into and writes its chunks'
//! stored forms into comes back to the save once the last chunk cut from it is dropped, so a
//! save faults fresh pages in only for its first few jobs (a profile of a 256 MiB save showed
//! an eighth of its CPU time in page faults on buffers allocated once and thrown away).
//!
//! A [`BufferPool`] belongs to one save and keeps at most [`BufferPool::KEEP_BYTES`] of spare
//! capacity; a buffer handed out is turned into [`Bytes`] by [`BufferPool::freeze`], whose
//! slices keep it alive, and returns to the pool when the last of them is dropped (or is freed,
//! when the pool is full or gone).

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// Spare buffers of one save.
#[derive(Clone, Default)]
pub(crate) struct BufferPool {
    spare: Arc<Mutex<Spare>>,
}

impl BufferPool {
    /// Most spare capacity kept, in bytes (a buffer that would take the pool past it is freed).
    pub const KEEP_BYTES: usize = 64 << 20;

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
