//! Black-box tests of `paygate mock-psp --dialect adyen`: each test starts the real binary on
//! port 0 and checks the Adyen Checkout v72 answers, `/_sim/payments/{reference}` and
//! `/_sim/stats` exactly. Every wait is bounded.

mod support;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Answer, Process, first_received, recorder, send};

const API_KEY: &str = "AQE_test_key";

fn payment(reference: &str, card: &str) -> Value {
    json!({
        "merchantAccount": "PaygateECOM",
        "reference": reference,
        "amount": {"value": 1999, "currency": "EUR"},
        "paymentMethod": {"type": "scheme", "number": card, "expiryMonth": "03",
            "expiryYear": "2030", "cvc": "737"},
        "returnUrl": "https://example.com/return"
    })
}

async fn post(sim: &Process, path: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut headers = vec![("content-type", "application/json"), ("x-api-key", API_KEY)];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    send(
        Method::POST,
        &format!("{}{path}", sim.base),
        &headers,
        &body.to_string(),
    )
    .await
}

async fn seen(sim: &Process, reference: &str) -> Answer {
    let url = format!("{}/_sim/payments/{reference}", sim.base);
    send(Method::GET, &url, &[], "").await
}

fn is_psp_reference(value: &Value) -> bool {
    value.as_str().is_some_and(|text| {
        text.len() == 16
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

#[tokio::test]
async fn authorised_then_captured_refunded_and_cancelled() {
    let sim = Process::mock_psp(&["--dialect", "adyen", "--name", "ady"]).await;
    // Manual capture, so that the capture below moves money (Adyen captures at once by default).
    let mut body = payment("pay_1", "4111111111111111");
    body["additionalData"] = json!({"manualCapture": "true"});
    let paid = post(&sim, "/v72/payments", Some("pay_1"), &body).await;
    assert_eq!(paid.status, StatusCode::OK);
    assert_eq!(paid.header("idempotency-key"), "pay_1");
    let psp = paid.json["pspReference"].clone();
    assert!(is_psp_reference(&psp), "{psp}");
    assert_eq!(
        paid.json,
        json!({"pspReference": psp, "resultCode": "Authorised", "merchantReference": "pay_1",
            "amount": {"value": 1999, "currency": "EUR"}})
    );
    let psp = psp.as_str().unwrap_or_default().to_string();

    let modification = json!({"merchantAccount": "PaygateECOM",
        "amount": {"value": 1999, "currency": "EUR"}, "reference": "op_1"});
    for (path, with_amount) in [("captures", true), ("refunds", true), ("cancels", false)] {
        let mut body = modification.clone();
        if !with_amount {
            body.as_object_mut().map(|o| o.remove("amount"));
        }
        let answer = post(&sim, &format!("/payments/{psp}/{path}"), None, &body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{path}");
        let own = answer.json["pspReference"].clone();
        assert!(is_psp_reference(&own) && own != json!(psp), "{path}: {own}");
        let mut expected = json!({"merchantAccount": "PaygateECOM", "paymentPspReference": psp,
            "pspReference": own, "reference": "op_1", "status": "received"});
        if with_amount {
            expected["amount"] = json!({"value": 1999, "currency": "EUR"});
        }
        assert_eq!(answer.json, expected, "{path}");
    }
    // Capturing more than was authorised is still received, and recorded as such.
    let mut over = modification.clone();
    over["amount"]["value"] = json!(5000);
    let answer = post(&sim, &format!("/payments/{psp}/captures"), None, &over).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json["status"], "received");

    let record = seen(&sim, "pay_1").await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.json["received"], 1);
    assert_eq!(record.json["requests"], 1);
    assert_eq!(record.json["processed"], 1);
    assert_eq!(record.json["status"], "succeeded");
    assert_eq!(record.json["result_code"], "Authorised");
    assert_eq!(record.json["psp_reference"], json!(psp));
    let outcomes: Vec<(&str, &str)> = record.json["modifications"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|m| {
                    (
                        m["kind"].as_str().unwrap_or(""),
                        m["outcome"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        outcomes,
        [
            ("capture", "applied"),
            ("refund", "applied"),
            ("cancel", "payment_captured"),
            ("capture", "invalid_amount")
        ]
    );
    let stats = sim.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["captures"], 2);
    assert_eq!(stats["refunds"], 1);
    assert_eq!(stats["cancels"], 1);
    assert_eq!(stats["outcomes"]["succeeded"], 1);
    assert_eq!(stats["recent"][0]["api_key"], API_KEY);
    assert_eq!(stats["recent"][0]["paygate_id"], "pay_1");
    assert!(!stats.to_string().contains("4111111111111111"));
    assert!(!record.json.to_string().contains("4111111111111111"));

    let unknown = post(
        &sim,
        "/payments/ZZZZ000000000999/captures",
        None,
        &modification,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.json["errorCode"], "167");
    assert_eq!(unknown.json["errorType"], "validation");
}

#[tokio::test]
async fn refused_with_reason_and_code() {
    let sim = Process::mock_psp(&[
        "--dialect",
        "adyen",
        "--success-rate",
        "0",
        "--decline-codes",
        "insufficient_funds",
    ])
    .await;
    let answer = post(
        &sim,
        "/payments",
        None,
        &payment("pay_r", "4111111111111111"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!({"pspReference": answer.json["pspReference"], "resultCode": "Refused",
            "merchantReference": "pay_r", "amount": {"value": 1999, "currency": "EUR"},
            "refusalReason": "Not enough balance", "refusalReasonCode": "12"})
    );
    // The same test cards as paygate-v1 decide regardless of the draw.
    let expired = Process::mock_psp(&[
        "--dialect",
        "adyen",
        "--success-rate",
        "0",
        "--decline-codes",
        "expired_card",
    ])
    .await;
    let answer = post(
        &expired,
        "/payments",
        None,
        &payment("pay_e", "4111111111111111"),
    )
    .await;
    assert_eq!(answer.json["refusalReason"], "Expired Card");
    assert_eq!(answer.json["refusalReasonCode"], "6");
    let answer = post(
        &sim,
        "/payments",
        None,
        &payment("pay_t", "4000000000000259"),
    )
    .await;
    assert_eq!(answer.json["resultCode"], "Pending");
    assert_eq!(seen(&sim, "pay_r").await.json["status"], "declined");
    assert_eq!(sim.stats().await["outcomes"]["declined"], 1);
}

#[tokio::test]
async fn pending_and_received() {
    let sim = Process::mock_psp(&[
        "--dialect",
        "adyen",
        "--pending-rate",
        "1",
        "--pending-resolves-ms",
        "600000",
    ])
    .await;
    let card = post(
        &sim,
        "/payments",
        None,
        &payment("pay_p", "4111111111111111"),
    )
    .await;
    assert_eq!(card.status, StatusCode::OK);
    assert_eq!(card.json["resultCode"], "Pending");
    assert!(card.json.get("refusalReason").is_none());
    let mut sepa = payment("pay_s", "");
    sepa["paymentMethod"] = json!({"type": "sepadirectdebit", "iban": "NL13TEST0123456789",
        "ownerName": "A. Klaassen"});
    let sepa = post(&sim, "/payments", None, &sepa).await;
    assert_eq!(sepa.json["resultCode"], "Received");
    assert_eq!(seen(&sim, "pay_p").await.json["status"], "pending");
    assert_eq!(sim.stats().await["outcomes"]["pending"], 2);
}

#[tokio::test]
async fn missing_api_key_and_missing_fields_are_refused_and_the_process_serves_on() {
    let sim = Process::mock_psp(&["--dialect", "adyen"]).await;
    let body = payment("pay_v", "4111111111111111").to_string();
    let url = format!("{}/payments", sim.base);
    let anonymous = send(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.json,
        json!({"status": 401, "errorCode": "000",
            "message": "HTTP Status Response - Unauthorized", "errorType": "security"})
    );
    let mut no_account = payment("pay_v", "4111111111111111");
    no_account
        .as_object_mut()
        .map(|o| o.remove("merchantAccount"));
    let refused = post(&sim, "/payments", None, &no_account).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json["status"], 422);
    assert_eq!(refused.json["errorType"], "validation");
    let message = refused.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("merchantAccount"), "{message}");
    assert!(!refused.json.to_string().contains("4111"));
    assert_eq!(seen(&sim, "pay_v").await.status, StatusCode::NOT_FOUND);

    let after = post(
        &sim,
        "/payments",
        None,
        &payment("pay_v", "4111111111111111"),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.json["resultCode"], "Authorised");
    let stats = sim.stats().await;
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["payments"], 1);
}

#[tokio::test]
async fn an_idempotent_replay_is_counted_once() {
    let sim = Process::mock_psp(&["--dialect", "adyen"]).await;
    let body = payment("pay_i", "4111111111111111");
    let first = post(&sim, "/payments", Some("key_i"), &body).await;
    let second = post(&sim, "/v72/payments", Some("key_i"), &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(first.json, second.json);

    let mut changed = body.clone();
    changed["amount"]["value"] = json!(1);
    let conflict = post(&sim, "/payments", Some("key_i"), &changed).await;
    assert_eq!(conflict.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(conflict.json["errorCode"], "704");

    let record = seen(&sim, "pay_i").await;
    assert_eq!(record.json["processed"], 1);
    assert_eq!(record.json["requests"], 2);
    assert_eq!(record.json["received"], 3);
    let stats = sim.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["stored_payments"], 1);

    // Without a key the same reference is paid again, and the record shows it.
    post(&sim, "/payments", None, &body).await;
    assert_eq!(seen(&sim, "pay_i").await.json["processed"], 2);
}

#[tokio::test]
async fn faults_answer_500_after_processing_and_503_without() {
    let unavailable = Process::mock_psp(&["--dialect", "adyen", "--error-503", "1"]).await;
    let answer = post(
        &unavailable,
        "/payments",
        None,
        &payment("pay_u", "4111111111111111"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json["status"], 503);
    let record = seen(&unavailable, "pay_u").await;
    assert_eq!(record.status, StatusCode::NOT_FOUND);
    assert_eq!(record.json["received"], 1);
    assert_eq!(record.json["processed"], 0);
    assert_eq!(unavailable.stats().await["outcomes"]["error_503"], 1);

    let broken = Process::mock_psp(&["--dialect", "adyen", "--error-500", "1"]).await;
    let answer = post(
        &broken,
        "/payments",
        Some("pay_b"),
        &payment("pay_b", "4111111111111111"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.json["status"], 500);
    assert_eq!(answer.json["errorType"], "internal");
    // Processed before the 500: the payment exists and a retry with the key is not re-made.
    assert_eq!(seen(&broken, "pay_b").await.json["processed"], 1);
    post(
        &broken,
        "/payments",
        Some("pay_b"),
        &payment("pay_b", "4111111111111111"),
    )
    .await;
    assert_eq!(seen(&broken, "pay_b").await.json["processed"], 1);
    assert_eq!(broken.stats().await["faults"]["error_500"], 2);
}

#[tokio::test]
async fn notifications_are_posted_and_signed() {
    let (url, received) = recorder("/adyen/notifications", |_| "[accepted]".into()).await;
    let sim = Process::mock_psp(&[
        "--dialect",
        "adyen",
        "--webhook-url",
        &url,
        "--adyen-hmac-key",
        "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
    ])
    .await;
    let paid = post(
        &sim,
        "/payments",
        None,
        &payment("pay_n", "4111111111111111"),
    )
    .await;
    let (_, body) = first_received(&received).await;
    let notification: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(notification["live"], "false");
    let item = &notification["notificationItems"][0]["NotificationRequestItem"];
    assert_eq!(item["eventCode"], "AUTHORISATION");
    assert_eq!(item["success"], "true");
    assert_eq!(item["pspReference"], paid.json["pspReference"]);
    assert_eq!(item["merchantAccountCode"], "PaygateECOM");
    assert_eq!(item["merchantReference"], "pay_n");
    assert_eq!(item["amount"], json!({"value": 1999, "currency": "EUR"}));
    let signature = item["additionalData"]["hmacSignature"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(signature.len(), 44, "{signature}");
    assert!(!String::from_utf8_lossy(&body).contains("4111111111111111"));
}
