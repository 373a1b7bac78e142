//! Money under real faults, through the real binary: a merchant's key finds its payment after
//! `kill -9` and never charges twice; payments in flight at a crash name their channel and
//! are reconciled there; a journal whose disk is full refuses payments before any PSP call
//! and recovers without a restart; the merchant body reaches the PSP byte for byte, with
//! `paygate_id` paygate's alone and no error that quotes the body.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// Short reconciliation intervals, so that a test sees payments settle within seconds.
const FAST_RECONCILIATION: &str = "\n[reconciliation]\ninterval_ms = 100\nmax_backoff_ms = 400\n";

fn routes_with(sims: &[(&str, &Process)], channel_extra: &str, extra: &str) -> String {
    let channels: String = sims
        .iter()
        .map(|(name, sim)| channel(name, sim, channel_extra))
        .collect();
    let names: Vec<String> = sims.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    format!(
        "{}{extra}\n{channels}\n[[rules]]\nname = \"all\"\nchannels = [{}]\nstrategy = \"priority\"\n",
        base_config(),
        names.join(", ")
    )
}

async fn pay_keyed(gateway: &Process, key: &str, body: &Value) -> Answer {
    try_pay_keyed(gateway, key, body)
        .await
        .unwrap_or_else(|e| panic!("an answer from the gateway: {e}"))
}

async fn try_pay_keyed(
    gateway: &Process,
    key: &str,
    body: &Value,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    post_keyed(&gateway.base, "/v1/payments", key, &body.to_string()).await
}

/// `POST {base}{path}` as the demo merchant with `Idempotency-Key: key`; Err when no answer
/// came (the gateway was killed).
async fn post_keyed(
    base: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let auth = format!("Bearer {KEY}");
    try_send(
        Method::POST,
        &format!("{base}{path}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        body,
    )
    .await
}

/// Polls `GET /v1/payments/{id}` until `done` holds (bounded); the last payment read.
async fn wait_for(
    gateway: &Process,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let answer = get_payment(gateway, KEY, id).await;
        assert_eq!(answer.status, StatusCode::OK, "{id}: {:?}", answer.json);
        if done(&answer.json) || Instant::now() >= deadline {
            return answer.json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_crash_with_calls_in_flight_loses_no_payment_and_a_keyed_retry_never_charges_twice() {
    // The PSP takes 1.5 s: paygate is killed while every call is on its way.
    let a = Process::mock_psp(&["--name", "a", "--latency", "fixed:1500"]).await;
    let text = routes_with(&[("a", &a)], "timeout_ms = 3000", FAST_RECONCILIATION);
    let mut first = Process::gateway(&text).await;
    let routes = first.routes.clone();
    let mut in_flight = Vec::new();
    for n in 0..8 {
        let key = format!("order-{n}");
        let gateway_base = first.base.clone();
        let body = card_payment(1_000 + n, "EUR");
        in_flight.push((
            key.clone(),
            tokio::spawn(async move {
                post_keyed(&gateway_base, "/v1/payments", &key, &body.to_string()).await
            }),
        ));
    }
    // Every call reached the PSP (which records it before its latency), none is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stats().await["payments"].as_u64().unwrap_or(0) < 8 {
        assert!(Instant::now() < deadline, "calls did not reach the PSP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    assert_eq!(
        first.exit_code(Duration::from_secs(5)).await,
        None,
        "killed, no exit code"
    );
    for (_, call) in in_flight {
        assert!(
            call.await.unwrap().is_err(),
            "no answer from a killed gateway"
        );
    }

    let second = Process::gateway_in(&routes).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        // The retry finds the payment its key made before the crash: same id, same channel.
        let retry = pay_keyed(
            &second,
            &format!("order-{n}"),
            &card_payment(1_000 + n, "EUR"),
        )
        .await;
        assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.json);
        assert_eq!(retry.header("idempotent-replayed"), "true");
        assert_eq!(retry.json["channel"], "a", "{:?}", retry.json);
        assert_eq!(retry.json["amount"], 1_000 + n);
        ids.push(retry.json["id"].as_str().unwrap().to_string());
    }
    // Each is reconciled on its channel to what the PSP did (succeeded), by its paygate_id.
    for id in &ids {
        let payment = wait_for(&second, id, Duration::from_secs(15), |p| {
            p["status"] == "succeeded"
        })
        .await;
        assert_eq!(payment["status"], "succeeded", "{payment:?}");
        assert_eq!(payment["reconciled"], true);
        assert!(payment["psp_reference"].is_string(), "{payment:?}");
    }
    // One charge per payment, no more.
    let stats = a.stats().await;
    assert_eq!(stats["payments"], 8, "{stats:?}");
    for id in &ids {
        let seen = send(
            Method::GET,
            &format!("{}/_sim/payments/{id}", a.base),
            &[],
            "",
        )
        .await;
        assert_eq!(seen.json["processed"], 1, "{id}: {:?}", seen.json);
    }
    // A retry with a key whose request changed is still a conflict after the restart.
    let other = pay_keyed(&second, "order-0", &card_payment(5, "EUR")).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_full_journal_disk_refuses_payments_before_any_psp_call_and_recovers() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let mount = scratch_dir().join("journal");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test mounts a small tmpfs (needs root)"
    );
    let _unmount = Unmount(mount.clone());
    let text = routes_with(
        &[("a", &a)],
        "",
        &format!("\n[journal]\npath = \"{}/paygate.db\"\n", mount.display()),
    );
    let gateway = Process::gateway(&text).await;
    let mut charged = 0;
    for n in 0..5 {
        let answer = pay(&gateway, &card_payment(100 + n, "EUR")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        charged += 1;
    }
    let filler = mount.join("filler");
    fill(&filler);

    // Payments go on until one needs new space; from then on none reaches the PSP.
    let mut refused = 0;
    for n in 0..400 {
        let started = Instant::now();
        let answer = pay(&gateway, &card_payment(1_000 + n, "EUR")).await;
        match answer.status {
            StatusCode::CREATED => charged += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.error_type(), "overloaded");
                let message = answer.json["error"]["message"].as_str().unwrap_or("");
                assert!(message.contains("not sent"), "{message}");
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "refused at once"
                );
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {:?}", answer.json),
        }
    }
    assert_eq!(refused, 3, "the full disk was never noticed");
    assert_eq!(
        a.stats().await["payments"],
        charged,
        "no PSP call for a payment whose intent is not on disk"
    );

    // Space again: payments work without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = pay(&gateway, &card_payment(7, "EUR")).await;
        if answer.status == StatusCode::CREATED {
            charged += 1;
            break;
        }
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the journal did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.stats().await["payments"], charged);
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        if file.write_all(&block).is_err() {
            break;
        }
    }
    let small = [0u8; 512];
    for _ in 0..1_000 {
        if file.write_all(&small).and_then(|()| file.flush()).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn the_body_reaches_the_psp_byte_for_byte_and_bad_bodies_are_refused_without_quoting_them() {
    let (url, received) = recorder("", |n| {
        Bytes::from(format!(
            r#"{{"status":"succeeded","psp_reference":"r-{n}"}}"#
        ))
    })
    .await;
    let text = format!(
        "{}\n[[channels]]\nname = \"rec\"\nurl = \"{url}\"\n\n[[rules]]\nname = \"all\"\nchannels = [\"rec\"]\n",
        base_config()
    );
    let gateway = Process::gateway(&text).await;
    let auth = format!("Bearer {KEY}");
    let post = |body: &'static str| {
        let url = format!("{}/v1/payments", gateway.base);
        let auth = auth.clone();
        async move { send(Method::POST, &url, &[("authorization", &auth)], body).await }
    };

    // Digits beyond 64 bits, a long decimal, escapes and spacing inside values: all exact.
    let metadata = r#"{"big": 123456789012345678901234567890, "rate": 0.10000000000000000001, "e": "caf\u00e9"}"#;
    let body = format!(
        r#"{{"amount": 1999, "currency": "EUR", "method": "card", "metadata": {metadata}}}"#
    );
    let answer = send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json);
    let id = answer.json["id"].as_str().unwrap().to_string();
    let forwarded = String::from_utf8(received.lock().unwrap()[0].1.to_vec()).unwrap();
    assert_eq!(
        forwarded,
        format!(
            r#"{{"amount":1999,"currency":"EUR","method":"card","metadata":{metadata},"paygate_id":"{id}"}}"#
        )
    );

    // Refused, nothing sent, and no message repeats a digit of the card.
    let refusals = [
        (
            r#"{"amount": 5, "currency": "EUR", "method": "card", "paygate_id": "pay_forged"}"#,
            "paygate_id",
        ),
        (
            r#""{\"amount\":5,\"currency\":\"EUR\",\"method\":\"card\",\"card\":{\"number\":\"4111111111111111\"}}""#,
            "JSON object",
        ),
        ("4111111111111111", "JSON object"),
        (r#"["4111111111111111"]"#, "JSON object"),
        (
            r#"{"amount": 5, "amount": 7, "currency": "EUR", "method": "card"}"#,
            "amount",
        ),
        (
            r#"{"amount": "4111111111111111", "currency": "EUR", "method": "card"}"#,
            "amount",
        ),
        (
            r#"{"amount": 5, "currency": "EUR", "method": "card", "card": "4111111111111111"}"#,
            "card.number",
        ),
        (
            r#"{"amount": 5, "currency": "EUR", "method": 4111111111111111}"#,
            "method",
        ),
        (
            r#"{"amount": 5, "card": {"number": "4111111111111111"}"#,
            "not valid JSON",
        ),
    ];
    for (body, field) in refusals {
        let answer = post(body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.error_type(), "invalid_request", "{body}");
        let message = answer.json["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{body}: {message}");
        assert!(!message.contains("4111"), "{body}: {message}");
    }
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "no refused body reached the PSP"
    );

    // Still serving.
    let after = post(r#"{"amount": 5, "currency": "EUR", "method": "card"}"#).await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert_eq!(received.lock().unwrap().len(), 2);
}

/// What the merchant was told, to be found again after the crashes.
#[derive(Default)]
struct Acknowledged {
    /// Payment id, key, the status answered, whether it was captured with the authorization.
    payments: Vec<(String, String, String, bool)>,
    /// Payment id, operation id, kind, amount, the status answered.
    operations: Vec<(String, String, &'static str, u64, String)>,
}

/// One cycle of mixed traffic against `gateway` until it is killed: keyed payments (some
/// captured at once), captures and refunds of earlier ones, and keyed retries.
async fn mixed_load(base: String, cycle: usize, acknowledged: Arc<Mutex<Acknowledged>>) {
    for n in 0..200 {
        let key = format!("c{cycle}-p{n}");
        let capture = n % 2 == 0;
        let mut body = card_payment(1_000 + n as u64, "EUR");
        body["capture"] = json!(capture);
        let Ok(paid) = post_keyed(&base, "/v1/payments", &key, &body.to_string()).await else {
            return;
        };
        if !paid.status.is_success() {
            continue;
        }
        let id = paid.json["id"].as_str().unwrap_or_default().to_string();
        let status = paid.json["status"].as_str().unwrap_or_default().to_string();
        acknowledged.lock().unwrap().payments.push((
            id.clone(),
            key.clone(),
            status.clone(),
            capture,
        ));
        if status != "succeeded" {
            continue;
        }
        let (action, kind, amount) = if capture {
            ("refunds", "refund", 100)
        } else {
            ("capture", "capture", 500)
        };
        let path = format!("/v1/payments/{id}/{action}");
        let amount_body = format!("{{\"amount\": {amount}}}");
        let Ok(done) = post_keyed(&base, &path, &format!("{key}-{action}"), &amount_body).await
        else {
            return;
        };
        if done.status == StatusCode::OK {
            let op = done.json["id"].as_str().unwrap_or_default().to_string();
            let op_status = done.json["status"].as_str().unwrap_or_default().to_string();
            acknowledged
                .lock()
                .unwrap()
                .operations
                .push((id.clone(), op, kind, amount, op_status));
        }
        // A keyed retry of the payment: the same payment, never another.
        let Ok(again) = post_keyed(&base, "/v1/payments", &key, &body.to_string()).await else {
            return;
        };
        assert_eq!(again.status, StatusCode::OK, "{:?}", again.json);
        assert_eq!(again.json["id"], id.as_str());
    }
}

#[tokio::test]
async fn three_crashes_under_mixed_load_lose_no_acknowledged_operation_and_charge_nothing_twice() {
    let a = Process::mock_psp(&["--name", "a", "--latency", "uniform:2:40"]).await;
    let text = routes_with(&[("a", &a)], "timeout_ms = 2000", FAST_RECONCILIATION);
    let routes = scratch_dir().join("routes.toml");
    std::fs::write(&routes, &text).unwrap();
    let acknowledged: Arc<Mutex<Acknowledged>> = Arc::default();
    for cycle in 0..3 {
        let mut gateway = Process::gateway_in(&routes).await;
        let workers: Vec<_> = (0..3)
            .map(|worker| {
                tokio::spawn(mixed_load(
                    gateway.base.clone(),
                    cycle * 10 + worker,
                    acknowledged.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        gateway.signal("KILL");
        assert_eq!(gateway.exit_code(Duration::from_secs(5)).await, None);
        for worker in workers {
            worker.await.unwrap();
        }
    }

    let gateway = Process::gateway_in(&routes).await;
    let (payments, operations) = {
        let acknowledged = acknowledged.lock().unwrap();
        (
            acknowledged.payments.clone(),
            acknowledged.operations.clone(),
        )
    };
    assert!(
        payments.len() >= 10,
        "too little traffic: {}",
        payments.len()
    );
    for (id, key, status, capture) in &payments {
        let settled = wait_for(&gateway, id, Duration::from_secs(15), |p| {
            p["status"] != "pending"
        })
        .await;
        let expected = if status == "pending" {
            "succeeded"
        } else {
            status.as_str()
        };
        assert_eq!(settled["status"], expected, "{id}: {settled:?}");
        if *capture && expected == "succeeded" {
            assert_eq!(settled["captured_amount"], settled["amount"], "{settled:?}");
        }
        let mut body = card_payment(0, "EUR");
        body["amount"] = settled["amount"].clone();
        body["capture"] = json!(capture);
        let retry = pay_keyed(&gateway, key, &body).await;
        assert_eq!(retry.status, StatusCode::OK, "{key}: {:?}", retry.json);
        assert_eq!(retry.json["id"], id.as_str());
    }
    for (id, op_id, kind, amount, status) in &operations {
        let payment = wait_for(&gateway, id, Duration::from_secs(15), |p| {
            p["operations"]
                .as_array()
                .is_some_and(|ops| ops.iter().all(|op| op["status"] != "pending"))
        })
        .await;
        let op = payment["operations"]
            .as_array()
            .and_then(|ops| ops.iter().find(|op| op["id"] == op_id.as_str()).cloned())
            .unwrap_or_else(|| panic!("{kind} {op_id} of {id} lost: {payment:?}"));
        let expected = if status == "pending" {
            "succeeded"
        } else {
            status.as_str()
        };
        assert_eq!(op["status"], expected, "{op:?}");
        assert_eq!(op["amount"], *amount);
    }
    // The PSP made exactly one payment per paygate_id, whatever was retried or replayed.
    for (id, ..) in &payments {
        let seen = send(
            Method::GET,
            &format!("{}/_sim/payments/{id}", a.base),
            &[],
            "",
        )
        .await;
        assert_eq!(seen.json["processed"], 1, "{id}: {:?}", seen.json);
    }
}

#[tokio::test]
async fn a_capture_in_flight_at_a_crash_stays_reserved_and_is_settled_by_its_own_key() {
    let a = Process::mock_psp(&["--name", "a", "--latency", "fixed:1200"]).await;
    let text = routes_with(&[("a", &a)], "timeout_ms = 3000", FAST_RECONCILIATION);
    let mut first = Process::gateway(&text).await;
    let routes = first.routes.clone();
    let paid = pay(&first, &card_payment(2_000, "EUR")).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.json);
    let id = paid.json["id"].as_str().unwrap().to_string();

    // The capture reaches the PSP, then paygate dies before the answer.
    let base = first.base.clone();
    let capture_id = id.clone();
    let capture = tokio::spawn(async move {
        let auth = format!("Bearer {KEY}");
        try_send(
            Method::POST,
            &format!("{base}/v1/payments/{capture_id}/capture"),
            &[("authorization", &auth)],
            r#"{"amount": 500}"#,
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stats().await["captures"].as_u64().unwrap_or(0) < 1 {
        assert!(
            Instant::now() < deadline,
            "the capture did not reach the PSP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    assert_eq!(first.exit_code(Duration::from_secs(5)).await, None);
    assert!(
        capture.await.unwrap().is_err(),
        "no answer from a killed gateway"
    );

    let second = Process::gateway_in(&routes).await;
    // In doubt: its amount stays reserved, so no more than the rest can be captured.
    let payment = get_payment(&second, KEY, &id).await.json;
    assert_eq!(payment["operations"][0]["status"], "pending", "{payment:?}");
    let too_much = follow_up(&second, &id, "capture", r#"{"amount": 1600}"#).await;
    assert_eq!(
        too_much.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        too_much.json
    );
    // Re-sent with its own key: the PSP answers the first capture again, it does not capture twice.
    let settled = wait_for(&second, &id, Duration::from_secs(15), |p| {
        p["operations"][0]["status"] != "pending"
    })
    .await;
    assert_eq!(
        settled["operations"][0]["status"], "succeeded",
        "{settled:?}"
    );
    assert_eq!(settled["captured_amount"], 500);
    let stats = a.stats().await;
    assert_eq!(
        stats["duplicates"], 1,
        "the re-send was a duplicate: {stats:?}"
    );
    // The rest can still be captured, once.
    let rest = follow_up(&second, &id, "capture", "").await;
    assert_eq!(rest.status, StatusCode::OK, "{:?}", rest.json);
    assert_eq!(rest.json["amount"], 1_500);
    let after = get_payment(&second, KEY, &id).await.json;
    assert_eq!(after["captured_amount"], 2_000);
}
