//! The gateway's shared state: the active config snapshot with the channel clients and live
//! scores built for it, and the payment store.
//!
//! A snapshot is held in an arc-swap, so a request reads one consistent config from start to
//! end and a reload can replace it whole. Owns no listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::limits::Limits;
use crate::risk::RiskState;
use crate::routing::{ChannelScore, Clock, Router};
use crate::store::PaymentStore;
use crate::store::idempotency::{IdempotencyStore, MemoryIdempotency};
use crate::upstream::{UpstreamError, Upstreams};

/// Everything a request needs from one config generation.
pub struct Snapshot {
    pub config: Config,
    pub upstreams: Upstreams,
    /// Live scores indexed by channel id of `config`.
    pub scores: Vec<Arc<ChannelScore>>,
}

pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// Live scores, ejection state and the retry budget, kept across snapshots.
    pub router: Router,
    /// Rate limiters and in-flight caps, kept by name across snapshots.
    pub limits: Limits,
    pub risk: RiskState,
    pub store: Arc<dyn PaymentStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Merchant requests being handled now (load shedding).
    pub in_flight: AtomicUsize,
}

impl Gateway {
    /// `simulators`: addresses of the in-process simulators that `sim://` channels use.
    pub fn new(
        config: Config,
        simulators: HashMap<String, SocketAddr>,
        store: Arc<dyn PaymentStore>,
    ) -> Result<Self, UpstreamError> {
        let router = Router::new(Clock::real());
        let upstreams = Upstreams::build(&config, &simulators)?;
        let scores = router.scores_for(&config);
        let snapshot = Snapshot {
            config,
            upstreams,
            scores,
        };
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            router,
            limits: Limits::new(),
            risk: RiskState::new(),
            store,
            idempotency: Arc::new(MemoryIdempotency::new()),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
