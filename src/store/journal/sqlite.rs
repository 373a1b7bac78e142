//! The embedded journal: one SQLite file in WAL mode, written by the journal's writer thread
//! and read through one connection behind a lock. Owns the file's settings, its upgrades,
//! the checkpointer, and the SQL of both sides; what is written when is `mod.rs`'s.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::batch::{Rows, status_text};
use super::{Backend, DbError, KeyLookup, Reader, Writer};
use crate::store::idempotency::StoredResponse;
use crate::store::keys::{Kept, KeyRecord};
use crate::store::now_ms;

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
    let writer = connect(path)?;
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
    let has_in_doubt: bool = connection.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('payments') WHERE name = 'in_doubt'",
        [],
        |row| row.get(0),
    )?;
    if !has_in_doubt {
        connection.execute_batch(
            "ALTER TABLE payments ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
             UPDATE payments SET in_doubt = 1 WHERE status = 'pending';",
        )?;
    }
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS payments_in_doubt ON payments (in_doubt) WHERE in_doubt = 1",
    )
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

impl Writer for SqliteWriter {
    fn commit(&mut self, rows: &Rows<'_>) -> Result<usize, DbError> {
        let mut swept = 0;
        let transaction = self.0.transaction()?;
        {
            let mut payment_row = transaction.prepare_cached(
                "INSERT INTO payments (id, merchant, amount, currency, method, country, status, channel,
                    psp_reference, decline_code, card_bin, card_last4, captured_amount, refunded_amount,
                    reconciled, created_at_ms, updated_at_ms, record, in_doubt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, channel = excluded.channel,
                    psp_reference = excluded.psp_reference, decline_code = excluded.decline_code,
                    captured_amount = excluded.captured_amount, refunded_amount = excluded.refunded_amount,
                    reconciled = excluded.reconciled, updated_at_ms = excluded.updated_at_ms,
                    record = excluded.record, in_doubt = excluded.in_doubt",
            )?;
            let mut attempt_row = transaction.prepare_cached(
                "INSERT OR IGNORE INTO attempts (payment_id, number, merchant, channel, outcome,
                    decline_code, latency_ms, amount, currency, method, country, failover, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let now = now_ms() as i64;
            for row in &rows.payments {
                let p = &row.payment;
                payment_row.execute(params![
                    p.id,
                    p.merchant,
                    p.amount as i64,
                    p.currency,
                    p.method,
                    p.country,
                    status_text(p.status),
                    p.channel,
                    p.psp_reference,
                    p.decline_code,
                    p.card.as_ref().map(|c| c.bin.as_str()),
                    p.card.as_ref().map(|c| c.last4.as_str()),
                    p.captured_amount as i64,
                    p.refunded_amount as i64,
                    p.reconciled,
                    p.created_at_ms as i64,
                    now,
                    row.record,
                    p.in_doubt(),
                ])?;
                for (index, attempt) in p.attempts.iter().enumerate() {
                    attempt_row.execute(params![
                        p.id,
                        index as i64 + 1,
                        p.merchant,
                        attempt.channel,
                        attempt.outcome.as_str(),
                        attempt.decline_code,
                        attempt.latency_ms as i64,
                        p.amount as i64,
                        p.currency,
                        p.method,
                        p.country,
                        index > 0,
                        attempt.at_ms as i64,
                    ])?;
                }
            }
            let mut event_row = transaction.prepare_cached(
                "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for event in &rows.events {
                event_row.execute(params![
                    event.at_ms as i64,
                    event.kind,
                    event.channel,
                    event.detail
                ])?;
            }
            let mut key_row = transaction.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (scope, request_hash, status, body, channel,
                    expires_at_ms, target)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // Only a record that names what it made and was never answered is freed: the
            // request in flight that made a payment which surely failed.
            let mut free_key = transaction.prepare_cached(
                "DELETE FROM idempotency WHERE scope = ?1 AND target IS NOT NULL",
            )?;
            for (scope, change) in &rows.keys {
                let Some(record) = change else {
                    free_key.execute([scope.as_str()])?;
                    continue;
                };
                let (answer, target) = match &record.kept {
                    Kept::Answer(answer) => (Some(answer), None),
                    Kept::Made(target) => (None, Some(target.as_str())),
                };
                key_row.execute(params![
                    scope.as_str(),
                    &record.request_hash[..],
                    answer.map_or(0, |a| a.status),
                    answer.map_or(&[][..], |a| &a.body[..]),
                    answer.and_then(|a| a.channel.as_deref()),
                    record.expires_at_ms as i64,
                    target,
                ])?;
            }
            if let Some(before) = rows.sweep_before_ms {
                swept = transaction.execute(
                    "DELETE FROM idempotency WHERE expires_at_ms <= ?1",
                    [before as i64],
                )?;
            }
        }
        transaction.commit()?;
        Ok(swept)
    }
}

struct SqliteReader(std::sync::Mutex<Connection>);

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
    fn record(&self, id: &str) -> Result<Option<String>, DbError> {
        self.with(|c| {
            c.prepare_cached("SELECT record FROM payments WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()
        })
    }

    fn in_doubt(&self) -> Result<Vec<String>, DbError> {
        self.with(|c| {
            let mut query = c.prepare_cached("SELECT record FROM payments WHERE in_doubt = 1")?;
            let rows = query.query_map([], |row| row.get::<_, String>(0))?;
            rows.collect()
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
