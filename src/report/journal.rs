//! Reads one day's figures out of the journal (the SQLite file the gateway writes).
//!
//! Read-only: the file is opened with `SQLITE_OPEN_READ_ONLY`, so a report can run beside a
//! live gateway and never creates, migrates or locks the journal for writing. Every
//! aggregation happens in SQL over the day's rows (found through the `payments_created`
//! index); what reaches Rust is one row per group, never one row per payment, so memory stays
//! bounded by the number of channels, merchants and distinct latencies, not by traffic. The
//! card columns and the JSON columns are never selected.
//!
//! All queries run in one read transaction, so they see one consistent snapshot.
//!
//! A payment's day is its `created_at_ms` in UTC; its attempts count on that day too, even
//! an attempt that ran past midnight, so a payment and its attempts are always in the same
//! report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, named_params};

use super::ReportError;
use super::anomaly;
use super::day::{Day, MS_PER_DAY, MS_PER_HOUR};
use super::display::redact;
use super::figures::{Channel, CurrencyAmount, DeclineCount, Distribution, Merchant, Report};

/// Days before the reported one that form the baseline of the anomaly rules.
const BASELINE_DAYS: i64 = 7;
/// Decline codes listed per channel.
const TOP_DECLINES: i64 = 10;
/// A gateway checkpointing its WAL holds the file briefly; wait rather than fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache (SQLite's unit: negative = KiB). The day's index walks fit in it; measured on
/// the 1M-payment bench journal, 8 MiB ran faster than 32 MiB (1.4 s against 1.75 s) at a
/// third of the peak RSS (28 MB against 85 MB): the OS page cache does the rest.
const CACHE_KIB: i64 = 8 * 1024;
const TABLES: [&str; 3] = ["payments", "attempts", "events"];

/// The day's report, read from the journal at `path`.
pub fn read(path: &Path, day: Day) -> Result<Report, ReportError> {
    let journal = open(path)?;
    let failed = |e: rusqlite::Error| ReportError::journal(path, &e);
    // One read transaction: every query sees the same snapshot even while the gateway
    // commits (WAL), so the totals and the breakdowns always add up. Dropped, it rolls back,
    // which for a reader only ends the snapshot and drops the temporary table.
    let connection = journal.unchecked_transaction().map_err(failed)?;
    let mut report = summary(&connection, day).map_err(failed)?;
    collect_day_attempts(&connection, day).map_err(failed)?;
    let mut channels = BTreeMap::new();
    channel_totals(&connection, &mut channels).map_err(failed)?;
    channel_amounts(&connection, &mut channels).map_err(failed)?;
    channel_declines(&connection, &mut channels).map_err(failed)?;
    channel_latency(&connection, &mut channels).map_err(failed)?;
    channel_hours(&connection, &mut channels).map_err(failed)?;
    channel_events(&connection, day, &mut channels).map_err(failed)?;
    channel_baseline(&connection, day, &mut channels).map_err(failed)?;
    report.baseline_days = baseline_days(&connection, day).map_err(failed)?;
    report.merchants = merchants(&connection, day).map_err(failed)?;
    report.channels = channels.into_values().collect();
    report.anomalies = report
        .channels
        .iter()
        .flat_map(|c| anomaly::detect(c, report.baseline_days))
        .collect();
    Ok(report)
}

/// Opens an existing journal read-only and checks it is one (a corrupt file or another
/// SQLite database is refused here, by name, rather than failing in the middle of a query).
fn open(path: &Path) -> Result<Connection, ReportError> {
    if !path.is_file() {
        return Err(ReportError::MissingJournal {
            path: path.to_path_buf(),
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection =
        Connection::open_with_flags(path, flags).map_err(|e| ReportError::journal(path, &e))?;
    let prepare = |c: &Connection| -> rusqlite::Result<u64> {
        c.busy_timeout(BUSY_TIMEOUT)?;
        c.pragma_update(None, "cache_size", -CACHE_KIB)?;
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2, ?3)",
            TABLES,
            |row| count(row, 0),
        )
    };
    let tables = prepare(&connection).map_err(|e| ReportError::journal(path, &e))?;
    if tables != TABLES.len() as u64 {
        return Err(ReportError::NotAJournal {
            path: path.to_path_buf(),
        });
    }
    Ok(connection)
}

fn summary(connection: &Connection, day: Day) -> rusqlite::Result<Report> {
    connection.query_row(
        "SELECT COUNT(*), COALESCE(SUM(status = 'succeeded'), 0),
                COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(reconciled != 0), 0)
         FROM payments WHERE created_at_ms >= :start AND created_at_ms < :end",
        named_params! {":start": day.start_ms(), ":end": day.end_ms()},
        |row| {
            Ok(Report {
                day,
                payments: count(row, 0)?,
                succeeded_payments: count(row, 1)?,
                pending: count(row, 2)?,
                reconciled: count(row, 3)?,
                channels: Vec::new(),
                merchants: Vec::new(),
                anomalies: Vec::new(),
                baseline_days: 0,
            })
        },
    )
}

/// The day's attempts, once, into a temporary table (in the connection's own temp store,
/// not the journal) that the per-channel queries then group in different ways.
/// `failed_over` marks an attempt whose payment moved on to a next attempt flagged
/// `failover`: a failover out of this attempt's channel.
fn collect_day_attempts(connection: &Connection, day: Day) -> rusqlite::Result<()> {
    // CREATE ... AS SELECT takes no bound parameters; the bounds are integers we computed.
    connection.execute_batch(&format!(
        "CREATE TEMP TABLE day_attempts AS
         SELECT a.channel AS channel, a.outcome AS outcome, a.decline_code AS decline_code,
                a.latency_ms AS latency_ms, a.amount AS amount, a.currency AS currency,
                a.failover AS failover, (p.created_at_ms - {start}) / {MS_PER_HOUR} AS hour,
                EXISTS (SELECT 1 FROM attempts n WHERE n.payment_id = a.payment_id
                        AND n.number = a.number + 1 AND n.failover != 0) AS failed_over
         FROM payments p JOIN attempts a ON a.payment_id = p.id
         WHERE p.created_at_ms >= {start} AND p.created_at_ms < {end}",
        start = day.start_ms(),
        end = day.end_ms(),
    ))
}

fn channel_totals(
    connection: &Connection,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, COUNT(*), SUM(outcome = 'succeeded'), SUM(failover != 0),
                SUM(failed_over)
         FROM day_attempts GROUP BY channel",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let channel = entry(channels, row.get_ref(0)?.as_str()?);
        channel.attempts = count(row, 1)?;
        channel.succeeded = count(row, 2)?;
        channel.failovers_in = count(row, 3)?;
        channel.failovers_out = count(row, 4)?;
    }
    Ok(())
}

fn channel_amounts(
    connection: &Connection,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, currency, SUM(amount),
                SUM(CASE WHEN outcome = 'succeeded' THEN amount ELSE 0 END)
         FROM day_attempts GROUP BY channel, currency ORDER BY channel, currency",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let amount = CurrencyAmount {
            currency: redact(row.get_ref(1)?.as_str()?),
            attempted: count(row, 2)?,
            succeeded: count(row, 3)?,
        };
        entry(channels, row.get_ref(0)?.as_str()?)
            .amounts
            .push(amount);
    }
    Ok(())
}

fn channel_declines(
    connection: &Connection,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, code, n FROM (
             SELECT channel, COALESCE(decline_code, '') AS code, COUNT(*) AS n,
                    ROW_NUMBER() OVER (PARTITION BY channel
                                       ORDER BY COUNT(*) DESC, COALESCE(decline_code, '')) AS r
             FROM day_attempts WHERE outcome = 'declined' GROUP BY channel, code)
         WHERE r <= ?1 ORDER BY channel, r",
    )?;
    let mut rows = statement.query([TOP_DECLINES])?;
    while let Some(row) = rows.next()? {
        let decline = DeclineCount {
            code: redact(row.get_ref(1)?.as_str()?),
            count: count(row, 2)?,
        };
        entry(channels, row.get_ref(0)?.as_str()?)
            .declines
            .push(decline);
    }
    Ok(())
}

/// Exact day-wide percentiles from the distinct latencies and their counts.
fn channel_latency(
    connection: &Connection,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, latency_ms, COUNT(*), SUM(outcome = 'succeeded') FROM day_attempts
         GROUP BY channel, latency_ms ORDER BY channel, latency_ms",
    )?;
    let groups = groups(statement.query([])?, 1, |row| row.get::<_, String>(0))?;
    for (name, group) in groups {
        entry(channels, &name).latency = group.latencies.percentiles();
    }
    Ok(())
}

/// Per hour: attempts, successes and p95, for the charts.
fn channel_hours(
    connection: &Connection,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, hour, latency_ms, COUNT(*), SUM(outcome = 'succeeded')
         FROM day_attempts GROUP BY channel, hour, latency_ms ORDER BY channel, hour, latency_ms",
    )?;
    let groups = groups(statement.query([])?, 2, |row| {
        Ok((row.get::<_, String>(0)?, count(row, 1)?))
    })?;
    for ((name, hour), group) in groups {
        // Hours come from created_at_ms within the day's bounds, so always 0..24.
        let Some(slot) = usize::try_from(hour)
            .ok()
            .and_then(|h| entry(channels, &name).hours.get_mut(h))
        else {
            continue;
        };
        slot.attempts = group.latencies.total();
        slot.succeeded = group.succeeded;
        slot.p95_ms = group.latencies.percentile(95);
    }
    Ok(())
}

/// The attempts of one group (a channel, or a channel's hour): latencies and successes.
#[derive(Default)]
struct Group {
    latencies: Distribution,
    succeeded: u64,
}

/// Folds rows of (key columns..., latency, count, successes), sorted by key then latency,
/// into one group per key. `value_column` is the index of the latency column.
fn groups<K: PartialEq>(
    mut rows: rusqlite::Rows<'_>,
    value_column: usize,
    key: impl Fn(&Row<'_>) -> rusqlite::Result<K>,
) -> rusqlite::Result<Vec<(K, Group)>> {
    let mut out: Vec<(K, Group)> = Vec::new();
    while let Some(row) = rows.next()? {
        let key = key(row)?;
        if out.last().is_none_or(|(last, _)| *last != key) {
            out.push((key, Group::default()));
        }
        if let Some((_, group)) = out.last_mut() {
            let latency = count(row, value_column)?;
            group.latencies.add(latency, count(row, value_column + 1)?);
            group.succeeded += count(row, value_column + 2)?;
        }
    }
    Ok(out)
}

fn channel_events(
    connection: &Connection,
    day: Day,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT channel, SUM(kind = 'ejection'), SUM(kind = 'drain') FROM events
         WHERE at_ms >= :start AND at_ms < :end AND channel IS NOT NULL
           AND kind IN ('ejection', 'drain')
         GROUP BY channel",
    )?;
    let mut rows =
        statement.query(named_params! {":start": day.start_ms(), ":end": day.end_ms()})?;
    while let Some(row) = rows.next()? {
        let channel = entry(channels, row.get_ref(0)?.as_str()?);
        channel.ejections = count(row, 1)?;
        channel.drains = count(row, 2)?;
    }
    Ok(())
}

/// The previous seven days per channel: attempts, successes and p95, in one grouped pass.
fn channel_baseline(
    connection: &Connection,
    day: Day,
    channels: &mut BTreeMap<String, Channel>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(
        "SELECT a.channel, a.latency_ms, COUNT(*), SUM(a.outcome = 'succeeded')
         FROM payments p JOIN attempts a ON a.payment_id = p.id
         WHERE p.created_at_ms >= :start AND p.created_at_ms < :end
         GROUP BY a.channel, a.latency_ms ORDER BY a.channel, a.latency_ms",
    )?;
    let bounds = named_params! {
        ":start": day.start_ms() - BASELINE_DAYS * MS_PER_DAY,
        ":end": day.start_ms(),
    };
    let groups = groups(statement.query(bounds)?, 1, |row| row.get::<_, String>(0))?;
    for (name, group) in groups {
        let baseline = &mut entry(channels, &name).baseline;
        baseline.attempts = group.latencies.total();
        baseline.succeeded = group.succeeded;
        baseline.p95_ms = group.latencies.percentile(95);
    }
    Ok(())
}

fn baseline_days(connection: &Connection, day: Day) -> rusqlite::Result<u64> {
    connection.query_row(
        "SELECT COUNT(DISTINCT created_at_ms / :day_ms) FROM payments
         WHERE created_at_ms >= :start AND created_at_ms < :end",
        named_params! {
            ":day_ms": MS_PER_DAY,
            ":start": day.start_ms() - BASELINE_DAYS * MS_PER_DAY,
            ":end": day.start_ms(),
        },
        |row| count(row, 0),
    )
}

fn merchants(connection: &Connection, day: Day) -> rusqlite::Result<Vec<Merchant>> {
    let mut statement = connection.prepare(
        "SELECT merchant, COUNT(*), SUM(status = 'succeeded') FROM payments
         WHERE created_at_ms >= :start AND created_at_ms < :end
         GROUP BY merchant ORDER BY COUNT(*) DESC, merchant",
    )?;
    let mut rows =
        statement.query(named_params! {":start": day.start_ms(), ":end": day.end_ms()})?;
    let mut merchants = Vec::new();
    while let Some(row) = rows.next()? {
        merchants.push(Merchant {
            name: redact(row.get_ref(0)?.as_str()?),
            payments: count(row, 1)?,
            succeeded: count(row, 2)?,
        });
    }
    Ok(merchants)
}

/// The channel's figures, created on first sight. Names are redacted like all journal text.
fn entry<'a>(channels: &'a mut BTreeMap<String, Channel>, name: &str) -> &'a mut Channel {
    let name = redact(name);
    channels.entry(name.clone()).or_insert_with(|| Channel {
        name,
        ..Channel::default()
    })
}

/// A count, sum or latency column: an integer that cannot be negative in a sound journal.
fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Integer, e.into())
    })
}
