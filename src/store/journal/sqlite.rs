//! The embedded journal: one SQLite file in WAL mode, written by the journal's writer thread
//! and read through one connection behind a lock. Owns the file's settings, its upgrades,
//! the checkpointer, and the SQL of both sides; what is written when is `mod.rs`'s.
//!
//! A payment is one row and each of its attempts one more, every field in a column: a change
//! of a payment rewrites one row of about 200 bytes, where it used to write its JSON too.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::batch::Rows;
use super::{Backend, DbError, KeyLookup, Reader, Writer};
use crate::store::idempotency::StoredResponse;
use crate::store::keys::{Kept, KeyRecord};
use crate::store::{Attempt, MaskedCard, Outcome, Payment, PaymentStatus, now_ms};

const SCHEMA: &str = include_str!("../journal.sql");
/// How often the checkpointer copies the WAL into the database file.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL size (4 KiB pages) past which the checkpointer makes the WAL start over.
const WAL_LIMIT_PAGES: i64 = 32_768;
/// How long opening waits for a journal another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens (or creates) the journal file: its writer, its reader, and a checkpointer thread
/// that runs while `alive` has owners.
pub(super) fn open(path: &Path, alive: std::sync::Weak<()>) -> Result<Backend, DbError> {
    let mut writer = connect(path)?;
    upgrade_payments(&mut writer)?;
    writer
        .execute_batch(SCHEMA)
        .map_err(|e| DbError::Schema(e.to_string()))?;
    migrate(&writer).map_err(|e| DbError::Schema(format!("cannot upgrade it: {e}")))?;
    // Checkpoints (copying the WAL into the database file, with its fsync) are the
    // checkpointer's, never a commit's: a commit that checkpoints holds every payment
    // waiting for it for tens of milliseconds.
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    let checkpointer = connect(path)?;
    std::thread::Builder::new()
        .name("journal-checkpoint".into())
        .spawn(move || checkpoint_while(checkpointer, alive))
        .map_err(|e| DbError::Thread(e.to_string()))?;
    let reader = connect(path)?;
    let live_keys = live_keys(&reader)?;
    Ok(Backend {
        writer: Box::new(SqliteWriter(writer)),
        reader: Box::new(SqliteReader(std::sync::Mutex::new(reader))),
        live_keys,
        shared: false,
    })
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // Reading the header here turns "not a database" into an error at open, not later.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL: a commit survives a crash of paygate; only a power loss can lose the last
    // transactions.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

/// The idempotency records still valid: scope and expiry of each.
fn live_keys(reader: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut query =
        reader.prepare("SELECT scope, expires_at_ms FROM idempotency WHERE expires_at_ms > ?1")?;
    let rows = query.query_map([now_ms() as i64], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Columns added since the first journals were written.
fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let has_target: bool = connection.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('idempotency') WHERE name = 'target'",
        [],
        |row| row.get(0),
    )?;
    if !has_target {
        connection.execute_batch("ALTER TABLE idempotency ADD COLUMN target TEXT")?;
    }
    Ok(())
}

/// Journals written before payments lost their JSON copy (a `record` column holding the
/// whole payment) are converted, in one transaction, from those records: the payment as it
/// was read back then is the payment as it is read back now. A record that cannot be read
/// stops the start with its payment named; nothing is dropped.
fn upgrade_payments(connection: &mut Connection) -> Result<(), DbError> {
    let old: bool = connection.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('payments') WHERE name = 'record'",
        [],
        |row| row.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let transaction = connection.transaction()?;
    transaction.execute_batch(
        "ALTER TABLE payments RENAME TO payments_v1;
         ALTER TABLE attempts RENAME TO attempts_v1;
         DROP INDEX IF EXISTS payments_created;
         DROP INDEX IF EXISTS payments_pending;
         DROP INDEX IF EXISTS payments_in_doubt;
         DROP INDEX IF EXISTS attempts_at;",
    )?;
    transaction
        .execute_batch(SCHEMA)
        .map_err(|e| DbError::Schema(e.to_string()))?;
    let mut converted = 0;
    {
        let mut records =
            transaction.prepare("SELECT id, record, updated_at_ms FROM payments_v1")?;
        let mut writes = PaymentWrites::new(&transaction);
        let mut rows = records.query([])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let payment: Payment = serde_json::from_str(&row.get::<_, String>(1)?)
                .map_err(|e| DbError::Schema(format!("cannot upgrade payment {id}: {e}")))?;
            writes.write(&payment, false, row.get(2)?)?;
            converted += 1;
        }
    }
    transaction.execute_batch("DROP TABLE payments_v1; DROP TABLE attempts_v1;")?;
    transaction.commit()?;
    tracing::info!(
        payments = converted,
        "journal upgraded: payments and attempts as columns"
    );
    Ok(())
}

/// Copies the WAL into the database file beside the writer, without blocking it (a passive
/// checkpoint), every `CHECKPOINT_EVERY`. When commits keep it from ever catching up and the
/// WAL passes `WAL_LIMIT_PAGES`, one checkpoint that waits for a gap between commits
/// (`RESTART`) lets the WAL start over, so it stays bounded.
fn checkpoint_while(connection: Connection, alive: std::sync::Weak<()>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        let wal_pages = connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(1)
            })
            .unwrap_or(0);
        if wal_pages > WAL_LIMIT_PAGES
            && let Err(error) =
                connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        {
            tracing::warn!(%error, wal_pages, "journal checkpoint failed; the WAL keeps growing");
        }
    }
}

struct SqliteWriter(Connection);

/// A payment new to the journal (or, after a commit whose answer was lost, one it has).
const INSERT_PAYMENT: &str = "INSERT INTO payments (id, merchant, amount, currency, method,
        country, reference, status, channel, psp_reference, decline_code, card_bin, card_last4,
        next_action, captured_amount, refunded_amount, capture, reconciled, in_doubt,
        in_doubt_until_ms, operations, created_at_ms, updated_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
        ?19, ?20, ?21, ?22, ?23)
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, channel = excluded.channel,
        psp_reference = excluded.psp_reference, decline_code = excluded.decline_code,
        next_action = excluded.next_action, captured_amount = excluded.captured_amount,
        refunded_amount = excluded.refunded_amount, reconciled = excluded.reconciled,
        in_doubt = excluded.in_doubt, in_doubt_until_ms = excluded.in_doubt_until_ms,
        operations = excluded.operations, updated_at_ms = excluded.updated_at_ms";

/// A payment the journal has: the columns a change can touch.
const UPDATE_PAYMENT: &str = "UPDATE payments SET status = ?2, channel = ?3, psp_reference = ?4,
        decline_code = ?5, next_action = ?6, captured_amount = ?7, refunded_amount = ?8,
        reconciled = ?9, in_doubt = ?10, in_doubt_until_ms = ?11, operations = ?12,
        updated_at_ms = ?13
    WHERE id = ?1";

/// Attempts are only ever added: those the journal has are kept as they are.
const INSERT_ATTEMPT: &str = "INSERT OR IGNORE INTO attempts (payment_id, number, merchant,
        channel, outcome, decline_code, psp_code, psp_reference, latency_ms, amount, currency,
        method, country, failover, at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// A statement of one transaction, taken from the connection's cache when first used (the
/// cache hashes the statement's text at each take and each return).
struct Lazy<'c> {
    connection: &'c Connection,
    sql: &'static str,
    statement: Option<rusqlite::CachedStatement<'c>>,
}

impl<'c> Lazy<'c> {
    fn new(connection: &'c Connection, sql: &'static str) -> Self {
        Self {
            connection,
            sql,
            statement: None,
        }
    }

    fn get(&mut self) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        if self.statement.is_none() {
            self.statement = Some(self.connection.prepare_cached(self.sql)?);
        }
        self.statement.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// The statements that write payments.
struct PaymentWrites<'c> {
    insert: Lazy<'c>,
    update: Lazy<'c>,
    attempt: Lazy<'c>,
}

impl<'c> PaymentWrites<'c> {
    fn new(connection: &'c Connection) -> Self {
        Self {
            insert: Lazy::new(connection, INSERT_PAYMENT),
            update: Lazy::new(connection, UPDATE_PAYMENT),
            attempt: Lazy::new(connection, INSERT_ATTEMPT),
        }
    }

    /// Writes one payment and its attempts; `stored`: the journal has an earlier state of it.
    fn write(&mut self, p: &Payment, stored: bool, updated_at_ms: i64) -> Result<(), DbError> {
        let operations = match p.operations.is_empty() {
            true => None,
            false => Some(serde_json::to_string(&p.operations)?),
        };
        let next_action = p.next_action.as_ref().map(|action| action.to_string());
        let updated = stored
            && self.update.get()?.execute(params![
                p.id,
                p.status.as_str(),
                p.channel,
                p.psp_reference,
                p.decline_code,
                next_action,
                p.captured_amount as i64,
                p.refunded_amount as i64,
                p.reconciled,
                p.in_doubt(),
                p.in_doubt_until_ms.map(|ms| ms as i64),
                operations,
                updated_at_ms,
            ])? == 1;
        if !updated {
            self.insert.get()?.execute(params![
                p.id,
                p.merchant,
                p.amount as i64,
                p.currency,
                p.method,
                p.country,
                p.reference,
                p.status.as_str(),
                p.channel,
                p.psp_reference,
                p.decline_code,
                p.card.as_ref().map(|c| c.bin.as_str()),
                p.card.as_ref().map(|c| c.last4.as_str()),
                next_action,
                p.captured_amount as i64,
                p.refunded_amount as i64,
                p.capture,
                p.reconciled,
                p.in_doubt(),
                p.in_doubt_until_ms.map(|ms| ms as i64),
                operations,
                p.created_at_ms as i64,
                updated_at_ms,
            ])?;
        }
        for (index, attempt) in p.attempts.iter().enumerate() {
            self.attempt.get()?.execute(params![
                p.id,
                index as i64 + 1,
                p.merchant,
                attempt.channel,
                attempt.outcome.as_str(),
                attempt.decline_code,
                attempt.psp_code,
                attempt.psp_reference,
                attempt.latency_ms as i64,
                p.amount as i64,
                p.currency,
                p.method,
                p.country,
                index > 0,
                attempt.at_ms as i64,
            ])?;
        }
        Ok(())
    }
}

impl Writer for SqliteWriter {
    /// BEGIN and COMMIT are cached statements too: parsed once, not at every commit.
    fn commit(&mut self, rows: &Rows<'_>) -> Result<usize, DbError> {
        let connection = &self.0;
        connection.prepare_cached("BEGIN")?.execute([])?;
        let committed = write_rows(connection, rows).and_then(|swept| {
            connection.prepare_cached("COMMIT")?.execute([])?;
            Ok(swept)
        });
        if committed.is_err() && !connection.is_autocommit() {
            // Nothing of a batch that failed stays: the writer retries it whole.
            let _ = connection.execute_batch("ROLLBACK");
        }
        committed
    }
}

/// One batch's rows, inside the caller's transaction; how many expired keys it swept.
fn write_rows(connection: &Connection, rows: &Rows<'_>) -> Result<usize, DbError> {
    let now = now_ms() as i64;
    let mut writes = PaymentWrites::new(connection);
    for row in &rows.payments {
        writes.write(&row.payment, row.stored, now)?;
    }
    let mut event_row = Lazy::new(
        connection,
        "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
    );
    for event in &rows.events {
        event_row.get()?.execute(params![
            event.at_ms as i64,
            event.kind,
            event.channel,
            event.detail
        ])?;
    }
    let mut key_row = Lazy::new(
        connection,
        "INSERT OR REPLACE INTO idempotency (scope, request_hash, status, body, channel,
            expires_at_ms, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    );
    // Only a record that names what it made and was never answered is freed: the request in
    // flight that made a payment which surely failed.
    let mut free_key = Lazy::new(
        connection,
        "DELETE FROM idempotency WHERE scope = ?1 AND target IS NOT NULL",
    );
    for (scope, change) in &rows.keys {
        let Some(record) = change else {
            free_key.get()?.execute([scope.as_str()])?;
            continue;
        };
        let (answer, target) = match &record.kept {
            Kept::Answer(answer) => (Some(answer), None),
            Kept::Made(target) => (None, Some(target.as_str())),
        };
        key_row.get()?.execute(params![
            scope.as_str(),
            &record.request_hash[..],
            answer.map_or(0, |a| a.status),
            answer.map_or(&[][..], |a| &a.body[..]),
            answer.and_then(|a| a.channel.as_deref()),
            record.expires_at_ms as i64,
            target,
        ])?;
    }
    match rows.sweep_before_ms {
        Some(before) => Ok(connection.execute(
            "DELETE FROM idempotency WHERE expires_at_ms <= ?1",
            [before as i64],
        )?),
        None => Ok(0),
    }
}

struct SqliteReader(std::sync::Mutex<Connection>);

/// A payment's columns and its attempts', one row per attempt (one row with no attempt
/// columns for a payment without any), in one statement: one snapshot of the journal.
macro_rules! select_payments {
    ($where:literal) => {
        concat!(
            "SELECT p.id, p.merchant, p.amount, p.currency, p.method, p.country, p.reference,
                p.status, p.channel, p.psp_reference, p.decline_code, p.card_bin, p.card_last4,
                p.next_action, p.captured_amount, p.refunded_amount, p.capture, p.reconciled,
                p.in_doubt_until_ms, p.operations, p.created_at_ms,
                a.number, a.channel, a.outcome, a.latency_ms, a.psp_reference, a.decline_code,
                a.psp_code, a.at_ms
             FROM payments p LEFT JOIN attempts a ON a.payment_id = p.id ",
            $where,
            " ORDER BY p.id, a.number"
        )
    };
}

/// The payments of `select_payments!` rows, in their order.
fn payments_of(mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Payment>> {
    let mut payments: Vec<Payment> = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        if payments.last().is_none_or(|p| p.id != id) {
            payments.push(payment_of(row, id)?);
        }
        if row.get::<_, Option<i64>>(21)?.is_some()
            && let Some(payment) = payments.last_mut()
        {
            payment.attempts.push(attempt_of(row)?);
        }
    }
    Ok(payments)
}

fn payment_of(row: &Row<'_>, id: String) -> rusqlite::Result<Payment> {
    let card = match (
        row.get::<_, Option<String>>(11)?,
        row.get::<_, Option<String>>(12)?,
    ) {
        (Some(bin), Some(last4)) => Some(MaskedCard { bin, last4 }),
        _ => None,
    };
    Ok(Payment {
        id,
        merchant: row.get(1)?,
        amount: row.get::<_, i64>(2)? as u64,
        currency: row.get(3)?,
        method: row.get(4)?,
        country: row.get(5)?,
        reference: row.get(6)?,
        status: known(row, 7, PaymentStatus::parse)?,
        channel: row.get(8)?,
        psp_reference: row.get(9)?,
        decline_code: row.get(10)?,
        card,
        next_action: json(row, 13)?,
        captured_amount: row.get::<_, i64>(14)? as u64,
        refunded_amount: row.get::<_, i64>(15)? as u64,
        capture: row.get(16)?,
        reconciled: row.get(17)?,
        in_doubt_until_ms: row.get::<_, Option<i64>>(18)?.map(|ms| ms as u64),
        operations: json(row, 19)?.unwrap_or_default(),
        attempts: Vec::new(),
        created_at_ms: row.get::<_, i64>(20)? as u64,
        version: 0,
    })
}

fn attempt_of(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        channel: row.get(22)?,
        outcome: known(row, 23, Outcome::parse)?,
        latency_ms: row.get::<_, i64>(24)? as u64,
        psp_reference: row.get(25)?,
        decline_code: row.get(26)?,
        psp_code: row.get(27)?,
        at_ms: row.get::<_, i64>(28)? as u64,
    })
}

/// A text column holding one of the values `parse` knows.
fn known<T>(row: &Row<'_>, index: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Text,
            format!("not a value the journal writes: {text:?}").into(),
        )
    })
}

/// A nullable JSON column.
fn json<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<Option<T>> {
    row.get::<_, Option<String>>(index)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(e))
            })
        })
        .transpose()
}

impl SqliteReader {
    fn with<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, DbError> {
        let connection = self.0.lock().map_err(|_| DbError::Poisoned)?;
        Ok(read(&connection)?)
    }

    fn key(&self, scope: &str) -> Result<Option<KeyRecord>, DbError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT request_hash, status, body, channel, expires_at_ms, target
                 FROM idempotency WHERE scope = ?1",
            )?
            .query_row([scope], |row| {
                let hash: Vec<u8> = row.get(0)?;
                let kept = match row.get::<_, Option<String>>(5)? {
                    Some(target) => Kept::Made(target),
                    None => Kept::Answer(StoredResponse {
                        status: row.get(1)?,
                        body: row.get::<_, Vec<u8>>(2)?.into(),
                        channel: row.get(3)?,
                    }),
                };
                Ok(KeyRecord {
                    request_hash: hash.try_into().unwrap_or([0; 32]),
                    kept,
                    expires_at_ms: row.get::<_, i64>(4)? as u64,
                })
            })
            .optional()
        })
    }
}

impl Reader for SqliteReader {
    fn payment(&self, id: &str) -> Result<Option<Payment>, DbError> {
        self.with(|c| {
            let mut query = c.prepare_cached(select_payments!("WHERE p.id = ?1"))?;
            Ok(payments_of(query.query([id])?)?.pop())
        })
    }

    fn in_doubt(&self) -> Result<Vec<Payment>, DbError> {
        self.with(|c| {
            let mut query = c.prepare_cached(select_payments!("WHERE p.in_doubt = 1"))?;
            payments_of(query.query([])?)
        })
    }

    /// Read at once: the file is local, and the read short.
    fn look_up(&self, scope: &str) -> KeyLookup {
        Box::pin(std::future::ready(self.key(scope)))
    }

    /// One process owns the file: nobody else reconciles its payments.
    fn lease(&self, _payment_id: &str, _for: Duration) -> Result<bool, DbError> {
        Ok(true)
    }

    fn release(&self, _payment_id: &str) -> Result<(), DbError> {
        Ok(())
    }
}
