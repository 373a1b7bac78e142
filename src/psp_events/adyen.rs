//! Adyen standard notifications: a JSON batch of `NotificationRequestItem`s, each signed on
//! its own with `additionalData.hmacSignature`, the base64 HMAC-SHA256 (keyed with the
//! hex-decoded HMAC key) of
//! `pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success`,
//! absent fields as empty strings. Owns only Adyen's format; what the events do to a payment
//! is the caller's. Adyen signs no timestamp, so replays are caught by deduplicating on
//! [`PspEvent::event_id`], not here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{EventKind, EventResult, PspEvent, Verified, WebhookError, amount, text_at};

const ITEM: &str = "NotificationRequestItem";

/// The `hmacSignature` Adyen would put on `item`: a `NotificationRequestItem` object, or the
/// `{"NotificationRequestItem": ...}` wrapper around one.
pub fn adyen_hmac(key_hex: &str, item: &Value) -> Result<String, WebhookError> {
    let key = decode_key(key_hex.as_bytes())?;
    let item = item.get(ITEM).unwrap_or(item);
    let mac = item_mac(&key, item)?;
    Ok(BASE64.encode(mac.finalize().into_bytes()))
}

pub(super) fn verify(body: &[u8], key_hex: &[u8]) -> Result<Verified, WebhookError> {
    let key = decode_key(key_hex)?;
    let notification = super::parse_json(body)?;
    let items = notification
        .get("notificationItems")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("the Adyen notification has no notificationItems"))?;
    let items = items
        .iter()
        .map(|wrapper| {
            wrapper
                .get(ITEM)
                .filter(|item| item.is_object())
                .ok_or_else(|| {
                    malformed("an Adyen notification item has no NotificationRequestItem")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every item is checked before any is parsed: one forged item refuses the batch, so the
    // caller never applies part of a notification and Adyen retries all of it.
    for item in &items {
        verify_item(&key, item)?;
    }
    let events = items
        .into_iter()
        .map(parse_item)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verified { events })
}

/// The HMAC key as configured, hex text; surrounding whitespace (a trailing newline in a
/// secrets file) is ignored.
fn decode_key(key_hex: &[u8]) -> Result<Vec<u8>, WebhookError> {
    let key = hex::decode(key_hex.trim_ascii())
        .map_err(|_| malformed("the Adyen HMAC key is not hex"))?;
    if key.is_empty() {
        return Err(malformed("the Adyen HMAC key is empty"));
    }
    Ok(key)
}

fn verify_item(key: &[u8], item: &Value) -> Result<(), WebhookError> {
    let signature = item
        .pointer("/additionalData/hmacSignature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::Unsigned)?;
    let signature = BASE64
        .decode(signature)
        .map_err(|_| WebhookError::BadSignature)?;
    // verify_slice compares in constant time.
    item_mac(key, item)?
        .verify_slice(&signature)
        .map_err(|_| WebhookError::BadSignature)
}

fn item_mac(key: &[u8], item: &Value) -> Result<Hmac<Sha256>, WebhookError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| malformed("the Adyen HMAC key is unusable"))?;
    let fields = [
        item.get("pspReference"),
        item.get("originalReference"),
        item.get("merchantAccountCode"),
        item.get("merchantReference"),
        item.pointer("/amount/value"),
        item.pointer("/amount/currency"),
        item.get("eventCode"),
        item.get("success"),
    ];
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            mac.update(b":");
        }
        mac.update(signed_text(field).as_bytes());
    }
    Ok(mac)
}

/// A field as Adyen writes it into the signed string: text as is, numbers in decimal,
/// anything absent as nothing.
fn signed_text(field: Option<&Value>) -> String {
    match field {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn parse_item(item: &Value) -> Result<PspEvent, WebhookError> {
    let code = text_at(item, &["eventCode"])
        .ok_or_else(|| malformed("an Adyen notification item has no eventCode"))?;
    let psp_reference = text_at(item, &["pspReference"]);
    let success_text = signed_text(item.get("success"));
    let success = success_text == "true";
    let reason = text_at(item, &["reason"]);
    let outcome = |kind: EventKind| {
        let result = if success {
            EventResult::Succeeded
        } else {
            EventResult::Failed {
                raw_code: reason.clone(),
            }
        };
        (kind, result)
    };
    // These codes report a failure whatever `success` says; the code itself stands in for
    // a missing reason so the caller always has a cause.
    let failure = |kind: EventKind| {
        let raw_code = reason.clone().or_else(|| Some(code.clone()));
        (kind, EventResult::Failed { raw_code })
    };
    let (kind, result) = match code.as_str() {
        "AUTHORISATION" => outcome(EventKind::Authorization),
        "CAPTURE" => outcome(EventKind::Capture),
        "CAPTURE_FAILED" => failure(EventKind::Capture),
        "REFUND" => outcome(EventKind::Refund),
        "REFUND_FAILED" | "REFUNDED_REVERSED" => failure(EventKind::Refund),
        "CANCELLATION" | "CANCEL_OR_REFUND" => outcome(EventKind::Cancellation),
        _ => (EventKind::Other(code.clone()), EventResult::Pending),
    };
    // On an authorisation merchantReference is the payment's reference; on a modification
    // it is the reference paygate gave the capture, refund or cancellation.
    let merchant_reference = text_at(item, &["merchantReference"]);
    let (payment_id, operation_id) = match kind {
        EventKind::Authorization => (merchant_reference, None),
        EventKind::Capture | EventKind::Refund | EventKind::Cancellation => {
            (None, merchant_reference)
        }
        EventKind::Other(_) => (None, None),
    };
    Ok(PspEvent {
        event_id: format!(
            "{code}:{}:{success_text}",
            psp_reference.as_deref().unwrap_or_default()
        ),
        kind,
        payment_id,
        operation_id,
        psp_reference,
        original_reference: text_at(item, &["originalReference"]),
        result,
        amount: amount(
            item.pointer("/amount/value"),
            item.pointer("/amount/currency").and_then(Value::as_str),
        ),
    })
}

fn malformed(what: &str) -> WebhookError {
    WebhookError::Malformed(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The sample key and signature of Adyen's own libraries' HMAC tests
    /// (Adyen/adyen-ruby-api-library spec/utils/hmac_validator_spec.rb), signing
    /// `7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true`.
    const KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    const KEY_SIGNATURE: &str = "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0=";
    /// Adyen/adyen-php-api-library tests/Adyen/Util/HmacSignatureTest.php: the same item
    /// under another key.
    const PHP_KEY: &str = "DFB1EB5485895CFA84146406857104ABB4CBCABDC8AAF103A624C8F6A3EAAB00";
    const PHP_SIGNATURE: &str = "Ny9gS2veKo5E4w8/OL6xz1/wvT/hYkAXy1xNc/QvO4I=";

    fn sample_item() -> Value {
        json!({
            "additionalData": { "hmacSignature": KEY_SIGNATURE },
            "amount": { "value": 1130, "currency": "EUR" },
            "pspReference": "7914073381342284",
            "eventCode": "AUTHORISATION",
            "merchantAccountCode": "TestMerchant",
            "merchantReference": "TestPayment-1407325143704",
            "paymentMethod": "visa",
            "success": "true",
        })
    }

    fn notification(items: &[Value]) -> Vec<u8> {
        let items: Vec<Value> = items.iter().map(|i| json!({ ITEM: i })).collect();
        serde_json::to_vec(&json!({ "live": "false", "notificationItems": items })).unwrap()
    }

    /// `item` signed with [`KEY`].
    fn signed(mut item: Value) -> Value {
        item["additionalData"]["hmacSignature"] = adyen_hmac(KEY, &item).unwrap().into();
        item
    }

    fn check(body: &[u8]) -> Result<Verified, WebhookError> {
        super::super::verify(
            super::super::Dialect::Adyen,
            &http::HeaderMap::new(),
            body,
            KEY.as_bytes(),
            0,
            0,
        )
    }

    fn parsed(item: Value) -> PspEvent {
        let mut verified = check(&notification(&[signed(item)])).unwrap();
        verified.events.remove(0)
    }

    #[test]
    fn matches_the_signatures_in_adyens_libraries() {
        assert_eq!(adyen_hmac(KEY, &sample_item()).unwrap(), KEY_SIGNATURE);
        assert_eq!(adyen_hmac(PHP_KEY, &sample_item()).unwrap(), PHP_SIGNATURE);
        let wrapped = json!({ ITEM: sample_item() });
        assert_eq!(adyen_hmac(KEY, &wrapped).unwrap(), KEY_SIGNATURE);
        assert!(check(&notification(&[sample_item()])).is_ok());
    }

    #[test]
    fn parses_the_sample_authorisation() {
        let verified = check(&notification(&[sample_item()])).unwrap();
        assert_eq!(
            verified.events,
            vec![PspEvent {
                event_id: "AUTHORISATION:7914073381342284:true".into(),
                kind: EventKind::Authorization,
                payment_id: Some("TestPayment-1407325143704".into()),
                operation_id: None,
                psp_reference: Some("7914073381342284".into()),
                original_reference: None,
                result: EventResult::Succeeded,
                amount: Some((1130, "EUR".into())),
            }]
        );
    }

    #[test]
    fn refuses_a_tampered_item() {
        let mut item = sample_item();
        item["amount"]["value"] = json!(1);
        assert_eq!(
            check(&notification(&[item])),
            Err(WebhookError::BadSignature)
        );
        let mut item = sample_item();
        item["success"] = json!("false");
        assert_eq!(
            check(&notification(&[item])),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn refuses_a_signature_made_with_another_key() {
        let mut item = sample_item();
        item["additionalData"]["hmacSignature"] = PHP_SIGNATURE.into();
        assert_eq!(
            check(&notification(&[item])),
            Err(WebhookError::BadSignature)
        );
        let mut item = sample_item();
        item["additionalData"]["hmacSignature"] = "not base64!".into();
        assert_eq!(
            check(&notification(&[item])),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn every_item_must_verify() {
        let capture = signed(json!({
            "eventCode": "CAPTURE", "pspReference": "2", "originalReference": "1",
            "merchantReference": "cap_1", "success": "true",
        }));
        assert_eq!(
            check(&notification(&[sample_item(), capture.clone()]))
                .unwrap()
                .events
                .len(),
            2
        );
        let mut forged = capture.clone();
        forged["merchantReference"] = "cap_2".into();
        assert_eq!(
            check(&notification(&[sample_item(), forged])),
            Err(WebhookError::BadSignature)
        );
        let mut unsigned = capture;
        unsigned.as_object_mut().unwrap().remove("additionalData");
        assert_eq!(
            check(&notification(&[sample_item(), unsigned])),
            Err(WebhookError::Unsigned)
        );
    }

    #[test]
    fn refuses_an_unsigned_item() {
        let mut item = sample_item();
        item["additionalData"] = json!({});
        assert_eq!(check(&notification(&[item])), Err(WebhookError::Unsigned));
    }

    #[test]
    fn refuses_malformed_json_without_quoting_it() {
        let body = br#"{"notificationItems":[{"NotificationRequestItem":{"cardSummary":"4242"#;
        let Err(WebhookError::Malformed(message)) = check(body) else {
            panic!("expected Malformed");
        };
        assert!(!message.contains("4242"), "{message}");
        assert!(matches!(
            check(br#"{"live":"false"}"#),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            check(br#"{"notificationItems":[{"other":{}}]}"#),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn a_key_that_is_not_hex_is_malformed_and_not_quoted() {
        let body = notification(&[sample_item()]);
        let result = super::super::verify(
            super::super::Dialect::Adyen,
            &http::HeaderMap::new(),
            &body,
            b"zz-secret-zz",
            0,
            0,
        );
        let Err(WebhookError::Malformed(message)) = result else {
            panic!("expected Malformed");
        };
        assert!(message.contains("not hex"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        let padded = format!("{KEY}\n");
        assert!(verify(&body, padded.as_bytes()).is_ok());
        assert!(matches!(
            adyen_hmac("", &sample_item()),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn a_failed_authorisation_carries_its_reason() {
        let event = parsed(json!({
            "eventCode": "AUTHORISATION", "pspReference": "p1", "merchantReference": "pay_1",
            "success": "false", "reason": "Refused",
            "amount": { "value": 500, "currency": "usd" },
        }));
        assert_eq!(event.event_id, "AUTHORISATION:p1:false");
        assert_eq!(event.kind, EventKind::Authorization);
        assert_eq!(event.payment_id.as_deref(), Some("pay_1"));
        assert_eq!(
            event.result,
            EventResult::Failed {
                raw_code: Some("Refused".into())
            }
        );
        assert_eq!(event.amount, Some((500, "USD".into())));
    }

    fn modification(code: &str, success: &str) -> PspEvent {
        parsed(json!({
            "eventCode": code, "pspReference": "m1", "originalReference": "p1",
            "merchantReference": "op_1", "merchantAccountCode": "TestMerchant",
            "success": success, "amount": { "value": 300, "currency": "EUR" },
        }))
    }

    #[test]
    fn modifications_name_the_operation_and_the_original_payment() {
        let capture = modification("CAPTURE", "true");
        assert_eq!(
            capture,
            PspEvent {
                event_id: "CAPTURE:m1:true".into(),
                kind: EventKind::Capture,
                payment_id: None,
                operation_id: Some("op_1".into()),
                psp_reference: Some("m1".into()),
                original_reference: Some("p1".into()),
                result: EventResult::Succeeded,
                amount: Some((300, "EUR".into())),
            }
        );
        assert_eq!(
            modification("CAPTURE", "false").result,
            EventResult::Failed { raw_code: None }
        );
        let refund = modification("REFUND", "true");
        assert_eq!(refund.kind, EventKind::Refund);
        assert_eq!(refund.result, EventResult::Succeeded);
        assert_eq!(refund.operation_id.as_deref(), Some("op_1"));
        for code in ["CANCELLATION", "CANCEL_OR_REFUND"] {
            let cancel = modification(code, "true");
            assert_eq!(cancel.kind, EventKind::Cancellation);
            assert_eq!(cancel.result, EventResult::Succeeded);
            assert_eq!(cancel.original_reference.as_deref(), Some("p1"));
        }
    }

    #[test]
    fn failure_codes_fail_even_when_success_is_true() {
        for (code, kind) in [
            ("CAPTURE_FAILED", EventKind::Capture),
            ("REFUND_FAILED", EventKind::Refund),
            ("REFUNDED_REVERSED", EventKind::Refund),
        ] {
            let event = modification(code, "true");
            assert_eq!(event.kind, kind);
            assert_eq!(
                event.result,
                EventResult::Failed {
                    raw_code: Some(code.into())
                }
            );
            assert_eq!(event.operation_id.as_deref(), Some("op_1"));
        }
    }

    #[test]
    fn other_codes_are_pending_and_named() {
        let event = modification("REPORT_AVAILABLE", "true");
        assert_eq!(event.kind, EventKind::Other("REPORT_AVAILABLE".into()));
        assert_eq!(event.result, EventResult::Pending);
        assert_eq!(event.operation_id, None);
    }

    #[test]
    fn an_item_without_an_event_code_is_malformed() {
        let item = signed(json!({ "pspReference": "p1", "success": "true" }));
        assert!(matches!(
            check(&notification(&[item])),
            Err(WebhookError::Malformed(_))
        ));
    }
}
