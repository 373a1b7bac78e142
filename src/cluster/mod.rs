//! Cluster mode (`[cluster] redis_url`): what paygate replicas share through Redis. Today:
//! - the gateway-wide and per-merchant rate limits, as one atomic GCRA script per request
//!   (one round trip for both limits), on Redis' own clock so that replicas' clocks do not
//!   matter;
//! - the claim on each `Idempotency-Key` (one round trip when a key is new to a replica):
//!   the first replica to claim a key processes it, and the same key on another replica is
//!   refused, never sent to a PSP a second time;
//! - each channel's contracted rate (`[[channels]] rate_limit`), as the same GCRA script on
//!   one bucket per channel (one round trip per attempt on a limited channel);
//! - the record of drains and enables, and its publication to every replica (`switches`).
//!
//! Owns the Redis connections (one multiplexed connection per process, reconnecting by
//! itself, plus one subscription connection per replica, see `switches`) and the bound on
//! every call (`timeout_ms`). It says allowed, limited or "Redis did not answer"; what a
//! request does about the last is its feature's policy (`rate_limits = "fail_open" |
//! "fail_closed"`). Must not keep request state of its own, nor decide a policy.

pub mod switches;

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::config::{Cluster as Settings, RateLimit};

/// Both limits in one script: KEYS = the gateway's and the merchant's buckets, ARGV = each
/// one's emission interval and tolerance in microseconds (0: no limit). GCRA: a request is
/// allowed while its theoretical arrival time stays within `tolerance` of now. Returns
/// {0, 0} when allowed (both buckets advanced), or {1 | 2, wait in µs} for the limit that
/// refused (nothing advanced).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[i * 2 - 1])
  local tolerance = tonumber(ARGV[i * 2])
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    local over = tat - now - tolerance
    if over > 0 then return {i, math.ceil(over)} end
    new[i] = tat + interval
  end
end
for i = 1, 2 do
  if new[i] then
    redis.call('SET', KEYS[i], string.format('%.0f', new[i]), 'PX', math.ceil((new[i] - now) / 1000) + 1000)
  end
end
return {0, 0}
";

/// Claims a key for this request's fingerprint: 0 claimed now, 1 already claimed for the same
/// request, 2 claimed for another request.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if held == ARGV[1] then return 1 end
return 2
";

/// Frees a claim, only if it is still this request's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Who holds an idempotency key across the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This request: process it.
    Won,
    /// The same request, first taken by another replica (or still held for it).
    Elsewhere,
    /// Another request under the same key.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis at {url}: {source}")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the subscription connection to Redis closed")]
    Closed,
    #[error("unreadable answer from Redis: {0}")]
    Unreadable(String),
}

/// Which shared limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Gateway,
    Merchant,
}

/// The features that call Redis, as the metrics name them (`feature`).
pub const RATE_LIMITS: &str = "rate_limits";
pub const IDEMPOTENCY: &str = "idempotency";
pub const CHANNEL_LIMITS: &str = "channel_limits";
pub const SWITCHES: &str = "switches";
pub const FEATURES: [&str; 4] = [RATE_LIMITS, IDEMPOTENCY, CHANNEL_LIMITS, SWITCHES];

pub struct Cluster {
    /// For the subscription connection, which is not multiplexed.
    client: redis::Client,
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    gcra: Script,
    claim: Script,
    release: Script,
    switch: Script,
    /// This process's name in the shared switch record; unique per start.
    replica: String,
    /// How long each call took, by feature (`paygate_cluster_call_duration_seconds`).
    durations: Option<prometheus::HistogramVec>,
}

impl Cluster {
    /// Connects (bounded by the timeout, at least a second); later outages are reconnected by
    /// the connection itself.
    pub async fn connect(settings: &Settings) -> Result<Self, ClusterError> {
        let connect = |source| ClusterError::Connect {
            url: crate::config::without_credentials(&settings.redis_url),
            source,
        };
        let client = redis::Client::open(settings.redis_url.as_str()).map_err(connect)?;
        let wait = settings.timeout.max(Duration::from_secs(1));
        let connection = tokio::time::timeout(wait, client.get_connection_manager())
            .await
            .map_err(|_| ClusterError::Timeout(wait))?
            .map_err(connect)?;
        Ok(Self {
            client,
            connection,
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            gcra: Script::new(GCRA),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            switch: Script::new(switches::SWITCH),
            replica: ulid::Ulid::generate().to_string(),
            durations: None,
        })
    }

    /// Times every call into `durations`, labelled with the feature that made it.
    pub fn timed_by(mut self, durations: prometheus::HistogramVec) -> Self {
        self.durations = Some(durations);
        self
    }

    /// The Redis key of an idempotency scope (a merchant and its key): hashed, so that any
    /// printable key makes a short, safe name.
    fn key_of(&self, scope: &str) -> String {
        format!(
            "{}idem:{}",
            self.prefix,
            hex::encode(Sha256::digest(scope.as_bytes()))
        )
    }

    /// Claims the idempotency `scope` for the request with `fingerprint`, for `ttl`.
    pub async fn claim(
        &self,
        scope: &str,
        fingerprint: &[u8; 32],
        ttl: Duration,
    ) -> Result<Claim, ClusterError> {
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(self.key_of(scope))
            .arg(hex::encode(fingerprint))
            .arg(ttl.as_millis().max(1) as u64);
        let held: u8 = self.call(IDEMPOTENCY, invocation).await?;
        Ok(match held {
            0 => Claim::Won,
            1 => Claim::Elsewhere,
            _ => Claim::Mismatch,
        })
    }

    /// Frees a key this request claimed (it surely charged nothing, so the key may be used
    /// afresh, on any replica).
    pub async fn release(&self, scope: &str, fingerprint: &[u8; 32]) -> Result<(), ClusterError> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.key_of(scope))
            .arg(hex::encode(fingerprint));
        self.call::<u8>(IDEMPOTENCY, invocation).await.map(|_| ())
    }

    /// Whether Redis answers now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        tokio::time::timeout(self.timeout, command.query_async::<String>(&mut connection))
            .await
            .map_err(|_| ClusterError::Timeout(self.timeout))?
            .map(|_| ())
            .map_err(ClusterError::Redis)
    }

    /// One script, one round trip, bounded by the timeout; `feature` names it in the metrics.
    async fn call<T: redis::FromRedisValue>(
        &self,
        feature: &str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        let mut connection = self.connection.clone();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| ClusterError::Timeout(self.timeout))
            .and_then(|answer| answer.map_err(ClusterError::Redis));
        if let Some(durations) = &self.durations {
            durations
                .with_label_values(&[feature])
                .observe(started.elapsed().as_secs_f64());
        }
        answer
    }

    /// Takes one request from the gateway's and the merchant's shared buckets, or says which
    /// refused and for how long.
    pub async fn admit(
        &self,
        gateway: Option<RateLimit>,
        merchant: &str,
        merchant_quota: Option<RateLimit>,
    ) -> Result<Result<(), (Limited, Duration)>, ClusterError> {
        if gateway.is_none() && merchant_quota.is_none() {
            return Ok(Ok(()));
        }
        let mut invocation = self.gcra.prepare_invoke();
        invocation
            .key(format!("{}rl:gateway", self.prefix))
            .key(format!("{}rl:merchant:{merchant}", self.prefix));
        for quota in [gateway, merchant_quota] {
            let (interval, tolerance) = quota.map_or((0, 0), gcra_parameters);
            invocation.arg(interval).arg(tolerance);
        }
        let (refused, wait_us): (u8, u64) = self.call(RATE_LIMITS, invocation).await?;
        let wait = Duration::from_micros(wait_us);
        Ok(match refused {
            0 => Ok(()),
            1 => Err((Limited::Gateway, wait)),
            _ => Err((Limited::Merchant, wait)),
        })
    }
}

impl Cluster {
    /// Takes one call from the bucket every replica shares for `channel`'s contracted rate,
    /// or says how long until one would be allowed. The same script as [`Cluster::admit`],
    /// with its second bucket unused.
    pub async fn admit_channel(
        &self,
        channel: &str,
        quota: RateLimit,
    ) -> Result<Result<(), Duration>, ClusterError> {
        let key = format!("{}rl:channel:{channel}", self.prefix);
        let (interval, tolerance) = gcra_parameters(quota);
        let mut invocation = self.gcra.prepare_invoke();
        invocation
            .key(&key)
            .key(&key)
            .arg(interval)
            .arg(tolerance)
            .arg(0)
            .arg(0);
        let (refused, wait_us): (u8, u64) = self.call(CHANNEL_LIMITS, invocation).await?;
        Ok(match refused {
            0 => Ok(()),
            _ => Err(Duration::from_micros(wait_us)),
        })
    }
}

/// GCRA's emission interval and tolerance (µs) for a quota: `burst` requests at once, then
/// `per_second`.
fn gcra_parameters(quota: RateLimit) -> (u64, u64) {
    let interval = 1_000_000 / u64::from(quota.per_second.max(1));
    let burst = u64::from(quota.burst.max(1));
    (interval, interval * (burst - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_n_tolerates_n_minus_one_intervals() {
        let quota = RateLimit {
            per_second: 100,
            burst: 10,
        };
        assert_eq!(gcra_parameters(quota), (10_000, 90_000));
        let zero = RateLimit {
            per_second: 0,
            burst: 0,
        };
        assert_eq!(gcra_parameters(zero), (1_000_000, 0));
    }
}
