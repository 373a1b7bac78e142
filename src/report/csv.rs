//! The CSV rendering: one figure per line, `section,subject,metric,key,value`, so a script or
//! a spreadsheet can pick any figure by its first four columns.
//!
//! Sections: `report` (the day's totals), `channel`, `channel_hour` (key = hour `00`..`23`),
//! `merchant`, `anomaly` (metric = the rule, key = the baseline's value, value = the day's).
//! Amounts are in major units with the currency as key (`amount_succeeded,EUR,19.99`); a
//! currency whose exponent is unknown gets `_minor_units` metrics instead. Rates are
//! percentages with two decimals. Rendering only: no I/O.

use std::fmt::Write;

use super::display::{major_units, percent};
use super::figures::{Channel, Report};

const HEADER: &str = "section,subject,metric,key,value\n";

pub fn render(report: &Report) -> String {
    let mut out = String::from(HEADER);
    totals(&mut out, report);
    for channel in &report.channels {
        channel_rows(&mut out, channel);
    }
    for channel in &report.channels {
        hour_rows(&mut out, channel);
    }
    for merchant in &report.merchants {
        let rows = [
            ("payments", merchant.payments.to_string()),
            ("succeeded", merchant.succeeded.to_string()),
            (
                "success_rate_pct",
                percent(merchant.succeeded, merchant.payments).unwrap_or_default(),
            ),
        ];
        for (metric, value) in rows {
            line(&mut out, "merchant", &merchant.name, metric, "", &value);
        }
    }
    for anomaly in &report.anomalies {
        let metric = anomaly.kind.as_str();
        line(
            &mut out,
            "anomaly",
            &anomaly.channel,
            metric,
            &anomaly.baseline,
            &anomaly.today,
        );
    }
    out
}

fn totals(out: &mut String, report: &Report) {
    line(out, "report", "", "date", "", &report.day.to_string());
    if report.is_empty() {
        let note = format!("no payments journaled on {}", report.day);
        line(out, "report", "", "note", "", &note);
    }
    let rate = percent(report.succeeded_payments, report.payments);
    let rows = [
        ("payments", Some(report.payments.to_string())),
        ("succeeded", Some(report.succeeded_payments.to_string())),
        ("success_rate_pct", rate),
        ("pending", Some(report.pending.to_string())),
        ("reconciled", Some(report.reconciled.to_string())),
        ("baseline_days", Some(report.baseline_days.to_string())),
    ];
    for (metric, value) in rows {
        if let Some(value) = value {
            line(out, "report", "", metric, "", &value);
        }
    }
}

fn channel_rows(out: &mut String, channel: &Channel) {
    let name = channel.name.as_str();
    let mut put = |metric: &str, key: &str, value: String| {
        line(out, "channel", name, metric, key, &value);
    };
    put("attempts", "", channel.attempts.to_string());
    put("succeeded", "", channel.succeeded.to_string());
    if let Some(rate) = percent(channel.succeeded, channel.attempts) {
        put("success_rate_pct", "", rate);
    }
    for amount in &channel.amounts {
        for (metric, minor) in [
            ("amount_attempted", amount.attempted),
            ("amount_succeeded", amount.succeeded),
        ] {
            match major_units(minor, &amount.currency) {
                Some(major) => put(metric, &amount.currency, major),
                None => put(
                    &format!("{metric}_minor_units"),
                    &amount.currency,
                    minor.to_string(),
                ),
            }
        }
    }
    for decline in &channel.declines {
        let code = if decline.code.is_empty() {
            "(none)"
        } else {
            &decline.code
        };
        put("decline", code, decline.count.to_string());
    }
    if let Some(latency) = channel.latency {
        put("latency_p50_ms", "", latency.p50_ms.to_string());
        put("latency_p95_ms", "", latency.p95_ms.to_string());
        put("latency_p99_ms", "", latency.p99_ms.to_string());
    }
    put("failovers_in", "", channel.failovers_in.to_string());
    put("failovers_out", "", channel.failovers_out.to_string());
    put("ejections", "", channel.ejections.to_string());
    put("drains", "", channel.drains.to_string());
}

fn hour_rows(out: &mut String, channel: &Channel) {
    for (hour, figures) in channel.hours.iter().enumerate() {
        if figures.attempts == 0 {
            continue;
        }
        let key = format!("{hour:02}");
        let mut put = |metric: &str, value: String| {
            line(out, "channel_hour", &channel.name, metric, &key, &value);
        };
        put("attempts", figures.attempts.to_string());
        put("succeeded", figures.succeeded.to_string());
        if let Some(p95) = figures.p95_ms {
            put("latency_p95_ms", p95.to_string());
        }
    }
}

fn line(out: &mut String, section: &str, subject: &str, metric: &str, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "{},{},{},{},{}",
        field(section),
        field(subject),
        field(metric),
        field(key),
        field(value)
    );
}

/// A CSV field: quoted when it holds a separator, quote or line break (RFC 4180), and
/// prefixed with `'` when a spreadsheet would run it as a formula (journal text such as a
/// merchant id or a PSP's decline code is not ours to trust).
fn field(text: &str) -> String {
    let defused = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("psp_a"), "psp_a");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}
