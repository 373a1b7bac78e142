//! The durable payment store: every payment and attempt in an embedded SQLite journal (WAL),
//! written by one background thread in batched transactions, with the payments of this run
//! kept in memory in front of it.
//!
//! The request path never touches the disk for writes: it hands records to the writer and,
//! with `sync = "batch"`, waits for the commit of the batch that holds the outcome before the
//! merchant is answered. The queue is bounded: when the journal falls behind (or cannot
//! write, e.g. disk full), new payments are refused with 503 rather than accepted without a
//! record; records already queued are never dropped, the writer retries them. Memory holds
//! only payments still moving: once a settled payment's latest state is committed, the writer
//! drops it from memory, and reads of it go to the journal (so memory does not grow with
//! traffic). Card data never goes
//! beyond the masked form the `Payment` carries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::idempotency::{Begin, IdempotencyStore, Scope, StoredResponse};
use super::keys::{Committed, JournalKeys, Kept, KeyRecord};
use super::{Durable, MemoryStore, Payment, PaymentStatus, PaymentStore, StoreError, now_ms};
use crate::config::{Idempotency, Journal, JournalSync};

const SCHEMA: &str = include_str!("journal.sql");
/// Records per transaction at most: large enough to amortise the commit, small enough that a
/// waiting merchant is not held long.
const MAX_BATCH: usize = 512;
/// Commits start at most this often: the cost of a commit (WAL frames, locks) is shared by
/// every payment that arrives in the meantime, and a payment waits at most this much longer.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_micros(1000);
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL size (4 KiB pages) past which the checkpointer makes the WAL start over.
const WAL_LIMIT_PAGES: i64 = 32_768;
/// Wait before retrying a batch that failed (disk full, I/O error).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);
/// How long opening waits for a journal another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

enum Write {
    /// The payment's state at commit time is written; several writes of one payment that
    /// meet in a batch, or find it already committed, cost one row or none.
    Payment(String),
    Event {
        at_ms: u64,
        kind: String,
        channel: Option<String>,
        detail: String,
    },
    Key(Scope, KeyRecord),
    /// Deletes a key's record that holds no answer (its payment failed, nothing charged).
    FreeKey(Scope),
    /// Deletes idempotency records expired by then (ms since the Unix epoch).
    SweepKeys(u64),
    /// Acknowledged once every write before it is committed.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

pub struct JournalStore {
    memory: Arc<MemoryStore>,
    keys: Arc<JournalKeys>,
    sender: Mutex<mpsc::Sender<Write>>,
    /// Writes queued and not yet committed.
    queued: Arc<AtomicUsize>,
    /// False while the last commit failed.
    healthy: Arc<AtomicBool>,
    capacity: usize,
    sync: JournalSync,
    /// For payments of earlier runs.
    reader: Mutex<Connection>,
    path: PathBuf,
    /// The checkpointer stops once the store is gone.
    _alive: Arc<()>,
}

impl JournalStore {
    /// Opens (or creates) the journal and starts its writer. A file that is not a journal, or
    /// one another process holds, is an error naming the file: never a silent new journal.
    pub fn open(settings: &Journal) -> Result<Self, JournalError> {
        let path = settings.path.clone();
        let fail = |reason: String| JournalError::Open {
            path: path.clone(),
            reason,
        };
        let writer = connect(&path).map_err(|e| fail(e.to_string()))?;
        writer
            .execute_batch(SCHEMA)
            .map_err(|e| fail(format!("cannot use it as a journal: {e}")))?;
        migrate(&writer).map_err(|e| fail(format!("cannot upgrade it: {e}")))?;
        // Checkpoints (copying the WAL into the database file, with its fsync) are the
        // checkpointer's, never a commit's: a commit that checkpoints holds every payment
        // waiting for it for tens of milliseconds.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| fail(e.to_string()))?;
        let checkpointer = connect(&path).map_err(|e| fail(e.to_string()))?;
        let reader = connect(&path).map_err(|e| fail(e.to_string()))?;
        let keys =
            Arc::new(JournalKeys::new(live_keys(&reader).map_err(|e| {
                fail(format!("cannot read its idempotency keys: {e}"))
            })?));
        let (sender, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let memory = Arc::new(MemoryStore::new());
        let shared = Shared {
            queued: queued.clone(),
            healthy: healthy.clone(),
            memory: memory.clone(),
            keys: keys.clone(),
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_forever(writer, receiver, shared))
            .map_err(|e| fail(format!("cannot start the writer: {e}")))?;
        let alive = Arc::new(());
        let token = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || checkpoint_while(checkpointer, token))
            .map_err(|e| fail(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self {
            memory,
            keys,
            sender: Mutex::new(sender),
            queued,
            healthy,
            capacity: settings.queue,
            sync: settings.sync,
            reader: Mutex::new(reader),
            path,
            _alive: alive,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn enqueue(&self, write: Write) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self
            .sender
            .lock()
            .map(|s| s.send(write).is_ok())
            .unwrap_or(false);
        if !sent {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.healthy.store(false, Ordering::Release);
        }
    }

    fn journal(&self, id: &str) {
        self.enqueue(Write::Payment(id.to_string()));
    }

    fn load(&self, id: &str) -> Option<Payment> {
        let reader = self.reader.lock().ok()?;
        let record: Option<String> = match reader
            .query_row("SELECT record FROM payments WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
        {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(payment = id, %error, "cannot read the payment from the journal");
                None
            }
        };
        record.and_then(|r| serde_json::from_str(&r).ok())
    }
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

impl PaymentStore for JournalStore {
    fn insert(&self, payment: Payment) -> Result<(), StoreError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "cannot write (see the logs)".into(),
            ));
        }
        if self.queued.load(Ordering::Acquire) >= self.capacity {
            return Err(StoreError::Unavailable("is behind".into()));
        }
        let id = payment.id.clone();
        self.memory.insert(payment)?;
        self.journal(&id);
        Ok(())
    }

    fn get(&self, id: &str) -> Option<Payment> {
        self.memory.get(id).or_else(|| self.load(id))
    }

    fn update(&self, id: &str, change: &mut dyn FnMut(&mut Payment)) -> bool {
        // The writer may let the payment go from memory at any moment once its state is
        // committed; then it is read back from the journal and changed there. A few rounds
        // bound the (unlikely) case of it going again in between.
        for _ in 0..3 {
            if self.memory.update(id, change) {
                self.journal(id);
                return true;
            }
            match self.load(id) {
                Some(payment) => self.memory.adopt(payment),
                None => return false,
            }
        }
        false
    }

    fn durable(&self, _id: &str) -> Durable {
        if self.sync == JournalSync::Async {
            return Box::pin(std::future::ready(Ok(())));
        }
        let (ack, done) = oneshot::channel();
        self.enqueue(Write::Barrier(ack));
        Box::pin(async move {
            done.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("writer stopped".into())))
        })
    }

    fn pending(&self) -> Vec<Payment> {
        let mut pending = self.memory.pending();
        let Ok(reader) = self.reader.lock() else {
            return pending;
        };
        let Ok(mut query) = reader.prepare("SELECT record FROM payments WHERE in_doubt = 1") else {
            return pending;
        };
        let rows = query.query_map([], |row| row.get::<_, String>(0));
        for record in rows.into_iter().flatten().flatten() {
            if let Ok(payment) = serde_json::from_str::<Payment>(&record)
                && !pending.iter().any(|p| p.id == payment.id)
            {
                pending.push(payment);
            }
        }
        pending
    }

    fn event(&self, kind: &str, channel: Option<&str>, detail: &str) {
        self.enqueue(Write::Event {
            at_ms: now_ms(),
            kind: kind.to_string(),
            channel: channel.map(str::to_string),
            detail: detail.to_string(),
        });
    }
}

/// The writer: takes what is queued (up to a batch), commits it in one transaction, then
/// acknowledges the barriers. A failed commit is retried with the same batch until it
/// succeeds; meanwhile new payments are refused.
impl Committed for JournalStore {
    fn committed(&self, scope: &Scope) -> Option<KeyRecord> {
        let reader = self.reader.lock().ok()?;
        let mut query = reader
            .prepare_cached(
                "SELECT request_hash, status, body, channel, expires_at_ms, target
                 FROM idempotency WHERE scope = ?1",
            )
            .ok()?;
        query
            .query_row([scope.as_str()], |row| {
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
            .ok()
            .flatten()
    }
}

/// Idempotency records in the journal: see `keys.rs`. `max_keys` bounds the records held in
/// memory (in flight, or answered and not yet committed); the journal keeps the rest until
/// they expire.
impl IdempotencyStore for JournalStore {
    fn begin(
        &self,
        scope: &Scope,
        request_hash: [u8; 32],
        _now: std::time::Instant,
        settings: &Idempotency,
    ) -> Begin {
        self.keys
            .begin(scope, request_hash, now_ms(), settings.max_keys, self)
    }

    fn bind(&self, scope: &Scope, target: &str, settings: &Idempotency) {
        let expires_at_ms = now_ms() + settings.ttl.as_millis() as u64;
        if let Some(record) = self.keys.bind(scope, target, expires_at_ms) {
            self.enqueue(Write::Key(scope.clone(), record));
        }
    }

    /// A request that failed keeps its key when it made a payment a PSP may have charged:
    /// only a payment that surely failed frees it for another try.
    fn finish(
        &self,
        scope: &Scope,
        answer: Option<StoredResponse>,
        _now: std::time::Instant,
        settings: &Idempotency,
    ) -> bool {
        let expires_at_ms = now_ms() + settings.ttl.as_millis() as u64;
        let bound = self.keys.bound(scope);
        let keep = bound.as_deref().is_some_and(|target| {
            let (payment_id, operation_id) = super::idempotency::split_target(target);
            PaymentStore::get(self, payment_id).is_none_or(|p| !p.surely_failed(operation_id))
        });
        let record = self.keys.finish(scope, answer, keep, expires_at_ms);
        let Some(record) = record else {
            if bound.is_some() {
                self.enqueue(Write::FreeKey(scope.clone()));
            }
            return false;
        };
        let answered = matches!(record.kept, Kept::Answer(_));
        self.enqueue(Write::Key(scope.clone(), record));
        answered
    }

    fn flushed(&self) -> Durable {
        PaymentStore::durable(self, "")
    }

    /// Deleting is the writer's job: this queues it and reports none dropped yet.
    fn sweep(&self, _now: std::time::Instant) -> usize {
        self.enqueue(Write::SweepKeys(now_ms()));
        0
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// What the writer shares with the store.
struct Shared {
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    memory: Arc<MemoryStore>,
    keys: Arc<JournalKeys>,
}

fn write_forever(mut connection: Connection, receiver: mpsc::Receiver<Write>, shared: Shared) {
    let Shared {
        queued,
        healthy,
        memory,
        keys,
    } = shared;
    let mut last_commit = std::time::Instant::now();
    while let Ok(first) = receiver.recv() {
        // Group commit: under load, let a batch gather for a moment rather than commit a few
        // rows at a time; an idle journal commits at once.
        if let Some(wait) = MIN_COMMIT_INTERVAL.checked_sub(last_commit.elapsed()) {
            std::thread::sleep(wait);
        }
        last_commit = std::time::Instant::now();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let (committed, swept) = loop {
            match commit(&mut connection, &batch, &memory) {
                Ok(committed) => {
                    healthy.store(true, Ordering::Release);
                    break committed;
                }
                Err(error) => {
                    if healthy.swap(false, Ordering::AcqRel) {
                        tracing::error!(%error, "journal commit failed; refusing new payments until it works again");
                    }
                    // Whoever waits for this batch, or for anything queued behind it, learns at
                    // once that it is not on disk (a payment waiting for its intent is then not
                    // sent); the writes themselves stay and are retried.
                    while let Ok(write) = receiver.try_recv() {
                        batch.push(write);
                    }
                    let waiting = batch.len();
                    batch = fail_barriers(batch, &error);
                    queued.fetch_sub(waiting - batch.len(), Ordering::AcqRel);
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                }
            }
        };
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        for (id, version) in committed {
            memory.journaled(&id, version);
        }
        for write in batch {
            match write {
                Write::Key(scope, _) => keys.committed(&scope),
                Write::SweepKeys(now_ms) => keys.swept(swept, now_ms),
                Write::Barrier(ack) => {
                    let _ = ack.send(Ok(()));
                }
                Write::Payment(_) | Write::Event { .. } | Write::FreeKey(_) => {}
            }
        }
    }
}

/// Answers every barrier of a batch that could not be committed, and keeps the rest.
fn fail_barriers(batch: Vec<Write>, error: &rusqlite::Error) -> Vec<Write> {
    batch
        .into_iter()
        .filter_map(|write| match write {
            Write::Barrier(ack) => {
                let _ = ack.send(Err(StoreError::Unavailable(format!(
                    "cannot write ({error})"
                ))));
                None
            }
            other => Some(other),
        })
        .collect()
}

/// Commits one batch; returns the payments written, with the version each was written at,
/// and how many expired idempotency records were deleted.
fn commit(
    connection: &mut Connection,
    batch: &[Write],
    memory: &MemoryStore,
) -> rusqlite::Result<(Vec<(String, u64)>, usize)> {
    let mut swept = 0;
    let transaction = connection.transaction()?;
    let mut written: Vec<(String, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
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
        let mut key_row = transaction.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (scope, request_hash, status, body, channel,
                expires_at_ms, target)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut event_row = transaction.prepare_cached(
            "INSERT INTO events (at_ms, kind, channel, detail) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for write in batch {
            match write {
                Write::Payment(id) => {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    let Some(p) = memory.unjournaled(id) else {
                        continue;
                    };
                    let record = serde_json::to_string(&p)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
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
                        now_ms() as i64,
                        record,
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
                    written.push((p.id, p.version));
                }
                Write::Event {
                    at_ms,
                    kind,
                    channel,
                    detail,
                } => {
                    event_row.execute(params![*at_ms as i64, kind, channel, detail])?;
                }
                Write::Key(scope, record) => {
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
                Write::FreeKey(scope) => {
                    // Only a record that names what it made and was never answered: the
                    // request in flight that made a payment which surely failed.
                    transaction.execute(
                        "DELETE FROM idempotency WHERE scope = ?1 AND target IS NOT NULL",
                        [scope.as_str()],
                    )?;
                }
                Write::SweepKeys(now_ms) => {
                    swept += transaction.execute(
                        "DELETE FROM idempotency WHERE expires_at_ms <= ?1",
                        [*now_ms as i64],
                    )?;
                }
                Write::Barrier(_) => {}
            }
        }
    }
    transaction.commit()?;
    Ok((written, swept))
}

fn status_text(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Declined => "declined",
        PaymentStatus::Pending => "pending",
        PaymentStatus::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Attempt, Outcome};

    fn payment(id: &str) -> Payment {
        Payment {
            id: id.into(),
            merchant: "m".into(),
            status: PaymentStatus::Pending,
            amount: 1_999,
            currency: "EUR".into(),
            method: "card".into(),
            country: Some("DE".into()),
            reference: None,
            channel: None,
            psp_reference: None,
            decline_code: None,
            card: None,
            next_action: None,
            captured_amount: 0,
            refunded_amount: 0,
            reconciled: false,
            capture: false,
            in_doubt_until_ms: None,
            attempts: Vec::new(),
            operations: Vec::new(),
            created_at_ms: 1_000,
            version: 0,
        }
    }

    fn settings(dir: &Path) -> Journal {
        Journal {
            path: dir.join("journal.db"),
            sync: JournalSync::Batch,
            queue: 100,
        }
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "paygate-journal-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn round_trip_survives_a_new_store() {
        let dir = scratch();
        let store = JournalStore::open(&settings(&dir)).unwrap();
        store.insert(payment("pay_1")).unwrap();
        store.update("pay_1", &mut |p| {
            p.status = PaymentStatus::Succeeded;
            p.channel = Some("a".into());
            p.attempts.push(Attempt {
                channel: "a".into(),
                outcome: Outcome::Succeeded,
                latency_ms: 42,
                psp_reference: Some("a-1".into()),
                decline_code: None,
                psp_code: None,
                at_ms: 2_000,
            });
        });
        store.durable("pay_1").await.unwrap();

        assert_eq!(
            store.memory.len(),
            0,
            "a settled, committed payment leaves memory"
        );
        drop(store);
        let reopened = JournalStore::open(&settings(&dir)).unwrap();
        let back = reopened.get("pay_1").expect("read from the journal");
        assert_eq!(back.status, PaymentStatus::Succeeded);
        assert_eq!(back.attempts.len(), 1);
        assert_eq!(back.attempts[0].latency_ms, 42);
        let reader = reopened.reader.lock().unwrap();
        let attempts: i64 = reader
            .query_row(
                "SELECT COUNT(*) FROM attempts WHERE payment_id = 'pay_1' AND latency_ms = 42",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn a_payment_evicted_after_commit_can_still_change() {
        let dir = scratch();
        let store = JournalStore::open(&settings(&dir)).unwrap();
        store.insert(payment("pay_2")).unwrap();
        for amount in [10, 20, 30] {
            store.update("pay_2", &mut |p| p.captured_amount = amount);
        }
        store.update("pay_2", &mut |p| p.status = PaymentStatus::Succeeded);
        store.durable("pay_2").await.unwrap();
        assert_eq!(store.memory.len(), 0, "settled and committed");
        // A refund of the evicted payment: read back, changed, written again.
        assert!(store.update("pay_2", &mut |p| p.refunded_amount = 5));
        store.durable("pay_2").await.unwrap();
        let back = store.get("pay_2").unwrap();
        assert_eq!((back.captured_amount, back.refunded_amount), (30, 5));
        let reader = store.reader.lock().unwrap();
        let (rows, refunded): (i64, i64) = reader
            .query_row(
                "SELECT COUNT(*), MAX(refunded_amount) FROM payments WHERE id = 'pay_2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        drop(reader);
        assert_eq!((rows, refunded), (1, 5));
        assert!(!store.update("pay_unknown", &mut |_| {}));
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let dir = scratch();
        let store = JournalStore::open(&settings(&dir)).unwrap();
        for n in 0..50 {
            store.insert(payment(&format!("pay_c{n}"))).unwrap();
        }
        store.durable("pay_c49").await.unwrap();
        // Commits go to the WAL only (the writer never checkpoints); the database file
        // receives them from the checkpointer.
        let size = || std::fs::metadata(dir.join("journal.db")).map_or(0, |m| m.len());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while size() < 8 * 4096 && std::time::Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        assert!(size() >= 8 * 4096, "database file is {} bytes", size());
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_by_name() {
        let dir = scratch();
        let path = dir.join("journal.db");
        std::fs::write(
            &path,
            b"this is not a database, just text that is long enough to have a header",
        )
        .unwrap();
        let error = JournalStore::open(&settings(&dir))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("journal.db"), "{error}");
    }

    #[tokio::test]
    async fn a_journal_that_cannot_write_refuses_new_payments() {
        let dir = scratch();
        let store = JournalStore::open(&settings(&dir)).unwrap();
        store.insert(payment("pay_ok")).unwrap();
        store.durable("pay_ok").await.unwrap();
        // What the writer does when a commit fails (disk full, I/O error).
        store.healthy.store(false, Ordering::Release);
        assert!(store.insert(payment("pay_refused")).is_err());
        assert!(
            store.get("pay_refused").is_none(),
            "a refused payment is not kept"
        );
        assert!(store.get("pay_ok").is_some());
    }
}
