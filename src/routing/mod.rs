//! The routing decision: which rule applies to a payment and in which order its channels are
//! tried.
//!
//! `decide` is the one place a route is chosen. It reads the config snapshot and the live
//! scores, performs no I/O and never sends anything: the payment handler acts on the
//! [`Decision`] it returns (and failover walks its `order`).

mod rules;
pub mod score;

use std::sync::Arc;

pub use rules::RuleIndex;
pub use score::ChannelScore;

use crate::config::{ChannelId, Config, Strategy};

/// What routing needs to know about a payment.
#[derive(Debug, Clone, Copy)]
pub struct PaymentFacts<'a> {
    pub merchant: &'a str,
    pub currency: &'a str,
    pub method: &'a str,
    pub country: Option<&'a str>,
    pub amount: u64,
}

/// The rule that matched and the channels to try, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rule: usize,
    pub strategy: Strategy,
    /// Channels able to take the payment, in the order to try them.
    pub order: Vec<ChannelId>,
    /// Channels the rule lists that cannot take this payment (currency, method, amount...).
    pub ineligible: Vec<ChannelId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("no routing rule matches this payment")]
    NoRule,
    #[error("rule {rule:?} has no channel that can take this payment")]
    NoChannel { rule: String },
}

/// Chooses the rule and orders its eligible channels. `scores` is indexed by channel id.
pub fn decide(
    config: &Config,
    scores: &[Arc<ChannelScore>],
    payment: &PaymentFacts<'_>,
) -> Result<Decision, RoutingError> {
    let number = config
        .rule_index
        .first_match(payment)
        .ok_or(RoutingError::NoRule)?;
    let rule = &config.rules[number];
    let (mut order, ineligible): (Vec<ChannelId>, Vec<ChannelId>) = rule
        .channels
        .iter()
        .partition(|&&id| config.channels[id].accepts(payment));
    if order.is_empty() {
        return Err(RoutingError::NoChannel {
            rule: rule.name.clone(),
        });
    }
    match rule.strategy {
        Strategy::Priority => {}
        Strategy::Weighted => weighted_order(&mut order, |id| config.channels[id].weight),
        Strategy::Adaptive => adaptive_order(&mut order, scores),
    }
    Ok(Decision {
        rule: number,
        strategy: rule.strategy,
        order,
        ineligible,
    })
}

/// Draws channels one by one without replacement, each with probability proportional to its
/// weight; weight-0 channels go last, as fallbacks.
fn weighted_order(order: &mut [ChannelId], weight: impl Fn(ChannelId) -> u32) {
    for start in 0..order.len() {
        let total: u64 = order[start..].iter().map(|&id| u64::from(weight(id))).sum();
        if total == 0 {
            return;
        }
        let mut ticket = rand::random_range(0..total);
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

/// Best windowed success rate first; among equals, lower latency first. The smoothing in
/// `Window::smoothed_rate` lets a channel that fell out of favour climb back as its bad
/// seconds leave the window.
fn adaptive_order(order: &mut [ChannelId], scores: &[Arc<ChannelScore>]) {
    let key = |id: ChannelId| {
        scores.get(id).map_or((0.5, f64::MAX), |s| {
            (s.window().smoothed_rate(), s.latency_ms())
        })
    };
    order.sort_by(|&a, &b| {
        let (rate_a, latency_a) = key(a);
        let (rate_b, latency_b) = key(b);
        rate_b
            .total_cmp(&rate_a)
            .then(latency_a.total_cmp(&latency_b))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_order_follows_weights() {
        let weights = [0u32, 3, 1];
        let mut first = [0u32; 3];
        for _ in 0..4000 {
            let mut order = vec![0, 1, 2];
            weighted_order(&mut order, |id| weights[id]);
            assert_eq!(order[2], 0, "a weight-0 channel is only a fallback");
            first[order[0]] += 1;
        }
        assert_eq!(first[0], 0);
        // Expect 3000 vs 1000; allow a wide margin for chance.
        assert!((2700..=3300).contains(&first[1]), "{first:?}");
    }

    #[test]
    fn adaptive_prefers_the_better_channel() {
        let scores: Vec<Arc<ChannelScore>> =
            (0..2).map(|_| Arc::new(ChannelScore::new())).collect();
        for _ in 0..20 {
            scores[0].record(false);
            scores[1].record(true);
        }
        let mut order = vec![0, 1];
        adaptive_order(&mut order, &scores);
        assert_eq!(order, vec![1, 0]);
    }
}
