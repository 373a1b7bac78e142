//! The Adyen Checkout API v72 dialect of the simulator (`mock-psp --dialect adyen`):
//! `POST /payments` and `POST /payments/{pspReference}/captures|refunds|cancels`, with or
//! without the `/v72` prefix, answered in the spec's shapes (`PaymentResponse`,
//! `Payment{Capture,Refund,Cancel}Response`, `ServiceError`), and the optional notifications
//! (AUTHORISATION, CAPTURE, REFUND, CANCELLATION) signed with the merchant's HMAC key.
//!
//! Owns the Adyen HTTP edge, its idempotency answers and the per-`reference` record that
//! `GET /_sim/payments/{reference}` serves. The fault, the outcome and the latency are drawn by
//! `behavior` and decided by `protocol::outcome`, exactly as for `paygate-v1`; payments and
//! their amounts live in the shared `ledger`. Must not echo a request value in an error, must
//! never store or log a card number, CVC or expiry, and must not hold the thread-local random
//! generator across an `.await`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Simulator;
use super::behavior::{Behavior, Draw, Fault, FaultScope};
use super::ledger::{Answer, Operation, Payment, Status};
use super::protocol::{
    HUGE_BODY_BYTES, InjectedReset, MAX_BODY_BYTES, SimResponse, cut_short, dribbled, endless,
    header, json_problem, outcome, pause, respond, stats_response,
};
use super::stats::{Ending, MAX_TRACKED_KEYS, Processed, RecentRequest};

/// A pspReference is 16 uppercase letters and digits at Adyen: here 4 derived from the
/// simulator's name (so two simulators never hand out the same one) and 12 decimal digits of
/// the reference number.
const PSP_REFERENCE_LEN: usize = 16;
const PREFIX_LEN: usize = 4;
const NUMBER_MODULUS: u64 = 1_000_000_000_000;

/// The longest `reference` a `/_sim/payments/` lookup takes (Adyen allows 80 characters).
const MAX_REFERENCE_LEN: usize = 255;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Payment,
    Modification(Modification, &'a str),
    SimPayment(&'a str),
    Stats,
    Reset,
    NotFound,
}

/// A change to an authorised payment; Adyen answers each `received` and settles it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modification {
    Capture,
    Refund,
    Cancel,
}

impl Modification {
    fn name(self) -> &'static str {
        match self {
            Modification::Capture => "capture",
            Modification::Refund => "refund",
            Modification::Cancel => "cancel",
        }
    }

    fn event_code(self) -> &'static str {
        match self {
            Modification::Capture => "CAPTURE",
            Modification::Refund => "REFUND",
            Modification::Cancel => "CANCELLATION",
        }
    }
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Route<'a> {
        // Adyen's base URL ends in /v72; a client may put it in the channel URL or in the path.
        let path = path
            .strip_prefix("/v72")
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path);
        let Some(path) = path.strip_prefix('/') else {
            return Route::NotFound;
        };
        let mut segments = path.split('/');
        let segments = [(); 4].map(|_| segments.next());
        let modification = match segments[2] {
            Some("captures") => Some(Modification::Capture),
            Some("refunds") => Some(Modification::Refund),
            Some("cancels") => Some(Modification::Cancel),
            _ => None,
        };
        match (method, segments, modification) {
            (&Method::POST, [Some("payments"), None, ..], _) => Route::Payment,
            (&Method::POST, [Some("payments"), Some(psp), Some(_), None], Some(kind))
                if !psp.is_empty() =>
            {
                Route::Modification(kind, psp)
            }
            (&Method::GET, [Some("_sim"), Some("payments"), Some(id), None], _)
                if !id.is_empty() =>
            {
                Route::SimPayment(id)
            }
            (&Method::GET, [Some("_sim"), Some("stats"), None, _], _) => Route::Stats,
            (&Method::POST, [Some("_sim"), Some("reset"), None, _], _) => Route::Reset,
            _ => Route::NotFound,
        }
    }
}

/// Adyen's error body. `message` never quotes a request value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceError {
    status: u16,
    error_code: &'static str,
    message: Cow<'static, str>,
    error_type: &'static str,
}

impl ServiceError {
    fn new(
        status: StatusCode,
        error_code: &'static str,
        message: impl Into<Cow<'static, str>>,
        error_type: &'static str,
    ) -> Self {
        ServiceError {
            status: status.as_u16(),
            error_code,
            message: message.into(),
            error_type,
        }
    }

    fn validation(error_code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_code,
            message,
            "validation",
        )
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "000",
            "HTTP Status Response - Unauthorized",
            "security",
        )
    }

    fn response(&self) -> SimResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, self)
    }
}

/// `{"value", "currency"}` as it arrives: checked by hand so that messages name the field.
#[derive(Debug, Default, Deserialize)]
struct RawAmount<'a> {
    #[serde(default)]
    value: Option<Value>,
    #[serde(default, borrow)]
    currency: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPaymentMethod<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    number: Option<Cow<'a, str>>,
    /// Adyen's test environment accepts `test_<number>` in place of the encrypted value.
    #[serde(default, rename = "encryptedCardNumber", borrow)]
    encrypted_card_number: Option<Cow<'a, str>>,
}

/// The fields of a request the simulator reads; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBody<'a> {
    #[serde(default, borrow)]
    merchant_account: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    amount: Option<RawAmount<'a>>,
    #[serde(default, borrow)]
    payment_method: Option<RawPaymentMethod<'a>>,
    #[serde(default)]
    capture_delay_hours: Option<i64>,
    #[serde(default)]
    additional_data: Option<serde_json::Map<String, Value>>,
}

/// Money as the spec has it: `value` in minor units, a three-letter `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Amount<'a> {
    value: u64,
    currency: Cow<'a, str>,
}

/// A checked `POST /payments` body.
#[derive(Debug)]
struct PaymentRequest<'a> {
    merchant_account: Cow<'a, str>,
    reference: Cow<'a, str>,
    amount: Amount<'a>,
    method_type: Option<Cow<'a, str>>,
    card_number: Option<Cow<'a, str>>,
    /// Adyen captures immediately unless the payment asks for a delay or a manual capture.
    auto_capture: bool,
}

/// A checked capture, refund or cancel body.
#[derive(Debug)]
struct ModificationRequest<'a> {
    merchant_account: Cow<'a, str>,
    reference: Option<Cow<'a, str>>,
    amount: Option<Amount<'a>>,
}

fn parse_raw(bytes: &[u8]) -> Result<RawBody<'_>, ServiceError> {
    serde_json::from_slice(bytes).map_err(|error| {
        ServiceError::new(
            StatusCode::BAD_REQUEST,
            "000",
            format!("Unable to parse message: {}", json_problem(&error)),
            "validation",
        )
    })
}

fn required<'a>(field: Option<Cow<'a, str>>, name: &str) -> Result<Cow<'a, str>, ServiceError> {
    match field {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(ServiceError::validation(
            if name == "reference" { "130" } else { "702" },
            format!("Required field '{name}' is not provided."),
        )),
    }
}

fn checked_amount(raw: Option<RawAmount<'_>>) -> Result<Amount<'_>, ServiceError> {
    let Some(raw) = raw else {
        return Err(ServiceError::validation(
            "100",
            "Required object 'amount' is not provided.",
        ));
    };
    let value = raw
        .value
        .as_ref()
        .and_then(Value::as_u64)
        .filter(|v| *v > 0);
    let Some(value) = value else {
        return Err(ServiceError::validation(
            "137",
            "Invalid amount specified: 'amount.value' must be a positive integer in minor units.",
        ));
    };
    match raw.currency {
        Some(currency)
            if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) =>
        {
            Ok(Amount { value, currency })
        }
        _ => Err(ServiceError::validation(
            "138",
            "Unsupported currency specified: 'amount.currency' must be a three-letter ISO 4217 code.",
        )),
    }
}

fn check_payment(bytes: &[u8]) -> Result<PaymentRequest<'_>, ServiceError> {
    let raw = parse_raw(bytes)?;
    let merchant_account = required(raw.merchant_account, "merchantAccount")?;
    let reference = required(raw.reference, "reference")?;
    let amount = checked_amount(raw.amount)?;
    let Some(method) = raw.payment_method else {
        return Err(ServiceError::validation(
            "702",
            "Required field 'paymentMethod' is not provided.",
        ));
    };
    let manual = raw
        .additional_data
        .as_ref()
        .and_then(|data| data.get("manualCapture"))
        .and_then(Value::as_str)
        == Some("true");
    let card_number = method
        .number
        .or(method.encrypted_card_number.and_then(|text| {
            text.strip_prefix("test_")
                .map(|n| Cow::Owned(n.to_string()))
        }));
    Ok(PaymentRequest {
        merchant_account,
        reference,
        amount,
        method_type: method.kind,
        card_number,
        auto_capture: !manual && raw.capture_delay_hours.unwrap_or(0) <= 0,
    })
}

fn check_modification(
    kind: Modification,
    bytes: &[u8],
) -> Result<ModificationRequest<'_>, ServiceError> {
    let raw = parse_raw(bytes)?;
    let merchant_account = required(raw.merchant_account, "merchantAccount")?;
    let amount = match kind {
        Modification::Cancel => None,
        Modification::Capture | Modification::Refund => Some(checked_amount(raw.amount)?),
    };
    Ok(ModificationRequest {
        merchant_account,
        reference: raw.reference.filter(|text| !text.is_empty()),
        amount,
    })
}

/// Adyen's `refusalReasonCode` and `refusalReason` for a simulator decline code. Codes and
/// texts from docs.adyen.com/development-resources/refusal-reasons; an unknown code is the
/// generic "2 Refused".
pub fn refusal(decline_code: &str) -> (&'static str, &'static str) {
    match decline_code {
        "acquirer_error" | "processing_error" => ("4", "Acquirer Error"),
        "blocked_card" | "lost_card" | "stolen_card" | "pickup_card" => ("5", "Blocked Card"),
        "expired_card" => ("6", "Expired Card"),
        "invalid_amount" => ("7", "Invalid Amount"),
        "invalid_card_number" | "incorrect_number" | "invalid_number" => {
            ("8", "Invalid Card Number")
        }
        "issuer_unavailable" => ("9", "Issuer Unavailable"),
        "insufficient_funds" => ("12", "Not enough balance"),
        "acquirer_fraud" => ("14", "Acquirer Fraud"),
        "fraud" | "fraudulent" => ("20", "FRAUD"),
        "cvc_declined" | "incorrect_cvc" | "invalid_cvc" => ("24", "CVC Declined"),
        "do_not_honor" | "do_not_honour" => ("27", "Do Not Honour"),
        "withdrawal_limit_exceeded" | "card_velocity_exceeded" => {
            ("28", "Withdrawal amount exceeded")
        }
        "suspected_fraud" | "issuer_suspected_fraud" => ("31", "Issuer Suspected Fraud"),
        "authentication_required" => ("38", "Authentication required"),
        _ => ("2", "Refused"),
    }
}

/// Adyen's `resultCode` for a simulator status. A pending card payment is `Pending`; SEPA
/// Direct Debit, whose outcome Adyen learns days later, is `Received`.
fn result_code(status: Status, method_type: Option<&str>) -> &'static str {
    match status {
        Status::Succeeded => "Authorised",
        Status::Declined => "Refused",
        Status::Pending if method_type == Some("sepadirectdebit") => "Received",
        Status::Pending => "Pending",
    }
}

/// `PaymentResponse` as the simulator fills it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentResponse<'a> {
    psp_reference: String,
    result_code: &'static str,
    merchant_reference: &'a str,
    amount: &'a Amount<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal_reason_code: Option<&'static str>,
}

/// `PaymentCaptureResponse`, `PaymentRefundResponse` and `PaymentCancelResponse` (no amount).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModificationResponse<'a> {
    merchant_account: &'a str,
    payment_psp_reference: &'a str,
    psp_reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<&'a Amount<'a>>,
}

/// A first answer kept for its idempotency key.
#[derive(Debug, Clone)]
struct Remembered {
    /// SHA-256 of the path and the body: the same key with another request is a conflict.
    fingerprint: [u8; 32],
    status: StatusCode,
    body: Bytes,
    /// The payment's status, for the outcome counters of a replayed `/payments`.
    payment: Option<Status>,
}

/// What an idempotency key gives.
enum Keyed {
    New(Remembered, Option<Notification>),
    Duplicate(Remembered),
    Conflict,
}

/// A payment as a modification and its notification need it.
#[derive(Debug, Clone)]
struct Authorised {
    reference: Arc<str>,
    merchant_account: Box<str>,
    amount: u64,
    currency: Box<str>,
}

/// One capture, refund or cancel the simulator received for a payment.
#[derive(Debug, Clone, Serialize)]
struct SeenModification {
    kind: &'static str,
    psp_reference: String,
    reference: Option<String>,
    amount: Option<u64>,
    currency: Option<String>,
    /// `applied`, or why the ledger would not apply it (`invalid_amount` for a capture
    /// beyond the authorised amount or a refund beyond the captured one,
    /// `payment_not_authorized`, `payment_not_captured`, `payment_captured`, `payment_canceled`). The answer was `received` anyway.
    outcome: &'static str,
}

/// Everything received with one merchant `reference` (paygate's paygate_id).
#[derive(Debug, Default)]
struct Seen {
    /// Every `POST /payments` with this reference, faulted and replayed ones included.
    received: u64,
    /// Those that reached processing: new payments and idempotent replays.
    requests: u64,
    /// Payments made (more than one means the same reference was paid twice).
    payments: Vec<u64>,
    result_code: &'static str,
    merchant_account: Box<str>,
    amount: u64,
    currency: Box<str>,
    modifications: Vec<SeenModification>,
}

/// The Adyen dialect's state beside the shared ledger and stats.
#[derive(Debug)]
pub struct Book {
    prefix: [u8; PREFIX_LEN],
    answers: DashMap<Box<str>, Remembered, FxBuildHasher>,
    seen: DashMap<Arc<str>, Seen, FxBuildHasher>,
    payments: DashMap<u64, Authorised, FxBuildHasher>,
    /// Entries over all three maps; past `MAX_TRACKED_KEYS` new ones are not kept, which bounds
    /// a long load run (later keys are not deduplicated and later references not recorded).
    tracked: AtomicU64,
}

impl Book {
    pub fn new(name: &str) -> Self {
        Book {
            prefix: prefix(name),
            answers: DashMap::default(),
            seen: DashMap::default(),
            payments: DashMap::default(),
            tracked: AtomicU64::new(0),
        }
    }

    pub fn clear(&self) {
        self.answers.clear();
        self.seen.clear();
        self.payments.clear();
        self.tracked.store(0, Ordering::Relaxed);
    }

    fn reserve(&self) -> bool {
        if self.tracked.fetch_add(1, Ordering::Relaxed) < MAX_TRACKED_KEYS {
            return true;
        }
        self.tracked.fetch_sub(1, Ordering::Relaxed);
        false
    }

    fn psp_reference(&self, number: u64) -> String {
        let prefix: String = self.prefix.iter().map(|b| char::from(*b)).collect();
        format!("{prefix}{:012}", number % NUMBER_MODULUS)
    }

    /// The reference number in a pspReference this simulator issued.
    fn parse_psp_reference(&self, text: &str) -> Option<u64> {
        if text.len() != PSP_REFERENCE_LEN {
            return None;
        }
        let digits = text.strip_prefix(std::str::from_utf8(&self.prefix).ok()?)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The first answer for `key`, or `decide()`'s remembered as the first. The entry (shard)
    /// lock is held while deciding, so two concurrent first requests make one payment.
    fn keyed(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        decide: impl FnOnce() -> (Remembered, Option<Notification>),
    ) -> Keyed {
        if let Some(seen) = self.answers.get(key) {
            return replayed(&seen, fingerprint);
        }
        if !self.reserve() {
            let (answer, notification) = decide();
            return Keyed::New(answer, notification);
        }
        match self.answers.entry(Box::from(key)) {
            Entry::Occupied(seen) => {
                self.tracked.fetch_sub(1, Ordering::Relaxed);
                replayed(seen.get(), fingerprint)
            }
            Entry::Vacant(slot) => {
                let (answer, notification) = decide();
                slot.insert(answer.clone());
                Keyed::New(answer, notification)
            }
        }
    }

    fn seen_mut(
        &self,
        reference: &str,
    ) -> Option<dashmap::mapref::one::RefMut<'_, Arc<str>, Seen>> {
        if let Some(seen) = self.seen.get_mut(reference) {
            return Some(seen);
        }
        if !self.reserve() {
            return None;
        }
        let entry = self.seen.entry(Arc::from(reference));
        if matches!(entry, Entry::Occupied(_)) {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
        Some(entry.or_default())
    }

    fn received(&self, reference: &str) {
        if let Some(mut seen) = self.seen_mut(reference) {
            seen.received += 1;
        }
    }
}

fn replayed(seen: &Remembered, fingerprint: [u8; 32]) -> Keyed {
    if seen.fingerprint == fingerprint {
        Keyed::Duplicate(seen.clone())
    } else {
        Keyed::Conflict
    }
}

/// Four uppercase letters and digits from an FNV-1a hash of the simulator's name.
fn prefix(name: &str) -> [u8; PREFIX_LEN] {
    const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut prefix = [b'0'; PREFIX_LEN];
    for slot in &mut prefix {
        *slot = ALPHABET[(hash % 36) as usize];
        hash /= 36;
    }
    prefix
}

/// Serves one request. `Err` only for the reset fault.
pub async fn handle(
    sim: Arc<Simulator>,
    request: Request<Incoming>,
) -> Result<SimResponse, InjectedReset> {
    let (parts, body) = request.into_parts();
    match Route::parse(&parts.method, parts.uri.path()) {
        Route::Stats => Ok(stats_response(&sim)),
        Route::SimPayment(reference) => Ok(seen_payment(&sim, reference)),
        Route::Reset => {
            sim.reset();
            Ok(respond(StatusCode::NO_CONTENT, Vec::new()))
        }
        Route::NotFound => {
            sim.stats.request(recent(&parts, None, None));
            Ok(
                ServiceError::new(StatusCode::NOT_FOUND, "000", "Not Found", "validation")
                    .response(),
            )
        }
        route => endpoint(&sim, &parts, route, body).await,
    }
}

/// A checked request of either kind.
enum Checked<'a> {
    Payment(PaymentRequest<'a>),
    Modification(Modification, &'a str, ModificationRequest<'a>),
}

impl Checked<'_> {
    fn reference(&self) -> Option<&str> {
        match self {
            Checked::Payment(payment) => Some(&payment.reference),
            Checked::Modification(_, _, modification) => modification.reference.as_deref(),
        }
    }

    fn amount(&self) -> Option<&Amount<'_>> {
        match self {
            Checked::Payment(payment) => Some(&payment.amount),
            Checked::Modification(_, _, modification) => modification.amount.as_ref(),
        }
    }
}

fn check<'a>(route: Route<'a>, bytes: &'a [u8]) -> Result<Checked<'a>, ServiceError> {
    match route {
        Route::Modification(kind, psp) => {
            check_modification(kind, bytes).map(|m| Checked::Modification(kind, psp, m))
        }
        _ => check_payment(bytes).map(Checked::Payment),
    }
}

/// One of the four endpoints: the API key, faults, then the body, then the outcome.
async fn endpoint(
    sim: &Simulator,
    parts: &Parts,
    route: Route<'_>,
    body: Incoming,
) -> Result<SimResponse, InjectedReset> {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(error.response()),
    };
    let checked = check(route, &bytes);
    let api_key = header(&parts.headers, "x-api-key").filter(|key| !key.is_empty());
    sim.stats
        .request(recent(parts, checked.as_ref().ok(), api_key));
    if api_key.is_none() {
        return Ok(ServiceError::unauthorized().response());
    }
    if let Ok(Checked::Payment(payment)) = &checked {
        sim.adyen.received(&payment.reference);
    }
    let behavior = sim.behavior_now();
    let mut draw = behavior.draw();
    if behavior.fault_scope == FaultScope::Payments && route != Route::Payment {
        draw.fault = None;
    }
    if let Some(response) = unprocessed_fault(sim, route, &draw).await {
        return Ok(response);
    }
    let checked = match checked {
        Ok(checked) => checked,
        Err(error) => return Ok(error.response()),
    };
    let key = header(&parts.headers, "idempotency-key").filter(|key| !key.is_empty());
    let fingerprint = fingerprint(parts.uri.path(), &bytes);
    if let Some(fault) = draw.fault {
        sim.stats.fault(fault);
    }
    let response = match checked {
        Checked::Payment(payment) => {
            create_payment(sim, &payment, key, fingerprint, &draw, behavior)
        }
        Checked::Modification(kind, psp, modification) => {
            modify(sim, kind, psp, &modification, key, fingerprint)
        }
    };
    let response = with_key_header(response, key);
    let wait = match draw.fault {
        Some(Fault::Late) => Duration::from_millis(behavior.late_ms),
        _ => draw.latency,
    };
    pause(wait).await;
    match draw.fault {
        None | Some(Fault::Late | Fault::Unavailable | Fault::Hang) => Ok(response),
        Some(Fault::Reset) => Err(InjectedReset),
        Some(fault) => Ok(faulted(fault, response, behavior).await),
    }
}

/// The faults that skip processing: 503 (after the usual latency) and hang.
async fn unprocessed_fault(sim: &Simulator, route: Route<'_>, draw: &Draw) -> Option<SimResponse> {
    super::protocol::unprocessed(sim, route == Route::Payment, draw).await?;
    Some(
        ServiceError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "000",
            "Service Unavailable",
            "internal",
        )
        .response(),
    )
}

/// The answer a fault that struck after processing sends instead of `response`.
async fn faulted(fault: Fault, response: SimResponse, behavior: &Behavior) -> SimResponse {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut answered: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let status_field = if answered.get("resultCode").is_some() {
        "resultCode"
    } else {
        "status"
    };
    match fault {
        Fault::InternalError => ServiceError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "000",
            "An unknown error occurred",
            "internal",
        )
        .response(),
        Fault::Garbage => {
            let mut garbage = respond(
                StatusCode::OK,
                b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
            );
            garbage
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            garbage
        }
        Fault::UnknownStatus => {
            answered[status_field] = json!("AuthorisedMaybe");
            json_response(parts.status, &answered)
        }
        Fault::MissingReference => {
            if let Some(object) = answered.as_object_mut() {
                object.remove("pspReference");
            }
            json_response(parts.status, &answered)
        }
        Fault::HugeBody => {
            answered["padding"] = json!("x".repeat(HUGE_BODY_BYTES));
            json_response(parts.status, &answered)
        }
        Fault::EndlessBody => endless(),
        Fault::Dribble => dribbled(
            parts,
            bytes,
            Duration::from_millis(behavior.dribble_interval_ms),
        ),
        Fault::ResetMidBody => cut_short(parts, bytes),
        Fault::Reset | Fault::Late | Fault::Unavailable | Fault::Hang => {
            Response::from_parts(parts, super::protocol::full(bytes))
        }
    }
}

fn fingerprint(path: &str, body: &[u8]) -> [u8; 32] {
    let path = path.strip_prefix("/v72").unwrap_or(path);
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().into()
}

/// Adyen echoes the key it answered under, which is how a client tells a processed retry.
fn with_key_header(mut response: SimResponse, key: Option<&str>) -> SimResponse {
    if let Some(value) = key.and_then(|key| HeaderValue::from_str(key).ok()) {
        response.headers_mut().insert("idempotency-key", value);
    }
    response
}

fn conflict() -> SimResponse {
    ServiceError::validation("704", "request already processed or in progress").response()
}

fn create_payment(
    sim: &Simulator,
    payment: &PaymentRequest<'_>,
    key: Option<&str>,
    fingerprint: [u8; 32],
    draw: &Draw,
    behavior: &Behavior,
) -> SimResponse {
    let decide = || decide_payment(sim, payment, fingerprint, draw, behavior);
    let (answer, notification, replay) = match key {
        None => {
            let (answer, notification) = decide();
            (answer, notification, false)
        }
        Some(key) => match sim.adyen.keyed(key, fingerprint, decide) {
            Keyed::New(answer, notification) => (answer, notification, false),
            Keyed::Duplicate(answer) => (answer, None, true),
            Keyed::Conflict => return conflict(),
        },
    };
    if replay {
        sim.stats.duplicate();
    }
    if let Some(mut seen) = sim.adyen.seen_mut(&payment.reference) {
        seen.requests += 1;
    }
    let ending = match (draw.fault, answer.payment) {
        (Some(fault), _) => Ending::Fault(fault),
        (None, Some(status)) => Ending::Answered(status),
        (None, None) => Ending::Answered(Status::Declined),
    };
    sim.stats.payment_outcome(ending);
    if let Some(notification) = notification {
        // Adyen notifies a pending payment once it has an outcome: here, when it resolves.
        let delay = match answer.payment {
            Some(Status::Pending) => Duration::from_millis(behavior.pending_resolves_ms),
            _ => Duration::ZERO,
        };
        notify(sim, notification, delay);
    }
    stored_response(&answer)
}

/// Makes one payment: the shared outcome, stored in the ledger, recorded by reference.
fn decide_payment(
    sim: &Simulator,
    payment: &PaymentRequest<'_>,
    fingerprint: [u8; 32],
    draw: &Draw,
    behavior: &Behavior,
) -> (Remembered, Option<Notification>) {
    sim.stats.processed(Processed::Payment);
    let number = sim.next_reference();
    let answer = outcome(number, payment.card_number.as_deref(), draw, behavior);
    let resolves_after = Duration::from_millis(behavior.pending_resolves_ms);
    let stored = Payment::new(
        &answer,
        payment.amount.value,
        payment.auto_capture,
        resolves_after,
    );
    sim.ledger.insert(number, stored);
    let reference: Arc<str> = Arc::from(payment.reference.as_ref());
    if sim.adyen.reserve() {
        sim.adyen.payments.insert(
            number,
            Authorised {
                reference: Arc::clone(&reference),
                merchant_account: Box::from(payment.merchant_account.as_ref()),
                amount: payment.amount.value,
                currency: Box::from(payment.amount.currency.as_ref()),
            },
        );
    }
    let code = result_code(answer.status, payment.method_type.as_deref());
    if let Some(mut seen) = sim.adyen.seen_mut(&reference) {
        seen.payments.push(number);
        if seen.payments.len() == 1 {
            seen.result_code = code;
            seen.merchant_account = Box::from(payment.merchant_account.as_ref());
            seen.amount = payment.amount.value;
            seen.currency = Box::from(payment.amount.currency.as_ref());
        }
    }
    let body = payment_body(sim, payment, &answer, code);
    let notification = Notification::authorisation(sim, payment, &answer);
    let remembered = Remembered {
        fingerprint,
        status: StatusCode::OK,
        body,
        payment: Some(answer.status),
    };
    (remembered, Some(notification))
}

fn payment_body(
    sim: &Simulator,
    payment: &PaymentRequest<'_>,
    answer: &Answer,
    code: &'static str,
) -> Bytes {
    let refusal = answer.decline_code.as_deref().map(refusal);
    let body = PaymentResponse {
        psp_reference: sim.adyen.psp_reference(answer.reference),
        result_code: code,
        merchant_reference: &payment.reference,
        amount: &payment.amount,
        refusal_reason: refusal.map(|(_, reason)| reason),
        refusal_reason_code: refusal.map(|(code, _)| code),
    };
    to_json(&body)
}

/// A capture, refund or cancel: always `received` for a known payment; what the ledger made
/// of it is recorded for tests and told in the notification.
fn modify(
    sim: &Simulator,
    kind: Modification,
    psp: &str,
    request: &ModificationRequest<'_>,
    key: Option<&str>,
    fingerprint: [u8; 32],
) -> SimResponse {
    let number = sim.adyen.parse_psp_reference(psp);
    let Some((number, authorised)) = number.and_then(|number| {
        let authorised = sim.adyen.payments.get(&number)?.clone();
        Some((number, authorised))
    }) else {
        return ServiceError::validation(
            "167",
            "Original pspReference required for this operation",
        )
        .response();
    };
    sim.stats.processed(match kind {
        Modification::Capture => Processed::Capture,
        Modification::Refund => Processed::Refund,
        Modification::Cancel => Processed::Cancel,
    });
    let decide = || apply(sim, kind, psp, number, &authorised, request, fingerprint);
    let (answer, notification) = match key {
        None => decide(),
        Some(key) => match sim.adyen.keyed(key, fingerprint, decide) {
            Keyed::New(answer, notification) => (answer, notification),
            Keyed::Duplicate(answer) => {
                sim.stats.duplicate();
                (answer, None)
            }
            Keyed::Conflict => return conflict(),
        },
    };
    if let Some(notification) = notification {
        notify(sim, notification, Duration::ZERO);
    }
    stored_response(&answer)
}

fn apply(
    sim: &Simulator,
    kind: Modification,
    psp: &str,
    number: u64,
    authorised: &Authorised,
    request: &ModificationRequest<'_>,
    fingerprint: [u8; 32],
) -> (Remembered, Option<Notification>) {
    let own = sim.next_reference();
    let amount = request.amount.as_ref().map(|amount| amount.value);
    let ledger_outcome = match kind {
        Modification::Capture => sim.ledger.apply(number, Operation::Capture, amount, || own),
        Modification::Refund => sim.ledger.apply(number, Operation::Refund, amount, || own),
        Modification::Cancel => sim.ledger.apply(number, Operation::Cancel, None, || own),
    };
    let outcome: &'static str = match ledger_outcome.as_ref().map(|a| a.decline_code.as_deref()) {
        Some(None) => "applied",
        Some(Some("invalid_amount")) => "invalid_amount",
        Some(Some("payment_not_captured")) => "payment_not_captured",
        Some(Some("payment_captured")) => "payment_captured",
        Some(Some("payment_canceled")) => "payment_canceled",
        _ => "payment_not_authorized",
    };
    let psp_reference = sim.adyen.psp_reference(own);
    if let Some(mut seen) = sim.adyen.seen_mut(&authorised.reference) {
        seen.modifications.push(SeenModification {
            kind: kind.name(),
            psp_reference: psp_reference.clone(),
            reference: request.reference.as_deref().map(str::to_string),
            amount,
            currency: request.amount.as_ref().map(|a| a.currency.to_string()),
            outcome,
        });
    }
    let body = ModificationResponse {
        merchant_account: &request.merchant_account,
        payment_psp_reference: psp,
        psp_reference: psp_reference.clone(),
        reference: request.reference.as_deref(),
        status: "received",
        amount: request.amount.as_ref(),
    };
    let notification = Notification {
        event_code: kind.event_code(),
        success: outcome == "applied",
        psp_reference,
        original_reference: Some(psp.to_string()),
        merchant_account: authorised.merchant_account.to_string(),
        merchant_reference: authorised.reference.to_string(),
        value: amount.unwrap_or(authorised.amount),
        currency: request.amount.as_ref().map_or_else(
            || authorised.currency.to_string(),
            |a| a.currency.to_string(),
        ),
        reason: if outcome == "applied" {
            String::new()
        } else {
            outcome.to_string()
        },
    };
    let remembered = Remembered {
        fingerprint,
        status: StatusCode::CREATED,
        body: to_json(&body),
        payment: None,
    };
    (remembered, Some(notification))
}

fn stored_response(answer: &Remembered) -> SimResponse {
    let mut response = Response::new(super::protocol::full(answer.body.clone()));
    *response.status_mut() = answer.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What the simulator saw of one merchant `reference`, for tests. The keys `paygate_id`,
/// `requests`, `processed`, `status` and `psp_reference` mean what they mean for `paygate-v1`.
fn seen_payment(sim: &Simulator, reference: &str) -> SimResponse {
    if reference.len() > MAX_REFERENCE_LEN {
        return ServiceError::validation("702", "reference is longer than 255 characters")
            .response();
    }
    let Some(seen) = sim.adyen.seen.get(reference) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"paygate_id": reference, "received": 0, "requests": 0, "processed": 0}),
        );
    };
    let Some(first) = seen.payments.first().copied() else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"paygate_id": reference, "received": seen.received, "requests": seen.requests, "processed": 0}),
        );
    };
    let status = sim
        .ledger
        .status(first)
        .map_or("unknown", |now| now.status.as_str());
    let references: Vec<String> = seen
        .payments
        .iter()
        .map(|number| sim.adyen.psp_reference(*number))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "paygate_id": reference,
            "dialect": "adyen",
            "received": seen.received,
            "requests": seen.requests,
            "processed": seen.payments.len(),
            "status": status,
            "result_code": seen.result_code,
            "psp_reference": sim.adyen.psp_reference(first),
            "psp_references": references,
            "merchant_account": &*seen.merchant_account,
            "amount": {"value": seen.amount, "currency": &*seen.currency},
            "modifications": &seen.modifications,
        }),
    )
}

async fn read_body(body: Incoming) -> Result<Bytes, ServiceError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(cause) if cause.is::<http_body_util::LengthLimitError>() => Err(ServiceError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "000",
            "request body is larger than 1 MiB",
            "validation",
        )),
        Err(_) => Err(ServiceError::new(
            StatusCode::BAD_REQUEST,
            "000",
            "request body could not be read",
            "validation",
        )),
    }
}

fn recent(parts: &Parts, checked: Option<&Checked<'_>>, api_key: Option<&str>) -> RecentRequest {
    let owned = |text: Option<&str>| text.map(str::to_string);
    let amount = checked.and_then(Checked::amount);
    RecentRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        idempotency_key: owned(header(&parts.headers, "idempotency-key")),
        paygate_id: owned(checked.and_then(Checked::reference)),
        amount: amount.map(|a| a.value),
        currency: amount.map(|a| a.currency.to_string()),
        authorization: owned(header(&parts.headers, "authorization")),
        traceparent: owned(header(&parts.headers, "traceparent")),
        api_key: owned(api_key),
    }
}

fn to_json<T: Serialize>(body: &T) -> Bytes {
    // Serializing these plain structs cannot fail; the fallback keeps the path panic-free.
    Bytes::from(serde_json::to_vec(body).unwrap_or_else(|_| {
        br#"{"status":500,"errorCode":"000","message":"internal","errorType":"internal"}"#.to_vec()
    }))
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> SimResponse {
    let mut response = Response::new(super::protocol::full(to_json(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Where notifications go and the HMAC key that signs them (`--webhook-url`,
/// `--adyen-hmac-key`).
#[derive(Clone)]
pub struct Notifier {
    url: http::Uri,
    hmac_key: Arc<[u8]>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        formatter
            .debug_struct("Notifier")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier posting to `url` (http:// only), signing with the hex `hmac_key`.
    pub fn new(url: &str, hmac_key: &str) -> Result<Self, String> {
        let url: http::Uri = url
            .parse()
            .map_err(|_| "--webhook-url is not a URL".to_string())?;
        if url.scheme_str() != Some("http") {
            return Err("--webhook-url must be an http:// URL".into());
        }
        let key = hex::decode(hmac_key)
            .map_err(|_| "--adyen-hmac-key must be hexadecimal".to_string())?;
        if key.is_empty() {
            return Err("--adyen-hmac-key is empty".into());
        }
        Ok(Notifier {
            url,
            hmac_key: Arc::from(key),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }
}

/// One `NotificationRequestItem`, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Notification {
    event_code: &'static str,
    success: bool,
    psp_reference: String,
    original_reference: Option<String>,
    merchant_account: String,
    merchant_reference: String,
    value: u64,
    currency: String,
    reason: String,
}

impl Notification {
    fn authorisation(sim: &Simulator, payment: &PaymentRequest<'_>, answer: &Answer) -> Self {
        let refusal = answer.decline_code.as_deref().map(refusal);
        Notification {
            event_code: "AUTHORISATION",
            // A pending payment is notified once it resolves, as succeeded (see `notify`).
            success: answer.status != Status::Declined,
            psp_reference: sim.adyen.psp_reference(answer.reference),
            original_reference: None,
            merchant_account: payment.merchant_account.to_string(),
            merchant_reference: payment.reference.to_string(),
            value: payment.amount.value,
            currency: payment.amount.currency.to_string(),
            reason: refusal.map_or_else(String::new, |(_, reason)| reason.to_string()),
        }
    }

    /// Adyen's signing string: eight fields joined by colons, absent ones empty.
    fn signing_string(&self) -> String {
        [
            self.psp_reference.as_str(),
            self.original_reference.as_deref().unwrap_or(""),
            &self.merchant_account,
            &self.merchant_reference,
            &self.value.to_string(),
            &self.currency,
            self.event_code,
            if self.success { "true" } else { "false" },
        ]
        .join(":")
    }

    fn signature(&self, key: &[u8]) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return String::new();
        };
        mac.update(self.signing_string().as_bytes());
        base64(&mac.finalize().into_bytes())
    }

    fn body(&self, key: &[u8]) -> Value {
        let mut item = json!({
            "eventCode": self.event_code,
            "success": if self.success { "true" } else { "false" },
            "pspReference": self.psp_reference,
            "merchantAccountCode": self.merchant_account,
            "merchantReference": self.merchant_reference,
            "amount": {"value": self.value, "currency": self.currency},
            "reason": self.reason,
            "eventDate": "",
            "additionalData": {"hmacSignature": self.signature(key)},
        });
        if let Some(original) = &self.original_reference {
            item["originalReference"] = json!(original);
        }
        json!({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})
    }
}

/// Posts `notification` in the background, after `delay` (a pending payment's resolve time).
fn notify(sim: &Simulator, notification: Notification, delay: Duration) {
    let Some(notifier) = sim.notifier.clone() else {
        return;
    };
    tokio::spawn(async move {
        pause(delay).await;
        let body = notification.body(&notifier.hmac_key).to_string();
        let request = Request::post(notifier.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else { return };
        if let Err(error) = notifier.client.request(request).await {
            tracing::debug!(%error, "mock-psp: notification not delivered");
        }
    });
}

/// Standard base64 with padding (RFC 4648), enough for a 32-byte signature.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Schedule;

    const CARD: &str = "4111111111111111";

    fn payment_json(card: &str) -> String {
        json!({
            "merchantAccount": "PaygateECOM",
            "reference": "pay_1",
            "amount": {"value": 1999, "currency": "EUR"},
            "paymentMethod": {"type": "scheme", "number": card, "expiryMonth": "03",
                "expiryYear": "2030", "cvc": "737"},
            "returnUrl": "https://example.com/return"
        })
        .to_string()
    }

    fn draw(succeeds: bool, pending: bool) -> Draw {
        Draw {
            fault: None,
            pending,
            succeeds,
            decline_index: 0,
            latency: Duration::ZERO,
        }
    }

    fn simulator(decline_code: &str) -> (Arc<Simulator>, Behavior) {
        let behavior = Behavior {
            decline_codes: vec![decline_code.into()],
            ..Behavior::default()
        };
        let sim = Simulator::with_dialect(
            "adyen".into(),
            behavior.clone(),
            Schedule::default(),
            super::super::Dialect::Adyen,
            None,
        );
        (sim, behavior)
    }

    #[test]
    fn routes_with_and_without_the_version_prefix() {
        let post = Method::POST;
        assert_eq!(Route::parse(&post, "/payments"), Route::Payment);
        assert_eq!(Route::parse(&post, "/v72/payments"), Route::Payment);
        assert_eq!(
            Route::parse(&post, "/v72/payments/ABCD000000000001/captures"),
            Route::Modification(Modification::Capture, "ABCD000000000001")
        );
        assert_eq!(
            Route::parse(&post, "/payments/X/refunds"),
            Route::Modification(Modification::Refund, "X")
        );
        assert_eq!(
            Route::parse(&post, "/payments/X/cancels"),
            Route::Modification(Modification::Cancel, "X")
        );
        assert_eq!(
            Route::parse(&Method::GET, "/_sim/payments/pay_1"),
            Route::SimPayment("pay_1")
        );
        for path in [
            "/v72",
            "/v72payments",
            "/payments/X/capture",
            "/payments//captures",
            "/payments/X/captures/y",
        ] {
            assert_eq!(Route::parse(&post, path), Route::NotFound, "{path}");
        }
        assert_eq!(Route::parse(&Method::GET, "/payments"), Route::NotFound);
    }

    #[test]
    fn a_full_payment_body_is_read() {
        let body = payment_json(CARD);
        let payment = check_payment(body.as_bytes()).unwrap();
        assert_eq!(payment.merchant_account, "PaygateECOM");
        assert_eq!(payment.reference, "pay_1");
        assert_eq!(payment.amount.value, 1999);
        assert_eq!(payment.amount.currency, "EUR");
        assert_eq!(payment.method_type.as_deref(), Some("scheme"));
        assert_eq!(payment.card_number.as_deref(), Some(CARD));
        assert!(payment.auto_capture);
        let manual =
            br#"{"merchantAccount":"M","reference":"r","amount":{"value":1,"currency":"EUR"},
            "paymentMethod":{"type":"scheme","encryptedCardNumber":"test_4000000000000002"},
            "additionalData":{"manualCapture":"true"}}"#;
        let payment = check_payment(manual).unwrap();
        assert!(!payment.auto_capture);
        assert_eq!(payment.card_number.as_deref(), Some("4000000000000002"));
    }

    #[test]
    fn missing_fields_are_named_and_values_never_echoed() {
        let full: Value = serde_json::from_str(&payment_json(CARD)).unwrap();
        for (field, code) in [
            ("merchantAccount", "702"),
            ("reference", "130"),
            ("amount", "100"),
            ("paymentMethod", "702"),
        ] {
            let mut body = full.clone();
            body.as_object_mut().unwrap().remove(field);
            let error = check_payment(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(error.status, 422, "{field}");
            assert_eq!(error.error_type, "validation");
            assert_eq!(error.error_code, code, "{field}");
            assert!(error.message.contains(field), "{}", error.message);
            assert!(!error.message.contains("4111"), "{}", error.message);
        }
        let mut bad_value = full.clone();
        bad_value["amount"]["value"] = json!("19.99");
        let error = check_payment(bad_value.to_string().as_bytes()).unwrap_err();
        assert_eq!((error.status, error.error_code), (422, "137"));
        bad_value["amount"] = json!({"value": 5, "currency": "euro"});
        let error = check_payment(bad_value.to_string().as_bytes()).unwrap_err();
        assert_eq!((error.status, error.error_code), (422, "138"));
        let mut numeric_card = full.clone();
        numeric_card["paymentMethod"]["number"] = json!(4111111111111111u64);
        let error = check_payment(numeric_card.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(!error.message.contains("4111"), "{}", error.message);
        assert_eq!(check_payment(b"{not json").unwrap_err().status, 400);
    }

    #[test]
    fn modification_bodies() {
        let capture =
            br#"{"merchantAccount":"M","amount":{"value":500,"currency":"EUR"},"reference":"c1"}"#;
        let checked = check_modification(Modification::Capture, capture).unwrap();
        assert_eq!(checked.amount.map(|a| a.value), Some(500));
        assert_eq!(checked.reference.as_deref(), Some("c1"));
        let no_amount = br#"{"merchantAccount":"M"}"#;
        let error = check_modification(Modification::Refund, no_amount).unwrap_err();
        assert_eq!((error.status, error.error_code), (422, "100"));
        let cancel = check_modification(Modification::Cancel, no_amount).unwrap();
        assert!(cancel.amount.is_none() && cancel.reference.is_none());
        let error = check_modification(Modification::Cancel, b"{}").unwrap_err();
        assert!(error.message.contains("merchantAccount"));
    }

    #[test]
    fn decline_codes_map_to_refusal_reasons() {
        assert_eq!(refusal("insufficient_funds"), ("12", "Not enough balance"));
        assert_eq!(refusal("do_not_honor"), ("27", "Do Not Honour"));
        assert_eq!(refusal("expired_card"), ("6", "Expired Card"));
        assert_eq!(refusal("issuer_unavailable"), ("9", "Issuer Unavailable"));
        assert_eq!(refusal("card_declined"), ("2", "Refused"));
        assert_eq!(refusal("incorrect_cvc"), ("24", "CVC Declined"));
        assert_eq!(refusal("stolen_card"), ("5", "Blocked Card"));
        assert_eq!(refusal("something_new"), ("2", "Refused"));
    }

    #[test]
    fn psp_references_are_sixteen_uppercase_alphanumerics_and_round_trip() {
        let book = Book::new("adyen");
        let text = book.psp_reference(42);
        assert_eq!(text.len(), PSP_REFERENCE_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(book.parse_psp_reference(&text), Some(42));
        assert_ne!(Book::new("other").psp_reference(42), text);
        assert_eq!(Book::new("other").parse_psp_reference(&text), None);
        assert_eq!(book.parse_psp_reference("short"), None);
    }

    #[test]
    fn answers_have_the_spec_shapes() {
        let (sim, behavior) = simulator("insufficient_funds");
        let body = payment_json(CARD);
        let payment = check_payment(body.as_bytes()).unwrap();
        let refused = decide_payment(&sim, &payment, [0; 32], &draw(false, false), &behavior).0;
        let refused: Value = serde_json::from_slice(&refused.body).unwrap();
        let psp = refused["pspReference"].as_str().unwrap().to_string();
        assert_eq!(
            refused,
            json!({"pspReference": psp, "resultCode": "Refused", "merchantReference": "pay_1",
                "amount": {"value": 1999, "currency": "EUR"},
                "refusalReason": "Not enough balance", "refusalReasonCode": "12"})
        );
        let authorised = decide_payment(&sim, &payment, [0; 32], &draw(true, false), &behavior).0;
        let authorised: Value = serde_json::from_slice(&authorised.body).unwrap();
        assert_eq!(authorised["resultCode"], "Authorised");
        assert!(authorised.get("refusalReason").is_none());
        let pending = decide_payment(&sim, &payment, [0; 32], &draw(true, true), &behavior).0;
        let pending: Value = serde_json::from_slice(&pending.body).unwrap();
        assert_eq!(pending["resultCode"], "Pending");
        assert!(!String::from_utf8_lossy(&to_json(&refused)).contains(CARD));

        let number = sim
            .adyen
            .parse_psp_reference(authorised["pspReference"].as_str().unwrap());
        let authorised_record = sim.adyen.payments.get(&number.unwrap()).unwrap().clone();
        let request = check_modification(
            Modification::Capture,
            br#"{"merchantAccount":"PaygateECOM","amount":{"value":5000,"currency":"EUR"}}"#,
        )
        .unwrap();
        let psp_text = authorised["pspReference"].as_str().unwrap();
        let (answer, notification) = apply(
            &sim,
            Modification::Capture,
            psp_text,
            number.unwrap(),
            &authorised_record,
            &request,
            [0; 32],
        );
        assert_eq!(answer.status, StatusCode::CREATED);
        let capture: Value = serde_json::from_slice(&answer.body).unwrap();
        let own = capture["pspReference"].as_str().unwrap().to_string();
        assert_eq!(
            capture,
            json!({"merchantAccount": "PaygateECOM", "paymentPspReference": psp_text,
                "pspReference": own, "status": "received",
                "amount": {"value": 5000, "currency": "EUR"}})
        );
        // Beyond the authorised 1999: still received, recorded, notified as failed.
        let notification = notification.unwrap();
        assert!(!notification.success);
        assert_eq!(notification.reason, "invalid_amount");
        let seen = sim.adyen.seen.get("pay_1").unwrap();
        assert_eq!(seen.payments.len(), 3);
        assert_eq!(seen.modifications[0].outcome, "invalid_amount");
    }

    #[test]
    fn notifications_are_signed_over_the_eight_fields() {
        let notification = Notification {
            event_code: "CAPTURE",
            success: true,
            psp_reference: "PSP2".into(),
            original_reference: Some("PSP1".into()),
            merchant_account: "M".into(),
            merchant_reference: "pay_1".into(),
            value: 1999,
            currency: "EUR".into(),
            reason: String::new(),
        };
        assert_eq!(
            notification.signing_string(),
            "PSP2:PSP1:M:pay_1:1999:EUR:CAPTURE:true"
        );
        let body = notification.body(b"key");
        let item = &body["notificationItems"][0]["NotificationRequestItem"];
        assert_eq!(body["live"], "false");
        assert_eq!(item["originalReference"], "PSP1");
        assert_eq!(item["success"], "true");
        assert_eq!(item["amount"], json!({"value": 1999, "currency": "EUR"}));
        let signature = item["additionalData"]["hmacSignature"].as_str().unwrap();
        assert_eq!(signature.len(), 44);
        assert_eq!(signature, notification.signature(b"key"));
        assert_ne!(signature, notification.signature(b"other"));
    }

    #[test]
    fn the_signature_matches_adyens_published_sample() {
        let notification = Notification {
            event_code: "AUTHORISATION",
            success: true,
            psp_reference: "7914073381342284".into(),
            original_reference: None,
            merchant_account: "TestMerchant".into(),
            merchant_reference: "TestPayment-1407325143704".into(),
            value: 1130,
            currency: "EUR".into(),
            reason: String::new(),
        };
        let key = hex::decode("44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056")
            .unwrap();
        assert_eq!(
            notification.signature(&key),
            "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input), expected);
        }
    }
}
