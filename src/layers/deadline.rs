//! The request's deadline: now plus `Paygate-Deadline-Ms` when the merchant sends it (never
//! beyond `request_timeout_ms`), else plus `request_timeout_ms`. Everything after this layer
//! (reading the body, every attempt, every failover) stops at it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

use super::check::Check;
use crate::api::ApiError;
use crate::gateway::Gateway;

const HEADER: &str = "paygate-deadline-ms";

/// When the request must be answered, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

#[derive(Clone)]
pub struct Deadlines(pub Arc<Gateway>);

impl<B> Check<B> for Deadlines {
    fn check(&self, request: &mut Request<B>) -> Result<(), ApiError> {
        let limit = self.0.snapshot().config.server.request_timeout;
        let budget = match request.headers().get(HEADER) {
            None => limit,
            Some(value) => {
                let ms = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        ApiError::InvalidRequest(
                            "Paygate-Deadline-Ms must be a whole number of milliseconds above 0"
                                .into(),
                        )
                    })?;
                Duration::from_millis(ms).min(limit)
            }
        };
        request
            .extensions_mut()
            .insert(Deadline(Instant::now() + budget));
        Ok(())
    }
}
