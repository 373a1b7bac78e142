//! `paygate report` end to end: the real binary over a real SQLite journal written here from
//! known rows (with the gateway's own schema), and every figure checked against the same
//! figure computed in this file from those rows. Also: bad input, card data, and the HTML
//! report rendered by headless Chromium.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

const SCHEMA: &str = include_str!("../src/store/journal.sql");
const CARD: &str = "4111111111111111";
const DAY: &str = "2026-11-24";
/// 2026-11-24T00:00:00Z (`date -u -d 2026-11-24 +%s`).
const DAY_START: i64 = 1_795_478_400_000;
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------
// The journal's rows, and writing them.

#[derive(Clone)]
struct Attempt {
    channel: &'static str,
    outcome: &'static str,
    decline: Option<String>,
    latency: i64,
    failover: bool,
    at: i64,
}

#[derive(Clone)]
struct Payment {
    id: String,
    merchant: &'static str,
    amount: u64,
    currency: &'static str,
    status: &'static str,
    reconciled: bool,
    created: i64,
    attempts: Vec<Attempt>,
}

struct Event {
    at: i64,
    kind: &'static str,
    channel: Option<&'static str>,
}

fn write_journal(path: &Path, payments: &[Payment], events: &[Event]) {
    let mut connection = Connection::open(path).expect("open journal");
    connection
        .execute_batch("PRAGMA journal_mode = WAL;")
        .expect("wal");
    connection.execute_batch(SCHEMA).expect("schema");
    let transaction = connection.transaction().expect("transaction");
    for p in payments {
        // A JSON column holds the full card number on purpose: a report must never read it.
        let record = format!("{{\"id\":\"{}\",\"card\":{{\"number\":\"{CARD}\"}}}}", p.id);
        let last = p.attempts.last().expect("an attempt");
        transaction
            .execute(
                "INSERT INTO payments (id, merchant, amount, currency, method, country, status,
                    channel, psp_reference, decline_code, card_bin, card_last4, reconciled,
                    created_at_ms, updated_at_ms, next_action)
                 VALUES (?1, ?2, ?3, ?4, 'card', 'DE', ?5, ?6, ?7, ?8, '411111', '1111', ?9,
                    ?10, ?10, ?11)",
                params![
                    p.id,
                    p.merchant,
                    p.amount as i64,
                    p.currency,
                    p.status,
                    last.channel,
                    format!("ref-{}", p.id),
                    last.decline,
                    p.reconciled,
                    p.created,
                    record
                ],
            )
            .expect("payment row");
        for (index, a) in p.attempts.iter().enumerate() {
            transaction
                .execute(
                    "INSERT INTO attempts (payment_id, number, merchant, channel, outcome,
                        decline_code, latency_ms, amount, currency, method, country, failover,
                        at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'card', 'DE', ?10, ?11)",
                    params![
                        p.id,
                        index as i64 + 1,
                        p.merchant,
                        a.channel,
                        a.outcome,
                        a.decline,
                        a.latency,
                        p.amount as i64,
                        p.currency,
                        a.failover,
                        a.at
                    ],
                )
                .expect("attempt row");
        }
    }
    for e in events {
        let detail = format!("{{\"note\":\"operator pasted {CARD}\"}}");
        transaction
            .execute(
                "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
                params![e.at, e.kind, e.channel, detail],
            )
            .expect("event row");
    }
    transaction.commit().expect("commit");
}

fn attempt(channel: &'static str, outcome: &'static str, latency: i64, at: i64) -> Attempt {
    Attempt {
        channel,
        outcome,
        decline: None,
        latency,
        failover: false,
        at,
    }
}

/// One payment of `day` in time slot `slot` (23 minutes apart): merchant, currency and
/// amount follow the slot so that every day looks alike.
fn payment(day: i64, slot: i64, attempts: Vec<Attempt>, status: &'static str) -> Payment {
    Payment {
        id: format!("pay_{day}_{slot:03}"),
        merchant: if slot % 3 == 0 { "shop_1" } else { "shop_2" },
        amount: 1000 + 7 * slot as u64,
        currency: ["EUR", "JPY", "BHD"][(slot % 3) as usize],
        status,
        reconciled: false,
        created: attempts[0].at - 5,
        attempts,
    }
}

fn slot_time(day_start: i64, slot: i64) -> i64 {
    day_start + slot * 23 * 60_000 + 1000
}

/// Eight days of traffic, 2026-11-17 to 2026-11-24. Every day alike, except that on the
/// 24th psp_a declines 4 of its 40 attempts instead of 2 (95% down to 90%: 5 points), one of
/// its decline codes carries a card number, and two payments sit at the day's edges.
fn fixture() -> (Vec<Payment>, Vec<Event>) {
    let mut payments = Vec::new();
    for day in 0..8i64 {
        let start = DAY_START - (7 - day) * DAY_MS;
        let report_day = day == 7;
        let declines_on_a = if report_day { 4 } else { 2 };
        for slot in 0..36i64 {
            let at = slot_time(start, slot) + 5;
            let mut a = attempt("psp_a", "succeeded", 40 + (slot * 37) % 200, at);
            let mut status = "succeeded";
            if slot < declines_on_a {
                a.outcome = "declined";
                status = "declined";
                a.decline = Some(match (report_day, slot) {
                    (true, 2) => format!("do_not_honor {CARD}"),
                    (_, 1) => "insufficient_funds".into(),
                    _ => "do_not_honor".into(),
                });
            }
            payments.push(payment(day, slot, vec![a], status));
        }
        for j in 0..22i64 {
            let slot = 36 + j;
            let at = slot_time(start, slot) + 5;
            let mut first = attempt("psp_b", "succeeded", 100 + (j * 53) % 300, at);
            let mut failover = None;
            let mut status = "succeeded";
            let mut reconciled = false;
            match j {
                16..=19 => {
                    first.outcome = "unavailable";
                    first.latency = 3;
                    let mut next = attempt("psp_a", "succeeded", 60 + j, at + 5);
                    next.failover = true;
                    failover = Some(next);
                }
                20 => {
                    first.outcome = "pending";
                    status = "pending";
                }
                21 => {
                    first.outcome = "pending";
                    reconciled = true;
                }
                _ => {}
            }
            let mut p = payment(
                day,
                slot,
                std::iter::once(first).chain(failover).collect(),
                status,
            );
            p.reconciled = reconciled;
            payments.push(p);
        }
        if report_day {
            // Created a second before midnight, answered after it: still the 24th's.
            let mut late = payment(
                day,
                58,
                vec![attempt("psp_b", "succeeded", 1500, start + DAY_MS - 995)],
                "succeeded",
            );
            late.attempts[0].at = start + DAY_MS + 500;
            late.created = start + DAY_MS - 1000;
            payments.push(late);
            // Created at the next midnight: not the 24th's.
            let mut early = attempt("psp_b", "declined", 90, start + DAY_MS + 5);
            early.decline = Some("expired_card".into());
            payments.push(payment(day + 1, 0, vec![early], "declined"));
        }
    }
    let hour = 3_600_000;
    let events = vec![
        Event {
            at: DAY_START + 10 * hour,
            kind: "ejection",
            channel: Some("psp_b"),
        },
        Event {
            at: DAY_START + 12 * hour,
            kind: "drain",
            channel: Some("psp_b"),
        },
        Event {
            at: DAY_START + 13 * hour,
            kind: "enable",
            channel: Some("psp_b"),
        },
        Event {
            at: DAY_START + 14 * hour,
            kind: "reload",
            channel: None,
        },
        Event {
            at: DAY_START - hour,
            kind: "ejection",
            channel: Some("psp_a"),
        },
    ];
    (payments, events)
}

// ---------------------------------------------------------------------------------------
// The expected figures, computed here from the rows.

fn on_day(p: &Payment, start: i64) -> bool {
    p.created >= start && p.created < start + DAY_MS
}

/// Percent with two decimals, rounded half up: the report's rule, computed independently.
fn pct(num: u64, den: u64) -> String {
    let scaled = (num as u128 * 100_000) / den as u128; // thousandths of a point
    let rounded = (scaled + 5) / 10;
    format!("{}.{:02}", rounded / 100, rounded % 100)
}

fn major(minor: u64, currency: &str) -> String {
    let decimals = match currency {
        "JPY" => 0,
        "BHD" => 3,
        _ => 2,
    };
    if decimals == 0 {
        return minor.to_string();
    }
    let text = format!("{minor:0>width$}", width = decimals + 1);
    let (int, frac) = text.split_at(text.len() - decimals);
    format!("{int}.{frac}")
}

fn nearest_rank(latencies: &[i64], percent: usize) -> i64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[derive(Default, Debug)]
struct ChannelExpect {
    attempts: u64,
    succeeded: u64,
    latencies: Vec<i64>,
    amounts: BTreeMap<String, (u64, u64)>,
    declines: BTreeMap<String, u64>,
    failovers_in: u64,
    failovers_out: u64,
}

fn channel_figures(payments: &[Payment], start: i64) -> BTreeMap<&'static str, ChannelExpect> {
    let mut out: BTreeMap<&str, ChannelExpect> = BTreeMap::new();
    for p in payments.iter().filter(|p| on_day(p, start)) {
        for (i, a) in p.attempts.iter().enumerate() {
            let c = out.entry(a.channel).or_default();
            c.attempts += 1;
            let won = a.outcome == "succeeded";
            c.succeeded += won as u64;
            c.latencies.push(a.latency);
            let amount = c.amounts.entry(p.currency.to_string()).or_default();
            amount.0 += p.amount;
            amount.1 += if won { p.amount } else { 0 };
            if let Some(code) = &a.decline {
                let code = code.replace(CARD, "[redacted]");
                *c.declines.entry(code).or_default() += 1;
            }
            c.failovers_in += a.failover as u64;
            let next_is_failover = p.attempts.get(i + 1).is_some_and(|n| n.failover);
            c.failovers_out += next_is_failover as u64;
        }
    }
    out
}

fn top_decline(declines: &BTreeMap<String, u64>) -> (String, u64) {
    let best = declines.values().max().copied().unwrap_or(0);
    // BTreeMap iterates by code: the first with the top count is the report's tie rule.
    let code = declines
        .iter()
        .find(|(_, n)| **n == best)
        .map(|(c, _)| c.clone());
    (code.unwrap_or_default(), best)
}

/// (channel, rule) pairs that the previous 7 days call anomalous.
fn expected_anomalies(payments: &[Payment]) -> BTreeSet<(String, &'static str)> {
    let today = channel_figures(payments, DAY_START);
    let mut base: BTreeMap<&str, (u64, u64, Vec<i64>)> = BTreeMap::new();
    let mut days_with_data = 0;
    for back in 1..=7 {
        let start = DAY_START - back * DAY_MS;
        days_with_data += payments.iter().any(|p| on_day(p, start)) as u64;
        for (name, c) in channel_figures(payments, start) {
            let b = base.entry(name).or_default();
            b.0 += c.attempts;
            b.1 += c.succeeded;
            b.2.extend(c.latencies);
        }
    }
    let mut out = BTreeSet::new();
    for (name, (attempts, succeeded, latencies)) in base {
        let Some(t) = today.get(name) else {
            out.insert((name.to_string(), "volume_change"));
            continue;
        };
        let rate_today = t.succeeded as f64 / t.attempts as f64 * 100.0;
        let rate_base = succeeded as f64 / attempts as f64 * 100.0;
        if rate_base - rate_today > 3.0 {
            out.insert((name.to_string(), "success_rate_down"));
        }
        let p95_today = nearest_rank(&t.latencies, 95) as f64;
        if p95_today > nearest_rank(&latencies, 95) as f64 * 1.5 {
            out.insert((name.to_string(), "latency_p95_up"));
        }
        let mean = attempts as f64 / days_with_data as f64;
        if (t.attempts as f64 - mean).abs() > 0.3 * mean {
            out.insert((name.to_string(), "volume_change"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running the binary, and reading its CSV.

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

fn scratch() -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("paygate-report-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn fixture_journal() -> (PathBuf, Vec<Payment>) {
    let path = scratch().join("paygate.db");
    let (payments, events) = fixture();
    write_journal(&path, &payments, &events);
    (path, payments)
}

fn paygate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run paygate")
}

fn report(journal: &Path, date: &str, format: &str) -> String {
    let out = paygate(&[
        "report",
        "--journal",
        path_str(journal),
        "--date",
        date,
        "--format",
        format,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report {format} failed: {stderr}");
    let text = String::from_utf8(out.stdout).expect("utf-8 report");
    assert!(!text.contains(CARD), "card number in the {format} report");
    text
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `(section, subject, metric, key)` to value.
fn parse_csv(text: &str) -> BTreeMap<(String, String, String, String), String> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("section,subject,metric,key,value"));
    let mut out = BTreeMap::new();
    for line in lines {
        let f = csv_fields(line);
        assert_eq!(f.len(), 5, "{line}");
        let key = (f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone());
        assert!(
            out.insert(key, f[4].clone()).is_none(),
            "duplicate row {line}"
        );
    }
    out
}

fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

fn get<'a>(
    rows: &'a BTreeMap<(String, String, String, String), String>,
    section: &str,
    subject: &str,
    metric: &str,
    key: &str,
) -> &'a str {
    let k = (section.into(), subject.into(), metric.into(), key.into());
    rows.get(&k).unwrap_or_else(|| panic!("no row {k:?}"))
}

// ---------------------------------------------------------------------------------------
// The figures.

#[test]
fn csv_figures_equal_those_computed_from_the_rows() {
    let (journal, payments) = fixture_journal();
    let csv = report(&journal, DAY, "csv");
    let rows = parse_csv(&csv);
    let expected = channel_figures(&payments, DAY_START);
    assert_eq!(expected.len(), 2);
    for (name, c) in &expected {
        let field = |metric: &str, key: &str| get(&rows, "channel", name, metric, key).to_string();
        assert_eq!(field("attempts", ""), c.attempts.to_string(), "{name}");
        assert_eq!(field("succeeded", ""), c.succeeded.to_string(), "{name}");
        assert_eq!(
            field("success_rate_pct", ""),
            pct(c.succeeded, c.attempts),
            "{name}"
        );
        for (currency, (attempted, succeeded)) in &c.amounts {
            assert_eq!(
                field("amount_attempted", currency),
                major(*attempted, currency)
            );
            assert_eq!(
                field("amount_succeeded", currency),
                major(*succeeded, currency)
            );
        }
        assert_eq!(
            field("latency_p50_ms", ""),
            nearest_rank(&c.latencies, 50).to_string()
        );
        assert_eq!(
            field("latency_p95_ms", ""),
            nearest_rank(&c.latencies, 95).to_string()
        );
        assert_eq!(
            field("latency_p99_ms", ""),
            nearest_rank(&c.latencies, 99).to_string()
        );
        assert_eq!(
            field("failovers_in", ""),
            c.failovers_in.to_string(),
            "{name}"
        );
        assert_eq!(
            field("failovers_out", ""),
            c.failovers_out.to_string(),
            "{name}"
        );
        for (code, count) in &c.declines {
            assert_eq!(field("decline", code), count.to_string(), "{name} {code}");
        }
    }
    // The fixture's intent, spelled out: psp_a fell from 95% to 90%, psp_b failed over 4.
    assert_eq!(
        get(&rows, "channel", "psp_a", "success_rate_pct", ""),
        "90.00"
    );
    assert_eq!(get(&rows, "channel", "psp_b", "failovers_out", ""), "4");
    assert_eq!(get(&rows, "channel", "psp_a", "failovers_in", ""), "4");
    let (top_code, top_count) = top_decline(&expected["psp_a"].declines);
    assert_eq!(top_code, "do_not_honor");
    // Declines are listed most frequent first: the first row is the top code.
    let first_decline = csv
        .lines()
        .find(|l| l.starts_with("channel,psp_a,decline,"));
    assert_eq!(
        first_decline,
        Some(format!("channel,psp_a,decline,{top_code},{top_count}").as_str())
    );
    assert_eq!(
        get(
            &rows,
            "channel",
            "psp_a",
            "decline",
            "do_not_honor [redacted]"
        ),
        "1"
    );
    // Events of the day only, ejections and drains only.
    assert_eq!(get(&rows, "channel", "psp_b", "ejections", ""), "1");
    assert_eq!(get(&rows, "channel", "psp_b", "drains", ""), "1");
    assert_eq!(get(&rows, "channel", "psp_a", "ejections", ""), "0");
}

#[test]
fn csv_merchants_payments_and_anomalies_equal_those_computed_from_the_rows() {
    let (journal, payments) = fixture_journal();
    let rows = parse_csv(&report(&journal, DAY, "csv"));
    let today: Vec<&Payment> = payments.iter().filter(|p| on_day(p, DAY_START)).collect();
    let count = |f: &dyn Fn(&Payment) -> bool| today.iter().filter(|p| f(p)).count() as u64;
    assert_eq!(
        get(&rows, "report", "", "payments", ""),
        today.len().to_string()
    );
    assert_eq!(
        get(&rows, "report", "", "pending", ""),
        count(&|p| p.status == "pending").to_string()
    );
    assert_eq!(
        get(&rows, "report", "", "reconciled", ""),
        count(&|p| p.reconciled).to_string()
    );
    assert_eq!(get(&rows, "report", "", "baseline_days", ""), "7");
    for merchant in ["shop_1", "shop_2"] {
        let total = count(&|p| p.merchant == merchant);
        let won = count(&|p| p.merchant == merchant && p.status == "succeeded");
        assert_eq!(
            get(&rows, "merchant", merchant, "payments", ""),
            total.to_string()
        );
        assert_eq!(
            get(&rows, "merchant", merchant, "succeeded", ""),
            won.to_string()
        );
        assert_eq!(
            get(&rows, "merchant", merchant, "success_rate_pct", ""),
            pct(won, total)
        );
    }
    let flagged: BTreeSet<(String, &str)> = rows
        .keys()
        .filter(|(section, ..)| section == "anomaly")
        .map(|(_, channel, rule, _)| (channel.clone(), rule.as_str()))
        .collect();
    let expected = expected_anomalies(&payments);
    assert_eq!(
        flagged
            .iter()
            .map(|(c, r)| (c.clone(), r.to_string()))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|(c, r)| (c.clone(), r.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        expected.into_iter().collect::<Vec<_>>(),
        vec![("psp_a".to_string(), "success_rate_down")],
        "the fixture flags exactly psp_a's 5-point drop"
    );
    let anomaly = rows
        .iter()
        .find(|((section, ..), _)| section == "anomaly")
        .expect("anomaly row");
    assert_eq!(
        (anomaly.0.3.as_str(), anomaly.1.as_str()),
        ("95.00%", "90.00%")
    );
}

#[test]
fn markdown_and_html_show_the_same_figures() {
    let (journal, payments) = fixture_journal();
    let markdown = report(&journal, DAY, "md");
    let html = report(&journal, DAY, "html");
    let c = &channel_figures(&payments, DAY_START)["psp_a"];
    let numbers = [
        c.attempts.to_string(),
        c.succeeded.to_string(),
        format!("{}%", pct(c.succeeded, c.attempts)),
        nearest_rank(&c.latencies, 50).to_string(),
        nearest_rank(&c.latencies, 95).to_string(),
        nearest_rank(&c.latencies, 99).to_string(),
        c.failovers_in.to_string(),
        c.failovers_out.to_string(),
        "0".into(),
        "0".into(),
    ];
    let md_row = format!("| psp_a | {} |", numbers.join(" | "));
    assert!(markdown.contains(&md_row), "no row {md_row} in\n{markdown}");
    assert!(
        markdown.contains("| psp_a | success rate down more than 3 points | 90.00% | 95.00% |")
    );
    let html_row = format!(
        "<tr><td>psp_a</td>{}</tr>",
        numbers
            .iter()
            .map(|n| format!("<td class=\"n\">{n}</td>"))
            .collect::<String>()
    );
    assert!(html.contains(&html_row), "no row {html_row}");
    assert!(html.contains("success rate down more than 3 points"));
}

#[test]
fn only_the_ten_most_frequent_decline_codes_are_listed() {
    // Code c_NN is declined NN times, for NN from 1 to 12.
    let mut payments = Vec::new();
    for code in 1..=12i64 {
        for n in 0..code {
            let slot = code * 100 + n;
            let mut a = attempt("psp_a", "declined", 50, DAY_START + slot * 1000);
            a.decline = Some(format!("c_{code:02}"));
            payments.push(payment(7, slot, vec![a], "declined"));
        }
    }
    let path = scratch().join("paygate.db");
    write_journal(&path, &payments, &[]);
    let csv = report(&path, DAY, "csv");
    let listed: Vec<&str> = csv
        .lines()
        .filter(|l| l.starts_with("channel,psp_a,decline,"))
        .collect();
    let expected: Vec<String> = (3..=12)
        .rev()
        .map(|code| format!("channel,psp_a,decline,c_{code:02},{code}"))
        .collect();
    assert_eq!(listed, expected);
}

// ---------------------------------------------------------------------------------------
// Bad input.

#[test]
fn a_day_without_payments_gives_an_empty_report_that_says_so() {
    let (journal, _) = fixture_journal();
    let csv = report(&journal, "2025-01-01", "csv");
    assert!(
        csv.contains("report,,note,,no payments journaled on 2025-01-01"),
        "{csv}"
    );
    assert!(csv.contains("report,,payments,,0"));
    let markdown = report(&journal, "2025-01-01", "md");
    assert!(
        markdown.contains("No payments were journaled on 2025-01-01."),
        "{markdown}"
    );
    let html = report(&journal, "2025-01-01", "html");
    assert!(html.contains("No payments were journaled on 2025-01-01."));
}

#[test]
fn a_malformed_date_is_refused_with_a_message() {
    let (journal, _) = fixture_journal();
    for date in ["2026-13-01", "2026-02-30", "24/11/2026", "yesterday"] {
        let out = paygate(&["report", "--journal", path_str(&journal), "--date", date]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{date}: {stderr}");
        assert!(
            stderr.contains("invalid date") && stderr.contains(date),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_missing_journal_is_named_and_not_created() {
    let journal = scratch().join("nowhere.db");
    let out = paygate(&["report", "--journal", path_str(&journal), "--date", DAY]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(path_str(&journal)) && stderr.contains("no such file"),
        "{stderr}"
    );
    assert!(!journal.exists(), "the report created the journal");
    let dir = journal.parent().expect("dir");
    assert_eq!(
        std::fs::read_dir(dir).expect("dir").count(),
        0,
        "files left behind"
    );
}

#[test]
fn a_corrupt_or_foreign_file_is_refused_by_name() {
    let dir = scratch();
    let corrupt = dir.join("corrupt.db");
    std::fs::write(&corrupt, "this is not a database\n".repeat(500)).expect("write");
    let out = paygate(&["report", "--journal", path_str(&corrupt), "--date", DAY]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(path_str(&corrupt)) && stderr.contains("cannot read"),
        "{stderr}"
    );

    let foreign = dir.join("other.db");
    Connection::open(&foreign)
        .and_then(|c| c.execute_batch("CREATE TABLE t (x INTEGER);"))
        .expect("foreign db");
    let out = paygate(&["report", "--journal", path_str(&foreign), "--date", DAY]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a paygate journal"), "{stderr}");
}

#[test]
fn out_writes_the_file_in_the_format_its_extension_names() {
    let (journal, _) = fixture_journal();
    let out_file = journal.with_file_name("daily.csv");
    let out = paygate(&[
        "report",
        "--journal",
        path_str(&journal),
        "--date",
        DAY,
        "--out",
        path_str(&out_file),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout with --out");
    let text = std::fs::read_to_string(&out_file).expect("report file");
    assert!(text.starts_with("section,subject,metric,key,value\n"));
    assert!(!text.contains(CARD));
}

// ---------------------------------------------------------------------------------------
// The HTML report in a real browser.

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PAYGATE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Headless Chromium, offline, with its own profile; killed if it hangs. Its output goes to
/// files, not pipes: a dumped DOM is larger than a pipe's buffer, and polling for exit while
/// nobody drains the pipe would deadlock.
fn chromium(
    binary: &Path,
    profile: &Path,
    extra: &[String],
    page: &Path,
) -> (bool, String, String) {
    let stdout_path = profile.with_extension("stdout");
    let stderr_path = profile.with_extension("stderr");
    let file = |path: &Path| std::fs::File::create(path).expect("chromium output file");
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path));
    let mut child = command.spawn().expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (status.success(), read(&stdout_path), read(&stderr_path))
}

#[test]
fn the_html_report_renders_its_charts_in_headless_chromium() {
    let Some(browser) = find_chromium() else {
        println!(
            "SKIPPED: no chromium found (PATH or PAYGATE_CHROMIUM); install the Debian package `chromium`"
        );
        return;
    };
    let (journal, _) = fixture_journal();
    let dir = journal.parent().expect("dir").to_path_buf();
    let page = dir.join("report.html");
    let out = paygate(&[
        "report",
        "--journal",
        path_str(&journal),
        "--date",
        DAY,
        "--out",
        path_str(&page),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).expect("html");
    assert!(!html.contains(CARD));
    // Self-contained: no script, stylesheet link, image or URL to fetch. The only http is
    // the SVG namespace name, which is never fetched.
    for needle in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!html.contains(needle), "external reference {needle}");
    }
    let urls = html.matches("http").count();
    assert_eq!(
        urls,
        html.matches("http://www.w3.org/2000/svg").count(),
        "a URL besides the SVG namespace"
    );

    let (ok, dom, stderr) = chromium(
        &browser,
        &dir.join("profile-dom"),
        &["--dump-dom".into()],
        &page,
    );
    assert!(ok, "chromium: {stderr}");
    assert_eq!(dom.matches("<svg").count(), 3, "three charts in the DOM");
    for title in [
        "Success rate per channel per hour (%)",
        "Latency p95 per channel per hour (ms)",
        "Traffic share per channel over the day (%)",
    ] {
        assert!(
            dom.contains(title),
            "chart {title:?} missing from the rendered DOM"
        );
    }
    assert!(
        dom.matches(">psp_a<").count() >= 3,
        "legend names in the charts"
    );

    let shot = dir.join("report.png");
    let screenshot = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1200,2400".into(),
    ];
    let (ok, _, stderr) = chromium(&browser, &dir.join("profile-shot"), &screenshot, &page);
    assert!(ok, "chromium: {stderr}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a real screenshot"
    );
    if let Ok(keep) = std::env::var("PAYGATE_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy the screenshot");
    }
}
