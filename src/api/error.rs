//! The one edge where typed errors become the contract's JSON errors:
//! `{"error": {"type", "message", "request_id"}}` with the status the contract gives each type.
//!
//! Messages name the field at fault and never echo card data or credentials.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::routing::RoutingError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("missing or invalid API key")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed here; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the request took too long to arrive")]
    RequestTimeout,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error(transparent)]
    NoEligibleChannel(#[from] RoutingError),
    #[error("rate limit of the {scope} exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("rejected by risk rule {rule:?}")]
    RiskRejected { rule: String },
    #[error("{0}")]
    Overloaded(String),
    #[error("every eligible channel failed; the payment was not charged")]
    AllChannelsFailed { payment_id: String },
    #[error("the request's deadline passed before a channel answered")]
    DeadlineExceeded { payment_id: Option<String> },
    /// A request whose length is given twice (`Content-Length` and `Transfer-Encoding`):
    /// front ends may disagree on where it ends (request smuggling), so it is refused and its
    /// connection closed after the answer (RFC 9112 6.1).
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// `POST /admin/reload` of a file `paygate check` refuses; the old config keeps serving.
    #[error("the routes file was rejected; the active config keeps serving")]
    ConfigRejected {
        version: String,
        problems: Vec<String>,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: String,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<&'a str>,
    /// The risk rule that refused the payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::AmbiguousFraming => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoEligibleChannel(_)
            | Self::RiskRejected { .. }
            | Self::ConfigRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::IdempotencyConflict(_) => StatusCode::CONFLICT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::AllChannelsFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The contract's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::AmbiguousFraming => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::NoEligibleChannel(_) => "no_eligible_channel",
            Self::RiskRejected { .. } => "risk_rejected",
            Self::RateLimited { .. } => "rate_limited",
            Self::IdempotencyConflict(_) => "idempotency_conflict",
            Self::Overloaded(_) => "overloaded",
            Self::AllChannelsFailed { .. } => "all_channels_failed",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::ConfigRejected { .. } => "config_rejected",
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let payment_id = match &self {
            Self::AllChannelsFailed { payment_id } => Some(payment_id.as_str()),
            Self::DeadlineExceeded { payment_id } => payment_id.as_deref(),
            _ => None,
        };
        let body = Body {
            error: Detail {
                kind: self.kind(),
                message: self.to_string(),
                request_id,
                payment_id,
                rule: match &self {
                    Self::RiskRejected { rule } => Some(rule.as_str()),
                    _ => None,
                },
            },
        };
        let mut response = match &self {
            // The admin API's reload answer keeps its fields beside the error.
            Self::ConfigRejected { version, problems } => json_response(
                self.status(),
                &serde_json::json!({
                    "error": body.error,
                    "result": "rejected",
                    "version": version,
                    "problems": problems,
                }),
            ),
            _ => json_response(self.status(), &body),
        };
        let headers = response.headers_mut();
        match &self {
            Self::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Overloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::AmbiguousFraming => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// A response whose JSON body is already encoded.
pub fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON response; serializing our own types cannot fail, but if it ever did the client
/// still gets a well-formed 500 rather than a dropped connection.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":{"type":"internal","message":"response could not be encoded","request_id":""}}"#.to_vec(),
        ),
    };
    json_bytes_response(status, Bytes::from(bytes))
}
