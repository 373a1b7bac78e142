//! Merchant safety through the real gateway: request signing, rate limits (and a noisy
//! neighbour), idempotency under concurrency, risk rules, load shedding and deadlines. Each
//! test checks what the merchant got and what the simulator received.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "whsec_test_1";

async fn gateway(sim: &Process, extra: &str, envs: &[(&str, &str)]) -> Process {
    let routes = format!(
        "{}{extra}\n{}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config(),
        channel("psp", sim, "")
    );
    Process::gateway_with_env(&routes, envs).await
}

async fn post(gateway: &Process, headers: &[(&str, &str)], body: &str) -> Answer {
    send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        headers,
        body,
    )
    .await
}

/// `Paygate-Signature` of a `POST /v1/payments` with `body`.
fn signature(t: u64, body: &str, secret: &str) -> String {
    merchant_signature(secret, t, "POST", "/v1/payments", body)
}

#[tokio::test]
async fn signed_merchants_must_sign_within_five_minutes() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let signed = format!(
        "\n[[merchants]]\nid = \"signed\"\napi_key_sha256 = \"{}\"\nsigning_secret = \"env:PAYGATE_TEST_SIGNING\"\n",
        sha256_hex("signed-key")
    );
    let gateway = gateway(&sim, &signed, &[("PAYGATE_TEST_SIGNING", SECRET)]).await;
    let body = card_payment(100, "EUR").to_string();
    let auth = "Bearer signed-key";
    let now = unix_now();
    let with = |sig: String| {
        vec![
            ("authorization", auth.to_string()),
            ("paygate-signature", sig),
        ]
    };
    let call = |headers: Vec<(&'static str, String)>| {
        let body = body.clone();
        let gateway = &gateway;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            post(gateway, &headers, &body).await
        }
    };
    assert_eq!(
        call(with(signature(now, &body, SECRET))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        call(with(signature(now - 250, &body, SECRET))).await.status,
        StatusCode::CREATED
    );
    for bad in [
        signature(now - 400, &body, SECRET),
        signature(now + 400, &body, SECRET),
        signature(now, &body, "wrong-secret"),
        signature(now, "{\"amount\":1}", SECRET),
        "t=abc,v1=00".to_string(),
        String::new(),
    ] {
        let answer = call(with(bad.clone())).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(answer.error_type(), "unauthenticated");
    }
    let unsigned = call(vec![("authorization", auth.to_string())]).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    // The unsigned demo merchant is unaffected.
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(sim.stats().await["payments"], 3);
}

#[tokio::test]
async fn a_noisy_merchant_is_limited_and_the_others_are_not() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let noisy = format!(
        "\n[[merchants]]\nid = \"noisy\"\napi_key_sha256 = \"{}\"\nrate_limit = {{ per_second = 20, burst = 20 }}\n",
        sha256_hex("noisy-key")
    );
    let gateway = Arc::new(gateway(&sim, &noisy, &[]).await);
    // A burst of 10x the noisy merchant's limit, and the quiet merchant paying meanwhile.
    let burst_started = Instant::now();
    let burst = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..8u64 {
                let gateway = gateway.clone();
                tasks.spawn(async move {
                    let mut statuses = Vec::new();
                    for i in 0..25u64 {
                        let answer = pay_as(
                            &gateway,
                            "noisy-key",
                            &card_payment(100 + worker * 100 + i, "EUR"),
                        )
                        .await;
                        if answer.status == StatusCode::TOO_MANY_REQUESTS {
                            assert_eq!(answer.error_type(), "rate_limited");
                            let retry_after: u64 = answer
                                .header("retry-after")
                                .parse()
                                .expect("Retry-After seconds");
                            assert!((1..=2).contains(&retry_after), "{retry_after}");
                        }
                        statuses.push(answer.status);
                    }
                    statuses
                });
            }
            let mut all = Vec::new();
            while let Some(statuses) = tasks.join_next().await {
                all.extend(statuses.unwrap());
            }
            all
        })
    };
    let mut quiet = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = pay(&gateway, &card_payment(100, "EUR")).await;
        quiet.push((answer.status, started.elapsed()));
    }
    let noisy_statuses = burst.await.unwrap();
    let burst_secs = burst_started.elapsed().as_secs_f64();
    let accepted = noisy_statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let limited = noisy_statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(accepted + limited, 200, "only 201 or 429");
    // The bucket holds 20 and refills 20 a second while the burst lasts.
    // A few of slack for the bucket refilling while requests are on their way.
    let most = 20.0 + 20.0 * burst_secs + 5.0;
    assert!(
        accepted >= 20 && accepted as f64 <= most,
        "{accepted} accepted in {burst_secs:.2} s"
    );
    assert!(
        quiet.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{quiet:?}"
    );
    let mut latencies: Vec<Duration> = quiet.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    eprintln!(
        "quiet merchant during the burst: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
    assert_eq!(
        sim.stats().await["payments"].as_u64().unwrap() as usize,
        accepted + 20
    );
}

#[tokio::test]
async fn rate_limit_accuracy_over_two_seconds() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let limited = format!(
        "\n[[merchants]]\nid = \"metered\"\napi_key_sha256 = \"{}\"\nrate_limit = {{ per_second = 100, burst = 10 }}\n",
        sha256_hex("metered-key")
    );
    let gateway = Arc::new(gateway(&sim, &limited, &[]).await);
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let gateway = gateway.clone();
        tasks.spawn(async move {
            let mut accepted = 0u64;
            // Bounded in time and in count.
            for _ in 0..5_000 {
                if started.elapsed() >= window {
                    break;
                }
                let answer = pay_as(&gateway, "metered-key", &card_payment(100, "EUR")).await;
                accepted += u64::from(answer.status == StatusCode::CREATED);
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(n) = tasks.join_next().await {
        accepted += n.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA admits the burst plus the rate over the time the loop ran.
    let expected = 10.0 + 100.0 * elapsed;
    let error = (accepted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.05,
        "{accepted} accepted over {elapsed:.2} s, expected {expected:.0}"
    );
}

#[tokio::test]
async fn one_key_reaches_the_psp_once_under_concurrency() {
    let sim = Process::mock_psp(&["--name", "psp", "--latency", "fixed:200"]).await;
    let gateway = Arc::new(gateway(&sim, "", &[]).await);
    let body = card_payment(4_200, "EUR").to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let gateway = gateway.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let auth = format!("Bearer {KEY}");
            post(
                &gateway,
                &[("authorization", &auth), ("idempotency-key", "order-77")],
                &body,
            )
            .await
        });
    }
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    let mut conflicts = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        match answer.status {
            StatusCode::CREATED => created.push(answer.json["id"].clone()),
            StatusCode::OK => {
                assert_eq!(answer.header("idempotent-replayed"), "true");
                replayed.push(answer.json["id"].clone());
            }
            StatusCode::CONFLICT => {
                assert_eq!(answer.error_type(), "idempotency_conflict");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {:?}", answer.json),
        }
    }
    assert_eq!(created.len(), 1, "exactly one request was processed");
    assert!(replayed.iter().all(|id| *id == created[0]));
    assert_eq!(created.len() + replayed.len() + conflicts, 100);
    let stats = sim.stats().await;
    assert_eq!(stats["payments"], 1, "{stats}");
    assert_eq!(stats["idempotency_keys"][created[0].as_str().unwrap()], 1);

    // A later repeat replays; the same key with another body conflicts.
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("idempotency-key", "order-77"),
    ];
    let again = post(&gateway, &headers, &body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["id"], created[0]);
    assert_eq!(again.header("x-paygate-channel"), "psp");
    let other_body = card_payment(4_300, "EUR").to_string();
    let conflict = post(&gateway, &headers, &other_body).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    // The key is the merchant's: another merchant may use the same one.
    let other_auth = format!("Bearer {OTHER_KEY}");
    let other = post(
        &gateway,
        &[
            ("authorization", &other_auth),
            ("idempotency-key", "order-77"),
        ],
        &body,
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED);
    // Malformed keys.
    let long = "k".repeat(256);
    for key in [long.as_str(), "tab\there"] {
        let answer = post(
            &gateway,
            &[("authorization", &auth), ("idempotency-key", key)],
            &body,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert_eq!(sim.stats().await["payments"], 2);
}

#[tokio::test]
async fn waiting_for_an_in_flight_key_when_configured() {
    let sim = Process::mock_psp(&["--name", "psp", "--latency", "fixed:1500"]).await;
    let gateway = Arc::new(
        gateway(
            &sim,
            "\n[idempotency]\nin_flight = \"wait\"\nttl_secs = 60\n",
            &[],
        )
        .await,
    );
    let body = card_payment(900, "EUR").to_string();
    let first = {
        let (gateway, body) = (gateway.clone(), body.clone());
        tokio::spawn(async move {
            let auth = format!("Bearer {KEY}");
            post(
                &gateway,
                &[("authorization", &auth), ("idempotency-key", "wait-1")],
                &body,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let auth = format!("Bearer {KEY}");
    let second = post(
        &gateway,
        &[("authorization", &auth), ("idempotency-key", "wait-1")],
        &body,
    )
    .await;
    let first = first.await.unwrap();
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CREATED],
        "one processed, the other waited for its answer"
    );
    assert_eq!(second.json["id"], first.json["id"]);
    // One that cannot wait past its deadline gets 504.
    let third = {
        let (gateway, body) = (gateway.clone(), body.clone());
        tokio::spawn(async move {
            let auth = format!("Bearer {KEY}");
            post(
                &gateway,
                &[("authorization", &auth), ("idempotency-key", "wait-2")],
                &body,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let impatient = post(
        &gateway,
        &[
            ("authorization", &auth),
            ("idempotency-key", "wait-2"),
            ("paygate-deadline-ms", "50"),
        ],
        &body,
    )
    .await;
    assert_eq!(
        impatient.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?} {:?}",
        impatient.headers,
        impatient.json
    );
    assert_eq!(impatient.error_type(), "deadline_exceeded");
    assert_eq!(third.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(sim.stats().await["payments"], 2);
}

#[tokio::test]
async fn risk_rules_reject_by_name_before_routing() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let risky = format!(
        r#"
[risk]
blocked_countries = ["KP"]
blocked_bins = ["400000"]

[[merchants]]
id = "guarded"
api_key_sha256 = "{}"
[merchants.risk]
min_amount = 100
max_amount = 100000
velocity = [
  {{ name = "card-twice-an-hour", per = "card", window_secs = 3600, max_count = 2 }},
  {{ name = "merchant-amount", per = "merchant", window_secs = 60, max_amount = 5000 }},
]
"#,
        sha256_hex("guarded-key")
    );
    let gateway = gateway(&sim, &risky, &[]).await;
    let payment = |amount: u64, country: &str, card: &str| {
        json!({"amount": amount, "currency": "EUR", "method": "card", "country": country,
               "card": {"number": card, "exp_month": 1, "exp_year": 2031, "cvc": "999"}})
    };
    let card = "4111111111111111";
    let cases: [(Value, &str); 4] = [
        (payment(500, "KP", card), "blocked_country"),
        (payment(500, "DE", "4000001234567899"), "blocked_bin"),
        (payment(50, "DE", card), "min_amount"),
        (payment(200_000, "DE", card), "max_amount"),
    ];
    for (body, rule) in &cases {
        let answer = pay_as(&gateway, "guarded-key", body).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{rule}");
        assert_eq!(answer.error_type(), "risk_rejected");
        assert_eq!(answer.json["error"]["rule"], *rule);
        assert!(
            !answer.json.to_string().contains(card),
            "no card number in errors"
        );
    }
    // Velocity: the same card twice passes, the third time is refused.
    for _ in 0..2 {
        assert_eq!(
            pay_as(&gateway, "guarded-key", &payment(1_000, "DE", card))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let third = pay_as(&gateway, "guarded-key", &payment(1_000, "DE", card)).await;
    assert_eq!(third.json["error"]["rule"], "card-twice-an-hour");
    // Merchant amount velocity: 2,000 so far; 3,500 more would pass 5,000.
    let big = pay_as(
        &gateway,
        "guarded-key",
        &payment(3_500, "DE", "5555555555554444"),
    )
    .await;
    assert_eq!(big.json["error"]["rule"], "merchant-amount");
    // The global rule holds for the demo merchant too; its own payments are otherwise free.
    let demo = pay(&gateway, &payment(500, "KP", card)).await;
    assert_eq!(demo.json["error"]["rule"], "blocked_country");
    assert_eq!(
        pay(&gateway, &payment(50, "DE", card)).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        sim.stats().await["payments"],
        3,
        "rejected payments never reached the PSP"
    );
}

#[tokio::test]
async fn overload_is_refused_at_once_and_deadlines_bound_requests() {
    let slow = Process::mock_psp(&["--name", "slow", "--latency", "fixed:2000"]).await;
    let routes = format!(
        "{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"slow\"]\n",
        base_config().replace("[server]\n", "[server]\nmax_in_flight = 2\n"),
        channel("slow", &slow, "")
    );
    let gateway = Arc::new(Process::gateway(&routes).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2u64 {
        let gateway = gateway.clone();
        tasks.spawn(async move { pay(&gateway, &card_payment(100 + i, "EUR")).await.status });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let shed = pay(&gateway, &card_payment(300, "EUR")).await;
    let waited = started.elapsed();
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.error_type(), "overloaded");
    assert_eq!(shed.header("retry-after"), "1");
    assert!(
        waited < Duration::from_millis(1_300),
        "answered without queueing: {waited:?}"
    );
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
    // A deadline shorter than the PSP's answer: the attempt is cut, and the payment is
    // pending (the PSP may have charged), never failed over or reported failed.
    let auth = format!("Bearer {KEY}");
    let body = card_payment(400, "EUR").to_string();
    let cut = post(
        &gateway,
        &[("authorization", &auth), ("paygate-deadline-ms", "150")],
        &body,
    )
    .await;
    assert_eq!(cut.status, StatusCode::ACCEPTED, "{:?}", cut.json);
    assert_eq!(cut.json["attempts"][0]["outcome"], "timeout");
    let bad = post(
        &gateway,
        &[("authorization", &auth), ("paygate-deadline-ms", "soon")],
        &body,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(slow.stats().await["payments"], 3);
}

#[tokio::test]
async fn a_channel_at_its_limits_is_skipped_not_failed() {
    // In-flight cap: one call at a time on `capped`, slow enough that three payments overlap.
    let capped = Process::mock_psp(&["--name", "capped", "--latency", "fixed:1000"]).await;
    let spare = Process::mock_psp(&["--name", "spare"]).await;
    let routes = format!(
        "{}{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"capped\", \"spare\"]\nstrategy = \"priority\"\n",
        base_config(),
        channel("capped", &capped, "max_in_flight = 1"),
        channel("spare", &spare, "")
    );
    let gateway = Arc::new(Process::gateway(&routes).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        let gateway = gateway.clone();
        tasks.spawn(async move { pay(&gateway, &card_payment(100 + i, "EUR")).await });
    }
    let mut channels = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(
            answer.json["attempts"].as_array().unwrap().len(),
            1,
            "a skip is not an attempt"
        );
        channels.push(answer.json["channel"].as_str().unwrap().to_string());
    }
    channels.sort();
    assert_eq!(
        channels,
        vec!["capped", "spare", "spare"],
        "one call in flight on capped at a time"
    );
    assert_eq!(capped.stats().await["payments"], 1);

    // Contracted rate: burst 2 at 1/s, then the next payment goes to the spare channel.
    let metered = Process::mock_psp(&["--name", "metered"]).await;
    let routes = format!(
        "{}{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"metered\", \"spare\"]\nstrategy = \"priority\"\n",
        base_config(),
        channel(
            "metered",
            &metered,
            "rate_limit = { per_second = 1, burst = 2 }"
        ),
        channel("spare", &spare, "")
    );
    let gateway = Process::gateway(&routes).await;
    let mut picked = Vec::new();
    for i in 0..3u64 {
        picked.push(pay(&gateway, &card_payment(200 + i, "EUR")).await.json["channel"].clone());
    }
    assert_eq!(picked, [json!("metered"), json!("metered"), json!("spare")]);
    assert_eq!(metered.stats().await["payments"], 2);
}
