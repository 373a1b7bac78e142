//! The gateway's shared state: the active config snapshot with the channel clients and live
//! scores built for it, and the payment store.
//!
//! A snapshot is held in an arc-swap, so a request reads one consistent config from start to
//! end and a reload can replace it whole. Owns no listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::routing::{ChannelScore, Clock, Router};
use crate::store::PaymentStore;
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
    pub store: Arc<dyn PaymentStore>,
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
            store,
        })
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
