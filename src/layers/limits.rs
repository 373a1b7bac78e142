//! Request size limits that can be judged before the body is read: the number of headers and
//! a declared `Content-Length` over `max_body_bytes`. (A chunked body is bounded while it is
//! read, in the API.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{Request, header};
use tower::{Layer, Service};

use super::{HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct LimitsLayer {
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            limits: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LimitsService<S> {
    inner: S,
    limits: LimitsLayer,
}

impl<S, B> Service<Request<B>> for LimitsService<S>
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
        if let Some(error) = self.violation(&request) {
            let response = error.into_response(&RequestId::of(&request));
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

impl<S> LimitsService<S> {
    fn violation<B>(&self, request: &Request<B>) -> Option<ApiError> {
        let limit = self.limits.max_headers;
        if request.headers().len() > limit {
            return Some(ApiError::TooManyHeaders { limit });
        }
        let limit = self.limits.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > limit as u64 => Some(ApiError::PayloadTooLarge { limit }),
            _ => None,
        }
    }
}
