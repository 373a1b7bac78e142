//! The shape shared by the layers that only look at a request: a [`Check`] either lets the
//! request through (perhaps adding to its extensions) or refuses it with an [`ApiError`],
//! which this layer turns into the contract's JSON answer.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::{HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;

pub trait Check<B>: Clone + Send + 'static {
    fn check(&self, request: &mut Request<B>) -> Result<(), ApiError>;
}

#[derive(Clone)]
pub struct CheckLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            check: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct CheckService<C, S> {
    check: C,
    inner: S,
}

impl<C, S, B> Service<Request<B>> for CheckService<C, S>
where
    C: Check<B>,
    S: Service<Request<B>, Response = HttpResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(error) => {
                let response = error.into_response(&RequestId::of(&request));
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
