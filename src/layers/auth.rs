//! Merchant authentication: `Authorization: Bearer <api key>` on every `/v1/` request,
//! checked against the SHA-256 that routes.toml keeps for each merchant.
//!
//! The key is hashed first and the hash looked up, so the time taken does not depend on how
//! much of a guess matches a real key, nor on whether the merchant exists. The key itself is
//! never stored or logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, header};
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::{HttpResponse, RequestId, ResponseFuture};
use crate::api::ApiError;
use crate::gateway::Gateway;

/// The merchant a request was authenticated as, in the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthenticatedMerchant(pub Arc<str>);

#[derive(Clone)]
pub struct AuthLayer {
    gateway: Arc<Gateway>,
}

impl AuthLayer {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for AuthService<S>
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
        if !request.uri().path().starts_with("/v1/") {
            return Box::pin(self.inner.call(request));
        }
        match self.merchant(&request) {
            Some(merchant) => {
                request.extensions_mut().insert(merchant);
                Box::pin(self.inner.call(request))
            }
            None => {
                let response = ApiError::Unauthenticated.into_response(&RequestId::of(&request));
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

impl<S> AuthService<S> {
    fn merchant<B>(&self, request: &Request<B>) -> Option<AuthenticatedMerchant> {
        let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
        let key = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))?;
        if key.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(key).into();
        let snapshot = self.gateway.snapshot();
        let merchant = snapshot.config.merchant_by_key_hash(&hash)?;
        Some(AuthenticatedMerchant(Arc::from(merchant.id.as_str())))
    }
}
