//! The anomaly rules: a channel's day against its previous seven days.
//!
//! Pure comparisons in integers, so a value exactly on a threshold is never flagged by a
//! rounding error. A channel with no baseline traffic is never flagged (there is nothing to
//! compare with); a channel with baseline traffic and none today is flagged for volume.

use super::display::percent;
use super::figures::{Anomaly, AnomalyKind, Channel};

/// Thresholds from the report's specification (issue text): success rate down more than 3
/// points, p95 latency up more than 50%, volume changed more than 30% either way.
const SUCCESS_DROP_POINTS: i128 = 3;
const P95_RISE_NUMERATOR: u128 = 3; // today > 3/2 of the baseline
const P95_RISE_DENOMINATOR: u128 = 2;
const VOLUME_CHANGE_TENTHS: u128 = 3; // |today - mean| > 3/10 of the mean

/// The anomalies of one channel. `baseline_days` is how many of the previous seven days
/// hold any payment: the baseline volume is the mean over those days, so a journal younger
/// than a week is not read as a traffic drop.
pub fn detect(channel: &Channel, baseline_days: u64) -> Vec<Anomaly> {
    let base = &channel.baseline;
    if base.attempts == 0 || baseline_days == 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    if success_dropped(channel) {
        found.push(anomaly(
            channel,
            AnomalyKind::SuccessRateDown,
            format!(
                "{}%",
                percent(channel.succeeded, channel.attempts).unwrap_or_default()
            ),
            format!(
                "{}%",
                percent(base.succeeded, base.attempts).unwrap_or_default()
            ),
        ));
    }
    if let Some((today, before)) = p95_rise(channel) {
        found.push(anomaly(
            channel,
            AnomalyKind::LatencyP95Up,
            format!("{today} ms"),
            format!("{before} ms"),
        ));
    }
    if volume_changed(channel.attempts, base.attempts, baseline_days) {
        found.push(anomaly(
            channel,
            AnomalyKind::VolumeChange,
            format!("{} attempts", channel.attempts),
            format!("{} attempts/day", mean(base.attempts, baseline_days)),
        ));
    }
    found
}

/// today_rate < base_rate - 3 points, cross-multiplied:
/// 100·s_t·n_b < 100·s_b·n_t − 3·n_t·n_b.
fn success_dropped(channel: &Channel) -> bool {
    let base = &channel.baseline;
    if channel.attempts == 0 {
        return false;
    }
    let (s_t, n_t) = (i128::from(channel.succeeded), i128::from(channel.attempts));
    let (s_b, n_b) = (i128::from(base.succeeded), i128::from(base.attempts));
    100 * s_t * n_b < 100 * s_b * n_t - SUCCESS_DROP_POINTS * n_t * n_b
}

/// The day's and the baseline's p95 when the day's is more than 50% above.
fn p95_rise(channel: &Channel) -> Option<(u64, u64)> {
    let today = channel.latency?.p95_ms;
    let before = channel.baseline.p95_ms?;
    let rose = u128::from(today) * P95_RISE_DENOMINATOR > u128::from(before) * P95_RISE_NUMERATOR;
    rose.then_some((today, before))
}

/// |today − total/days| > 30% of total/days, cross-multiplied by 10·days.
fn volume_changed(today: u64, baseline_total: u64, baseline_days: u64) -> bool {
    let scaled_today = u128::from(today) * u128::from(baseline_days);
    let total = u128::from(baseline_total);
    scaled_today.abs_diff(total) * 10 > VOLUME_CHANGE_TENTHS * total
}

/// Mean daily volume, one decimal, for display only.
fn mean(total: u64, days: u64) -> String {
    let tenths = (u128::from(total) * 20 + u128::from(days)) / (2 * u128::from(days));
    format!("{}.{}", tenths / 10, tenths % 10)
}

fn anomaly(channel: &Channel, kind: AnomalyKind, today: String, baseline: String) -> Anomaly {
    Anomaly {
        channel: channel.name.clone(),
        kind,
        today,
        baseline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::figures::{Baseline, Percentiles};

    fn channel(attempts: u64, succeeded: u64, p95: u64, base: Baseline) -> Channel {
        Channel {
            name: "psp_a".into(),
            attempts,
            succeeded,
            latency: Some(Percentiles {
                p50_ms: p95,
                p95_ms: p95,
                p99_ms: p95,
            }),
            baseline: base,
            ..Channel::default()
        }
    }

    fn base(attempts: u64, succeeded: u64, p95: u64) -> Baseline {
        Baseline {
            attempts,
            succeeded,
            p95_ms: Some(p95),
        }
    }

    fn kinds(c: &Channel, days: u64) -> Vec<AnomalyKind> {
        detect(c, days).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn exactly_on_the_thresholds_is_not_flagged() {
        // 92% vs 95%: exactly 3 points; 150 ms vs 100 ms: exactly +50%; 130 vs 100/day: +30%.
        let c = channel(100, 92, 150, base(700, 665, 100));
        assert_eq!(kinds(&c, 7), vec![]);
        let c = channel(130, 130, 100, base(700, 700, 100));
        assert_eq!(kinds(&c, 7), vec![]);
    }

    #[test]
    fn beyond_the_thresholds_is_flagged() {
        let c = channel(100, 91, 151, base(700, 665, 100));
        assert_eq!(
            kinds(&c, 7),
            vec![AnomalyKind::SuccessRateDown, AnomalyKind::LatencyP95Up]
        );
        let c = channel(69, 69, 100, base(700, 700, 100));
        assert_eq!(kinds(&c, 7), vec![AnomalyKind::VolumeChange]);
        // Three days of history: the mean is over those three, not seven.
        let c = channel(100, 100, 100, base(300, 300, 100));
        assert_eq!(kinds(&c, 3), vec![]);
    }

    #[test]
    fn a_channel_without_traffic_today_is_a_volume_anomaly_only() {
        let mut c = channel(0, 0, 0, base(700, 665, 100));
        c.latency = None;
        assert_eq!(kinds(&c, 7), vec![AnomalyKind::VolumeChange]);
        let new = channel(10, 1, 1000, Baseline::default());
        assert_eq!(kinds(&new, 7), vec![]);
    }
}
