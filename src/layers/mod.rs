//! Tower layers of the merchant request path, one concern each. `server` stacks them in the
//! order of the concerns: request id, metrics, framing (RFC 9112), deadline, size limits, load shedding, body, then
//! authentication, rate limits and idempotency, then the API.
//!
//! A layer either passes the request on (adding what it learnt to the request's extensions)
//! or answers with the contract's JSON error itself; none of them routes or calls a PSP.

mod auth;
mod body;
mod check;
mod deadline;
mod framing;
mod idempotency;
mod limits;
mod metrics;
mod rate_limit;
mod request_id;
mod shed;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

pub use auth::{Authenticate, AuthenticatedMerchant, PeerCertificate, signature_header};
pub use body::{BodyLayer, read as read_body};
pub use check::{Check, CheckLayer};
pub use deadline::{Deadline, Deadlines};
pub use framing::{Framing, TwoLengths};
pub use idempotency::{IdempotencyLayer, KeyScope};
pub use limits::SizeLimits;
pub use metrics::MetricsLayer;
pub use rate_limit::RateLimitLayer;
pub use request_id::{RequestId, RequestIdLayer};
pub use shed::ShedLayer;

pub type HttpResponse = Response<Full<Bytes>>;
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;
