//! The HTML rendering: one self-contained page (inline CSS, inline SVG charts, no script, no
//! external font, stylesheet or image), so it opens from a mail attachment or an offline
//! laptop. Rendering only: no I/O. Every text from the journal is HTML-escaped.

use std::fmt::Write;

use super::ReportError;
use super::charts;
use super::display::{money, percent};
use super::figures::{Percentiles, Report};

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:24px auto;max-width:960px;color:#222;padding:0 12px}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px}\
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.anomaly{color:#a40000;font-weight:600}.empty{padding:8px;background:#fff4d6}\
figure{margin:12px 0}svg{max-width:100%;height:auto}";

pub fn render(report: &Report) -> Result<String, ReportError> {
    let charts = charts::all(report)?;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>paygate daily operations report {day}</title><style>{STYLE}</style></head><body>\
         <h1>paygate daily operations report: {day} (UTC)</h1>",
        day = report.day
    );
    summary(&mut out, report);
    anomalies(&mut out, report);
    out.push_str("<h2>Charts</h2>");
    for chart in charts {
        let _ = write!(out, "<figure>{chart}</figure>");
    }
    channels(&mut out, report);
    amounts(&mut out, report);
    declines(&mut out, report);
    merchants(&mut out, report);
    out.push_str("</body></html>\n");
    Ok(out)
}

fn summary(out: &mut String, report: &Report) {
    if report.is_empty() {
        let _ = write!(
            out,
            "<p class=\"empty\">No payments were journaled on {}.</p>",
            report.day
        );
    }
    let rate = percent(report.succeeded_payments, report.payments)
        .map(|r| format!(" ({r}%)"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<ul><li>Payments: {}</li><li>Succeeded: {}{rate}</li><li>Pending: {}</li>\
         <li>Reconciled: {}</li><li>Baseline: {} of the previous 7 days had payments</li></ul>",
        report.payments,
        report.succeeded_payments,
        report.pending,
        report.reconciled,
        report.baseline_days
    );
}

fn anomalies(out: &mut String, report: &Report) {
    out.push_str("<h2>Anomalies (against the previous 7 days)</h2>");
    if report.anomalies.is_empty() {
        out.push_str("<p>None.</p>");
        return;
    }
    table_head(out, &["Channel", "Anomaly", "Today", "Baseline"]);
    for a in &report.anomalies {
        let _ = write!(
            out,
            "<tr class=\"anomaly\"><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            escape(&a.channel),
            a.kind.describe(),
            escape(&a.today),
            escape(&a.baseline)
        );
    }
    out.push_str("</table>");
}

fn channels(out: &mut String, report: &Report) {
    out.push_str("<h2>Channels</h2>");
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
        let latency = |pick: fn(&Percentiles) -> u64| {
            c.latency
                .as_ref()
                .map(pick)
                .map_or("-".into(), |v| v.to_string())
        };
        let numbers = [
            c.attempts.to_string(),
            c.succeeded.to_string(),
            percent(c.succeeded, c.attempts).map_or("-".into(), |r| format!("{r}%")),
            latency(|l| l.p50_ms),
            latency(|l| l.p95_ms),
            latency(|l| l.p99_ms),
            c.failovers_in.to_string(),
            c.failovers_out.to_string(),
            c.ejections.to_string(),
            c.drains.to_string(),
        ];
        row(out, &escape(&c.name), &numbers);
    }
    out.push_str("</table>");
}

fn amounts(out: &mut String, report: &Report) {
    out.push_str("<h2>Amounts per channel and currency</h2>");
    table_head(out, &["Channel", "Attempted", "Succeeded"]);
    for c in &report.channels {
        for a in &c.amounts {
            let numbers = [
                escape(&money(a.attempted, &a.currency)),
                escape(&money(a.succeeded, &a.currency)),
            ];
            row(out, &escape(&c.name), &numbers);
        }
    }
    out.push_str("</table>");
}

fn declines(out: &mut String, report: &Report) {
    out.push_str("<h2>Top decline reasons</h2>");
    table_head(out, &["Channel", "Decline code", "Declines"]);
    for c in &report.channels {
        for d in &c.declines {
            let code = if d.code.is_empty() {
                "(none)".into()
            } else {
                escape(&d.code)
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{code}</td><td class=\"n\">{}</td></tr>",
                escape(&c.name),
                d.count
            );
        }
    }
    out.push_str("</table>");
}

fn merchants(out: &mut String, report: &Report) {
    out.push_str("<h2>Merchants</h2>");
    table_head(out, &["Merchant", "Payments", "Succeeded", "Success rate"]);
    for m in &report.merchants {
        let numbers = [
            m.payments.to_string(),
            m.succeeded.to_string(),
            percent(m.succeeded, m.payments).map_or("-".into(), |r| format!("{r}%")),
        ];
        row(out, &escape(&m.name), &numbers);
    }
    out.push_str("</table>");
}

fn table_head(out: &mut String, titles: &[&str]) {
    out.push_str("<table><tr>");
    for title in titles {
        let _ = write!(out, "<th>{title}</th>");
    }
    out.push_str("</tr>");
}

/// A row: a name, then right-aligned figures (already escaped or our own digits).
fn row(out: &mut String, name: &str, numbers: &[String]) {
    let _ = write!(out, "<tr><td>{name}</td>");
    for number in numbers {
        let _ = write!(out, "<td class=\"n\">{number}</td>");
    }
    out.push_str("</tr>");
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
