//! Replicas on one PostgreSQL journal (`[journal] url`), through the real binary, against the
//! machine's PostgreSQL and Redis on 127.0.0.1 (each test in a schema and under a Redis key
//! prefix of its own): a payment authorized on one replica is read, replayed by key, captured
//! and refunded on another, on the channel that authorized it; `kill -9` of a replica under
//! load loses no acknowledged payment, and the payments it had in flight are settled by the
//! replica left, with nothing charged twice; the daily report reads the shared journal; a
//! journal URL with a password in the routes file, or a database that does not answer, is
//! refused by name.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

/// The machine's PostgreSQL (trust auth) and Redis; `.ci/run` starts them when they are down.
const POSTGRES: &str = "127.0.0.1:5432";
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "127.0.0.1:6379";

fn require(service: &str, addr: &str) {
    let up = std::net::TcpStream::connect_timeout(
        &addr.parse().expect("address"),
        Duration::from_secs(1),
    )
    .is_ok();
    assert!(
        up,
        "{service} is not running on {addr}: .ci/run starts it (see the commands there)"
    );
}

/// A schema (and Redis key prefix) no other test or run shares.
fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("t{}_{nanos}", std::process::id())
}

/// Runs `query` in `schema` and returns its rows as text (on a thread of its own: the
/// synchronous client must not run on the test's async runtime).
fn sql(schema: &str, query: &str) -> Vec<Vec<String>> {
    let (schema, query) = (schema.to_string(), query.to_string());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(POSTGRES_URL, postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .expect("search_path");
        client
            .simple_query(&query)
            .expect("query")
            .into_iter()
            .filter_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    })
    .join()
    .expect("sql thread")
}

fn count(schema: &str, query: &str) -> u64 {
    sql(schema, query)[0][0].parse().expect("a count")
}

/// Drops the test's schema when the test ends, passed or not.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut client) = postgres::Client::connect(POSTGRES_URL, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        })
        .join();
    }
}

fn routes(schema: &str, channels: &[(&str, &Process)], extra: &str) -> String {
    let names: Vec<String> = channels.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let mut text = format!(
        "{}
[journal]
url = \"{POSTGRES_URL}\"
schema = \"{schema}\"

[cluster]
redis_url = \"redis://{REDIS}\"
key_prefix = \"{schema}:\"
# Generous: these machines are loaded while the tests build and run.
timeout_ms = 1000

[reconciliation]
interval_ms = 200
max_backoff_ms = 400
{extra}
[[rules]]
name = \"all\"
channels = [{}]
",
        base_config(),
        names.join(", ")
    );
    for (name, sim) in channels {
        text.push_str(&channel(name, sim, "timeout_ms = 1000"));
    }
    text
}

/// A simulated PSP that accepts every call after `ms` milliseconds.
async fn psp_answering_after(ms: u64) -> Process {
    let latency = format!("fixed:{ms}");
    Process::mock_psp(&[
        "--name",
        "psp",
        "--success-rate",
        "1",
        "--latency",
        &latency,
    ])
    .await
}

async fn pay_keyed(gateway: &Process, key: &str, body: &Value) -> Answer {
    send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("idempotency-key", key),
        ],
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_payment_authorized_on_one_replica_is_read_replayed_captured_and_refunded_on_another() {
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    let sim_a = Process::mock_psp(&["--name", "a", "--success-rate", "1"]).await;
    let sim_b = Process::mock_psp(&["--name", "b", "--success-rate", "1"]).await;
    let schema = Schema(unique_name());
    let text = routes(&schema.0, &[("a", &sim_a), ("b", &sim_b)], "");
    let first = Process::gateway(&text).await;
    let second = Process::gateway(&text).await;

    let body = card_payment(1_000, "EUR");
    let paid = pay_keyed(&first, "order-41", &body).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.json);
    assert_eq!(paid.json["status"], "succeeded");
    let id = paid.json["id"].as_str().expect("id").to_string();
    let channel = paid.json["channel"].as_str().expect("channel").to_string();
    let (home, other) = if channel == "a" {
        (&sim_a, &sim_b)
    } else {
        (&sim_b, &sim_a)
    };

    // Read from the other replica: the same record.
    let read = get_payment(&second, KEY, &id).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json["status"], "succeeded");
    assert_eq!(read.json["channel"], channel.as_str());
    assert_eq!(read.json["amount"], 1_000);

    // The merchant's retry lands on the other replica: answered from the shared record.
    let replay = pay_keyed(&second, "order-41", &body).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.json);
    assert_eq!(replay.header("idempotent-replayed"), "true");
    assert_eq!(replay.json["id"], id.as_str());
    // The same key with another body, on either replica, is refused.
    let other_body = card_payment(2_000, "EUR");
    for gateway in [&first, &second] {
        let mismatch = pay_keyed(gateway, "order-41", &other_body).await;
        assert_eq!(mismatch.status, StatusCode::CONFLICT, "{}", mismatch.json);
    }

    // Capture on the second replica: it goes to the channel that authorized, never the other.
    let captured = follow_up(&second, &id, "capture", r#"{"amount": 600}"#).await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.json);
    assert_eq!(captured.json["status"], "succeeded");
    assert_eq!(captured.json["channel"], channel.as_str());
    // Refund on the first: it sees the capture the second made.
    let refunded = follow_up(&first, &id, "refunds", r#"{"amount": 600}"#).await;
    assert_eq!(refunded.status, StatusCode::OK, "{}", refunded.json);
    assert_eq!(refunded.json["channel"], channel.as_str());
    // Nothing more than was captured can be refunded, whichever replica is asked.
    let over = follow_up(&second, &id, "refunds", r#"{"amount": 1}"#).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{}", over.json);
    assert!(
        over.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing is left to be refunded")),
        "{}",
        over.json
    );

    let home_stats = home.stats().await;
    assert_eq!(home_stats["payments"], 1, "charged once: {home_stats}");
    assert_eq!(home_stats["captures"], 1);
    assert_eq!(home_stats["refunds"], 1);
    let other_stats = other.stats().await;
    assert_eq!(other_stats["requests"], 0, "{other_stats}");

    let stored = get_payment(&first, KEY, &id).await;
    assert_eq!(stored.json["captured_amount"], 600);
    assert_eq!(stored.json["refunded_amount"], 600);
    assert_eq!(
        sql(
            &schema.0,
            &format!(
                "SELECT captured_amount, refunded_amount, in_doubt FROM payments WHERE id = '{id}'"
            )
        ),
        vec![vec!["600".to_string(), "600".into(), "f".into()]]
    );

    // The daily report reads the shared journal.
    let day = chrono_free_today();
    let output = std::process::Command::new(BIN)
        .args([
            "report",
            "--date",
            &day,
            "--format",
            "csv",
            "--journal-url",
            POSTGRES_URL,
            "--journal-schema",
            &schema.0,
        ])
        .output()
        .expect("run paygate report");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "report,,payments,,1".to_string(),
        format!("channel,{channel},attempts,,1"),
        format!("channel,{channel},succeeded,,1"),
    ] {
        assert!(report.lines().any(|l| l == line), "{line} in:\n{report}");
    }
}

/// Today in UTC as YYYY-MM-DD, from the clock alone.
fn chrono_free_today() -> String {
    let days = (unix_now() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[tokio::test]
async fn captures_of_one_payment_sent_to_two_replicas_at_once_are_all_kept() {
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    // Slow enough that the captures overlap: without a hold of the payment, a replica would
    // write its own view of it over the other's capture.
    let sim = psp_answering_after(40).await;
    let schema = Schema(unique_name());
    let text = routes(&schema.0, &[("psp", &sim)], "");
    let (a, b) = (Process::gateway(&text).await, Process::gateway(&text).await);
    let authorized = pay(&a, &card_payment(1000, "EUR")).await;
    assert_eq!(
        authorized.status,
        StatusCode::CREATED,
        "{}",
        authorized.json
    );
    let id = authorized.json["id"].as_str().expect("id").to_string();
    let mut captures = tokio::task::JoinSet::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let url = format!("{base}/v1/payments/{id}/capture");
        captures.spawn(async move {
            let auth = format!("Bearer {KEY}");
            send(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                r#"{"amount": 100}"#,
            )
            .await
        });
    }
    let answers = captures.join_all().await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.json["status"], "succeeded");
    }
    // Every capture is in the journal, read from either replica, and the PSP had each once.
    for gateway in [&a, &b] {
        let stored = get_payment(gateway, KEY, &id).await;
        assert_eq!(stored.json["captured_amount"], 800, "{}", stored.json);
    }
    assert_eq!(
        sql(
            &schema.0,
            &format!("SELECT captured_amount FROM payments WHERE id = '{id}'")
        )[0][0],
        "800"
    );
    assert_eq!(sim.stats().await["captures"], 8);
    // And the leases are given back: none is left held.
    assert_eq!(count(&schema.0, "SELECT COUNT(*) FROM leases"), 0);
}

#[tokio::test]
async fn a_capture_waits_for_another_replica_s_hold_of_the_payment_then_refuses_unsent() {
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    let sim = Process::mock_psp(&["--name", "psp", "--success-rate", "1"]).await;
    let schema = Schema(unique_name());
    let gateway = Process::gateway(&routes(&schema.0, &[("psp", &sim)], "")).await;
    let authorized = pay(&gateway, &card_payment(1000, "EUR")).await;
    assert_eq!(
        authorized.status,
        StatusCode::CREATED,
        "{}",
        authorized.json
    );
    let id = authorized.json["id"].as_str().expect("id").to_string();
    // Another replica holds the payment (it is changing it) for a minute.
    sql(
        &schema.0,
        &format!(
            "INSERT INTO leases (payment_id, owner, until_ms) VALUES ('{id}', 'another-replica',
             (extract(epoch FROM clock_timestamp()) * 1000)::int8 + 60000)"
        ),
    );
    let started = Instant::now();
    let refused = follow_up(&gateway, &id, "capture", r#"{"amount": 300}"#).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(refused.json["error"]["type"], "overloaded");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "it waited first"
    );
    assert_eq!(sim.stats().await["captures"], 0, "nothing was sent");
    // Once the other replica lets go, the capture goes through, and gives the lease back.
    sql(
        &schema.0,
        &format!("DELETE FROM leases WHERE payment_id = '{id}'"),
    );
    let captured = follow_up(&gateway, &id, "capture", r#"{"amount": 300}"#).await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.json);
    assert_eq!(sim.stats().await["captures"], 1);
    assert_eq!(count(&schema.0, "SELECT COUNT(*) FROM leases"), 0);
    let stored = get_payment(&gateway, KEY, &id).await;
    assert_eq!(stored.json["captured_amount"], 300);
}

#[tokio::test]
async fn a_key_whose_payment_surely_failed_is_new_on_the_other_replica_and_a_charged_one_is_kept() {
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    let refusing = Process::mock_psp(&["--name", "psp", "--error-503", "1"]).await;
    let schema = Schema(unique_name());
    let a = Process::gateway(&routes(&schema.0, &[("psp", &refusing)], "")).await;
    let key = format!("order-{}", unique_name());
    let body = card_payment(900, "EUR");
    let failed = pay_keyed(&a, &key, &body).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.json);
    // Nothing was charged: the record names nothing any more, for any replica.
    let scope_rows =
        format!("SELECT COUNT(*) FROM idempotency WHERE scope LIKE '%{key}' AND expires_at_ms > 0");
    assert_eq!(count(&schema.0, &scope_rows), 0);

    // The same key on another replica, whose PSP answers, is a new payment, charged once.
    let sim = Process::mock_psp(&["--name", "psp", "--success-rate", "1"]).await;
    let b = Process::gateway(&routes(&schema.0, &[("psp", &sim)], "")).await;
    let charged = pay_keyed(&b, &key, &body).await;
    assert_eq!(charged.status, StatusCode::CREATED, "{}", charged.json);
    assert_ne!(charged.json["id"], failed.json["error"]["payment_id"]);
    assert_eq!(count(&schema.0, &scope_rows), 1);
    // Now it is kept: a retry on the first replica is the charged payment, not sent again.
    let replayed = pay_keyed(&a, &key, &body).await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.json);
    assert_eq!(replayed.json["id"], charged.json["id"]);
    assert_eq!(sim.stats().await["payments"].as_u64(), Some(1));
    assert_eq!(refusing.stats().await["requests"].as_u64(), Some(1));
}

#[tokio::test]
async fn kill_9_of_a_replica_under_load_loses_nothing_and_the_other_settles_what_it_had_in_flight()
{
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    // Slow enough that many payments are on their way when the replica dies.
    let sim = psp_answering_after(300).await;
    let schema = Schema(unique_name());
    // A short request timeout: a key the dead replica claimed in Redis but never recorded is
    // held for that long (plus a margin), then free for the merchant's retry.
    let text = routes(&schema.0, &[("psp", &sim)], "").replacen(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nrequest_timeout_ms = 3000",
        1,
    );
    let doomed = Arc::new(Process::gateway(&text).await);
    let survivor = Process::gateway(&text).await;

    let answered: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (gateway, answered) = (doomed.clone(), answered.clone());
        workers.spawn(async move {
            let auth = format!("Bearer {KEY}");
            let url = format!("{}/v1/payments", gateway.base);
            let body = card_payment(700, "EUR").to_string();
            for n in 0..200 {
                let key = format!("load-{worker}-{n}");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("idempotency-key", key.as_str()),
                ];
                match try_send(Method::POST, &url, &headers, &body).await {
                    Ok(answer) if answer.status == StatusCode::CREATED => {
                        answered.lock().unwrap().insert(key, answer.json);
                    }
                    Ok(answer) => panic!("unexpected {}: {}", answer.status, answer.json),
                    // The replica is gone: this key's payment may be in flight.
                    Err(_) => return key,
                }
            }
            String::new()
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    doomed.signal("KILL");
    let mut unanswered = Vec::new();
    while let Some(key) = workers.join_next().await {
        let key = key.expect("worker");
        if !key.is_empty() {
            unanswered.push(key);
        }
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 16,
        "load ran: {} answered",
        answered.len()
    );
    assert_eq!(unanswered.len(), 16, "every worker was cut off mid-request");

    // Every acknowledged payment is readable from the replica left, as it was answered.
    for answer in answered.values() {
        let id = answer["id"].as_str().expect("id");
        let read = get_payment(&survivor, KEY, id).await;
        assert_eq!(read.status, StatusCode::OK, "{id}");
        assert_eq!(read.json["status"], "succeeded", "{id}");
    }

    // What the dead replica had in flight is settled by the survivor, on the same channel:
    // each was either received by the PSP (then it succeeded there) or never (then failed).
    // Within the reconciliation lease (15 s) the dead replica may have taken on a payment
    // whose call outlived its timeout on a loaded machine; the survivor takes it after that.
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&schema.0, "SELECT COUNT(*) FROM payments WHERE in_doubt") > 0 {
        assert!(
            Instant::now() < deadline,
            "still in doubt: {:?}",
            sql(&schema.0, "SELECT id, record FROM payments WHERE in_doubt")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let succeeded = count(
        &schema.0,
        "SELECT COUNT(*) FROM payments WHERE status = 'succeeded'",
    );
    let failed = count(
        &schema.0,
        "SELECT COUNT(*) FROM payments WHERE status = 'failed'",
    );
    let all = count(&schema.0, "SELECT COUNT(*) FROM payments");
    assert_eq!(succeeded + failed, all, "every payment is final");
    let stats = sim.stats().await;
    assert_eq!(
        stats["payments"].as_u64(),
        Some(succeeded),
        "each payment the PSP received succeeded once, none twice: {stats}"
    );
    assert!(
        count(&schema.0, "SELECT COUNT(*) FROM payments WHERE reconciled") >= 1,
        "the survivor reconciled what was in flight"
    );

    // The merchant retries the cut-off keys on the survivor: a key whose payment was
    // recorded is answered from the record as it now stands, never charged again; only a key
    // that never got as far as a record makes a payment.
    let recorded: HashSet<String> = sql(
        &schema.0,
        "SELECT scope FROM idempotency WHERE target IS NOT NULL",
    )
    .into_iter()
    .map(|row| row[0].clone())
    .collect();
    let mut made_anew = 0;
    for key in &unanswered {
        let retry = pay_keyed(&survivor, key, &card_payment(700, "EUR")).await;
        if recorded.contains(&format!("4:demo{key}")) {
            assert_eq!(retry.status, StatusCode::OK, "{key}: {}", retry.json);
            assert_eq!(retry.header("idempotent-replayed"), "true");
            assert!(
                matches!(retry.json["status"].as_str(), Some("succeeded" | "failed")),
                "{key}: {}",
                retry.json
            );
        } else {
            // Never recorded, so surely never sent: once the dead replica's claim lapses
            // (409 until then), the retry makes the payment.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut retry = retry;
            while retry.status == StatusCode::CONFLICT && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                retry = pay_keyed(&survivor, key, &card_payment(700, "EUR")).await;
            }
            assert_eq!(retry.status, StatusCode::CREATED, "{key}: {}", retry.json);
            made_anew += 1;
        }
    }
    let stats = sim.stats().await;
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(
        stats["payments"].as_u64(),
        Some(succeeded + made_anew),
        "{stats}"
    );
    let distinct: HashSet<&str> = answered.values().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(distinct.len(), answered.len());
}

#[tokio::test]
async fn a_journal_url_with_a_password_or_an_unreachable_database_is_refused_by_name() {
    // A password in the routes file: `paygate check` refuses it, naming the fix.
    let dir = scratch_dir();
    let file = dir.join("routes.toml");
    let with_password = format!(
        "{}\n[journal]\nurl = \"postgres://paygate:hunter2@127.0.0.1:5432/paygate\"\n[[channels]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n[[rules]]\nname = \"all\"\nchannels = [\"a\"]\n",
        base_config()
    );
    std::fs::write(&file, &with_password).unwrap();
    let output = std::process::Command::new(BIN)
        .args(["check", &file.to_string_lossy()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("journal url carries a password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is never printed: {stderr}"
    );

    // From the environment it is accepted; a database that does not answer stops start-up
    // with an error that names it, without the password.
    let from_env = with_password.replace(
        "postgres://paygate:hunter2@127.0.0.1:5432/paygate",
        "env:PAYGATE_TEST_JOURNAL_URL",
    );
    std::fs::write(&file, &from_env).unwrap();
    let output = std::process::Command::new(BIN)
        .args(["--config", &file.to_string_lossy(), "serve"])
        .env(
            "PAYGATE_TEST_JOURNAL_URL",
            "postgres://paygate:hunter2@127.0.0.1:1/paygate",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("postgres://127.0.0.1:1/paygate"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A TCP forwarder to PostgreSQL that the test can cut (every connection dropped, new ones
/// closed at once) and restore: the database going away and coming back, as a replica sees it.
struct Cuttable {
    addr: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Cuttable {
    async fn to(target: &'static str) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up_flag, current) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up_flag.load(Ordering::SeqCst) {
                    continue;
                }
                let born = current.load(Ordering::SeqCst);
                let current = current.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let cut = async {
                        while current.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut => {}
                    }
                });
            }
        });
        Cuttable {
            addr,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn readyz(gateway: &Process) -> Answer {
    send(Method::GET, &format!("{}/readyz", gateway.admin), &[], "").await
}

#[tokio::test]
async fn postgres_lost_mid_run_refuses_new_payments_unsent_and_service_resumes_when_it_is_back() {
    require("PostgreSQL", POSTGRES);
    require("Redis", REDIS);
    let sim = Process::mock_psp(&["--name", "psp", "--success-rate", "1"]).await;
    let schema = Schema(unique_name());
    let proxy = Cuttable::to(POSTGRES).await;
    let text = routes(&schema.0, &[("psp", &sim)], "").replace(
        &format!("url = \"{POSTGRES_URL}\""),
        &format!(
            "url = \"postgres://postgres@{}/test\"\ntimeout_ms = 500",
            proxy.addr
        ),
    );
    let gateway = Process::gateway(&text).await;
    let first = pay(&gateway, &card_payment(100, "EUR")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert_eq!(readyz(&gateway).await.status, StatusCode::OK);

    proxy.cut();
    // A payment whose intent cannot be recorded is not sent: 503, the PSP never sees it.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < 3 {
        assert!(
            Instant::now() < deadline,
            "the lost journal was never noticed"
        );
        let answer = pay(&gateway, &card_payment(100, "EUR")).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        } else {
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
        }
    }
    let ready = readyz(&gateway).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.json
    );
    assert_eq!(ready.json["status"], "journal_unavailable");
    // A payment the journal cannot read now is never "not found": 503, retry.
    let first_id = first.json["id"].as_str().expect("id");
    let unreadable = get_payment(&gateway, KEY, first_id).await;
    assert_eq!(
        unreadable.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unreadable.json
    );
    let capture = follow_up(&gateway, first_id, "capture", "{}").await;
    assert_eq!(
        capture.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        capture.json
    );
    // A keyed payment refused while the journal is away leaves its key free.
    let key = format!("order-{}", unique_name());
    let keyed = pay_keyed(&gateway, &key, &card_payment(300, "EUR")).await;
    assert_eq!(
        keyed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        keyed.json
    );
    let sent_while_down = sim.stats().await["payments"].as_u64().unwrap_or(0);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        let answer = pay(&gateway, &card_payment(100, "EUR")).await;
        if answer.status == StatusCode::CREATED {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "service never resumed: {}",
            answer.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed.json["status"], "succeeded");
    assert_eq!(readyz(&gateway).await.status, StatusCode::OK);
    let keyed = pay_keyed(&gateway, &key, &card_payment(300, "EUR")).await;
    assert_eq!(keyed.status, StatusCode::CREATED, "{}", keyed.json);
    // Every payment the PSP received is in the journal as succeeded; the refused ones were
    // never sent.
    let stats = sim.stats().await;
    assert_eq!(
        stats["payments"].as_u64(),
        Some(sent_while_down + 2),
        "{stats}"
    );
    let durable = get_payment(&gateway, KEY, resumed.json["id"].as_str().unwrap()).await;
    assert_eq!(durable.status, StatusCode::OK);
    let first_again = get_payment(&gateway, KEY, first_id).await;
    assert_eq!(first_again.json["status"], "succeeded");
    assert_eq!(
        first_again.json["captured_amount"], 0,
        "the refused capture was never sent"
    );
    assert_eq!(
        count(
            &schema.0,
            "SELECT COUNT(*) FROM payments WHERE status = 'succeeded'"
        ),
        sent_while_down + 2
    );
}
