//! The `paygate-v1` endpoints as the simulator answers them: routing a request, reading and
//! checking its body, injecting faults, deciding the outcome and writing the JSON answer.
//!
//! Owns the HTTP edge of the simulator. Must not keep state of its own (everything lives in
//! [`Simulator`]), must not echo request values in error messages (a body may hold a card
//! number), and must not hold the thread-local random generator across an `.await`.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize, Serializer};

use super::Simulator;
use super::behavior::{Behavior, Draw, Fault, FaultScope};
use super::ledger::{Answer, Operation, Payment, Status};
use super::stats::{Ending, Processed, RecentRequest, Replay};

/// Far above the gateway's own 64 KiB body limit plus `paygate_id`, so a real request always
/// fits, while a runaway client cannot make the simulator buffer without bound.
pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// "Never answers" in practice: longer than any channel timeout a test or benchmark sets.
pub(super) const HANG: Duration = Duration::from_secs(3600);

/// Returned from the service to make hyper abort the connection (HTTP/2: reset the stream)
/// without an answer, as a PSP that crashed after processing would.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose (reset fault)")]
pub struct InjectedReset;

pub type SimResponse = Response<BoxBody<Bytes, std::io::Error>>;

/// Sizes of the body faults: larger than any PSP answer paygate accepts by default (1 MiB).
pub(super) const HUGE_BODY_BYTES: usize = 8 * 1024 * 1024;
const ENDLESS_CHUNK_BYTES: usize = 16 * 1024;
/// An endless body stops after this, so that a test that forgets it leaks nothing for long.
const ENDLESS_FOR: Duration = Duration::from_secs(3600);
/// The longest `paygate_id` a lookup takes (paygate's are 30 characters).
const MAX_PAYGATE_ID_LEN: usize = 255;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    CreatePayment,
    Capture(&'a str),
    Refund(&'a str),
    Cancel(&'a str),
    Status(&'a str),
    /// `GET /payments/by-paygate-id/{id}`: a payment found by the key it was sent with.
    ByPaygateId(&'a str),
    /// `GET /_sim/payments/{paygate_id}`: what the simulator saw of one payment.
    SimPayment(&'a str),
    Stats,
    Reset,
    NotFound,
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Route<'a> {
        let Some(path) = path.strip_prefix('/') else {
            return Route::NotFound;
        };
        let mut segments = path.split('/');
        let segments = [(); 4].map(|_| segments.next());
        match (method, segments) {
            (&Method::POST, [Some("payments"), None, ..]) => Route::CreatePayment,
            (&Method::GET, [Some("payments"), Some(reference), None, _])
                if !reference.is_empty() =>
            {
                Route::Status(reference)
            }
            (&Method::GET, [Some("payments"), Some("by-paygate-id"), Some(id), None])
                if !id.is_empty() =>
            {
                Route::ByPaygateId(id)
            }
            (&Method::GET, [Some("_sim"), Some("payments"), Some(id), None]) if !id.is_empty() => {
                Route::SimPayment(id)
            }
            (&Method::POST, [Some("payments"), Some(reference), Some("capture"), None]) => {
                Route::Capture(reference)
            }
            (&Method::POST, [Some("payments"), Some(reference), Some("refunds"), None]) => {
                Route::Refund(reference)
            }
            (&Method::POST, [Some("payments"), Some(reference), Some("cancel"), None]) => {
                Route::Cancel(reference)
            }
            (&Method::GET, [Some("_sim"), Some("stats"), None, _]) => Route::Stats,
            (&Method::POST, [Some("_sim"), Some("reset"), None, _]) => Route::Reset,
            _ => Route::NotFound,
        }
    }
}

/// The fields of a request body the simulator reads; everything else is ignored. Strings
/// borrow from the body unless they contain escapes.
#[derive(Debug, Default, Deserialize)]
struct Body<'a> {
    #[serde(default)]
    amount: Option<serde_json::Value>,
    #[serde(default, borrow)]
    currency: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    paygate_id: Option<Cow<'a, str>>,
    #[serde(default)]
    capture: Option<bool>,
    #[serde(default, borrow)]
    card: Option<Card<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct Card<'a> {
    #[serde(default, borrow)]
    number: Option<Cow<'a, str>>,
}

/// A checked body: `amount` is a positive integer when present.
#[derive(Debug, Default)]
struct Fields<'a> {
    amount: Option<u64>,
    currency: Option<Cow<'a, str>>,
    paygate_id: Option<Cow<'a, str>>,
    capture: bool,
    card_number: Option<Cow<'a, str>>,
}

/// Serves one request. `Err` only for the reset fault.
pub async fn handle(
    sim: Arc<Simulator>,
    request: Request<Incoming>,
) -> Result<SimResponse, InjectedReset> {
    let (parts, body) = request.into_parts();
    match Route::parse(&parts.method, parts.uri.path()) {
        Route::Stats => Ok(stats_response(&sim)),
        Route::SimPayment(id) => Ok(seen_payment(&sim, id)),
        Route::Reset => {
            sim.reset();
            Ok(respond(StatusCode::NO_CONTENT, Vec::new()))
        }
        Route::NotFound => {
            sim.stats.request(recent(&parts, None));
            Ok(error(StatusCode::NOT_FOUND, "no such endpoint"))
        }
        route => endpoint(&sim, &parts, route, body).await,
    }
}

/// One of the four protocol endpoints: faults first, then the body, then the outcome.
async fn endpoint(
    sim: &Simulator,
    parts: &Parts,
    route: Route<'_>,
    body: Incoming,
) -> Result<SimResponse, InjectedReset> {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return Ok(response),
    };
    let fields = parse_body(route, &bytes);
    sim.stats.request(recent(parts, fields.as_ref().ok()));
    let behavior = sim.behavior_now();
    let mut draw = behavior.draw();
    if behavior.fault_scope == FaultScope::Payments && route != Route::CreatePayment {
        draw.fault = None;
    }
    if let Some(response) = unprocessed_fault(sim, route, &draw).await {
        return Ok(response);
    }
    let fields = match fields {
        Ok(fields) => fields,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, &message)),
    };
    let key = header(&parts.headers, "idempotency-key").filter(|key| !key.is_empty());
    let response = process(sim, route, &fields, key, &draw, behavior);
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

/// The answer a fault that struck after processing sends instead of `response`.
async fn faulted(fault: Fault, response: SimResponse, behavior: &Behavior) -> SimResponse {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answered: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match fault {
        Fault::InternalError => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
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
        Fault::UnknownStatus => json(
            StatusCode::OK,
            &serde_json::json!({"status": "authorised_maybe", "psp_reference": answered["psp_reference"]}),
        ),
        Fault::MissingReference => json(
            StatusCode::OK,
            &serde_json::json!({"status": answered["status"]}),
        ),
        Fault::HugeBody => {
            let padding = "x".repeat(HUGE_BODY_BYTES);
            json(
                StatusCode::OK,
                &serde_json::json!({"status": answered["status"], "psp_reference": answered["psp_reference"], "padding": padding}),
            )
        }
        Fault::EndlessBody => endless(),
        Fault::Dribble => dribbled(
            parts,
            bytes,
            Duration::from_millis(behavior.dribble_interval_ms),
        ),
        Fault::ResetMidBody => cut_short(parts, bytes),
        Fault::Reset | Fault::Late | Fault::Unavailable | Fault::Hang => {
            Response::from_parts(parts, full(bytes))
        }
    }
}

/// A body fed by a task: each item is a chunk, an error aborts the connection.
struct Fed(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for Fed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(hyper::body::Frame::data)))
    }
}

fn fed(
    parts: http::response::Parts,
) -> (
    SimResponse,
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    (
        Response::from_parts(parts, BoxBody::new(Fed(receiver))),
        sender,
    )
}

/// 200 with a body that keeps coming until the client leaves (or an hour passes).
pub(super) fn endless() -> SimResponse {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (response, sender) = fed(parts);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let head = Bytes::from_static(br#"{"status":"succeeded","padding":""#);
        let chunk = Bytes::from(vec![b'x'; ENDLESS_CHUNK_BYTES]);
        let mut next = head;
        while started.elapsed() < ENDLESS_FOR && sender.send(Ok(next)).await.is_ok() {
            next = chunk.clone();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    response
}

/// The correct answer, one byte every `interval`.
pub(super) fn dribbled(
    parts: http::response::Parts,
    bytes: Bytes,
    interval: Duration,
) -> SimResponse {
    let (response, sender) = fed(parts);
    tokio::spawn(async move {
        for index in 0..bytes.len() {
            if sender
                .send(Ok(bytes.slice(index..index + 1)))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
    response
}

/// Headers promising the whole answer, half of it, then the connection is aborted.
pub(super) fn cut_short(mut parts: http::response::Parts, bytes: Bytes) -> SimResponse {
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let (response, sender) = fed(parts);
    tokio::spawn(async move {
        let half = bytes.slice(..bytes.len() / 2);
        if sender.send(Ok(half)).await.is_ok() {
            let aborted = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "reset_mid_body fault",
            );
            let _ = sender.send(Err(aborted)).await;
        }
    });
    response
}

/// The faults that skip processing: 503 (after the usual latency) and hang.
async fn unprocessed_fault(sim: &Simulator, route: Route<'_>, draw: &Draw) -> Option<SimResponse> {
    unprocessed(sim, route == Route::CreatePayment, draw).await?;
    Some(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"))
}

/// A fault drawn that skips processing (503, hang), counted (as a payment's ending when
/// `payment`) and waited out; each dialect writes its own answer to it.
pub(super) async fn unprocessed(sim: &Simulator, payment: bool, draw: &Draw) -> Option<Fault> {
    let fault = draw
        .fault
        .filter(|f| matches!(f, Fault::Unavailable | Fault::Hang))?;
    sim.stats.fault(fault);
    if payment {
        sim.stats.payment_outcome(Ending::Fault(fault));
    }
    let wait = if fault == Fault::Hang {
        HANG
    } else {
        draw.latency
    };
    pause(wait).await;
    Some(fault)
}

/// A zero latency must not even yield to the scheduler: it is the benchmark setting.
pub(super) async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// Processes a request that passed the fault check and answers it (before any 500/reset
/// fault replaces that answer).
fn process(
    sim: &Simulator,
    route: Route<'_>,
    fields: &Fields<'_>,
    key: Option<&str>,
    draw: &Draw,
    behavior: &Behavior,
) -> SimResponse {
    if let Some(fault) = draw.fault {
        sim.stats.fault(fault);
    }
    match route {
        Route::CreatePayment => create_payment(sim, fields, key, draw, behavior),
        Route::Capture(reference) => {
            operation(sim, reference, Operation::Capture, fields.amount, key)
        }
        Route::Refund(reference) => {
            operation(sim, reference, Operation::Refund, fields.amount, key)
        }
        Route::Cancel(reference) => {
            operation(sim, reference, Operation::Cancel, fields.amount, key)
        }
        Route::Status(reference) => status_query(sim, reference),
        Route::ByPaygateId(id) => lookup(sim, id),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

fn create_payment(
    sim: &Simulator,
    fields: &Fields<'_>,
    key: Option<&str>,
    draw: &Draw,
    behavior: &Behavior,
) -> SimResponse {
    sim.stats.processed(Processed::Payment);
    let decide = || {
        let reference = sim.next_reference();
        let answer = outcome(reference, fields.card_number.as_deref(), draw, behavior);
        let resolves_after = Duration::from_millis(behavior.pending_resolves_ms);
        let amount = fields.amount.unwrap_or(0);
        let payment = Payment::new(&answer, amount, fields.capture, resolves_after);
        sim.ledger.insert(reference, payment);
        answer
    };
    let answer = match key {
        None => decide(),
        Some(key) => match sim.stats.replay_or_decide(key, decide) {
            Replay::New(answer) | Replay::Duplicate(answer) => answer,
        },
    };
    let ending = match draw.fault {
        Some(fault) => Ending::Fault(fault),
        None => Ending::Answered(answer.status),
    };
    sim.stats.payment_outcome(ending);
    answer_response(StatusCode::OK, sim, &answer)
}

/// Test cards decide the outcome regardless of the random draw, as at real PSPs.
fn test_card(number: &str) -> Option<(Status, Option<&'static str>)> {
    match number {
        "4000000000000002" => Some((Status::Declined, Some("card_declined"))),
        "4000000000009995" => Some((Status::Declined, Some("insufficient_funds"))),
        "4000000000000119" => Some((Status::Declined, Some("issuer_unavailable"))),
        "4000000000000259" => Some((Status::Pending, None)),
        _ => None,
    }
}

pub(super) fn outcome(
    reference: u64,
    card_number: Option<&str>,
    draw: &Draw,
    behavior: &Behavior,
) -> Answer {
    if let Some((status, code)) = card_number.and_then(test_card) {
        return Answer {
            status,
            reference,
            decline_code: code.map(Arc::from),
        };
    }
    if draw.pending {
        return Answer {
            status: Status::Pending,
            reference,
            decline_code: None,
        };
    }
    if draw.succeeds {
        return Answer::succeeded(reference);
    }
    Answer::declined(reference, behavior.decline_code(draw.decline_index))
}

/// A capture or refund; a repeat with the same `Idempotency-Key` gets the first answer and
/// is not carried out again, as at a real PSP.
fn operation(
    sim: &Simulator,
    reference: &str,
    operation: Operation,
    amount: Option<u64>,
    key: Option<&str>,
) -> SimResponse {
    sim.stats.processed(match operation {
        Operation::Capture => Processed::Capture,
        Operation::Refund => Processed::Refund,
        Operation::Cancel => Processed::Cancel,
    });
    if let Some(first) = key.and_then(|key| sim.stats.replay(key)) {
        return answer_response(StatusCode::OK, sim, &first);
    }
    let applied = sim.parse_reference(reference).and_then(|number| {
        sim.ledger
            .apply(number, operation, amount, || sim.next_reference())
    });
    match applied {
        Some(answer) => {
            if let Some(key) = key {
                sim.stats.remember(key, answer.clone());
            }
            answer_response(StatusCode::OK, sim, &answer)
        }
        None => unknown_payment(reference),
    }
}

/// The payment sent with `Idempotency-Key: {paygate_id}`, as it now stands; 404 when none was
/// processed (never received, or refused unprocessed).
fn lookup(sim: &Simulator, paygate_id: &str) -> SimResponse {
    sim.stats.lookup();
    if paygate_id.len() > MAX_PAYGATE_ID_LEN {
        return error(
            StatusCode::BAD_REQUEST,
            "paygate_id is longer than 255 characters",
        );
    }
    match sim.stats.first_answer(paygate_id) {
        Some((_, first)) => {
            let now = sim.ledger.status(first.reference).unwrap_or(first);
            answer_response(StatusCode::OK, sim, &now)
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no payment was received with this paygate_id",
        ),
    }
}

/// What the simulator saw of one payment, for tests: how many requests carried its
/// `paygate_id` and whether a payment was made for it (never more than one).
fn seen_payment(sim: &Simulator, paygate_id: &str) -> SimResponse {
    match sim.stats.first_answer(paygate_id) {
        Some((requests, first)) => {
            let now = sim.ledger.status(first.reference).unwrap_or(first);
            let reference = Reference {
                name: sim.name(),
                number: now.reference,
            };
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "paygate_id": paygate_id,
                    "requests": requests,
                    "processed": 1,
                    "status": now.status.as_str(),
                    "psp_reference": reference.to_string(),
                }),
            )
        }
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"paygate_id": paygate_id, "requests": 0, "processed": 0}),
        ),
    }
}

fn status_query(sim: &Simulator, reference: &str) -> SimResponse {
    sim.stats.processed(Processed::StatusQuery);
    let stored = sim
        .parse_reference(reference)
        .and_then(|number| sim.ledger.status(number));
    match stored {
        Some(answer) => answer_response(StatusCode::OK, sim, &answer),
        None => unknown_payment(reference),
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, SimResponse> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(cause) if cause.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than 1 MiB",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "request body could not be read",
        )),
    }
}

/// Checks the body a route needs. Messages name the field or the position, never a value.
fn parse_body<'b>(route: Route<'_>, bytes: &'b [u8]) -> Result<Fields<'b>, String> {
    let needs_amount = match route {
        Route::CreatePayment => true,
        Route::Capture(_) | Route::Refund(_) | Route::Cancel(_) => false,
        _ => return Ok(Fields::default()),
    };
    let body = if bytes.iter().all(u8::is_ascii_whitespace) && !needs_amount {
        Body::default()
    } else {
        serde_json::from_slice::<Body<'b>>(bytes).map_err(|error| json_problem(&error))?
    };
    let amount = checked_amount(body.amount.as_ref())?;
    if needs_amount && amount.is_none() {
        return Err("amount is missing: it must be a positive integer in minor units".into());
    }
    Ok(Fields {
        amount,
        currency: body.currency,
        paygate_id: body.paygate_id,
        capture: body.capture.unwrap_or(false),
        card_number: body.card.and_then(|card| card.number),
    })
}

fn checked_amount(value: Option<&serde_json::Value>) -> Result<Option<u64>, String> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(amount) if amount > 0 => Ok(Some(amount)),
        _ => Err("amount must be a positive integer in minor units".into()),
    }
}

/// serde_json's own messages may quote the offending value (a card number, say), so only
/// the kind of error and its position are reported.
pub(super) fn json_problem(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Data => "request body has a field of the wrong type",
        serde_json::error::Category::Eof => "request body is not valid JSON (it ends early)",
        _ => "request body is not valid JSON",
    };
    format!("{what} at line {} column {}", error.line(), error.column())
}

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn recent(parts: &Parts, fields: Option<&Fields<'_>>) -> RecentRequest {
    let owned = |text: Option<&str>| text.map(str::to_string);
    RecentRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        idempotency_key: owned(header(&parts.headers, "idempotency-key")),
        paygate_id: owned(fields.and_then(|f| f.paygate_id.as_deref())),
        amount: fields.and_then(|f| f.amount),
        currency: owned(fields.and_then(|f| f.currency.as_deref())),
        authorization: owned(header(&parts.headers, "authorization")),
        traceparent: owned(header(&parts.headers, "traceparent")),
        api_key: None,
    }
}

/// `{"status", "psp_reference", "decline_code"}` with any reference text.
#[derive(Serialize)]
struct AnswerBody<'a, R: Display> {
    status: &'static str,
    #[serde(serialize_with = "as_text")]
    psp_reference: R,
    decline_code: Option<&'a str>,
}

fn as_text<R: Display, S: Serializer>(value: &R, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The reference a payment or operation got: `<name>-<n>`.
struct Reference<'a> {
    name: &'a str,
    number: u64,
}

impl Display for Reference<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.name, self.number)
    }
}

fn answer_response(status: StatusCode, sim: &Simulator, answer: &Answer) -> SimResponse {
    let body = AnswerBody {
        status: answer.status.as_str(),
        psp_reference: Reference {
            name: sim.name(),
            number: answer.reference,
        },
        decline_code: answer.decline_code.as_deref(),
    };
    json(status, &body)
}

fn unknown_payment(reference: &str) -> SimResponse {
    let body = AnswerBody {
        status: Status::Declined.as_str(),
        psp_reference: reference,
        decline_code: Some("unknown_payment"),
    };
    json(StatusCode::NOT_FOUND, &body)
}

pub(super) fn stats_response(sim: &Simulator) -> SimResponse {
    match sim.stats_bytes() {
        Ok(bytes) => respond(StatusCode::OK, bytes),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stats could not be encoded",
        ),
    }
}

fn error(status: StatusCode, message: &str) -> SimResponse {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    json(status, &ErrorBody { error: message })
}

pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> SimResponse {
    // Serializing these plain structs cannot fail; the fallback keeps the path panic-free.
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"internal_error\"}".to_vec());
    respond(status, bytes)
}

pub(super) fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, std::io::Error> {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(super) fn respond(status: StatusCode, bytes: Vec<u8>) -> SimResponse {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    if status != StatusCode::NO_CONTENT {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(Route::parse(&post, "/payments"), Route::CreatePayment);
        assert_eq!(Route::parse(&get, "/payments/m-1"), Route::Status("m-1"));
        assert_eq!(
            Route::parse(&post, "/payments/m-1/capture"),
            Route::Capture("m-1")
        );
        assert_eq!(
            Route::parse(&post, "/payments/m-1/refunds"),
            Route::Refund("m-1")
        );
        assert_eq!(Route::parse(&get, "/_sim/stats"), Route::Stats);
        assert_eq!(Route::parse(&post, "/_sim/reset"), Route::Reset);
        for (method, path) in [
            (&get, "/payments"),
            (&get, "/payments/"),
            (&post, "/payments/m-1"),
            (&post, "/payments/m-1/capture/x"),
            (&get, "/"),
            (&get, "//payments"),
            (&post, "/_sim/stats"),
        ] {
            assert_eq!(
                Route::parse(method, path),
                Route::NotFound,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn payment_bodies_are_checked_without_echoing_values() {
        let good = br#"{"amount":1999,"currency":"EUR","capture":true,"card":{"number":"4000000000000002","cvc":"123"},"x":[1]}"#;
        let fields = parse_body(Route::CreatePayment, good).unwrap();
        assert_eq!(fields.amount, Some(1999));
        assert_eq!(fields.currency.as_deref(), Some("EUR"));
        assert!(fields.capture);
        assert_eq!(fields.card_number.as_deref(), Some("4000000000000002"));

        for bad in [
            &br#"{"amount":19.99}"#[..],
            br#"{"amount":"1999"}"#,
            br#"{"amount":0}"#,
            br#"{"currency":"EUR"}"#,
            br#"{"amount":1,"card":{"number":4111111111111111}}"#,
            b"{not json",
            b"",
        ] {
            let message = parse_body(Route::CreatePayment, bad).unwrap_err();
            assert!(!message.contains("4111"), "{message}");
        }
    }

    #[test]
    fn operation_bodies_may_be_empty() {
        assert_eq!(parse_body(Route::Capture("r"), b"").unwrap().amount, None);
        assert_eq!(parse_body(Route::Refund("r"), b"{}").unwrap().amount, None);
        let partial = parse_body(Route::Refund("r"), br#"{"amount":5,"paygate_id":"p"}"#).unwrap();
        assert_eq!(partial.amount, Some(5));
        assert_eq!(partial.paygate_id.as_deref(), Some("p"));
        assert!(parse_body(Route::Capture("r"), br#"{"amount":-5}"#).is_err());
    }
}
