//! The real PSP dialects through the real binary against PSP emulators nobody here wrote:
//! Stripe's lifecycle against localstripe, directly and behind Prism validating every request
//! against Stripe's own OpenAPI file; Adyen's requests validated by Prism against Adyen's
//! Checkout v72 file, in front of `paygate mock-psp --dialect adyen`, whose answers Prism
//! validates against the same file. Needs `bash .ci/emulators.sh` (`.ci/run` calls it).

mod support;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::emulators::*;
use support::*;

const STRIPE_KEY: &str = "sk_test_paygate";

fn stripe_channel(name: &str, url: &str) -> String {
    format!(
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{url}\"\nprotocol = \"stripe\"\napi_key = \"env:EMU_STRIPE_KEY\"\napi_version = \"2023-08-16\"\ntimeout_ms = 2000\n"
    )
}

async fn stripe_gateway(eur: &str, usd: &str) -> Process {
    let routes = format!(
        "{}{}{}
[[rules]]
name = \"eur\"
channels = [\"stripe_direct\"]
[rules.match]
currencies = [\"EUR\"]

[[rules]]
name = \"usd\"
channels = [\"stripe_validated\"]
[rules.match]
currencies = [\"USD\"]

[reconciliation]
interval_ms = 100
max_backoff_ms = 200
",
        base_config(),
        stripe_channel("stripe_direct", eur),
        stripe_channel("stripe_validated", usd),
    );
    Process::gateway_with_env(&routes, &[("EMU_STRIPE_KEY", STRIPE_KEY)]).await
}

fn stripe_card(amount: u64, currency: &str, number: &str, capture: bool) -> Value {
    json!({
        "amount": amount, "currency": currency, "method": "card", "country": "DE",
        "reference": "order-77", "capture": capture, "metadata": { "cart": "c-1" },
        "card": { "number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123" }
    })
}

/// The PaymentIntent as localstripe holds it.
async fn intent(localstripe: &Emulator, id: &str) -> Value {
    let auth = format!("Bearer {STRIPE_KEY}");
    let answer = send(
        Method::GET,
        &localstripe.url(&format!("/v1/payment_intents/{id}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    answer.json
}

#[tokio::test]
async fn stripe_lifecycle_against_localstripe_and_every_request_valid_for_stripes_openapi() {
    let localstripe = localstripe().await;
    let prism = prism_proxy(
        &psp_spec("stripe-payment-intents-subset.json"),
        &localstripe.base,
    )
    .await;
    let gateway = stripe_gateway(&localstripe.base, &prism.base).await;

    // Card data: a PaymentMethod, then a manual-capture PaymentIntent.
    let paid = pay(
        &gateway,
        &stripe_card(2000, "EUR", "4242424242424242", false),
    )
    .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.json);
    assert_eq!(paid.json["status"], "succeeded");
    assert_eq!(paid.json["channel"], "stripe_direct");
    let id = paid.json["id"].as_str().expect("id").to_string();
    let pi = paid.json["psp_reference"].as_str().expect("pi").to_string();
    assert!(pi.starts_with("pi_"), "{pi}");
    let held = intent(&localstripe, &pi).await;
    assert_eq!(held["status"], "requires_capture");
    assert_eq!(held["amount"], 2000);
    assert_eq!(held["currency"], "eur");
    assert_eq!(held["metadata"]["paygate_id"], id.as_str());
    assert_eq!(held["metadata"]["cart"], "c-1");

    let capture = follow_up(&gateway, &id, "capture", r#"{"amount": 1500}"#).await;
    assert_eq!(capture.status, StatusCode::OK, "{}", capture.json);
    assert_eq!(capture.json["status"], "succeeded");
    let refund = follow_up(&gateway, &id, "refunds", r#"{"amount": 500}"#).await;
    assert_eq!(refund.json["status"], "succeeded", "{}", refund.json);
    assert!(
        refund.json["psp_reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("re_")),
        "{}",
        refund.json
    );
    let stored = get_payment(&gateway, KEY, &id).await;
    assert_eq!(stored.json["captured_amount"], 1500);
    assert_eq!(stored.json["refunded_amount"], 500);
    let held = intent(&localstripe, &pi).await;
    assert_eq!(held["status"], "succeeded");
    // localstripe books the uncaptured 500 as a refund of the charge, beside the real 500.
    assert_eq!(held["latest_charge"]["amount_refunded"], 1000, "{held}");

    // 3-D Secure: `requires_action` is pending; once the shopper authenticated (localstripe's
    // own endpoint), reconciliation reads the intent back on its channel and settles it.
    let challenged = pay(
        &gateway,
        &stripe_card(1100, "EUR", "4000002760003184", false),
    )
    .await;
    assert_eq!(
        challenged.status,
        StatusCode::ACCEPTED,
        "{}",
        challenged.json
    );
    let challenged_id = challenged.json["id"].as_str().expect("id").to_string();
    let pi3 = challenged.json["psp_reference"]
        .as_str()
        .expect("pi")
        .to_string();
    // The PSP's action for the shopper reaches the merchant as Stripe described it.
    let action = &challenged.json["next_action"];
    assert!(action["type"].is_string(), "{}", challenged.json);
    assert_eq!(*action, intent(&localstripe, &pi3).await["next_action"]);
    let secret = intent(&localstripe, &pi3).await["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();
    let auth = format!("Bearer {STRIPE_KEY}");
    let authenticated = send(
        Method::POST,
        &localstripe.url(&format!("/v1/payment_intents/{pi3}/_authenticate")),
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("client_secret={secret}&success=true"),
    )
    .await;
    assert_eq!(
        authenticated.status,
        StatusCode::OK,
        "{}",
        authenticated.json
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = get_payment(&gateway, KEY, &challenged_id).await.json;
        if now["status"] != "pending" {
            assert_eq!(now["status"], "succeeded", "{now}");
            assert_eq!(now["reconciled"], true);
            assert!(now.get("next_action").is_none(), "{now}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reconciled: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // localstripe's declining card: HTTP 402 card_declined, normalized.
    let declined = pay(&gateway, &stripe_card(900, "EUR", "4000000000000341", true)).await;
    assert_eq!(declined.status, StatusCode::CREATED, "{}", declined.json);
    assert_eq!(declined.json["status"], "declined");
    assert_eq!(declined.json["decline_code"], "card_declined");

    // Behind Prism: a PaymentMethod the merchant created passes through as a token, and
    // authorize, capture and refund all reach localstripe, so Prism found each request valid
    // against Stripe's own description (an invalid one is answered 422, never forwarded).
    let pm = send(
        Method::POST,
        &localstripe.url("/v1/payment_methods"),
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "type=card&card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2030&card[cvc]=123",
    )
    .await;
    let pm = pm.json["id"].as_str().expect("pm id").to_string();
    let body = json!({
        "amount": 3000, "currency": "USD", "method": "card", "capture": false,
        "payment_method": pm, "metadata": { "order": "o-9" }
    });
    let paid = pay(&gateway, &body).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.json);
    assert_eq!(paid.json["status"], "succeeded");
    assert_eq!(paid.json["channel"], "stripe_validated");
    let id = paid.json["id"].as_str().expect("id").to_string();
    let pi = paid.json["psp_reference"].as_str().expect("pi").to_string();
    let capture = follow_up(&gateway, &id, "capture", "").await;
    assert_eq!(capture.json["status"], "succeeded", "{}", capture.json);
    let refund = follow_up(&gateway, &id, "refunds", r#"{"amount": 1000}"#).await;
    assert_eq!(refund.json["status"], "succeeded", "{}", refund.json);
    let held = intent(&localstripe, &pi).await;
    assert_eq!(held["status"], "succeeded");
    assert_eq!(held["metadata"]["paygate_id"], id.as_str());
    assert_eq!(held["latest_charge"]["amount_refunded"], 1000);
    // A void behind Prism: the authorization is released, and nothing more can be captured.
    let body = json!({
        "amount": 4100, "currency": "USD", "method": "card", "capture": false, "payment_method": pm
    });
    let held = pay(&gateway, &body).await;
    assert_eq!(held.json["status"], "succeeded", "{}", held.json);
    let id = held.json["id"].as_str().expect("id").to_string();
    let pi = held.json["psp_reference"].as_str().expect("pi").to_string();
    let cancel = follow_up(&gateway, &id, "cancel", "").await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.json);
    assert_eq!(cancel.json["status"], "succeeded", "{}", cancel.json);
    assert_eq!(cancel.json["amount"], 4100);
    assert_eq!(intent(&localstripe, &pi).await["status"], "canceled");
    let late = follow_up(&gateway, &id, "capture", "").await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{}", late.json);
    assert!(
        !prism.log_text().contains("UNPROCESSABLE_ENTITY"),
        "Prism refused a request:\n{}",
        prism.log_text()
    );
}

/// Real Stripe error answers, produced by stripe-stateful-mock (Stripe's own legacy
/// `/v1/charges`, which paygate does not call), read by paygate's `stripe` dialect: the
/// classification of declines, 429, 500 and a reused key rests on bodies nobody here wrote.
#[tokio::test]
async fn the_stripe_dialect_reads_stripes_own_error_answers() {
    use paygate::upstream::{Call, Reply, Step, dialect};

    let mock = stripe_stateful_mock().await;
    let charge = |body: String, key: Option<&'static str>| {
        let url = mock.url("/v1/charges");
        async move {
            let auth = format!("Bearer {STRIPE_KEY}");
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            if let Some(key) = key {
                headers.push(("idempotency-key", key));
            }
            let answer = send(Method::POST, &url, &headers, &body).await;
            (answer.status, answer.json.to_string())
        }
    };
    // api_key must name a variable that is set; PATH always is (no call is made).
    let routes = "[[channels]]\nname = \"s\"\nurl = \"http://127.0.0.1:1\"\nprotocol = \"stripe\"\napi_key = \"env:PATH\"\n";
    let config = paygate::config::Config::parse(std::path::Path::new("routes.toml"), routes)
        .expect("a valid routes file");
    let stripe = dialect(&config.channels[0]);
    let body = paygate::payload::PaymentBody::parse(
        br#"{"amount":2000,"currency":"USD","payment_method":"pm_card_visa"}"#,
    )
    .expect("a body");
    let authorize = Call::Authorize { payment: &body };
    let read = |status: StatusCode, body: &str| {
        stripe.reply(&authorize, &Step::First, status, body.as_bytes())
    };

    let (status, body) = charge(
        "amount=2000&currency=usd&source=tok_chargeDeclinedInsufficientFunds".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        read(status, &body),
        Reply::Declined {
            psp_reference: None,
            code: "insufficient_funds".into()
        }
    );
    let (status, body) = charge(
        "amount=2000&currency=usd&source=tok_chargeDeclinedExpiredCard".into(),
        None,
    )
    .await;
    assert_eq!(
        read(status, &body),
        Reply::Declined {
            psp_reference: None,
            code: "expired_card".into()
        }
    );
    let (status, body) = charge("amount=2000&currency=usd&source=tok_429".into(), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        matches!(read(status, &body), Reply::Unavailable { .. }),
        "{body}"
    );
    let (status, body) = charge("amount=2000&currency=usd&source=tok_500".into(), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(matches!(read(status, &body), Reply::Error { .. }), "{body}");
    // The same key with another body: Stripe refuses it, and the first may have charged.
    let (first, _) = charge(
        "amount=2000&currency=usd&source=tok_visa".into(),
        Some("key-reused"),
    )
    .await;
    assert_eq!(first, StatusCode::OK);
    let (status, body) = charge(
        "amount=2001&currency=usd&source=tok_visa".into(),
        Some("key-reused"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(matches!(read(status, &body), Reply::Error { .. }), "{body}");
}

const ADYEN_HMAC: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";

fn adyen_channel(name: &str, url: &str) -> String {
    format!(
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{url}\"\nprotocol = \"adyen\"\napi_key = \"env:EMU_ADYEN_KEY\"\nmerchant_account = \"PaygateTestECOM\"\nreturn_url = \"https://shop.example/return\"\nwebhook_secret = \"env:EMU_ADYEN_HMAC\"\ntimeout_ms = 5000\n"
    )
}

fn adyen_card(amount: u64, number: &str) -> Value {
    json!({
        "amount": amount, "currency": "EUR", "method": "card", "country": "NL",
        "reference": "order-5", "capture": false,
        "card": { "number": number, "exp_month": 3, "exp_year": 2030, "cvc": "737", "holder_name": "J Smith" }
    })
}

/// A gateway routing to the Adyen channel at `adyen_url` first, then to `backup`, with its
/// merchant listener on `port` when given (where a simulator sends its notifications).
async fn adyen_then_backup(adyen_url: &str, backup: &Process, port: Option<u16>) -> Process {
    let mut base = base_config();
    if let Some(port) = port {
        base = base.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    }
    let routes = format!(
        "{base}{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"adyen_eu\", \"backup\"]\nstrategy = \"priority\"\n",
        adyen_channel("adyen_eu", adyen_url),
        channel("backup", backup, "")
    );
    Process::gateway_with_env(
        &routes,
        &[
            ("EMU_ADYEN_KEY", "adyen-test-key"),
            ("EMU_ADYEN_HMAC", ADYEN_HMAC),
        ],
    )
    .await
}

/// Polls the payment until `done` holds (at most 15 s).
async fn until(gateway: &Process, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let payment = get_payment(gateway, KEY, id).await.json;
        if done(&payment) {
            return payment;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {payment}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn adyen_through_prism_against_adyens_openapi_with_notifications_settling_what_is_pending() {
    // paygate's port is chosen first: the Adyen simulator sends its notifications there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let webhooks = format!("http://127.0.0.1:{port}/v1/psp/adyen_eu/webhooks");
    let adyen = Process::mock_psp(&[
        "--dialect",
        "adyen",
        "--name",
        "adyen",
        "--success-rate",
        "1",
        "--pending-resolves-ms",
        "300",
        "--webhook-url",
        &webhooks,
        "--adyen-hmac-key",
        ADYEN_HMAC,
    ])
    .await;
    let prism = prism_proxy(&psp_spec("adyen-checkout-v72.json"), &adyen.base).await;
    let backup = Process::mock_psp(&["--name", "backup", "--success-rate", "1"]).await;
    let gateway = adyen_then_backup(&prism.base, &backup, Some(port)).await;

    let paid = pay(&gateway, &adyen_card(5000, "4111111111111111")).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.json);
    assert_eq!(paid.json["status"], "succeeded");
    assert_eq!(paid.json["channel"], "adyen_eu");
    let id = paid.json["id"].as_str().expect("id").to_string();
    let seen = send(
        Method::GET,
        &format!("{}/_sim/payments/{id}", adyen.base),
        &[],
        "",
    )
    .await;
    assert_eq!(seen.json["processed"], 1, "{}", seen.json);
    assert_eq!(seen.json["merchant_account"], "PaygateTestECOM");

    // Refused with Adyen's code, normalized; the raw code stays on the attempt.
    let refused = pay(&gateway, &adyen_card(700, "4000000000009995")).await;
    assert_eq!(refused.json["status"], "declined", "{}", refused.json);
    assert_eq!(refused.json["decline_code"], "insufficient_funds");
    assert_eq!(refused.json["attempts"][0]["psp_code"], "12");
    // A soft refusal (issuer unavailable) fails over to the next channel.
    // (The test card declines on the backup too; the notification of the first refusal,
    // which arrives while paygate fails over, changes nothing.)
    let soft = pay(&gateway, &adyen_card(800, "4000000000000119")).await;
    assert_eq!(soft.json["channel"], "backup", "{}", soft.json);
    assert_eq!(soft.json["attempts"][0]["channel"], "adyen_eu");
    assert_eq!(
        soft.json["attempts"][0]["decline_code"],
        "issuer_unavailable"
    );
    assert_eq!(soft.json["attempts"][1]["channel"], "backup");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let soft_now = get_payment(&gateway, KEY, soft.json["id"].as_str().expect("id")).await;
    assert_eq!(soft_now.json["reconciled"], false, "{}", soft_now.json);
    assert_eq!(soft_now.json["psp_reference"], "backup-1");

    // Pending, then AUTHORISATION from the simulator settles it.
    let pending = pay(&gateway, &adyen_card(900, "4000000000000259")).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{}", pending.json);
    let pending_id = pending.json["id"].as_str().expect("id").to_string();
    let settled = until(&gateway, &pending_id, |p| p["status"] != "pending").await;
    assert_eq!(settled["status"], "succeeded", "{settled}");

    // Capture, refund and cancel are `received`, settled by their notifications (which may
    // arrive before the answer does: then the answer is already `succeeded`).
    let settled_or_pending = |answer: &Answer| {
        let status = answer.json["status"].as_str().unwrap_or("");
        assert!(
            status == "pending" || status == "succeeded",
            "{}",
            answer.json
        );
    };
    let capture = follow_up(&gateway, &id, "capture", r#"{"amount": 3000}"#).await;
    settled_or_pending(&capture);
    until(&gateway, &id, |p| p["captured_amount"] == 3000).await;
    let refund = follow_up(&gateway, &id, "refunds", r#"{"amount": 1000}"#).await;
    settled_or_pending(&refund);
    let done = until(&gateway, &id, |p| p["refunded_amount"] == 1000).await;
    assert_eq!(done["operations"][1]["status"], "succeeded", "{done}");
    let cancel = follow_up(&gateway, &pending_id, "cancel", "").await;
    settled_or_pending(&cancel);
    let canceled = until(&gateway, &pending_id, |p| {
        p["operations"][0]["status"] != "pending"
    })
    .await;
    assert_eq!(
        canceled["operations"][0]["status"], "succeeded",
        "{canceled}"
    );
    assert_eq!(
        gateway
            .metric("paygate_psp_webhook_events_total{channel=\"adyen_eu\",result=\"settled\"}")
            .await,
        4.0
    );
    let log = prism.log_text();
    assert!(
        !log.contains("UNPROCESSABLE_ENTITY") && !log.contains("VIOLATIONS"),
        "Prism found a request or an answer outside Adyen's description:\n{log}"
    );
}

#[tokio::test]
async fn an_adyen_500_is_sent_again_with_the_same_key_and_never_elsewhere() {
    let adyen =
        Process::mock_psp(&["--dialect", "adyen", "--name", "adyen", "--error-500", "1"]).await;
    let backup = Process::mock_psp(&["--name", "backup", "--success-rate", "1"]).await;
    let gateway = adyen_then_backup(&adyen.base, &backup, None).await;
    let answer = pay(&gateway, &adyen_card(1000, "4111111111111111")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["status"], "pending");
    assert_eq!(answer.json["channel"], "adyen_eu");
    let id = answer.json["id"].as_str().expect("id");
    let seen = send(
        Method::GET,
        &format!("{}/_sim/payments/{id}", adyen.base),
        &[],
        "",
    )
    .await;
    // Processed once, asked twice: the re-send with the same key was a replay.
    assert_eq!(seen.json["processed"], 1, "{}", seen.json);
    assert_eq!(seen.json["requests"], 2, "{}", seen.json);
    assert_eq!(backup.stats().await["payments"], 0);
    assert_eq!(
        gateway
            .metric("paygate_channel_resends_total{channel=\"adyen_eu\"}")
            .await,
        1.0
    );
}
