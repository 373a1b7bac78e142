//! Request ids: every request gets one (the client's `X-Request-Id` when it is sane, else a
//! new one), every response carries it, and every error body repeats it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use super::{HttpResponse, ResponseFuture};

const HEADER: &str = "x-request-id";
/// Longer ids are replaced rather than echoed into logs and responses.
const MAX_LEN: usize = 128;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// The id of a request that passed through [`RequestIdLayer`].
    pub fn of<B>(request: &Request<B>) -> Arc<str> {
        request
            .extensions()
            .get::<RequestId>()
            .map_or_else(|| Arc::from(""), |id| id.0.clone())
    }

    fn from_header(value: &HeaderValue) -> Option<Self> {
        let text = value.to_str().ok()?;
        let sane =
            !text.is_empty() && text.len() <= MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
        sane.then(|| Self(Arc::from(text)))
    }

    fn generate() -> Self {
        Self(Arc::from(format!("req_{}", ulid::Ulid::generate())))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(RequestId::from_header)
            .unwrap_or_else(RequestId::generate);
        let header = HeaderValue::from_str(&id.0).ok();
        request.extensions_mut().insert(id);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(header) = header {
                response.headers_mut().insert(HEADER, header);
            }
            Ok(response)
        })
    }
}
