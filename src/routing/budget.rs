//! The retry budget: failovers may add at most a share of the payments seen over a short
//! window (Envoy's retry budget, by rate instead of concurrency so that it works the same
//! under the simulator's virtual clock), never fewer than a floor so a quiet gateway can
//! still fail over. An outage therefore cannot multiply the load on the remaining PSPs.

use super::window::Ring;
use crate::config::RetryBudget as Settings;

/// Seconds the budget looks back over.
const BUDGET_SECS: usize = 10;

#[derive(Default)]
pub struct RetryBudget {
    /// Counters: payments, retries, retries refused.
    ring: Ring<BUDGET_SECS>,
}

impl RetryBudget {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a payment entering routing.
    pub fn on_payment(&self, now_ms: u64) {
        self.ring.add(now_ms, [1, 0, 0]);
    }

    /// Asks for one failover; counts it when granted.
    pub fn try_retry(&self, now_ms: u64, settings: &Settings) -> bool {
        let [payments, retries, _] = self.ring.sum(now_ms);
        let allowed = ((payments as f64 * settings.ratio) as u64).max(settings.min_retries);
        if retries >= allowed {
            self.ring.add(now_ms, [0, 0, 1]);
            return false;
        }
        self.ring.add(now_ms, [0, 1, 0]);
        true
    }

    /// (payments, retries granted, retries refused) over the window.
    pub fn figures(&self, now_ms: u64) -> [u64; 3] {
        self.ring.sum(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_payments() {
        let budget = RetryBudget::new();
        let settings = Settings {
            ratio: 0.2,
            min_retries: 3,
        };
        // Quiet gateway: the floor allows 3.
        let granted = (0..10).filter(|_| budget.try_retry(0, &settings)).count();
        assert_eq!(granted, 3);
        // 100 payments allow 20 retries in all.
        for _ in 0..100 {
            budget.on_payment(0);
        }
        let granted = (0..50).filter(|_| budget.try_retry(0, &settings)).count();
        assert_eq!(granted, 17);
        assert_eq!(budget.figures(0), [100, 20, 40]);
        // Ten seconds later the window is fresh again.
        assert!(budget.try_retry(10_000, &settings));
    }
}
