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
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{url}\"\nprotocol = \"stripe\"\napi_key = \"env:EMU_STRIPE_KEY\"\napi_version = \"2023-08-16\"\ntimeout_ms = 5000\n"
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

    // localstripe's declining card: HTTP 402 card_declined, normalized.
    let declined = pay(&gateway, &stripe_card(900, "EUR", "4000000000000341", true)).await;
    assert_eq!(declined.status, StatusCode::CREATED, "{}", declined.json);
    assert_eq!(declined.json["status"], "declined");
    assert_eq!(declined.json["decline_code"], "card_declined");

    // Behind Prism: a PaymentMethod the merchant created passes through as a token, and
    // authorize, capture and refund all reach localstripe, so Prism found each request valid
    // against Stripe's own description (an invalid one is answered 422, never forwarded).
    let auth = format!("Bearer {STRIPE_KEY}");
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
