//! Warm sandboxes: a session's sandbox stays alive for a while after its work item ends so the
//! session's next item reuses it instead of starting (and restoring) a new one.
//!
//! The pool is generic and clock-free (callers pass `now`), so its rules are unit-tested; the
//! control plane stores `Arc<dyn Sandbox>` in it and destroys what [`WarmPool::take_expired`] returns.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Values kept per key until a deadline.
#[derive(Debug)]
pub struct WarmPool<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> WarmPool<K, V> {
    /// A pool holding at most `capacity` warm values (the oldest deadline is evicted first).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Keep `value` warm for `key` until `now + keep_for`. Returns whatever had to leave the pool
    /// (a previous value for the same key, or the entry evicted to stay within capacity): the
    /// caller disposes of it.
    pub fn put(&mut self, key: K, value: V, now: Instant, keep_for: Duration) -> Vec<V> {
        let mut out = Vec::new();
        if let Some((old, _)) = self.entries.remove(&key) {
            out.push(old);
        }
        if self.capacity == 0 || keep_for.is_zero() {
            out.push(value);
            return out;
        }
        while self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, deadline))| *deadline)
                .map(|(k, _)| k.clone());
            match oldest.and_then(|k| self.entries.remove(&k)) {
                Some((v, _)) => out.push(v),
                None => break,
            }
        }
        self.entries.insert(key, (value, now + keep_for));
        out
    }

    /// Take the warm value for `key`, if it has not expired at `now`.
    pub fn take(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.remove(key) {
            Some((v, deadline)) if deadline > now => Some(v),
            Some((v, deadline)) => {
                // Expired: put it back for the janitor to dispose of.
                self.entries.insert(key.clone(), (v, deadline));
                None
            }
            None => None,
        }
    }

    /// Take the value kept for `key`, expired or not (its session is over).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    /// The value kept for `key`, expired or not, without taking it.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Remove and return every value whose deadline has passed at `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(K, V)> {
        let keys: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|(v, _)| (k, v)))
            .collect()
    }

    /// Remove and return everything (shutdown).
    pub fn drain(&mut self) -> Vec<(K, V)> {
        self.entries.drain().map(|(k, (v, _))| (k, v)).collect()
    }

    /// The earliest deadline, for scheduling the next janitor pass.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|(_, d)| *d).min()
    }

    /// Number of warm values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_value_is_reused_before_its_deadline_only() {
        let mut pool = WarmPool::new(4);
        let t0 = Instant::now();
        assert!(pool.put("s1", 1, t0, Duration::from_secs(10)).is_empty());
        assert_eq!(pool.take(&"s1", t0 + Duration::from_secs(5)), Some(1));
        assert_eq!(pool.take(&"s1", t0), None, "taken values leave the pool");
        pool.put("s2", 2, t0, Duration::from_secs(10));
        assert_eq!(pool.take(&"s2", t0 + Duration::from_secs(10)), None);
        pool.put("s3", 3, t0, Duration::from_secs(1));
        assert_eq!(pool.remove(&"s3"), Some(3), "removed even when expired");
        assert_eq!(pool.remove(&"s3"), None);
        assert_eq!(
            pool.take_expired(t0 + Duration::from_secs(10)),
            vec![("s2", 2)]
        );
        assert!(pool.is_empty());
    }

    #[test]
    fn replacing_and_capacity_hand_back_what_left() {
        let mut pool = WarmPool::new(2);
        let t0 = Instant::now();
        pool.put("a", 1, t0, Duration::from_secs(1));
        assert_eq!(pool.put("a", 2, t0, Duration::from_secs(5)), vec![1]);
        pool.put("b", 3, t0, Duration::from_secs(9));
        // Full: the entry with the earliest deadline ("a") is evicted.
        assert_eq!(pool.put("c", 4, t0, Duration::from_secs(9)), vec![2]);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.next_deadline(), Some(t0 + Duration::from_secs(9)));
        // Zero keep time: nothing is kept.
        assert_eq!(pool.put("d", 5, t0, Duration::ZERO), vec![5]);
        let mut drained: Vec<_> = pool.drain().into_iter().map(|(_, v)| v).collect();
        drained.sort();
        assert_eq!(drained, vec![3, 4]);
    }
}
