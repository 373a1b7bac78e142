//! The strategies the real router is measured against, as plain ordering functions: round
//! robin, static priority, and an oracle that knows each channel's true chance of approving a
//! payment at this moment.
//!
//! They share the router's notion of eligibility (the first matching rule, then the channels
//! of it that accept the payment) and nothing else: no scores, no ejection. Must not touch the
//! live routing state, so that a baseline run can never change what the real router learns.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
