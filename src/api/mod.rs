//! Handlers for the contract's merchant endpoints, and the router that picks one.
//!
//! A handler reads the request (bounded in size and time), validates it, asks `routing` for a
//! decision, calls channels through `upstream`, records the result in the store and answers.
//! Errors travel as [`ApiError`] and become JSON only in `error.rs`.

pub mod admin;
mod error;
mod followups;
mod payments;
mod psp_webhooks;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tower::Service;

pub use error::{ApiError, json_bytes_response, json_response};
pub use followups::{operation_call, operation_status, settle as settle_operation};
pub use payments::{NewPayment, read_payment};

use crate::gateway::Gateway;
use crate::layers::{
    AuthenticatedMerchant, Deadline, HttpResponse, KeyScope, RequestId, ResponseFuture,
};
use crate::store::{FollowUpKind, Held, PaymentStore, StoreError, now_ms};

/// The merchant API as a tower service, behind the layers.
#[derive(Clone)]
pub struct Api {
    gateway: Arc<Gateway>,
}

impl Api {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// What a handler gets besides the body.
pub struct Scope {
    pub gateway: Arc<Gateway>,
    pub request_id: Arc<str>,
    pub merchant: Arc<str>,
    /// When the whole request must be answered, failovers included.
    pub deadline: Instant,
    /// When the handler got the request.
    pub received: Instant,
    pub traceparent: Option<http::HeaderValue>,
    /// The request's idempotency record, when it carries `Idempotency-Key`.
    pub key: Option<crate::store::idempotency::Scope>,
}

/// The endpoints, by route template.
enum Route {
    CreatePayment,
    GetPayment(String),
    FollowUp(String, FollowUpKind),
}

impl Service<Request<Bytes>> for Api {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let gateway = self.gateway.clone();
        Box::pin(async move {
            let request_id = RequestId::of(&request);
            let response = handle(gateway, request, request_id.clone()).await;
            Ok(response.unwrap_or_else(|e| e.into_response(&request_id)))
        })
    }
}

async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Bytes>,
    request_id: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    if let Some(channel) = psp_webhook_channel(request.uri().path()) {
        if request.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed { allow: "POST" });
        }
        let channel = channel.to_string();
        return psp_webhooks::receive(&gateway, &channel, request.headers(), request.body()).await;
    }
    let route = route(request.method(), request.uri().path())?;
    let deadline = match request.extensions().get::<Deadline>() {
        Some(deadline) => deadline.0,
        None => Instant::now() + gateway.snapshot().config.server.request_timeout,
    };
    let scope = Scope {
        request_id,
        merchant: request
            .extensions()
            .get::<AuthenticatedMerchant>()
            .map(|m| m.0.clone())
            .ok_or(ApiError::Unauthenticated)?,
        deadline,
        received: Instant::now(),
        traceparent: request.headers().get("traceparent").cloned(),
        key: request.extensions().get::<KeyScope>().map(|k| k.0.clone()),
        gateway,
    };
    let body = request.into_body();
    match route {
        Route::CreatePayment => payments::create(&scope, &body).await,
        Route::GetPayment(id) => payments::get(&scope, &id),
        Route::FollowUp(id, kind) => followups::follow_up(&scope, &id, kind, &body).await,
    }
}

/// The channel of `/v1/psp/{channel}/webhooks`, the one merchant-listener path that PSPs call
/// (authenticated by the PSP's signature, not a merchant key).
pub fn psp_webhook_channel(path: &str) -> Option<&str> {
    let channel = path.strip_prefix("/v1/psp/")?.strip_suffix("/webhooks")?;
    (!channel.is_empty() && !channel.contains('/')).then_some(channel)
}

fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::NotFound(format!("no such endpoint: {path}"));
    let rest = path.strip_prefix("/v1/payments").ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let post_only = ApiError::MethodNotAllowed { allow: "POST" };
    match (segments.as_slice(), rest.is_empty()) {
        (_, true) if method == Method::POST => Ok(Route::CreatePayment),
        (_, true) => Err(post_only),
        ([id], _) if !id.is_empty() && method == Method::GET => {
            Ok(Route::GetPayment(id.to_string()))
        }
        ([id], _) if !id.is_empty() => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        ([id, "capture"], _) if method == Method::POST => {
            Ok(Route::FollowUp(id.to_string(), FollowUpKind::Capture))
        }
        ([id, "refunds"], _) if method == Method::POST => {
            Ok(Route::FollowUp(id.to_string(), FollowUpKind::Refund))
        }
        ([id, "cancel"], _) if method == Method::POST => {
            Ok(Route::FollowUp(id.to_string(), FollowUpKind::Cancel))
        }
        ([_, "capture" | "refunds" | "cancel"], _) => Err(post_only),
        _ => Err(not_found()),
    }
}

/// What a repeat of a request answers, read from what its key made as it now stands: the
/// payment (pending, or settled since), or the capture or refund. None when the store cannot
/// read it.
pub fn current_answer(
    store: &dyn crate::store::PaymentStore,
    target: &str,
) -> Option<crate::store::idempotency::StoredResponse> {
    let (payment_id, operation_id) = crate::store::idempotency::split_target(target);
    let payment = store.get(payment_id)?;
    let (body, channel) = match operation_id {
        None => (serde_json::to_vec(&payment).ok()?, payment.channel.clone()),
        Some(operation_id) => {
            let op = payment.operations.iter().find(|op| op.id == operation_id)?;
            let body = serde_json::to_vec(&followups::answer_of(op)).ok()?;
            (body, Some(op.channel.clone()))
        }
    };
    Some(crate::store::idempotency::StoredResponse {
        status: StatusCode::OK.as_u16(),
        body: body.into(),
        channel,
    })
}

/// How long the write-ahead intent may take to commit before the payment is given up unsent.
const INTENT_WAIT: Duration = Duration::from_secs(1);
/// Time for a request to reach the PSP after its own timeout ran out on paygate's side.
const IN_FLIGHT_MARGIN_MS: u64 = 500;

/// Until when a call about to be recorded may still be on its way to the PSP: the intent's
/// commit wait, then the call's own timeout (at most what is left of the request's), then a
/// margin. Reconciliation asks no sooner, so "never received" cannot race the request.
fn in_doubt_until(scope: &Scope, channel_timeout: Duration) -> u64 {
    let remaining = scope.deadline.saturating_duration_since(Instant::now());
    let call = remaining.min(channel_timeout) + INTENT_WAIT;
    now_ms() + call.as_millis() as u64 + IN_FLIGHT_MARGIN_MS
}

/// Waits, until `until` at most, for everything recorded for `id` to be as durable as the
/// store promises.
async fn wait_durable(scope: &Scope, id: &str, until: Instant) -> Result<(), StoreError> {
    let durable = scope.gateway.store.durable(id);
    match tokio::time::timeout_at(until.into(), durable).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable("is not writing".into())),
    }
}

/// How long an answer may wait for the journal: the request's deadline bounds the calls to
/// PSPs, but an outcome already known deserves a moment more to be recorded.
const JOURNAL_GRACE: Duration = Duration::from_secs(2);

fn journal_wait_until(deadline: Instant) -> Instant {
    deadline.max(Instant::now() + JOURNAL_GRACE)
}

/// A success answer, recorded for the request's `Idempotency-Key` (if any) before the handler
/// waits for the journal, so that the one commit the merchant waits for holds both the
/// outcome and the answer to replay.
fn answer_recorded(
    scope: &Scope,
    status: StatusCode,
    body: &impl serde::Serialize,
    channel: Option<&str>,
) -> HttpResponse {
    let Some(key) = &scope.key else {
        return respond(status, body, channel);
    };
    let Ok(bytes) = serde_json::to_vec(body) else {
        return respond(status, body, channel);
    };
    let bytes = bytes::Bytes::from(bytes);
    let stored = crate::store::idempotency::StoredResponse {
        status: status.as_u16(),
        body: bytes.clone(),
        channel: channel.map(str::to_string),
    };
    let settings = scope.gateway.snapshot().config.idempotency.clone();
    scope
        .gateway
        .idempotency
        .finish(key, Some(stored), Instant::now(), &settings);
    with_channel(json_bytes_response(status, bytes), channel)
}

/// A response with a JSON body and the channel that answered, when there is one.
fn respond(
    status: StatusCode,
    body: &impl serde::Serialize,
    channel: Option<&str>,
) -> HttpResponse {
    with_channel(json_response(status, body), channel)
}

fn with_channel(mut response: HttpResponse, channel: Option<&str>) -> HttpResponse {
    if let Some(value) = channel.and_then(|c| http::HeaderValue::from_str(c).ok()) {
        response.headers_mut().insert("x-paygate-channel", value);
    }
    response
}

/// Beyond the request timeout, how long a change's hold of its payment may outlive it: the
/// wait for the journal's commit of its outcome.
pub(crate) const HOLD_MARGIN: Duration = Duration::from_secs(5);
/// How long a change waits for another replica's change of the same payment to end, at
/// most, and how often it looks.
pub(crate) const HOLD_WAIT: Duration = Duration::from_secs(2);
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Holds the payment, waiting (`HOLD_WAIT` at most, and never past `deadline`) while another
/// replica changes it; 503 with nothing changed or sent if it still does, or if the journal
/// cannot say.
pub(crate) async fn hold(
    store: &Arc<dyn PaymentStore>,
    id: &str,
    lease: Duration,
    deadline: Instant,
) -> Result<Held, ApiError> {
    let until = (Instant::now() + HOLD_WAIT).min(deadline);
    loop {
        let taken = Held::take(store, id, lease).map_err(|error| {
            ApiError::Overloaded(format!("{error}; nothing was sent, retry shortly"))
        })?;
        if let Some(held) = taken {
            return Ok(held);
        }
        if Instant::now() + HOLD_POLL > until {
            return Err(ApiError::Overloaded(format!(
                "another replica is changing payment {id}; nothing was sent, retry shortly"
            )));
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert!(matches!(
            route(&Method::POST, "/v1/payments"),
            Ok(Route::CreatePayment)
        ));
        assert!(
            matches!(route(&Method::GET, "/v1/payments/pay_1"), Ok(Route::GetPayment(id)) if id == "pay_1")
        );
        assert!(matches!(
            route(&Method::POST, "/v1/payments/pay_1/refunds"),
            Ok(Route::FollowUp(_, FollowUpKind::Refund))
        ));
        assert!(matches!(
            route(&Method::POST, "/v1/payments/pay_1/cancel"),
            Ok(Route::FollowUp(_, FollowUpKind::Cancel))
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/payments"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::DELETE, "/v1/payments/x"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/payments/x/capture"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/paymentsx"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/payments/x/y/z"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            route(&Method::GET, "/nope"),
            Err(ApiError::NotFound(_))
        ));
    }
}
