//! The merchant edge cannot be abused, through the real binary: a signature is good for one
//! method, path and body only; silent, idle and surplus connections are closed and their
//! descriptors freed; ambiguous HTTP framing is refused before anything runs; admin errors
//! carry the request id. Every network call is on 127.0.0.1 and bounded in time.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "whsec_edge";
/// Longest any single wait in these tests may take.
const BOUND: Duration = Duration::from_secs(10);

/// A gateway on one simulator `psp`, with `server_extra` in `[server]` and `extra` after the
/// merchants.
async fn gateway_with(
    server_extra: &str,
    extra: &str,
    envs: &[(&str, &str)],
) -> (Process, Process) {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let routes = format!(
        "{}{extra}\n{}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config().replace("[server]\n", &format!("[server]\n{server_extra}\n")),
        channel("psp", &sim, "")
    );
    (Process::gateway_with_env(&routes, envs).await, sim)
}

fn addr(gateway: &Process) -> String {
    gateway.base.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes; the bytes and how long it took. Fails the test if the
/// connection is still open after `within`.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut bytes)).await {
        Ok(Ok(_)) => bytes,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => bytes,
        Ok(Err(e)) => panic!("expected a clean close, got {e}"),
        Err(_) => panic!("the connection was still open after {within:?}"),
    }
}

/// One HTTP/1.1 response off a raw stream: status, head, JSON body (by Content-Length).
async fn read_response(stream: &mut TcpStream) -> (u16, String, Value) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, stream.read(&mut byte))
            .await
            .expect("a response head in time")
            .expect("read");
        assert!(n == 1 && raw.len() < 16_384, "incomplete head: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let length = header_of(&head, "content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(BOUND, stream.read_exact(&mut body))
        .await
        .expect("a body in time")
        .expect("read body");
    let status = head[9..12].parse().expect("a status code");
    (
        status,
        head,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn header_of(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Splits raw bytes holding several HTTP/1.1 responses into (status, head, body).
fn responses(raw: &[u8]) -> Vec<(u16, String, Value)> {
    let text = String::from_utf8_lossy(raw).into_owned();
    text.split("HTTP/1.1 ")
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (head, body) = part.split_once("\r\n\r\n").unwrap_or((part, ""));
            let status = head[..3].parse().unwrap_or(0);
            (
                status,
                head.to_string(),
                serde_json::from_str(body).unwrap_or(Value::Null),
            )
        })
        .collect()
}

async fn signed_send(
    gateway: &Process,
    method: Method,
    target: &str,
    signature: &str,
    body: &str,
) -> Answer {
    send(
        method,
        &format!("{}{target}", gateway.base),
        &[
            ("authorization", "Bearer signed-key"),
            ("paygate-signature", signature),
        ],
        body,
    )
    .await
}

// ---- 1. Signatures are bound to one method, path and body -------------------------------

#[tokio::test]
async fn a_signature_is_good_for_its_method_path_and_query_only() {
    let signed = format!(
        "\n[[merchants]]\nid = \"signed\"\napi_key_sha256 = \"{}\"\nsigning_secret = \"env:PAYGATE_TEST_EDGE_SECRET\"\n",
        sha256_hex("signed-key")
    );
    let (gateway, sim) = gateway_with("", &signed, &[("PAYGATE_TEST_EDGE_SECRET", SECRET)]).await;
    let now = unix_now();
    let mut ids = Vec::new();
    for amount in [1_000, 2_000] {
        let body = card_payment(amount, "EUR").to_string();
        let signature = merchant_signature(SECRET, now, "POST", "/v1/payments", &body);
        let answer = signed_send(&gateway, Method::POST, "/v1/payments", &signature, &body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json);
        ids.push(answer.json["id"].as_str().unwrap().to_string());
    }
    let (first, second) = (&ids[0], &ids[1]);
    let capture = format!("/v1/payments/{first}/capture");
    let body = r#"{"amount":100}"#;
    let signature = merchant_signature(SECRET, now, "POST", &capture, body);
    // The same signature and body, replayed elsewhere.
    for (method, target) in [
        (Method::POST, format!("/v1/payments/{second}/capture")),
        (Method::POST, format!("/v1/payments/{first}/refunds")),
        (Method::PUT, capture.clone()),
        (Method::POST, format!("{capture}?again=1")),
    ] {
        let answer = signed_send(&gateway, method.clone(), &target, &signature, body).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {target}");
        assert_eq!(answer.error_type(), "unauthenticated");
        assert_eq!(
            answer.json["error"]["request_id"],
            answer.header("x-request-id")
        );
    }
    assert_eq!(
        sim.stats().await["captures"],
        0,
        "no replay reached the PSP"
    );
    let captured = signed_send(&gateway, Method::POST, &capture, &signature, body).await;
    assert_eq!(captured.status, StatusCode::OK, "{:?}", captured.json);
    assert_eq!(captured.json["amount"], 100);
    // The query string is signed: with it, the read passes; signed without it, it does not.
    let read = format!("/v1/payments/{second}?expand=attempts");
    let with_query = merchant_signature(SECRET, now, "GET", &read, "");
    let answer = signed_send(&gateway, Method::GET, &read, &with_query, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json);
    let without_query =
        merchant_signature(SECRET, now, "GET", &format!("/v1/payments/{second}"), "");
    let answer = signed_send(&gateway, Method::GET, &read, &without_query, "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let stats = sim.stats().await;
    assert_eq!(
        (stats["payments"].clone(), stats["captures"].clone()),
        (2.into(), 1.into())
    );
}

// ---- 2. Silent, idle and surplus connections ------------------------------------------

/// An HTTP/2 client preface and an empty SETTINGS frame, and no stream.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn wait_for_metric(gateway: &Process, series: &str, value: f64) {
    let deadline = Instant::now() + BOUND;
    loop {
        let now = gateway.metric(series).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_fds_at_most(gateway: &Process, baseline: usize) {
    let deadline = Instant::now() + BOUND;
    loop {
        let fds = gateway.open_fds();
        if fds <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{fds} descriptors open, baseline {baseline}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const OPEN: &str = "paygate_open_connections{listener=\"merchant\"}";
const REFUSED: &str = "paygate_connections_refused_total{listener=\"merchant\"}";

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_their_descriptors_freed() {
    let head = Duration::from_millis(1_500);
    let idle = Duration::from_millis(700);
    let (gateway, _sim) = gateway_with(
        "header_read_timeout_ms = 1500\nidle_timeout_ms = 700",
        "",
        &[],
    )
    .await;
    // One payment first, so that the channel's pooled connection is in the baseline.
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    wait_for_metric(&gateway, OPEN, 0.0).await;
    let baseline = gateway.open_fds();
    let address = addr(&gateway);

    let mut silent = Vec::new();
    for i in 0..15 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        if i >= 10 {
            stream.write_all(H2_PREFACE).await.unwrap();
        }
        silent.push((Instant::now(), stream));
    }
    let mut kept_alive = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let request = format!(
            "GET /v1/payments/pay_none HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, _, _) = read_response(&mut stream).await;
        assert_eq!(status, 404);
        kept_alive.push((Instant::now(), stream));
    }
    // All 20 are open and each holds a descriptor in paygate.
    assert_eq!(gateway.metric(OPEN).await, 20.0);
    assert!(
        gateway.open_fds() >= baseline + 20,
        "{} vs {baseline}",
        gateway.open_fds()
    );

    let mut closing = tokio::task::JoinSet::new();
    for (kind, (since, mut stream)) in silent
        .into_iter()
        .map(|s| ("silent", s))
        .chain(kept_alive.into_iter().map(|s| ("idle", s)))
    {
        closing.spawn(async move {
            read_until_closed(&mut stream, BOUND).await;
            (kind, since.elapsed())
        });
    }
    while let Some(closed) = closing.join_next().await {
        let (kind, after) = closed.unwrap();
        let (at_least, before) = match kind {
            // From accept, not from a first byte that never comes.
            "silent" => (
                head - Duration::from_millis(100),
                head + Duration::from_millis(1_500),
            ),
            // Idle time, shorter than the head timeout hyper would apply on its own.
            _ => (
                idle - Duration::from_millis(100),
                head - Duration::from_millis(100),
            ),
        };
        assert!(
            after >= at_least && after < before,
            "{kind} closed after {after:?}"
        );
    }
    wait_for_metric(&gateway, OPEN, 0.0).await;
    wait_for_fds_at_most(&gateway, baseline).await;
    assert_eq!(
        pay(&gateway, &card_payment(200, "EUR")).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let idle = Duration::from_millis(700);
    let (gateway, _sim) = gateway_with("idle_timeout_ms = 700", "", &[]).await;
    let stream = TcpStream::connect(addr(&gateway)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/v1/payments/pay_none", gateway.base))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("an h2 answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let _ = response.into_body().collect().await;
    let answered = Instant::now();
    let ended = tokio::time::timeout(BOUND, driver).await;
    let after = answered.elapsed();
    assert!(ended.is_ok(), "the idle h2 connection was never closed");
    assert!(
        after >= idle - Duration::from_millis(100) && after < idle + Duration::from_secs(2),
        "closed after {after:?}"
    );
    wait_for_metric(&gateway, OPEN, 0.0).await;
}

#[tokio::test]
async fn a_head_dribbled_past_the_deadline_is_cut() {
    let head = Duration::from_millis(1_000);
    let (gateway, sim) = gateway_with("header_read_timeout_ms = 1000", "", &[]).await;
    let mut stream = TcpStream::connect(addr(&gateway)).await.unwrap();
    let connected = Instant::now();
    // Silent for a while first: the deadline runs from accept, not from the first byte.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nX-Pad: {}",
        "a".repeat(100)
    );
    let mut closed_after = None;
    for byte in request.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(connected.elapsed());
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(connected.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&probe[..n])
            ),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("the dribbling client was never cut");
    assert!(
        closed_after >= head - Duration::from_millis(100)
            && closed_after < head + Duration::from_millis(500),
        "cut after {closed_after:?}"
    );
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(sim.stats().await["payments"], 1);
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_its_handshake_too() {
    let dir = scratch_dir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "header_read_timeout_ms = 800\ntls = {{ cert = \"{}\", key = \"{}\" }}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let (gateway, _sim) = gateway_with(&tls, "", &[]).await;
    let address = gateway.base.trim_start_matches("https://").to_string();
    let client = paygate::tls::client_config(Some(&dir.join("cert.pem")), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    // One that never starts the handshake, one that completes it and then says nothing.
    let mut raw = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    let tcp = TcpStream::connect(&address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    read_until_closed(&mut raw, BOUND).await;
    read_until_closed(&mut tls, BOUND).await;
    let after = started.elapsed();
    assert!(
        after < Duration::from_millis(800 + 1_500),
        "closed after {after:?}"
    );
    wait_for_metric(&gateway, OPEN, 0.0).await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_and_counted() {
    let (gateway, sim) = gateway_with("max_connections = 5", "", &[]).await;
    let address = addr(&gateway);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    wait_for_metric(&gateway, OPEN, 5.0).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&address).await.unwrap();
        let _ = extra
            .write_all(format!("GET /v1/payments/pay_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n").as_bytes())
            .await;
        let mut answer = Vec::new();
        // Closed at once, unread request and all: a reset is as good as an end of stream.
        match tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut answer)).await {
            Ok(Ok(_)) => assert!(answer.is_empty(), "a refused connection gets no answer"),
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            Err(_) => panic!("a connection beyond max_connections was left open"),
        }
    }
    assert_eq!(gateway.metric(REFUSED).await, 3.0);
    assert_eq!(gateway.metric(OPEN).await, 5.0);
    drop(held);
    wait_for_metric(&gateway, OPEN, 0.0).await;
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(gateway.metric(REFUSED).await, 3.0);
    assert_eq!(sim.stats().await["payments"], 1);
}

// ---- 3. Ambiguous HTTP/1 framing ------------------------------------------------------

fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

#[tokio::test]
async fn ambiguous_framing_is_refused_before_anything_runs() {
    let (mut gateway, sim) = gateway_with("", "", &[]).await;
    let address = addr(&gateway);
    let body = card_payment(100, "EUR").to_string();
    let auth = format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json");
    let both_lengths = [
        format!(
            "POST /v1/payments HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            body.len(),
            chunked(&body)
        ),
        format!(
            "POST /v1/payments HTTP/1.1\r\nHost: x\r\n{auth}\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n{}",
            body.len(),
            chunked(&body)
        ),
    ];
    for request in &both_lengths {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let raw = read_until_closed(&mut stream, BOUND).await;
        let answers = responses(&raw);
        assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&raw));
        let (status, head, json) = &answers[0];
        assert_eq!(*status, 400, "{head}");
        assert_eq!(json["error"]["type"], "invalid_request");
        assert_eq!(json["error"]["request_id"], header_of(head, "x-request-id"));
        assert!(!header_of(head, "x-request-id").is_empty());
        assert_eq!(header_of(head, "connection"), "close");
    }

    // After other requests on the same connection (a chunked one and a bodiless one), the
    // ambiguous one is still found, and is the last answered.
    let pipelined = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nTransfer-Encoding: chunked\r\n\r\n{}\
GET /v1/payments/pay_none HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n{}",
        chunked(&body),
        both_lengths[0]
    );
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let raw = read_until_closed(&mut stream, BOUND).await;
    let statuses: Vec<u16> = responses(&raw).iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        statuses,
        [401, 404, 400],
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // HTTP/1.1 needs exactly one Host.
    for hosts in ["", "Host: a\r\nHost: b\r\n"] {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let request = format!(
            "POST /v1/payments HTTP/1.1\r\n{hosts}{auth}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, head, json) = read_response(&mut stream).await;
        assert_eq!(status, 400, "{hosts:?}: {head}");
        assert_eq!(json["error"]["type"], "invalid_request");
        assert!(json["error"]["message"].as_str().unwrap().contains("Host"));
        assert_eq!(
            json["error"]["request_id"],
            header_of(&head, "x-request-id")
        );
    }

    assert_eq!(sim.stats().await["payments"], 0, "nothing reached the PSP");
    assert!(gateway.is_running());
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(sim.stats().await["payments"], 1);
}

// ---- 4. Admin errors carry the request id ---------------------------------------------

#[tokio::test]
async fn admin_errors_carry_the_request_id() {
    let token = "edge-admin-token";
    let (gateway, _sim) = gateway_with("", "", &[("PAYGATE_ADMIN_TOKEN", token)]).await;
    let bearer = format!("Bearer {token}");
    let check = |answer: &Answer, status: StatusCode, kind: &str| {
        assert_eq!(answer.status, status, "{:?}", answer.json);
        assert_eq!(answer.error_type(), kind, "{:?}", answer.json);
        assert!(!answer.header("x-request-id").is_empty());
        assert_eq!(
            answer.json["error"]["request_id"],
            answer.header("x-request-id")
        );
    };
    let admin = &gateway.admin;
    let unauthenticated = send(Method::GET, &format!("{admin}/admin/channels"), &[], "").await;
    check(
        &unauthenticated,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let echoed = send(
        Method::GET,
        &format!("{admin}/admin/channels"),
        &[("x-request-id", "ops-run-7")],
        "",
    )
    .await;
    check(&echoed, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(echoed.header("x-request-id"), "ops-run-7");
    let auth = [("authorization", bearer.as_str())];
    let unknown = send(
        Method::POST,
        &format!("{admin}/admin/channels/nope/drain"),
        &auth,
        "",
    )
    .await;
    check(&unknown, StatusCode::NOT_FOUND, "not_found");
    let nowhere = send(Method::GET, &format!("{admin}/nowhere"), &[], "").await;
    check(&nowhere, StatusCode::NOT_FOUND, "not_found");
    let bad_json = send(Method::POST, &format!("{admin}/admin/explain"), &auth, "{").await;
    check(&bad_json, StatusCode::BAD_REQUEST, "invalid_request");

    std::fs::write(&gateway.routes, "[server\nlisten = ").unwrap();
    let rejected = send(Method::POST, &format!("{admin}/admin/reload"), &auth, "").await;
    check(
        &rejected,
        StatusCode::UNPROCESSABLE_ENTITY,
        "config_rejected",
    );
    assert_eq!(rejected.json["result"], "rejected");
    assert!(!rejected.json["problems"].as_array().unwrap().is_empty());
}
