//! Bad input gets the contract's JSON error with the right status and type, never a panic, a
//! hang or a dropped connection, and the gateway keeps serving afterwards. Nothing bad reaches
//! the simulator.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway_with_sim(server_extra: &str) -> (Process, Process) {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let routes = format!(
        "{}{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config().replace("[server]\n", &format!("[server]\n{server_extra}\n")),
        channel("psp", &sim, ""),
        ""
    );
    (Process::gateway(&routes).await, sim)
}

async fn post_raw(gateway: &Process, headers: &[(&str, &str)], body: &str) -> Answer {
    send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        headers,
        body,
    )
    .await
}

fn assert_error(answer: &Answer, status: StatusCode, kind: &str, needle: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.json);
    assert_eq!(answer.error_type(), kind, "{:?}", answer.json);
    let message = answer.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(needle),
        "{message:?} should name {needle:?}"
    );
    assert_eq!(
        answer.json["error"]["request_id"],
        answer.header("x-request-id")
    );
    assert!(!answer.header("x-request-id").is_empty());
}

#[tokio::test]
async fn each_bad_payment_gets_its_error() {
    let (gateway, sim) = gateway_with_sim("max_body_bytes = 2048").await;
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let valid = || card_payment(1999, "EUR");
    let with = |field: &str, value: Value| {
        let mut body = valid();
        body[field] = value;
        body.to_string()
    };
    let cases: Vec<(String, StatusCode, &str, &str)> = vec![
        (
            "{\"amount\": 19".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "JSON",
        ),
        (
            "[1, 2]".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "JSON object",
        ),
        (
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "JSON",
        ),
        (
            with("amount", json!(-5)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount",
        ),
        (
            with("amount", json!(0)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount",
        ),
        (
            with("amount", json!(19.99)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount",
        ),
        (
            with("amount", json!("1999")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount",
        ),
        (
            with("amount", Value::Null),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount",
        ),
        (
            with("currency", json!("EURO")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "currency",
        ),
        (
            with("currency", json!("XYZ")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "currency",
        ),
        (
            with("currency", json!(978)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "currency",
        ),
        (
            with("method", json!(["card"])),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "method",
        ),
        (
            with("country", json!("Germany")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "country",
        ),
        (
            with("capture", json!("yes")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "capture",
        ),
        (
            with("card", json!({"number": "4111-1111"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "card.number",
        ),
        (
            with("metadata", json!("x".repeat(4096))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "2048",
        ),
    ];
    for (body, status, kind, needle) in &cases {
        let answer = post_raw(&gateway, &headers, body).await;
        assert_error(&answer, *status, kind, needle);
        let message = answer.json["error"]["message"].as_str().unwrap_or("");
        assert!(!message.contains("4111"), "card digits leaked: {message}");
    }
    // Nothing bad reached the PSP, and the gateway still pays.
    assert_eq!(sim.stats().await["payments"], 0);
    let paid = pay(&gateway, &valid()).await;
    assert_eq!(paid.status, StatusCode::CREATED);
    assert_eq!(sim.stats().await["payments"], 1);
}

#[tokio::test]
async fn authentication_routes_and_methods() {
    let (gateway, sim) = gateway_with_sim("").await;
    let body = card_payment(100, "EUR").to_string();
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some("Basic ZGVtbzpkZW1v"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let answer = post_raw(&gateway, &headers, &body).await;
        assert_error(
            &answer,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "API key",
        );
    }
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let base = &gateway.base;
    let unknown = send(Method::GET, &format!("{base}/v1/refunds"), &headers, "").await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", "/v1/refunds");
    let outside = send(Method::GET, &format!("{base}/"), &[], "").await;
    assert_error(&outside, StatusCode::NOT_FOUND, "not_found", "/");
    let wrong = send(Method::GET, &format!("{base}/v1/payments"), &headers, "").await;
    assert_error(
        &wrong,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST",
    );
    assert_eq!(wrong.header("allow"), "POST");
    let wrong = send(
        Method::DELETE,
        &format!("{base}/v1/payments/pay_1"),
        &headers,
        "",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    let missing = get_payment(&gateway, KEY, "pay_unknown").await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found", "pay_unknown");

    // A client-chosen request id is echoed.
    let mine = send(
        Method::GET,
        &format!("{base}/v1/payments/pay_x"),
        &[
            ("authorization", auth.as_str()),
            ("x-request-id", "merchant-req-77"),
        ],
        "",
    )
    .await;
    assert_eq!(mine.header("x-request-id"), "merchant-req-77");
    assert_eq!(mine.json["error"]["request_id"], "merchant-req-77");
    assert_eq!(sim.stats().await["payments"], 0);
}

#[tokio::test]
async fn too_many_headers_is_refused_with_json() {
    let (gateway, sim) = gateway_with_sim("max_headers = 20").await;
    let auth = format!("Bearer {KEY}");
    let names: Vec<String> = (0..30).map(|i| format!("x-filler-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("authorization", &auth));
    let answer = post_raw(&gateway, &headers, &card_payment(100, "EUR").to_string()).await;
    assert_error(
        &answer,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "too_many_headers",
        "20",
    );
    assert_eq!(sim.stats().await["payments"], 0);
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let (mut gateway, _sim) =
        gateway_with_sim("header_read_timeout_ms = 300\nrequest_timeout_ms = 800").await;
    let addr = gateway.base.trim_start_matches("http://").to_string();

    // Headers that never finish: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "the connection should be closed, not left hanging"
    );

    // A body that never arrives: 408 within the request timeout.
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 500\r\n\r\n{{\"amount\":"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), trickle.read(&mut answer))
        .await
        .expect("an answer before the test gives up")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");

    assert!(gateway.is_running());
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
}
