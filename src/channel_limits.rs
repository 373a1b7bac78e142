//! Admission of one call to a channel, for the payment handler's failover loop: the
//! channel's in-flight cap (always this replica's), then its contracted rate
//! (`[[channels]] rate_limit`): this replica's bucket on a single node, the bucket every
//! replica shares in cluster mode (one Redis round trip per attempt on a limited channel;
//! a channel without a limit costs none).
//!
//! While Redis cannot answer, `[cluster] rate_limits` decides, as for merchant limits:
//! `fail_open` falls back to this replica's own bucket (so each replica allows the whole
//! rate for a while), `fail_closed` treats the channel as at its limit (skipped for the next
//! one). Either way the failure is counted in
//! `paygate_cluster_errors_total{feature="channel_limits"}`. Says admitted or skipped; the
//! handler decides what a skip means.

use crate::config::{Channel, FailPolicy};
use crate::gateway::Gateway;
use crate::limits::{InFlight, Skip};

/// The `feature` label of `paygate_cluster_errors_total`.
const FEATURE: &str = crate::cluster::CHANNEL_LIMITS;

/// Admits one call to `channel`, or says why it must be skipped.
pub async fn admit(gateway: &Gateway, channel: &Channel) -> Result<InFlight, Skip> {
    let (Some(cluster), Some(quota)) = (&gateway.cluster, channel.rate_limit) else {
        return gateway.limits.admit_channel(channel);
    };
    // The in-flight cap first, so a busy channel does not spend the shared rate.
    let guard = gateway.limits.hold_channel(channel)?;
    match cluster.admit_channel(&channel.name, quota).await {
        Ok(Ok(())) => Ok(guard),
        Ok(Err(_wait)) => Err(Skip::RateLimited),
        Err(error) => {
            gateway.metrics.cluster_error(FEATURE);
            let policy = gateway
                .snapshot()
                .config
                .cluster
                .as_ref()
                .map_or(FailPolicy::Open, |c| c.rate_limits);
            tracing::warn!(channel = %channel.name, %error, ?policy, "shared channel limit unavailable");
            match policy {
                FailPolicy::Open => gateway.limits.check_channel_rate(channel).map(|()| guard),
                FailPolicy::Closed => Err(Skip::RateLimited),
            }
        }
    }
}
