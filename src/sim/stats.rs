//! What the simulator saw: request counters, outcomes, idempotency keys (which also hold the
//! first answer so a duplicate gets it again) and a ring of the most recent requests, all
//! served as JSON by `GET /_sim/stats`.
//!
//! Owns counting only. Hot-path updates are atomics and sharded maps; the recent ring takes
//! one short per-slot lock. Must never record card data: the recent ring keeps only the
//! fields listed in [`RecentRequest`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use serde::ser::SerializeMap;

use super::behavior::Fault;
use super::ledger::{Answer, Status};

/// At most this many distinct idempotency keys are remembered; a million covers any test
/// and a long load run while bounding memory (later keys are counted, not deduplicated).
pub const MAX_TRACKED_KEYS: u64 = 1_000_000;

/// How many recent requests `/_sim/stats` shows; enough for a test to find its own.
pub const RECENT_CAPACITY: usize = 100;

#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.get())
    }
}

/// One counter per way a `POST /payments` can end.
#[derive(Debug, Default, Serialize)]
struct Outcomes {
    succeeded: Counter,
    declined: Counter,
    pending: Counter,
    #[serde(flatten)]
    faults: Faults,
}

impl Outcomes {
    fn status(&self, status: Status) -> &Counter {
        match status {
            Status::Succeeded => &self.succeeded,
            Status::Declined => &self.declined,
            Status::Pending => &self.pending,
        }
    }

    fn clear(&self) {
        for counter in [&self.succeeded, &self.declined, &self.pending] {
            counter.clear();
        }
        self.faults.clear();
    }
}

/// One counter per injected fault, in `Fault::ALL` order, serialized by fault name.
#[derive(Debug, Default)]
struct Faults([Counter; Fault::ALL.len()]);

impl Faults {
    fn of(&self, fault: Fault) -> &Counter {
        let index = Fault::ALL.iter().position(|f| *f == fault).unwrap_or(0);
        &self.0[index]
    }

    fn clear(&self) {
        for counter in &self.0 {
            counter.clear();
        }
    }
}

impl Serialize for Faults {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Fault::ALL.len()))?;
        for (fault, counter) in Fault::ALL.iter().zip(&self.0) {
            map.serialize_entry(fault.name(), counter)?;
        }
        map.end()
    }
}

/// How a payment request ended, for the `outcomes` counters.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Answered(Status),
    Fault(Fault),
}

/// Which processed request to count.
#[derive(Debug, Clone, Copy)]
pub enum Processed {
    Payment,
    Capture,
    Refund,
    StatusQuery,
    /// Cancels (voids) of an authorization.
    Cancel,
}

/// An idempotency key: how often it came, and the first answer given for it.
#[derive(Debug)]
struct KeyRecord {
    count: u64,
    answer: Answer,
}

/// Whether an answer is new or a replay of a key seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    New(Answer),
    Duplicate(Answer),
}

/// A request as `recent` shows it. Never holds a card number, CVC or expiry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecentRequest {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub paygate_id: Option<String>,
    pub amount: Option<u64>,
    pub currency: Option<String>,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    /// The Adyen dialect's `X-API-Key` (test credentials only, as `authorization` is); absent
    /// from the JSON for `paygate-v1` requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// Every counter the simulator keeps.
#[derive(Debug)]
pub struct Stats {
    requests: Counter,
    payments: Counter,
    captures: Counter,
    refunds: Counter,
    cancels: Counter,
    status_queries: Counter,
    duplicates: Counter,
    untracked_keys: Counter,
    lookups: Counter,
    idle_closed: Counter,
    outcomes: Outcomes,
    faults: Faults,
    tracked_keys: AtomicU64,
    keys: DashMap<Box<str>, KeyRecord, FxBuildHasher>,
    recent_next: AtomicU64,
    recent: [Mutex<Option<RecentRequest>>; RECENT_CAPACITY],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: Counter::default(),
            payments: Counter::default(),
            captures: Counter::default(),
            refunds: Counter::default(),
            cancels: Counter::default(),
            status_queries: Counter::default(),
            duplicates: Counter::default(),
            untracked_keys: Counter::default(),
            lookups: Counter::default(),
            idle_closed: Counter::default(),
            outcomes: Outcomes::default(),
            faults: Faults::default(),
            tracked_keys: AtomicU64::new(0),
            keys: DashMap::default(),
            recent_next: AtomicU64::new(0),
            recent: std::array::from_fn(|_| Mutex::new(None)),
        }
    }
}

impl Stats {
    /// A request arrived at a protocol endpoint (not `/_sim/`).
    pub fn request(&self, recent: RecentRequest) {
        self.requests.add();
        let slot = self.recent_next.fetch_add(1, Ordering::Relaxed) as usize % RECENT_CAPACITY;
        *lock(&self.recent[slot]) = Some(recent);
    }

    pub fn processed(&self, kind: Processed) {
        match kind {
            Processed::Payment => self.payments.add(),
            Processed::Capture => self.captures.add(),
            Processed::Refund => self.refunds.add(),
            Processed::StatusQuery => self.status_queries.add(),
            Processed::Cancel => self.cancels.add(),
        }
    }

    /// A fault was injected on any endpoint.
    pub fn fault(&self, fault: Fault) {
        self.faults.of(fault).add();
    }

    /// How a `POST /payments` ended.
    pub fn payment_outcome(&self, ending: Ending) {
        let counter = match ending {
            Ending::Answered(status) => self.outcomes.status(status),
            Ending::Fault(fault) => self.outcomes.faults.of(fault),
        };
        counter.add();
    }

    /// The first answer for `key`, or `decide()`'s answer remembered as the first. The entry
    /// (shard) lock is held while deciding, so two concurrent first requests with the same
    /// key produce one payment, as at a real PSP.
    pub fn replay_or_decide(&self, key: &str, decide: impl FnOnce() -> Answer) -> Replay {
        if let Some(answer) = self.count_duplicate(key) {
            return Replay::Duplicate(answer);
        }
        if !self.reserve_key() {
            self.untracked_keys.add();
            return Replay::New(decide());
        }
        match self.keys.entry(Box::from(key)) {
            Entry::Occupied(mut seen) => {
                self.tracked_keys.fetch_sub(1, Ordering::Relaxed);
                self.duplicates.add();
                seen.get_mut().count += 1;
                Replay::Duplicate(seen.get().answer.clone())
            }
            Entry::Vacant(slot) => {
                let answer = decide();
                slot.insert(KeyRecord {
                    count: 1,
                    answer: answer.clone(),
                });
                Replay::New(answer)
            }
        }
    }

    /// A request replayed from its idempotency key by a dialect that keeps its own answers.
    pub fn duplicate(&self) {
        self.duplicates.add();
    }

    /// A lookup by `paygate_id` (the key the payment was sent with).
    pub fn lookup(&self) {
        self.lookups.add();
    }

    /// A request that arrived on a connection idle past `idle_close_ms` was dropped unread.
    pub fn idle_closed(&self) {
        self.idle_closed.add();
    }

    /// The first answer for `key` and how many requests carried it, if it was processed.
    pub fn first_answer(&self, key: &str) -> Option<(u64, Answer)> {
        self.keys
            .get(key)
            .map(|seen| (seen.count, seen.answer.clone()))
    }

    /// The first answer for `key`, counting this request as a duplicate; None when new.
    pub fn replay(&self, key: &str) -> Option<Answer> {
        self.count_duplicate(key)
    }

    /// Remembers `answer` as the first for `key` (an operation just carried out).
    pub fn remember(&self, key: &str, answer: Answer) {
        if !self.reserve_key() {
            self.untracked_keys.add();
            return;
        }
        self.keys
            .entry(Box::from(key))
            .or_insert(KeyRecord { count: 1, answer });
    }

    /// Looks up without allocating the key, the common case for a retry.
    fn count_duplicate(&self, key: &str) -> Option<Answer> {
        let mut seen = self.keys.get_mut(key)?;
        seen.count += 1;
        self.duplicates.add();
        Some(seen.answer.clone())
    }

    /// An atomic count instead of `DashMap::len`, which would lock every shard per request.
    fn reserve_key(&self) -> bool {
        if self.tracked_keys.fetch_add(1, Ordering::Relaxed) < MAX_TRACKED_KEYS {
            return true;
        }
        self.tracked_keys.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Forgets everything (the recent ring included).
    pub fn clear(&self) {
        for counter in [
            &self.requests,
            &self.payments,
            &self.captures,
            &self.refunds,
            &self.cancels,
            &self.status_queries,
            &self.duplicates,
            &self.untracked_keys,
            &self.lookups,
            &self.idle_closed,
        ] {
            counter.clear();
        }
        self.outcomes.clear();
        self.faults.clear();
        self.keys.clear();
        self.tracked_keys.store(0, Ordering::Relaxed);
        for slot in &self.recent {
            *lock(slot) = None;
        }
        self.recent_next.store(0, Ordering::Relaxed);
    }

    /// The recent requests, oldest first.
    fn recent(&self) -> Vec<RecentRequest> {
        let end = self.recent_next.load(Ordering::Relaxed);
        let start = end.saturating_sub(RECENT_CAPACITY as u64);
        (start..end)
            .filter_map(|index| lock(&self.recent[index as usize % RECENT_CAPACITY]).clone())
            .collect()
    }

    /// The `/_sim/stats` document.
    pub fn to_json(&self, name: &str, stored_payments: u64) -> Result<Vec<u8>, serde_json::Error> {
        let view = StatsView {
            name,
            requests: &self.requests,
            payments: &self.payments,
            captures: &self.captures,
            refunds: &self.refunds,
            cancels: &self.cancels,
            status_queries: &self.status_queries,
            outcomes: &self.outcomes,
            faults: &self.faults,
            duplicates: &self.duplicates,
            untracked_keys: &self.untracked_keys,
            lookups: &self.lookups,
            idle_closed: &self.idle_closed,
            stored_payments,
            idempotency_keys: KeyCounts(&self.keys),
            recent: self.recent(),
        };
        serde_json::to_vec(&view)
    }
}

/// A poisoned slot only means a panic elsewhere while writing a log entry; the entry is
/// still a whole value, so keep using it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Serialize)]
struct StatsView<'a> {
    name: &'a str,
    requests: &'a Counter,
    payments: &'a Counter,
    captures: &'a Counter,
    refunds: &'a Counter,
    cancels: &'a Counter,
    status_queries: &'a Counter,
    outcomes: &'a Outcomes,
    faults: &'a Faults,
    duplicates: &'a Counter,
    untracked_keys: &'a Counter,
    lookups: &'a Counter,
    idle_closed: &'a Counter,
    stored_payments: u64,
    idempotency_keys: KeyCounts<'a>,
    recent: Vec<RecentRequest>,
}

/// Streams `{"key": count}` straight from the map, without copying a million keys first.
struct KeyCounts<'a>(&'a DashMap<Box<str>, KeyRecord, FxBuildHasher>);

impl Serialize for KeyCounts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for entry in self.0.iter() {
            map.serialize_entry(&**entry.key(), &entry.value().count)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(stats: &Stats) -> serde_json::Value {
        serde_json::from_slice(&stats.to_json("t", 0).unwrap()).unwrap()
    }

    #[test]
    fn duplicates_replay_the_first_answer_and_count() {
        let stats = Stats::default();
        let first = stats.replay_or_decide("k1", || Answer::succeeded(1));
        assert_eq!(first, Replay::New(Answer::succeeded(1)));
        let again = stats.replay_or_decide("k1", || Answer::declined(2, "x"));
        assert_eq!(again, Replay::Duplicate(Answer::succeeded(1)));
        let value = json(&stats);
        assert_eq!(value["duplicates"], 1);
        assert_eq!(value["idempotency_keys"]["k1"], 2);
    }

    #[test]
    fn recent_keeps_the_last_hundred_in_order() {
        let stats = Stats::default();
        for index in 0..150 {
            stats.request(RecentRequest {
                method: "GET".into(),
                path: format!("/payments/{index}"),
                ..RecentRequest::default()
            });
        }
        let value = json(&stats);
        let recent = value["recent"].as_array().unwrap();
        assert_eq!(recent.len(), RECENT_CAPACITY);
        assert_eq!(recent[0]["path"], "/payments/50");
        assert_eq!(recent[99]["path"], "/payments/149");
        assert_eq!(value["requests"], 150);
        stats.clear();
        let cleared = json(&stats);
        assert_eq!(cleared["requests"], 0);
        assert_eq!(cleared["recent"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn outcomes_and_faults_are_counted_apart() {
        let stats = Stats::default();
        stats.payment_outcome(Ending::Answered(Status::Pending));
        stats.payment_outcome(Ending::Fault(Fault::Hang));
        stats.fault(Fault::Hang);
        stats.fault(Fault::Unavailable);
        let value = json(&stats);
        assert_eq!(value["outcomes"]["pending"], 1);
        assert_eq!(value["outcomes"]["hang"], 1);
        assert_eq!(value["outcomes"]["error_503"], 0);
        assert_eq!(value["faults"]["error_503"], 1);
        assert_eq!(value["faults"]["hang"], 1);
        assert!(value["faults"].get("pending").is_none());
    }
}
