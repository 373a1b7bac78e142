//! The shared journal: the same tables as the SQLite file, in one PostgreSQL schema that
//! every replica of a cluster writes. Owns the connections and the SQL; what is written when
//! is `mod.rs`'s.
//!
//! The writer commits a whole batch in one transaction with one statement per table (rows
//! passed as arrays and expanded with `UNNEST`), so a batch of hundreds of payments costs a
//! handful of round trips. Reads go to a small pool of connections, each on its own thread
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

use super::batch::{Rows, status_text};
use super::{Backend, DbError, Reader, Writer};
use crate::config::Postgres as Settings;
use crate::store::idempotency::StoredResponse;
use crate::store::keys::{Kept, KeyRecord};

const SCHEMA: &str = include_str!("../journal.pg.sql");
/// Any number, the same for every replica: creating the schema is serialised on it, so that
/// replicas starting together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x7061_7967_6174_6501;
/// Leases are deleted this long after they expired.
const LEASE_RETENTION_MS: i64 = 3_600_000;

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

struct Statements {
    payments: Statement,
    attempts: Statement,
    events: Statement,
    keys: Statement,
    free_keys: Statement,
    sweep_keys: Statement,
    sweep_leases: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Self, DbError> {
        Ok(Self {
            payments: client.prepare(
                "INSERT INTO payments (id, merchant, amount, currency, method, country, status,
                    channel, psp_reference, decline_code, card_bin, card_last4, captured_amount,
                    refunded_amount, reconciled, created_at_ms, updated_at_ms, record, in_doubt)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::text[], $13::int8[], $14::int8[], $15::bool[], $16::int8[], $17::int8[],
                    $18::text[], $19::bool[])
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, channel = excluded.channel,
                    psp_reference = excluded.psp_reference, decline_code = excluded.decline_code,
                    captured_amount = excluded.captured_amount,
                    refunded_amount = excluded.refunded_amount, reconciled = excluded.reconciled,
                    updated_at_ms = excluded.updated_at_ms, record = excluded.record,
                    in_doubt = excluded.in_doubt",
            )?,
            attempts: client.prepare(
                "INSERT INTO attempts (payment_id, number, merchant, channel, outcome, decline_code,
                    latency_ms, amount, currency, method, country, failover, at_ms)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                    $6::text[], $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[],
                    $12::bool[], $13::int8[])
                 ON CONFLICT DO NOTHING",
            )?,
            events: client.prepare(
                "INSERT INTO events (at_ms, kind, channel, detail)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[])",
            )?,
            keys: client.prepare(
                "INSERT INTO idempotency (scope, request_hash, status, body, channel,
                    expires_at_ms, target)
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::int4[], $4::bytea[],
                    $5::text[], $6::int8[], $7::text[])
                 ON CONFLICT (scope) DO UPDATE SET request_hash = excluded.request_hash,
                    status = excluded.status, body = excluded.body, channel = excluded.channel,
                    expires_at_ms = excluded.expires_at_ms, target = excluded.target",
            )?,
            // Only a record that names what it made and was never answered is freed: the
            // request in flight that made a payment which surely failed.
            free_keys: client.prepare(
                "DELETE FROM idempotency WHERE scope = ANY($1::text[]) AND target IS NOT NULL",
            )?,
            sweep_keys: client.prepare("DELETE FROM idempotency WHERE expires_at_ms <= $1")?,
            sweep_leases: client.prepare("DELETE FROM leases WHERE until_ms <= $1")?,
        })
    }
}

struct PgWriter {
    /// None after the connection was lost: opened again by the next commit.
    client: Option<(Client, Statements)>,
    config: Config,
    settings: Settings,
}

impl PgWriter {
    fn new(mut client: Client, config: Config, settings: Settings) -> Result<Self, DbError> {
        let statements = Statements::prepare(&mut client)?;
        Ok(Self {
            client: Some((client, statements)),
            config,
            settings,
        })
    }

    fn connected(&mut self) -> Result<&mut (Client, Statements), DbError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = connect(&self.config, &self.settings)?;
            let statements = Statements::prepare(&mut client)?;
            self.client = Some((client, statements));
        }
        self.client.as_mut().ok_or(DbError::Disconnected)
    }
}

impl Writer for PgWriter {
    fn commit(&mut self, rows: &Rows<'_>) -> Result<usize, DbError> {
        let (client, statements) = self.connected()?;
        let mut transaction = client.transaction()?;
        if !rows.payments.is_empty() {
            let now = crate::store::now_ms() as i64;
            let p = || rows.payments.iter().map(|row| &row.payment);
            let ids: Vec<&str> = p().map(|p| p.id.as_str()).collect();
            let merchants: Vec<&str> = p().map(|p| p.merchant.as_str()).collect();
            let amounts: Vec<i64> = p().map(|p| p.amount as i64).collect();
            let currencies: Vec<&str> = p().map(|p| p.currency.as_str()).collect();
            let methods: Vec<&str> = p().map(|p| p.method.as_str()).collect();
            let countries: Vec<Option<&str>> = p().map(|p| p.country.as_deref()).collect();
            let statuses: Vec<&str> = p().map(|p| status_text(p.status)).collect();
            let channels: Vec<Option<&str>> = p().map(|p| p.channel.as_deref()).collect();
            let references: Vec<Option<&str>> = p().map(|p| p.psp_reference.as_deref()).collect();
            let declines: Vec<Option<&str>> = p().map(|p| p.decline_code.as_deref()).collect();
            let bins: Vec<Option<&str>> = p()
                .map(|p| p.card.as_ref().map(|c| c.bin.as_str()))
                .collect();
            let last4s: Vec<Option<&str>> = p()
                .map(|p| p.card.as_ref().map(|c| c.last4.as_str()))
                .collect();
            let captured: Vec<i64> = p().map(|p| p.captured_amount as i64).collect();
            let refunded: Vec<i64> = p().map(|p| p.refunded_amount as i64).collect();
            let reconciled: Vec<bool> = p().map(|p| p.reconciled).collect();
            let created: Vec<i64> = p().map(|p| p.created_at_ms as i64).collect();
            let updated: Vec<i64> = vec![now; ids.len()];
            let records: Vec<&str> = rows.payments.iter().map(|r| r.record.as_str()).collect();
            let in_doubt: Vec<bool> = p().map(|p| p.in_doubt()).collect();
            transaction.execute(
                &statements.payments,
                &[
                    &ids,
                    &merchants,
                    &amounts,
                    &currencies,
                    &methods,
                    &countries,
                    &statuses,
                    &channels,
                    &references,
                    &declines,
                    &bins,
                    &last4s,
                    &captured,
                    &refunded,
                    &reconciled,
                    &created,
                    &updated,
                    &records,
                    &in_doubt,
                ],
            )?;
            write_attempts(&mut transaction, &statements.attempts, rows)?;
        }
        if !rows.events.is_empty() {
            let at: Vec<i64> = rows.events.iter().map(|e| e.at_ms as i64).collect();
            let kinds: Vec<&str> = rows.events.iter().map(|e| e.kind.as_str()).collect();
            let channels: Vec<Option<&str>> =
                rows.events.iter().map(|e| e.channel.as_deref()).collect();
            let details: Vec<&str> = rows.events.iter().map(|e| e.detail.as_str()).collect();
            transaction.execute(&statements.events, &[&at, &kinds, &channels, &details])?;
        }
        write_keys(&mut transaction, statements, rows)?;
        let mut swept = 0;
        if let Some(before) = rows.sweep_before_ms {
            let before = before as i64;
            swept = transaction.execute(&statements.sweep_keys, &[&before])? as usize;
            let expired = before - LEASE_RETENTION_MS;
            transaction.execute(&statements.sweep_leases, &[&expired])?;
        }
        transaction.commit()?;
        Ok(swept)
    }
}

fn write_attempts(
    transaction: &mut postgres::Transaction<'_>,
    statement: &Statement,
    rows: &Rows<'_>,
) -> Result<(), DbError> {
    let attempts: Vec<(&crate::store::Payment, usize, &crate::store::Attempt)> = rows
        .payments
        .iter()
        .flat_map(|row| {
            let p = &row.payment;
            p.attempts.iter().enumerate().map(move |(i, a)| (p, i, a))
        })
        .collect();
    if attempts.is_empty() {
        return Ok(());
    }
    let a = || attempts.iter();
    let ids: Vec<&str> = a().map(|(p, _, _)| p.id.as_str()).collect();
    let numbers: Vec<i64> = a().map(|(_, i, _)| *i as i64 + 1).collect();
    let merchants: Vec<&str> = a().map(|(p, _, _)| p.merchant.as_str()).collect();
    let channels: Vec<&str> = a().map(|(_, _, at)| at.channel.as_str()).collect();
    let outcomes: Vec<&str> = a().map(|(_, _, at)| at.outcome.as_str()).collect();
    let declines: Vec<Option<&str>> = a().map(|(_, _, at)| at.decline_code.as_deref()).collect();
    let latencies: Vec<i64> = a().map(|(_, _, at)| at.latency_ms as i64).collect();
    let amounts: Vec<i64> = a().map(|(p, _, _)| p.amount as i64).collect();
    let currencies: Vec<&str> = a().map(|(p, _, _)| p.currency.as_str()).collect();
    let methods: Vec<&str> = a().map(|(p, _, _)| p.method.as_str()).collect();
    let countries: Vec<Option<&str>> = a().map(|(p, _, _)| p.country.as_deref()).collect();
    let failovers: Vec<bool> = a().map(|(_, i, _)| *i > 0).collect();
    let at: Vec<i64> = a().map(|(_, _, at)| at.at_ms as i64).collect();
    transaction.execute(
        statement,
        &[
            &ids,
            &numbers,
            &merchants,
            &channels,
            &outcomes,
            &declines,
            &latencies,
            &amounts,
            &currencies,
            &methods,
            &countries,
            &failovers,
            &at,
        ],
    )?;
    Ok(())
}

fn write_keys(
    transaction: &mut postgres::Transaction<'_>,
    statements: &Statements,
    rows: &Rows<'_>,
) -> Result<(), DbError> {
    let freed: Vec<&str> = rows
        .keys
        .iter()
        .filter(|(_, change)| change.is_none())
        .map(|(scope, _)| scope.as_str())
        .collect();
    if !freed.is_empty() {
        transaction.execute(&statements.free_keys, &[&freed])?;
    }
    let kept: Vec<(&str, &KeyRecord)> = rows
        .keys
        .iter()
        .filter_map(|(scope, change)| change.map(|record| (scope.as_str(), record)))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    fn answer(record: &KeyRecord) -> Option<&StoredResponse> {
        match &record.kept {
            Kept::Answer(answer) => Some(answer),
            Kept::Made(_) => None,
        }
    }
    let scopes: Vec<&str> = kept.iter().map(|(scope, _)| *scope).collect();
    let hashes: Vec<&[u8]> = kept.iter().map(|(_, r)| &r.request_hash[..]).collect();
    let statuses: Vec<i32> = kept
        .iter()
        .map(|(_, r)| answer(r).map_or(0, |a| i32::from(a.status)))
        .collect();
    let bodies: Vec<&[u8]> = kept
        .iter()
        .map(|(_, r)| answer(r).map_or(&[][..], |a| &a.body[..]))
        .collect();
    let channels: Vec<Option<&str>> = kept
        .iter()
        .map(|(_, r)| answer(r).and_then(|a| a.channel.as_deref()))
        .collect();
    let expiries: Vec<i64> = kept.iter().map(|(_, r)| r.expires_at_ms as i64).collect();
    let targets: Vec<Option<&str>> = kept
        .iter()
        .map(|(_, r)| match &r.kept {
            Kept::Made(target) => Some(target.as_str()),
            Kept::Answer(_) => None,
        })
        .collect();
    transaction.execute(
        &statements.keys,
        &[
            &scopes, &hashes, &statuses, &bodies, &channels, &expiries, &targets,
        ],
    )?;
    Ok(())
}

/// A read, run on a reader's thread with its connection (None while it cannot connect).
type Job = Box<dyn FnOnce(Option<&mut Client>) + Send>;

/// Reader threads, each with its own connection, taking jobs from one queue.
struct PgReaders {
    jobs: Mutex<mpsc::Sender<Job>>,
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
        Ok(Self {
            jobs: Mutex::new(sender),
            timeout: settings.timeout,
        })
    }

    /// Runs `read` on a reader and waits for its answer, `timeout` at most.
    fn ask<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        let (reply, answer): (SyncSender<Result<T, DbError>>, Receiver<_>) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client| {
            let result = match client {
                Some(client) => read(client).map_err(DbError::from),
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
    let mut client: Option<Client> = None;
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
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match connect(config, settings) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(%error, "journal reader cannot connect");
                    None
                }
            };
        }
        job(client.as_mut());
    }
}

impl Reader for PgReaders {
    fn record(&self, id: &str) -> Result<Option<String>, DbError> {
        let id = id.to_string();
        self.ask(move |client| {
            let row = client.query_opt("SELECT record FROM payments WHERE id = $1", &[&id])?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn in_doubt(&self) -> Result<Vec<String>, DbError> {
        self.ask(|client| {
            let rows = client.query("SELECT record FROM payments WHERE in_doubt", &[])?;
            Ok(rows.into_iter().map(|row| row.get(0)).collect())
        })
    }

    fn key(&self, scope: &str) -> Result<Option<KeyRecord>, DbError> {
        let scope = scope.to_string();
        self.ask(move |client| {
            let row = client.query_opt(
                "SELECT request_hash, status, body, channel, expires_at_ms, target
                 FROM idempotency WHERE scope = $1",
                &[&scope],
            )?;
            Ok(row.map(|row| {
                let hash: Vec<u8> = row.get(0);
                let kept = match row.get::<_, Option<String>>(5) {
                    Some(target) => Kept::Made(target),
                    None => Kept::Answer(StoredResponse {
                        status: u16::try_from(row.get::<_, i32>(1)).unwrap_or(500),
                        body: row.get::<_, Vec<u8>>(2).into(),
                        channel: row.get(3),
                    }),
                };
                KeyRecord {
                    request_hash: hash.try_into().unwrap_or([0; 32]),
                    kept,
                    expires_at_ms: row.get::<_, i64>(4) as u64,
                }
            }))
        })
    }

    fn lease(&self, payment_id: &str, r#for: Duration) -> Result<bool, DbError> {
        let (id, owner) = (payment_id.to_string(), replica_id().to_string());
        let for_ms = r#for.as_millis() as i64;
        self.ask(move |client| {
            let taken = client.query_opt(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS ms)
                 INSERT INTO leases (payment_id, owner, until_ms)
                 SELECT $1, $2, now.ms + $3 FROM now
                 ON CONFLICT (payment_id) DO UPDATE SET owner = excluded.owner,
                    until_ms = excluded.until_ms
                 WHERE leases.owner = excluded.owner
                    OR leases.until_ms <= (SELECT ms FROM now)
                 RETURNING owner",
                &[&id, &owner, &for_ms],
            )?;
            Ok(taken.is_some())
        })
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
