//! The figures of one daily report, as plain data: what the journal queries produce and what
//! every output format renders.
//!
//! No I/O and no formatting here. Counts and money are integers (money in minor units, with
//! its currency beside it); rates stay as numerator and denominator until they are displayed,
//! so comparisons (the anomaly rules) are exact.

use super::day::{Day, HOURS};

/// Everything the report says about one day.
#[derive(Debug, Clone)]
pub struct Report {
    pub day: Day,
    /// Payments created that day.
    pub payments: u64,
    pub succeeded_payments: u64,
    /// Payments created that day still `pending`.
    pub pending: u64,
    /// Payments created that day whose pending outcome was settled by reconciliation.
    pub reconciled: u64,
    /// Every channel with attempts or events that day or attempts in the baseline, by name.
    pub channels: Vec<Channel>,
    /// Merchants with payments that day, most payments first.
    pub merchants: Vec<Merchant>,
    pub anomalies: Vec<Anomaly>,
    /// Days of the previous seven with any payment: the baseline's width.
    pub baseline_days: u64,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.payments == 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct Channel {
    pub name: String,
    pub attempts: u64,
    pub succeeded: u64,
    /// Attempted and succeeded amounts per currency, by currency code.
    pub amounts: Vec<CurrencyAmount>,
    /// Top decline codes, most frequent first (ties by code).
    pub declines: Vec<DeclineCount>,
    /// Day-wide latency, `None` without attempts.
    pub latency: Option<Percentiles>,
    pub failovers_in: u64,
    pub failovers_out: u64,
    pub ejections: u64,
    pub drains: u64,
    pub hours: [Hour; HOURS],
    /// The previous days' figures this day is compared with.
    pub baseline: Baseline,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Hour {
    pub attempts: u64,
    pub succeeded: u64,
    pub p95_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub attempts: u64,
    pub succeeded: u64,
    pub p95_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyAmount {
    pub currency: String,
    pub attempted: u64,
    pub succeeded: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclineCount {
    /// Empty when the PSP gave no code.
    pub code: String,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Merchant {
    pub name: String,
    pub payments: u64,
    pub succeeded: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub channel: String,
    pub kind: AnomalyKind,
    /// The day's value and the baseline's, already in display form.
    pub today: String,
    pub baseline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    SuccessRateDown,
    LatencyP95Up,
    VolumeChange,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::SuccessRateDown => "success_rate_down",
            AnomalyKind::LatencyP95Up => "latency_p95_up",
            AnomalyKind::VolumeChange => "volume_change",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            AnomalyKind::SuccessRateDown => "success rate down more than 3 points",
            AnomalyKind::LatencyP95Up => "latency p95 up more than 50%",
            AnomalyKind::VolumeChange => "volume changed more than 30%",
        }
    }
}

/// A latency distribution as (latency, count) pairs sorted by latency: as many entries as
/// distinct latencies, however many attempts, which keeps memory bounded and percentiles exact.
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    counts: Vec<(u64, u64)>,
    total: u64,
}

impl Distribution {
    /// Adds `count` observations of `latency_ms`; callers add in ascending latency order
    /// (the SQL sorts), equal latencies merge.
    pub fn add(&mut self, latency_ms: u64, count: u64) {
        self.total += count;
        match self.counts.last_mut() {
            Some((last, n)) if *last == latency_ms => *n += count,
            _ => self.counts.push((latency_ms, count)),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Nearest-rank percentile: the smallest latency with at least `percent`% of the
    /// observations at or below it.
    pub fn percentile(&self, percent: u64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = (percent * self.total).div_ceil(100).max(1);
        let mut seen = 0;
        for &(latency, count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(latency);
            }
        }
        self.counts.last().map(|&(latency, _)| latency)
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        Some(Percentiles {
            p50_ms: self.percentile(50)?,
            p95_ms: self.percentile(95)?,
            p99_ms: self.percentile(99)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut d = Distribution::default();
        for latency in 1..=100 {
            d.add(latency, 1);
        }
        assert_eq!(d.percentile(50), Some(50));
        assert_eq!(d.percentile(95), Some(95));
        assert_eq!(d.percentile(99), Some(99));
    }

    #[test]
    fn percentiles_of_repeated_values_and_small_sets() {
        let mut d = Distribution::default();
        d.add(10, 3);
        d.add(10, 1);
        d.add(500, 1);
        // 5 observations: rank ceil(0.95 * 5) = 5 is the outlier, rank ceil(0.5 * 5) = 3 is not.
        assert_eq!(d.percentile(95), Some(500));
        assert_eq!(d.percentile(50), Some(10));
        assert_eq!(Distribution::default().percentiles(), None);
    }
}
