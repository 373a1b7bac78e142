//! Live figures of one channel: success over a sliding window, overall and per segment
//! (payment method x currency), the success evidence routing decides on (its memory counted
//! in payments, see [`Evidence`]), a peak-sensitive latency average, and its ejection state.
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
/// How many outcomes the success evidence remembers: each new outcome discounts the earlier
/// ones by 1 - 1/EVIDENCE_MEMORY, whatever the traffic rate. Long, so that the posterior of
/// two close channels (92% and 88%) is narrow and steady exploration cheap; an abrupt change
/// is caught by the short memory below instead (figures in benches/SIMULATE.md).
pub const EVIDENCE_MEMORY: f64 = 1_000.0;
/// The change detector's memory: about the last 100 outcomes.
pub const RECENT_MEMORY: f64 = 100.0;
/// How far (in standard errors of the recent estimate) the recent outcomes must sit from the
/// long evidence before the long history is judged stale and dropped: 4 makes a false alarm
/// rare (the long evidence then merely restarts from the last ~100 outcomes), while a
/// 95% -> 30% collapse passes it after a few dozen outcomes.
const CHANGE_THRESHOLD: f64 = 4.0;
/// The evidence also fades with time (this time constant), so that a channel that lost its
/// traffic returns to a wide posterior and is probed again, as the 30 s window did.
const EVIDENCE_HORIZON_MS: f64 = 30_000.0;

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

    /// Share of calls that did not fault (declines count as available).
    pub fn availability(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        1.0 - self.faults as f64 / self.total as f64
    }
}

/// The success evidence at one moment: outcomes remembered (fractional: older ones weigh
/// less) and how many of them were approvals.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub outcomes: f64,
    pub successes: f64,
}

impl Estimate {
    /// The success rate with one imagined success and one failure (Laplace), so that an
    /// unmeasured channel stands at 0.5 rather than 0 or 1.
    pub fn rate(&self) -> f64 {
        (self.successes + 1.0) / (self.outcomes + 2.0)
    }
}

/// Exponentially forgetting success counts with a change detector: a long memory
/// ([`EVIDENCE_MEMORY`] outcomes) that routing draws from, a short one ([`RECENT_MEMORY`]),
/// both bounded in time ([`EVIDENCE_HORIZON_MS`]). When the short one no longer fits the long
/// one ([`CHANGE_THRESHOLD`] standard errors), the long history is stale: it is replaced by
/// the recent outcomes, so a collapse is acted on within about a hundred payments at any
/// traffic rate. Each estimate is two f32 in one atomic word, updated by compare-and-swap, so
/// recording takes no lock.
#[derive(Default)]
pub struct Evidence {
    long: AtomicU64,
    recent: AtomicU64,
    at_ms: AtomicU64,
    /// Times the long history was dropped as stale.
    changes: AtomicU64,
}

fn pack(estimate: Estimate) -> u64 {
    (u64::from((estimate.outcomes as f32).to_bits()) << 32)
        | u64::from((estimate.successes as f32).to_bits())
}

fn unpack(bits: u64) -> Estimate {
    Estimate {
        outcomes: f64::from(f32::from_bits((bits >> 32) as u32)),
        successes: f64::from(f32::from_bits(bits as u32)),
    }
}

fn time_fade(elapsed_ms: u64) -> f64 {
    (-(elapsed_ms as f64) / EVIDENCE_HORIZON_MS).exp()
}

/// Folds one outcome into `cell`, after fading what it held by `fade`; the new estimate.
fn fold(cell: &AtomicU64, fade: f64, success: bool) -> Estimate {
    let update = |old: Estimate| Estimate {
        outcomes: old.outcomes * fade + 1.0,
        successes: old.successes * fade + f64::from(u8::from(success)),
    };
    match cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        Some(pack(update(unpack(bits))))
    }) {
        Ok(bits) | Err(bits) => update(unpack(bits)),
    }
}

/// Whether `recent` no longer fits `long`: its rate sits more than [`CHANGE_THRESHOLD`]
/// standard errors (of a rate over `recent.outcomes` outcomes at the long rate) away.
fn changed(long: Estimate, recent: Estimate) -> bool {
    if recent.outcomes < RECENT_MEMORY / 4.0 || long.outcomes <= recent.outcomes {
        return false;
    }
    let expected = long.rate();
    let error = (expected * (1.0 - expected) / recent.outcomes).sqrt();
    (recent.rate() - expected).abs() > CHANGE_THRESHOLD * error
}

impl Evidence {
    pub fn observe(&self, now_ms: u64, success: bool) {
        let last = self.at_ms.swap(now_ms, Ordering::AcqRel);
        let time = time_fade(now_ms.saturating_sub(last));
        let long = fold(&self.long, time * (1.0 - 1.0 / EVIDENCE_MEMORY), success);
        let recent = fold(&self.recent, time * (1.0 - 1.0 / RECENT_MEMORY), success);
        if changed(long, recent) {
            self.long.store(pack(recent), Ordering::Release);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The long evidence, faded to `now_ms`.
    pub fn read(&self, now_ms: u64) -> Estimate {
        self.faded(&self.long, now_ms)
    }

    fn faded(&self, cell: &AtomicU64, now_ms: u64) -> Estimate {
        let estimate = unpack(cell.load(Ordering::Acquire));
        let fade = time_fade(now_ms.saturating_sub(self.at_ms.load(Ordering::Acquire)));
        Estimate {
            outcomes: estimate.outcomes * fade,
            successes: estimate.successes * fade,
        }
    }

    /// The change detector's state, for `/admin/explain`.
    pub fn detector(&self, now_ms: u64) -> Detector {
        Detector {
            recent: self.faded(&self.recent, now_ms),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }
}

/// What the change detector sees: the last ~[`RECENT_MEMORY`] outcomes, and how often they
/// have contradicted the long evidence so far (each time, the long history was dropped).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Detector {
    pub recent: Estimate,
    pub changes: u64,
}

/// One segment's figures.
#[derive(Default)]
struct Segment {
    window: Ring<WINDOW_SECS>,
    evidence: Evidence,
}

/// What the router reads of a channel for one payment.
#[derive(Debug, Clone, Copy)]
pub struct Success {
    /// Window counts (the last 30 s).
    pub counts: Counts,
    /// The evidence Thompson sampling draws from.
    pub evidence: Estimate,
    /// Its change detector.
    pub detector: Detector,
    /// Whether both are the segment's (method x currency) or the channel's.
    pub from_segment: bool,
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
    evidence: Evidence,
    segments: DashMap<u64, Arc<Segment>>,
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
        let success = observation == Observation::Success;
        self.evidence.observe(now_ms, success);
        if let Some(segment) = self.segment(segment) {
            segment.window.add(now_ms, counts);
            segment.evidence.observe(now_ms, success);
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

    fn segment(&self, key: u64) -> Option<Arc<Segment>> {
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

    /// The channel's success evidence as a whole.
    pub fn evidence(&self, now_ms: u64) -> Estimate {
        self.evidence.read(now_ms)
    }

    /// The segment's figures when its window has at least `min_samples`, else the
    /// channel's.
    pub fn success(&self, now_ms: u64, segment: u64, min_samples: u64) -> Success {
        if let Some(segment) = self.segments.get(&segment) {
            let counts = Counts::from_sums(segment.window.sum(now_ms));
            if counts.total >= min_samples {
                return Success {
                    counts,
                    evidence: segment.evidence.read(now_ms),
                    detector: segment.evidence.detector(now_ms),
                    from_segment: true,
                };
            }
        }
        Success {
            counts: self.overall(now_ms),
            evidence: self.evidence(now_ms),
            detector: self.evidence.detector(now_ms),
            from_segment: false,
        }
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
        assert!((score.evidence(1_000).rate() - 0.75).abs() < 1e-3);
        // 30 s later the window has forgotten them.
        assert_eq!(score.overall(1_000 + 30_000).total, 0);
        assert!((Estimate::default().rate() - 0.5).abs() < 1e-9);
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
        let success = score.success(0, eur, 20);
        assert_eq!(
            (success.counts, success.from_segment),
            (
                Counts {
                    total: 30,
                    successes: 30,
                    faults: 0
                },
                true
            )
        );
        assert!((success.evidence.successes - success.evidence.outcomes).abs() < 1e-3);
        let success = score.success(0, usd, 20);
        assert!(!success.from_segment);
        assert_eq!(success.counts.total, 35);
    }

    #[test]
    fn evidence_is_counted_in_outcomes_and_fades_with_time() {
        let evidence = Evidence::default();
        // A long good run, then an abrupt collapse: the estimate follows within ~100
        // outcomes, whatever the rate (here all in one millisecond).
        for _ in 0..10_000 {
            evidence.observe(1_000, true);
        }
        let before = evidence.read(1_000);
        assert!(
            (before.outcomes - EVIDENCE_MEMORY).abs() < 5.0,
            "{before:?}"
        );
        assert!(before.rate() > 0.99);
        assert_eq!(evidence.detector(1_000).changes, 0);
        for n in 0..100 {
            evidence.observe(1_000, n % 10 < 3);
        }
        let after = evidence.read(1_000);
        assert!(after.rate() < 0.75, "{after:?}");
        assert!(
            evidence.detector(1_000).changes >= 1,
            "the collapse was detected"
        );
        // Without traffic it fades toward the prior, so the channel is probed again.
        let later = evidence.read(1_000 + 90_000);
        assert!(later.outcomes < 0.06 * EVIDENCE_MEMORY, "{later:?}");
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
