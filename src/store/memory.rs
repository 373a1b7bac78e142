//! The in-memory payment store: a sharded map, so that payments of different requests never
//! contend on one lock. Lost at restart (the journal backend keeps them).

use dashmap::DashMap;

use super::{Durable, Payment, PaymentStatus, PaymentStore, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    payments: DashMap<String, Payment>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets `id` when it is still at `version`, settled (not pending) and has no capture or
    /// refund under way: the journal holds it and will answer for it.
    pub fn evict_settled(&self, id: &str, version: u64) {
        self.payments.remove_if(id, |_, p| {
            p.version == version
                && p.status != PaymentStatus::Pending
                && p.capture_in_flight == 0
                && p.refund_in_flight == 0
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
        self.payments.insert(payment.id.clone(), payment);
        Ok(())
    }

    fn get(&self, id: &str) -> Option<Payment> {
        self.payments.get(id).map(|p| p.clone())
    }

    fn update(&self, id: &str, change: &mut dyn FnMut(&mut Payment)) -> bool {
        match self.payments.get_mut(id) {
            Some(mut payment) => {
                change(&mut payment);
                payment.version += 1;
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
            .filter(|p| p.status == PaymentStatus::Pending)
            .map(|p| p.clone())
            .collect()
    }
}
