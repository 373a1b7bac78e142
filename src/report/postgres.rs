//! Reads one day's figures out of a journal in PostgreSQL (`paygate report --journal-url`).
//!
//! The rows the report needs (the day's payments and attempts, the seven days before it for
//! the baseline, and the events) are copied, in one read-only snapshot, into a scratch SQLite
//! file with the gateway's own schema, and the SQLite report (`journal.rs`) runs on that: one
//! set of queries for both backends, so the two reports cannot drift apart. Rows are streamed,
//! never all held in memory; the scratch file is deleted when the report is read. The card
//! columns and the payment records (JSON) are never selected.

use std::path::{Path, PathBuf};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use rusqlite::Connection;

use super::day::{Day, MS_PER_DAY};
use super::{Report, ReportError, journal};

const SCHEMA: &str = include_str!("../store/journal.sql");
/// As the baseline of `journal.rs`: the seven days before the reported one.
const BASELINE_DAYS: i64 = 7;

/// The day's report from the journal at `url`, in `schema`.
pub fn read(url: &str, schema: &str, day: Day) -> Result<Report, ReportError> {
    let location = location(url, schema);
    let failed = |reason: String| ReportError::Journal {
        path: PathBuf::from(&location),
        reason,
    };
    if !schema
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(failed(format!("{schema:?} is not a journal schema name")));
    }
    let scratch = Scratch::new();
    let mut client = Client::connect(url, NoTls).map_err(|e| failed(e.to_string()))?;
    copy(&mut client, schema, day, &scratch.0).map_err(failed)?;
    journal::read(&scratch.0, day)
}

/// The database and schema without credentials, for errors.
fn location(url: &str, schema: &str) -> String {
    format!(
        "{} (schema {schema})",
        crate::config::without_credentials(url)
    )
}

/// A scratch file, deleted on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self(std::env::temp_dir().join(format!("paygate-report-{}-{nanos}.db", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn copy(client: &mut Client, schema: &str, day: Day, into: &Path) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let mut target = Connection::open(into).map_err(|e| text(&e))?;
    target.execute_batch(SCHEMA).map_err(|e| text(&e))?;
    let sink = target.transaction().map_err(|e| text(&e))?;
    // One snapshot for all three tables, so that totals and breakdowns add up.
    let mut source = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| text(&e))?;
    source
        .batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
        .map_err(|e| text(&e))?;
    let start = day.start_ms() - BASELINE_DAYS * MS_PER_DAY;
    let end = day.end_ms();
    let bounds = [start, end];
    use Column::{Bool, Int, OptText, Text};
    copy_rows(
        &mut source,
        &sink,
        "SELECT id, merchant, amount, currency, method, country, status, channel,
                captured_amount, refunded_amount, reconciled, in_doubt, created_at_ms,
                updated_at_ms
         FROM payments WHERE created_at_ms >= $1 AND created_at_ms < $2",
        "INSERT INTO payments (id, merchant, amount, currency, method, country, status,
            channel, captured_amount, refunded_amount, reconciled, in_doubt, created_at_ms,
            updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        &[
            Text, Text, Int, Text, Text, OptText, Text, OptText, Int, Int, Bool, Bool, Int, Int,
        ],
        &bounds,
    )?;
    copy_rows(
        &mut source,
        &sink,
        "SELECT a.payment_id, a.number, a.merchant, a.channel, a.outcome, a.decline_code,
                a.latency_ms, a.amount, a.currency, a.method, a.country, a.failover, a.at_ms
         FROM attempts a JOIN payments p ON p.id = a.payment_id
         WHERE p.created_at_ms >= $1 AND p.created_at_ms < $2",
        "INSERT INTO attempts (payment_id, number, merchant, channel, outcome, decline_code,
            latency_ms, amount, currency, method, country, failover, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        &[
            Text, Int, Text, Text, Text, OptText, Int, Int, Text, Text, OptText, Bool, Int,
        ],
        &bounds,
    )?;
    copy_rows(
        &mut source,
        &sink,
        "SELECT at_ms, kind, channel, detail FROM events WHERE at_ms >= $1 AND at_ms < $2",
        "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
        &[Int, Text, OptText, OptText],
        &bounds,
    )?;
    sink.commit().map_err(|e| text(&e))?;
    source.commit().map_err(|e| text(&e))
}

/// A column's type in PostgreSQL, for its copy into SQLite.
#[derive(Clone, Copy)]
enum Column {
    Text,
    OptText,
    Int,
    Bool,
}

/// Streams the rows of `select` (bound to `bounds`) into `insert`, column by column.
fn copy_rows(
    source: &mut postgres::Transaction<'_>,
    sink: &Connection,
    select: &str,
    insert: &str,
    columns: &[Column],
    bounds: &[i64; 2],
) -> Result<(), String> {
    use rusqlite::types::Value;
    let mut insert = sink.prepare(insert).map_err(|e| e.to_string())?;
    let mut rows = source
        .query_raw(select, bounds.iter())
        .map_err(|e| not_a_journal(&e))?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let value = match column {
                Column::Text => row.try_get::<_, String>(i).map(Value::Text),
                Column::OptText => row
                    .try_get::<_, Option<String>>(i)
                    .map(|v| v.map_or(Value::Null, Value::Text)),
                Column::Int => row.try_get::<_, i64>(i).map(Value::Integer),
                Column::Bool => row
                    .try_get::<_, bool>(i)
                    .map(|b| Value::Integer(i64::from(b))),
            };
            values.push(value.map_err(|e| e.to_string())?);
        }
        insert
            .execute(rusqlite::params_from_iter(values))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A missing table means the schema holds no journal.
fn not_a_journal(error: &postgres::Error) -> String {
    match error.code() {
        Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
            "not a paygate journal (no payments, attempts and events tables)".into()
        }
        _ => error.to_string(),
    }
}
