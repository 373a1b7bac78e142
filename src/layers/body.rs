//! Reads the whole request body before anything that needs it (signature, idempotency,
//! handlers): at most `max_body_bytes`, and not past the request's deadline. Later layers see
//! a `Request<Bytes>`.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use tower::{Layer, Service};

use super::{Deadline, HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct BodyLayer {
    pub max_body_bytes: usize,
}

impl<S> Layer<S> for BodyLayer {
    type Service = BodyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyService {
            limit: self.max_body_bytes,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct BodyService<S> {
    limit: usize,
    inner: S,
}

impl<S, B> Service<Request<B>> for BodyService<S>
where
    S: Service<Request<Bytes>, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is ready because `poll_ready` was called on `self.inner` (and our inner
        // services are always ready); swap so the ready one is used.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
            match read(body, limit, deadline).await {
                Ok(bytes) => inner.call(Request::from_parts(parts, bytes)).await,
                Err(error) => {
                    let id = parts
                        .extensions
                        .get::<RequestId>()
                        .map(|i| i.0.clone())
                        .unwrap_or_default();
                    Ok(error.into_response(&id))
                }
            }
        })
    }
}

/// The whole body, at most `limit` bytes and not past `deadline`.
pub async fn read<B>(body: B, limit: usize, deadline: Option<Instant>) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let collect = Limited::new(body, limit).collect();
    let collected = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), collect)
            .await
            .map_err(|_| ApiError::RequestTimeout)?,
        None => collect.await,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(_) => Err(ApiError::InvalidRequest(
            "the request body could not be read".into(),
        )),
    }
}
