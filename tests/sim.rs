//! Black-box tests of `paygate mock-psp`: each test starts the real binary on port 0, learns
//! the port from its listening line, talks `paygate-v1` to it over 127.0.0.1 and checks the
//! answers and `/_sim/stats` exactly. Every wait is bounded.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous for a debug build on a busy two-core machine, still short enough to fail fast.
const STARTUP: Duration = Duration::from_secs(20);
const CALL: Duration = Duration::from_secs(10);

/// A running simulator process, killed when dropped.
struct MockPsp {
    child: Child,
    base: String,
}

impl MockPsp {
    async fn start(flags: &[&str]) -> MockPsp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paygate"))
            .arg("mock-psp")
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start paygate mock-psp");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        tokio::time::timeout(STARTUP, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("listening line in time")
            .expect("read listening line");
        let (_, base) = line
            .trim()
            .split_once(" listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        MockPsp {
            child,
            base: base.to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value) {
        call(&http_client(), &self.base, method, path, headers, body)
            .await
            .expect("answer")
    }

    async fn pay(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let headers = [("idempotency-key", key)];
        self.call(Method::POST, "/payments", &headers, &body.to_string())
            .await
    }

    async fn stats(&self) -> Value {
        let (status, stats) = self.call(Method::GET, "/_sim/stats", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        stats
    }
}

impl Drop for MockPsp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request; the error is the transport error (a reset, say) as text.
async fn call<C>(
    client: &Client<C, Full<Bytes>>,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(StatusCode, Value), String>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(CALL, client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|error| format!("{error:?}"))?;
    let status = response.status();
    let bytes = tokio::time::timeout(CALL, response.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|error| error.to_string())?
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|error| format!("{error}: {bytes:?}"))?
    };
    Ok((status, value))
}

fn payment(amount: u64, card: &str) -> Value {
    json!({
        "amount": amount,
        "currency": "EUR",
        "method": "card",
        "paygate_id": "pay_1",
        "card": { "number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123" },
        "metadata": { "order": "o-1" }
    })
}

fn answer(status: &str, reference: &str, code: Option<&str>) -> Value {
    json!({ "status": status, "psp_reference": reference, "decline_code": code })
}

#[tokio::test]
async fn success_rate_one_succeeds_and_records_the_request() {
    let psp = MockPsp::start(&["--name", "alpha", "--success-rate", "1.0"]).await;
    assert!(psp.base.starts_with("http://127.0.0.1:"), "{}", psp.base);
    let headers = [
        ("idempotency-key", "pay_1"),
        ("authorization", "Bearer sk_test"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ];
    let body = payment(1999, "4111111111111111").to_string();
    let (status, body) = psp.call(Method::POST, "/payments", &headers, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, answer("succeeded", "alpha-1", None));

    let stats = psp.stats().await;
    assert_eq!(stats["name"], "alpha");
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["outcomes"]["succeeded"], 1);
    assert_eq!(stats["stored_payments"], 1);
    assert_eq!(stats["idempotency_keys"], json!({ "pay_1": 1 }));
    assert_eq!(
        stats["recent"],
        json!([{
            "method": "POST", "path": "/payments", "idempotency_key": "pay_1",
            "paygate_id": "pay_1", "amount": 1999, "currency": "EUR",
            "authorization": "Bearer sk_test",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        }])
    );
    let text = stats.to_string();
    assert!(
        !text.contains("4111111111111111") && !text.contains("2030"),
        "{text}"
    );
}

#[tokio::test]
async fn success_rate_zero_declines_with_the_listed_codes() {
    let psp = MockPsp::start(&[
        "--success-rate",
        "0",
        "--decline-codes",
        "do_not_honor,expired_card",
    ])
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for index in 0..40 {
        let (status, body) = psp
            .pay(&format!("k{index}"), payment(100, "4111111111111111"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "declined");
        assert_eq!(body["psp_reference"], format!("mock-{}", index + 1));
        seen.insert(
            body["decline_code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    // Both codes appear in 40 uniform draws except with probability 2^-39.
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["do_not_honor", "expired_card"]
    );
    let stats = psp.stats().await;
    assert_eq!(stats["outcomes"]["declined"], 40);
    assert_eq!(stats["outcomes"]["succeeded"], 0);
}

#[tokio::test]
async fn test_cards_override_the_random_outcome() {
    let psp = MockPsp::start(&["--success-rate", "1", "--name", "t"]).await;
    let cases = [
        (
            "4000000000000002",
            answer("declined", "t-1", Some("card_declined")),
        ),
        (
            "4000000000009995",
            answer("declined", "t-2", Some("insufficient_funds")),
        ),
        (
            "4000000000000119",
            answer("declined", "t-3", Some("issuer_unavailable")),
        ),
        ("4000000000000259", answer("pending", "t-4", None)),
        ("4111111111111111", answer("succeeded", "t-5", None)),
    ];
    for (index, (card, expected)) in cases.iter().enumerate() {
        let (status, body) = psp.pay(&format!("card{index}"), payment(500, card)).await;
        assert_eq!((status, &body), (StatusCode::OK, expected), "{card}");
    }
    let stats = psp.stats().await;
    assert_eq!(stats["outcomes"]["declined"], 3);
    assert_eq!(stats["outcomes"]["pending"], 1);
    assert_eq!(stats["outcomes"]["succeeded"], 1);
}

#[tokio::test]
async fn error_503_processes_nothing() {
    let psp = MockPsp::start(&["--error-503", "1.0"]).await;
    let (status, body) = psp.pay("k1", payment(100, "4111111111111111")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "unavailable" })
        )
    );
    let (status, _) = psp.call(Method::GET, "/payments/mock-1", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let stats = psp.stats().await;
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["payments"], 0);
    assert_eq!(stats["status_queries"], 0);
    assert_eq!(stats["stored_payments"], 0);
    assert_eq!(stats["idempotency_keys"], json!({}));
    assert_eq!(stats["outcomes"]["error_503"], 1);
    assert_eq!(stats["outcomes"]["succeeded"], 0);
    assert_eq!(stats["faults"]["error_503"], 2);
}

#[tokio::test]
async fn error_500_stores_the_payment_it_does_not_answer() {
    let psp = MockPsp::start(&["--error-500", "1.0"]).await;
    let (status, body) = psp.pay("k1", payment(100, "4111111111111111")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "internal_error" })
        )
    );
    let stats = psp.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["stored_payments"], 1);
    assert_eq!(stats["outcomes"]["error_500"], 1);
    assert_eq!(stats["idempotency_keys"], json!({ "k1": 1 }));
}

#[tokio::test]
async fn reset_drops_the_connection_after_processing() {
    let psp = MockPsp::start(&["--reset", "1.0"]).await;
    let headers = [("idempotency-key", "k1")];
    let body = payment(100, "4111111111111111").to_string();
    let result = call(
        &http_client(),
        &psp.base,
        Method::POST,
        "/payments",
        &headers,
        &body,
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    let stats = psp.stats().await;
    assert_eq!(stats["outcomes"]["reset"], 1);
    assert_eq!(stats["stored_payments"], 1);
}

#[tokio::test]
async fn duplicate_keys_are_answered_identically_and_counted_twice() {
    let psp = MockPsp::start(&["--success-rate", "0.5"]).await;
    let (first_status, first) = psp.pay("dup", payment(700, "4111111111111111")).await;
    let (second_status, second) = psp.pay("dup", payment(700, "4111111111111111")).await;
    assert_eq!(first_status, StatusCode::OK);
    assert_eq!((second_status, &second), (first_status, &first));
    assert_eq!(first["psp_reference"], "mock-1");
    let (_, other) = psp.pay("other", payment(700, "4111111111111111")).await;
    assert_eq!(other["psp_reference"], "mock-2");

    let stats = psp.stats().await;
    assert_eq!(stats["payments"], 3);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["stored_payments"], 2);
    assert_eq!(stats["idempotency_keys"], json!({ "dup": 2, "other": 1 }));
}

#[tokio::test]
async fn captures_and_refunds_respect_the_amounts() {
    let psp = MockPsp::start(&["--name", "c"]).await;
    let (_, paid) = psp.pay("p1", payment(1000, "4111111111111111")).await;
    assert_eq!(paid, answer("succeeded", "c-1", None));
    let post = |path: &'static str, body: &'static str| psp.call(Method::POST, path, &[], body);

    let refund_early = post("/payments/c-1/refunds", "{}").await;
    assert_eq!(
        refund_early,
        (
            StatusCode::OK,
            answer("declined", "c-2", Some("payment_not_captured"))
        )
    );
    let partial = post(
        "/payments/c-1/capture",
        r#"{"amount":600,"paygate_id":"cap_1"}"#,
    )
    .await;
    assert_eq!(partial, (StatusCode::OK, answer("succeeded", "c-3", None)));
    let too_much = post("/payments/c-1/capture", r#"{"amount":500}"#).await;
    assert_eq!(
        too_much,
        (
            StatusCode::OK,
            answer("declined", "c-4", Some("invalid_amount"))
        )
    );
    let rest = post("/payments/c-1/capture", "").await;
    assert_eq!(rest, (StatusCode::OK, answer("succeeded", "c-5", None)));
    let over_refund = post("/payments/c-1/refunds", r#"{"amount":1001}"#).await;
    assert_eq!(
        over_refund,
        (
            StatusCode::OK,
            answer("declined", "c-6", Some("invalid_amount"))
        )
    );
    let refund = post("/payments/c-1/refunds", r#"{"amount":1000}"#).await;
    assert_eq!(refund, (StatusCode::OK, answer("succeeded", "c-7", None)));
    let unknown = post("/payments/c-999/capture", "{}").await;
    assert_eq!(
        unknown,
        (
            StatusCode::NOT_FOUND,
            answer("declined", "c-999", Some("unknown_payment"))
        )
    );

    let mut captured = payment(300, "4111111111111111");
    captured["capture"] = json!(true);
    let (_, auto) = psp.pay("p2", captured).await;
    assert_eq!(auto["psp_reference"], "c-8");
    let capture_again = post("/payments/c-8/capture", "{}").await;
    assert_eq!(capture_again.1["decline_code"], "invalid_amount");
    let refund_auto = post("/payments/c-8/refunds", r#"{"amount":300}"#).await;
    assert_eq!(refund_auto.1["status"], "succeeded");

    let stats = psp.stats().await;
    assert_eq!(stats["captures"], 5);
    assert_eq!(stats["refunds"], 4);
    assert_eq!(stats["payments"], 2);
}

#[tokio::test]
async fn pending_resolves_after_the_configured_time() {
    let psp = MockPsp::start(&["--pending-rate", "1", "--pending-resolves-ms", "300"]).await;
    let started = std::time::Instant::now();
    let (_, paid) = psp.pay("p1", payment(100, "4111111111111111")).await;
    assert_eq!(paid, answer("pending", "mock-1", None));
    let (_, card) = psp.pay("p2", payment(100, "4000000000000259")).await;
    assert_eq!(card["status"], "pending");

    let mut resolved = None;
    for _ in 0..50 {
        let (status, read) = psp.call(Method::GET, "/payments/mock-1", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        if read["status"] == "succeeded" {
            resolved = Some(started.elapsed());
            break;
        }
        assert_eq!(read, answer("pending", "mock-1", None));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resolved = resolved.expect("pending payment resolved within 2.5 s");
    assert!(resolved >= Duration::from_millis(300), "{resolved:?}");
    let (_, unknown) = psp.call(Method::GET, "/payments/mock-77", &[], "").await;
    assert_eq!(
        unknown,
        answer("declined", "mock-77", Some("unknown_payment"))
    );
}

#[tokio::test]
async fn schedule_switches_from_success_to_503() {
    let path = std::env::temp_dir().join(format!("mock-psp-schedule-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[phase]]\nat_secs = 1\nbehavior = { error_503 = 1.0 }\n",
    )
    .expect("write schedule");
    let psp = MockPsp::start(&["--schedule", path.to_str().expect("utf-8 path")]).await;
    let _ = std::fs::remove_file(&path);
    let (status, first) = psp.pay("s0", payment(100, "4111111111111111")).await;
    // The phase starts one second after start-up; the first call is well inside it.
    assert_eq!(
        (status, first),
        (StatusCode::OK, answer("succeeded", "mock-1", None))
    );

    let mut switched = false;
    for index in 1..40 {
        let (status, _) = psp
            .pay(&format!("s{index}"), payment(100, "4111111111111111"))
            .await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "no 503 within 4 s");
    let (status, _) = psp.pay("after", payment(100, "4111111111111111")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn bad_requests_get_400_and_the_server_stays_up() {
    let psp = MockPsp::start(&[]).await;
    let bad_json = psp
        .call(Method::POST, "/payments", &[], "{\"amount\": 10,")
        .await;
    assert_eq!(bad_json.0, StatusCode::BAD_REQUEST);
    assert!(
        bad_json.1["error"]
            .as_str()
            .is_some_and(|e| e.contains("not valid JSON")),
        "{:?}",
        bad_json.1
    );
    let float = psp
        .call(Method::POST, "/payments", &[], r#"{"amount": 19.99}"#)
        .await;
    assert_eq!(
        float,
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "amount must be a positive integer in minor units" })
        )
    );
    let missing = psp
        .call(Method::POST, "/payments", &[], r#"{"currency": "EUR"}"#)
        .await;
    assert_eq!(missing.0, StatusCode::BAD_REQUEST);
    let typed_card = r#"{"amount": 5, "card": {"number": 4111111111111111}}"#;
    let wrong_type = psp.call(Method::POST, "/payments", &[], typed_card).await;
    assert_eq!(wrong_type.0, StatusCode::BAD_REQUEST);
    assert!(
        !wrong_type.1.to_string().contains("4111"),
        "{}",
        wrong_type.1
    );
    let nowhere = psp.call(Method::GET, "/nowhere", &[], "").await;
    assert_eq!(nowhere.0, StatusCode::NOT_FOUND);

    let (status, body) = psp.pay("ok", payment(100, "4111111111111111")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, answer("succeeded", "mock-1", None))
    );
    let stats = psp.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["requests"], 6);
}

#[tokio::test]
async fn reset_endpoint_clears_stats_and_payments() {
    let psp = MockPsp::start(&[]).await;
    psp.pay("k", payment(100, "4111111111111111")).await;
    let (status, _) = psp.call(Method::POST, "/_sim/reset", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let stats = psp.stats().await;
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["stored_payments"], 0);
    assert_eq!(stats["idempotency_keys"], json!({}));
    let (status, _) = psp.call(Method::GET, "/payments/mock-1", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let psp = MockPsp::start(&[]).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let body = payment(100, "4111111111111111").to_string();
    let result = call(&client, &psp.base, Method::POST, "/payments", &[], &body).await;
    assert_eq!(
        result,
        Ok((StatusCode::OK, answer("succeeded", "mock-1", None)))
    );
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("mock-psp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let issued =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, issued.cert.pem()).expect("write cert");
    std::fs::write(&key, issued.signing_key.serialize_pem()).expect("write key");
    let flags = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ];
    let psp = MockPsp::start(&flags).await;
    assert!(psp.base.starts_with("https://127.0.0.1:"), "{}", psp.base);

    let tls = paygate::tls::client_config(Some(&cert), None).expect("client config");
    let _ = std::fs::remove_dir_all(&dir);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let body = payment(100, "4111111111111111").to_string();
    let result = call(&client, &psp.base, Method::POST, "/payments", &[], &body).await;
    assert_eq!(
        result,
        Ok((StatusCode::OK, answer("succeeded", "mock-1", None)))
    );
}

#[tokio::test]
async fn invalid_flags_exit_with_every_problem() {
    let output = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args([
            "mock-psp",
            "--listen",
            "127.0.0.1:0",
            "--success-rate",
            "1.5",
            "--latency",
            "uniform:50:5",
        ])
        .output();
    let output = tokio::time::timeout(STARTUP, output)
        .await
        .expect("exit in time")
        .expect("run");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("success_rate is 1.5"), "{stderr}");
    assert!(
        stderr.contains("min_ms (50) is greater than max_ms (5)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_simulator() {
    let mut psp = MockPsp::start(&[]).await;
    let id = psp.child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &id.to_string()])
        .status();
    assert!(killed.expect("kill").success());
    let status = tokio::time::timeout(STARTUP, psp.child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn lookup_by_paygate_id_finds_what_was_processed_and_nothing_else() {
    let psp = MockPsp::start(&[
        "--name",
        "a",
        "--error-500",
        "1.0",
        "--fault-scope",
        "payments",
    ])
    .await;
    let (status, _) = psp
        .pay("pay_looked_up", payment(100, "4111111111111111"))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // Faults hit payments only: the lookup answers, with the payment the 500 hid.
    let (status, found) = psp
        .call(
            Method::GET,
            "/payments/by-paygate-id/pay_looked_up",
            &[],
            "",
        )
        .await;
    assert_eq!(
        (status, found),
        (StatusCode::OK, answer("succeeded", "a-1", None))
    );
    let (status, seen) = psp
        .call(Method::GET, "/_sim/payments/pay_looked_up", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen,
        json!({ "paygate_id": "pay_looked_up", "requests": 1, "processed": 1, "status": "succeeded", "psp_reference": "a-1" })
    );
    for (path, expected) in [
        (
            "/payments/by-paygate-id/pay_never_sent",
            StatusCode::NOT_FOUND,
        ),
        (
            &*format!("/payments/by-paygate-id/{}", "p".repeat(300)),
            StatusCode::BAD_REQUEST,
        ),
        ("/_sim/payments/pay_never_sent", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = psp.call(Method::GET, path, &[], "").await;
        assert_eq!(status, expected, "{path}: {body:?}");
    }
    let stats = psp.stats().await;
    assert_eq!(stats["lookups"], 3, "the overlong one too");
    assert_eq!(stats["payments"], 1);
}

#[tokio::test]
async fn a_payment_refused_unprocessed_is_not_found_by_lookup() {
    let psp = MockPsp::start(&["--error-503", "1.0", "--fault-scope", "payments"]).await;
    let (status, _) = psp
        .pay("pay_refused", payment(100, "4111111111111111"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = psp
        .call(Method::GET, "/payments/by-paygate-id/pay_refused", &[], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The raw answer to one payment: status, and the body bytes that arrived before `within`
/// ran out or the connection ended (Err: it was aborted).
async fn raw_answer(psp: &MockPsp, within: Duration) -> (StatusCode, Result<Vec<u8>, Vec<u8>>) {
    let request = Request::post(format!("{}/payments", psp.base))
        .header("idempotency-key", "pay_raw")
        .body(Full::new(Bytes::from(
            payment(100, "4111111111111111").to_string(),
        )))
        .expect("request");
    let response = tokio::time::timeout(CALL, http_client().request(request))
        .await
        .expect("head in time")
        .expect("a head");
    let status = response.status();
    let mut body = response.into_body();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) | Ok(None) => return (status, Ok(received)),
            Ok(Some(Err(_))) => return (status, Err(received)),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
        }
    }
}

#[tokio::test]
async fn faults_after_processing_answer_as_broken_psps_do() {
    let long = Duration::from_secs(5);
    let psp = MockPsp::start(&["--name", "g", "--garbage", "1.0"]).await;
    let (status, body) = raw_answer(&psp, long).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        serde_json::from_slice::<Value>(&body.unwrap()).is_err(),
        "not JSON"
    );

    let psp = MockPsp::start(&["--name", "u", "--unknown-status", "1.0"]).await;
    let (_, body) = raw_answer(&psp, long).await;
    let body: Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({ "status": "authorised_maybe", "psp_reference": "u-1" })
    );

    let psp = MockPsp::start(&["--name", "m", "--missing-reference", "1.0"]).await;
    let (_, body) = raw_answer(&psp, long).await;
    let body: Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(body, json!({ "status": "succeeded" }));

    let psp = MockPsp::start(&["--huge-body", "1.0"]).await;
    let (_, body) = raw_answer(&psp, long).await;
    assert!(body.unwrap().len() > 8 * 1024 * 1024);

    let psp = MockPsp::start(&["--reset-mid-body", "1.0"]).await;
    let (status, body) = raw_answer(&psp, long).await;
    assert_eq!(status, StatusCode::OK);
    let cut = body.expect_err("aborted mid-body");
    assert!(!cut.is_empty(), "part of the body came first");

    let psp = MockPsp::start(&["--endless-body", "1.0"]).await;
    let (_, body) = raw_answer(&psp, Duration::from_millis(500)).await;
    assert!(
        body.unwrap().len() > 64 * 1024,
        "still streaming after 64 KiB"
    );

    let psp = MockPsp::start(&["--dribble", "1.0", "--dribble-interval-ms", "100"]).await;
    let (_, body) = raw_answer(&psp, Duration::from_millis(550)).await;
    let dribbled = body.unwrap().len();
    assert!(
        (3..=7).contains(&dribbled),
        "about one byte per 100 ms: {dribbled}"
    );

    // The payment behind the dribble was made, and the lookup finds it.
    let (status, _) = psp
        .call(Method::GET, "/payments/by-paygate-id/pay_raw", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(psp.stats().await["outcomes"]["dribble"], 1);
}

#[tokio::test]
async fn a_request_on_a_connection_left_idle_is_dropped_unread() {
    let psp = MockPsp::start(&["--idle-close-ms", "100"]).await;
    let client = http_client();
    let body = payment(100, "4111111111111111").to_string();
    let pay = |key: &'static str| {
        let client = client.clone();
        let base = psp.base.clone();
        let body = body.clone();
        async move {
            call(
                &client,
                &base,
                Method::POST,
                "/payments",
                &[("idempotency-key", key)],
                &body,
            )
            .await
        }
    };
    assert!(pay("k1").await.is_ok());
    // Soon after: the same connection still works.
    assert!(pay("k2").await.is_ok());
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Idle too long: the pooled connection is closed under the request, unprocessed.
    assert!(pay("k3").await.is_err());
    let stats = psp.stats().await;
    assert_eq!(stats["idle_closed"], 1);
    assert_eq!(stats["payments"], 2, "k3 was never processed");
    // A fresh connection is served.
    assert!(pay("k3").await.is_ok());
}
