//! Dialect `adyen`: Adyen's Checkout API v72, JSON, `X-API-Key` with the channel's
//! `api_key`, `merchantAccount` from its `merchant_account`.
//!
//! - Authorize: `POST /payments` with `reference` = the paygate id, the card as a `scheme`
//!   payment method (or the merchant's own `payment_method` object passed through), and
//!   `additionalData.manualCapture` unless the merchant asked for capture. `Authorised` is
//!   success; `Refused` a decline with `refusalReasonCode` (normalized by the channel's
//!   table); `Received`, `Pending` and the shopper actions (3-D Secure) are pending.
//! - Capture, refund, cancel: `POST /payments/{pspReference}/captures`, `/refunds` or
//!   `/cancels` with `reference` = the operation id; Adyen answers `received` and settles
//!   by webhook.
//! - The API has no payment lookup: a payment in doubt is settled by a re-send with the same
//!   `Idempotency-Key` (Adyen replays the first outcome) while its request is alive, or by
//!   the AUTHORISATION webhook.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::card::Order;
use super::paygate_v1::path_segment;
use super::protocol::{
    Call, CallContext, Lookup, ProtocolError, PspProtocol, Reply, Step, refused_unprocessed,
};
use crate::config::Channel;

/// Adyen refuses longer idempotency keys.
const MAX_KEY_LEN: usize = 64;

pub struct Adyen {
    api_key: Option<HeaderValue>,
    merchant_account: String,
    return_url: Option<String>,
}

impl Adyen {
    pub fn new(channel: &Channel) -> Self {
        let api_key = channel.account.api_key.as_ref().and_then(|key| {
            let mut value = HeaderValue::from_bytes(&key.0).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self {
            api_key,
            merchant_account: channel.account.merchant_account.clone().unwrap_or_default(),
            return_url: channel.account.return_url.clone(),
        }
    }

    fn payment<'a>(
        &'a self,
        order: &'a Order<'_>,
        paygate_id: &'a str,
    ) -> Result<PaymentRequest<'a>, ProtocolError> {
        let payment_method = match order.payment_method {
            Some(raw) if raw.get().trim_start().starts_with('{') => PaymentMethod::Passed(raw),
            Some(_) => {
                return Err(ProtocolError(
                    "payment_method must be an Adyen paymentMethod object".into(),
                ));
            }
            None => {
                let card = order.card()?;
                PaymentMethod::Scheme {
                    kind: "scheme",
                    number: &card.number,
                    expiry_month: format!("{:02}", card.exp_month),
                    expiry_year: card.exp_year.to_string(),
                    cvc: card.cvc.as_deref(),
                    holder_name: card.holder_name.as_deref(),
                }
            }
        };
        let return_url = order
            .return_url
            .as_deref()
            .or(self.return_url.as_deref())
            .ok_or_else(|| {
                ProtocolError(
                    "Adyen needs a returnUrl: set return_url on the channel or the payment".into(),
                )
            })?;
        Ok(PaymentRequest {
            amount: Amount {
                value: order.amount,
                currency: &order.currency,
            },
            merchant_account: &self.merchant_account,
            reference: paygate_id,
            payment_method,
            return_url,
            capture_delay_hours: order.capture.then_some(0),
            additional_data: (!order.capture).then_some(ManualCapture {
                manual_capture: "true",
            }),
            country_code: order.country.as_deref(),
            metadata: Metadata(&order.metadata),
        })
    }

    fn post(
        &self,
        base: &str,
        path: &str,
        body: Vec<u8>,
        context: &CallContext<'_>,
    ) -> Result<Request<Full<Bytes>>, ProtocolError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", idempotency_key(context.idempotency_key))
            .header("x-request-id", context.request_id);
        if let Some(api_key) = &self.api_key {
            request = request.header("x-api-key", api_key.clone());
        }
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProtocolError(e.to_string()))
    }

    fn modification(&self, amount: u64, currency: &str, operation_id: &str) -> Value {
        json!({
            "merchantAccount": self.merchant_account,
            "amount": { "value": amount, "currency": currency },
            "reference": operation_id,
        })
    }
}

/// The key as Adyen takes it: at most 64 characters (a longer one is hashed, stably).
fn idempotency_key(key: &str) -> String {
    if key.len() <= MAX_KEY_LEN {
        key.to_string()
    } else {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

impl PspProtocol for Adyen {
    fn request(
        &self,
        base: &str,
        call: &Call<'_>,
        context: &CallContext<'_>,
        _step: &Step,
    ) -> Result<Request<Full<Bytes>>, ProtocolError> {
        let (path, body) = match *call {
            Call::Authorize { payment } => {
                let order = Order::read(payment)?;
                let body = serde_json::to_vec(&self.payment(&order, context.paygate_id)?)
                    .map_err(|e| ProtocolError(e.to_string()))?;
                return self.post(base, "/payments", body, context);
            }
            Call::Capture {
                psp_reference,
                amount,
                currency,
            } => (
                format!("/payments/{}/captures", path_segment(psp_reference)?),
                self.modification(amount, currency, context.idempotency_key),
            ),
            Call::Refund {
                psp_reference,
                amount,
                currency,
            } => (
                format!("/payments/{}/refunds", path_segment(psp_reference)?),
                self.modification(amount, currency, context.idempotency_key),
            ),
            Call::Cancel { psp_reference, .. } => (
                format!("/payments/{}/cancels", path_segment(psp_reference)?),
                json!({
                    "merchantAccount": self.merchant_account,
                    "reference": context.idempotency_key,
                }),
            ),
            Call::Status { .. } => {
                return Err(ProtocolError(
                    "Adyen's Checkout API has no payment lookup; its webhook settles the payment"
                        .into(),
                ));
            }
        };
        let body = serde_json::to_vec(&body).map_err(|e| ProtocolError(e.to_string()))?;
        self.post(base, &path, body, context)
    }

    fn reply(&self, call: &Call<'_>, _step: &Step, status: StatusCode, body: &[u8]) -> Reply {
        if let Some(refused) = refused_unprocessed("Adyen", status) {
            return refused;
        }
        let answered = |what: &str| format!("Adyen answered {} {what}", status.as_u16());
        match status.as_u16() {
            200 | 201 => {}
            400 | 422 => {
                let error = serde_json::from_slice::<ServiceError>(body).unwrap_or_default();
                let code = error.error_code.unwrap_or_else(|| "validation".into());
                // 704: the key's first request is still in progress or was processed.
                if code == "704" {
                    return Reply::Error {
                        reason: answered("704 (the idempotency key is in use)"),
                    };
                }
                return match call {
                    Call::Authorize { .. } => Reply::Unavailable {
                        reason: answered(&format!("error code {code} (refused unprocessed)")),
                    },
                    _ => Reply::Declined {
                        psp_reference: None,
                        code,
                    },
                };
            }
            _ => {
                return Reply::Error {
                    reason: answered("(a fault)"),
                };
            }
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
            return Reply::Error {
                reason: answered("with a body that is not an Adyen answer"),
            };
        };
        match call {
            Call::Authorize { .. } => answer.payment(),
            _ => match (answer.status.as_deref(), answer.psp_reference) {
                (Some("received"), psp_reference) => Reply::Pending {
                    psp_reference,
                    action: None,
                },
                (other, _) => Reply::Error {
                    reason: answered(&format!("with modification status {other:?}")),
                },
            },
        }
    }

    fn replays_by_key(&self) -> bool {
        true
    }

    fn lookup(&self) -> Lookup {
        Lookup::WebhookOnly
    }
}

/// `POST /payments`, as the spec names its fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentRequest<'a> {
    amount: Amount<'a>,
    merchant_account: &'a str,
    reference: &'a str,
    payment_method: PaymentMethod<'a>,
    return_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    capture_delay_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_data: Option<ManualCapture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Amount<'a> {
    value: u64,
    currency: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PaymentMethod<'a> {
    #[serde(rename_all = "camelCase")]
    Scheme {
        #[serde(rename = "type")]
        kind: &'static str,
        number: &'a str,
        expiry_month: String,
        expiry_year: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cvc: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder_name: Option<&'a str>,
    },
    /// The merchant's own `paymentMethod` object, as sent.
    Passed(&'a RawValue),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManualCapture {
    manual_capture: &'static str,
}

/// The merchant's metadata as Adyen's string map.
struct Metadata<'a>(&'a [(String, String)]);

impl Metadata<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Metadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceError {
    error_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    psp_reference: Option<String>,
    result_code: Option<String>,
    refusal_reason: Option<String>,
    refusal_reason_code: Option<String>,
    /// Modifications: `received`.
    status: Option<String>,
    /// What the shopper must do (redirect, 3-D Secure challenge), for the merchant.
    action: Option<Value>,
}

impl Answer {
    fn payment(self) -> Reply {
        let reference = self.psp_reference;
        match (self.result_code.as_deref(), reference) {
            (Some("Authorised"), Some(psp_reference)) => Reply::Succeeded { psp_reference },
            (Some("Refused" | "Cancelled"), psp_reference) => Reply::Declined {
                psp_reference,
                code: self
                    .refusal_reason_code
                    .or(self.refusal_reason)
                    .unwrap_or_else(|| "Refused".into()),
            },
            (
                Some(
                    "Received"
                    | "Pending"
                    | "PresentToShopper"
                    | "RedirectShopper"
                    | "IdentifyShopper"
                    | "ChallengeShopper"
                    | "AuthenticationFinished"
                    | "AuthenticationNotRequired",
                ),
                psp_reference,
            ) => Reply::Pending {
                psp_reference,
                action: self.action,
            },
            (other, _) => Reply::Error {
                reason: format!("Adyen answered resultCode {other:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adyen() -> Adyen {
        Adyen {
            api_key: None,
            merchant_account: "M".into(),
            return_url: Some("https://shop.example/r".into()),
        }
    }

    #[test]
    fn reads_payment_answers_and_the_shoppers_action() {
        let body =
            crate::payload::PaymentBody::parse(br#"{"amount":5,"currency":"EUR"}"#).expect("body");
        let call = Call::Authorize { payment: &body };
        let read = |status: u16, answer: &str| {
            adyen().reply(
                &call,
                &Step::First,
                StatusCode::from_u16(status).expect("status"),
                answer.as_bytes(),
            )
        };
        assert_eq!(
            read(200, r#"{"pspReference":"P1","resultCode":"Authorised"}"#),
            Reply::Succeeded {
                psp_reference: "P1".into()
            }
        );
        assert_eq!(
            read(
                200,
                r#"{"pspReference":"P2","resultCode":"Refused","refusalReason":"Not enough balance","refusalReasonCode":"12"}"#
            ),
            Reply::Declined {
                psp_reference: Some("P2".into()),
                code: "12".into()
            }
        );
        assert_eq!(
            read(
                200,
                r#"{"pspReference":"P3","resultCode":"RedirectShopper","action":{"type":"redirect","url":"https://bank.example/3ds","method":"GET"}}"#
            ),
            Reply::Pending {
                psp_reference: Some("P3".into()),
                action: Some(
                    serde_json::json!({"type":"redirect","url":"https://bank.example/3ds","method":"GET"})
                ),
            }
        );
        assert!(matches!(
            read(
                422,
                r#"{"status":422,"errorCode":"704","errorType":"validation"}"#
            ),
            Reply::Error { .. }
        ));
        assert!(matches!(
            read(
                422,
                r#"{"status":422,"errorCode":"130","errorType":"validation"}"#
            ),
            Reply::Unavailable { .. }
        ));
        assert!(matches!(read(429, "{}"), Reply::Unavailable { .. }));
        assert!(matches!(read(500, "{}"), Reply::Error { .. }));
        assert!(matches!(
            read(200, r#"{"resultCode":"Maybe"}"#),
            Reply::Error { .. }
        ));
    }

    #[test]
    fn long_keys_are_hashed_to_64_characters() {
        assert_eq!(idempotency_key("pay_1"), "pay_1");
        let long = "k".repeat(100);
        assert_eq!(idempotency_key(&long).len(), 64);
        assert_eq!(idempotency_key(&long), idempotency_key(&long));
    }
}
