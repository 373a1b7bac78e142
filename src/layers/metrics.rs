//! Request metrics, outermost after the request id: in-flight gauge, count by route template
//! and status, and duration, for every merchant request whatever answered it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Request;
use tower::{Layer, Service};

use super::{HttpResponse, ResponseFuture};
use crate::gateway::Gateway;
use crate::metrics::route_of;

#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Gateway>);

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            gateway: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    gateway: Arc<Gateway>,
    inner: S,
}

/// Keeps the in-flight gauge right even when the client goes away mid-request.
struct Counted(Arc<Gateway>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.inflight.dec();
    }
}

impl<S, B> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = HttpResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let route = route_of(request.uri().path());
        self.gateway.metrics.inflight.inc();
        let counted = Counted(self.gateway.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let gateway = &counted.0;
            gateway
                .metrics
                .request(route, response.status().as_u16(), started.elapsed());
            Ok(response)
        })
    }
}
