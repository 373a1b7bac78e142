//! Rate limits on merchant requests: the gateway-wide limit (`[server] rate_limit`), then the
//! authenticated merchant's. A request over either gets 429 `rate_limited` with
//! `Retry-After`, before any work is done for it. (Per-channel limits are applied by the
//! payment handler, which skips a channel at its limit for the next one.)

use std::sync::Arc;

use http::Request;

use super::AuthenticatedMerchant;
use super::check::Check;
use crate::api::ApiError;
use crate::gateway::Gateway;
use crate::limits::retry_after_secs;
use crate::metrics::LimitScope;

#[derive(Clone)]
pub struct RateLimit(pub Arc<Gateway>);

impl<B> Check<B> for RateLimit {
    fn check(&self, request: &mut Request<B>) -> Result<(), ApiError> {
        let Some(merchant) = request.extensions().get::<AuthenticatedMerchant>() else {
            return Ok(());
        };
        let snapshot = self.0.snapshot();
        let config = &snapshot.config;
        let limited = |scope, wait| ApiError::RateLimited {
            scope,
            retry_after_secs: retry_after_secs(wait),
        };
        let metrics = &self.0.metrics;
        self.0
            .limits
            .check_global(config.server.rate_limit)
            .map_err(|wait| {
                metrics.rate_limited(LimitScope::Global);
                limited("gateway", wait)
            })?;
        let quota = config.merchant(&merchant.0).and_then(|m| m.rate_limit);
        self.0
            .limits
            .check_merchant(&merchant.0, quota)
            .map_err(|wait| {
                metrics.rate_limited(LimitScope::Merchant);
                limited("merchant", wait)
            })
    }
}
