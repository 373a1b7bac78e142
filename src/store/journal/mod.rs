//! The durable payment store: every payment and attempt in a journal, written by one
//! background thread in batched transactions (group commit), with the payments this replica
//! is moving kept in memory in front of it. Two backends hold the journal: an embedded SQLite
//! file (`sqlite.rs`, the default, one process) or PostgreSQL (`postgres.rs`, `[journal]
//! url`, shared by every replica of a cluster).
//!
//! The request path never waits on the database for writes: it hands records to the writer
//! and, with `sync = "batch"`, waits for the commit of the batch that holds the outcome
//! before the merchant is answered. The queue is bounded: when the journal falls behind (or
//! cannot write: disk full, PostgreSQL down), new payments are refused with 503 rather than
//! accepted without a record; records already queued are never dropped, the writer retries
//! them. Memory holds only payments still moving: once a payment's latest state is committed
//! the writer lets it go (a settled one at once; with a shared journal, an unsettled one too
//! once its call's window has passed, since another replica may then reconcile it), and
//! reads of it go to the journal, so memory does not grow with traffic. Card data never goes
//! beyond the masked form the `Payment` carries.
//!
//! This module owns the queue, the writer loop and the memory in front; the SQL is the
//! backends'. What a batch writes is gathered in `batch.rs`.

mod batch;
mod postgres;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use super::idempotency::{Begin, IdempotencyStore, Looking, Scope, StoredResponse};
use super::keys::{JournalKeys, Kept, KeyRecord};
use super::{Durable, MemoryStore, Payment, PaymentStore, StoreError, now_ms};
use crate::config::{Idempotency, Journal, JournalSync};
use batch::{Event, Rows, Write};

/// Records per transaction at most: large enough to amortise the commit, small enough that a
/// waiting merchant is not held long.
const MAX_BATCH: usize = 512;
/// Commits start at most this often: the cost of a commit (WAL frames, locks, a round trip)
/// is shared by every payment that arrives in the meantime, and a payment waits at most this
/// much longer.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_micros(1000);
/// Wait before retrying a batch that failed (disk full, I/O error, database down).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {at}: {reason}")]
    Open { at: String, reason: DbError },
}

/// What a backend could not do.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] ::postgres::Error),
    #[error("cannot use it as a journal: {0}")]
    Schema(String),
    #[error("cannot start a thread: {0}")]
    Thread(String),
    #[error("no connection to the database")]
    Disconnected,
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Read(String),
    #[error("a reader panicked")]
    Poisoned,
    #[error("cannot encode a payment: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The writer's side of a backend: commits one batch in one transaction; returns how many
/// expired idempotency records it deleted.
trait Writer: Send {
    fn commit(&mut self, rows: &Rows<'_>) -> Result<usize, DbError>;
}

/// A key's committed record, being read.
type KeyLookup = Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, DbError>> + Send>>;

/// The readers' side of a backend.
trait Reader: Send + Sync {
    /// A payment as the journal holds it.
    fn payment(&self, id: &str) -> Result<Option<Payment>, DbError>;
    /// The payments in doubt.
    fn in_doubt(&self) -> Result<Vec<Payment>, DbError>;
    /// A key's committed record (the future may not run on the caller's thread).
    fn look_up(&self, scope: &str) -> KeyLookup;
    /// Takes (or renews) the right to change `payment_id` for `for`: false while another
    /// replica holds it.
    fn lease(&self, payment_id: &str, r#for: Duration) -> Result<bool, DbError>;
    /// Gives up this replica's lease of `payment_id`.
    fn release(&self, payment_id: &str) -> Result<(), DbError>;
}

/// An open backend.
struct Backend {
    writer: Box<dyn Writer>,
    reader: Box<dyn Reader>,
    /// The idempotency records still valid (scope, expiry), for the key filter; empty for a
    /// shared journal, whose keys other replicas add.
    live_keys: Vec<(String, u64)>,
    /// Other processes write the same journal.
    shared: bool,
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
    reader: Box<dyn Reader>,
    /// Other replicas write the journal too (PostgreSQL): memory keeps only what this replica
    /// is moving.
    shared: bool,
    /// The file, or the database without credentials, for logs.
    location: String,
    /// The payments this replica holds the lease of, and how many of its uses hold it.
    held: Mutex<std::collections::HashMap<String, usize>>,
    /// The backend's helper threads stop once the store is gone.
    _alive: Arc<()>,
}

impl JournalStore {
    /// Opens (or creates) the journal and starts its writer. A file that is not a journal, or
    /// one another process holds, or a database that cannot be reached, is an error naming
    /// it: never a silent new journal.
    pub fn open(settings: &Journal) -> Result<Self, JournalError> {
        let alive = Arc::new(());
        let (location, backend) = match &settings.postgres {
            Some(pg) => (pg.location(), postgres::open(pg, Arc::downgrade(&alive))),
            None => (
                settings.path.display().to_string(),
                sqlite::open(&settings.path, Arc::downgrade(&alive)),
            ),
        };
        let fail = |reason: DbError| JournalError::Open {
            at: location.clone(),
            reason,
        };
        let Backend {
            writer,
            reader,
            live_keys,
            shared,
        } = backend.map_err(fail)?;
        let keys = Arc::new(if shared {
            JournalKeys::shared()
        } else {
            JournalKeys::new(live_keys)
        });
        let (sender, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let memory = Arc::new(MemoryStore::new());
        let state = WriterState {
            queued: queued.clone(),
            healthy: healthy.clone(),
            memory: memory.clone(),
            keys: keys.clone(),
            shared,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_forever(writer, receiver, state))
            .map_err(|e| fail(DbError::Thread(e.to_string())))?;
        Ok(Self {
            memory,
            keys,
            sender: Mutex::new(sender),
            queued,
            healthy,
            capacity: settings.queue,
            sync: settings.sync,
            reader,
            shared,
            location,
            held: Mutex::default(),
            _alive: alive,
        })
    }

    /// Where the journal is: the file, or the database (no credentials).
    pub fn location(&self) -> &str {
        &self.location
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

    /// The payment as the journal holds it; Err when the journal cannot be read now.
    fn read(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        self.reader.payment(id).map_err(|error| {
            tracing::error!(payment = id, %error, "cannot read the payment from the journal");
            StoreError::Unavailable(format!("cannot be read now ({error})"))
        })
    }

    /// With a shared journal, a copy in memory that is committed and no longer moving may be
    /// stale (another replica may have settled it): it is let go, and the journal answers.
    fn forget_if_stale(&self, id: &str) {
        if self.shared {
            let now = now_ms();
            self.memory.let_go_if(id, |p| !p.moving(now));
        }
    }
}

impl PaymentStore for JournalStore {
    fn insert(&self, payment: Payment) -> Result<(), StoreError> {
        self.health()?;
        let id = payment.id.clone();
        self.memory.insert(payment)?;
        self.journal(&id);
        Ok(())
    }

    fn health(&self) -> Result<(), StoreError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "cannot write (see the logs)".into(),
            ));
        }
        if self.queued.load(Ordering::Acquire) >= self.capacity {
            return Err(StoreError::Unavailable("is behind".into()));
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Option<Payment> {
        self.find(id).ok().flatten()
    }

    fn find(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        self.forget_if_stale(id);
        match self.memory.get(id) {
            Some(payment) => Ok(Some(payment)),
            None => self.read(id),
        }
    }

    fn update(&self, id: &str, change: &mut dyn FnMut(&mut Payment)) -> bool {
        self.forget_if_stale(id);
        // The writer may let the payment go from memory at any moment once its state is
        // committed; then it is read back from the journal and changed there. A few rounds
        // bound the (unlikely) case of it going again in between.
        for _ in 0..3 {
            if self.memory.update(id, change) {
                self.journal(id);
                return true;
            }
            match self.read(id) {
                Ok(Some(payment)) => self.memory.adopt(payment),
                Ok(None) | Err(_) => return false,
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
        let journaled = match self.reader.in_doubt() {
            Ok(journaled) => journaled,
            Err(error) => {
                tracing::warn!(%error, "cannot read the payments in doubt from the journal");
                return pending;
            }
        };
        let in_memory: std::collections::HashSet<String> =
            pending.iter().map(|p| p.id.clone()).collect();
        pending.extend(journaled.into_iter().filter(|p| !in_memory.contains(&p.id)));
        pending
    }

    /// The lease is taken or renewed, and counted, under one lock, so that a `let_go` of
    /// another use cannot release it in between.
    fn hold(&self, payment_id: &str, r#for: Duration) -> Result<bool, StoreError> {
        if !self.shared {
            return Ok(true);
        }
        let mut held = self
            .held
            .lock()
            .map_err(|_| StoreError::Unavailable("lease book poisoned".into()))?;
        let taken = self.reader.lease(payment_id, r#for).map_err(|error| {
            tracing::warn!(payment = payment_id, %error, "cannot take the payment's lease");
            StoreError::Unavailable(format!("cannot take the payment's lease: {error}"))
        })?;
        if taken {
            *held.entry(payment_id.to_string()).or_insert(0) += 1;
        }
        Ok(taken)
    }

    fn let_go(&self, payment_id: &str) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        let Some(uses) = held.get_mut(payment_id) else {
            return;
        };
        *uses -= 1;
        if *uses > 0 {
            return;
        }
        held.remove(payment_id);
        if let Err(error) = self.reader.release(payment_id) {
            tracing::warn!(payment = payment_id, %error, "cannot release the payment's lease; it expires");
        }
    }

    fn event(&self, kind: &str, channel: Option<&str>, detail: &str) {
        self.enqueue(Write::Event(Event {
            id: ulid::Ulid::generate().to_string(),
            at_ms: now_ms(),
            kind: kind.to_string(),
            channel: channel.map(str::to_string),
            detail: detail.to_string(),
        }));
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
        self.keys.begin(scope, request_hash, settings.max_keys)
    }

    fn look_up<'a>(&'a self, scope: &'a Scope, request_hash: [u8; 32]) -> Looking<'a> {
        let lookup = self.reader.look_up(scope.as_str());
        Box::pin(async move {
            let committed = lookup.await.map_err(|error| {
                tracing::error!(%error, "cannot read an idempotency record from the journal");
            });
            self.keys.settle(scope, request_hash, now_ms(), committed)
        })
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
        // Only a request without an answer to keep can free its key; the payment is read
        // (from the journal, once it has settled) only then.
        let keep = answer.is_none()
            && bound.as_deref().is_some_and(|target| {
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
        // A key bound to what it made is journaled as it stands since `bind`.
        self.enqueue(match bound {
            Some(_) => Write::KeyKept(scope.clone()),
            None => Write::Key(scope.clone(), record),
        });
        answered
    }

    fn flushed(&self) -> Durable {
        PaymentStore::durable(self, "")
    }

    fn shared(&self) -> bool {
        self.shared
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
struct WriterState {
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    memory: Arc<MemoryStore>,
    keys: Arc<JournalKeys>,
    shared: bool,
}

/// The writer: takes what is queued (up to a batch), commits it in one transaction, then
/// acknowledges the barriers. A failed commit is retried with the same batch until it
/// succeeds; meanwhile new payments are refused.
fn write_forever(mut writer: Box<dyn Writer>, receiver: mpsc::Receiver<Write>, state: WriterState) {
    let WriterState {
        queued,
        healthy,
        memory,
        keys,
        shared,
    } = state;
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
        let (written, swept) = loop {
            let rows = Rows::gather(&batch, &memory);
            let committed = writer.commit(&rows).map(|swept| (rows.written(), swept));
            match committed {
                Ok(committed) => {
                    healthy.store(true, Ordering::Release);
                    break committed;
                }
                Err(error) => {
                    if healthy.swap(false, Ordering::AcqRel) {
                        tracing::error!(%error, "journal commit failed; refusing new payments until it works again");
                    }
                    // Whoever waits for this batch, or for anything queued behind it, learns at
                    // once that it is not recorded (a payment waiting for its intent is then not
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
        let now = now_ms();
        for (id, version) in written {
            // A settled payment goes at once; with a shared journal an unsettled one too,
            // unless its call may still be on its way (only this replica may change it then).
            memory.journaled(&id, version, |p| {
                if shared {
                    !p.moving(now)
                } else {
                    !p.in_doubt()
                }
            });
        }
        for write in batch {
            match write {
                Write::Key(scope, _) | Write::KeyKept(scope) => keys.committed(&scope),
                Write::SweepKeys(now_ms) => keys.swept(swept, now_ms),
                Write::Barrier(ack) => {
                    let _ = ack.send(Ok(()));
                }
                Write::Payment(_) | Write::Event(_) | Write::FreeKey(_) => {}
            }
        }
    }
}

/// Answers every barrier of a batch that could not be committed, and keeps the rest.
fn fail_barriers(batch: Vec<Write>, error: &DbError) -> Vec<Write> {
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::store::{Attempt, FollowUp, FollowUpKind, MaskedCard, Outcome, PaymentStatus};

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
            postgres: None,
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
        let reader = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
        let attempts: i64 = reader
            .query_row(
                "SELECT COUNT(*) FROM attempts WHERE payment_id = 'pay_1' AND latency_ms = 42",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(attempts, 1);
    }

    /// A payment with every field set, nested parts included.
    fn full_payment(id: &str) -> Payment {
        let mut p = payment(id);
        p.status = PaymentStatus::Succeeded;
        p.reference = Some("order-7".into());
        p.channel = Some("b".into());
        p.psp_reference = Some("b-9".into());
        p.card = MaskedCard::from_number("4111111111111111");
        p.next_action =
            Some(serde_json::json!({"type": "redirect", "url": "https://acs.test/3ds"}));
        p.captured_amount = 1_999;
        p.refunded_amount = 500;
        p.capture = true;
        p.in_doubt_until_ms = Some(9_000);
        let attempt = |channel: &str, outcome, psp_code: Option<&str>| Attempt {
            channel: channel.into(),
            outcome,
            latency_ms: 12,
            psp_reference: Some(format!("{channel}-9")),
            decline_code: psp_code.map(|_| "do_not_honor".into()),
            psp_code: psp_code.map(str::to_string),
            at_ms: 3_000,
        };
        p.attempts = vec![
            attempt("a", Outcome::Declined, Some("05")),
            attempt("b", Outcome::Succeeded, None),
        ];
        p.operations = vec![FollowUp {
            id: "ref_1".into(),
            payment_id: id.into(),
            kind: FollowUpKind::Refund,
            status: PaymentStatus::Pending,
            amount: 500,
            channel: "b".into(),
            psp_reference: None,
            decline_code: None,
            in_doubt_until_ms: Some(8_000),
        }];
        p
    }

    fn as_json(payment: &Payment) -> serde_json::Value {
        serde_json::to_value(payment).unwrap()
    }

    #[tokio::test]
    async fn every_field_of_a_payment_is_read_back_as_written() {
        let dir = scratch();
        let store = JournalStore::open(&settings(&dir)).unwrap();
        let written = full_payment("pay_full");
        store.insert(written.clone()).unwrap();
        store.durable("pay_full").await.unwrap();
        drop(store);
        let reopened = JournalStore::open(&settings(&dir)).unwrap();
        let back = reopened.get("pay_full").expect("read from the journal");
        assert_eq!(as_json(&back), as_json(&written));
        let in_doubt: Vec<String> = reopened.pending().into_iter().map(|p| p.id).collect();
        assert_eq!(in_doubt, vec!["pay_full"], "its refund is pending");
    }

    #[tokio::test]
    async fn a_journal_of_the_json_form_is_upgraded_with_nothing_lost() {
        let dir = scratch();
        let path = dir.join("journal.db");
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(include_str!("v1.sql")).unwrap();
        let payments = [full_payment("pay_old1"), payment("pay_old2")];
        for p in &payments {
            old.execute(
                "INSERT INTO payments (id, merchant, amount, currency, method, status,
                    created_at_ms, updated_at_ms, record, in_doubt)
                 VALUES (?1, 'm', ?2, 'EUR', 'card', 'succeeded', ?3, 5000, ?4, ?5)",
                rusqlite::params![
                    p.id,
                    p.amount as i64,
                    p.created_at_ms as i64,
                    serde_json::to_string(p).unwrap(),
                    p.in_doubt()
                ],
            )
            .unwrap();
        }
        old.execute(
            "INSERT INTO attempts (payment_id, number, merchant, channel, outcome, latency_ms,
                amount, currency, method, failover, at_ms)
             VALUES ('pay_old1', 1, 'm', 'a', 'declined', 12, 1999, 'EUR', 'card', 0, 3000)",
            [],
        )
        .unwrap();
        drop(old);

        let store = JournalStore::open(&settings(&dir)).unwrap();
        for p in &payments {
            let back = store.get(&p.id).expect("kept by the upgrade");
            assert_eq!(as_json(&back), as_json(p));
        }
        let pending: Vec<String> = store.pending().into_iter().map(|p| p.id).collect();
        assert_eq!(pending, vec!["pay_old1", "pay_old2"]);
        drop(store);
        let reader = rusqlite::Connection::open(&path).unwrap();
        let count = |sql: &str| reader.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM attempts"), 2);
        assert_eq!(
            count("SELECT COUNT(*) FROM payments WHERE updated_at_ms = 5000"),
            2
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM pragma_table_info('payments') WHERE name = 'record'"),
            0
        );
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('payments_v1', 'attempts_v1', 'payments_pending', 'attempts_at')"
            ),
            0
        );
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN ('payments_created', 'payments_in_doubt') AND tbl_name = 'payments'"
            ),
            2
        );
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
        let reader = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
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
            tokio::time::sleep(sqlite::CHECKPOINT_EVERY).await;
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
