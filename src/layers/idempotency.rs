//! Idempotency for merchant `POST`s: a request with `Idempotency-Key` is processed once per
//! merchant and key. A repeat with the same method, path and body gets the stored answer (200,
//! `Idempotent-Replayed: true`); the same key with another request gets 409; a repeat while
//! the first is still running gets 409, or waits for it when `[idempotency] in_flight =
//! "wait"`.
//!
//! From this layer on, a `POST` runs in its own task: a client that disconnects cannot cancel
//! a payment halfway, and its idempotency record is always settled.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::{AuthenticatedMerchant, Deadline, HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;
use crate::cluster::Claim;
use crate::config::{FailPolicy, InFlight};
use crate::gateway::Gateway;
use crate::store::idempotency::{Begin, Scope, StoredResponse};

const HEADER: &str = "idempotency-key";
/// How long an answer waits for its idempotency record to be durable.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The contract's bound on key length.
const MAX_KEY_LEN: usize = 255;

#[derive(Clone)]
pub struct IdempotencyLayer(pub Arc<Gateway>);

/// The idempotency record of the request, for a handler that records its answer before it
/// waits for the journal (see `api::answer_recorded`).
#[derive(Debug, Clone)]
pub struct KeyScope(pub Scope);

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            gateway: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct IdempotencyService<S> {
    gateway: Arc<Gateway>,
    inner: S,
}

impl<S> Service<Request<Bytes>> for IdempotencyService<S>
where
    S: Service<Request<Bytes>, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        if request.method() != Method::POST {
            return Box::pin(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        Box::pin(async move {
            let request_id = RequestId::of(&request);
            match scope_of(&request) {
                Err(error) => Ok(error.into_response(&request_id)),
                Ok(None) => Ok(run_to_completion(inner, request, None, gateway).await),
                Ok(Some(scope)) => {
                    let hash = request_hash(&request);
                    match admit(&gateway, &scope, hash, &request).await {
                        Ok(None) => {
                            let keyed = Some((scope, hash));
                            Ok(run_to_completion(inner, request, keyed, gateway).await)
                        }
                        Ok(Some(replay)) => Ok(replay),
                        Err(error) => Ok(error.into_response(&request_id)),
                    }
                }
            }
        })
    }
}

/// The record's scope, when the request carries a key; 400 for a malformed key.
fn scope_of(request: &Request<Bytes>) -> Result<Option<Scope>, ApiError> {
    let Some(value) = request.headers().get(HEADER) else {
        return Ok(None);
    };
    let Some(merchant) = request.extensions().get::<AuthenticatedMerchant>() else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidRequest("Idempotency-Key must be printable ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(
            "Idempotency-Key must not contain control characters".into(),
        ));
    }
    Ok(Some(Scope::new(&merchant.0, key)))
}

fn request_hash(request: &Request<Bytes>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(request.method().as_str());
    hasher.update(b" ");
    hasher.update(request.uri().path());
    hasher.update(b"\n");
    hasher.update(request.body());
    hasher.finalize().into()
}

/// None: go ahead and process. Some: the stored answer to replay.
async fn admit(
    gateway: &Gateway,
    scope: &Scope,
    hash: [u8; 32],
    request: &Request<Bytes>,
) -> Result<Option<HttpResponse>, ApiError> {
    let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
    let mut rechecked = false;
    loop {
        let settings = gateway.snapshot().config.idempotency.clone();
        let store = &gateway.idempotency;
        let begun = match store.begin(scope, hash, Instant::now(), &settings) {
            Begin::LookUp => {
                let held = HeldKey { gateway, scope };
                let begun = store.look_up(scope, hash).await;
                // Still held when it proceeds; let go by the lookup otherwise.
                held.hand_on();
                begun
            }
            begun => begun,
        };
        match begun {
            Begin::Proceed => {
                let claimed = claim_across_replicas(gateway, scope, &hash).await;
                // Another replica holds the key: with a journal the replicas share, its record
                // may have been committed since this one looked, so look once more.
                if matches!(claimed, Err(ApiError::IdempotencyConflict(_))) && !rechecked {
                    rechecked = true;
                    continue;
                }
                return claimed;
            }
            Begin::Replay(stored) => {
                gateway.metrics.idempotent_replays.inc();
                return Ok(Some(replay(stored)));
            }
            Begin::Made(target) => {
                let stored = current_answer(gateway, &target)?;
                gateway.metrics.idempotent_replays.inc();
                return Ok(Some(replay(stored)));
            }
            Begin::Mismatch => {
                return Err(ApiError::IdempotencyConflict(
                    "this Idempotency-Key was used with a different request".into(),
                ));
            }
            // (`look_up` decides: it never answers LookUp.)
            Begin::Unreadable | Begin::LookUp => {
                return Err(ApiError::Overloaded(
                    "the idempotency records cannot be read; nothing was sent, try again".into(),
                ));
            }
            Begin::Full => {
                tracing::warn!(
                    "idempotency store full: refusing new keys until expired ones are swept"
                );
                return Err(ApiError::Overloaded(
                    "too many idempotency keys are held; retry shortly".into(),
                ));
            }
            Begin::InFlight(_) if settings.in_flight == InFlight::Reject => {
                return Err(ApiError::IdempotencyConflict(
                    "a request with this Idempotency-Key is still being processed".into(),
                ));
            }
            Begin::InFlight(mut finished) => {
                let wait = finished.changed();
                let waited = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline.into(), wait).await.is_ok(),
                    None => {
                        let _ = wait.await;
                        true
                    }
                };
                if !waited {
                    return Err(ApiError::DeadlineExceeded { payment_id: None });
                }
            }
        }
    }
}

/// Beyond the request timeout, how long a claim in Redis may outlive its request: the wait
/// for the journal's commit of what the request made.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// Cluster mode: a key new to this replica is claimed in Redis before it is processed, so
/// that the same key on two replicas reaches a PSP once. The replica that loses frees its own
/// record and answers 409 while the first request is in flight; once the first replica's
/// record is in a journal they share (PostgreSQL), a repeat anywhere is answered from it.
/// While Redis cannot answer, `[cluster] idempotency` decides: `fail_closed` (the default)
/// answers 503 rather than risk a double charge; `fail_open` goes on with this replica's
/// record alone.
async fn claim_across_replicas(
    gateway: &Gateway,
    scope: &Scope,
    hash: &[u8; 32],
) -> Result<Option<HttpResponse>, ApiError> {
    let Some(cluster) = &gateway.cluster else {
        return Ok(None);
    };
    let snapshot = gateway.snapshot();
    let settings = &snapshot.config.idempotency;
    // With a shared journal the claim only has to outlive the request (the record is in the
    // journal before any PSP call), so a replica that dies mid-request blocks the key for
    // that long, not for the key's whole TTL; without one the claim is the only record other
    // replicas see.
    let claim_for = if gateway.idempotency.shared() {
        snapshot.config.server.request_timeout + CLAIM_MARGIN
    } else {
        settings.ttl
    };
    let held = HeldKey { gateway, scope };
    let refused = match cluster.claim(scope.as_str(), hash, claim_for).await {
        Ok(Claim::Won) => {
            held.hand_on();
            return Ok(None);
        }
        Ok(Claim::Elsewhere) => ApiError::IdempotencyConflict(
            "this Idempotency-Key was first used on another replica, which holds its answer".into(),
        ),
        Ok(Claim::Mismatch) => ApiError::IdempotencyConflict(
            "this Idempotency-Key was used with a different request".into(),
        ),
        Err(error) => {
            gateway.metrics.cluster_error(crate::cluster::IDEMPOTENCY);
            let policy = snapshot
                .config
                .cluster
                .as_ref()
                .map_or(FailPolicy::Closed, |c| c.idempotency);
            tracing::warn!(%error, ?policy, "shared idempotency keys unavailable");
            if policy == FailPolicy::Open {
                held.hand_on();
                return Ok(None);
            }
            ApiError::Overloaded(
                "idempotency keys cannot be checked across replicas; nothing was sent, try again"
                    .into(),
            )
        }
    };
    drop(held);
    Err(refused)
}

/// A key's record held in flight by a request that has not been handed on to its handler:
/// freed when dropped, so that a request that goes away meanwhile (its deadline passed, its
/// connection closed) does not leave its key blocked.
struct HeldKey<'a> {
    gateway: &'a Gateway,
    scope: &'a Scope,
}

impl HeldKey<'_> {
    /// The record goes on with the request (or was let go already): nothing to free.
    fn hand_on(self) {
        std::mem::forget(self);
    }
}

impl Drop for HeldKey<'_> {
    fn drop(&mut self) {
        let settings = self.gateway.snapshot().config.idempotency.clone();
        self.gateway
            .idempotency
            .finish(self.scope, None, Instant::now(), &settings);
    }
}

/// What a key made, as it now stands (pending, or settled since, by reconciliation too):
/// what a retry with the key is answered, after a crash as much as before.
fn current_answer(gateway: &Gateway, target: &str) -> Result<StoredResponse, ApiError> {
    let unreadable = || {
        ApiError::IdempotencyConflict(
            "the payment made with this Idempotency-Key cannot be read yet; retry shortly".into(),
        )
    };
    crate::api::current_answer(gateway.store.as_ref(), target).ok_or_else(unreadable)
}

fn replay(stored: StoredResponse) -> HttpResponse {
    let mut response = http::Response::new(Full::new(stored.body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(channel) = stored.channel.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert("x-paygate-channel", channel);
    }
    response
}

/// Runs the request in its own task (so that a client leaving cannot cancel a payment) and
/// settles the idempotency record with the answer.
async fn run_to_completion<S>(
    mut inner: S,
    mut request: Request<Bytes>,
    keyed: Option<(Scope, [u8; 32])>,
    gateway: Arc<Gateway>,
) -> HttpResponse
where
    S: Service<Request<Bytes>, Response = HttpResponse, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let request_id = RequestId::of(&request);
    let request_id_for_log = request_id.clone();
    // The fingerprint frees a key across the replicas in cluster mode.
    let (scope, hash) = keyed.unzip();
    if let Some(scope) = &scope {
        request.extensions_mut().insert(KeyScope(scope.clone()));
    }
    let task = tokio::spawn(async move {
        let Ok(response) = inner.call(request).await;
        let Some(scope) = scope else {
            return response;
        };
        let settings = gateway.snapshot().config.idempotency.clone();
        let (response, stored) = keep(response).await;
        let freed = stored.is_none();
        let recorded_here = gateway
            .idempotency
            .finish(&scope, stored, Instant::now(), &settings);
        // A key freed here (nothing was charged) is freed across the replicas too.
        if freed
            && let (Some(cluster), Some(hash)) = (&gateway.cluster, &hash)
            && let Err(error) = cluster.release(scope.as_str(), hash).await
        {
            gateway.metrics.cluster_error(crate::cluster::IDEMPOTENCY);
            tracing::warn!(%error, "idempotency key not freed across replicas; it expires with its ttl");
        }
        // The answer leaves only once its record is as durable as the payment: a retry after
        // a crash then replays it instead of charging again. Payment handlers record it before
        // their own wait for the journal (one commit holds both); an answer recorded only here
        // waits for its own. A journal that cannot record it in time does not take back an
        // answer whose payment is recorded.
        if recorded_here {
            let flushed = tokio::time::timeout(FLUSH_WAIT, gateway.idempotency.flushed()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!(request_id = %request_id_for_log, "idempotency record not yet durable when answering");
            }
        }
        response
    });
    match task.await {
        Ok(response) => response,
        Err(_) => ApiError::Overloaded("the request could not be completed".into())
            .into_response(&request_id),
    }
}

/// A successful answer is kept for replay; anything else frees the key.
async fn keep(response: HttpResponse) -> (HttpResponse, Option<StoredResponse>) {
    if !response.status().is_success() {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await;
    let bytes = collected.to_bytes();
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        body: bytes.clone(),
        channel: parts
            .headers
            .get("x-paygate-channel")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    (
        http::Response::from_parts(parts, Full::new(bytes)),
        Some(stored),
    )
}
