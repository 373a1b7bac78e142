//! The admin listener's endpoints: `/healthz` (the process answers), `/readyz` (it takes
//! traffic; 503 from the moment shutdown starts, and in cluster mode while Redis does not
//! answer and a shared feature is `fail_closed`), `/metrics` (Prometheus, no auth), and the
//! token-protected `/admin/` API, whose handlers live in `api::admin`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Request, StatusCode};
use serde_json::json;
use tower::Service;

use bytes::Bytes;
use hyper::body::Body;

use crate::api::admin::AdminToken;
use crate::api::{ApiError, json_response};
use crate::config::FailPolicy;
use crate::gateway::Gateway;
use crate::layers::{HttpResponse, RequestId, ResponseFuture};

#[derive(Clone)]
pub struct Admin {
    ready: Arc<AtomicBool>,
    gateway: Arc<Gateway>,
    token: Option<AdminToken>,
}

impl Admin {
    pub fn new(ready: Arc<AtomicBool>, gateway: Arc<Gateway>, token: Option<AdminToken>) -> Self {
        Self {
            ready,
            gateway,
            token,
        }
    }

    fn answer(&self, path: &str, request_id: &str) -> HttpResponse {
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/metrics" => {
                self.gateway
                    .metrics
                    .idempotency_keys
                    .set(self.gateway.idempotency.len() as i64);
                let mut response = http::Response::new(http_body_util::Full::new(Bytes::from(
                    self.gateway.metrics.encode(),
                )));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            "/readyz" if self.ready.load(Ordering::SeqCst) => match self.gateway.store.health() {
                Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Err(error) => journal_unavailable(&error),
            },
            "/readyz" => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "shutting_down"}),
            ),
            _ => ApiError::NotFound("no such endpoint".into()).into_response(request_id),
        }
    }
}

/// The journal cannot take payments (it cannot write, or is behind): new ones get 503.
fn journal_unavailable(error: &crate::store::StoreError) -> HttpResponse {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "journal_unavailable", "reason": error.to_string()}),
    )
}

/// Ready while Redis answers; without it, a replica whose shared features fail open still
/// serves (`degraded`), one with a `fail_closed` feature would refuse what it must not risk.
async fn cluster_readiness(gateway: &Gateway, cluster: &crate::cluster::Cluster) -> HttpResponse {
    if let Err(error) = gateway.store.health() {
        return journal_unavailable(&error);
    }
    let Err(error) = cluster.ping().await else {
        return json_response(StatusCode::OK, &json!({"status": "ready"}));
    };
    let snapshot = gateway.snapshot();
    let closed = snapshot.config.cluster.as_ref().is_some_and(|c| {
        c.rate_limits == FailPolicy::Closed || c.idempotency == FailPolicy::Closed
    });
    let reason = error.to_string();
    if closed {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "redis_unavailable", "reason": reason}),
        )
    } else {
        json_response(
            StatusCode::OK,
            &json!({"status": "degraded", "reason": reason}),
        )
    }
}

impl<B> Service<Request<B>> for Admin
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path() == "/readyz"
            && self.ready.load(Ordering::SeqCst)
            && let Some(cluster) = self.gateway.cluster.clone()
        {
            let gateway = self.gateway.clone();
            return Box::pin(async move { Ok(cluster_readiness(&gateway, &cluster).await) });
        }
        if !request.uri().path().starts_with("/admin/") {
            let response = self.answer(request.uri().path(), &RequestId::of(&request));
            return Box::pin(async move { Ok(response) });
        }
        let admin = self.clone();
        Box::pin(async move {
            Ok(crate::api::admin::handle(&admin.gateway, admin.token.as_ref(), request).await)
        })
    }
}
