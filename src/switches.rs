//! Drains and enables, the emergency switch: applied on this replica at once, and in cluster
//! mode shared with every replica through the record in Redis (`cluster::switches`), whose
//! switches this module applies here too.
//!
//! - An operator's switch takes effect here before Redis is asked anything, so it works while
//!   Redis is down. It is journaled and audited here, on the replica the operator called, and
//!   only here: the other replicas audit it (trigger `peer`) and count it, but do not journal
//!   it, so a journal shared by the replicas holds one event per operator action.
//! - A switch Redis did not take is pending: it wins over any switch made before it (by the
//!   acting replicas' clocks) and is written to the record when Redis answers again (checked
//!   every second, and at every reconnect), unless the record holds a later one by then.
//! - A shared switch is applied only when its version is newer than the last one applied
//!   here, so messages that arrive late or twice change nothing. The subscription loses what
//!   is published while it is disconnected: after every (re)subscription the whole record is
//!   read again, so a replica started or reconnected later has the same drains. A drain
//!   applied here that the record has lost altogether (Redis restarted empty) is written
//!   again, so that replicas started afterwards come up with it too.
//!
//! Drained state lives on the channel's live score, kept by name across reloads, so a reload
//! of routes.toml never undoes a drain, shared or not. Owns the versions applied here and the
//! pending switches; never sits on the payment path (its lock is taken by switches only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::Entry;
use crate::cluster::switches::{Message, Record, Write};
use crate::cluster::{Cluster, ClusterError};
use crate::gateway::{Gateway, UnknownChannel};
use crate::metrics::SwitchOrigin;
use crate::store::now_ms;

/// How often the subscription is pinged and pending switches are pushed: well within the
/// second a switch has to reach every replica.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Waits between attempts to subscribe again: the first soon (a restarting Redis is back in
/// well under a second), then doubling up to a second, so a switch made while Redis was down
/// reaches the others at most about a second after it is back.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The `feature` label of `paygate_cluster_errors_total`.
const FEATURE: &str = crate::cluster::SWITCHES;

/// What the operator's switch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// Cluster mode: whether the record (and so every replica) has it; None on a single node.
    pub shared: Option<bool>,
}

/// The switch record as this replica knows it.
#[derive(Default)]
pub struct Switches {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Per channel, the last shared switch applied here.
    applied: HashMap<String, Record>,
    /// Switches made here that the record may not hold yet.
    pending: HashMap<String, Pending>,
    /// Per channel, the newest record passed over for a later pending switch: it wins after
    /// all if it turns out newer in the record's own order than that switch once written.
    deferred: HashMap<String, Record>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    drained: bool,
    at_ms: u64,
}

impl Book {
    /// Notes a switch made here: it wins over any record made before it.
    fn made_here(&mut self, channel: &str, drained: bool, at_ms: u64) {
        self.pending
            .insert(channel.to_string(), Pending { drained, at_ms });
    }

    /// The record to apply, if `record` changes what this replica should hold.
    fn take(&mut self, record: Record) -> Option<Record> {
        let channel = record.channel.clone();
        let cleared = match self.pending.get(&channel) {
            Some(pending) if pending.at_ms > record.at_ms => {
                let newest = self
                    .deferred
                    .get(&channel)
                    .is_none_or(|d| d.version < record.version);
                if newest {
                    self.deferred.insert(channel, record);
                }
                return None;
            }
            Some(_) => self.pending.remove(&channel).is_some(),
            None => false,
        };
        let applied = self.applied.get(&channel).map_or(0, |r| r.version);
        // A record that clears a pending switch is applied even at the version already
        // applied: the pending switch changed the channel since.
        if record.version < applied || (record.version == applied && !cleared) {
            return None;
        }
        let record = match self.deferred.remove(&channel) {
            Some(deferred) if deferred.version > record.version => deferred,
            _ => record,
        };
        self.applied.insert(channel, record.clone());
        Some(record)
    }

    /// The drains applied here that the whole record, as just read, no longer has at all:
    /// Redis lost them (it restarted without keeping its data).
    fn lost(&self, record: &[Record]) -> Vec<Record> {
        self.applied
            .values()
            .filter(|held| held.drained && !record.iter().any(|r| r.channel == held.channel))
            .cloned()
            .collect()
    }

    fn pending(&self) -> Vec<(String, Pending)> {
        self.pending
            .iter()
            .map(|(channel, p)| (channel.clone(), *p))
            .collect()
    }
}

impl Switches {
    pub fn new() -> Self {
        Self::default()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // The book holds no invariant a panic could break halfway: keep using it.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether switches made here wait for Redis.
    pub fn has_pending(&self) -> bool {
        !self.book().pending.is_empty()
    }
}

/// The operator's switch on this replica: applied here at once, then shared (cluster mode).
/// A drained channel gets no new payment from the next request on (follow-ups of its
/// payments still go to it); `enable` undoes it.
pub async fn switch(
    gateway: &Gateway,
    channel: &str,
    drained: bool,
) -> Result<Switched, UnknownChannel> {
    let snapshot = gateway.snapshot();
    let Some(known) = snapshot.config.channel_by_name(channel) else {
        return Err(UnknownChannel(channel.to_string()));
    };
    let at_ms = now_ms();
    {
        let mut book = gateway.switches.book();
        snapshot.scores[known.id].set_drained(drained);
        if gateway.cluster.is_some() {
            book.made_here(channel, drained, at_ms);
        }
    }
    let shared = match &gateway.cluster {
        None => None,
        Some(cluster) => {
            gateway.metrics.switch_applied(SwitchOrigin::Local);
            Some(share(gateway, cluster, channel, drained, at_ms).await)
        }
    };
    let action = if drained { "drain" } else { "enable" };
    let detail = match shared {
        Some(false) => "admin; not shared yet: Redis did not answer",
        _ => "admin",
    };
    gateway.store.event(action, Some(channel), detail);
    let mut details = vec![format!("channel {channel}")];
    match shared {
        Some(true) => details.push("shared with every replica".into()),
        Some(false) => {
            details.push("not shared yet (Redis did not answer); pushed when it does".into())
        }
        None => {}
    }
    gateway.audit.record(Entry {
        at_unix_ms: at_ms,
        action,
        trigger: "admin",
        result: "ok",
        version: snapshot.config.version.clone(),
        details,
    });
    Ok(Switched { shared })
}

/// Writes a switch made here to the record; false when Redis did not take it (it stays
/// pending).
async fn share(
    gateway: &Gateway,
    cluster: &Cluster,
    channel: &str,
    drained: bool,
    at_ms: u64,
) -> bool {
    match cluster
        .write_switch(channel, drained, at_ms, Write::Now)
        .await
    {
        Ok(written) => {
            receive(gateway, cluster, written.record);
            true
        }
        Err(error) => {
            gateway.metrics.cluster_error(FEATURE);
            tracing::warn!(%channel, %error, "switch applied here but not shared: Redis did not answer; it is pushed when Redis is back");
            false
        }
    }
}

/// Applies a shared switch here when it is newer than what this replica holds.
fn receive(gateway: &Gateway, cluster: &Cluster, record: Record) {
    let mut book = gateway.switches.book();
    let Some(record) = book.take(record) else {
        return;
    };
    let score = gateway.router.score(&record.channel);
    let changed = score.is_drained() != record.drained;
    score.set_drained(record.drained);
    drop(book);
    if !changed || record.origin == cluster.replica() {
        return;
    }
    gateway.metrics.switch_applied(SwitchOrigin::Peer);
    let action = if record.drained { "drain" } else { "enable" };
    tracing::info!(channel = %record.channel, action, origin = %record.origin, version = record.version, "switch applied from another replica");
    gateway.audit.record(Entry {
        at_unix_ms: now_ms(),
        action,
        trigger: "peer",
        result: "ok",
        version: gateway.snapshot().config.version.clone(),
        details: vec![
            format!("channel {}", record.channel),
            format!(
                "from replica {} (version {})",
                record.origin, record.version
            ),
        ],
    });
}

/// Pushes the switches made here that Redis did not take, then applies the whole record.
async fn sync(gateway: &Gateway, cluster: &Cluster) -> Result<(), ClusterError> {
    let pending = gateway.switches.book().pending();
    for (channel, switch) in pending {
        let written = cluster
            .write_switch(&channel, switch.drained, switch.at_ms, Write::IfLatest)
            .await?;
        if written.replaced {
            tracing::info!(%channel, "switch made while Redis was down now shared");
        } else {
            tracing::info!(%channel, "switch made while Redis was down superseded by a later one");
        }
        receive(gateway, cluster, written.record);
    }
    let record = cluster.read_switches().await?;
    let lost = gateway.switches.book().lost(&record);
    for switch in record {
        receive(gateway, cluster, switch);
    }
    // A drain is never undone by Redis forgetting it: written again, as made then, unless
    // another replica has written a later switch of the channel meanwhile.
    for drain in lost {
        let written = cluster
            .write_switch(&drain.channel, true, drain.at_ms, Write::IfLatest)
            .await?;
        tracing::warn!(channel = %drain.channel, rewritten = written.replaced, "Redis had lost a drain held here: written again");
        receive(gateway, cluster, written.record);
    }
    Ok(())
}

/// Cluster mode: reads the whole record once (so this replica starts with the drains of the
/// others), then returns the task that follows it; None on a single node.
pub async fn start(gateway: &Arc<Gateway>) -> Option<impl Future<Output = ()> + Send + 'static> {
    let cluster = gateway.cluster.clone()?;
    if let Err(error) = sync(gateway, &cluster).await {
        gateway.metrics.cluster_error(FEATURE);
        tracing::warn!(%error, "cannot read the shared switches yet; retrying in the background");
    }
    Some(follow(gateway.clone(), cluster))
}

/// Subscribes, reads the whole record, applies what is published; again after every loss of
/// the connection.
async fn follow(gateway: Arc<Gateway>, cluster: Arc<Cluster>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Err(error) = session(&gateway, &cluster, &mut backoff).await;
        gateway.metrics.cluster_error(FEATURE);
        tracing::warn!(%error, "switch subscription lost; subscribing again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One subscription, until its connection fails.
async fn session(
    gateway: &Gateway,
    cluster: &Cluster,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, ClusterError> {
    let mut subscription = cluster.subscribe_switches().await?;
    *backoff = MIN_BACKOFF;
    sync(gateway, cluster).await?;
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.tick().await;
    loop {
        tokio::select! {
            message = subscription.next() => match message {
                Some(Message::Switch(record)) => receive(gateway, cluster, record),
                Some(Message::Unreadable) => {
                    tracing::warn!("unreadable channel switch published; ignored");
                }
                None => return Err(ClusterError::Closed),
            },
            _ = check.tick() => {
                subscription.ping().await?;
                if gateway.switches.has_pending() {
                    sync(gateway, cluster).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(channel: &str, drained: bool, version: u64, at_ms: u64, origin: &str) -> Record {
        Record {
            channel: channel.into(),
            drained,
            version,
            at_ms,
            origin: origin.into(),
        }
    }

    #[test]
    fn only_newer_versions_apply() {
        let mut book = Book::default();
        assert!(book.take(record("a", true, 10, 100, "p")).is_some());
        assert_eq!(book.take(record("a", false, 9, 200, "p")), None, "older");
        assert_eq!(book.take(record("a", true, 10, 100, "p")), None, "repeat");
        assert!(book.take(record("a", false, 11, 50, "p")).is_some());
        assert!(
            book.take(record("b", true, 1, 1, "p")).is_some(),
            "per channel"
        );
    }

    #[test]
    fn a_pending_switch_wins_over_records_made_before_it() {
        let mut book = Book::default();
        book.made_here("a", true, 500);
        assert_eq!(book.take(record("a", false, 10, 400, "p")), None);
        // Written later: its record clears the pending switch and is applied.
        let ours = book.take(record("a", true, 11, 500, "me"));
        assert_eq!(ours.map(|r| r.drained), Some(true));
        assert!(book.pending.is_empty());
        // A peer's switch made after it applies as usual.
        assert!(book.take(record("a", false, 12, 600, "p")).is_some());
    }

    #[test]
    fn a_later_record_kept_by_redis_clears_the_pending_switch_even_at_the_applied_version() {
        let mut book = Book::default();
        assert!(book.take(record("a", false, 10, 700, "p")).is_some());
        // Made here while Redis was down, on a clock behind the peer's.
        book.made_here("a", true, 500);
        // Redis kept the peer's switch: applied again, the pending one is dropped.
        let kept = book.take(record("a", false, 10, 700, "p"));
        assert_eq!(kept.map(|r| r.drained), Some(false));
        assert!(book.pending.is_empty());
    }

    #[test]
    fn a_deferred_record_later_in_redis_order_wins_over_the_pending_one() {
        let mut book = Book::default();
        book.made_here("a", true, 500);
        // A peer wrote after us in Redis, on a clock behind ours: passed over for now.
        assert_eq!(book.take(record("a", false, 12, 400, "p")), None);
        // Our write comes back with an older version: the record's order says the peer's won.
        let applied = book.take(record("a", true, 11, 500, "me"));
        assert_eq!(applied.map(|r| (r.drained, r.version)), Some((false, 12)));
        assert_eq!(book.take(record("a", true, 11, 500, "me")), None);
    }
}
