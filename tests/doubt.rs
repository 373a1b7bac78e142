//! Payments in doubt, through the real binary against `paygate mock-psp` misbehaving the way
//! real PSPs do after they processed a payment: reset before or during the answer, garbage,
//! an unknown status, no reference, 500, an endless or huge body, a dribble past the
//! timeout, an answer just after it. For each: the merchant is told `pending` (202) on the
//! channel that got the payment, the payment is never sent to another channel, the PSP made
//! one payment for the paygate_id, and reconciliation brings it to the PSP's status within
//! seconds, with the signed webhook sent. A pooled connection the PSP closed while idle is
//! sent again on a fresh one instead of leaving the payment in doubt.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

const SECRET: &str = "whsec_doubt";
const MERCHANT_KEY: &str = "doubt-key";
/// The channel's timeout in these tests: short, so that reconciliation may ask soon.
const TIMEOUT_MS: u64 = 600;

/// Two channels: `a` (the faulty PSP, first by priority) and `b`, which must never see the
/// payment; a merchant that signs and has a webhook; fast reconciliation.
fn routes(a: &Process, b: &Process, webhook: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[reconciliation]
interval_ms = 100
max_backoff_ms = 300

[[merchants]]
id = "doubt"
api_key_sha256 = "{}"
signing_secret = "env:DOUBT_SECRET"
webhook_url = "{webhook}"

[[channels]]
name = "a"
url = "{}"
timeout_ms = {TIMEOUT_MS}

[[channels]]
name = "b"
url = "{}"

[[rules]]
name = "all"
channels = ["a", "b"]
strategy = "priority"
"#,
        sha256_hex(MERCHANT_KEY),
        a.base,
        b.base
    )
}

async fn signed(gateway: &Process, method: Method, target: &str, body: &str) -> Answer {
    let signature = merchant_signature(SECRET, unix_now(), method.as_str(), target, body);
    let auth = format!("Bearer {MERCHANT_KEY}");
    send(
        method,
        &format!("{}{target}", gateway.base),
        &[("authorization", &auth), ("paygate-signature", &signature)],
        body,
    )
    .await
}

/// The payment once it is no longer pending (or as it is after 10 s).
async fn settled(gateway: &Process, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = signed(gateway, Method::GET, &format!("/v1/payments/{id}"), "").await;
        if read.json["status"] != "pending" || Instant::now() >= deadline {
            return read.json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One fault mode, end to end: `flags` make the PSP process every payment and then fail to
/// answer it properly.
async fn reconciled_after(flags: &[&str]) {
    let mut args = vec!["--name", "a", "--fault-scope", "payments"];
    args.extend_from_slice(flags);
    let a = Process::mock_psp(&args).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let (webhook, hooks) = recorder("/hooks/doubt?v=1", |_| Bytes::new()).await;
    let gateway =
        Process::gateway_with_env(&routes(&a, &b, &webhook), &[("DOUBT_SECRET", SECRET)]).await;

    let body = card_payment(4_200, "EUR").to_string();
    let started = Instant::now();
    let answer = signed(&gateway, Method::POST, "/v1/payments", &body).await;
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "{flags:?}: {:?}",
        answer.json
    );
    assert_eq!(answer.json["status"], "pending");
    assert_eq!(
        answer.json["channel"], "a",
        "the payment stays where it went"
    );
    assert!(answer.json["psp_reference"].is_null());
    assert!(
        started.elapsed() < Duration::from_millis(TIMEOUT_MS + 3_000),
        "{flags:?}: answered after {:?}",
        started.elapsed()
    );
    let id = answer.json["id"].as_str().unwrap().to_string();

    // Reconciled on `a`, by paygate_id, to what `a` did.
    let settled = settled(&gateway, &id).await;
    let seen = send(
        Method::GET,
        &format!("{}/_sim/payments/{id}", a.base),
        &[],
        "",
    )
    .await;
    assert_eq!(seen.status, StatusCode::OK, "{flags:?}");
    assert_eq!(
        seen.json["processed"], 1,
        "{flags:?}: one payment at the PSP"
    );
    assert_eq!(settled["status"], "succeeded", "{flags:?}: {settled:?}");
    assert_eq!(settled["reconciled"], true);
    assert_eq!(settled["channel"], "a");
    assert_eq!(
        settled["psp_reference"], seen.json["psp_reference"],
        "{flags:?}"
    );
    assert!(
        a.stats().await["lookups"].as_u64().unwrap() >= 1,
        "{flags:?}"
    );
    assert_eq!(
        b.stats().await["requests"],
        0,
        "{flags:?}: never sent elsewhere"
    );

    // The merchant is told, signed over the webhook's own POST and path.
    let (signature, hook) = first_received(&hooks).await;
    let event: Value = serde_json::from_slice(&hook).unwrap();
    assert_eq!(event["payment"]["id"], id.as_str());
    assert_eq!(event["payment"]["status"], "succeeded");
    let t: u64 = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{flags:?}: signature {signature:?}"));
    let expected = merchant_signature(
        SECRET,
        t,
        "POST",
        "/hooks/doubt?v=1",
        std::str::from_utf8(&hook).unwrap(),
    );
    assert_eq!(signature, expected, "{flags:?}");
}

#[tokio::test]
async fn reset_after_reading_the_request() {
    reconciled_after(&["--reset", "1"]).await;
}

#[tokio::test]
async fn reset_in_the_middle_of_the_answer() {
    reconciled_after(&["--reset-mid-body", "1"]).await;
}

#[tokio::test]
async fn garbage_for_an_answer() {
    reconciled_after(&["--garbage", "1"]).await;
}

#[tokio::test]
async fn a_status_the_protocol_does_not_have() {
    reconciled_after(&["--unknown-status", "1"]).await;
}

#[tokio::test]
async fn succeeded_without_a_psp_reference() {
    reconciled_after(&["--missing-reference", "1"]).await;
}

#[tokio::test]
async fn http_500_after_processing() {
    reconciled_after(&["--error-500", "1"]).await;
}

#[tokio::test]
async fn a_body_that_never_ends() {
    reconciled_after(&["--endless-body", "1"]).await;
}

#[tokio::test]
async fn a_body_beyond_max_response_bytes() {
    reconciled_after(&["--huge-body", "1"]).await;
}

#[tokio::test]
async fn an_answer_dribbled_past_the_timeout() {
    reconciled_after(&["--dribble", "1", "--dribble-interval-ms", "100"]).await;
}

#[tokio::test]
async fn an_answer_just_after_the_timeout() {
    let late = (TIMEOUT_MS + 150).to_string();
    reconciled_after(&["--late", "1", "--late-ms", &late]).await;
}

#[tokio::test]
async fn a_payment_the_psp_never_received_is_failed_with_nothing_charged() {
    // Every call hangs unprocessed: the PSP has no payment for the paygate_id.
    let a = Process::mock_psp(&["--name", "a", "--hang", "1", "--fault-scope", "payments"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let (webhook, hooks) = recorder("/hooks/doubt?v=1", |_| Bytes::new()).await;
    let gateway =
        Process::gateway_with_env(&routes(&a, &b, &webhook), &[("DOUBT_SECRET", SECRET)]).await;
    let body = card_payment(4_300, "EUR").to_string();
    let answer = signed(&gateway, Method::POST, "/v1/payments", &body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.json);
    let id = answer.json["id"].as_str().unwrap().to_string();
    let settled = settled(&gateway, &id).await;
    assert_eq!(settled["status"], "failed", "{settled:?}");
    assert_eq!(settled["reconciled"], true);
    assert_eq!(settled["captured_amount"], 0);
    let seen = send(
        Method::GET,
        &format!("{}/_sim/payments/{id}", a.base),
        &[],
        "",
    )
    .await;
    assert_eq!(seen.json["processed"], 0);
    assert_eq!(b.stats().await["requests"], 0, "never sent elsewhere");
    let (_, hook) = first_received(&hooks).await;
    let event: Value = serde_json::from_slice(&hook).unwrap();
    assert_eq!(event["payment"]["status"], "failed");
}

#[tokio::test]
async fn a_pooled_connection_the_psp_closed_is_sent_again_on_a_fresh_one() {
    // Like a load balancer that drops keep-alive connections idle for 100 ms.
    let a = Process::mock_psp(&["--name", "a", "--idle-close-ms", "100"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let (webhook, _hooks) = recorder("/hooks/doubt?v=1", |_| Bytes::new()).await;
    let gateway =
        Process::gateway_with_env(&routes(&a, &b, &webhook), &[("DOUBT_SECRET", SECRET)]).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let body = card_payment(100 + n, "EUR").to_string();
        let answer = signed(&gateway, Method::POST, "/v1/payments", &body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "payment {n}: {:?}",
            answer.json
        );
        assert_eq!(answer.json["status"], "succeeded");
        assert_eq!(answer.json["channel"], "a");
        ids.push(answer.json["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = a.stats().await;
    let closed = stats["idle_closed"].as_u64().unwrap();
    assert!(closed >= 3, "the PSP closed idle connections: {stats:?}");
    for id in &ids {
        let seen = send(
            Method::GET,
            &format!("{}/_sim/payments/{id}", a.base),
            &[],
            "",
        )
        .await;
        assert_eq!(seen.json["processed"], 1, "{id}");
    }
    assert_eq!(stats["payments"], 8, "each payment made once, none lost");
    assert_eq!(b.stats().await["requests"], 0);
    let text = gateway.metrics().await;
    let resent = text
        .lines()
        .find(|l| l.starts_with("paygate_channel_resends_total{channel=\"a\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        resent,
        Some(closed),
        "every closed connection was resent once:\n{text}"
    );
}
