//! Idempotency records kept in the journal, for `JournalStore`: they survive a restart (a
//! merchant retrying after one is answered from the record, never charged twice) and memory
//! does not grow with them.
//!
//! Memory holds only what the journal cannot answer yet: records in flight, and answers not
//! yet committed. Everything committed is found through a Bloom filter of the keys seen
//! within the TTL (about one byte per key): a key it has never seen, the common case, is new
//! without touching the disk; a key it may have seen is looked up in the journal. This module
//! owns those two structures; reading and writing the journal stays in `journal.rs`.

use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use super::idempotency::{Begin, Scope, StoredResponse};

/// A record as the journal keeps it. A key that made a payment names it from before the
/// first PSP call (the write-ahead intent) and is answered by the payment as it now stands;
/// other requests (captures, refunds) keep their first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub request_hash: [u8; 32],
    pub kept: Kept,
    pub expires_at_ms: u64,
}

/// What a key's record answers a repeat with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The first answer, replayed as it was.
    Answer(StoredResponse),
    /// What the key made (`idempotency::target`), answered as it now stands.
    Made(String),
}

impl KeyRecord {
    /// What a repeat of the request gets.
    fn replay(&self) -> Begin {
        match &self.kept {
            Kept::Answer(answer) => Begin::Replay(answer.clone()),
            Kept::Made(target) => Begin::Made(target.clone()),
        }
    }
}

enum Live {
    /// Dropped (so waiters wake) when the first request finishes.
    InFlight {
        request_hash: [u8; 32],
        finished: watch::Sender<()>,
        /// What it made, and the expiry its record was journaled with (`bind`).
        target: Option<(String, u64)>,
    },
    /// Answered; removed once the journal has committed it.
    Answered(KeyRecord),
}

#[derive(Default)]
pub struct JournalKeys {
    live: DashMap<Scope, Live>,
    /// Entries of `live`, kept beside it: `DashMap::len` locks every shard.
    live_count: AtomicUsize,
    /// Records in the journal (expired ones until they are swept).
    committed_count: AtomicUsize,
    filter: KeyFilter,
    /// Other replicas add records to the journal: the filter cannot know them all, so every
    /// key new to this replica is looked up.
    shared: bool,
}

impl JournalKeys {
    /// Starts from the records already in the journal (scope and expiry of each).
    pub fn new(existing: impl IntoIterator<Item = (String, u64)>) -> Self {
        let keys = Self::default();
        for (scope, expires_at_ms) in existing {
            keys.filter.insert(&scope, expires_at_ms);
            keys.committed_count.fetch_add(1, Ordering::Relaxed);
        }
        keys
    }

    /// For a journal other replicas write too.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    /// As `IdempotencyStore::begin`, with `max_live` bounding the records in memory.
    /// `LookUp`: the key is held as in flight, and the journal must say whether it was used
    /// before (`settle`). That is asked after the map's lock is let go: a lookup (a database
    /// round trip with a shared journal) must not hold up the other keys of the map's
    /// shard, and a repeat arriving meanwhile waits for this one.
    pub fn begin(&self, scope: &Scope, request_hash: [u8; 32], max_live: usize) -> Begin {
        match self.live.entry(scope.clone()) {
            Entry::Occupied(occupied) => {
                return match occupied.get() {
                    Live::InFlight {
                        request_hash: first,
                        ..
                    }
                    | Live::Answered(KeyRecord {
                        request_hash: first,
                        ..
                    }) if *first != request_hash => Begin::Mismatch,
                    Live::InFlight { finished, .. } => Begin::InFlight(finished.subscribe()),
                    Live::Answered(record) => record.replay(),
                };
            }
            Entry::Vacant(vacant) => {
                if self.live_count.load(Ordering::Relaxed) >= max_live {
                    return Begin::Full;
                }
                self.live_count.fetch_add(1, Ordering::Relaxed);
                vacant.insert(Live::InFlight {
                    request_hash,
                    finished: watch::channel(()).0,
                    target: None,
                });
            }
        }
        if self.shared || self.filter.may_contain(scope.as_str()) {
            Begin::LookUp
        } else {
            Begin::Proceed
        }
    }

    /// After `begin` said `LookUp`: what the journal holds for `scope` (Err: it could not
    /// be read) decides.
    pub fn settle(
        &self,
        scope: &Scope,
        request_hash: [u8; 32],
        now_ms: u64,
        committed: Result<Option<KeyRecord>, ()>,
    ) -> Begin {
        let known = match committed {
            Err(()) => Begin::Unreadable,
            Ok(Some(record)) if record.expires_at_ms > now_ms => {
                if record.request_hash == request_hash {
                    record.replay()
                } else {
                    Begin::Mismatch
                }
            }
            Ok(_) => return Begin::Proceed,
        };
        self.let_go(scope);
        known
    }

    /// Drops the in-flight record of `scope` (its waiters wake and look again).
    fn let_go(&self, scope: &Scope) {
        let freed = self
            .live
            .remove_if(scope, |_, live| matches!(live, Live::InFlight { .. }));
        if freed.is_some() {
            self.live_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The request in flight made `target` (a payment, or a capture or refund of one; see
    /// `idempotency::target`): the record to journal before it goes to a PSP, so that a retry
    /// after a crash finds it.
    pub fn bind(&self, scope: &Scope, target: &str, expires_at_ms: u64) -> Option<KeyRecord> {
        let mut live = self.live.get_mut(scope)?;
        let Live::InFlight {
            request_hash,
            target: bound,
            ..
        } = &mut *live
        else {
            return None;
        };
        *bound = Some((target.to_string(), expires_at_ms));
        // The filter learns the key before a crash could leave it only in the journal.
        self.filter.insert(scope.as_str(), expires_at_ms);
        Some(KeyRecord {
            request_hash: *request_hash,
            kept: Kept::Made(target.to_string()),
            expires_at_ms,
        })
    }

    /// What the request in flight made, if it has bound it.
    pub fn bound(&self, scope: &Scope) -> Option<String> {
        match &*self.live.get(scope)? {
            Live::InFlight { target, .. } => target.as_ref().map(|(target, _)| target.clone()),
            Live::Answered(_) => None,
        }
    }

    /// The first request finished: with an answer, or with `keep` (it made a payment that a
    /// PSP may have charged), the record to journal (the caller queues it and calls
    /// `committed` once it is written); otherwise the key is free again. A key already
    /// answered keeps its answer and is never freed. A key that made something keeps the
    /// record `bind` gave (its expiry counted from then), so the journal has it already.
    pub fn finish(
        &self,
        scope: &Scope,
        answer: Option<StoredResponse>,
        keep: bool,
        expires_at_ms: u64,
    ) -> Option<KeyRecord> {
        if answer.is_none() && !keep {
            self.let_go(scope);
            return None;
        }
        let mut live = self.live.get_mut(scope)?;
        let Live::InFlight {
            request_hash,
            target,
            ..
        } = &*live
        else {
            return None;
        };
        // A key that made something is answered from it as it now stands: its first
        // answer need not be kept beside it. Without either there is nothing to keep (`keep`
        // implies a target).
        let (kept, expires_at_ms) = match (target, answer) {
            (Some((target, bound_until)), _) => (Kept::Made(target.clone()), *bound_until),
            (None, Some(answer)) => (Kept::Answer(answer), expires_at_ms),
            (None, None) => return None,
        };
        let record = KeyRecord {
            request_hash: *request_hash,
            kept,
            expires_at_ms,
        };
        // The filter learns the key before memory lets go of it (after the commit).
        self.filter.insert(scope.as_str(), expires_at_ms);
        // Replacing the state drops the sender, which wakes every waiter.
        *live = Live::Answered(record.clone());
        Some(record)
    }

    /// The journal holds `scope`'s record now: memory lets it go.
    pub fn committed(&self, scope: &Scope) {
        if self
            .live
            .remove_if(scope, |_, live| matches!(live, Live::Answered(_)))
            .is_some()
        {
            self.live_count.fetch_sub(1, Ordering::Relaxed);
            self.committed_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The journal deleted `count` expired records; the filter drops what has all expired.
    pub fn swept(&self, count: usize, now_ms: u64) {
        let _ = self
            .committed_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(count))
            });
        self.filter.drop_expired(now_ms);
    }

    pub fn len(&self) -> usize {
        self.live_count.load(Ordering::Relaxed) + self.committed_count.load(Ordering::Relaxed)
    }
}

/// Keys per filter generation; a full generation is followed by a new one.
const GENERATION_KEYS: usize = 1 << 20;
/// Bits per generation (1 MiB): about 2 % false positives when full, far fewer before.
const GENERATION_BITS: usize = 1 << 23;
const PROBES: u64 = 7;

/// A Bloom filter in generations: a generation is dropped once every key in it has expired.
#[derive(Default)]
struct KeyFilter {
    generations: RwLock<Vec<Generation>>,
}

struct Generation {
    bits: Box<[AtomicU64]>,
    keys: AtomicUsize,
    /// The latest expiry of a key in it, ms since the Unix epoch.
    newest_expiry_ms: AtomicU64,
}

impl Generation {
    fn new() -> Self {
        Self {
            bits: (0..GENERATION_BITS / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
            keys: AtomicUsize::new(0),
            newest_expiry_ms: AtomicU64::new(0),
        }
    }

    fn probes(key: &str) -> impl Iterator<Item = (usize, u64)> {
        // Double hashing (Kirsch and Mitzenmacher) from one SipHash of the key.
        let first =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        let second = first.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..PROBES).map(move |i| {
            let bit = first.wrapping_add(i.wrapping_mul(second)) % GENERATION_BITS as u64;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn add(&self, key: &str, expires_at_ms: u64) {
        for (word, mask) in Self::probes(key) {
            self.bits[word].fetch_or(mask, Ordering::Relaxed);
        }
        self.newest_expiry_ms
            .fetch_max(expires_at_ms, Ordering::Relaxed);
    }

    fn contains(&self, key: &str) -> bool {
        Self::probes(key).all(|(word, mask)| self.bits[word].load(Ordering::Relaxed) & mask != 0)
    }
}

impl KeyFilter {
    fn may_contain(&self, key: &str) -> bool {
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        generations.iter().any(|g| g.contains(key))
    }

    fn insert(&self, key: &str, expires_at_ms: u64) {
        {
            let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
            if let Some(current) = generations.last()
                && current.keys.fetch_add(1, Ordering::Relaxed) < GENERATION_KEYS
            {
                current.add(key, expires_at_ms);
                return;
            }
        }
        let mut generations = self.generations.write().unwrap_or_else(|e| e.into_inner());
        if generations
            .last()
            .is_none_or(|g| g.keys.load(Ordering::Relaxed) >= GENERATION_KEYS)
        {
            generations.push(Generation::new());
        }
        if let Some(current) = generations.last() {
            current.keys.fetch_add(1, Ordering::Relaxed);
            current.add(key, expires_at_ms);
        }
    }

    fn drop_expired(&self, now_ms: u64) {
        let mut generations = self.generations.write().unwrap_or_else(|e| e.into_inner());
        let last = generations.len().saturating_sub(1);
        let mut index = 0;
        // The current generation stays, even when empty of live keys.
        generations.retain(|g| {
            let keep = index == last || g.newest_expiry_ms.load(Ordering::Relaxed) > now_ms;
            index += 1;
            keep
        });
    }

    #[cfg(test)]
    fn generation_count(&self) -> usize {
        self.generations.read().map(|g| g.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A journal in a map.
    #[derive(Default)]
    struct Journal(Mutex<HashMap<String, KeyRecord>>);

    /// `begin`, and `settle` from the journal when it asks.
    fn begin(
        keys: &JournalKeys,
        scope: &Scope,
        hash: [u8; 32],
        now_ms: u64,
        max_live: usize,
        journal: &Journal,
    ) -> Begin {
        match keys.begin(scope, hash, max_live) {
            Begin::LookUp => {
                let committed = journal.0.lock().unwrap().get(scope.as_str()).cloned();
                keys.settle(scope, hash, now_ms, Ok(committed))
            }
            begun => begun,
        }
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 201,
            body: Bytes::from_static(b"{\"id\":\"pay_1\"}"),
            channel: Some("a".into()),
        }
    }

    #[test]
    fn answered_records_replay_from_memory_then_from_the_journal() {
        let keys = JournalKeys::new([]);
        let journal = Journal::default();
        let scope = Scope::new("m", "k");
        assert!(matches!(
            begin(&keys, &scope, [1; 32], 0, 10, &journal),
            Begin::Proceed
        ));
        assert!(matches!(
            begin(&keys, &scope, [1; 32], 0, 10, &journal),
            Begin::InFlight(_)
        ));
        let record = keys.finish(&scope, Some(answer()), false, 1_000).unwrap();
        // Answered: a second answer or a failure later changes nothing.
        assert_eq!(keys.finish(&scope, Some(answer()), false, 2_000), None);
        assert_eq!(keys.finish(&scope, None, false, 2_000), None);
        assert!(
            matches!(begin(&keys, &scope, [1; 32], 0, 10, &journal), Begin::Replay(a) if a == answer())
        );
        journal
            .0
            .lock()
            .unwrap()
            .insert(scope.as_str().to_string(), record);
        keys.committed(&scope);
        assert_eq!(
            (keys.live_count.load(Ordering::Relaxed), keys.len()),
            (0, 1)
        );
        assert!(
            matches!(begin(&keys, &scope, [1; 32], 0, 10, &journal), Begin::Replay(a) if a == answer())
        );
        assert!(matches!(
            begin(&keys, &scope, [2; 32], 0, 10, &journal),
            Begin::Mismatch
        ));
        // Past its expiry the key is new again.
        assert!(matches!(
            begin(&keys, &scope, [2; 32], 1_000, 10, &journal),
            Begin::Proceed
        ));
    }

    #[test]
    fn a_failed_request_frees_its_key_and_memory_is_bounded() {
        let keys = JournalKeys::new([]);
        let journal = Journal::default();
        let a = Scope::new("m", "a");
        assert!(matches!(
            begin(&keys, &a, [1; 32], 0, 1, &journal),
            Begin::Proceed
        ));
        assert!(matches!(
            begin(&keys, &Scope::new("m", "b"), [1; 32], 0, 1, &journal),
            Begin::Full
        ));
        assert_eq!(keys.finish(&a, None, false, 1_000), None);
        assert!(matches!(
            begin(&keys, &a, [1; 32], 0, 1, &journal),
            Begin::Proceed
        ));
    }

    #[test]
    fn records_of_an_earlier_run_are_found() {
        let journal = Journal::default();
        let scope = Scope::new("m", "k");
        let record = KeyRecord {
            request_hash: [3; 32],
            kept: Kept::Answer(answer()),
            expires_at_ms: 5_000,
        };
        journal
            .0
            .lock()
            .unwrap()
            .insert(scope.as_str().to_string(), record);
        let keys = JournalKeys::new([(scope.as_str().to_string(), 5_000)]);
        assert!(matches!(
            begin(&keys, &scope, [3; 32], 0, 10, &journal),
            Begin::Replay(_)
        ));
    }

    #[test]
    fn a_key_bound_to_a_payment_finds_it_after_a_restart_and_is_kept_when_it_may_have_charged() {
        let keys = JournalKeys::new([]);
        let journal = Journal::default();
        let scope = Scope::new("m", "k");
        assert!(matches!(
            begin(&keys, &scope, [1; 32], 0, 10, &journal),
            Begin::Proceed
        ));
        let intent = keys.bind(&scope, "pay_1", 5_000).unwrap();
        assert_eq!(intent.kept, Kept::Made("pay_1".into()));
        assert_eq!(keys.bound(&scope).as_deref(), Some("pay_1"));
        // A crash now: a new run knows only the journal.
        journal
            .0
            .lock()
            .unwrap()
            .insert(scope.as_str().to_string(), intent.clone());
        let restarted = JournalKeys::new([(scope.as_str().to_string(), 5_000)]);
        assert!(
            matches!(begin(&restarted, &scope, [1; 32], 0, 10, &journal), Begin::Made(id) if id == "pay_1")
        );
        assert!(matches!(
            begin(&restarted, &scope, [2; 32], 0, 10, &journal),
            Begin::Mismatch
        ));
        // Without a crash, an error answer with `keep` still names the payment, with the
        // record the intent journaled (its expiry from the bind, not from the answer).
        let record = keys.finish(&scope, None, true, 9_000).unwrap();
        assert_eq!(record, intent);
        assert!(
            matches!(begin(&keys, &scope, [1; 32], 0, 10, &journal), Begin::Made(id) if id == "pay_1")
        );
    }

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        let filter = KeyFilter::default();
        for i in 0..100_000 {
            filter.insert(&format!("key-{i}"), 10);
        }
        assert!((0..100_000).all(|i| filter.may_contain(&format!("key-{i}"))));
        let false_positives = (0..100_000)
            .filter(|i| filter.may_contain(&format!("other-{i}")))
            .count();
        assert!(false_positives < 100, "{false_positives} of 100000");
        // A second generation once one is full; expired ones go, the current one stays.
        for i in 0..GENERATION_KEYS {
            filter.insert(&format!("more-{i}"), 20);
        }
        assert_eq!(filter.generation_count(), 2);
        filter.drop_expired(15);
        assert_eq!(filter.generation_count(), 2, "both still hold live keys");
        filter.drop_expired(25);
        assert_eq!(filter.generation_count(), 1, "the current one stays");
        assert!(filter.may_contain(&format!("more-{}", GENERATION_KEYS - 1)));
    }
}
