//! The shared journal: the same tables as the SQLite file, in one PostgreSQL schema that
//! every replica of a cluster writes. Owns the connections and the SQL; what is written when
//! is `mod.rs`'s.
//!
//! The writer commits a whole batch as one statement (each table's rows passed as arrays and
//! expanded with `UNNEST`), so a batch of hundreds of payments costs one round trip and one
//! commit. Reads go to a small pool of connections, each on its own thread
//! (the synchronous client must not run on the async runtime's threads); a caller waits at
//! most `timeout`, and every statement is bounded by the server's `statement_timeout`
//! too. A lost connection is opened again on the next use, so the journal recovers from a
//! PostgreSQL restart without one of paygate.
//!
//! Reconciliation leases live in `leases`: a replica asks a PSP about a payment only while it
//! holds the payment's lease, taken and checked on the database's own clock.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use postgres::{Client, Config, NoTls, Statement};
use tokio::sync::oneshot;

use super::batch::Rows;
use super::{Backend, DbError, KeyLookup, Reader, Writer};
use crate::config::Postgres as Settings;
use crate::store::idempotency::StoredResponse;
use crate::store::keys::{Kept, KeyRecord};
use crate::store::{Attempt, Payment};

const SCHEMA: &str = include_str!("../journal.pg.sql");
/// Any number, the same for every replica: creating the schema is serialised on it, so that
/// replicas starting together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x7061_7967_6174_6501;
/// Leases are deleted this long after they expired.
const LEASE_RETENTION_MS: i64 = 3_600_000;
/// At most this many expired records are deleted by one sweep, so that a sweep is one short
/// index range whatever the table holds; the next sweep deletes more.
const SWEEP_LIMIT: i64 = 10_000;
/// At most this many payments in doubt are read at a time, the oldest first.
const IN_DOUBT_LIMIT: i64 = 10_000;

/// Connects, creates the schema when missing, and starts the readers (which stop once
/// `alive` has no owner).
pub(super) fn open(settings: &Settings, alive: Weak<()>) -> Result<Backend, DbError> {
    let config = config(settings)?;
    // The synchronous client runs its own small runtime: it is opened off the caller's
    // thread, which may be one of the async runtime's.
    let writer = {
        let (config, settings) = (config.clone(), settings.clone());
        std::thread::spawn(move || -> Result<PgWriter, DbError> {
            let mut client = connect(&config, &settings)?;
            create_schema(&mut client, &settings.schema)?;
            PgWriter::new(client, config, settings)
        })
        .join()
        .map_err(|_| DbError::Poisoned)??
    };
    let readers = PgReaders::start(config, settings, alive)?;
    Ok(Backend {
        writer: Box::new(writer),
        reader: Box::new(readers),
        live_keys: Vec::new(),
        shared: true,
    })
}

fn config(settings: &Settings) -> Result<Config, DbError> {
    let mut config: Config = settings.url.parse()?;
    config
        .connect_timeout(settings.timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("paygate");
    Ok(config)
}

fn connect(config: &Config, settings: &Settings) -> Result<Client, DbError> {
    let mut client = config.connect(NoTls)?;
    // The schema name was checked to be [a-z0-9_]: safe to place in the statement.
    client.batch_execute(&format!(
        "SET search_path TO \"{}\"; SET statement_timeout = {}",
        settings.schema,
        settings.timeout.as_millis().max(1)
    ))?;
    Ok(client)
}

fn create_schema(client: &mut Client, schema: &str) -> Result<(), DbError> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; {SCHEMA}"
        ))
        .map_err(|e| DbError::Schema(e.to_string()))?;
    transaction.commit()?;
    Ok(())
}

/// One batch in one statement, so one round trip and one commit: each table's rows go as
/// arrays, expanded with `UNNEST`, in data-modifying CTEs (which PostgreSQL runs as one
/// atomic statement). A batch never changes one row twice: it holds each payment once and
/// each key's last change only (`batch.rs`).
const BATCH: &str = "
WITH payment_rows AS (
    INSERT INTO payments (id, merchant, amount, currency, method, country, status, channel,
        psp_reference, decline_code, card_bin, card_last4, captured_amount, refunded_amount,
        reconciled, created_at_ms, updated_at_ms, record, in_doubt)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::int8[], $14::int8[], $15::bool[], $16::int8[], $17::int8[], $18::text[], $19::bool[])
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, channel = excluded.channel,
        psp_reference = excluded.psp_reference, decline_code = excluded.decline_code,
        captured_amount = excluded.captured_amount, refunded_amount = excluded.refunded_amount,
        reconciled = excluded.reconciled, updated_at_ms = excluded.updated_at_ms,
        record = excluded.record, in_doubt = excluded.in_doubt
    RETURNING 1
), attempt_rows AS (
    INSERT INTO attempts (payment_id, number, merchant, channel, outcome, decline_code,
        latency_ms, amount, currency, method, country, failover, at_ms)
    SELECT * FROM UNNEST($20::text[], $21::int8[], $22::text[], $23::text[], $24::text[],
        $25::text[], $26::int8[], $27::int8[], $28::text[], $29::text[], $30::text[],
        $31::bool[], $32::int8[])
    ON CONFLICT DO NOTHING
    RETURNING 1
), event_rows AS (
    INSERT INTO events (at_ms, kind, channel, detail, id)
    SELECT * FROM UNNEST($33::int8[], $34::text[], $35::text[], $36::text[], $44::text[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
), key_rows AS (
    -- A freed key (expiry 0: gone for every lookup, deleted by the next sweep) replaces only
    -- a record that names what it made and was never answered: the request in flight that
    -- made a payment which surely failed. An update rather than a DELETE, so that the
    -- statement has one plan whatever the tables hold: a DELETE by key may be planned as a
    -- scan of the whole table once and kept so.
    INSERT INTO idempotency (scope, request_hash, status, body, channel, expires_at_ms, target)
    SELECT * FROM UNNEST($37::text[], $38::bytea[], $39::int4[], $40::bytea[], $41::text[],
        $42::int8[], $43::text[])
    ON CONFLICT (scope) DO UPDATE SET request_hash = excluded.request_hash,
        status = excluded.status, body = excluded.body, channel = excluded.channel,
        expires_at_ms = excluded.expires_at_ms, target = excluded.target
    WHERE excluded.expires_at_ms > 0 OR idempotency.target IS NOT NULL
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM payment_rows) + (SELECT COUNT(*) FROM attempt_rows)
     + (SELECT COUNT(*) FROM event_rows) + (SELECT COUNT(*) FROM key_rows)";

/// The sweeps, bounded and in index order. Sent as text, so planned for the table as it is
/// at each sweep.
const SWEEP_KEYS: &str = "DELETE FROM idempotency WHERE scope IN (SELECT scope FROM idempotency
    WHERE expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2)";
const SWEEP_LEASES: &str = "DELETE FROM leases WHERE until_ms <= $1";

struct PgWriter {
    /// With the prepared batch; None after the connection was lost: opened again by the
    /// next commit.
    client: Option<(Client, Statement)>,
    config: Config,
    settings: Settings,
}

impl PgWriter {
    fn new(mut client: Client, config: Config, settings: Settings) -> Result<Self, DbError> {
        let batch = client.prepare(BATCH)?;
        Ok(Self {
            client: Some((client, batch)),
            config,
            settings,
        })
    }

    fn connected(&mut self) -> Result<&mut (Client, Statement), DbError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = connect(&self.config, &self.settings)?;
            let batch = client.prepare(BATCH)?;
            self.client = Some((client, batch));
        }
        self.client.as_mut().ok_or(DbError::Disconnected)
    }
}

impl Writer for PgWriter {
    fn commit(&mut self, rows: &Rows<'_>) -> Result<usize, DbError> {
        let (client, batch) = self.connected()?;
        // The sweep first, on its own: if the batch then fails it is retried whole, and a
        // sweep done twice is harmless (events written twice would not be).
        let mut swept = 0;
        if let Some(before) = rows.sweep_before_ms {
            let before = before as i64;
            swept = client.execute(SWEEP_KEYS, &[&before, &SWEEP_LIMIT])? as usize;
            let expired = before - LEASE_RETENTION_MS;
            client.execute(SWEEP_LEASES, &[&expired])?;
        }
        let payments = PaymentColumns::of(rows)?;
        let attempts = AttemptColumns::of(rows);
        let events = EventColumns::of(rows);
        let keys = KeyColumns::of(rows);
        let mut params = payments.params();
        params.extend(attempts.params());
        params.extend(events.params());
        params.extend(keys.params());
        params.push(&events.ids);
        client.query_one(&*batch, &params)?;
        Ok(swept)
    }
}

type Param<'a> = &'a (dyn postgres::types::ToSql + Sync);

struct PaymentColumns<'a> {
    ids: Vec<&'a str>,
    merchants: Vec<&'a str>,
    amounts: Vec<i64>,
    currencies: Vec<&'a str>,
    methods: Vec<&'a str>,
    countries: Vec<Option<&'a str>>,
    statuses: Vec<&'static str>,
    channels: Vec<Option<&'a str>>,
    references: Vec<Option<&'a str>>,
    declines: Vec<Option<&'a str>>,
    bins: Vec<Option<&'a str>>,
    last4s: Vec<Option<&'a str>>,
    captured: Vec<i64>,
    refunded: Vec<i64>,
    reconciled: Vec<bool>,
    created: Vec<i64>,
    updated: Vec<i64>,
    /// The whole payment as JSON (masked card at most): what a read gives back.
    records: Vec<String>,
    in_doubt: Vec<bool>,
}

impl<'a> PaymentColumns<'a> {
    fn of(rows: &'a Rows<'_>) -> Result<Self, DbError> {
        let now = crate::store::now_ms() as i64;
        let p = || rows.payments.iter().map(|row| &row.payment);
        Ok(Self {
            ids: p().map(|p| p.id.as_str()).collect(),
            merchants: p().map(|p| p.merchant.as_str()).collect(),
            amounts: p().map(|p| p.amount as i64).collect(),
            currencies: p().map(|p| p.currency.as_str()).collect(),
            methods: p().map(|p| p.method.as_str()).collect(),
            countries: p().map(|p| p.country.as_deref()).collect(),
            statuses: p().map(|p| p.status.as_str()).collect(),
            channels: p().map(|p| p.channel.as_deref()).collect(),
            references: p().map(|p| p.psp_reference.as_deref()).collect(),
            declines: p().map(|p| p.decline_code.as_deref()).collect(),
            bins: p()
                .map(|p| p.card.as_ref().map(|c| c.bin.as_str()))
                .collect(),
            last4s: p()
                .map(|p| p.card.as_ref().map(|c| c.last4.as_str()))
                .collect(),
            captured: p().map(|p| p.captured_amount as i64).collect(),
            refunded: p().map(|p| p.refunded_amount as i64).collect(),
            reconciled: p().map(|p| p.reconciled).collect(),
            created: p().map(|p| p.created_at_ms as i64).collect(),
            updated: vec![now; rows.payments.len()],
            records: p().map(serde_json::to_string).collect::<Result<_, _>>()?,
            in_doubt: p().map(|p| p.in_doubt()).collect(),
        })
    }

    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.ids,
            &self.merchants,
            &self.amounts,
            &self.currencies,
            &self.methods,
            &self.countries,
            &self.statuses,
            &self.channels,
            &self.references,
            &self.declines,
            &self.bins,
            &self.last4s,
            &self.captured,
            &self.refunded,
            &self.reconciled,
            &self.created,
            &self.updated,
            &self.records,
            &self.in_doubt,
        ]
    }
}

/// Every attempt of the batch's payments (the journal keeps those it has already).
struct AttemptColumns<'a> {
    ids: Vec<&'a str>,
    numbers: Vec<i64>,
    merchants: Vec<&'a str>,
    channels: Vec<&'a str>,
    outcomes: Vec<&'static str>,
    declines: Vec<Option<&'a str>>,
    latencies: Vec<i64>,
    amounts: Vec<i64>,
    currencies: Vec<&'a str>,
    methods: Vec<&'a str>,
    countries: Vec<Option<&'a str>>,
    failovers: Vec<bool>,
    at: Vec<i64>,
}

impl<'a> AttemptColumns<'a> {
    fn of(rows: &'a Rows<'_>) -> Self {
        let all: Vec<(&Payment, usize, &Attempt)> = rows
            .payments
            .iter()
            .flat_map(|row| {
                let p = &row.payment;
                p.attempts.iter().enumerate().map(move |(i, a)| (p, i, a))
            })
            .collect();
        let a = || all.iter();
        Self {
            ids: a().map(|(p, _, _)| p.id.as_str()).collect(),
            numbers: a().map(|(_, i, _)| *i as i64 + 1).collect(),
            merchants: a().map(|(p, _, _)| p.merchant.as_str()).collect(),
            channels: a().map(|(_, _, at)| at.channel.as_str()).collect(),
            outcomes: a().map(|(_, _, at)| at.outcome.as_str()).collect(),
            declines: a().map(|(_, _, at)| at.decline_code.as_deref()).collect(),
            latencies: a().map(|(_, _, at)| at.latency_ms as i64).collect(),
            amounts: a().map(|(p, _, _)| p.amount as i64).collect(),
            currencies: a().map(|(p, _, _)| p.currency.as_str()).collect(),
            methods: a().map(|(p, _, _)| p.method.as_str()).collect(),
            countries: a().map(|(p, _, _)| p.country.as_deref()).collect(),
            failovers: a().map(|(_, i, _)| *i > 0).collect(),
            at: a().map(|(_, _, at)| at.at_ms as i64).collect(),
        }
    }

    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.ids,
            &self.numbers,
            &self.merchants,
            &self.channels,
            &self.outcomes,
            &self.declines,
            &self.latencies,
            &self.amounts,
            &self.currencies,
            &self.methods,
            &self.countries,
            &self.failovers,
            &self.at,
        ]
    }
}

struct EventColumns<'a> {
    at: Vec<i64>,
    kinds: Vec<&'a str>,
    channels: Vec<Option<&'a str>>,
    details: Vec<&'a str>,
    /// Passed last (`$44`): the column came after the others.
    ids: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn of(rows: &'a Rows<'_>) -> Self {
        let e = || rows.events.iter();
        Self {
            at: e().map(|e| e.at_ms as i64).collect(),
            kinds: e().map(|e| e.kind.as_str()).collect(),
            channels: e().map(|e| e.channel.as_deref()).collect(),
            details: e().map(|e| e.detail.as_str()).collect(),
            ids: e().map(|e| e.id.as_str()).collect(),
        }
    }

    fn params(&self) -> Vec<Param<'_>> {
        vec![&self.at, &self.kinds, &self.channels, &self.details]
    }
}

/// The keys kept (a record each) and the keys freed (an empty record, expired).
struct KeyColumns<'a> {
    scopes: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    statuses: Vec<i32>,
    bodies: Vec<&'a [u8]>,
    channels: Vec<Option<&'a str>>,
    expiries: Vec<i64>,
    targets: Vec<Option<&'a str>>,
}

impl<'a> KeyColumns<'a> {
    fn of(rows: &'a Rows<'_>) -> Self {
        let n = rows.keys.len();
        let mut columns = Self {
            scopes: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            channels: Vec::with_capacity(n),
            expiries: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
        };
        for (scope, change) in &rows.keys {
            // A freed key is an empty record that has expired.
            let (hash, expiry, kept) = match change {
                Some(record) => (
                    &record.request_hash[..],
                    record.expires_at_ms,
                    Some(&record.kept),
                ),
                None => (&[][..], 0, None),
            };
            let (answer, target) = match kept {
                Some(Kept::Answer(answer)) => (Some(answer), None),
                Some(Kept::Made(target)) => (None, Some(target.as_str())),
                None => (None, None),
            };
            columns.scopes.push(scope.as_str());
            columns.hashes.push(hash);
            columns
                .statuses
                .push(answer.map_or(0, |a| i32::from(a.status)));
            columns.bodies.push(answer.map_or(&[][..], |a| &a.body[..]));
            columns
                .channels
                .push(answer.and_then(|a| a.channel.as_deref()));
            columns.expiries.push(expiry as i64);
            columns.targets.push(target);
        }
        columns
    }

    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.scopes,
            &self.hashes,
            &self.statuses,
            &self.bodies,
            &self.channels,
            &self.expiries,
            &self.targets,
        ]
    }
}

/// A reader's connection and its statements, prepared once per connection (a statement
/// given as text would cost a round trip more on every read).
struct ReaderConnection {
    client: Client,
    record: Statement,
    in_doubt: Statement,
    lease: Statement,
    release: Statement,
}

/// A reader's connection. Each read is planned for the table as it is now: a plan cached
/// while the table was nearly empty would scan all of it once it is not (only an ANALYZE
/// makes PostgreSQL plan again). No bitmap scans: the reads here are by key or in index
/// order, and only a plain index scan marks the entries of rows updated since as dead, so
/// that the next scan skips them (a bitmap scan of the payments in doubt would visit every
/// payment once in doubt, until a VACUUM).
fn connect_reader(config: &Config, settings: &Settings) -> Result<Client, DbError> {
    let mut client = connect(config, settings)?;
    client.batch_execute("SET plan_cache_mode = force_custom_plan; SET enable_bitmapscan = off")?;
    Ok(client)
}

impl ReaderConnection {
    fn open(config: &Config, settings: &Settings) -> Result<Self, DbError> {
        let mut client = connect_reader(config, settings)?;
        Ok(Self {
            record: client.prepare("SELECT record FROM payments WHERE id = $1")?,
            in_doubt: client.prepare(
                "SELECT record FROM payments WHERE in_doubt ORDER BY created_at_ms LIMIT $1",
            )?,
            // Taken, or kept by its owner (never shortened: another use of this replica may
            // need it longer), or taken over once expired; on the database's clock.
            lease: client.prepare(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS ms)
                 INSERT INTO leases (payment_id, owner, until_ms)
                 SELECT $1, $2, now.ms + $3 FROM now
                 ON CONFLICT (payment_id) DO UPDATE SET owner = excluded.owner,
                    until_ms = CASE WHEN leases.owner = excluded.owner
                        THEN GREATEST(leases.until_ms, excluded.until_ms)
                        ELSE excluded.until_ms END
                 WHERE leases.owner = excluded.owner
                    OR leases.until_ms <= (SELECT ms FROM now)
                 RETURNING owner",
            )?,
            release: client.prepare("DELETE FROM leases WHERE payment_id = $1 AND owner = $2")?,
            client,
        })
    }
}

/// A read, run on a reader's thread with its connection (None while it cannot connect).
type Job = Box<dyn FnOnce(Option<&mut ReaderConnection>) + Send>;

/// Reader threads, each with its own connection, taking jobs from one queue; and the
/// key lookups' thread.
struct PgReaders {
    jobs: Mutex<mpsc::Sender<Job>>,
    lookups: mpsc::Sender<Lookup>,
    timeout: Duration,
}

impl PgReaders {
    fn start(config: Config, settings: &Settings, alive: Weak<()>) -> Result<Self, DbError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..settings.readers {
            let (config, settings) = (config.clone(), settings.clone());
            let (receiver, alive) = (receiver.clone(), alive.clone());
            std::thread::Builder::new()
                .name(format!("journal-reader-{n}"))
                .spawn(move || read_forever(&config, &settings, &receiver, &alive))
                .map_err(|e| DbError::Thread(e.to_string()))?;
        }
        let (lookups, asked) = mpsc::channel::<Lookup>();
        let timeout = settings.timeout;
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("journal-keys".into())
            .spawn(move || look_up_forever(&config, &settings, &asked, &alive))
            .map_err(|e| DbError::Thread(e.to_string()))?;
        Ok(Self {
            jobs: Mutex::new(sender),
            lookups,
            timeout,
        })
    }

    /// Runs `read` on a reader and waits for its answer, `timeout` at most.
    fn ask<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut ReaderConnection) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        let (reply, answer): (SyncSender<Result<T, DbError>>, Receiver<_>) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |connection| {
            let result = match connection {
                Some(connection) => read(connection).map_err(DbError::from),
                None => Err(DbError::Disconnected),
            };
            let _ = reply.send(result);
        });
        self.jobs
            .lock()
            .map_err(|_| DbError::Poisoned)?
            .send(job)
            .map_err(|_| DbError::Disconnected)?;
        let wait = || answer.recv_timeout(self.timeout);
        // On the async runtime's worker threads, let the runtime move other tasks off this
        // thread while it waits.
        let waited = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        waited.map_err(|_| DbError::Timeout(self.timeout))?
    }
}

fn read_forever(
    config: &Config,
    settings: &Settings,
    jobs: &Mutex<Receiver<Job>>,
    alive: &Weak<()>,
) {
    let mut connection: Option<ReaderConnection> = None;
    while alive.strong_count() > 0 {
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv_timeout(Duration::from_secs(1)),
            Err(_) => return,
        };
        let job = match job {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            connection = match ReaderConnection::open(config, settings) {
                Ok(connection) => Some(connection),
                Err(error) => {
                    tracing::warn!(%error, "journal reader cannot connect");
                    None
                }
            };
        }
        job(connection.as_mut());
    }
}

impl Reader for PgReaders {
    fn payment(&self, id: &str) -> Result<Option<Payment>, DbError> {
        let id = id.to_string();
        let record: Option<String> = self.ask(move |c| {
            let row = c.client.query_opt(&c.record, &[&id])?;
            Ok(row.map(|row| row.get(0)))
        })?;
        record.as_deref().map(decode).transpose()
    }

    fn in_doubt(&self) -> Result<Vec<Payment>, DbError> {
        let records: Vec<String> = self.ask(|c| {
            let rows = c.client.query(&c.in_doubt, &[&IN_DOUBT_LIMIT])?;
            Ok(rows.into_iter().map(|row| row.get(0)).collect())
        })?;
        records.iter().map(|record| decode(record)).collect()
    }

    fn look_up(&self, scope: &str) -> KeyLookup {
        let (reply, answer) = oneshot::channel();
        let queued = self.lookups.send((scope.to_string(), reply));
        let timeout = self.timeout;
        Box::pin(async move {
            queued.map_err(|_| DbError::Disconnected)?;
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(found)) => found,
                Ok(Err(_)) => Err(DbError::Disconnected),
                Err(_) => Err(DbError::Timeout(timeout)),
            }
        })
    }

    fn lease(&self, payment_id: &str, r#for: Duration) -> Result<bool, DbError> {
        let (id, owner) = (payment_id.to_string(), replica_id().to_string());
        let for_ms = r#for.as_millis() as i64;
        self.ask(move |c| {
            Ok(c.client
                .query_opt(&c.lease, &[&id, &owner, &for_ms])?
                .is_some())
        })
    }

    fn release(&self, payment_id: &str) -> Result<(), DbError> {
        let (id, owner) = (payment_id.to_string(), replica_id().to_string());
        self.ask(move |c| c.client.execute(&c.release, &[&id, &owner]).map(|_| ()))
    }
}

/// A key to look up, and where its answer goes.
type Lookup = (String, oneshot::Sender<Result<Option<KeyRecord>, DbError>>);

/// At most this many keys are looked up by one statement.
const LOOKUP_BATCH: usize = 256;

/// Looks keys up for every request of this replica, as the writer commits: whatever has
/// been asked while the last lookup ran goes in the next, one statement and one round trip
/// however many keys it holds.
fn look_up_forever(
    config: &Config,
    settings: &Settings,
    asked: &Receiver<Lookup>,
    alive: &Weak<()>,
) {
    let mut connection: Option<(Client, Statement)> = None;
    while alive.strong_count() > 0 {
        let first = match asked.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < LOOKUP_BATCH {
            match asked.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            connection = connect_reader(config, settings)
                .and_then(|mut client| {
                    let statement = client.prepare(
                        "SELECT scope, request_hash, status, body, channel, expires_at_ms, target
                         FROM idempotency WHERE scope = ANY($1)",
                    )?;
                    Ok((client, statement))
                })
                .inspect_err(|error| tracing::warn!(%error, "journal key lookups cannot connect"))
                .ok();
        }
        let Some((client, statement)) = connection.as_mut() else {
            for (_, reply) in batch {
                let _ = reply.send(Err(DbError::Disconnected));
            }
            continue;
        };
        let scopes: Vec<&str> = batch.iter().map(|(scope, _)| scope.as_str()).collect();
        match client.query(&*statement, &[&scopes]) {
            Ok(rows) => {
                let found: std::collections::HashMap<String, KeyRecord> = rows
                    .iter()
                    .map(|row| (row.get(0), key_record(row)))
                    .collect();
                for (scope, reply) in batch {
                    let _ = reply.send(Ok(found.get(&scope).cloned()));
                }
            }
            Err(error) => {
                let error = error.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(DbError::Read(error.clone())));
                }
            }
        }
    }
}

/// A payment from its stored record.
fn decode(record: &str) -> Result<Payment, DbError> {
    serde_json::from_str(record)
        .map_err(|e| DbError::Read(format!("a payment record is not one: {e}")))
}

/// A key's record from its row (scope, request_hash, status, body, channel, expires_at_ms,
/// target).
fn key_record(row: &postgres::Row) -> KeyRecord {
    let hash: Vec<u8> = row.get(1);
    let kept = match row.get::<_, Option<String>>(6) {
        Some(target) => Kept::Made(target),
        None => Kept::Answer(StoredResponse {
            status: u16::try_from(row.get::<_, i32>(2)).unwrap_or(500),
            body: row.get::<_, Vec<u8>>(3).into(),
            channel: row.get(4),
        }),
    };
    KeyRecord {
        request_hash: hash.try_into().unwrap_or([0; 32]),
        kept,
        expires_at_ms: row.get::<_, i64>(5) as u64,
    }
}

/// This process's name in `leases`: host and process id, plus a random part so that a
/// restarted process with the same id is another owner.
fn replica_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::batch::{Event, Write};
    use super::*;
    use crate::store::MemoryStore;

    /// The machine's PostgreSQL (trust auth), in a schema of the test's own.
    fn settings() -> Settings {
        let up = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
            Duration::from_secs(1),
        )
        .is_ok();
        assert!(
            up,
            "PostgreSQL is not running on 127.0.0.1:5432: .ci/run starts it"
        );
        Settings {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            schema: format!("unit_{}_{}", std::process::id(), crate::store::now_ms()),
            readers: 1,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_batch_written_again_after_a_lost_commit_answer_adds_its_events_once() {
        let settings = settings();
        let config = config(&settings).unwrap();
        let mut client = connect(&config, &settings).unwrap();
        create_schema(&mut client, &settings.schema).unwrap();
        let mut writer = PgWriter::new(client, config.clone(), settings.clone()).unwrap();
        let batch = [Write::Event(Event {
            id: "01JEVENT".into(),
            at_ms: 1,
            kind: "drain".into(),
            channel: Some("a".into()),
            detail: "by an operator".into(),
        })];
        let memory = MemoryStore::new();
        let rows = Rows::gather(&batch, &memory);
        writer.commit(&rows).unwrap();
        // The writer retries a batch whose commit it cannot confirm: the same rows again.
        writer.commit(&rows).unwrap();
        let mut check = connect(&config, &settings).unwrap();
        let events: i64 = check
            .query_one("SELECT COUNT(*) FROM events", &[])
            .unwrap()
            .get(0);
        check
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", settings.schema))
            .unwrap();
        assert_eq!(events, 1);
    }
}
