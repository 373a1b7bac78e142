//! The daily report over a journal of 1,000,000 payments: eight days of realistic traffic
//! (diurnal load, three channels, failovers, declines, pending and reconciled payments,
//! ejections and drains), so the report's day has a full seven-day baseline. The journal is
//! generated once per run; the bench times reading and rendering the last day.
//!
//! `PAYGATE_REPORT_BENCH_JOURNAL=/path/journal.db` keeps the journal there (and reuses it when
//! it is already complete), for measuring `paygate report` itself with `/usr/bin/time -v`.
//! Figures: benches/REPORT.md.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use paygate::report::{self, Day, Format};
use rusqlite::{Connection, params};

const PAYMENTS: u64 = 1_000_000;
const DAYS: u64 = 8;
const FIRST_DAY: &str = "2026-11-17";
const REPORT_DAY: &str = "2026-11-24";
const SCHEMA: &str = include_str!("../src/store/journal.sql");

/// (name, share of first attempts in per mille, success chance on a normal day, median ms).
const CHANNELS: [(&str, u64, f64, f64); 3] = [
    ("psp_a", 450, 0.93, 180.0),
    ("psp_b", 350, 0.90, 240.0),
    ("psp_c", 200, 0.87, 300.0),
];
const CURRENCIES: [(&str, u64); 4] = [("EUR", 60), ("USD", 25), ("GBP", 10), ("JPY", 5)];
const DECLINES: [(&str, u64); 8] = [
    ("do_not_honor", 30),
    ("insufficient_funds", 25),
    ("expired_card", 10),
    ("suspected_fraud", 8),
    ("invalid_cvc", 8),
    ("card_velocity_exceeded", 7),
    ("issuer_unavailable", 7),
    ("restricted_card", 5),
];
/// Relative traffic per UTC hour: quiet at night, peaks at lunch and in the evening.
const HOURLY: [u64; 24] = [
    3, 2, 2, 2, 2, 3, 5, 8, 11, 12, 13, 14, 15, 14, 13, 12, 12, 13, 15, 16, 14, 10, 7, 4,
];

/// splitmix64: small, seedable and good enough for synthetic traffic.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn weighted<'a>(&mut self, table: &[(&'a str, u64)]) -> &'a str {
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(total);
        for (name, weight) in table {
            if pick < *weight {
                return name;
            }
            pick -= weight;
        }
        table[0].0
    }
    /// Log-normal latency around `median` (sigma 0.5: p99 about 3.2x the median).
    fn latency(&mut self, median: f64) -> i64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (median * (0.5 * z).exp()).round() as i64
    }
}

struct Attempt {
    channel: usize,
    outcome: &'static str,
    decline: Option<&'static str>,
    latency: i64,
}

fn generate(path: &Path) -> rusqlite::Result<()> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
    connection.execute_batch(SCHEMA)?;
    let first = Day::parse(FIRST_DAY).expect("constant date").start_ms();
    let mut random = Random(2026);
    let per_day = PAYMENTS / DAYS;
    for day in 0..DAYS {
        let transaction = connection.transaction()?;
        let last_day = day == DAYS - 1;
        for index in 0..per_day {
            let at = first + day as i64 * 86_400_000 + diurnal_offset(index, per_day);
            let id = format!("pay_{day}_{index:07}");
            write_payment(&transaction, &mut random, &id, at, last_day)?;
        }
        write_events(&transaction, &mut random, first + day as i64 * 86_400_000)?;
        transaction.commit()?;
    }
    connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// The `index`-th of `count` payment times in a day, in ms, following `HOURLY`.
fn diurnal_offset(index: u64, count: u64) -> i64 {
    let total: u64 = HOURLY.iter().sum();
    let mut target = index as f64 / count as f64 * total as f64;
    for (hour, weight) in HOURLY.iter().enumerate() {
        if target < *weight as f64 {
            return hour as i64 * 3_600_000 + (target / *weight as f64 * 3_600_000.0) as i64;
        }
        target -= *weight as f64;
    }
    86_399_999
}

fn attempts(random: &mut Random, last_day: bool) -> Vec<Attempt> {
    let table: Vec<(&str, u64)> = CHANNELS.iter().map(|c| (c.0, c.1)).collect();
    let name = random.weighted(&table);
    let mut channel = CHANNELS.iter().position(|c| c.0 == name).unwrap_or(0);
    let mut list = Vec::with_capacity(2);
    loop {
        let (_, _, mut success, mut median) = CHANNELS[channel];
        // The report's day: psp_c degrades, so the report has anomalies to show.
        if last_day && channel == 2 {
            success -= 0.06;
            median *= 1.8;
        }
        let roll = random.unit();
        let attempt = if roll < 0.03 {
            Attempt {
                channel,
                outcome: "unavailable",
                decline: None,
                latency: 2 + random.below(4) as i64,
            }
        } else if roll < 0.035 {
            Attempt {
                channel,
                outcome: "pending",
                decline: None,
                latency: 5000,
            }
        } else if roll < 0.035 + success {
            Attempt {
                channel,
                outcome: "succeeded",
                decline: None,
                latency: random.latency(median),
            }
        } else {
            let code = random.weighted(&DECLINES);
            Attempt {
                channel,
                outcome: "declined",
                decline: Some(code),
                latency: random.latency(median),
            }
        };
        let retry =
            attempt.outcome == "unavailable" || attempt.decline == Some("issuer_unavailable");
        list.push(attempt);
        if !retry || list.len() == CHANNELS.len() {
            return list;
        }
        channel = (channel + 1) % CHANNELS.len();
    }
}

fn write_payment(
    connection: &Connection,
    random: &mut Random,
    id: &str,
    at: i64,
    last_day: bool,
) -> rusqlite::Result<()> {
    let list = attempts(random, last_day);
    let merchant = format!("merchant_{:02}", random.below(8) * random.below(4));
    let currency = random.weighted(&CURRENCIES);
    let amount = 500 + random.below(49_500) as i64;
    let last = list.last().expect("at least one attempt");
    let (mut status, reconciled) = match last.outcome {
        "succeeded" => ("succeeded", false),
        "declined" => ("declined", false),
        "pending" => ("pending", random.below(10) < 6),
        _ => ("failed", false),
    };
    if reconciled {
        status = "succeeded";
    }
    connection
        .prepare_cached(
            "INSERT INTO payments (id, merchant, amount, currency, method, country, status, channel,
                psp_reference, decline_code, card_bin, card_last4, reconciled, created_at_ms,
                updated_at_ms, reference)
             VALUES (?1, ?2, ?3, ?4, 'card', 'DE', ?5, ?6, ?7, ?8, '411111', '1111', ?9, ?10, ?10, ?11)",
        )?
        .execute(params![
            id,
            merchant,
            amount,
            currency,
            status,
            CHANNELS[last.channel].0,
            format!("ref-{id}"),
            last.decline,
            reconciled,
            at,
            format!("order-{at}")
        ])?;
    let mut attempt_row = connection.prepare_cached(
        "INSERT INTO attempts (payment_id, number, merchant, channel, outcome, decline_code,
            latency_ms, amount, currency, method, country, failover, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'card', 'DE', ?10, ?11)",
    )?;
    let mut attempt_at = at;
    for (number, attempt) in list.iter().enumerate() {
        attempt_row.execute(params![
            id,
            number as i64 + 1,
            merchant,
            CHANNELS[attempt.channel].0,
            attempt.outcome,
            attempt.decline,
            attempt.latency,
            amount,
            currency,
            number > 0,
            attempt_at
        ])?;
        attempt_at += attempt.latency;
    }
    Ok(())
}

fn write_events(
    connection: &Connection,
    random: &mut Random,
    day_start: i64,
) -> rusqlite::Result<()> {
    for _ in 0..random.below(4) {
        let channel = CHANNELS[random.below(3) as usize].0;
        let at = day_start + random.below(86_400_000) as i64;
        let kind = if random.below(3) == 0 {
            "drain"
        } else {
            "ejection"
        };
        connection.execute(
            "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
            params![
                at,
                kind,
                channel,
                "{\"reason\":\"success rate below threshold\"}"
            ],
        )?;
    }
    Ok(())
}

fn complete(path: &Path) -> bool {
    let count =
        |c: &Connection| c.query_row("SELECT COUNT(*) FROM payments", [], |r| r.get::<_, i64>(0));
    Connection::open(path)
        .and_then(|c| count(&c))
        .is_ok_and(|n| n as u64 == PAYMENTS)
}

/// The journal to report on, and whether to delete it afterwards.
fn journal() -> (PathBuf, bool) {
    let (path, keep) = match std::env::var_os("PAYGATE_REPORT_BENCH_JOURNAL") {
        Some(path) => (PathBuf::from(path), true),
        None => {
            let dir =
                std::env::temp_dir().join(format!("paygate-report-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the bench dir");
            (dir.join("journal.db"), false)
        }
    };
    if path.exists() && complete(&path) {
        eprintln!("reusing the journal {}", path.display());
        return (path, keep);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let started = Instant::now();
    generate(&path).expect("generate the journal");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "generated {PAYMENTS} payments over {DAYS} days in {:.1} s: {} ({} MB)",
        started.elapsed().as_secs_f64(),
        path.display(),
        size / 1_000_000
    );
    (path, keep)
}

fn bench(c: &mut Criterion) {
    let (path, keep) = journal();
    let day = Day::parse(REPORT_DAY).expect("constant date");
    let report = report::build(&path, day).expect("report");
    eprintln!(
        "{REPORT_DAY}: {} payments, {} channels, {} anomalies, baseline {} days",
        report.payments,
        report.channels.len(),
        report.anomalies.len(),
        report.baseline_days
    );
    let mut group = c.benchmark_group("report");
    group.sample_size(10);
    // A run takes about 1.5 s: ten samples need about 20 s.
    group.measurement_time(std::time::Duration::from_secs(25));
    group.bench_function("one day of a 1M-payment journal, html", |b| {
        b.iter(|| {
            let report = report::build(black_box(&path), day).expect("report");
            report::render(&report, Format::Html).expect("render")
        })
    });
    group.bench_function("one day of a 1M-payment journal, csv", |b| {
        b.iter(|| {
            let report = report::build(black_box(&path), day).expect("report");
            report::render(&report, Format::Csv).expect("render")
        })
    });
    group.finish();
    if let Some(dir) = path.parent().filter(|_| !keep) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
