//! Load shedding: at most `max_in_flight` merchant requests at once; beyond it paygate answers
//! 503 `overloaded` at once instead of queueing requests into timeouts.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::{HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;
use crate::gateway::Gateway;

#[derive(Clone)]
pub struct ShedLayer(pub Arc<Gateway>);

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            gateway: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct ShedService<S> {
    gateway: Arc<Gateway>,
    inner: S,
}

/// Counts one request until dropped, with the response.
struct Admitted(Arc<Gateway>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> Service<Request<B>> for ShedService<S>
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
        let limit = self.gateway.snapshot().config.server.max_in_flight;
        let now = self.gateway.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let admitted = Admitted(self.gateway.clone());
        if now > limit {
            let error = ApiError::Overloaded(format!(
                "paygate is handling {limit} requests already; retry shortly"
            ));
            let response = error.into_response(&RequestId::of(&request));
            return Box::pin(async move { Ok(response) });
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(admitted);
            response
        })
    }
}
