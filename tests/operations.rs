//! Operating paygate while money flows: exact metric deltas, reloads under load (admin,
//! SIGHUP, file change) and rejected reloads, drain and enable, the audit trail, admin
//! authentication, JSON logs without card data, and SIGTERM losing nothing in flight.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "ops-token";

async fn admin(gateway: &Process, method: Method, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(method, &format!("{}{path}", gateway.admin), &headers, "").await
}

async fn scrape(gateway: &Process) -> String {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client
        .get(format!("{}/metrics", gateway.admin).parse().unwrap())
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one series in an exposition, 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Two channels `a` and `b` on their own simulators; one priority rule whose list is given.
fn routes(a: &Process, b: &Process, order: &str) -> String {
    format!(
        "{}{}{}\n[[rules]]\nname = \"all\"\nchannels = [{order}]\nstrategy = \"priority\"\n",
        base_config(),
        channel("a", a, ""),
        channel("b", b, "")
    )
}

async fn two_channel_gateway(envs: &[(&str, &str)]) -> (Process, Process, Process) {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let mut env = vec![("PAYGATE_ADMIN_TOKEN", TOKEN)];
    env.extend_from_slice(envs);
    let gateway = Process::gateway_with_env(&routes(&a, &b, "\"a\", \"b\""), &env).await;
    (gateway, a, b)
}

/// As `routes`, with the file watch off, so that only explicit reloads apply.
fn routes_unwatched(a: &Process, b: &Process, order: &str) -> String {
    routes(a, b, order).replace("[server]\n", "[server]\nwatch_routes = false\n")
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let (gateway, _a, _b) = two_channel_gateway(&[]).await;
    let before = scrape(&gateway).await;
    for _ in 0..3 {
        assert_eq!(
            pay(&gateway, &card_payment(100, "EUR")).await.status,
            StatusCode::CREATED
        );
    }
    let mut declined = card_payment(100, "EUR");
    declined["card"]["number"] = json!("4000000000000002");
    assert_eq!(pay(&gateway, &declined).await.json["status"], "declined");
    assert_eq!(
        pay_as(&gateway, "wrong", &card_payment(1, "EUR"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let after = scrape(&gateway).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta("paygate_payments_total{channel=\"a\",merchant=\"demo\",status=\"succeeded\"}"),
        3.0
    );
    assert_eq!(
        delta("paygate_payments_total{channel=\"a\",merchant=\"demo\",status=\"declined\"}"),
        1.0
    );
    assert_eq!(
        delta("paygate_channel_attempts_total{channel=\"a\",outcome=\"succeeded\"}"),
        3.0
    );
    assert_eq!(
        delta("paygate_channel_attempts_total{channel=\"a\",outcome=\"declined\"}"),
        1.0
    );
    assert_eq!(
        delta("paygate_channel_attempts_total{channel=\"b\",outcome=\"succeeded\"}"),
        0.0
    );
    assert_eq!(
        delta("paygate_channel_latency_seconds_count{channel=\"a\"}"),
        4.0
    );
    assert_eq!(
        delta("paygate_http_requests_total{route=\"/v1/payments\",status=\"201\"}"),
        4.0
    );
    assert_eq!(
        delta("paygate_http_requests_total{route=\"/v1/payments\",status=\"401\"}"),
        1.0
    );
    assert_eq!(
        delta("paygate_http_request_duration_seconds_count{route=\"/v1/payments\"}"),
        5.0
    );
    assert_eq!(value(&after, "paygate_inflight_requests"), 0.0);
    let version = admin(&gateway, Method::GET, "/admin/config", Some(TOKEN))
        .await
        .json["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        value(
            &after,
            &format!("paygate_config_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    assert!(after.contains("process_resident_memory_bytes"));
    // No payment id, key or amount ever becomes a label.
    assert!(!after.contains("pay_"), "payment ids in labels");
}

#[tokio::test]
async fn reloads_under_load_lose_nothing_and_bad_files_change_nothing() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let env = [("PAYGATE_ADMIN_TOKEN", TOKEN)];
    let gateway = Process::gateway_with_env(&routes_unwatched(&a, &b, "\"a\", \"b\""), &env).await;
    let gateway = Arc::new(gateway);
    // A client paying without pause while the config changes under it.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let client = {
        let (gateway, stop, failures, sent) = (
            gateway.clone(),
            stop.clone(),
            failures.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let answer = pay(&gateway, &card_payment(100, "EUR")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if answer.status != StatusCode::CREATED {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Through the admin API: b first now.
    std::fs::write(&gateway.routes, routes_unwatched(&a, &b, "\"b\", \"a\"")).unwrap();
    let reloaded = admin(&gateway, Method::POST, "/admin/reload", Some(TOKEN)).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{:?}", reloaded.json);
    assert_eq!(reloaded.json["result"], "ok");
    assert_eq!(reloaded.json["changes"], json!(["rule all changed"]));
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.json["channel"],
        "b"
    );

    // 2. A broken file is refused with check's messages; b stays first.
    std::fs::write(&gateway.routes, routes_unwatched(&a, &b, "\"b\", \"nope\"")).unwrap();
    let refused = admin(&gateway, Method::POST, "/admin/reload", Some(TOKEN)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json["result"], "rejected");
    let problem = refused.json["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("routes.toml:") && problem.contains("unknown channel \"nope\""),
        "{problem}"
    );
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.json["channel"],
        "b"
    );

    // 3. SIGHUP: a first again.
    std::fs::write(&gateway.routes, routes_unwatched(&a, &b, "\"a\", \"b\"")).unwrap();
    gateway.signal("HUP");
    wait_for_channel(&gateway, "a").await;

    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20, "the client kept paying");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed because of a reload"
    );

    let metrics = scrape(&gateway).await;
    assert_eq!(
        value(&metrics, "paygate_config_reloads_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(
        value(
            &metrics,
            "paygate_config_reloads_total{result=\"rejected\"}"
        ),
        1.0
    );
    let audit = admin(&gateway, Method::GET, "/admin/audit", Some(TOKEN)).await;
    let entries = audit.json["entries"].as_array().unwrap();
    let triggers: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["trigger"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        triggers,
        vec![("sighup", "ok"), ("admin", "rejected"), ("admin", "ok")]
    );
    assert!(entries[1]["details"][0].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn editing_the_routes_file_reloads_it() {
    let (gateway, a, b) = two_channel_gateway(&[]).await;
    std::fs::write(&gateway.routes, routes(&a, &b, "\"b\"")).unwrap();
    wait_for_channel(&gateway, "b").await;
    let audit = admin(&gateway, Method::GET, "/admin/audit", Some(TOKEN)).await;
    let entry = &audit.json["entries"][0];
    assert_eq!(entry["trigger"], "file");
    assert_eq!(entry["result"], "ok");
    assert_eq!(entry["details"], json!(["rule all changed"]));
}

/// Pays until the payment lands on `channel` (a reload that the gateway applies by itself).
async fn wait_for_channel(gateway: &Process, channel: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = pay(gateway, &card_payment(100, "EUR")).await;
        if answer.json["channel"] == channel {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reload to {channel} never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn drain_moves_new_payments_at_once_and_keeps_follow_ups() {
    let (gateway, a, b) = two_channel_gateway(&[]).await;
    let on_a = pay(&gateway, &card_payment(1_000, "EUR")).await;
    assert_eq!(on_a.json["channel"], "a");
    let drained = admin(
        &gateway,
        Method::POST,
        "/admin/channels/a/drain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(drained.status, StatusCode::OK);
    assert_eq!(drained.json, json!({"channel": "a", "state": "drained"}));
    // The very next payment avoids a; a capture of a's payment still goes to a.
    assert_eq!(
        pay(&gateway, &card_payment(1_000, "EUR")).await.json["channel"],
        "b"
    );
    let id = on_a.json["id"].as_str().unwrap();
    let captured = follow_up(&gateway, id, "capture", "").await;
    assert_eq!(captured.json["channel"], "a");
    assert_eq!(a.stats().await["captures"], 1);
    let channels = admin(&gateway, Method::GET, "/admin/channels", Some(TOKEN)).await;
    assert_eq!(channels.json["channels"][0]["state"], "drained");
    // Enable: a is back.
    assert_eq!(
        admin(
            &gateway,
            Method::POST,
            "/admin/channels/a/enable",
            Some(TOKEN)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        pay(&gateway, &card_payment(1_000, "EUR")).await.json["channel"],
        "a"
    );
    assert_eq!(
        admin(
            &gateway,
            Method::POST,
            "/admin/channels/zzz/drain",
            Some(TOKEN)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let audit = admin(&gateway, Method::GET, "/admin/audit", Some(TOKEN)).await;
    let actions: Vec<&str> = audit.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["enable", "drain"]);
    assert_eq!(b.stats().await["payments"], 1);
}

#[tokio::test]
async fn drained_channels_show_in_the_state_gauge() {
    let (gateway, _a, _b) = two_channel_gateway(&[]).await;
    admin(
        &gateway,
        Method::POST,
        "/admin/channels/b/drain",
        Some(TOKEN),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(&gateway).await;
        if value(
            &metrics,
            "paygate_channel_state{channel=\"b\",state=\"drained\"}",
        ) == 1.0
        {
            assert_eq!(
                value(
                    &metrics,
                    "paygate_channel_state{channel=\"b\",state=\"healthy\"}"
                ),
                0.0
            );
            assert_eq!(
                value(
                    &metrics,
                    "paygate_channel_state{channel=\"a\",state=\"healthy\"}"
                ),
                1.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state gauge never showed the drain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn admin_endpoints_need_the_token() {
    let (gateway, _a, _b) = two_channel_gateway(&[]).await;
    let endpoints = [
        (Method::GET, "/admin/channels"),
        (Method::GET, "/admin/config"),
        (Method::GET, "/admin/audit"),
        (Method::POST, "/admin/reload"),
        (Method::POST, "/admin/explain"),
        (Method::POST, "/admin/channels/a/drain"),
        (Method::POST, "/admin/channels/a/enable"),
    ];
    for (method, path) in endpoints {
        for token in [None, Some("wrong"), Some("")] {
            let answer = admin(&gateway, method.clone(), path, token).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
        }
    }
    // Nothing was drained by the refused calls; health and metrics need no token.
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.json["channel"],
        "a"
    );
    assert_eq!(
        admin(&gateway, Method::GET, "/healthz", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn json_logs_have_one_line_per_payment_and_no_card_numbers() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let routes = format!(
        "{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config(),
        channel("psp", &sim, "")
    );
    let gateway = Process::gateway_with_env(
        &routes,
        &[("PAYGATE_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = card_payment(100, "EUR").to_string();
    let auth = format!("Bearer {KEY}");
    let paid = send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[("authorization", &auth), ("traceparent", traceparent)],
        &body,
    )
    .await;
    assert_eq!(paid.status, StatusCode::CREATED);
    let mut bad = card_payment(100, "EUR");
    bad["currency"] = json!("NOPE");
    assert_eq!(pay(&gateway, &bad).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.stats().await["recent"][0]["traceparent"], traceparent);

    let id = paid.json["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let logs = std::fs::read_to_string(&gateway.log).unwrap();
        assert!(
            !logs.contains("4111111111111111"),
            "a card number reached the logs"
        );
        assert!(!logs.contains("\"cvc\""), "card fields reached the logs");
        let found = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "payment" && l["fields"]["payment"] == id);
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no payment line in:\n{logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let fields = &line["fields"];
    assert_eq!(fields["merchant"], "demo");
    assert_eq!(fields["channel"], "psp");
    assert_eq!(fields["status"], "Succeeded");
    assert_eq!(fields["attempts"], 1);
    assert!(fields["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(fields["latency_ms"].is_u64());
}

#[tokio::test]
async fn sigterm_finishes_what_is_in_flight() {
    let slow = Process::mock_psp(&["--name", "slow", "--latency", "fixed:1500"]).await;
    let routes = format!(
        "{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"slow\"]\n",
        base_config().replace("[server]\n", "[server]\ndrain_period_ms = 10000\n"),
        channel("slow", &slow, "")
    );
    let mut gateway = Process::gateway(&routes).await;
    let base = gateway.base.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5u64 {
        let base = base.clone();
        tasks.spawn(async move {
            let auth = format!("Bearer {KEY}");
            send(
                Method::POST,
                &format!("{base}/v1/payments"),
                &[("authorization", &auth)],
                &card_payment(100 + i, "EUR").to_string(),
            )
            .await
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.signal("TERM");
    // Not ready at once, while the payments finish.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = send(Method::GET, &format!("{}/readyz", gateway.admin), &[], "").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json);
    }
    assert_eq!(gateway.exit_code(Duration::from_secs(15)).await, Some(0));
    assert_eq!(slow.stats().await["payments"], 5);
}
