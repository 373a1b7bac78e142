//! The routing decision: which rule applies to a payment, which of its channels may take it,
//! and in which order to try them; plus the live state that informs it (scores, ejection, the
//! retry budget).
//!
//! `decide` is the one place a route is chosen. It reads the config snapshot and the live
//! scores and returns a [`Decision`] that also explains itself (every candidate, its figures
//! and why it was or was not used). It performs no I/O and sends nothing: the payment handler
//! walks the decision's `order` and reports each outcome back through [`ChannelScore::observe`].

mod adaptive;
pub mod budget;
pub mod clock;
pub mod health;
mod rules;
pub mod score;
mod window;

use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

pub use budget::RetryBudget;
pub use clock::Clock;
pub use health::{Cause, State};
pub use rules::RuleIndex;
pub use score::{ChannelScore, Counts, Detector, Estimate, Observation, Traffic, segment_key};

use crate::config::{ChannelId, Config, Strategy};
use crate::store::{Outcome, PaymentStatus};

/// What routing needs to know about a payment.
#[derive(Debug, Clone, Copy)]
pub struct PaymentFacts<'a> {
    pub merchant: &'a str,
    pub currency: &'a str,
    pub method: &'a str,
    pub country: Option<&'a str>,
    pub amount: u64,
}

/// How the first channel was chosen (Hyperswitch labels its decisions the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Adaptive: the pick also has the best expected score.
    BestScore,
    /// Adaptive: the draw favoured a channel that is not the best on expectation.
    Exploration,
    /// The pick is a channel on probation after an ejection.
    Probe,
    Priority,
    Weighted,
    /// Every eligible channel was ejected; the least bad one is used anyway.
    Panic,
}

/// Why a channel of the rule is or is not in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Eligible,
    /// Cannot take this payment (currency, method, country or amount).
    Ineligible,
    Ejected,
    /// On probation, and this payment was not one of its probes.
    NotProbed,
    /// Ejected, but kept because no channel was left (panic rule).
    KeptInPanic,
    /// Switched off by an operator: never used, not even in panic.
    Drained,
}

/// One channel of the matched rule, with the figures the decision used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    #[serde(skip)]
    pub channel: ChannelId,
    pub standing: Standing,
    pub state: State,
    /// Window counts (the last 30 s), for operators and the panic rule.
    pub counts: Counts,
    /// The success evidence Thompson sampling draws from (memory counted in payments).
    pub evidence: Estimate,
    /// Its change detector: the recent outcomes and how often they dropped a stale history.
    pub detector: Detector,
    /// Whether `counts` and `evidence` are the segment's (method x currency) or the channel's.
    pub from_segment: bool,
    pub success_rate: f64,
    /// Mean latency (what the score penalises) and the peak-EWMA estimate.
    pub latency_ms: f64,
    pub latency_peak_ms: f64,
    /// The channel's fee for this amount, minor units.
    pub fee: u64,
    /// Adaptive only: the Thompson draw and the score after penalties.
    pub sample: Option<f64>,
    pub score: Option<f64>,
}

/// The rule that matched and the channels to try, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rule: usize,
    pub strategy: Strategy,
    pub label: Label,
    /// Channels to try, in order.
    pub order: Vec<ChannelId>,
    /// Every channel the rule lists.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("no routing rule matches this payment")]
    NoRule,
    #[error("rule {rule:?} has no channel that can take this payment")]
    NoChannel { rule: String },
}

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The payment has its answer (succeeded, declined, or pending when the channel may have
    /// acted on it).
    Final(PaymentStatus),
    /// The channel surely did not charge: the next channel may be tried.
    FailOver,
}

/// The failover rule, in one place: only a failure that proves nothing was charged (the
/// channel was unavailable, or declined with a code it lists as retryable) moves a payment to
/// another channel; a timeout or a fault after sending leaves it pending where it is.
pub fn verdict(outcome: Outcome, retryable_decline: bool) -> Verdict {
    match outcome {
        Outcome::Succeeded => Verdict::Final(PaymentStatus::Succeeded),
        Outcome::Declined if retryable_decline => Verdict::FailOver,
        Outcome::Declined => Verdict::Final(PaymentStatus::Declined),
        Outcome::Pending | Outcome::Error | Outcome::Timeout => {
            Verdict::Final(PaymentStatus::Pending)
        }
        Outcome::Unavailable => Verdict::FailOver,
    }
}

/// Live routing state that outlives config snapshots: scores by channel name, the retry
/// budget, and the clock they are measured on.
pub struct Router {
    pub clock: Clock,
    pub budget: RetryBudget,
    scores: DashMap<String, Arc<ChannelScore>>,
    traffic: Arc<Traffic>,
}

impl Router {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            budget: RetryBudget::new(),
            scores: DashMap::new(),
            traffic: Arc::default(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Scores indexed by the channel ids of `config`; a channel known by name keeps its
    /// figures, a new one starts fresh.
    pub fn scores_for(&self, config: &Config) -> Vec<Arc<ChannelScore>> {
        config
            .channels
            .iter()
            .map(|c| {
                self.scores
                    .entry(c.name.clone())
                    .or_insert_with(|| Arc::new(ChannelScore::with_traffic(self.traffic.clone())))
                    .clone()
            })
            .collect()
    }

    /// The live score of the channel called `name`, made fresh when no config has had it yet
    /// (a switch shared by another replica may name a channel this one's config adds later:
    /// the channel then starts with that switch).
    pub fn score(&self, name: &str) -> Arc<ChannelScore> {
        if let Some(score) = self.scores.get(name) {
            return score.clone();
        }
        self.scores
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ChannelScore::with_traffic(self.traffic.clone())))
            .clone()
    }

    /// Success-rate ejection, run about once a second: a channel with enough calls whose
    /// availability (share of calls without a fault) is under the configured floor, or far
    /// below the best of its peers, is ejected. Envoy's mean - 1.9 sigma rule needs 5 hosts
    /// with 100 calls each; payment routes have 2 to 4 channels, hence a floor and a gap.
    pub fn sweep(&self, config: &Config, scores: &[Arc<ChannelScore>]) -> Vec<(ChannelId, Cause)> {
        let now = self.now_ms();
        let settings = &config.routing.ejection;
        let availability: Vec<Option<f64>> = scores
            .iter()
            .map(|s| {
                let counts = s.overall(now);
                (counts.total >= settings.min_requests).then(|| counts.availability())
            })
            .collect();
        let mut ejected = Vec::new();
        for (id, own) in availability.iter().enumerate() {
            let Some(own) = *own else { continue };
            let best_peer = availability
                .iter()
                .enumerate()
                .filter(|(peer, _)| *peer != id)
                .filter_map(|(_, a)| *a)
                .fold(None, |best: Option<f64>, a| {
                    Some(best.map_or(a, |b| b.max(a)))
                });
            let outlier = own < settings.availability_floor
                || best_peer.is_some_and(|best| own < best - settings.availability_gap);
            if outlier && scores[id].health.eject(now, settings) {
                ejected.push((id, Cause::SuccessRate));
            }
        }
        ejected
    }
}

/// Chooses the rule and orders its channels. `scores` is indexed by channel id.
pub fn decide(
    config: &Config,
    scores: &[Arc<ChannelScore>],
    payment: &PaymentFacts<'_>,
    now_ms: u64,
    rng: &mut impl rand::Rng,
) -> Result<Decision, RoutingError> {
    let number = config
        .rule_index
        .first_match(payment)
        .ok_or(RoutingError::NoRule)?;
    let rule = &config.rules[number];
    let settings = &config.routing;
    let segment = segment_key(payment.method, payment.currency);
    let mut candidates = Vec::with_capacity(rule.channels.len());
    let mut order = Vec::with_capacity(rule.channels.len());
    for &id in &rule.channels {
        let channel = &config.channels[id];
        let score = &scores[id];
        let state = score.health.state(now_ms);
        let success = score.success(now_ms, segment, settings.min_segment_samples);
        let standing = if !channel.accepts(payment) {
            Standing::Ineligible
        } else if score.is_drained() {
            Standing::Drained
        } else {
            match state {
                State::Healthy => Standing::Eligible,
                State::Ejected => Standing::Ejected,
                State::Probing if adaptive::chance(settings.ejection.probe_share, rng) => {
                    Standing::Eligible
                }
                State::Probing => Standing::NotProbed,
            }
        };
        if standing == Standing::Eligible {
            order.push(id);
        }
        candidates.push(Candidate {
            channel: id,
            standing,
            state,
            counts: success.counts,
            evidence: success.evidence,
            detector: success.detector,
            from_segment: success.from_segment,
            success_rate: success.evidence.rate(),
            latency_ms: score.latency_ms(),
            latency_peak_ms: score.latency_peak_ms(),
            fee: channel.fee.of(payment.amount),
            sample: None,
            score: None,
        });
    }
    if order.is_empty() {
        let kept = least_bad(&candidates).ok_or_else(|| RoutingError::NoChannel {
            rule: rule.name.clone(),
        })?;
        candidates[kept].standing = Standing::KeptInPanic;
        return Ok(Decision {
            rule: number,
            strategy: rule.strategy,
            label: Label::Panic,
            order: vec![candidates[kept].channel],
            candidates,
        });
    }
    let label = match rule.strategy {
        Strategy::Priority => Label::Priority,
        Strategy::Weighted => {
            weighted_order(&mut order, |id| config.channels[id].weight, rng);
            Label::Weighted
        }
        Strategy::Adaptive => {
            adaptive_order(&mut order, &mut candidates, payment.amount, config, rng)
        }
    };
    // A channel on probation that drew a probe gets this payment first: a probe at the back
    // of the order would almost never be tried.
    let probe = candidates
        .iter()
        .find(|c| c.state == State::Probing && c.standing == Standing::Eligible)
        .map(|c| c.channel);
    if let Some(position) = probe.and_then(|id| order.iter().position(|&o| o == id)) {
        order[..=position].rotate_right(1);
    }
    Ok(Decision {
        rule: number,
        strategy: rule.strategy,
        label: if probe.is_some() { Label::Probe } else { label },
        order,
        candidates,
    })
}

/// The eligible-but-ejected candidate with the best availability, then success rate.
fn least_bad(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.standing, Standing::Ejected | Standing::NotProbed))
        .max_by(|(_, a), (_, b)| {
            a.counts
                .availability()
                .total_cmp(&b.counts.availability())
                .then(a.success_rate.total_cmp(&b.success_rate))
        })
        .map(|(i, _)| i)
}

/// Orders by Thompson score (see `adaptive`); labels the pick.
fn adaptive_order(
    order: &mut [ChannelId],
    candidates: &mut [Candidate],
    amount: u64,
    config: &Config,
    rng: &mut impl rand::Rng,
) -> Label {
    let settings = &config.routing;
    let mut best_expected = (f64::MIN, usize::MAX);
    // The candidates in `order` are exactly the eligible ones.
    let mut ranked = Vec::with_capacity(order.len());
    for candidate in candidates
        .iter_mut()
        .filter(|c| c.standing == Standing::Eligible)
    {
        let penalty = adaptive::penalty(
            candidate.latency_ms,
            candidate.fee,
            amount,
            settings.latency_penalty_per_second,
            settings.fee_penalty,
        );
        let sample = adaptive::sample_success(&candidate.evidence, rng);
        candidate.sample = Some(sample);
        candidate.score = Some(sample - penalty);
        ranked.push((sample - penalty, candidate.channel));
        let expected = candidate.success_rate - penalty;
        if expected > best_expected.0 {
            best_expected = (expected, candidate.channel);
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (slot, (_, channel)) in order.iter_mut().zip(ranked) {
        *slot = channel;
    }
    if order[0] == best_expected.1 {
        Label::BestScore
    } else {
        Label::Exploration
    }
}

/// Draws channels one by one without replacement, each with probability proportional to its
/// weight; weight-0 channels go last, as fallbacks.
fn weighted_order(
    order: &mut [ChannelId],
    weight: impl Fn(ChannelId) -> u32,
    rng: &mut impl rand::Rng,
) {
    use rand::RngExt;
    for start in 0..order.len() {
        let total: u64 = order[start..].iter().map(|&id| u64::from(weight(id))).sum();
        if total == 0 {
            return;
        }
        let mut ticket = rng.random_range(0..total);
        let pick = order[start..]
            .iter()
            .position(|&id| {
                let w = u64::from(weight(id));
                if ticket < w {
                    return true;
                }
                ticket -= w;
                false
            })
            .unwrap_or(0);
        order.swap(start, start + pick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ROUTES: &str = r#"
[[channels]]
name = "a"
url = "http://127.0.0.1:1"
[[channels]]
name = "b"
url = "http://127.0.0.1:2"
[[channels]]
name = "c"
url = "http://127.0.0.1:3"
currencies = ["USD"]

[[rules]]
name = "all"
channels = ["a", "b", "c"]
"#;

    fn setup() -> (Config, Vec<Arc<ChannelScore>>) {
        let config = Config::parse(Path::new("t.toml"), ROUTES).unwrap();
        let scores = Router::new(Clock::manual()).scores_for(&config);
        (config, scores)
    }

    const EUR: PaymentFacts<'static> = PaymentFacts {
        merchant: "m",
        currency: "EUR",
        method: "card",
        country: None,
        amount: 1_000,
    };

    #[test]
    fn weighted_order_follows_weights() {
        let weights = [0u32, 3, 1];
        let mut first = [0u32; 3];
        let mut rng = rand::rng();
        for _ in 0..4000 {
            let mut order = vec![0, 1, 2];
            weighted_order(&mut order, |id| weights[id], &mut rng);
            assert_eq!(order[2], 0, "a weight-0 channel is only a fallback");
            first[order[0]] += 1;
        }
        assert_eq!(first[0], 0);
        assert!((2700..=3300).contains(&first[1]), "{first:?}");
    }

    #[test]
    fn adaptive_prefers_the_better_channel_and_explains() {
        let (config, scores) = setup();
        let e = &config.routing.ejection;
        let seg = segment_key("card", "EUR");
        for _ in 0..200 {
            scores[0].observe(0, seg, Observation::Decline, None, e);
            scores[1].observe(0, seg, Observation::Success, None, e);
        }
        let decision = decide(&config, &scores, &EUR, 0, &mut rand::rng()).unwrap();
        assert_eq!(decision.order, vec![1, 0]);
        assert_eq!(decision.label, Label::BestScore);
        assert_eq!(decision.candidates[2].standing, Standing::Ineligible);
        assert_eq!(decision.candidates[1].counts.successes, 200);
        assert!(decision.candidates[1].from_segment);
        assert!(decision.candidates[1].score.is_some());
    }

    #[test]
    fn ejected_channels_are_skipped_but_never_all() {
        let (config, scores) = setup();
        let e = &config.routing.ejection;
        for _ in 0..e.consecutive_faults {
            scores[0].observe(0, 0, Observation::Fault, None, e);
        }
        let decision = decide(&config, &scores, &EUR, 1, &mut rand::rng()).unwrap();
        assert_eq!(decision.order, vec![1]);
        assert_eq!(decision.candidates[0].standing, Standing::Ejected);
        for _ in 0..e.consecutive_faults {
            scores[1].observe(0, 0, Observation::Fault, None, e);
        }
        scores[1].observe(0, 0, Observation::Success, None, e);
        scores[1].health.eject(0, e);
        let decision = decide(&config, &scores, &EUR, 1, &mut rand::rng()).unwrap();
        assert_eq!(decision.label, Label::Panic);
        assert_eq!(decision.order, vec![1], "b has the better availability");
        assert_eq!(decision.candidates[1].standing, Standing::KeptInPanic);
    }

    #[test]
    fn sweep_ejects_a_channel_far_below_its_peers() {
        let (config, scores) = setup();
        let router = Router::new(Clock::manual());
        let e = &config.routing.ejection;
        for i in 0..100 {
            // a: 40% faults, spread so that the consecutive rule never fires.
            let a = if i % 5 < 2 {
                Observation::Fault
            } else {
                Observation::Success
            };
            scores[0].observe(0, 0, a, None, e);
            scores[1].observe(0, 0, Observation::Success, None, e);
        }
        assert_eq!(scores[0].health.state(0), State::Healthy);
        let ejected = router.sweep(&config, &scores);
        assert_eq!(ejected, vec![(0, Cause::SuccessRate)]);
        assert_eq!(scores[0].health.state(0), State::Ejected);
    }
}
