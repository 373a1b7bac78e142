//! Payments through the real gateway to real simulators: each status, rule choice, amount
//! limits, failover, ambiguous failures, follow-ups on the authorizing channel, credentials,
//! TLS to the PSP and HTTP/2 from the merchant. Every figure is checked against what the
//! simulators say they received.

mod support;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

fn count(stats: &Value, field: &str) -> u64 {
    stats[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {stats}"))
}

/// A gateway with one priority rule over the given channels.
async fn gateway_over(channels: &str, rule_channels: &str) -> Process {
    let routes = format!(
        "{}{channels}\n[[rules]]\nname = \"all\"\nchannels = [{rule_channels}]\nstrategy = \"priority\"\n",
        base_config()
    );
    Process::gateway(&routes).await
}

#[tokio::test]
async fn each_status_comes_back_from_the_simulator() {
    let ok = Process::mock_psp(&["--name", "ok", "--success-rate", "1"]).await;
    let declines = Process::mock_psp(&[
        "--name",
        "no",
        "--success-rate",
        "0",
        "--decline-codes",
        "do_not_honor",
    ])
    .await;
    let pending = Process::mock_psp(&["--name", "later", "--pending-rate", "1"]).await;
    let down = Process::mock_psp(&["--name", "down", "--error-503", "1"]).await;
    let routes = format!(
        "{}{}{}{}{}
[[rules]]
name = \"usd\"
channels = [\"ok\"]
[rules.match]
currencies = [\"USD\"]

[[rules]]
name = \"gbp\"
channels = [\"no\"]
[rules.match]
currencies = [\"GBP\"]

[[rules]]
name = \"chf\"
channels = [\"later\"]
[rules.match]
currencies = [\"CHF\"]

[[rules]]
name = \"jpy\"
channels = [\"down\"]
[rules.match]
currencies = [\"JPY\"]
",
        base_config(),
        channel("ok", &ok, ""),
        channel("no", &declines, ""),
        channel("later", &pending, ""),
        channel("down", &down, "")
    );
    let gateway = Process::gateway(&routes).await;

    let paid = pay(&gateway, &card_payment(1999, "USD")).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.json);
    assert_eq!(paid.json["status"], "succeeded");
    assert_eq!(paid.json["channel"], "ok");
    assert_eq!(paid.json["amount"], 1999);
    assert_eq!(paid.header("x-paygate-channel"), "ok");
    assert!(
        paid.json["psp_reference"]
            .as_str()
            .unwrap()
            .starts_with("ok-")
    );
    assert_eq!(paid.json["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(paid.json["card"], json!({"bin": "411111", "last4": "1111"}));

    let declined = pay(&gateway, &card_payment(500, "GBP")).await;
    assert_eq!(declined.status, StatusCode::CREATED);
    assert_eq!(declined.json["status"], "declined");
    assert_eq!(declined.json["decline_code"], "do_not_honor");

    let later = pay(&gateway, &card_payment(500, "CHF")).await;
    assert_eq!(later.status, StatusCode::ACCEPTED);
    assert_eq!(later.json["status"], "pending");

    let failed = pay(&gateway, &card_payment(500, "JPY")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.error_type(), "all_channels_failed");
    let failed_id = failed.json["error"]["payment_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        failed.json["error"]["request_id"],
        failed.header("x-request-id")
    );
    let stored = get_payment(&gateway, KEY, &failed_id).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.json["status"], "failed");
    assert_eq!(stored.json["attempts"][0]["outcome"], "unavailable");

    // Each simulator saw exactly its payment, once, under the payment's id.
    for (sim, answer) in [(&ok, &paid), (&declines, &declined), (&pending, &later)] {
        let stats = sim.stats().await;
        assert_eq!(count(&stats, "payments"), 1, "{stats}");
        let id = answer.json["id"].as_str().unwrap();
        assert_eq!(stats["idempotency_keys"][id], 1, "{stats}");
    }
    // The 503 simulator processed nothing.
    assert_eq!(count(&down.stats().await, "payments"), 0);

    // A read answers 200 with the stored payment; another merchant cannot see it.
    let id = paid.json["id"].as_str().unwrap();
    let read = get_payment(&gateway, KEY, id).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json["status"], "succeeded");
    assert_eq!(read.json["id"], id);
    assert_eq!(
        get_payment(&gateway, OTHER_KEY, id).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn rules_pick_their_channels_and_amount_limits_hold() {
    let eu = Process::mock_psp(&["--name", "eu"]).await;
    let small = Process::mock_psp(&["--name", "small"]).await;
    let big = Process::mock_psp(&["--name", "big"]).await;
    let routes = format!(
        "{}{}{}{}
[[rules]]
name = \"eu-cards\"
channels = [\"eu\"]
[rules.match]
currencies = [\"EUR\"]
methods = [\"card\"]

[[rules]]
name = \"usd\"
channels = [\"small\", \"big\"]
strategy = \"weighted\"
",
        base_config(),
        channel("eu", &eu, "currencies = [\"EUR\"]"),
        channel(
            "small",
            &small,
            "currencies = [\"USD\"]\nmax_amount = 1000000\nweight = 100"
        ),
        channel("big", &big, "currencies = [\"USD\"]\nweight = 1"),
    );
    let gateway = Process::gateway(&routes).await;

    let eur = pay(&gateway, &card_payment(1999, "EUR")).await;
    assert_eq!(eur.status, StatusCode::CREATED);
    assert_eq!(eur.json["channel"], "eu");

    // Weights favour `small` 100:1, but it can never take 2,000,000.
    for _ in 0..10 {
        let large = pay(&gateway, &card_payment(2_000_000, "USD")).await;
        assert_eq!(large.status, StatusCode::CREATED);
        assert_eq!(large.json["channel"], "big");
    }
    assert_eq!(count(&eu.stats().await, "payments"), 1);
    assert_eq!(count(&small.stats().await, "payments"), 0);
    assert_eq!(count(&big.stats().await, "payments"), 10);

    // A payment whose rule has no channel able to take it: 422.
    let wallet_eur = json!({"amount": 100, "currency": "EUR", "method": "wallet"});
    let answer = pay(&gateway, &wallet_eur).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error_type(), "no_eligible_channel");
}

#[tokio::test]
async fn capture_and_refund_go_to_the_authorizing_channel() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let b = Process::mock_psp(&["--name", "b"]).await;
    let channels = format!(
        "{}{}",
        channel("a", &a, "weight = 1"),
        channel("b", &b, "weight = 1")
    );
    let routes = format!(
        "{}{channels}\n[[rules]]\nname = \"all\"\nchannels = [\"a\", \"b\"]\nstrategy = \"weighted\"\n",
        base_config()
    );
    let gateway = Process::gateway(&routes).await;
    let mut authorized = std::collections::HashMap::new();
    for _ in 0..12 {
        let paid = pay(&gateway, &card_payment(1000, "EUR")).await;
        assert_eq!(paid.status, StatusCode::CREATED);
        let id = paid.json["id"].as_str().unwrap().to_string();
        let channel = paid.json["channel"].as_str().unwrap().to_string();
        *authorized.entry(channel.clone()).or_insert(0u64) += 1;

        let captured = follow_up(&gateway, &id, "capture", r#"{"amount": 600}"#).await;
        assert_eq!(captured.status, StatusCode::OK, "{:?}", captured.json);
        assert_eq!(captured.json["status"], "succeeded");
        assert_eq!(captured.json["channel"], channel.as_str());
        assert_eq!(captured.json["payment_id"], id.as_str());
        assert_eq!(captured.json["amount"], 600);

        let over = follow_up(&gateway, &id, "capture", r#"{"amount": 401}"#).await;
        assert_eq!(over.status, StatusCode::BAD_REQUEST);
        assert_eq!(over.error_type(), "invalid_request");
        assert!(
            over.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("401")
        );

        let refunded = follow_up(&gateway, &id, "refunds", "").await;
        assert_eq!(refunded.status, StatusCode::OK, "{:?}", refunded.json);
        assert_eq!(
            refunded.json["amount"], 600,
            "a refund defaults to what was captured"
        );
        assert_eq!(refunded.json["channel"], channel.as_str());

        let stored = get_payment(&gateway, KEY, &id).await;
        assert_eq!(stored.json["captured_amount"], 600);
        assert_eq!(stored.json["refunded_amount"], 600);
        assert_eq!(stored.json["operations"].as_array().unwrap().len(), 2);
    }
    for (name, sim) in [("a", &a), ("b", &b)] {
        let stats = sim.stats().await;
        let expected = authorized.get(name).copied().unwrap_or(0);
        assert_eq!(count(&stats, "payments"), expected, "{name}");
        assert_eq!(count(&stats, "captures"), expected, "{name}");
        assert_eq!(count(&stats, "refunds"), expected, "{name}");
    }
    assert_eq!(authorized.values().sum::<u64>(), 12);

    // A declined payment cannot be captured; an unknown one is 404.
    assert_eq!(
        follow_up(&gateway, "pay_nope", "capture", "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn failover_only_when_the_first_channel_surely_did_not_charge() {
    let down = Process::mock_psp(&["--name", "down", "--error-503", "1"]).await;
    let broken = Process::mock_psp(&["--name", "broken", "--error-500", "1"]).await;
    let silent = Process::mock_psp(&["--name", "silent", "--hang", "1"]).await;
    let spare = Process::mock_psp(&["--name", "spare"]).await;
    let channels = format!(
        "{}{}{}{}",
        channel("down", &down, ""),
        channel("broken", &broken, ""),
        channel("silent", &silent, "timeout_ms = 300"),
        channel("spare", &spare, "")
    );
    let routes = format!(
        "{}{channels}
[[rules]]
name = \"usd\"
channels = [\"down\", \"spare\"]
strategy = \"priority\"
[rules.match]
currencies = [\"USD\"]

[[rules]]
name = \"gbp\"
channels = [\"broken\", \"spare\"]
strategy = \"priority\"
[rules.match]
currencies = [\"GBP\"]

[[rules]]
name = \"chf\"
channels = [\"silent\", \"spare\"]
strategy = \"priority\"
[rules.match]
currencies = [\"CHF\"]
",
        base_config()
    );
    let gateway = Process::gateway(&routes).await;

    // 503: not processed, so the spare channel takes it.
    let moved = pay(&gateway, &card_payment(700, "USD")).await;
    assert_eq!(moved.status, StatusCode::CREATED);
    assert_eq!(moved.json["status"], "succeeded");
    assert_eq!(moved.json["channel"], "spare");
    let attempts = moved.json["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["channel"], "down");
    assert_eq!(attempts[0]["outcome"], "unavailable");
    assert_eq!(attempts[1]["outcome"], "succeeded");

    // 500 after processing: ambiguous, so pending on that channel and never re-sent.
    let ambiguous = pay(&gateway, &card_payment(700, "GBP")).await;
    assert_eq!(ambiguous.status, StatusCode::ACCEPTED);
    assert_eq!(ambiguous.json["status"], "pending");
    assert_eq!(ambiguous.json["channel"], "broken");
    assert_eq!(ambiguous.json["attempts"][0]["outcome"], "error");

    // No answer within the channel's timeout: pending too, never re-sent.
    let timed_out = pay(&gateway, &card_payment(700, "CHF")).await;
    assert_eq!(timed_out.status, StatusCode::ACCEPTED);
    assert_eq!(timed_out.json["status"], "pending");
    assert_eq!(timed_out.json["attempts"][0]["outcome"], "timeout");
    assert_eq!(timed_out.json["attempts"].as_array().unwrap().len(), 1);

    assert_eq!(
        count(&spare.stats().await, "payments"),
        1,
        "only the 503 case failed over"
    );
    assert_eq!(count(&broken.stats().await, "payments"), 1);
}

#[tokio::test]
async fn retryable_decline_codes_fail_over_and_others_do_not() {
    let issuer = Process::mock_psp(&[
        "--name",
        "issuer",
        "--success-rate",
        "0",
        "--decline-codes",
        "issuer_unavailable",
    ])
    .await;
    let spare = Process::mock_psp(&["--name", "spare"]).await;
    let channels = format!(
        "{}{}",
        channel(
            "issuer",
            &issuer,
            "retryable_codes = [\"issuer_unavailable\"]"
        ),
        channel("spare", &spare, "")
    );
    let gateway = gateway_over(&channels, "\"issuer\", \"spare\"").await;
    let answer = pay(&gateway, &card_payment(100, "EUR")).await;
    assert_eq!(answer.json["status"], "succeeded");
    assert_eq!(answer.json["channel"], "spare");
    assert_eq!(
        answer.json["attempts"][0]["decline_code"],
        "issuer_unavailable"
    );

    // A hard decline (test card) is final, whatever other channels exist.
    let mut hard = card_payment(100, "EUR");
    hard["card"]["number"] = json!("4000000000000002");
    let answer = pay(&gateway, &hard).await;
    assert_eq!(answer.json["status"], "declined");
    assert_eq!(answer.json["decline_code"], "card_declined");
    assert_eq!(answer.json["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(count(&spare.stats().await, "payments"), 1);
}

#[tokio::test]
async fn credentials_come_from_the_environment_and_reach_the_psp() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let channels = channel(
        "psp",
        &sim,
        "headers = { Authorization = \"env:PAYGATE_TEST_PSP_AUTH\" }",
    );
    let routes = format!(
        "{}{channels}\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n",
        base_config()
    );
    let gateway =
        Process::gateway_with_env(&routes, &[("PAYGATE_TEST_PSP_AUTH", "Bearer sk_test_42")]).await;
    let answer = pay(&gateway, &card_payment(100, "EUR")).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let stats = sim.stats().await;
    let received = &stats["recent"][0];
    assert_eq!(received["authorization"], "Bearer sk_test_42");
    assert_eq!(received["paygate_id"], answer.json["id"]);
    assert_eq!(received["idempotency_key"], answer.json["id"]);
    assert_eq!(received["amount"], 100);
}

#[tokio::test]
async fn http2_merchants_are_served() {
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let gateway = gateway_over(&channel("psp", &sim, ""), "\"psp\"").await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/payments", gateway.base))
        .header("authorization", format!("Bearer {KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            card_payment(100, "EUR").to_string(),
        )))
        .unwrap();
    let response = client.request(request).await.expect("h2 answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(count(&sim.stats().await, "payments"), 1);
}

#[tokio::test]
async fn a_cancel_voids_the_authorization_on_its_channel_once() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let routes = format!(
        "{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"a\"]\n",
        base_config(),
        channel("a", &a, "")
    );
    let gateway = Process::gateway(&routes).await;
    let paid = pay(&gateway, &card_payment(1000, "EUR")).await;
    assert_eq!(paid.json["status"], "succeeded", "{}", paid.json);
    let id = paid.json["id"].as_str().unwrap().to_string();
    let partial = follow_up(&gateway, &id, "cancel", r#"{"amount": 400}"#).await;
    assert_eq!(partial.status, StatusCode::BAD_REQUEST);
    assert!(
        partial.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("whole authorization")
    );
    let canceled = follow_up(&gateway, &id, "cancel", "").await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.json);
    assert_eq!(canceled.json["status"], "succeeded");
    assert_eq!(canceled.json["amount"], 1000);
    assert_eq!(canceled.json["channel"], "a");
    assert!(canceled.json["id"].as_str().unwrap().starts_with("can_"));
    for action in ["capture", "cancel", "refunds"] {
        let late = follow_up(&gateway, &id, action, "").await;
        assert_eq!(
            late.status,
            StatusCode::BAD_REQUEST,
            "{action}: {}",
            late.json
        );
    }
    let stored = get_payment(&gateway, KEY, &id).await;
    assert_eq!(stored.json["operations"][0]["kind"], "cancel");
    assert_eq!(stored.json["captured_amount"], 0);
    assert_eq!(a.stats().await["cancels"], 1);

    // Once captured, a payment is refunded, not canceled.
    let paid = pay(&gateway, &card_payment(500, "EUR")).await;
    let id = paid.json["id"].as_str().unwrap().to_string();
    follow_up(&gateway, &id, "capture", r#"{"amount": 100}"#).await;
    let refused = follow_up(&gateway, &id, "cancel", "").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.stats().await["cancels"], 1);
}
