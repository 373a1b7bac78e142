//! The `adaptive` strategy: Thompson sampling over each channel's success evidence (memory
//! counted in payments, with a change detector: `score::Evidence`), less a latency and a fee
//! penalty.
//!
//! For each eligible channel c, with evidence of s approvals out of n outcomes (its segment's
//! when the segment has enough calls, else the channel's):
//!
//! ```text
//! score(c) = θ(c) − latency_penalty_per_second × min(latency_s(c), 2) − fee_penalty × fee(c) / amount
//! θ(c) ~ Beta(s + 1, n − s + 1)
//! ```
//!
//! where latency is the channel's time-weighted mean latency (10 s time constant), and channels
//! are tried in descending score. Why Thompson sampling rather than a fixed
//! exploration share (Hyperswitch explores 20% of traffic) or UCB: the amount of exploring
//! follows the evidence. Two channels far apart get the worse one almost no traffic; two
//! close together, or one with few recent calls, share traffic until the data separates them.
//! A fixed share pays for exploration forever (3.3 points in the figures of
//! ROUTING-NOTES.md); UCB's bonus needs tuning to the volume, Thompson's posterior scales
//! with it. Because the evidence fades with the payments that pass the channel by (and with
//! time), a channel that lost traffic returns to a wide posterior and is probed again after
//! the same number of payments at any traffic rate, so a recovered PSP wins its traffic back;
//! after a detected change it fades thirty times faster, as a channel that changed once may
//! change back.

use rand::RngExt;
use rand_distr::{Beta, Distribution};

use super::score::Estimate;

/// A draw from Beta(s + 1, f + 1); the mean when the parameters are unusable.
pub fn sample_success(evidence: &Estimate, rng: &mut impl rand::Rng) -> f64 {
    let alpha = evidence.successes + 1.0;
    let beta = (evidence.outcomes - evidence.successes).max(0.0) + 1.0;
    match Beta::new(alpha, beta) {
        Ok(distribution) => distribution.sample(rng),
        Err(_) => alpha / (alpha + beta),
    }
}

/// Latency beyond this adds no further penalty: past it a channel is slow either way, and an
/// outlier estimate must not outweigh real differences in success.
const MAX_PENALISED_LATENCY_MS: f64 = 2_000.0;

/// The penalties subtracted from the success draw.
pub fn penalty(
    latency_ms: f64,
    fee: u64,
    amount: u64,
    latency_per_second: f64,
    fee_weight: f64,
) -> f64 {
    let fee_share = if amount == 0 {
        0.0
    } else {
        fee as f64 / amount as f64
    };
    latency_per_second * latency_ms.min(MAX_PENALISED_LATENCY_MS) / 1000.0 + fee_weight * fee_share
}

/// True with probability `share`.
pub fn chance(share: f64, rng: &mut impl rand::Rng) -> bool {
    rng.random::<f64>() < share
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(successes: u64, total: u64) -> Estimate {
        Estimate {
            outcomes: total as f64,
            successes: successes as f64,
        }
    }

    #[test]
    fn explores_when_unsure_and_exploits_when_sure() {
        let mut rng = rand::rng();
        let wins = |a: Estimate, b: Estimate, rng: &mut rand::rngs::ThreadRng| {
            (0..10_000)
                .filter(|_| sample_success(&a, rng) > sample_success(&b, rng))
                .count()
        };
        // 9/10 vs 8/10: too little data to be sure, both get a real share.
        let close = wins(counts(9, 10), counts(8, 10), &mut rng);
        assert!((5_000..8_500).contains(&close), "{close}");
        // 9,000/10,000 vs 8,000/10,000: the better one takes (nearly) everything.
        let far = wins(counts(9_000, 10_000), counts(8_000, 10_000), &mut rng);
        assert!(far > 9_990, "{far}");
        // An unmeasured channel against a mediocre one still gets probed.
        let fresh = wins(counts(0, 0), counts(700, 1_000), &mut rng);
        assert!((2_000..4_000).contains(&fresh), "{fresh}");
    }

    #[test]
    fn penalties_in_points() {
        // 100 ms at 0.05/s is half a point; a 2% fee at weight 0.5 is one point.
        let p = penalty(100.0, 200, 10_000, 0.05, 0.5);
        assert!((p - 0.015).abs() < 1e-12, "{p}");
    }
}
