//! Idempotency records: for each (merchant, `Idempotency-Key`), the hash of the first
//! request and, once it is answered, the answer to replay.
//!
//! The store is a trait so that a shared backend can replace the memory one. It keeps
//! bounded memory: at `max_keys` new keys are refused (the caller answers 503) rather than
//! evicting a live record, which could let a retried payment through twice; expired records
//! are swept in the background. Only successful answers are kept: a request that failed
//! without charging may be retried with the same key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use crate::config::Idempotency as Settings;

/// An answer as it will be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status the first request got (the replay answers 200).
    pub status: u16,
    pub body: Bytes,
    pub channel: Option<String>,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// First time: process it, then call `finish`.
    Proceed,
    Replay(StoredResponse),
    /// The key made this payment, or capture or refund ([`target`]): the repeat is answered
    /// with it as it now stands.
    Made(String),
    /// Same key, different request.
    Mismatch,
    /// The first request with this key is still being processed; the receiver changes when
    /// it finishes (for callers that wait).
    InFlight(watch::Receiver<()>),
    /// The store is at `max_keys`.
    Full,
    /// The journal could not say whether the key was used before: nothing may be sent.
    Unreadable,
    /// The key is held as in flight; whether it was used before is for `look_up` to say.
    LookUp,
}

/// A record's identity: merchant and key, in one string (the merchant's length first, so no
/// pair of merchant and key can spell another's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn new(merchant: &str, key: &str) -> Self {
        Self(format!("{}:{merchant}{key}", merchant.len()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a key made, as its record names it: a payment (`pay_...`), or one capture or refund
/// of it (`pay_.../cap_...`).
pub fn target(payment_id: &str, operation_id: Option<&str>) -> String {
    match operation_id {
        Some(operation) => format!("{payment_id}/{operation}"),
        None => payment_id.to_string(),
    }
}

/// The payment and operation a [`target`] names.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('/') {
        Some((payment, operation)) => (payment, Some(operation)),
        None => (target, None),
    }
}

/// A `look_up` under way.
pub type Looking<'a> = std::pin::Pin<Box<dyn Future<Output = Begin> + Send + 'a>>;

pub trait IdempotencyStore: Send + Sync + 'static {
    fn begin(
        &self,
        scope: &Scope,
        request_hash: [u8; 32],
        now: Instant,
        settings: &Settings,
    ) -> Begin;
    /// After `begin` said `LookUp`: asks the store's journal whether the key was used
    /// before, without blocking the caller's thread.
    fn look_up<'a>(&'a self, _scope: &'a Scope, _request_hash: [u8; 32]) -> Looking<'a> {
        Box::pin(std::future::ready(Begin::Proceed))
    }
    /// Records the answer of the request in flight (`None`: it failed and the key is free
    /// again). A key already answered keeps its first answer and is never freed. True when
    /// this call recorded an answer.
    fn finish(
        &self,
        scope: &Scope,
        answer: Option<StoredResponse>,
        now: Instant,
        settings: &Settings,
    ) -> bool;
    /// The request in flight under `scope` made `target` (see [`target`]), about to be sent
    /// to a PSP: a store that survives a crash records the link before the call.
    fn bind(&self, _scope: &Scope, _target: &str, _settings: &Settings) {}
    /// Resolves once every answer finished so far is as durable as the store promises (at
    /// once for memory), so that a retry after a crash replays it rather than charging again.
    fn flushed(&self) -> super::Durable {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Other replicas read the records this store writes (a shared journal): once a request
    /// has bound what it made, any replica finds it here.
    fn shared(&self) -> bool {
        false
    }
    /// Drops expired records; returns how many it dropped now (a store may drop them later).
    fn sweep(&self, now: Instant) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum State {
    /// Dropped (so waiters wake) when the first request finishes.
    InFlight(watch::Sender<()>),
    Done {
        answer: StoredResponse,
        expires: Instant,
    },
}

struct Record {
    request_hash: [u8; 32],
    state: State,
}

#[derive(Default)]
pub struct MemoryIdempotency {
    records: DashMap<Scope, Record>,
    /// Kept beside the map: `DashMap::len` locks every shard, once per request is too many.
    count: AtomicUsize,
}

impl MemoryIdempotency {
    pub fn new() -> Self {
        Self::default()
    }
}

fn in_flight() -> (State, watch::Receiver<()>) {
    let (sender, receiver) = watch::channel(());
    (State::InFlight(sender), receiver)
}

impl IdempotencyStore for MemoryIdempotency {
    fn begin(
        &self,
        scope: &Scope,
        request_hash: [u8; 32],
        now: Instant,
        settings: &Settings,
    ) -> Begin {
        match self.records.entry(scope.clone()) {
            Entry::Vacant(_) if self.count.load(Ordering::Relaxed) >= settings.max_keys => {
                Begin::Full
            }
            Entry::Vacant(vacant) => {
                self.count.fetch_add(1, Ordering::Relaxed);
                vacant.insert(Record {
                    request_hash,
                    state: in_flight().0,
                });
                Begin::Proceed
            }
            Entry::Occupied(mut occupied) => {
                let record = occupied.get_mut();
                if let State::Done { expires, .. } = &record.state
                    && *expires <= now
                {
                    *record = Record {
                        request_hash,
                        state: in_flight().0,
                    };
                    return Begin::Proceed;
                }
                if record.request_hash != request_hash {
                    return Begin::Mismatch;
                }
                match &record.state {
                    State::Done { answer, .. } => Begin::Replay(answer.clone()),
                    State::InFlight(sender) => Begin::InFlight(sender.subscribe()),
                }
            }
        }
    }

    fn finish(
        &self,
        scope: &Scope,
        answer: Option<StoredResponse>,
        now: Instant,
        settings: &Settings,
    ) -> bool {
        match answer {
            // Replacing the state drops the sender, which wakes every waiter.
            Some(answer) => match self.records.get_mut(scope) {
                Some(mut record) if matches!(record.state, State::InFlight(_)) => {
                    record.state = State::Done {
                        answer,
                        expires: now + settings.ttl,
                    };
                    true
                }
                _ => false,
            },
            None => {
                let freed = self.records.remove_if(scope, |_, record| {
                    matches!(record.state, State::InFlight(_))
                });
                if freed.is_some() {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
                false
            }
        }
    }

    fn sweep(&self, now: Instant) -> usize {
        let mut swept = 0;
        self.records.retain(|_, record| {
            let expired = matches!(record.state, State::Done { expires, .. } if expires <= now);
            swept += usize::from(expired);
            !expired
        });
        self.count.fetch_sub(swept, Ordering::Relaxed);
        swept
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(max_keys: usize) -> Settings {
        Settings {
            ttl: Duration::from_secs(60),
            max_keys,
            ..Settings::default()
        }
    }

    fn scope(key: &str) -> Scope {
        Scope::new("m", key)
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 201,
            body: Bytes::from_static(b"{}"),
            channel: Some("a".into()),
        }
    }

    #[test]
    fn first_proceeds_repeat_replays_other_body_mismatches() {
        let store = MemoryIdempotency::new();
        let s = settings(10);
        let now = Instant::now();
        assert!(matches!(
            store.begin(&scope("k"), [1; 32], now, &s),
            Begin::Proceed
        ));
        assert!(matches!(
            store.begin(&scope("k"), [1; 32], now, &s),
            Begin::InFlight(_)
        ));
        assert!(matches!(
            store.begin(&scope("k"), [2; 32], now, &s),
            Begin::Mismatch
        ));
        assert!(store.finish(&scope("k"), Some(answer()), now, &s));
        // An answered key keeps its first answer and is never freed.
        assert!(!store.finish(&scope("k"), None, now, &s));
        assert!(
            matches!(store.begin(&scope("k"), [1; 32], now, &s), Begin::Replay(a) if a == answer())
        );
        // Another merchant's same key is another record.
        let other = Scope::new("n", "k");
        assert!(matches!(
            store.begin(&other, [1; 32], now, &s),
            Begin::Proceed
        ));
        // After the TTL the key is new again.
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            store.begin(&scope("k"), [2; 32], later, &s),
            Begin::Proceed
        ));
    }

    #[test]
    fn a_failed_request_frees_its_key_and_wakes_waiters() {
        let store = MemoryIdempotency::new();
        let s = settings(10);
        let now = Instant::now();
        assert!(matches!(
            store.begin(&scope("k"), [1; 32], now, &s),
            Begin::Proceed
        ));
        let Begin::InFlight(mut waiter) = store.begin(&scope("k"), [1; 32], now, &s) else {
            panic!("expected in flight");
        };
        store.finish(&scope("k"), None, now, &s);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            runtime.block_on(waiter.changed()).is_err(),
            "the sender is gone"
        );
        assert!(matches!(
            store.begin(&scope("k"), [1; 32], now, &s),
            Begin::Proceed
        ));
    }

    #[test]
    fn full_store_refuses_new_keys_until_swept() {
        let store = MemoryIdempotency::new();
        let s = settings(2);
        let now = Instant::now();
        for key in ["a", "b"] {
            assert!(matches!(
                store.begin(&scope(key), [1; 32], now, &s),
                Begin::Proceed
            ));
            store.finish(&scope(key), Some(answer()), now, &s);
        }
        assert!(matches!(
            store.begin(&scope("c"), [1; 32], now, &s),
            Begin::Full
        ));
        // Known keys still replay when full.
        assert!(matches!(
            store.begin(&scope("a"), [1; 32], now, &s),
            Begin::Replay(_)
        ));
        assert_eq!(store.sweep(now + Duration::from_secs(61)), 2);
        let after = store.begin(&scope("c"), [1; 32], now, &s);
        assert!(
            matches!(after, Begin::Proceed),
            "{after:?} with {} held",
            store.len()
        );
    }
}
