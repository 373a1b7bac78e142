//! Live figures of one channel: success over a sliding window, overall and per segment
//! (payment method x currency), the success evidence routing decides on (its memory counted
//! in payments, see [`Evidence`]), a peak-sensitive latency average, and its ejection state.
//!
//! Recording is lock-free (atomic rings, a sharded map of segments), so every request can
//! update a channel without a lock shared with other requests. Scores are kept by channel
//! name in the [`super::Router`], so they outlive a config reload. Must not decide anything:
//! `routing::decide` reads these and chooses.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHasher};

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
/// is caught by the change detector instead (figures in benches/SIMULATE.md).
pub const EVIDENCE_MEMORY: f64 = 1_000.0;
/// Outcomes the change detector looks back over (one bit each, newest first).
const RECENT_OUTCOMES: u32 = 64;
/// The stretches of recent outcomes the detector tests against the history before them.
const WINDOWS: [u32; 6] = [8, 16, 24, 32, 48, 64];
/// Least history (outcomes) before a window for it to be tested: a change needs something
/// to change from.
const MIN_HISTORY: f64 = 32.0;
/// The log-likelihood ratio (nats) at which recent outcomes are judged to come from another
/// success rate than the history before them. A false alarm on a steady 92% channel is rarer
/// than one in ~10^5 outcomes; a 95% -> 30% collapse passes it within about 8 outcomes, a
/// 95% -> 70% drop within about 50.
pub const CHANGE_THRESHOLD: f64 = 10.0;
/// The evidence fades with the traffic of its segment (payments answered by any channel),
/// so that a channel which lost its traffic returns to a wide posterior and is probed again
/// after the same number of payments at 50/s as at 5,000/s ...
const TRAFFIC_HORIZON: f64 = 30_000.0;
/// ... and much sooner when the channel has just changed: after a detected change the
/// channel is volatile (it may flip back, as a flapping issuer link does) for
/// [`VOLATILE_SPAN`] payments, and its evidence fades over [`VOLATILE_HORIZON`]. Shorter
/// brings a flapping channel back faster but probes a channel that stays down more (the
/// trade-off is measured in benches/SIMULATE.md: 300 / 500 / 1,000).
const VOLATILE_HORIZON: f64 = 500.0;
const VOLATILE_SPAN: u64 = 10_000;
/// And it fades with time, so that the first payments after a quiet night are not routed on
/// yesterday's figures alone.
const TIME_HORIZON_MS: f64 = 600_000.0;

/// When an estimate is read or updated: the time, and how many outcomes its segment (or the
/// whole gateway, for a channel's overall evidence) has seen.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub ms: u64,
    pub traffic: u64,
}

/// Exponentially forgetting success counts with a change detector. The memory is counted in
/// outcomes ([`EVIDENCE_MEMORY`]) and fades with the segment's traffic and with time. The
/// detector keeps the last [`RECENT_OUTCOMES`] outcomes as bits, in the order their calls were
/// sent, and tests, after each outcome, whether the last k of them fit the history before them
/// (a generalised likelihood ratio over several k, as a Bernoulli CUSUM does for an unknown
/// change point); when they do not, the history is dropped and the evidence restarts from
/// those k outcomes. A collapse is thus acted on within a few dozen payments at any traffic
/// rate. Send order matters because answers overtake each other: just after a PSP degrades,
/// most answers that arrive are of calls sent before it did, and in arrival order they would
/// hide the few fast answers of calls sent after. Estimates are two f32 in one atomic word,
/// updated by compare-and-swap; only the detector's insertion takes a (per-evidence) lock,
/// and reading takes none.
#[derive(Default)]
pub struct Evidence {
    long: AtomicU64,
    recent: Mutex<Recent>,
    /// A copy of `recent.bits`, for readers.
    recent_bits: AtomicU64,
    seen: AtomicU64,
    at_ms: AtomicU64,
    at_traffic: AtomicU64,
    /// Times the history was dropped as stale, and the segment traffic at the last one.
    changes: AtomicU64,
    changed_at: AtomicU64,
}

/// The last outcomes in the order their calls were sent, newest (latest sent) in bit 0
/// (1 = approved); an answer that comes back late takes its place among the calls sent
/// before it.
#[derive(Default)]
struct Recent {
    bits: u64,
    /// Send times in ms, newest first, one per kept outcome.
    sent: VecDeque<u64>,
}

impl Recent {
    /// Inserts one outcome; the bits after it.
    fn insert(&mut self, sent_ms: u64, success: bool) -> u64 {
        let later = self.sent.iter().take_while(|&&t| t > sent_ms).count();
        if later >= RECENT_OUTCOMES as usize {
            // Older than every outcome kept: history already, not news.
            return self.bits;
        }
        if self.sent.len() >= RECENT_OUTCOMES as usize {
            self.sent.pop_back();
        }
        self.sent.insert(later, sent_ms);
        let low = (1u64 << later) - 1;
        self.bits = (self.bits & low) | (u64::from(success) << later) | ((self.bits & !low) << 1);
        self.bits
    }
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

/// Kullback-Leibler divergence of Bernoulli(q) from Bernoulli(p), in nats.
fn divergence(q: f64, p: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(q, p) + term(1.0 - q, 1.0 - p)
}

/// The strongest evidence of a change: over each window of the last k outcomes that has
/// enough history before it, k x KL(rate of the window || rate before it). Returns the
/// statistic and the window's own outcomes.
fn change_statistic(long: Estimate, recent: u64, seen: u64) -> (f64, Estimate) {
    let mut best = (0.0, Estimate::default());
    for k in WINDOWS {
        if u64::from(k) > seen {
            break;
        }
        let window = Estimate {
            outcomes: f64::from(k),
            successes: f64::from((recent & (u64::MAX >> (64 - k))).count_ones()),
        };
        let before = Estimate {
            outcomes: long.outcomes - window.outcomes,
            successes: (long.successes - window.successes).max(0.0),
        };
        if before.outcomes < MIN_HISTORY {
            break;
        }
        let statistic =
            window.outcomes * divergence(window.successes / window.outcomes, before.rate());
        if statistic > best.0 {
            best = (statistic, window);
        }
    }
    best
}

impl Evidence {
    fn fade(&self, now: Moment, changes: u64) -> f64 {
        let elapsed_ms = now.ms.saturating_sub(self.at_ms.load(Ordering::Acquire));
        let elapsed = now
            .traffic
            .saturating_sub(self.at_traffic.load(Ordering::Acquire));
        let horizon = if self.volatile(now, changes) {
            VOLATILE_HORIZON
        } else {
            TRAFFIC_HORIZON
        };
        (-(elapsed_ms as f64) / TIME_HORIZON_MS - elapsed as f64 / horizon).exp()
    }

    fn volatile(&self, now: Moment, changes: u64) -> bool {
        changes > 0
            && now
                .traffic
                .saturating_sub(self.changed_at.load(Ordering::Acquire))
                < VOLATILE_SPAN
    }

    /// Folds in the outcome of a call sent at `sent_ms`.
    pub fn observe(&self, now: Moment, sent_ms: u64, success: bool) {
        let changes = self.changes.load(Ordering::Relaxed);
        let fade = self.fade(now, changes);
        self.at_ms.fetch_max(now.ms, Ordering::AcqRel);
        self.at_traffic.fetch_max(now.traffic, Ordering::AcqRel);
        let long = fold(&self.long, fade * (1.0 - 1.0 / EVIDENCE_MEMORY), success);
        let recent = {
            let mut kept = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let bits = kept.insert(sent_ms, success);
            self.recent_bits.store(bits, Ordering::Release);
            bits
        };
        let seen = self.seen.fetch_add(1, Ordering::AcqRel) + 1;
        let (statistic, window) = change_statistic(long, recent, seen);
        if statistic > CHANGE_THRESHOLD {
            self.long.store(pack(window), Ordering::Release);
            self.changed_at.store(now.traffic, Ordering::Release);
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The evidence, faded to `now`.
    pub fn read(&self, now: Moment) -> Estimate {
        let estimate = unpack(self.long.load(Ordering::Acquire));
        let fade = self.fade(now, self.changes.load(Ordering::Relaxed));
        Estimate {
            outcomes: estimate.outcomes * fade,
            successes: estimate.successes * fade,
        }
    }

    /// The change detector's state, for `/admin/explain`.
    pub fn detector(&self, now: Moment) -> Detector {
        let recent = self.recent_bits.load(Ordering::Acquire);
        let seen = self.seen.load(Ordering::Acquire);
        let kept = seen.min(u64::from(RECENT_OUTCOMES)) as u32;
        let mask = if kept == 0 {
            0
        } else {
            u64::MAX >> (64 - kept)
        };
        let changes = self.changes.load(Ordering::Relaxed);
        Detector {
            recent: Estimate {
                outcomes: f64::from(kept),
                successes: f64::from((recent & mask).count_ones()),
            },
            statistic: change_statistic(unpack(self.long.load(Ordering::Acquire)), recent, seen).0,
            threshold: CHANGE_THRESHOLD,
            changes,
            volatile: self.volatile(now, changes),
        }
    }
}

/// What the change detector sees: the last outcomes (up to 64), how far they now sit from
/// the history before them (a log-likelihood ratio; at `threshold` the history is dropped),
/// how often that has happened, and whether the channel changed recently (its evidence then
/// fades faster, so it is probed again sooner).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Detector {
    pub recent: Estimate,
    pub statistic: f64,
    pub threshold: f64,
    pub changes: u64,
    pub volatile: bool,
}

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

/// Payments answered by any channel, in all and per segment: the clock the evidence fades
/// on, so that a channel's figures age with the traffic that passed it by, not only with its
/// own calls. Shared by all the channels of one [`super::Router`].
#[derive(Default)]
pub struct Traffic {
    all: AtomicU64,
    segments: DashMap<u64, Arc<AtomicU64>, FxBuildHasher>,
}

impl Traffic {
    /// The counter of segment `key`, shared by every channel's figures of that segment
    /// (beyond [`MAX_SEGMENTS`], one of its own).
    fn counter(&self, key: u64) -> Arc<AtomicU64> {
        if self.segments.len() >= MAX_SEGMENTS && !self.segments.contains_key(&key) {
            return Arc::default();
        }
        self.segments.entry(key).or_default().clone()
    }
}

/// One segment's figures.
struct Segment {
    window: Ring<WINDOW_SECS>,
    evidence: Evidence,
    /// Payments of this segment answered by any channel.
    traffic: Arc<AtomicU64>,
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
    segments: DashMap<u64, Arc<Segment>, FxBuildHasher>,
    traffic: Arc<Traffic>,
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

    /// A channel whose evidence fades with the payments counted in `traffic`.
    pub fn with_traffic(traffic: Arc<Traffic>) -> Self {
        Self {
            traffic,
            ..Self::default()
        }
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
        let moment = |traffic| Moment {
            ms: now_ms,
            traffic,
        };
        // Faults carry no latency: they count as sent now.
        let sent_ms = now_ms.saturating_sub(latency.map_or(0, |l| l.as_millis() as u64));
        let all = self.traffic.all.fetch_add(1, Ordering::AcqRel) + 1;
        self.evidence.observe(moment(all), sent_ms, success);
        if let Some(segment) = self.segment(segment) {
            segment.window.add(now_ms, counts);
            let own = segment.traffic.fetch_add(1, Ordering::AcqRel) + 1;
            segment.evidence.observe(moment(own), sent_ms, success);
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
        let segment = self.segments.entry(key).or_insert_with(|| {
            Arc::new(Segment {
                window: Ring::default(),
                evidence: Evidence::default(),
                traffic: self.traffic.counter(key),
            })
        });
        Some(segment.clone())
    }

    pub fn overall(&self, now_ms: u64) -> Counts {
        Counts::from_sums(self.overall.sum(now_ms))
    }

    /// The channel's success evidence as a whole.
    pub fn evidence(&self, now_ms: u64) -> Estimate {
        self.evidence.read(self.overall_moment(now_ms))
    }

    fn overall_moment(&self, now_ms: u64) -> Moment {
        Moment {
            ms: now_ms,
            traffic: self.traffic.all.load(Ordering::Acquire),
        }
    }

    /// The segment's figures when its window has at least `min_samples`, else the
    /// channel's.
    pub fn success(&self, now_ms: u64, key: u64, min_samples: u64) -> Success {
        if let Some(segment) = self.segments.get(&key) {
            let counts = Counts::from_sums(segment.window.sum(now_ms));
            if counts.total >= min_samples {
                let now = Moment {
                    ms: now_ms,
                    traffic: segment.traffic.load(Ordering::Acquire),
                };
                return Success {
                    counts,
                    evidence: segment.evidence.read(now),
                    detector: segment.evidence.detector(now),
                    from_segment: true,
                };
            }
        }
        let now = self.overall_moment(now_ms);
        Success {
            counts: self.overall(now_ms),
            evidence: self.evidence.read(now),
            detector: self.evidence.detector(now),
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
    use rand::{RngExt, SeedableRng};

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
    fn evidence_is_counted_in_outcomes_and_fades_with_traffic() {
        let evidence = Evidence::default();
        let at = |traffic| Moment { ms: 1_000, traffic };
        // A long good run, all in one millisecond: the memory is counted in outcomes.
        for n in 0..10_000 {
            evidence.observe(at(n), 1_000, true);
        }
        let before = evidence.read(at(10_000));
        assert!(before.outcomes > 0.6 * EVIDENCE_MEMORY, "{before:?}");
        assert!(before.rate() > 0.99);
        assert_eq!(evidence.detector(at(10_000)).changes, 0);
        // A collapse to 30%: the history is dropped within a few dozen outcomes.
        let mut caught = None;
        for n in 0..64 {
            evidence.observe(at(10_000 + n), 1_000, n % 10 < 3);
            if caught.is_none() && evidence.detector(at(10_000 + n)).changes > 0 {
                caught = Some(n + 1);
            }
        }
        assert!(caught.is_some_and(|n| n <= 24), "caught after {caught:?}");
        let after = evidence.read(at(10_064));
        assert!(after.rate() < 0.5, "{after:?}");
        let detector = evidence.detector(at(10_064));
        assert!(detector.volatile && detector.threshold == CHANGE_THRESHOLD);
        // A channel that changed fades with the traffic that passes it by, toward the prior,
        // so it is probed again: after 1,500 payments elsewhere, little is left.
        let later = evidence.read(at(11_564));
        assert!(later.outcomes < 0.06 * after.outcomes, "{later:?}");
    }

    #[test]
    fn the_detector_orders_outcomes_by_when_their_calls_were_sent() {
        let mut recent = Recent::default();
        // Sent at 10, 30, then an answer of a call sent at 20 arrives last.
        recent.insert(10, true);
        recent.insert(30, false);
        assert_eq!(recent.insert(20, true), 0b110);
        assert_eq!(recent.sent, [30, 20, 10]);
        // Once 64 are kept, an answer older than all of them is history, not news.
        for t in 100..164 {
            recent.insert(t, true);
        }
        assert_eq!(recent.insert(5, false), u64::MAX);
        assert_eq!(recent.sent.len(), RECENT_OUTCOMES as usize);
    }

    #[test]
    fn a_steady_channel_raises_no_change() {
        let evidence = Evidence::default();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for n in 0..100_000 {
            evidence.observe(Moment { ms: 0, traffic: n }, 0, rng.random_bool(0.92));
        }
        assert_eq!(
            evidence
                .detector(Moment {
                    ms: 0,
                    traffic: 100_000
                })
                .changes,
            0
        );
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
