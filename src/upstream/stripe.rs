//! Dialect `stripe`: Stripe's PaymentIntents API, form-encoded, `Authorization: Bearer` with
//! the channel's `api_key`, `Stripe-Version` pinned by `api_version`.
//!
//! - Authorize: card data first becomes a PaymentMethod (`POST /v1/payment_methods`, a step
//!   that moves no money, keyed `{key}-pm`), then `POST /v1/payment_intents` with
//!   `confirm=true`, `capture_method=manual` unless the merchant asked for capture, and
//!   `metadata[paygate_id]`. A `payment_method` of `pm_...` in the merchant's body skips the
//!   first step.
//! - Capture: `POST /v1/payment_intents/{id}/capture` (`amount_to_capture`); refund:
//!   `POST /v1/refunds` with `metadata[paygate_operation]` so that the webhook finds it;
//!   cancel: `POST /v1/payment_intents/{id}/cancel`.
//! - Status: `GET /v1/payment_intents/{id}`, or, with no answer ever received, the search
//!   API by `metadata['paygate_id']` (whose index lags: an empty result proves nothing until
//!   [`SEARCH_SETTLES_AFTER`] has passed).
//! - Declines are HTTP 402 `card_error` (or an intent back in `requires_payment_method`) with
//!   `decline_code` / `code`, which the channel's decline table normalizes.
//!
//! Every POST carries `Idempotency-Key`; Stripe replays the first outcome of a repeated key,
//! so a call in doubt is sent again to the same channel before it is left pending.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;

use super::card::Order;
use super::form::Form;
use super::paygate_v1::path_segment;
use super::protocol::{
    Call, CallContext, Lookup, ProtocolError, PspProtocol, Reply, Step, refused_unprocessed,
};
use crate::config::Channel;
use crate::payload::PaymentBody;

/// The API version paygate's mapping was written against.
pub const DEFAULT_API_VERSION: &str = "2023-08-16";
/// Stripe's search index is "typically" current within a minute; five leave margin.
const SEARCH_SETTLES_AFTER: Duration = Duration::from_secs(300);

pub struct Stripe {
    authorization: Option<HeaderValue>,
    version: HeaderValue,
}

impl Stripe {
    pub fn new(channel: &Channel) -> Self {
        let authorization = channel.account.api_key.as_ref().and_then(|key| {
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(&key.0);
            let mut value = HeaderValue::from_bytes(&value).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let version = channel
            .account
            .api_version
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
            .unwrap_or(HeaderValue::from_static(DEFAULT_API_VERSION));
        Self {
            authorization,
            version,
        }
    }
}

/// The Stripe PaymentMethod the merchant passed instead of card data, if any.
fn token(payment: &PaymentBody<'_>) -> Option<String> {
    let raw = payment.get("payment_method")?;
    serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|t| t.starts_with("pm_"))
}

fn intent_form(order: &Order<'_>, payment_method: &str, paygate_id: &str) -> Form {
    let mut form = Form::new();
    form.field("amount", &order.amount.to_string())
        .field("currency", &order.currency.to_ascii_lowercase())
        .field("payment_method", payment_method)
        .field("payment_method_types[0]", "card")
        .field("confirm", "true")
        .field(
            "capture_method",
            if order.capture { "automatic" } else { "manual" },
        );
    for (key, value) in &order.metadata {
        form.field(&format!("metadata[{key}]"), value);
    }
    if let Some(reference) = &order.reference {
        form.field("metadata[reference]", reference);
    }
    form.field("metadata[paygate_id]", paygate_id);
    form
}

impl PspProtocol for Stripe {
    fn request(
        &self,
        base: &str,
        call: &Call<'_>,
        context: &CallContext<'_>,
        step: &Step,
    ) -> Result<Request<Full<Bytes>>, ProtocolError> {
        let id = context.paygate_id;
        let mut key = context.idempotency_key.to_string();
        let (method, path, form) = match (call, step) {
            (Call::Authorize { payment }, step) => {
                let order = Order::read(payment)?;
                match (token(payment), step) {
                    (Some(token), _) => (
                        Method::POST,
                        "/v1/payment_intents".to_string(),
                        Some(intent_form(&order, &token, id)),
                    ),
                    (None, Step::First) => {
                        let card = order.card()?;
                        let mut form = Form::new();
                        form.field("type", "card")
                            .field("card[number]", &card.number)
                            .field("card[exp_month]", &card.exp_month.to_string())
                            .field("card[exp_year]", &card.exp_year.to_string());
                        if let Some(cvc) = &card.cvc {
                            form.field("card[cvc]", cvc);
                        }
                        if let Some(name) = &card.holder_name {
                            form.field("billing_details[name]", name);
                        }
                        key.push_str("-pm");
                        (Method::POST, "/v1/payment_methods".to_string(), Some(form))
                    }
                    (None, Step::Then(payment_method)) => (
                        Method::POST,
                        "/v1/payment_intents".to_string(),
                        Some(intent_form(&order, payment_method, id)),
                    ),
                }
            }
            (
                Call::Capture {
                    psp_reference,
                    amount,
                    ..
                },
                _,
            ) => {
                let mut form = Form::new();
                form.field("amount_to_capture", &amount.to_string());
                (
                    Method::POST,
                    format!(
                        "/v1/payment_intents/{}/capture",
                        path_segment(psp_reference)?
                    ),
                    Some(form),
                )
            }
            (
                Call::Refund {
                    psp_reference,
                    amount,
                    ..
                },
                _,
            ) => {
                let mut form = Form::new();
                form.field("payment_intent", path_segment(psp_reference)?)
                    .field("amount", &amount.to_string())
                    .field("metadata[paygate_id]", id)
                    .field("metadata[paygate_operation]", context.idempotency_key);
                (Method::POST, "/v1/refunds".to_string(), Some(form))
            }
            (Call::Cancel { psp_reference, .. }, _) => (
                Method::POST,
                format!(
                    "/v1/payment_intents/{}/cancel",
                    path_segment(psp_reference)?
                ),
                Some(Form::new()),
            ),
            (
                Call::Status {
                    psp_reference: Some(reference),
                },
                _,
            ) => (
                Method::GET,
                format!("/v1/payment_intents/{}", path_segment(reference)?),
                None,
            ),
            (
                Call::Status {
                    psp_reference: None,
                },
                _,
            ) => {
                let mut query = Form::new();
                query.field(
                    "query",
                    &format!("metadata['paygate_id']:'{}'", path_segment(id)?),
                );
                let query = String::from_utf8(query.into_bytes())
                    .map_err(|e| ProtocolError(e.to_string()))?;
                (
                    Method::GET,
                    format!("/v1/payment_intents/search?{query}"),
                    None,
                )
            }
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{base}{path}"))
            .header("stripe-version", self.version.clone())
            .header("x-request-id", context.request_id);
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if method == Method::POST {
            request = request
                .header("idempotency-key", key)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let body = form.map(Form::into_bytes).unwrap_or_default();
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProtocolError(e.to_string()))
    }

    fn reply(&self, call: &Call<'_>, step: &Step, status: StatusCode, body: &[u8]) -> Reply {
        if let Some(refused) = refused_unprocessed("Stripe", status) {
            return refused;
        }
        let answered = |what: &str| format!("Stripe answered {} {what}", status.as_u16());
        match status.as_u16() {
            200 => {}
            402 => {
                let error = error_of(body);
                return Reply::Declined {
                    psp_reference: error.payment_intent.map(|intent| intent.id),
                    code: error
                        .decline_code
                        .or(error.code)
                        .unwrap_or_else(|| "card_declined".into()),
                };
            }
            409 => {
                return Reply::Error {
                    reason: answered("(the idempotency key is in use)"),
                };
            }
            400 | 404 => {
                let error = error_of(body);
                let code = error.code.unwrap_or_else(|| "invalid_request".into());
                // The key was used before with other parameters: the first may have charged.
                if error.kind.as_deref() == Some("idempotency_error") {
                    return Reply::Error {
                        reason: answered("idempotency_error"),
                    };
                }
                return match call {
                    Call::Capture { .. } | Call::Refund { .. } | Call::Cancel { .. } => {
                        Reply::Declined {
                            psp_reference: None,
                            code,
                        }
                    }
                    Call::Authorize { .. } => Reply::Unavailable {
                        reason: answered(&format!("{code} (refused unprocessed)")),
                    },
                    Call::Status { .. } => Reply::Error {
                        reason: answered(&code),
                    },
                };
            }
            _ => {
                return Reply::Error {
                    reason: answered("(a fault)"),
                };
            }
        }
        let parsed = match (call, step) {
            (Call::Authorize { payment }, Step::First) if token(payment).is_none() => {
                serde_json::from_slice::<Object>(body).map(|pm| Reply::Then(pm.id))
            }
            (Call::Refund { .. }, _) => serde_json::from_slice::<Refund>(body).map(Refund::reply),
            (Call::Cancel { .. }, _) => {
                serde_json::from_slice::<Intent>(body).map(|intent| match intent.status.as_str() {
                    "canceled" => Reply::Succeeded {
                        psp_reference: intent.id,
                    },
                    other => Reply::Declined {
                        psp_reference: Some(intent.id.clone()),
                        code: other.to_string(),
                    },
                })
            }
            (
                Call::Status {
                    psp_reference: None,
                },
                _,
            ) => serde_json::from_slice::<Search>(body).map(|found| {
                found
                    .data
                    .into_iter()
                    .next()
                    .map_or(Reply::Unknown, Intent::reply)
            }),
            _ => serde_json::from_slice::<Intent>(body).map(Intent::reply),
        };
        parsed.unwrap_or_else(|_| Reply::Error {
            reason: answered("with a body that is not the expected Stripe object"),
        })
    }

    /// The PaymentMethod step moves no money.
    fn may_move_money(&self, call: &Call<'_>, step: &Step) -> bool {
        match (call, step) {
            (Call::Authorize { payment }, Step::First) => token(payment).is_some(),
            _ => true,
        }
    }

    fn replays_by_key(&self) -> bool {
        true
    }

    fn lookup(&self) -> Lookup {
        Lookup::ByPaygateId {
            settled_after: SEARCH_SETTLES_AFTER,
        }
    }
}

#[derive(Deserialize)]
struct Object {
    id: String,
}

#[derive(Deserialize, Default)]
struct StripeError {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    decline_code: Option<String>,
    payment_intent: Option<Object>,
}

#[derive(Deserialize)]
struct Envelope {
    error: StripeError,
}

fn error_of(body: &[u8]) -> StripeError {
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Intent {
    id: String,
    status: String,
    last_payment_error: Option<StripeError>,
    /// `requires_action`: what the customer must do (`redirect_to_url`, `use_stripe_sdk`).
    next_action: Option<serde_json::Value>,
}

impl Intent {
    fn reply(self) -> Reply {
        match self.status.as_str() {
            "succeeded" | "requires_capture" => Reply::Succeeded {
                psp_reference: self.id,
            },
            "processing" | "requires_action" => Reply::Pending {
                psp_reference: Some(self.id),
                action: self.next_action,
            },
            "requires_payment_method" | "canceled" => Reply::Declined {
                code: self
                    .last_payment_error
                    .and_then(|e| e.decline_code.or(e.code))
                    .unwrap_or_else(|| self.status.clone()),
                psp_reference: Some(self.id),
            },
            other => Reply::Error {
                reason: format!("Stripe's PaymentIntent is {other:?}"),
            },
        }
    }
}

#[derive(Deserialize)]
struct Refund {
    id: String,
    status: Option<String>,
    failure_reason: Option<String>,
}

impl Refund {
    fn reply(self) -> Reply {
        match self.status.as_deref() {
            Some("succeeded") => Reply::Succeeded {
                psp_reference: self.id,
            },
            Some("pending" | "requires_action") | None => Reply::Pending {
                psp_reference: Some(self.id),
                action: None,
            },
            Some(_) => Reply::Declined {
                psp_reference: Some(self.id),
                code: self
                    .failure_reason
                    .unwrap_or_else(|| "refund_failed".into()),
            },
        }
    }
}

#[derive(Deserialize)]
struct Search {
    data: Vec<Intent>,
}
