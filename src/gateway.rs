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
use crate::routing::ChannelScore;
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
    pub store: Arc<dyn PaymentStore>,
}

impl Gateway {
    /// `simulators`: addresses of the in-process simulators that `sim://` channels use.
    pub fn new(
        config: Config,
        simulators: HashMap<String, SocketAddr>,
        store: Arc<dyn PaymentStore>,
    ) -> Result<Self, UpstreamError> {
        let upstreams = Upstreams::build(&config, &simulators)?;
        let scores = config
            .channels
            .iter()
            .map(|_| Arc::new(ChannelScore::new()))
            .collect();
        let snapshot = Snapshot {
            config,
            upstreams,
            scores,
        };
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
        })
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
