//! Inbound PSP webhooks: checks that a notification was signed by the PSP and turns it into
//! [`PspEvent`]s that name paygate's payment and operation ids, one file per dialect
//! (`stripe`, `adyen`). The handler for `POST /v1/psp/{channel}/webhooks` calls [`verify`]
//! with the channel's dialect and secret, then applies the events to the store.
//!
//! This module is pure: it performs no I/O, reads no clock (the caller passes `now_unix`) and
//! never touches the store, so deduplication (by [`PspEvent::event_id`]) and state changes
//! belong to the caller. A webhook body may hold card data, so no error message quotes the
//! body or any value taken from it, and secrets are never formatted either.
//!
//! ```
//! use paygate::psp_events::{Dialect, EventKind, stripe_signature_header, verify};
//!
//! let body = br#"{"id":"evt_1","type":"payment_intent.canceled","data":{"object":{"id":"pi_1"}}}"#;
//! let mut headers = http::HeaderMap::new();
//! let signature = stripe_signature_header(b"whsec_test", 1_700_000_000, body);
//! headers.insert("stripe-signature", signature.parse().unwrap());
//! let verified = verify(Dialect::Stripe, &headers, body, b"whsec_test", 1_700_000_010, 300).unwrap();
//! assert_eq!(verified.events[0].kind, EventKind::Cancellation);
//! ```

mod adyen;
mod stripe;

pub use adyen::adyen_hmac;
pub use stripe::stripe_signature_header;

/// How far a Stripe signature's timestamp may be from now, either way: the default of
/// Stripe's own libraries (`DEFAULT_TOLERANCE` = 300 s in stripe-node, stripe-python, stripe-go).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Which PSP's webhook format a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Stripe,
    Adyen,
}

/// A notification whose signature checked out, as events in the order the PSP sent them:
/// one for a Stripe event, one per `NotificationRequestItem` for an Adyen notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: Vec<PspEvent>,
}

/// One thing the PSP reports about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PspEvent {
    /// Stable id to deduplicate redeliveries: Stripe's event `id` (`evt_...`); for Adyen
    /// `eventCode:pspReference:success`, which Adyen repeats unchanged on every retry.
    pub event_id: String,
    pub kind: EventKind,
    /// paygate's payment id, when the event names it.
    pub payment_id: Option<String>,
    /// paygate's capture or refund id, when the event names it.
    pub operation_id: Option<String>,
    /// The PSP's id of the object the event is about (Stripe `pi_...` / `re_...`, Adyen
    /// `pspReference`).
    pub psp_reference: Option<String>,
    /// For a modification, the PSP's id of the payment it modifies.
    pub original_reference: Option<String>,
    pub result: EventResult,
    /// Minor units and the upper-case ISO 4217 currency.
    pub amount: Option<(u64, String)>,
}

/// What the event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Authorization,
    Capture,
    Refund,
    Cancellation,
    /// An event paygate does not act on, by the PSP's own name for it (Stripe `type`, Adyen
    /// `eventCode`); its result is always [`EventResult::Pending`].
    Other(String),
}

/// How the operation the event is about ended, so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResult {
    Succeeded,
    /// `raw_code` is the PSP's reason as it sent it (a Stripe decline code, an Adyen reason).
    Failed {
        raw_code: Option<String>,
    },
    Pending,
}

/// Why a webhook was refused. No message quotes the body or a value from it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("the webhook carries no signature")]
    Unsigned,
    #[error("the webhook's signature does not match")]
    BadSignature,
    #[error("the webhook's signature timestamp is outside the tolerance")]
    Expired,
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// Checks the signature of a webhook `body` received with `headers` and parses its events.
///
/// `secret` is the channel's webhook secret as configured: for Stripe the endpoint secret
/// (`whsec_...`, used as the key byte for byte, as Stripe's libraries do), for Adyen the HMAC
/// key in hex. `now_unix` and `tolerance_secs` bound the age of a Stripe signature; Adyen signs
/// no timestamp, so they do not apply to it. Nothing is parsed before the signature checks out.
pub fn verify(
    dialect: Dialect,
    headers: &http::HeaderMap,
    body: &[u8],
    secret: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> Result<Verified, WebhookError> {
    match dialect {
        Dialect::Stripe => stripe::verify(headers, body, secret, now_unix, tolerance_secs),
        Dialect::Adyen => adyen::verify(body, secret),
    }
}

/// The body as JSON; the error names only the position, since serde's messages can quote
/// values.
fn parse_json(body: &[u8]) -> Result<serde_json::Value, WebhookError> {
    serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(format!(
            "body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// The non-empty string at `path` below `value`.
fn text_at(value: &serde_json::Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An amount and its currency, upper-cased; `None` unless both are present and the value is
/// a whole non-negative number.
fn amount(value: Option<&serde_json::Value>, currency: Option<&str>) -> Option<(u64, String)> {
    let value = value?.as_u64()?;
    let currency = currency.filter(|c| !c.is_empty())?;
    Some((value, currency.to_ascii_uppercase()))
}
