//! Live figures of one channel: success over a sliding window, overall and per segment
//! (payment method x currency), a peak-sensitive latency average, and its ejection state.
//!
//! Recording is lock-free (atomic rings, a sharded map of segments), so every request can
//! update a channel without a lock shared with other requests. Scores are kept by channel
//! name in the [`super::Router`], so they outlive a config reload. Must not decide anything:
//! `routing::decide` reads these and chooses.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use rustc_hash::FxHasher;

use super::health::{Cause, Health};
use super::window::Ring;
use crate::config::Ejection;
use crate::store::Outcome;

/// Seconds of history a success rate covers: short enough that traffic leaves a degrading PSP
/// within seconds, long enough to hold hundreds of payments at modest volume.
pub const WINDOW_SECS: usize = 30;
/// Time constant of the latency averages, as linkerd2-proxy's peak EWMA uses.
const LATENCY_DECAY_MS: f64 = 10_000.0;
/// Least weight of one sample in the mean, so that many calls in the same millisecond still
/// move it (about the last thousand calls at high volume).
const MIN_SAMPLE_WEIGHT: f64 = 0.001;
/// Latency assumed for a channel never measured (linkerd2-proxy's default RTT).
const DEFAULT_LATENCY_MS: f64 = 30.0;
/// Segments kept per channel; beyond this, new segments use the channel's figure only.
const MAX_SEGMENTS: usize = 1_024;

/// What a call to a channel taught about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Approved.
    Success,
    /// The PSP answered and refused the card: counts against routing, not toward ejection.
    Decline,
    /// The channel failed (refused, 5xx, timeout, reset, garbage).
    Fault,
}

impl Observation {
    /// None for `pending`: the PSP answered but the outcome is not known yet.
    pub fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Succeeded => Some(Self::Success),
            Outcome::Declined => Some(Self::Decline),
            Outcome::Unavailable | Outcome::Error | Outcome::Timeout => Some(Self::Fault),
            Outcome::Pending => None,
        }
    }
}

/// Counts over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub total: u64,
    pub successes: u64,
    pub faults: u64,
}

impl Counts {
    fn from_sums(sums: [u64; 3]) -> Self {
        Self {
            total: sums[0],
            successes: sums[1],
            faults: sums[2],
        }
    }

    /// Success rate with one imagined success and one failure (Laplace), so that an
    /// unmeasured channel stands at 0.5 rather than 0 or 1.
    pub fn smoothed_rate(&self) -> f64 {
        (self.successes as f64 + 1.0) / (self.total as f64 + 2.0)
    }

    /// Share of calls that did not fault (declines count as available).
    pub fn availability(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        1.0 - self.faults as f64 / self.total as f64
    }
}

/// The key of a segment: a hash of method and currency (a collision merely merges two
/// segments' figures).
pub fn segment_key(method: &str, currency: &str) -> u64 {
    let mut hasher = FxHasher::default();
    method.hash(&mut hasher);
    currency.hash(&mut hasher);
    hasher.finish()
}

#[derive(Default)]
pub struct ChannelScore {
    overall: Ring<WINDOW_SECS>,
    segments: DashMap<u64, Arc<Ring<WINDOW_SECS>>>,
    /// f64 bits of the time-weighted mean latency in ms; 0: never measured. Routing uses
    /// this: with heavy-tailed PSP latencies the peak is noise.
    latency_mean_ms: AtomicU64,
    /// f64 bits of the peak-EWMA latency in ms (jumps up at once, decays down): shown to
    /// operators as the early sign of a slowing PSP.
    latency_peak_ms: AtomicU64,
    latency_at_ms: AtomicU64,
    pub health: Health,
    /// Set by an operator: no new payments until enabled again.
    drained: AtomicBool,
}

impl ChannelScore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one call. Returns the cause when it ejected the channel.
    pub fn observe(
        &self,
        now_ms: u64,
        segment: u64,
        observation: Observation,
        latency: Option<Duration>,
        ejection: &Ejection,
    ) -> Option<Cause> {
        let counts = match observation {
            Observation::Success => [1, 1, 0],
            Observation::Decline => [1, 0, 0],
            Observation::Fault => [1, 0, 1],
        };
        self.overall.add(now_ms, counts);
        if let Some(ring) = self.segment(segment) {
            ring.add(now_ms, counts);
        }
        if let Some(latency) = latency {
            self.record_latency(now_ms, latency);
        }
        match observation {
            Observation::Fault => self.health.on_fault(now_ms, ejection),
            Observation::Success | Observation::Decline => {
                self.health.on_answer(now_ms);
                None
            }
        }
    }

    fn segment(&self, key: u64) -> Option<Arc<Ring<WINDOW_SECS>>> {
        if let Some(ring) = self.segments.get(&key) {
            return Some(ring.clone());
        }
        if self.segments.len() >= MAX_SEGMENTS {
            return None;
        }
        Some(self.segments.entry(key).or_default().clone())
    }

    pub fn overall(&self, now_ms: u64) -> Counts {
        Counts::from_sums(self.overall.sum(now_ms))
    }

    /// The segment's counts when it has at least `min_samples`, else the channel's; the flag
    /// says which.
    pub fn success(&self, now_ms: u64, segment: u64, min_samples: u64) -> (Counts, bool) {
        if let Some(ring) = self.segments.get(&segment) {
            let counts = Counts::from_sums(ring.sum(now_ms));
            if counts.total >= min_samples {
                return (counts, true);
            }
        }
        (self.overall(now_ms), false)
    }

    /// Folds in one latency: into the mean with the weight the elapsed time gives (at least
    /// [`MIN_SAMPLE_WEIGHT`]), and into the peak estimate, which a slower sample replaces at
    /// once and faster ones pull down by that weight.
    fn record_latency(&self, now_ms: u64, latency: Duration) {
        let sample = latency.as_secs_f64() * 1000.0;
        let last = self.latency_at_ms.swap(now_ms, Ordering::AcqRel);
        let weight = (1.0 - (-(now_ms.saturating_sub(last) as f64) / LATENCY_DECAY_MS).exp())
            .max(MIN_SAMPLE_WEIGHT);
        let fold = |cell: &AtomicU64, peak: bool| {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let estimate = f64::from_bits(bits);
                let next = if bits == 0 || (peak && sample > estimate) {
                    sample
                } else {
                    estimate * (1.0 - weight) + sample * weight
                };
                Some(next.max(f64::MIN_POSITIVE).to_bits())
            });
        };
        fold(&self.latency_mean_ms, false);
        fold(&self.latency_peak_ms, true);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Release);
    }

    /// The mean latency in milliseconds (what routing penalises).
    pub fn latency_ms(&self) -> f64 {
        read_latency(&self.latency_mean_ms)
    }

    /// The peak-EWMA latency in milliseconds.
    pub fn latency_peak_ms(&self) -> f64 {
        read_latency(&self.latency_peak_ms)
    }
}

fn read_latency(cell: &AtomicU64) -> f64 {
    match cell.load(Ordering::Acquire) {
        0 => DEFAULT_LATENCY_MS,
        bits => f64::from_bits(bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn windows_roll_over() {
        let score = ChannelScore::new();
        let e = Ejection::default();
        let seg = segment_key("card", "EUR");
        for i in 0..10 {
            let observation = if i % 5 == 0 {
                Observation::Decline
            } else {
                Observation::Success
            };
            score.observe(1_000, seg, observation, None, &e);
        }
        let counts = score.overall(1_000);
        assert_eq!((counts.total, counts.successes, counts.faults), (10, 8, 0));
        assert!((counts.smoothed_rate() - 0.75).abs() < 1e-9);
        // 30 s later the window has forgotten them.
        assert_eq!(score.overall(1_000 + 30_000).total, 0);
        assert!((Counts::default().smoothed_rate() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn thin_segments_fall_back_to_the_channel() {
        let score = ChannelScore::new();
        let e = Ejection::default();
        let eur = segment_key("card", "EUR");
        let usd = segment_key("card", "USD");
        for _ in 0..30 {
            score.observe(0, eur, Observation::Success, None, &e);
        }
        for _ in 0..5 {
            score.observe(0, usd, Observation::Decline, None, &e);
        }
        assert_eq!(
            score.success(0, eur, 20),
            (
                Counts {
                    total: 30,
                    successes: 30,
                    faults: 0
                },
                true
            )
        );
        let (counts, from_segment) = score.success(0, usd, 20);
        assert!(!from_segment);
        assert_eq!(counts.total, 35);
    }

    #[test]
    fn latency_mean_is_steady_and_peak_jumps() {
        let score = ChannelScore::new();
        let e = Ejection::default();
        assert_eq!(score.latency_ms(), DEFAULT_LATENCY_MS);
        score.observe(0, 0, Observation::Success, ms(10), &e);
        assert!((score.latency_ms() - 10.0).abs() < 1e-6);
        // One slow call: the peak jumps to it, the mean barely moves.
        score.observe(0, 0, Observation::Success, ms(2_000), &e);
        assert!((score.latency_peak_ms() - 2_000.0).abs() < 1e-6);
        assert!(score.latency_ms() < 15.0, "{}", score.latency_ms());
        // A decay constant later, fast calls have brought the peak most of the way down.
        score.observe(10_000, 0, Observation::Success, ms(10), &e);
        let expected = 2_000.0 * (-1.0f64).exp() + 10.0 * (1.0 - (-1.0f64).exp());
        assert!(
            (score.latency_peak_ms() - expected).abs() < 0.5,
            "{}",
            score.latency_peak_ms()
        );
    }

    #[test]
    fn latency_mean_follows_many_calls_in_one_millisecond() {
        let score = ChannelScore::new();
        let e = Ejection::default();
        score.observe(0, 0, Observation::Success, ms(100), &e);
        for _ in 0..5_000 {
            score.observe(1, 0, Observation::Success, ms(300), &e);
        }
        assert!(score.latency_ms() > 290.0, "{}", score.latency_ms());
    }

    #[test]
    fn declines_never_eject_faults_do() {
        let score = ChannelScore::new();
        let e = Ejection::default();
        for _ in 0..100 {
            assert_eq!(score.observe(0, 0, Observation::Decline, None, &e), None);
        }
        let mut ejected = None;
        for _ in 0..e.consecutive_faults {
            ejected = score
                .observe(0, 0, Observation::Fault, None, &e)
                .or(ejected);
        }
        assert_eq!(ejected, Some(Cause::ConsecutiveFaults));
    }
}
