//! Tower layers of the merchant request path, one concern each. `server` stacks them in the
//! order of the concerns: request id, request limits, authentication, then the API.
//!
//! A layer either passes the request on (adding what it learnt to the request's extensions)
//! or answers with the contract's JSON error itself; none of them routes or calls a PSP.

mod auth;
mod limits;
mod request_id;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

pub use auth::{AuthLayer, AuthenticatedMerchant};
pub use limits::LimitsLayer;
pub use request_id::{RequestId, RequestIdLayer};

pub type HttpResponse = Response<Full<Bytes>>;
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;
