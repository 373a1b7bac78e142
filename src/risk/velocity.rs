//! Velocity counters: payments and amount per key over a sliding window, kept as ten
//! sub-buckets of a tenth of the window each (so the window slides in tenths, with no list of
//! every payment). Lock-free per counter; the map of keys is sharded.

use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 10;

#[derive(Default)]
struct Bucket {
    /// Sub-window number + 1; 0: never used.
    slot: AtomicU64,
    count: AtomicU64,
    amount: AtomicU64,
}

#[derive(Default)]
pub struct VelocityWindow {
    buckets: [Bucket; BUCKETS],
}

impl VelocityWindow {
    fn slot_ms(window_ms: u64) -> u64 {
        (window_ms / BUCKETS as u64).max(1)
    }

    /// Payments and amount in the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64, window_ms: u64) -> (u64, u64) {
        let now = now_ms / Self::slot_ms(window_ms) + 1;
        let mut totals = (0, 0);
        for bucket in &self.buckets {
            let slot = bucket.slot.load(Ordering::Acquire);
            if slot == 0 || slot > now || now - slot >= BUCKETS as u64 {
                continue;
            }
            totals.0 += bucket.count.load(Ordering::Acquire);
            totals.1 += bucket.amount.load(Ordering::Acquire);
        }
        totals
    }

    pub fn add(&self, now_ms: u64, window_ms: u64, amount: u64) {
        let slot = now_ms / Self::slot_ms(window_ms) + 1;
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.count.store(0, Ordering::Release);
            bucket.amount.store(0, Ordering::Release);
        }
        bucket.count.fetch_add(1, Ordering::AcqRel);
        bucket.amount.fetch_add(amount, Ordering::AcqRel);
    }

    /// Whether nothing in it is younger than the window.
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.totals(now_ms, window_ms) == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_in_tenths() {
        let window = VelocityWindow::default();
        window.add(0, 10_000, 500);
        window.add(4_500, 10_000, 700);
        assert_eq!(window.totals(9_999, 10_000), (2, 1_200));
        assert_eq!(window.totals(10_000, 10_000), (1, 700));
        assert_eq!(window.totals(14_999, 10_000), (0, 0));
        assert!(window.is_idle(20_000, 10_000));
    }
}
