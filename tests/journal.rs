//! The journal through the real binary: payments and follow-up routing survive a restart,
//! `kill -9` under load loses no payment whose answer said succeeded, a corrupt or locked
//! journal stops start-up with a clear error, and a pending payment is reconciled on its own
//! channel and reported to the merchant's webhook, signed.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use support::*;

fn routes(sims: &[(&str, &Process)], extra: &str) -> String {
    let channels: String = sims
        .iter()
        .map(|(name, sim)| channel(name, sim, ""))
        .collect();
    let names: Vec<String> = sims.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    format!(
        "{}{extra}\n{channels}\n[[rules]]\nname = \"all\"\nchannels = [{}]\nstrategy = \"weighted\"\n",
        base_config(),
        names.join(", ")
    )
}

fn journal_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    let connection = rusqlite::Connection::open(path).expect("open the journal");
    let mut query = connection.prepare(sql).expect("query");
    let columns = query.column_count();
    query
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test]
async fn payments_and_follow_up_routing_survive_a_restart() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let text = routes(&[("a", &a), ("b", &b)], "");
    let mut first = Process::gateway(&text).await;
    let mut paid = Vec::new();
    for _ in 0..6 {
        let answer = pay(&first, &card_payment(1_000, "EUR")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        paid.push(answer.json);
    }
    let routes_file = first.routes.clone();
    first.signal("TERM");
    assert_eq!(first.exit_code(Duration::from_secs(20)).await, Some(0));

    let second = Process::gateway_in(&routes_file).await;
    for payment in &paid {
        let id = payment["id"].as_str().unwrap();
        let read = get_payment(&second, KEY, id).await;
        assert_eq!(read.status, StatusCode::OK, "{id} after restart");
        assert_eq!(read.json["status"], "succeeded");
        assert_eq!(read.json["channel"], payment["channel"]);
        assert_eq!(read.json["attempts"], payment["attempts"]);
        let captured = follow_up(&second, id, "capture", "").await;
        assert_eq!(captured.status, StatusCode::OK);
        assert_eq!(
            captured.json["channel"], payment["channel"],
            "captured where it was authorized"
        );
    }
    let on_a = paid.iter().filter(|p| p["channel"] == "a").count() as u64;
    assert_eq!(a.stats().await["captures"], on_a);
    assert_eq!(b.stats().await["captures"], 6 - on_a);
    let journal = routes_file.parent().unwrap().join("paygate.db");
    let rows = journal_rows(
        &journal,
        "SELECT COUNT(*) FROM payments WHERE captured_amount = 1000",
    );
    assert_eq!(rows[0][0], "Integer(6)");
    let stored = std::fs::read(&journal).unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("4111111111111111"),
        "no card number in the journal"
    );
}

/// `POST /v1/payments` with an `Idempotency-Key`.
async fn pay_keyed(gateway: &Process, key: &str, body: &Value) -> Answer {
    let auth = format!("Bearer {KEY}");
    send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[("authorization", &auth), ("idempotency-key", key)],
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let text = routes(&[("a", &a)], "");
    let mut first = Process::gateway(&text).await;
    let body = card_payment(2_500, "EUR");
    let original = pay_keyed(&first, "order-restart-1", &body).await;
    assert_eq!(original.status, StatusCode::CREATED);
    let routes_file = first.routes.clone();
    first.signal("TERM");
    assert_eq!(first.exit_code(Duration::from_secs(20)).await, Some(0));

    let second = Process::gateway_in(&routes_file).await;
    let replay = pay_keyed(&second, "order-restart-1", &body).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.header("idempotent-replayed"), "true");
    assert_eq!(
        replay.json, original.json,
        "the first answer, byte for byte"
    );
    let other = pay_keyed(&second, "order-restart-1", &card_payment(9_900, "EUR")).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.error_type(), "idempotency_conflict");
    let fresh = pay_keyed(&second, "order-restart-2", &body).await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_eq!(
        a.stats().await["payments"],
        2,
        "the PSP charged each key once"
    );
    // The second key's record is queued after its answer: give the writer a moment.
    let journal = routes_file.parent().unwrap().join("paygate.db");
    let mut held = String::new();
    for _ in 0..50 {
        held = journal_rows(&journal, "SELECT COUNT(*) FROM idempotency")[0][0].clone();
        if held == "Integer(2)" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, "Integer(2)");
}

#[tokio::test]
async fn an_answered_key_survives_kill_9_right_after_the_answer() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let text = routes(&[("a", &a)], "");
    let mut first = Process::gateway(&text).await;
    let body = card_payment(1_500, "EUR");
    let mut answers = Vec::new();
    for n in 0..5 {
        answers.push(pay_keyed(&first, &format!("order-kill-{n}"), &body).await);
    }
    // No grace: the process dies the moment the last answer is read.
    first.signal("KILL");
    let _ = first.exit_code(Duration::from_secs(10)).await;
    let routes_file = first.routes.clone();
    let second = Process::gateway_in(&routes_file).await;
    for (n, original) in answers.iter().enumerate() {
        assert_eq!(original.status, StatusCode::CREATED);
        let replay = pay_keyed(&second, &format!("order-kill-{n}"), &body).await;
        assert_eq!(replay.status, StatusCode::OK, "key {n} after kill -9");
        assert_eq!(replay.json, original.json);
    }
    assert_eq!(a.stats().await["payments"], 5, "no retry charged again");
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_payment() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let gateway = Arc::new(
        Process::gateway(&routes(&[("psp", &sim)], "\n[journal]\nsync = \"batch\"\n")).await,
    );
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (gateway, acknowledged) = (gateway.clone(), acknowledged.clone());
        workers.spawn(async move {
            let auth = format!("Bearer {KEY}");
            let url = format!("{}/v1/payments", gateway.base);
            let body = card_payment(500, "EUR").to_string();
            for _ in 0..5_000 {
                match try_send(Method::POST, &url, &[("authorization", &auth)], &body).await {
                    Ok(answer) if answer.json["status"] == "succeeded" => {
                        acknowledged
                            .lock()
                            .unwrap()
                            .push(answer.json["id"].as_str().unwrap().to_string());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    gateway.signal("KILL");
    while workers.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "load ran: {}", acknowledged.len());
    let journal = gateway.routes.parent().unwrap().join("paygate.db");
    let rows = journal_rows(
        &journal,
        "SELECT id FROM payments WHERE status = 'succeeded'",
    );
    let journaled: std::collections::HashSet<String> = rows
        .into_iter()
        .map(|r| {
            r[0].trim_start_matches("Text(\"")
                .trim_end_matches("\")")
                .to_string()
        })
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !journaled.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged payments missing from the journal, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test]
async fn a_corrupt_or_locked_journal_stops_start_up_by_name() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let text = routes(&[("psp", &sim)], "");
    // Corrupt: garbage where the journal should be, left as it was.
    let dir = scratch_dir();
    let routes_file = dir.join("routes.toml");
    std::fs::write(&routes_file, &text).unwrap();
    let garbage = "not a journal ".repeat(100);
    std::fs::write(dir.join("paygate.db"), &garbage).unwrap();
    let output = std::process::Command::new(BIN)
        .args(["--config", &routes_file.to_string_lossy(), "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("paygate.db"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("paygate.db")).unwrap(),
        garbage,
        "no silent new journal"
    );

    // Locked: another process holds an exclusive lock on it.
    let dir = scratch_dir();
    let routes_file = dir.join("routes.toml");
    std::fs::write(&routes_file, &text).unwrap();
    let holder = rusqlite::Connection::open(dir.join("paygate.db")).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; CREATE TABLE held (x); BEGIN EXCLUSIVE;")
        .unwrap();
    let output = std::process::Command::new(BIN)
        .args(["--config", &routes_file.to_string_lossy(), "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("paygate.db") && stderr.contains("locked"),
        "{stderr}"
    );
    drop(holder);
}

/// `Paygate-Signature` for `method target` with `body` under the test merchant's secret.
fn sign(method: &str, target: &str, body: &[u8]) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_hook").unwrap();
    mac.update(format!("{t}.{method}.{target}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn pending_payments_are_reconciled_and_the_merchant_is_told() {
    let sim = Process::mock_psp(&["--name", "psp", "--pending-resolves-ms", "500"]).await;
    let (webhook, received) = recorder("/hooks/paygate", |_| Bytes::from_static(b"ok")).await;
    let extra = format!(
        "\n[reconciliation]\ninterval_ms = 100\nmax_backoff_ms = 400\n\n[[merchants]]\nid = \"hooked\"\napi_key_sha256 = \"{}\"\nsigning_secret = \"env:PAYGATE_TEST_WEBHOOK_SECRET\"\nwebhook_url = \"{webhook}\"\n",
        sha256_hex("hooked-key")
    );
    let text = routes(&[("psp", &sim)], &extra);
    let gateway =
        Process::gateway_with_env(&text, &[("PAYGATE_TEST_WEBHOOK_SECRET", "whsec_hook")]).await;
    let mut pending = card_payment(700, "EUR");
    pending["card"]["number"] = json!("4000000000000259");
    // The merchant signs its requests (it has a signing secret).
    let body = pending.to_string();
    let signature = sign("POST", "/v1/payments", body.as_bytes());
    let answer = send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[
            ("authorization", "Bearer hooked-key"),
            ("paygate-signature", &signature),
        ],
        &body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.json);
    let id = answer.json["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(15);
    let settled = loop {
        let signature = sign("GET", &format!("/v1/payments/{id}"), b"");
        let read = send(
            Method::GET,
            &format!("{}/v1/payments/{id}", gateway.base),
            &[
                ("authorization", "Bearer hooked-key"),
                ("paygate-signature", &signature),
            ],
            "",
        )
        .await;
        if read.json["status"] == "succeeded" {
            break read.json;
        }
        assert!(
            Instant::now() < deadline,
            "never reconciled: {:?}",
            read.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settled["reconciled"], true);
    assert_eq!(settled["channel"], "psp");
    assert!(sim.stats().await["status_queries"].as_u64().unwrap() >= 1);
    assert_eq!(
        sim.stats().await["payments"],
        1,
        "never re-sent, only queried"
    );

    let (signature, body) = first_received(&received).await;
    let hook: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hook["type"], "payment.reconciled");
    assert_eq!(hook["payment"]["id"], id.as_str());
    assert_eq!(hook["payment"]["status"], "succeeded");
    let (t, v1) = signature.split_once(",v1=").unwrap();
    let t = t.trim_start_matches("t=");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_hook").unwrap();
    mac.update(format!("{t}.POST./hooks/paygate.").as_bytes());
    mac.update(&body);
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        v1,
        "webhook signed with the merchant's secret"
    );

    let journal = gateway.routes.parent().unwrap().join("paygate.db");
    let rows = journal_rows(
        &journal,
        &format!("SELECT status, reconciled FROM payments WHERE id = '{id}'"),
    );
    assert_eq!(
        rows,
        vec![vec![
            "Text(\"succeeded\")".to_string(),
            "Integer(1)".to_string()
        ]]
    );
}

#[tokio::test]
async fn a_full_disk_turns_new_payments_away_with_503() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let dir = scratch_dir();
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // A 1 MiB file system for the journal: root can mount one; elsewhere this test cannot run.
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            &disk.to_string_lossy(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let text = format!(
        "{}\n[journal]\npath = \"{}\"\n{}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config().replace("[server]\n", "[server]\nrequest_timeout_ms = 2000\n"),
        disk.join("paygate.db").display(),
        channel("psp", &sim, "")
    );
    let gateway = Process::gateway(&text).await;
    let mut first_refusal = None;
    let mut accepted = Vec::new();
    for i in 0..5_000 {
        let mut payment = card_payment(100 + i, "EUR");
        payment["reference"] = json!(format!("{i:0>250}"));
        let answer = pay(&gateway, &payment).await;
        match answer.status {
            StatusCode::CREATED => accepted.push(answer.json["id"].as_str().unwrap().to_string()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.error_type(), "overloaded");
                assert!(
                    answer.json["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("journal")
                );
                first_refusal = Some(i);
                break;
            }
            other => panic!("unexpected {other}: {:?}", answer.json),
        }
    }
    let _ = std::process::Command::new("umount")
        .args(["-l", &disk.to_string_lossy()])
        .status();
    assert!(first_refusal.is_some(), "the journal never filled up");
    assert!(
        accepted.len() > 10,
        "payments were accepted before the disk filled"
    );
    // Still serving: health, and reads of what was recorded.
    assert_eq!(
        send(Method::GET, &format!("{}/healthz", gateway.admin), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_payment(&gateway, KEY, &accepted[0]).await.status,
        StatusCode::OK
    );
}
