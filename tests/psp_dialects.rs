//! The `stripe` and `adyen` dialects through the real binary against scripted PSPs on
//! 127.0.0.1 (what paygate sends, exactly; how each answer is read), failover across the two
//! dialects, and the PSP webhooks: valid, replayed, tampered and unsigned events.
//! The emulator tests (localstripe, Prism, stripe-stateful-mock) are in `tests/emulators.rs`.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::*;

const STRIPE_KEY: &str = "sk_test_dialects";
const STRIPE_WHSEC: &str = "whsec_dialects_test";
const ADYEN_KEY: &str = "adyen-api-key";
const ADYEN_HMAC: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";

/// One request a scripted PSP received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: String,
}

type Script = fn(usize, &Seen) -> (u16, String);

/// A PSP on 127.0.0.1 that records every request and answers the `n`th (from 1) as
/// `script` says. Returns its base URL and what it saw.
async fn scripted_psp(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    let store = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let method = request.method().to_string();
                            let path = request
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let headers = request.headers().clone();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method,
                                path,
                                headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let (status, answer) = {
                                let mut all = store.lock().unwrap_or_else(|e| e.into_inner());
                                all.push(seen.clone());
                                script(all.len(), &seen)
                            };
                            let mut response = http::Response::new(Full::new(Bytes::from(answer)));
                            *response.status_mut() =
                                StatusCode::from_u16(status).expect("a status");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (base, seen)
}

fn seen(all: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    all.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn stripe_channel(name: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{url}\"\nprotocol = \"stripe\"\napi_key = \"env:DIALECT_STRIPE_KEY\"\nwebhook_secret = \"env:DIALECT_STRIPE_WHSEC\"\ntimeout_ms = 2000\n{extra}\n"
    )
}

fn adyen_channel(name: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{url}\"\nprotocol = \"adyen\"\napi_key = \"env:DIALECT_ADYEN_KEY\"\nmerchant_account = \"PaygateTestECOM\"\nreturn_url = \"https://shop.example/return\"\nwebhook_secret = \"env:DIALECT_ADYEN_HMAC\"\ntimeout_ms = 2000\n{extra}\n"
    )
}

async fn start_gateway(channels: &str, rule_channels: &str) -> Process {
    let routes = format!(
        "{}{channels}\n[[rules]]\nname = \"all\"\nchannels = [{rule_channels}]\nstrategy = \"priority\"\n",
        base_config()
    );
    Process::gateway_with_env(
        &routes,
        &[
            ("DIALECT_STRIPE_KEY", STRIPE_KEY),
            ("DIALECT_STRIPE_WHSEC", STRIPE_WHSEC),
            ("DIALECT_ADYEN_KEY", ADYEN_KEY),
            ("DIALECT_ADYEN_HMAC", ADYEN_HMAC),
        ],
    )
    .await
}

/// Form fields of a Stripe request body, decoded.
fn form(body: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    }
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// `Stripe-Signature` as Stripe computes it: HMAC-SHA256 of `t.body` with the endpoint secret.
fn stripe_signature(t: u64, body: &str) -> String {
    let mac = hmac_sha256(STRIPE_WHSEC.as_bytes(), format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac))
}

/// An Adyen notification item with its `hmacSignature`, as Adyen signs it.
fn adyen_item(fields: Value) -> Value {
    let text = |name: &str| fields[name].as_str().unwrap_or("").to_string();
    let signed = [
        text("pspReference"),
        text("originalReference"),
        text("merchantAccountCode"),
        text("merchantReference"),
        fields["amount"]["value"].to_string(),
        fields["amount"]["currency"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        text("eventCode"),
        text("success"),
    ]
    .join(":");
    let key = hex::decode(ADYEN_HMAC).expect("hex key");
    let signature = base64_encode(&hmac_sha256(&key, signed.as_bytes()));
    let mut item = fields;
    item["additionalData"] = json!({ "hmacSignature": signature });
    json!({ "NotificationRequestItem": item })
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn post_webhook(
    gateway: &Process,
    channel: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send(
        Method::POST,
        &format!("{}/v1/psp/{channel}/webhooks", gateway.base),
        headers,
        body,
    )
    .await
}

/// Posts one signed Adyen notification item to the `adyen_eu` webhook endpoint.
async fn notify_adyen(gateway: &Process, item: Value) -> StatusCode {
    let notification = json!({"live": "false", "notificationItems": [item]}).to_string();
    post_webhook(gateway, "adyen_eu", &[], &notification)
        .await
        .status
}

/// Stripe's event that the authorization of `pi_1` (paygate's payment `id`) can be captured.
fn capturable_event(id: &str) -> String {
    json!({
    "id": "evt_1", "object": "event", "type": "payment_intent.amount_capturable_updated",
    "data": { "object": { "id": "pi_1", "object": "payment_intent", "status": "requires_capture",
        "amount": 2000, "amount_capturable": 2000, "currency": "eur",
        "metadata": { "paygate_id": id } } }
})
.to_string()
}

fn stripe_script(n: usize, seen: &Seen) -> (u16, String) {
    match (n, seen.path.as_str()) {
        (_, "/v1/payment_methods") => (200, r#"{"id":"pm_1","object":"payment_method"}"#.into()),
        (_, "/v1/payment_intents") => (
            200,
            r#"{"id":"pi_1","object":"payment_intent","status":"processing"}"#.into(),
        ),
        _ => (404, "{}".into()),
    }
}

#[tokio::test]
async fn stripe_requests_are_form_encoded_keyed_and_a_signed_event_settles_the_payment() {
    let (url, stripe) = scripted_psp(stripe_script).await;
    let gateway = start_gateway(&stripe_channel("stripe_eu", &url, ""), "\"stripe_eu\"").await;
    let mut body = card_payment(2000, "EUR");
    body["metadata"] = json!({ "cart": "c-7" });
    let answer = pay(&gateway, &body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["status"], "pending");
    assert_eq!(answer.json["psp_reference"], "pi_1");
    let id = answer.json["id"].as_str().expect("an id").to_string();

    let requests = seen(&stripe);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (pm, intent) = (&requests[0], &requests[1]);
    assert_eq!(
        (pm.method.as_str(), pm.path.as_str()),
        ("POST", "/v1/payment_methods")
    );
    assert_eq!(header(pm, "authorization"), format!("Bearer {STRIPE_KEY}"));
    assert_eq!(
        header(pm, "content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(header(pm, "stripe-version"), "2023-08-16");
    assert_eq!(header(pm, "idempotency-key"), format!("{id}-pm"));
    let pm_form = form(&pm.body);
    assert_eq!(field(&pm_form, "type"), Some("card"));
    assert_eq!(field(&pm_form, "card[number]"), Some("4111111111111111"));
    assert_eq!(field(&pm_form, "card[exp_month]"), Some("12"));
    assert_eq!(field(&pm_form, "card[cvc]"), Some("123"));

    assert_eq!(intent.path, "/v1/payment_intents");
    assert_eq!(header(intent, "idempotency-key"), id);
    let fields = form(&intent.body);
    assert_eq!(field(&fields, "amount"), Some("2000"));
    assert_eq!(field(&fields, "currency"), Some("eur"));
    assert_eq!(field(&fields, "payment_method"), Some("pm_1"));
    assert_eq!(field(&fields, "confirm"), Some("true"));
    assert_eq!(field(&fields, "capture_method"), Some("manual"));
    assert_eq!(field(&fields, "metadata[paygate_id]"), Some(id.as_str()));
    assert_eq!(field(&fields, "metadata[cart]"), Some("c-7"));
    assert_eq!(field(&fields, "metadata[reference]"), Some("order-1"));
    assert!(
        !intent.body.contains("4111"),
        "no card data beside the PaymentMethod"
    );

    // The PSP's event settles it; unsigned, tampered and stale copies change nothing.
    let event = capturable_event(&id);
    let now = unix_now();
    let unsigned = post_webhook(&gateway, "stripe_eu", &[], &event).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.error_type(), "unauthenticated");
    let tampered = event.replace("2000", "2001");
    let signature = stripe_signature(now, &event);
    let forged = post_webhook(
        &gateway,
        "stripe_eu",
        &[("stripe-signature", &signature)],
        &tampered,
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let stale_signature = stripe_signature(now - 3600, &event);
    let stale = post_webhook(
        &gateway,
        "stripe_eu",
        &[("stripe-signature", &stale_signature)],
        &event,
    )
    .await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    let still = get_payment(&gateway, KEY, &id).await;
    assert_eq!(still.json["status"], "pending");

    let valid = post_webhook(
        &gateway,
        "stripe_eu",
        &[("stripe-signature", &signature)],
        &event,
    )
    .await;
    assert_eq!(valid.status, StatusCode::OK, "{}", valid.json);
    assert_eq!(valid.json, json!({ "settled": 1, "unchanged": 0 }));
    let settled = get_payment(&gateway, KEY, &id).await;
    assert_eq!(settled.json["status"], "succeeded");
    assert_eq!(settled.json["psp_reference"], "pi_1");
    let again = post_webhook(
        &gateway,
        "stripe_eu",
        &[("stripe-signature", &signature)],
        &event,
    )
    .await;
    assert_eq!(again.json, json!({ "settled": 0, "unchanged": 1 }));
    assert_eq!(
        gateway
            .metric("paygate_psp_webhook_events_total{channel=\"stripe_eu\",result=\"settled\"}")
            .await,
        1.0
    );
    // Nothing was sent to the PSP by the webhooks.
    assert_eq!(seen(&stripe).len(), 2);
}

fn stripe_decline_script(_: usize, seen: &Seen) -> (u16, String) {
    match seen.path.as_str() {
        "/v1/payment_methods" => (200, r#"{"id":"pm_2"}"#.into()),
        _ => (
            402,
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds.","payment_intent":{"id":"pi_2","status":"requires_payment_method"}}}"#.into(),
        ),
    }
}

#[tokio::test]
async fn a_stripe_402_is_a_normalized_decline_with_the_raw_code_kept() {
    let (url, _stripe) = scripted_psp(stripe_decline_script).await;
    let gateway = start_gateway(
        &stripe_channel(
            "stripe_eu",
            &url,
            "decline_codes = { insufficient_funds = \"try_again_later\" }\nretryable_codes = []",
        ),
        "\"stripe_eu\"",
    )
    .await;
    let answer = pay(&gateway, &card_payment(1500, "EUR")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["status"], "declined");
    assert_eq!(answer.json["decline_code"], "try_again_later");
    assert_eq!(answer.json["psp_reference"], "pi_2");
    let attempts = answer.json["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["psp_code"], "insufficient_funds");
}

fn adyen_script(n: usize, seen: &Seen) -> (u16, String) {
    if seen.path == "/payments" {
        let reference = serde_json::from_str::<Value>(&seen.body)
            .map(|b| b["reference"].clone())
            .unwrap_or(Value::Null);
        return match n {
            1 => (
                200,
                json!({"pspReference":"PSP0000000000001","resultCode":"Received","merchantReference":reference}).to_string(),
            ),
            _ => (
                200,
                json!({"pspReference":"PSP0000000000002","resultCode":"Authorised","merchantReference":reference}).to_string(),
            ),
        };
    }
    if seen.path.ends_with("/captures") {
        let request: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        return (
            201,
            json!({"merchantAccount":"PaygateTestECOM","paymentPspReference":"PSP0000000000002",
                "pspReference":"CAP0000000000001","reference":request["reference"],"status":"received",
                "amount":request["amount"]})
            .to_string(),
        );
    }
    if seen.path.ends_with("/cancels") {
        let request: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        return (
            201,
            json!({"merchantAccount":"PaygateTestECOM","paymentPspReference":"PSP0000000000002",
                "pspReference":"CAN0000000000001","reference":request["reference"],"status":"received"})
            .to_string(),
        );
    }
    (404, "{}".into())
}

#[tokio::test]
async fn adyen_requests_and_notifications_settle_payments_and_captures() {
    let (url, adyen) = scripted_psp(adyen_script).await;
    let gateway = start_gateway(&adyen_channel("adyen_eu", &url, ""), "\"adyen_eu\"").await;
    let first = pay(&gateway, &card_payment(2500, "EUR")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json);
    let pending_id = first.json["id"].as_str().expect("id").to_string();
    let requests = seen(&adyen);
    let request: Value = serde_json::from_str(&requests[0].body).expect("JSON");
    assert_eq!(header(&requests[0], "x-api-key"), ADYEN_KEY);
    assert_eq!(header(&requests[0], "idempotency-key"), pending_id);
    assert_eq!(request["merchantAccount"], "PaygateTestECOM");
    assert_eq!(request["reference"], pending_id.as_str());
    assert_eq!(request["amount"], json!({"value": 2500, "currency": "EUR"}));
    assert_eq!(
        request["paymentMethod"],
        json!({"type":"scheme","number":"4111111111111111","expiryMonth":"12","expiryYear":"2030","cvc":"123"})
    );
    assert_eq!(request["additionalData"]["manualCapture"], "true");
    assert_eq!(request["countryCode"], "DE");
    assert_eq!(request["returnUrl"], "https://shop.example/return");

    // AUTHORISATION settles the pending payment, once.
    let item = adyen_item(json!({
        "amount": {"currency": "EUR", "value": 2500}, "eventCode": "AUTHORISATION",
        "merchantAccountCode": "PaygateTestECOM", "merchantReference": pending_id,
        "pspReference": "PSP0000000000001", "success": "true", "eventDate": "2026-12-03T10:00:00+01:00"
    }));
    let notification = json!({"live": "false", "notificationItems": [item]}).to_string();
    let tampered = notification.replace("2500", "25");
    let forged = post_webhook(&gateway, "adyen_eu", &[], &tampered).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_payment(&gateway, KEY, &pending_id).await.json["status"],
        "pending"
    );
    let accepted = post_webhook(&gateway, "adyen_eu", &[], &notification).await;
    assert_eq!(accepted.status, StatusCode::OK);
    let settled = get_payment(&gateway, KEY, &pending_id).await;
    assert_eq!(settled.json["status"], "succeeded");
    assert_eq!(settled.json["psp_reference"], "PSP0000000000001");
    post_webhook(&gateway, "adyen_eu", &[], &notification).await;
    assert_eq!(
        gateway
            .metric("paygate_psp_webhook_events_total{channel=\"adyen_eu\",result=\"unchanged\"}")
            .await,
        1.0
    );

    // A capture is `received`, pending until Adyen's CAPTURE notification.
    let paid = pay(&gateway, &card_payment(4000, "EUR")).await;
    assert_eq!(paid.json["status"], "succeeded", "{}", paid.json);
    let paid_id = paid.json["id"].as_str().expect("id").to_string();
    let capture = follow_up(&gateway, &paid_id, "capture", r#"{"amount": 3000}"#).await;
    assert_eq!(capture.status, StatusCode::OK, "{}", capture.json);
    assert_eq!(capture.json["status"], "pending");
    let capture_id = capture.json["id"].as_str().expect("id").to_string();
    let requests = seen(&adyen);
    let sent = requests.last().expect("the capture");
    assert_eq!(sent.path, "/payments/PSP0000000000002/captures");
    assert_eq!(header(sent, "idempotency-key"), capture_id);
    let body: Value = serde_json::from_str(&sent.body).expect("JSON");
    assert_eq!(
        body,
        json!({"merchantAccount":"PaygateTestECOM","amount":{"value":3000,"currency":"EUR"},"reference":capture_id})
    );
    let item = adyen_item(json!({
        "amount": {"currency": "EUR", "value": 3000}, "eventCode": "CAPTURE",
        "merchantAccountCode": "PaygateTestECOM", "merchantReference": capture_id,
        "originalReference": "PSP0000000000002", "pspReference": "CAP0000000000001", "success": "true"
    }));
    assert_eq!(notify_adyen(&gateway, item).await, StatusCode::OK);
    let captured = get_payment(&gateway, KEY, &paid_id).await;
    assert_eq!(captured.json["captured_amount"], 3000, "{}", captured.json);
    assert_eq!(captured.json["operations"][0]["status"], "succeeded");
    assert_eq!(
        follow_up(&gateway, &paid_id, "cancel", "").await.status,
        StatusCode::BAD_REQUEST,
        "a captured payment is refunded, not canceled"
    );

    // A cancel (void) is `received` too, settled by CANCELLATION.
    let held = pay(&gateway, &card_payment(900, "EUR")).await;
    let held_id = held.json["id"].as_str().expect("id").to_string();
    let cancel = follow_up(&gateway, &held_id, "cancel", "").await;
    assert_eq!(cancel.json["status"], "pending", "{}", cancel.json);
    let cancel_id = cancel.json["id"].as_str().expect("id").to_string();
    let sent = seen(&adyen).last().cloned().expect("the cancel");
    assert_eq!(sent.path, "/payments/PSP0000000000002/cancels");
    let body: Value = serde_json::from_str(&sent.body).expect("JSON");
    assert_eq!(
        body,
        json!({"merchantAccount":"PaygateTestECOM","reference":cancel_id})
    );
    let item = adyen_item(json!({
        "amount": {"currency": "EUR", "value": 0}, "eventCode": "CANCELLATION",
        "merchantAccountCode": "PaygateTestECOM", "merchantReference": cancel_id,
        "originalReference": "PSP0000000000002", "pspReference": "CAN0000000000001", "success": "true"
    }));
    assert_eq!(notify_adyen(&gateway, item).await, StatusCode::OK);
    let canceled = get_payment(&gateway, KEY, &held_id).await;
    assert_eq!(
        canceled.json["operations"][0]["kind"], "cancel",
        "{}",
        canceled.json
    );
    assert_eq!(canceled.json["operations"][0]["status"], "succeeded");
    assert_eq!(
        follow_up(&gateway, &held_id, "capture", "").await.status,
        StatusCode::BAD_REQUEST
    );
}

fn adyen_authorises(_: usize, seen: &Seen) -> (u16, String) {
    if seen.path.ends_with("/refunds") {
        return (
            201,
            r#"{"merchantAccount":"PaygateTestECOM","paymentPspReference":"PSP0000000000009","pspReference":"REF0000000000001","status":"received","amount":{"value":100,"currency":"EUR"}}"#.into(),
        );
    }
    (
        200,
        r#"{"pspReference":"PSP0000000000009","resultCode":"Authorised"}"#.into(),
    )
}

fn stripe_faults(_: usize, seen: &Seen) -> (u16, String) {
    match seen.path.as_str() {
        "/v1/payment_methods" => (200, r#"{"id":"pm_3"}"#.into()),
        _ => (
            500,
            r#"{"error":{"type":"api_error","message":"boom"}}"#.into(),
        ),
    }
}

#[tokio::test]
async fn across_dialects_a_refused_connection_fails_over_a_fault_does_not_and_follow_ups_stick() {
    // Nothing listens on the Stripe channel's port: refused before anything was sent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let (adyen_url, adyen) = scripted_psp(adyen_authorises).await;
    let channels =
        stripe_channel("stripe_eu", &dead, "") + &adyen_channel("adyen_eu", &adyen_url, "");
    let gateway = start_gateway(&channels, "\"stripe_eu\", \"adyen_eu\"").await;
    let mut body = card_payment(700, "EUR");
    body["capture"] = json!(true);
    let answer = pay(&gateway, &body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["channel"], "adyen_eu");
    let outcomes: Vec<&str> = answer.json["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["unavailable", "succeeded"]);
    let id = answer.json["id"].as_str().expect("id").to_string();
    let refund = follow_up(&gateway, &id, "refunds", r#"{"amount": 100}"#).await;
    assert_eq!(refund.json["channel"], "adyen_eu", "{}", refund.json);
    assert_eq!(
        seen(&adyen).last().map(|s| s.path.clone()),
        Some("/payments/PSP0000000000009/refunds".to_string())
    );

    // A 5xx from Stripe's PaymentIntent may have charged: the same call goes once more to
    // Stripe with the same key, then the payment is pending there, never sent to Adyen.
    let (stripe_url, stripe) = scripted_psp(stripe_faults).await;
    let (adyen_url, adyen) = scripted_psp(adyen_authorises).await;
    let channels =
        stripe_channel("stripe_eu", &stripe_url, "") + &adyen_channel("adyen_eu", &adyen_url, "");
    let gateway = start_gateway(&channels, "\"stripe_eu\", \"adyen_eu\"").await;
    let answer = pay(&gateway, &card_payment(800, "EUR")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["status"], "pending");
    assert_eq!(answer.json["channel"], "stripe_eu");
    let id = answer.json["id"].as_str().expect("id");
    let intents: Vec<Seen> = seen(&stripe)
        .into_iter()
        .filter(|s| s.path == "/v1/payment_intents")
        .collect();
    assert_eq!(intents.len(), 2, "sent once and re-sent once");
    assert!(intents.iter().all(|s| header(s, "idempotency-key") == id));
    assert_eq!(
        intents[0].body, intents[1].body,
        "the re-send is the same request"
    );
    assert!(seen(&adyen).is_empty(), "never sent to another channel");
}

#[tokio::test]
async fn webhooks_for_unknown_channels_or_v1_channels_are_404_and_bad_json_is_400() {
    let (url, _psp) = scripted_psp(adyen_authorises).await;
    let gateway = start_gateway(&adyen_channel("adyen_eu", &url, ""), "\"adyen_eu\"").await;
    let missing = post_webhook(&gateway, "nope", &[], "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let garbage = post_webhook(&gateway, "adyen_eu", &[], "{not json").await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST, "{}", garbage.json);
    assert_eq!(garbage.error_type(), "invalid_request");
    let get = send(
        Method::GET,
        &format!("{}/v1/psp/adyen_eu/webhooks", gateway.base),
        &[],
        "",
    )
    .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    // Still serving.
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn the_readme_stripe_and_adyen_example_passes_check() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let example = readme
        .split("<!-- dialects-example -->\n```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the dialects example in the README");
    let path = scratch_dir().join("routes.toml");
    std::fs::write(&path, format!("{}{example}", base_config())).expect("write");
    let check = |envs: &[(&str, &str)]| {
        std::process::Command::new(BIN)
            .arg("check")
            .arg(&path)
            .envs(envs.iter().copied())
            .output()
            .expect("run paygate check")
    };
    let env = [
        ("STRIPE_SECRET_KEY", "sk_test_readme"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_readme"),
        ("ADYEN_API_KEY", "adyen-readme"),
        ("ADYEN_HMAC_KEY", ADYEN_HMAC),
    ];
    let ok = check(&env);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Without the credentials, check names each missing variable.
    let missing = check(&env[1..]);
    assert_eq!(missing.status.code(), Some(1));
    let text = String::from_utf8_lossy(&missing.stdout).into_owned()
        + &String::from_utf8_lossy(&missing.stderr);
    assert!(text.contains("STRIPE_SECRET_KEY"), "{text}");
}

fn stripe_lost_answers(_: usize, seen: &Seen) -> (u16, String) {
    match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/v1/payment_methods") => (200, r#"{"id":"pm_4"}"#.into()),
        ("POST", _) => (502, "<html>bad gateway</html>".into()),
        ("GET", path) if path.starts_with("/v1/payment_intents/search?") => (
            200,
            r#"{"object":"search_result","data":[{"id":"pi_4","object":"payment_intent","status":"requires_capture"}],"has_more":false}"#.into(),
        ),
        _ => (404, "{}".into()),
    }
}

#[tokio::test]
async fn a_stripe_payment_whose_answers_were_lost_is_found_by_its_paygate_id() {
    let (url, stripe) = scripted_psp(stripe_lost_answers).await;
    let routes = format!(
        "{}{}\n[[rules]]\nname = \"all\"\nchannels = [\"stripe_eu\"]\n\n[reconciliation]\ninterval_ms = 100\nmax_backoff_ms = 200\n",
        base_config(),
        stripe_channel("stripe_eu", &url, "").replace("timeout_ms = 2000", "timeout_ms = 300")
    );
    let gateway = Process::gateway_with_env(
        &routes,
        &[
            ("DIALECT_STRIPE_KEY", STRIPE_KEY),
            ("DIALECT_STRIPE_WHSEC", STRIPE_WHSEC),
        ],
    )
    .await;
    let answer = pay(&gateway, &card_payment(1200, "EUR")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert!(answer.json["psp_reference"].is_null());
    let id = answer.json["id"].as_str().expect("id").to_string();
    // Found by search: settled as the intent stands (authorized), on its own channel.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let settled = loop {
        let now = get_payment(&gateway, KEY, &id).await;
        if now.json["status"] != "pending" {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {}",
            now.json
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(settled.json["status"], "succeeded", "{}", settled.json);
    assert_eq!(settled.json["psp_reference"], "pi_4");
    let searches: Vec<Seen> = seen(&stripe)
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    let query = format!("query=metadata%5B%27paygate_id%27%5D%3A%27{id}%27");
    assert!(searches[0].path.ends_with(&query), "{}", searches[0].path);
}

#[tokio::test]
async fn a_payment_a_stripe_channel_cannot_build_is_never_sent_and_the_gateway_stays_up() {
    let (url, stripe) = scripted_psp(stripe_script).await;
    let gateway = start_gateway(&stripe_channel("stripe_eu", &url, ""), "\"stripe_eu\"").await;
    // Neither card nor payment_method: nothing to pay with at Stripe.
    let body = json!({ "amount": 500, "currency": "EUR", "method": "card" });
    let answer = pay(&gateway, &body).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert_eq!(answer.error_type(), "all_channels_failed");
    let id = answer.json["error"]["payment_id"]
        .as_str()
        .expect("payment_id");
    let stored = get_payment(&gateway, KEY, id).await;
    assert_eq!(stored.json["status"], "failed");
    assert_eq!(stored.json["attempts"][0]["outcome"], "unavailable");
    // A card with a month that is not a number: the same, and no value is echoed.
    let mut bad = card_payment(500, "EUR");
    bad["card"]["exp_month"] = json!("4111111111111111");
    let answer = pay(&gateway, &bad).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert!(!answer.json.to_string().contains("4111111111111111"));
    assert!(seen(&stripe).is_empty(), "nothing reached Stripe");
    let log = std::fs::read_to_string(&gateway.log).expect("log");
    assert!(!log.contains("4111111111111111"), "no card data in the log");
    assert_eq!(
        pay(&gateway, &card_payment(700, "EUR")).await.status,
        StatusCode::ACCEPTED
    );
}

/// Runs `query` on the machine's PostgreSQL (trust auth) in `schema`, off the runtime.
fn postgres(schema: &str, query: &str) {
    let (schema, query) = (schema.to_string(), query.to_string());
    std::thread::spawn(move || {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("PostgreSQL");
        client
            .batch_execute(&format!("SET search_path TO {schema}; {query}"))
            .expect("query");
    })
    .join()
    .expect("the query thread");
}

#[tokio::test]
async fn with_a_shared_journal_a_webhook_for_a_payment_another_replica_holds_is_refused_for_redelivery()
 {
    let up = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
        std::time::Duration::from_secs(1),
    )
    .is_ok();
    assert!(
        up,
        "PostgreSQL is not running on 127.0.0.1:5432: .ci/run starts it"
    );
    let schema = format!("dialects_{}_{}", std::process::id(), unix_now());
    struct Dropped(String);
    impl Drop for Dropped {
        fn drop(&mut self) {
            postgres(
                "public",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            );
        }
    }
    let _dropped = Dropped(schema.clone());
    let (url, stripe) = scripted_psp(stripe_script).await;
    let journal = format!(
        "\n[journal]\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\nschema = \"{schema}\"\n"
    );
    let channels = format!("{journal}{}", stripe_channel("stripe_eu", &url, ""));
    let gateway = start_gateway(&channels, "\"stripe_eu\"").await;
    let answer = pay(&gateway, &card_payment(2000, "EUR")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    let id = answer.json["id"].as_str().expect("an id").to_string();
    // Another replica holds the payment (it is changing it) for a minute.
    postgres(
        &schema,
        &format!(
            "INSERT INTO leases (payment_id, owner, until_ms) VALUES ('{id}', 'another-replica',
             (extract(epoch FROM clock_timestamp()) * 1000)::int8 + 60000)"
        ),
    );
    let event = capturable_event(&id);
    let signature = stripe_signature(unix_now(), &event);
    let signed = [("stripe-signature", signature.as_str())];
    let refused = post_webhook(&gateway, "stripe_eu", &signed, &event).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(refused.error_type(), "overloaded");
    assert_eq!(
        get_payment(&gateway, KEY, &id).await.json["status"],
        "pending"
    );
    // Delivered again once the other replica let go: settled, and the lease given back.
    postgres(
        &schema,
        &format!("DELETE FROM leases WHERE payment_id = '{id}'"),
    );
    let settled = post_webhook(&gateway, "stripe_eu", &signed, &event).await;
    assert_eq!(settled.status, StatusCode::OK, "{}", settled.json);
    assert_eq!(settled.json, json!({ "settled": 1, "unchanged": 0 }));
    assert_eq!(
        get_payment(&gateway, KEY, &id).await.json["status"],
        "succeeded"
    );
    // Nothing was sent to the PSP by the webhooks.
    assert_eq!(seen(&stripe).len(), 2);
}
