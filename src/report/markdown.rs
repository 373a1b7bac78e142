//! The Markdown rendering: the report as headings and tables, for a terminal, a ticket or a
//! chat. Rendering only: no I/O. Text from the journal is escaped so that a name cannot
//! break a table or inject markup.

use std::fmt::Write;

use super::display::{money, percent};
use super::figures::Report;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# paygate daily operations report: {} (UTC)\n",
        report.day
    );
    summary(&mut out, report);
    anomalies(&mut out, report);
    channels(&mut out, report);
    amounts(&mut out, report);
    declines(&mut out, report);
    merchants(&mut out, report);
    out
}

fn summary(out: &mut String, report: &Report) {
    if report.is_empty() {
        let _ = writeln!(out, "No payments were journaled on {}.\n", report.day);
    }
    let rate = percent(report.succeeded_payments, report.payments)
        .map(|r| format!(" ({r}%)"))
        .unwrap_or_default();
    let _ = writeln!(out, "- Payments: {}", report.payments);
    let _ = writeln!(out, "- Succeeded: {}{rate}", report.succeeded_payments);
    let _ = writeln!(out, "- Pending: {}", report.pending);
    let _ = writeln!(out, "- Reconciled: {}", report.reconciled);
    let _ = writeln!(
        out,
        "- Baseline: {} of the previous 7 days had payments\n",
        report.baseline_days
    );
}

fn anomalies(out: &mut String, report: &Report) {
    out.push_str("## Anomalies (against the previous 7 days)\n\n");
    if report.anomalies.is_empty() {
        out.push_str("None.\n\n");
        return;
    }
    table_head(out, &["Channel", "Anomaly", "Today", "Baseline"]);
    for a in &report.anomalies {
        let cells = [
            escape(&a.channel),
            a.kind.describe().into(),
            a.today.clone(),
            a.baseline.clone(),
        ];
        table_row(out, &cells);
    }
    out.push('\n');
}

fn channels(out: &mut String, report: &Report) {
    out.push_str("## Channels\n\n");
    table_head(
        out,
        &[
            "Channel",
            "Attempts",
            "Succeeded",
            "Success rate",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "Failovers in",
            "Failovers out",
            "Ejections",
            "Drains",
        ],
    );
    for c in &report.channels {
        let latency = |pick: fn(&super::figures::Percentiles) -> u64| {
            c.latency
                .as_ref()
                .map(pick)
                .map(|v| v.to_string())
                .unwrap_or("-".into())
        };
        let cells = [
            escape(&c.name),
            c.attempts.to_string(),
            c.succeeded.to_string(),
            percent(c.succeeded, c.attempts)
                .map(|r| format!("{r}%"))
                .unwrap_or("-".into()),
            latency(|l| l.p50_ms),
            latency(|l| l.p95_ms),
            latency(|l| l.p99_ms),
            c.failovers_in.to_string(),
            c.failovers_out.to_string(),
            c.ejections.to_string(),
            c.drains.to_string(),
        ];
        table_row(out, &cells);
    }
    out.push('\n');
}

fn amounts(out: &mut String, report: &Report) {
    out.push_str("## Amounts per channel and currency\n\n");
    table_head(out, &["Channel", "Currency", "Attempted", "Succeeded"]);
    for c in &report.channels {
        for a in &c.amounts {
            let cells = [
                escape(&c.name),
                escape(&a.currency),
                money(a.attempted, &a.currency),
                money(a.succeeded, &a.currency),
            ];
            table_row(out, &cells);
        }
    }
    out.push('\n');
}

fn declines(out: &mut String, report: &Report) {
    out.push_str("## Top decline reasons\n\n");
    table_head(out, &["Channel", "Decline code", "Declines"]);
    for c in &report.channels {
        for d in &c.declines {
            let code = if d.code.is_empty() {
                "(none)".into()
            } else {
                escape(&d.code)
            };
            table_row(out, &[escape(&c.name), code, d.count.to_string()]);
        }
    }
    out.push('\n');
}

fn merchants(out: &mut String, report: &Report) {
    out.push_str("## Merchants\n\n");
    table_head(out, &["Merchant", "Payments", "Succeeded", "Success rate"]);
    for m in &report.merchants {
        let rate = percent(m.succeeded, m.payments)
            .map(|r| format!("{r}%"))
            .unwrap_or("-".into());
        let cells = [
            escape(&m.name),
            m.payments.to_string(),
            m.succeeded.to_string(),
            rate,
        ];
        table_row(out, &cells);
    }
}

fn table_head(out: &mut String, titles: &[&str]) {
    let _ = writeln!(out, "| {} |", titles.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(titles.len()));
}

fn table_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// Escapes what would end a table cell or start markup. Underscores stay: GitHub Markdown
/// does not emphasise inside words, and channel names are full of them.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '|' | '<' | '>' | '`' | '*' | '[' | ']') {
            out.push('\\');
        }
        if c == '\n' || c == '\r' {
            out.push(' ');
            continue;
        }
        out.push(c);
    }
    out
}
