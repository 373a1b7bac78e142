//! The in-memory payment store: a sharded map, so that payments of different requests never
//! contend on one lock. Lost at restart (the journal backend keeps them).

use dashmap::DashMap;

use super::{Durable, Payment, PaymentStore, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    payments: DashMap<String, Held>,
}

struct Held {
    payment: Payment,
    /// The version a journal last committed, if any (unused without a journal).
    journaled: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The payment's latest state when a journal has not committed it yet, and whether the
    /// journal has an earlier state of it.
    pub fn unjournaled(&self, id: &str) -> Option<(Payment, bool)> {
        let held = self.payments.get(id)?;
        (held.journaled != Some(held.payment.version))
            .then(|| (held.payment.clone(), held.journaled.is_some()))
    }

    /// Notes that a journal committed `id` at `version`, and forgets the payment when it is
    /// still at that version and `let_go` agrees: the journal holds it and will answer for it.
    pub fn journaled(&self, id: &str, version: u64, let_go: impl Fn(&Payment) -> bool) {
        let settled = self.payments.remove_if(id, |_, held| {
            held.payment.version == version && let_go(&held.payment)
        });
        if settled.is_none()
            && let Some(mut held) = self.payments.get_mut(id)
            && held.journaled.is_none_or(|v| v < version)
        {
            held.journaled = Some(version);
        }
    }

    /// Forgets the payment when its latest state is committed and `stale` says so.
    pub fn let_go_if(&self, id: &str, stale: impl Fn(&Payment) -> bool) {
        self.payments.remove_if(id, |_, held| {
            held.journaled == Some(held.payment.version) && stale(&held.payment)
        });
    }

    /// Takes back a payment read from a journal, as committed; a copy already held wins.
    pub fn adopt(&self, payment: Payment) {
        self.payments
            .entry(payment.id.clone())
            .or_insert_with(|| Held {
                journaled: Some(payment.version),
                payment,
            });
    }

    pub fn len(&self) -> usize {
        self.payments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payments.is_empty()
    }
}

impl PaymentStore for MemoryStore {
    fn insert(&self, payment: Payment) -> Result<(), StoreError> {
        let held = Held {
            payment,
            journaled: None,
        };
        self.payments.insert(held.payment.id.clone(), held);
        Ok(())
    }

    fn get(&self, id: &str) -> Option<Payment> {
        self.payments.get(id).map(|held| held.payment.clone())
    }

    fn update(&self, id: &str, change: &mut dyn FnMut(&mut Payment)) -> bool {
        match self.payments.get_mut(id) {
            Some(mut held) => {
                change(&mut held.payment);
                held.payment.version += 1;
                true
            }
            None => false,
        }
    }

    fn durable(&self, _id: &str) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn pending(&self) -> Vec<Payment> {
        self.payments
            .iter()
            .filter(|held| held.payment.in_doubt())
            .map(|held| held.payment.clone())
            .collect()
    }
}
