//! Live per-channel figures: success rate over a sliding window of one-second buckets and a
//! peak-sensitive latency average.
//!
//! Recording is lock-free (atomics in a fixed ring), so every request can update a channel's
//! figures without a shared lock. The figures are keyed by channel name by the caller, so they
//! outlive a config reload. Must not decide anything: `routing` reads these and chooses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds of history a success rate covers. Short enough that a PSP that degrades loses
/// traffic within seconds, long enough to hold a few hundred payments at modest volume.
const WINDOW_SECS: u64 = 30;
/// Time constant of the latency average, as linkerd2-proxy's peak EWMA uses.
const LATENCY_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for a channel never measured (linkerd2-proxy's default RTT).
const DEFAULT_LATENCY_MS: f64 = 30.0;

/// One second of outcomes: the second it belongs to, and its counts packed as
/// (successes << 32 | total) so that a reader never sees one without the other.
#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    counts: AtomicU64,
}

/// The live figures of one channel.
pub struct ChannelScore {
    epoch: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
    /// f64 bits of the latency estimate in ms; 0 bits: never measured.
    latency_ms: AtomicU64,
    /// Microseconds since `epoch` of the last latency update.
    latency_at_us: AtomicU64,
}

/// Successes and total over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub successes: u64,
    pub total: u64,
}

impl Window {
    /// Success rate with one imagined success and one failure (Laplace's rule), so that an
    /// unmeasured channel stands at 0.5 rather than at 0 or 1.
    pub fn smoothed_rate(&self) -> f64 {
        (self.successes as f64 + 1.0) / (self.total as f64 + 2.0)
    }
}

impl Default for ChannelScore {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelScore {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            buckets: Default::default(),
            latency_ms: AtomicU64::new(0),
            latency_at_us: AtomicU64::new(0),
        }
    }

    fn now_second(&self) -> u64 {
        // +1 so that second 0 is never confused with an untouched bucket.
        self.epoch.elapsed().as_secs() + 1
    }

    /// Counts one outcome: `success` is whether the payment went through (a decline is not).
    pub fn record(&self, success: bool) {
        let second = self.now_second();
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The winner of the race clears the stale second; an increment that lands
            // between the two stores is lost, which a rate estimate can afford.
            bucket.counts.store(0, Ordering::Release);
        }
        let add = (u64::from(success) << 32) | 1;
        bucket.counts.fetch_add(add, Ordering::AcqRel);
    }

    pub fn window(&self) -> Window {
        let now = self.now_second();
        let mut window = Window {
            successes: 0,
            total: 0,
        };
        for bucket in &self.buckets {
            let second = bucket.second.load(Ordering::Acquire);
            if second == 0 || now.saturating_sub(second) >= WINDOW_SECS {
                continue;
            }
            let counts = bucket.counts.load(Ordering::Acquire);
            window.successes += counts >> 32;
            window.total += counts & u64::from(u32::MAX);
        }
        window
    }

    /// Folds in one measured latency: a value above the estimate replaces it at once (peak
    /// sensitivity), one below pulls it down by the weight the elapsed time gives.
    pub fn record_latency(&self, latency: Duration) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let sample = latency.as_secs_f64() * 1000.0;
        let mut current = self.latency_ms.load(Ordering::Acquire);
        loop {
            let estimate = f64::from_bits(current);
            let next = if current == 0 || sample > estimate {
                sample
            } else {
                let last = self.latency_at_us.load(Ordering::Acquire);
                let elapsed = now_us.saturating_sub(last) as f64 / 1e6;
                let keep = (-elapsed / LATENCY_DECAY.as_secs_f64()).exp();
                estimate * keep + sample * (1.0 - keep)
            };
            match self.latency_ms.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.latency_at_us.store(now_us, Ordering::Release);
    }

    /// The latency estimate in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        match self.latency_ms.load(Ordering::Acquire) {
            0 => DEFAULT_LATENCY_MS,
            bits => f64::from_bits(bits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_successes_and_total() {
        let score = ChannelScore::new();
        for i in 0..10 {
            score.record(i % 5 != 0);
        }
        assert_eq!(
            score.window(),
            Window {
                successes: 8,
                total: 10
            }
        );
        assert!((score.window().smoothed_rate() - 0.75).abs() < 1e-9);
        assert!((ChannelScore::new().window().smoothed_rate() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn latency_jumps_up_and_decays_down() {
        let score = ChannelScore::new();
        assert_eq!(score.latency_ms(), DEFAULT_LATENCY_MS);
        score.record_latency(Duration::from_millis(10));
        assert!((score.latency_ms() - 10.0).abs() < 1e-6);
        score.record_latency(Duration::from_millis(200));
        assert!((score.latency_ms() - 200.0).abs() < 1e-6);
        // Immediately after, a fast sample barely moves the estimate.
        score.record_latency(Duration::from_millis(1));
        assert!(score.latency_ms() > 150.0);
    }
}
