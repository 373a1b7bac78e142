//! The gateway's shared state: the active config snapshot with the channel clients, live
//! scores and metric handles built for it; the state that outlives snapshots (router, limits,
//! risk, stores, metrics, audit, switches); and the operator actions that change it: reload,
//! drain, enable (the last two through `switches`, which also shares them in cluster mode).
//!
//! A snapshot is held in an arc-swap: a request reads one consistent config from start to
//! end, and a reload swaps the whole snapshot at once, so requests in flight finish on the
//! config they started with. Scores, rate-limit buckets and idempotency records are kept by
//! name outside the snapshot, so what still exists carries over. Owns no listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::audit::{Audit, Entry};
use crate::config::{Config, ConfigError};
use crate::limits::Limits;
use crate::metrics::{ConfigMetrics, Metrics};
use crate::risk::RiskState;
use crate::routing::{ChannelScore, Clock, Router};
use crate::store::idempotency::IdempotencyStore;
use crate::store::{PaymentStore, now_ms};
use crate::switches::{Switched, Switches};
use crate::upstream::{UpstreamError, Upstreams};

/// Everything a request needs from one config generation.
pub struct Snapshot {
    pub config: Config,
    pub upstreams: Upstreams,
    /// Live scores indexed by channel id of `config`.
    pub scores: Vec<Arc<ChannelScore>>,
    pub metrics: ConfigMetrics,
}

impl Snapshot {
    /// The client of the channel called `name`, if this config has it.
    pub fn client(&self, name: &str) -> Option<&crate::upstream::ChannelClient> {
        self.config
            .channel_by_name(name)
            .and_then(|c| self.upstreams.channel(c.id))
    }
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
    pub metrics: Metrics,
    pub audit: Audit,
    /// Merchant requests being handled now (load shedding).
    pub in_flight: AtomicUsize,
    /// Addresses of the in-process simulators that `sim://` channels use.
    simulators: HashMap<String, SocketAddr>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Cluster mode: the state replicas share (Redis); None on a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The versions of shared drains and enables applied here, and the switches made here
    /// that Redis has not taken yet.
    pub switches: Switches,
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file's version is the active one; nothing to do.
    Unchanged,
    Applied {
        version: String,
        changes: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("no channel named {0:?}")]
pub struct UnknownChannel(pub String);

impl Gateway {
    pub fn new(
        config: Config,
        simulators: HashMap<String, SocketAddr>,
        store: Arc<dyn PaymentStore>,
        idempotency: Arc<dyn IdempotencyStore>,
    ) -> Result<Self, UpstreamError> {
        let router = Router::new(Clock::real());
        let metrics = Metrics::new();
        let snapshot = prepare(config, &simulators, &router, &metrics)?;
        metrics.config_version(&snapshot.config.version);
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            router,
            limits: Limits::new(),
            risk: RiskState::new(),
            store,
            idempotency,
            metrics,
            audit: Audit::new(),
            in_flight: AtomicUsize::new(0),
            simulators,
            reloading: Mutex::new(()),
            cluster: None,
            switches: Switches::new(),
        })
    }

    /// Shares rate limits, idempotency claims, channel limits and switches with the other
    /// replicas through `cluster`.
    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.metrics.cluster_mode();
        let cluster = cluster.timed_by(self.metrics.cluster_calls.clone());
        self.cluster = Some(Arc::new(cluster));
        self
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reads the routes file again and, when it is valid, makes it the active config for every
    /// request that starts from now on. A rejected file changes nothing. `trigger` says what
    /// asked (for the audit trail); a file-change trigger on an unchanged version is a no-op.
    pub fn reload(&self, trigger: &'static str) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let result = Config::load(&current.config.file)
            .map_err(ReloadError::from)
            .and_then(|config| {
                if config.version == current.config.version {
                    return Ok(None);
                }
                let changes = summarize(&current.config, &config);
                let snapshot = prepare(config, &self.simulators, &self.router, &self.metrics)?;
                Ok(Some((snapshot, changes)))
            });
        match result {
            Ok(None) => Ok(Reloaded::Unchanged),
            Ok(Some((snapshot, changes))) => {
                let version = snapshot.config.version.clone();
                for gone in current
                    .config
                    .channels
                    .iter()
                    .filter(|c| snapshot.config.channel_by_name(&c.name).is_none())
                {
                    self.metrics.forget_channel(&gone.name);
                }
                self.snapshot.store(Arc::new(snapshot));
                self.metrics.reload(true);
                self.metrics.config_version(&version);
                self.store.event("reload", None, &changes.join("; "));
                self.audit.record(Entry {
                    at_unix_ms: now_ms(),
                    action: "reload",
                    trigger,
                    result: "ok",
                    version: version.clone(),
                    details: changes.clone(),
                });
                Ok(Reloaded::Applied { version, changes })
            }
            Err(error) => {
                self.metrics.reload(false);
                tracing::warn!(%error, "reload rejected; the previous config keeps serving");
                self.audit.record(Entry {
                    at_unix_ms: now_ms(),
                    action: "reload",
                    trigger,
                    result: "rejected",
                    version: current.config.version.clone(),
                    details: error.to_string().lines().map(str::to_string).collect(),
                });
                Err(error)
            }
        }
    }

    /// The emergency switch: a drained channel gets no new payment from the next request on
    /// (follow-ups of its payments still go to it); `enable` undoes it. Applied here at
    /// once; in cluster mode shared with every replica too (see `switches`).
    pub async fn set_drained(
        &self,
        channel: &str,
        drained: bool,
    ) -> Result<Switched, UnknownChannel> {
        crate::switches::switch(self, channel, drained).await
    }
}

fn prepare(
    config: Config,
    simulators: &HashMap<String, SocketAddr>,
    router: &Router,
    metrics: &Metrics,
) -> Result<Snapshot, UpstreamError> {
    let upstreams = Upstreams::build(&config, simulators)?;
    Ok(Snapshot {
        scores: router.scores_for(&config),
        metrics: metrics.for_config(&config),
        upstreams,
        config,
    })
}

/// What differs between two configs, one line per change, for the audit trail.
fn summarize(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |kind: &str, before: Vec<(String, String)>, after: Vec<(String, String)>| {
        for (name, shape) in &after {
            match before.iter().find(|(n, _)| n == name) {
                None => changes.push(format!("{kind} {name} added")),
                Some((_, old_shape)) if old_shape != shape => {
                    changes.push(format!("{kind} {name} changed"))
                }
                Some(_) => {}
            }
        }
        for (name, _) in before
            .iter()
            .filter(|(n, _)| !after.iter().any(|(a, _)| a == n))
        {
            changes.push(format!("{kind} {name} removed"));
        }
    };
    let channels = |c: &Config| {
        c.channels
            .iter()
            .map(|ch| (ch.name.clone(), format!("{ch:?}")))
            .collect()
    };
    let rules = |c: &Config| {
        c.rules
            .iter()
            .map(|r| {
                let names: Vec<&str> = r
                    .channels
                    .iter()
                    .map(|&id| c.channels[id].name.as_str())
                    .collect();
                (
                    r.name.clone(),
                    format!("{names:?} {:?} {:?}", r.strategy, r.matcher),
                )
            })
            .collect()
    };
    let merchants = |c: &Config| {
        c.merchants
            .iter()
            .map(|m| (m.id.clone(), format!("{m:?}")))
            .collect()
    };
    compare("channel", channels(old), channels(new));
    compare("rule", rules(old), rules(new));
    compare("merchant", merchants(old), merchants(new));
    let order = |c: &Config| c.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    if order(old) != order(new) && changes.iter().all(|c| !c.starts_with("rule")) {
        changes.push("rule order changed".into());
    }
    if format!("{:?}", old.routing) != format!("{:?}", new.routing) {
        changes.push("[routing] settings changed".into());
    }
    if format!("{:?}", old.server) != format!("{:?}", new.server) {
        changes
            .push("[server] settings changed (listen addresses and TLS apply at restart)".into());
    }
    // The connections to Redis and to the journal are opened at start.
    let shared_at = |c: &Config| {
        c.cluster
            .as_ref()
            .map(|c| (c.redis_url.clone(), c.key_prefix.clone(), c.timeout))
    };
    if shared_at(old) != shared_at(new) {
        changes.push(
            "[cluster] redis_url, key_prefix or timeout_ms changed (they apply at restart)".into(),
        );
    }
    if old.journal != new.journal {
        changes.push("[journal] settings changed (they apply at restart)".into());
    }
    if changes.is_empty() {
        changes.push("no effective change (comments or formatting)".into());
    }
    changes
}
