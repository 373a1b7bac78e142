//! The PSP simulator (`paygate mock-psp`): an HTTP/1.1 + HTTP/2 server speaking the
//! `paygate-v1` channel protocol, or Adyen's Checkout API v72 (`--dialect adyen`), with
//! configurable outcomes, latency and faults, used by the integration tests, the benchmarks,
//! and the gateway's in-process simulators.
//!
//! Owns its own listener, ledger of payments and counters (served at `/_sim/stats`). Must
//! never be the bottleneck of a proxy benchmark (no shared lock and no large allocation per
//! request), must never write a card number, CVC or expiry anywhere, and must not depend on
//! the gateway's modules other than `crate::tls`.
//!
//! Layout: `behavior` (what to do: rates, latency, schedule), `protocol` (the `paygate-v1`
//! endpoints and the fault and outcome helpers both dialects share), `adyen` (the Adyen
//! endpoints and notifications), `ledger` (stored payments), `stats` (counters and
//! `/_sim/stats`), `server` (listening, TLS, shutdown), `cli` (the `mock-psp` flags).

mod adyen;
mod behavior;
mod cli;
mod ledger;
mod protocol;
mod server;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use adyen::Notifier as AdyenNotifier;
pub use behavior::{Behavior, Latency, Phase, Schedule};
pub use cli::{MockPspArgs, run};
pub use ledger::MAX_STORED_PAYMENTS;
pub use server::{serve, spawn};
pub use stats::{MAX_TRACKED_KEYS, RECENT_CAPACITY};

use ledger::Ledger;
use stats::Stats;

/// Why the simulator could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    #[error("cannot read schedule {}: {source}", path.display())]
    ScheduleRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}:{line}:{column}: {message}")]
    ScheduleParse {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid simulator behavior: {}", .0.join("; "))]
    InvalidBehavior(Vec<String>),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot install the shutdown signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("cannot encode the stats: {0}")]
    Stats(#[from] serde_json::Error),
}

/// The API a simulator speaks on its protocol endpoints (`/_sim/` is the same for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
pub enum Dialect {
    /// paygate's own channel protocol (CONTRACT.md, "The PSP side").
    #[default]
    #[serde(rename = "paygate-v1")]
    #[value(name = "paygate-v1")]
    PaygateV1,
    /// Adyen Checkout API v72: `/payments` and its captures, refunds and cancels.
    #[serde(rename = "adyen")]
    #[value(name = "adyen")]
    Adyen,
}

/// Shared simulator state: behavior, schedule, start instant, stored payments, stats.
#[derive(Debug)]
pub struct Simulator {
    name: String,
    dialect: Dialect,
    behavior: Behavior,
    schedule: Schedule,
    started: Instant,
    /// Never reset, so a reference handed out before `/_sim/reset` cannot name a later payment.
    next_reference: AtomicU64,
    ledger: Ledger,
    stats: Stats,
    /// The Adyen dialect's idempotency answers and per-`reference` records (empty otherwise).
    adyen: adyen::Book,
    notifier: Option<adyen::Notifier>,
}

impl Simulator {
    /// A simulator whose schedule clock starts now. The behaviors are used as given; call
    /// [`Behavior::problems`] and [`Schedule::problems`] first to reject invalid ones.
    pub fn new(name: String, behavior: Behavior, schedule: Schedule) -> Arc<Self> {
        Self::with_dialect(name, behavior, schedule, Dialect::PaygateV1, None)
    }

    /// A simulator speaking `dialect`; `notifier` (Adyen only) posts a notification after
    /// each payment and modification.
    pub fn with_dialect(
        name: String,
        behavior: Behavior,
        schedule: Schedule,
        dialect: Dialect,
        notifier: Option<adyen::Notifier>,
    ) -> Arc<Self> {
        Arc::new(Simulator {
            adyen: adyen::Book::new(&name),
            notifier,
            dialect,
            name,
            behavior,
            schedule,
            started: Instant::now(),
            next_reference: AtomicU64::new(1),
            ledger: Ledger::default(),
            stats: Stats::default(),
        })
    }

    /// The name used in `psp_reference`s (`<name>-<n>`) and in the stats.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The behavior in force now: the last schedule phase that has started, else the base.
    pub fn behavior_now(&self) -> &Behavior {
        let elapsed = self.started.elapsed().as_secs();
        self.schedule.behavior_at(&self.behavior, elapsed)
    }

    /// The `/_sim/stats` document, for in-process callers.
    pub fn stats(&self) -> Result<serde_json::Value, SimError> {
        Ok(serde_json::from_slice(&self.stats_bytes()?)?)
    }

    /// Forgets the stats and the stored payments (what `POST /_sim/reset` does). The schedule
    /// clock and the reference counter keep running.
    pub fn reset(&self) {
        self.stats.clear();
        self.ledger.clear();
        self.adyen.clear();
    }

    fn stats_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.stats.to_json(&self.name, self.ledger.stored())
    }

    fn next_reference(&self) -> u64 {
        self.next_reference.fetch_add(1, Ordering::Relaxed)
    }

    /// The number in `<name>-<n>`; `None` for a reference this simulator never issued.
    fn parse_reference(&self, text: &str) -> Option<u64> {
        text.strip_prefix(self.name.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_only_for_this_name() {
        let sim = Simulator::new("psp-b".into(), Behavior::default(), Schedule::default());
        assert_eq!(sim.parse_reference("psp-b-42"), Some(42));
        assert_eq!(sim.parse_reference("psp-a-42"), None);
        assert_eq!(sim.parse_reference("psp-b-"), None);
        assert_eq!(sim.parse_reference("psp-b42"), None);
        assert_eq!(sim.next_reference(), 1);
        assert_eq!(sim.next_reference(), 2);
    }

    #[test]
    fn stats_start_empty() {
        let sim = Simulator::new("m".into(), Behavior::default(), Schedule::default());
        let stats = sim.stats().unwrap();
        assert_eq!(stats["name"], "m");
        assert_eq!(stats["requests"], 0);
        assert_eq!(stats["stored_payments"], 0);
        assert_eq!(stats["idempotency_keys"], serde_json::json!({}));
    }
}
