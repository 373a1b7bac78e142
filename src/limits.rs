//! Admission limits: GCRA rate limits (governor) for all traffic, per merchant and per
//! channel, and in-flight caps for the whole gateway and per channel.
//!
//! Limiters are kept by name and survive config snapshots: a reload that leaves a merchant's
//! or channel's quota unchanged keeps its bucket, one that changes it starts a fresh bucket
//! for that name only. This module says yes or no (and for how long); it never answers a
//! request itself.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::{Channel, RateLimit};

/// Key of the gateway-wide limiter in the merchant map (no merchant id can be empty).
const GLOBAL: &str = "";

struct Limiter {
    quota: RateLimit,
    limiter: DefaultDirectRateLimiter,
}

impl Limiter {
    fn new(quota: RateLimit) -> Self {
        let per_second = NonZeroU32::new(quota.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(quota.burst).unwrap_or(per_second);
        Self {
            quota,
            limiter: DefaultDirectRateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ),
        }
    }

    /// Ok, or how long until a request would be allowed.
    fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Why a channel was passed over for this payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    RateLimited,
    Busy,
}

/// A call counted against a channel's in-flight cap until dropped.
pub struct InFlight {
    gate: Arc<ChannelGate>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct ChannelGate {
    limiter: Option<Limiter>,
    in_flight: AtomicUsize,
}

impl ChannelGate {
    fn check_rate(&self) -> Result<(), Skip> {
        match &self.limiter {
            Some(limiter) if limiter.check().is_err() => Err(Skip::RateLimited),
            _ => Ok(()),
        }
    }
}

#[derive(Default)]
pub struct Limits {
    /// Merchants by id, and the gateway-wide limiter under [`GLOBAL`].
    requests: DashMap<String, Arc<Limiter>>,
    channels: DashMap<String, Arc<ChannelGate>>,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// The gateway-wide limit.
    pub fn check_global(&self, quota: Option<RateLimit>) -> Result<(), Duration> {
        self.check(GLOBAL, quota)
    }

    pub fn check_merchant(&self, merchant: &str, quota: Option<RateLimit>) -> Result<(), Duration> {
        self.check(merchant, quota)
    }

    fn check(&self, name: &str, quota: Option<RateLimit>) -> Result<(), Duration> {
        let Some(quota) = quota else {
            return Ok(());
        };
        let known = self.requests.get(name).map(|l| l.clone());
        let limiter = match known {
            Some(l) if l.quota == quota => l,
            // Through the entry, so that concurrent first requests share one new bucket.
            _ => {
                let mut entry = self
                    .requests
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(Limiter::new(quota)));
                if entry.quota != quota {
                    *entry = Arc::new(Limiter::new(quota));
                }
                entry.clone()
            }
        };
        limiter.check()
    }

    /// Admits one call to `channel`, or says why it must be skipped: its in-flight cap, then
    /// this replica's bucket of its rate.
    pub fn admit_channel(&self, channel: &Channel) -> Result<InFlight, Skip> {
        let guard = self.hold_channel(channel)?;
        // Checked after the in-flight cap, so a busy channel does not spend its rate tokens.
        guard.gate.check_rate()?;
        Ok(guard)
    }

    /// Counts one call against `channel`'s in-flight cap, or says it is busy.
    pub fn hold_channel(&self, channel: &Channel) -> Result<InFlight, Skip> {
        let gate = self.gate(channel);
        let now = gate.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = InFlight { gate };
        if channel.max_in_flight.is_some_and(|max| now > max) {
            return Err(Skip::Busy);
        }
        Ok(guard)
    }

    /// Takes one call from this replica's bucket of `channel`'s rate (none: always allowed).
    pub fn check_channel_rate(&self, channel: &Channel) -> Result<(), Skip> {
        self.gate(channel).check_rate()
    }

    fn gate(&self, channel: &Channel) -> Arc<ChannelGate> {
        let known = self.channels.get(&channel.name).map(|g| g.clone());
        if let Some(gate) = known
            && gate.limiter.as_ref().map(|l| l.quota) == channel.rate_limit
        {
            return gate;
        }
        let fresh = || {
            Arc::new(ChannelGate {
                limiter: channel.rate_limit.map(Limiter::new),
                in_flight: AtomicUsize::new(0),
            })
        };
        let mut entry = self
            .channels
            .entry(channel.name.clone())
            .or_insert_with(fresh);
        if entry.limiter.as_ref().map(|l| l.quota) != channel.rate_limit {
            *entry = fresh();
        }
        entry.clone()
    }
}

/// Whole seconds to put in `Retry-After`: at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merchant_limit_allows_the_burst_then_refuses() {
        let limits = Limits::new();
        let quota = Some(RateLimit {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limits.check_merchant("m", quota).is_ok());
        }
        let wait = limits.check_merchant("m", quota).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        // Another merchant has its own bucket; no quota means no limit.
        assert!(limits.check_merchant("other", quota).is_ok());
        assert!(limits.check_merchant("m", None).is_ok());
        // The same quota keeps the bucket; a new quota starts a new one.
        assert!(limits.check_merchant("m", quota).is_err());
        let raised = Some(RateLimit {
            per_second: 10,
            burst: 10,
        });
        assert!(limits.check_merchant("m", raised).is_ok());
    }

    #[test]
    fn a_busy_channel_keeps_its_rate_tokens() {
        let limits = Limits::new();
        let channel = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[[channels]]\nname = \"c\"\nurl = \"http://127.0.0.1:1\"\nmax_in_flight = 1\nrate_limit = { per_second = 1, burst = 2 }\n",
        )
        .unwrap()
        .channels
        .remove(0);
        let first = limits.admit_channel(&channel).expect("first call");
        for _ in 0..5 {
            assert_eq!(limits.admit_channel(&channel).err(), Some(Skip::Busy));
        }
        drop(first);
        assert!(
            limits.admit_channel(&channel).is_ok(),
            "the second token is still there"
        );
        assert_eq!(
            limits.admit_channel(&channel).err(),
            Some(Skip::RateLimited)
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_500)), 2);
    }
}
