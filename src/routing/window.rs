//! A sliding time window of counters: a fixed ring of one-second buckets, each holding three
//! counters packed in one atomic word, so that recording is a single lock-free add and a
//! reader never sees one counter of an outcome without the others.
//!
//! Pure bookkeeping: callers give the time, and decide what the counters mean.

use std::sync::atomic::{AtomicU64, Ordering};

const BUCKET_MS: u64 = 1_000;
/// Bits per counter: three counters in 63 bits; 2 million events per bucket per second.
const BITS: u32 = 21;
const MASK: u64 = (1 << BITS) - 1;

#[derive(Default)]
struct Bucket {
    /// Bucket number (now / BUCKET_MS) + 1, so that 0 marks a bucket never used.
    slot: AtomicU64,
    counts: AtomicU64,
}

/// `N` seconds of three counters.
pub struct Ring<const N: usize> {
    buckets: [Bucket; N],
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| Bucket::default()),
        }
    }
}

impl<const N: usize> Ring<N> {
    /// Adds `counts` (each below 2^21) at time `now_ms`.
    pub fn add(&self, now_ms: u64, counts: [u64; 3]) {
        let slot = now_ms / BUCKET_MS + 1;
        let bucket = &self.buckets[(slot % N as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The winner clears the stale second; an add that lands between the two stores is
            // lost, which an estimate can afford and a lock on every request cannot.
            bucket.counts.store(0, Ordering::Release);
        }
        let packed = counts[0] | (counts[1] << BITS) | (counts[2] << (2 * BITS));
        bucket.counts.fetch_add(packed, Ordering::AcqRel);
    }

    /// The three sums over the last `N` seconds up to `now_ms`.
    pub fn sum(&self, now_ms: u64) -> [u64; 3] {
        let now = now_ms / BUCKET_MS + 1;
        let mut sums = [0u64; 3];
        for bucket in &self.buckets {
            let slot = bucket.slot.load(Ordering::Acquire);
            if slot == 0 || slot > now || now - slot >= N as u64 {
                continue;
            }
            let counts = bucket.counts.load(Ordering::Acquire);
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum += (counts >> (i as u32 * BITS)) & MASK;
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_within_the_window_and_forgets_after() {
        let ring: Ring<10> = Ring::default();
        ring.add(0, [1, 0, 0]);
        ring.add(500, [1, 1, 0]);
        ring.add(9_999, [1, 0, 1]);
        assert_eq!(ring.sum(9_999), [3, 1, 1]);
        // At 10 s the first second (0..1000 ms) has left the window.
        assert_eq!(ring.sum(10_000), [1, 0, 1]);
        assert_eq!(ring.sum(25_000), [0, 0, 0]);
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let ring: Ring<3> = Ring::default();
        ring.add(0, [5, 5, 5]);
        ring.add(3_000, [1, 0, 0]); // same bucket index, three seconds later
        assert_eq!(ring.sum(3_000), [1, 0, 0]);
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let ring: std::sync::Arc<Ring<30>> = std::sync::Arc::default();
        // Open the bucket first: only its rollover may drop an add, never steady recording.
        ring.add(1_500, [0, 0, 0]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        ring.add(1_500, [1, 1, 0]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ring.sum(1_500), [40_000, 40_000, 0]);
    }
}
