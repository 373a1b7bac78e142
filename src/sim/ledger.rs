//! The simulator's ledger: every stored payment with its authorized, captured and refunded
//! amounts, and the rules that decide a capture, a refund or a status read.
//!
//! Owns the payment map (bounded, oldest evicted first). Must not draw random numbers, sleep
//! or know about HTTP: the handler decides what to store and how to answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

/// At most this many payments are kept. A million is far more than any test reads back and,
/// at roughly 100 bytes each with the map's overhead, bounds a long load run to ~100 MB.
pub const MAX_STORED_PAYMENTS: u64 = 1_000_000;

/// The status a PSP answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Declined,
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Declined => "declined",
            Status::Pending => "pending",
        }
    }
}

/// One answer of the protocol: status, the reference number it names, decline code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    pub reference: u64,
    pub decline_code: Option<Arc<str>>,
}

impl Answer {
    pub fn succeeded(reference: u64) -> Self {
        Answer {
            status: Status::Succeeded,
            reference,
            decline_code: None,
        }
    }

    pub fn declined(reference: u64, code: &str) -> Self {
        Answer {
            status: Status::Declined,
            reference,
            decline_code: Some(Arc::from(code)),
        }
    }
}

/// A payment as first decided; pending ones resolve lazily when next touched.
#[derive(Debug, Clone)]
pub struct Payment {
    pub status: Status,
    pub decline_code: Option<Arc<str>>,
    pub amount: u64,
    /// The merchant asked for `"capture": true`: the whole amount is captured on success.
    pub auto_capture: bool,
    pub created: Instant,
    pub resolves_after: Duration,
    captured: u64,
    refunded: u64,
    /// The authorization was voided.
    canceled: bool,
}

impl Payment {
    pub fn new(answer: &Answer, amount: u64, auto_capture: bool, resolves_after: Duration) -> Self {
        let mut payment = Payment {
            status: answer.status,
            decline_code: answer.decline_code.clone(),
            amount,
            auto_capture,
            created: Instant::now(),
            resolves_after,
            captured: 0,
            refunded: 0,
            canceled: false,
        };
        payment.settle_auto_capture();
        payment
    }

    fn settle_auto_capture(&mut self) {
        if self.status == Status::Succeeded && self.auto_capture {
            self.captured = self.amount;
        }
    }

    /// A pending payment succeeds once its resolve time has passed.
    fn resolve(&mut self, now: Instant) {
        if self.status == Status::Pending && now.duration_since(self.created) >= self.resolves_after
        {
            self.status = Status::Succeeded;
            self.settle_auto_capture();
        }
    }
}

/// Which money movement an operation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Capture,
    Refund,
    /// A void of the whole authorization, before any capture.
    Cancel,
}

/// Stored payments keyed by reference number.
#[derive(Debug, Default)]
pub struct Ledger {
    payments: DashMap<u64, Payment, FxBuildHasher>,
    stored: AtomicU64,
}

impl Ledger {
    /// Stores a payment. Reference numbers only grow, so evicting number `reference - MAX`
    /// drops the oldest payment without a queue or a scan.
    pub fn insert(&self, reference: u64, payment: Payment) {
        if self.payments.insert(reference, payment).is_none() {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
        let Some(oldest) = reference.checked_sub(MAX_STORED_PAYMENTS) else {
            return;
        };
        if self.payments.remove(&oldest).is_some() {
            self.stored.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How many payments are stored.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        self.payments.clear();
        self.stored.store(0, Ordering::Relaxed);
    }

    /// The stored status of a payment (pending resolved if due); `None` when unknown.
    pub fn status(&self, reference: u64) -> Option<Answer> {
        let mut payment = self.payments.get_mut(&reference)?;
        payment.resolve(Instant::now());
        Some(Answer {
            status: payment.status,
            reference,
            decline_code: payment.decline_code.clone(),
        })
    }

    /// Captures or refunds `amount` (default: all that is left) under a new reference from
    /// `next_reference` (only taken for a known payment); `None` when the payment is unknown. The shard lock held by
    /// `get_mut` makes check-and-update atomic against a concurrent operation.
    pub fn apply(
        &self,
        reference: u64,
        operation: Operation,
        amount: Option<u64>,
        next_reference: impl FnOnce() -> u64,
    ) -> Option<Answer> {
        let mut payment = self.payments.get_mut(&reference)?;
        payment.resolve(Instant::now());
        let operation_reference = next_reference();
        let answer = match decide(&payment, operation, amount) {
            Ok(amount) => {
                match operation {
                    Operation::Capture => payment.captured += amount,
                    Operation::Refund => payment.refunded += amount,
                    Operation::Cancel => payment.canceled = true,
                }
                Answer::succeeded(operation_reference)
            }
            Err(code) => Answer::declined(operation_reference, code),
        };
        Some(answer)
    }
}

/// The amount an operation moves, or the decline code that refuses it.
fn decide(
    payment: &Payment,
    operation: Operation,
    amount: Option<u64>,
) -> Result<u64, &'static str> {
    if payment.status != Status::Succeeded {
        return Err("payment_not_authorized");
    }
    if payment.canceled {
        return Err("payment_canceled");
    }
    let left = match operation {
        Operation::Cancel if payment.captured > 0 => return Err("payment_captured"),
        Operation::Cancel => return Ok(payment.amount),
        Operation::Capture => payment.amount.saturating_sub(payment.captured),
        Operation::Refund if payment.captured == 0 => return Err("payment_not_captured"),
        Operation::Refund => payment.captured.saturating_sub(payment.refunded),
    };
    let amount = amount.unwrap_or(left);
    if amount == 0 || amount > left {
        return Err("invalid_amount");
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(ledger: &Ledger, reference: u64, status: Status, auto_capture: bool) {
        let answer = Answer {
            status,
            reference,
            decline_code: None,
        };
        let payment = Payment::new(&answer, 1000, auto_capture, Duration::from_millis(50));
        ledger.insert(reference, payment);
    }

    fn code(answer: Option<Answer>) -> Option<String> {
        answer.and_then(|a| a.decline_code).map(|c| c.to_string())
    }

    #[test]
    fn partial_captures_then_refunds_add_up() {
        let ledger = Ledger::default();
        stored(&ledger, 1, Status::Succeeded, false);
        let refund_first = ledger.apply(1, Operation::Refund, None, || 2);
        assert_eq!(code(refund_first), Some("payment_not_captured".into()));
        assert_eq!(
            ledger.apply(1, Operation::Capture, Some(600), || 3),
            Some(Answer::succeeded(3))
        );
        let too_much = ledger.apply(1, Operation::Capture, Some(500), || 4);
        assert_eq!(code(too_much), Some("invalid_amount".into()));
        assert_eq!(
            ledger.apply(1, Operation::Capture, None, || 5),
            Some(Answer::succeeded(5))
        );
        let nothing_left = ledger.apply(1, Operation::Capture, None, || 6);
        assert_eq!(code(nothing_left), Some("invalid_amount".into()));
        assert_eq!(
            ledger.apply(1, Operation::Refund, Some(1000), || 7),
            Some(Answer::succeeded(7))
        );
        let refunded_twice = ledger.apply(1, Operation::Refund, Some(1), || 8);
        assert_eq!(code(refunded_twice), Some("invalid_amount".into()));
    }

    #[test]
    fn auto_capture_counts_as_captured() {
        let ledger = Ledger::default();
        stored(&ledger, 1, Status::Succeeded, true);
        let capture = ledger.apply(1, Operation::Capture, None, || 2);
        assert_eq!(code(capture), Some("invalid_amount".into()));
        assert_eq!(
            ledger.apply(1, Operation::Refund, Some(400), || 3),
            Some(Answer::succeeded(3))
        );
    }

    #[test]
    fn declined_and_unresolved_payments_refuse_operations() {
        let ledger = Ledger::default();
        stored(&ledger, 1, Status::Declined, false);
        stored(&ledger, 2, Status::Pending, true);
        let declined = ledger.apply(1, Operation::Capture, None, || 3);
        assert_eq!(code(declined), Some("payment_not_authorized".into()));
        let pending = ledger.apply(2, Operation::Refund, None, || 4);
        assert_eq!(code(pending), Some("payment_not_authorized".into()));
        assert_eq!(ledger.apply(99, Operation::Capture, None, || 5), None);
    }

    #[test]
    fn pending_resolves_to_succeeded_and_auto_captures() {
        let ledger = Ledger::default();
        stored(&ledger, 1, Status::Pending, true);
        assert_eq!(ledger.status(1).map(|a| a.status), Some(Status::Pending));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ledger.status(1).map(|a| a.status), Some(Status::Succeeded));
        assert_eq!(
            ledger.apply(1, Operation::Refund, Some(1000), || 2),
            Some(Answer::succeeded(2))
        );
    }

    #[test]
    fn the_oldest_payment_is_evicted_at_the_bound() {
        let ledger = Ledger::default();
        stored(&ledger, 1, Status::Succeeded, false);
        stored(&ledger, 2, Status::Succeeded, false);
        stored(&ledger, MAX_STORED_PAYMENTS + 1, Status::Succeeded, false);
        assert_eq!(ledger.stored(), 2);
        assert!(ledger.status(1).is_none());
        assert!(ledger.status(2).is_some());
        ledger.clear();
        assert_eq!(ledger.stored(), 0);
    }
}
