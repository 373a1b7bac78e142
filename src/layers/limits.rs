//! Request size limits that can be judged before the body is read: the number of headers and
//! a declared `Content-Length` over `max_body_bytes`. (A chunked body is bounded while it is
//! read, by the body layer.)

use http::{Request, header};

use super::check::Check;
use crate::api::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl<B> Check<B> for SizeLimits {
    fn check(&self, request: &mut Request<B>) -> Result<(), ApiError> {
        if request.headers().len() > self.max_headers {
            return Err(ApiError::TooManyHeaders {
                limit: self.max_headers,
            });
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.max_body_bytes as u64 => Err(ApiError::PayloadTooLarge {
                limit: self.max_body_bytes,
            }),
            _ => Ok(()),
        }
    }
}
