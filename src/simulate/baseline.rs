//! The strategies the real router is measured against: round robin, static priority, an
//! oracle that knows each channel's true chance of approving a payment at this moment, and two
//! learned success-rate routers built from their published descriptions
//! (`shared/ROUTING-NOTES.md`): Hyperswitch-style (buckets of 5 payments, 8 buckets kept, a
//! score only once 5 buckets exist, 20% of traffic explores) and decision-engine-style (the
//! last 50 transactions per channel, 5% hedging). Both keep their figures per segment
//! (method x currency) and channel, as those routers do.
//!
//! They share the router's notion of eligibility (the first matching rule, then the channels
//! of it that accept the payment) and nothing else: no ejection, no latency or fee penalty.
//! Must not touch the live routing state, so that a baseline run can never change what the
//! real router learns.

use std::collections::{HashMap, VecDeque};

use rand::RngExt;
use rand::seq::SliceRandom;

use crate::config::{ChannelId, Config};
use crate::routing::{PaymentFacts, RoutingError};

/// The matched rule's number and its channels that can take the payment, in rule order; the
/// same errors as `routing::decide` when there are none.
pub fn eligible(
    config: &Config,
    payment: &PaymentFacts<'_>,
) -> Result<(usize, Vec<ChannelId>), RoutingError> {
    let number = config
        .rule_index
        .first_match(payment)
        .ok_or(RoutingError::NoRule)?;
    let rule = &config.rules[number];
    let channels: Vec<ChannelId> = rule
        .channels
        .iter()
        .copied()
        .filter(|&id| config.channels[id].accepts(payment))
        .collect();
    if channels.is_empty() {
        return Err(RoutingError::NoChannel {
            rule: rule.name.clone(),
        });
    }
    Ok((number, channels))
}

/// Starts at the `turn`-th eligible channel and wraps around, so that successive payments of
/// a rule spread evenly and each still fails over to every other channel.
pub fn round_robin(mut eligible: Vec<ChannelId>, turn: u64) -> Vec<ChannelId> {
    let len = eligible.len() as u64;
    if len > 0 {
        eligible.rotate_left((turn % len) as usize);
    }
    eligible
}

/// The rule's order, always.
pub fn priority(eligible: Vec<ChannelId>) -> Vec<ChannelId> {
    eligible
}

/// Best true chance of approval first; ties keep rule order (the sort is stable).
pub fn oracle(mut eligible: Vec<ChannelId>, truth: impl Fn(ChannelId) -> f64) -> Vec<ChannelId> {
    eligible.sort_by(|&a, &b| truth(b).total_cmp(&truth(a)));
    eligible
}

/// How a learned baseline keeps and reads its outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learner {
    /// Hyperswitch's defaults: buckets of 5 payments, 8 kept, a score once 5 exist, 20%
    /// exploration.
    Hyperswitch,
    /// decision-engine's defaults: the last 50 transactions, 5% hedging.
    DecisionEngine,
}

impl Learner {
    fn memory(self) -> usize {
        match self {
            Self::Hyperswitch => 8 * 5,
            Self::DecisionEngine => 50,
        }
    }

    fn explore_share(self) -> f64 {
        match self {
            Self::Hyperswitch => 0.20,
            Self::DecisionEngine => 0.05,
        }
    }

    /// Outcomes needed before a score counts (Hyperswitch: 5 whole buckets).
    fn min_outcomes(self) -> usize {
        match self {
            Self::Hyperswitch => 5 * 5,
            Self::DecisionEngine => 1,
        }
    }
}

/// A learned success-rate router's memory: the last outcomes of each (segment, channel).
pub struct SuccessRouter {
    learner: Learner,
    outcomes: HashMap<(u64, ChannelId), VecDeque<bool>>,
}

impl SuccessRouter {
    pub fn new(learner: Learner) -> Self {
        Self {
            learner,
            outcomes: HashMap::new(),
        }
    }

    /// An answer: approved or not (faults and declines alike, as those routers count them).
    pub fn observe(&mut self, segment: u64, channel: ChannelId, approved: bool) {
        let memory = self.learner.memory();
        let kept = self.outcomes.entry((segment, channel)).or_default();
        if kept.len() == memory {
            kept.pop_front();
        }
        kept.push_back(approved);
    }

    fn score(&self, segment: u64, channel: ChannelId) -> Option<f64> {
        let kept = self.outcomes.get(&(segment, channel))?;
        if kept.len() < self.learner.min_outcomes() {
            return None;
        }
        Some(kept.iter().filter(|a| **a).count() as f64 / kept.len() as f64)
    }

    /// The explore share in random order; otherwise scored channels by score (the rest after,
    /// in rule order: they are learned through exploration).
    pub fn order(
        &self,
        segment: u64,
        mut eligible: Vec<ChannelId>,
        rng: &mut impl rand::Rng,
    ) -> Vec<ChannelId> {
        if rng.random::<f64>() < self.learner.explore_share() {
            eligible.shuffle(rng);
            return eligible;
        }
        let score = |id: ChannelId| self.score(segment, id).unwrap_or(-1.0);
        eligible.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        eligible
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::path::Path;

    #[test]
    fn learned_baselines_follow_their_windows_and_explore_their_share() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut router = SuccessRouter::new(Learner::DecisionEngine);
        for n in 0..100 {
            router.observe(7, 0, n % 10 < 9);
            router.observe(7, 1, n % 10 < 5);
        }
        let firsts = (0..10_000)
            .filter(|_| router.order(7, vec![1, 0], &mut rng)[0] == 0)
            .count();
        // 95% exploit (channel 0), half of the 5% hedging lands on it too.
        assert!((9_600..=9_900).contains(&firsts), "{firsts}");
        // Only the last 50 count: channel 0 collapses, 50 outcomes later it is behind.
        for _ in 0..50 {
            router.observe(7, 0, false);
        }
        assert_eq!(router.score(7, 0), Some(0.0));
        // Hyperswitch needs 5 buckets (25 outcomes) before a score counts.
        let mut hyperswitch = SuccessRouter::new(Learner::Hyperswitch);
        for _ in 0..24 {
            hyperswitch.observe(1, 2, true);
        }
        assert_eq!(hyperswitch.score(1, 2), None);
        hyperswitch.observe(1, 2, true);
        assert_eq!(hyperswitch.score(1, 2), Some(1.0));
    }

    #[test]
    fn round_robin_rotates() {
        assert_eq!(round_robin(vec![4, 5, 6], 0), vec![4, 5, 6]);
        assert_eq!(round_robin(vec![4, 5, 6], 1), vec![5, 6, 4]);
        assert_eq!(round_robin(vec![4, 5, 6], 5), vec![6, 4, 5]);
        assert_eq!(round_robin(vec![], 3), Vec::<ChannelId>::new());
    }

    #[test]
    fn oracle_orders_by_the_truth_and_keeps_ties_in_rule_order() {
        let truth = [0.5, 0.9, 0.5, 0.0];
        assert_eq!(oracle(vec![0, 1, 2, 3], |id| truth[id]), vec![1, 0, 2, 3]);
        assert_eq!(priority(vec![3, 1]), vec![3, 1]);
    }

    #[test]
    fn eligibility_follows_the_rule_and_the_channels() {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"
[[channels]]
name = "a"
url = "http://127.0.0.1:9"
[[channels]]
name = "b"
url = "http://127.0.0.1:9"
currencies = ["USD"]
[[rules]]
name = "eur"
channels = ["b", "a"]
[rules.match]
currencies = ["EUR", "USD"]
"#,
        )
        .unwrap();
        let mut payment = PaymentFacts {
            merchant: "m",
            currency: "USD",
            method: "card",
            country: None,
            amount: 100,
        };
        assert_eq!(eligible(&config, &payment), Ok((0, vec![1, 0])));
        payment.currency = "EUR";
        assert_eq!(eligible(&config, &payment), Ok((0, vec![0])));
        payment.currency = "GBP";
        assert_eq!(eligible(&config, &payment), Err(RoutingError::NoRule));
    }
}
