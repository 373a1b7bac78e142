//! Rate limits on merchant requests: the gateway-wide limit (`[server] rate_limit`), then the
//! authenticated merchant's. A request over either gets 429 `rate_limited` with
//! `Retry-After`, before any work is done for it. (Per-channel limits are applied by the
//! payment handler, which skips a channel at its limit for the next one.)
//!
//! Single node: the buckets are this process's (`limits`). In cluster mode they are shared
//! by every replica through Redis (`cluster`), one round trip for both; while Redis cannot
//! answer, `[cluster] rate_limits` decides: `fail_open` lets the request through (counted in
//! `paygate_cluster_errors_total{feature="rate_limits"}`), `fail_closed` answers 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower::{Layer, Service};

use super::{AuthenticatedMerchant, HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;
use crate::cluster::Limited;
use crate::config::FailPolicy;
use crate::gateway::Gateway;
use crate::limits::retry_after_secs;
use crate::metrics::LimitScope;

#[derive(Clone)]
pub struct RateLimitLayer(pub Arc<Gateway>);

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            gateway: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RateLimited<S> {
    gateway: Arc<Gateway>,
    inner: S,
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(merchant) = request.extensions().get::<AuthenticatedMerchant>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        let gateway = self.gateway.clone();
        let Some(cluster) = gateway.cluster.clone() else {
            return match local(&gateway, &merchant.0) {
                Ok(()) => Box::pin(self.inner.call(request)),
                Err(error) => refuse(error, &request),
            };
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let snapshot = gateway.snapshot();
            let config = &snapshot.config;
            let quota = config.merchant(&merchant.0).and_then(|m| m.rate_limit);
            let admitted = cluster
                .admit(config.server.rate_limit, &merchant.0, quota)
                .await;
            let verdict = match admitted {
                Ok(Ok(())) => Ok(()),
                Ok(Err((Limited::Gateway, wait))) => {
                    Err(limited(&gateway, LimitScope::Global, "gateway", wait))
                }
                Ok(Err((Limited::Merchant, wait))) => {
                    Err(limited(&gateway, LimitScope::Merchant, "merchant", wait))
                }
                Err(error) => {
                    gateway.metrics.cluster_error(crate::cluster::RATE_LIMITS);
                    let policy = config
                        .cluster
                        .as_ref()
                        .map_or(FailPolicy::Open, |c| c.rate_limits);
                    tracing::warn!(%error, ?policy, "shared rate limits unavailable");
                    match policy {
                        FailPolicy::Open => Ok(()),
                        FailPolicy::Closed => Err(ApiError::Overloaded(
                            "the shared rate limits cannot be checked; try again".into(),
                        )),
                    }
                }
            };
            match verdict {
                Ok(()) => inner.call(request).await,
                Err(error) => Ok(error.into_response(&RequestId::of(&request))),
            }
        })
    }
}

/// This process's own buckets.
fn local(gateway: &Gateway, merchant: &str) -> Result<(), ApiError> {
    let snapshot = gateway.snapshot();
    let config = &snapshot.config;
    gateway
        .limits
        .check_global(config.server.rate_limit)
        .map_err(|wait| limited(gateway, LimitScope::Global, "gateway", wait))?;
    let quota = config.merchant(merchant).and_then(|m| m.rate_limit);
    gateway
        .limits
        .check_merchant(merchant, quota)
        .map_err(|wait| limited(gateway, LimitScope::Merchant, "merchant", wait))
}

fn limited(gateway: &Gateway, scope: LimitScope, name: &'static str, wait: Duration) -> ApiError {
    gateway.metrics.rate_limited(scope);
    ApiError::RateLimited {
        scope: name,
        retry_after_secs: retry_after_secs(wait),
    }
}

fn refuse<B>(error: ApiError, request: &Request<B>) -> ResponseFuture {
    let response = error.into_response(&RequestId::of(request));
    Box::pin(async move { Ok(response) })
}
