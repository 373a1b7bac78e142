//! Payments and their attempts: the record `GET /v1/payments/{id}` answers from and that
//! decides where a capture or refund may go.
//!
//! The store is a trait so that a durable backend (journal) can replace the memory one
//! without touching the handlers. A store only keeps records: business checks (how much may
//! be captured) belong to the handlers, which change a payment through `update`. A store never
//! holds card data beyond [`MaskedCard`].

pub mod idempotency;
pub mod journal;
mod keys;
mod memory;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use journal::{JournalError, JournalStore};
pub use memory::MemoryStore;

/// Where a payment stands; the contract's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Succeeded,
    Declined,
    Pending,
    Failed,
}

impl PaymentStatus {
    pub const ALL: [Self; 4] = [Self::Succeeded, Self::Declined, Self::Pending, Self::Failed];

    /// The contract's value (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }

    /// The status `as_str` spells, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// What one call to a channel came to; the contract's `outcome` values plus `pending` for a
/// PSP that answered that it has not decided yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Declined,
    Pending,
    /// Refused before processing (connection refused, 503, 429): safe to try elsewhere.
    Unavailable,
    /// A fault after the request may have been processed (5xx, reset, bad answer).
    Error,
    Timeout,
}

impl Outcome {
    pub const ALL: [Self; 6] = [
        Self::Succeeded,
        Self::Declined,
        Self::Pending,
        Self::Unavailable,
        Self::Error,
        Self::Timeout,
    ];

    /// The outcome `as_str` spells, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Pending => "pending",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// One call to a channel for a payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub channel: String,
    pub outcome: Outcome,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psp_reference: Option<String>,
    /// Normalized (see `upstream::declines`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// The PSP's own decline code, when it differs from the normalized one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psp_code: Option<String>,
    /// When the attempt ended, ms since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
}

/// The card as far as paygate may keep it: first six and last four digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedCard {
    pub bin: String,
    pub last4: String,
}

impl MaskedCard {
    /// None when `number` is not a plausible card number (12 to 19 digits).
    pub fn from_number(number: &str) -> Option<Self> {
        let valid = (12..=19).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
        valid.then(|| Self {
            bin: number[..6].to_string(),
            last4: number[number.len() - 4..].to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUpKind {
    Capture,
    Refund,
    /// A void: the authorization is released, nothing captured.
    Cancel,
}

/// A capture or refund of a payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowUp {
    pub id: String,
    pub payment_id: String,
    pub kind: FollowUpKind,
    pub status: PaymentStatus,
    pub amount: u64,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psp_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// As [`Payment::in_doubt_until_ms`], for this operation's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt_until_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub merchant: String,
    pub status: PaymentStatus,
    pub amount: u64,
    pub currency: String,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The channel that answered last (authorized, declined or left it pending).
    pub channel: Option<String>,
    pub psp_reference: Option<String>,
    pub decline_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<MaskedCard>,
    /// While pending: what the shopper must do for the PSP to decide (3-D Secure redirect or
    /// challenge), as the PSP described it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_action: Option<serde_json::Value>,
    /// Amount captured so far (the whole amount for `"capture": true`).
    pub captured_amount: u64,
    pub refunded_amount: u64,
    /// A pending payment whose final status reconciliation found.
    #[serde(default)]
    pub reconciled: bool,
    /// The merchant asked for capture with the authorization.
    #[serde(default)]
    pub capture: bool,
    /// While a call to `channel` may still be on its way (the attempt's timeout, from when
    /// it was recorded as about to be sent): reconciliation asks the PSP no sooner, so that a
    /// "never received" answer cannot race the request itself. Ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt_until_ms: Option<u64>,
    pub attempts: Vec<Attempt>,
    pub operations: Vec<FollowUp>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Bumped by every change in a store, so that a store can tell whether what it wrote
    /// somewhere is still the latest state.
    #[serde(skip)]
    pub version: u64,
}

impl Payment {
    /// The amount of `kind` operations sent and not yet settled: it counts against what is
    /// left, so two concurrent captures cannot exceed the authorization, and an operation in
    /// doubt (even after a restart) keeps its amount from being offered again.
    pub fn in_flight(&self, kind: FollowUpKind) -> u64 {
        self.operations
            .iter()
            .filter(|op| op.kind == kind && op.status == PaymentStatus::Pending)
            .map(|op| op.amount)
            .sum()
    }

    /// A cancel of the authorization succeeded or may still be carried out.
    pub fn cancel_sent(&self) -> bool {
        self.operations.iter().any(|op| {
            op.kind == FollowUpKind::Cancel
                && matches!(op.status, PaymentStatus::Succeeded | PaymentStatus::Pending)
        })
    }

    /// Whether the payment (or its operation `operation_id`) surely reached no PSP or was
    /// refused unprocessed: only then may its idempotency key be used afresh.
    pub fn surely_failed(&self, operation_id: Option<&str>) -> bool {
        let status = match operation_id {
            None => Some(self.status),
            Some(id) => self
                .operations
                .iter()
                .find(|op| op.id == id)
                .map(|op| op.status),
        };
        status == Some(PaymentStatus::Failed)
    }

    /// A call for the payment, or for one of its captures or refunds, may still be on its way
    /// at `now_ms` (within the call's timeout): only the replica that sent it may change it.
    pub fn moving(&self, now_ms: u64) -> bool {
        let within = |status: PaymentStatus, until: Option<u64>| {
            status == PaymentStatus::Pending && until.is_some_and(|until| now_ms < until)
        };
        within(self.status, self.in_doubt_until_ms)
            || self
                .operations
                .iter()
                .any(|op| within(op.status, op.in_doubt_until_ms))
    }

    /// The payment or one of its captures or refunds awaits a final answer.
    pub fn in_doubt(&self) -> bool {
        self.status == PaymentStatus::Pending
            || self
                .operations
                .iter()
                .any(|op| op.status == PaymentStatus::Pending)
    }
}

/// Keeps payments. Implementations must be safe to share between all request tasks.
/// Why a store cannot take a payment.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The journal is behind or cannot write: new payments must wait.
    #[error("the payment journal {0}")]
    Unavailable(String),
}

/// Resolves once a payment's latest state is as durable as the store promises.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

pub trait PaymentStore: Send + Sync + 'static {
    /// Records a new payment before any channel is called; refused when the store could not
    /// keep it.
    fn insert(&self, payment: Payment) -> Result<(), StoreError>;
    fn get(&self, id: &str) -> Option<Payment>;
    /// As `get`, telling "no such payment" from "the store cannot read it now" (a journal
    /// database that does not answer): a merchant must never be told a payment it made does
    /// not exist.
    fn find(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        Ok(self.get(id))
    }
    /// Applies `change` to the stored payment atomically with respect to other updates of the
    /// same payment; false when the payment is unknown.
    fn update(&self, id: &str, change: &mut dyn FnMut(&mut Payment)) -> bool;
    /// Resolves when everything recorded for `id` so far is durable (at once for memory).
    fn durable(&self, id: &str) -> Durable;
    /// Payments in doubt (pending, or with a pending capture or refund), for reconciliation.
    fn pending(&self) -> Vec<Payment>;
    /// Whether a new payment would be taken now (`/readyz` asks).
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes (or joins this replica's hold of) the right to change `payment_id` for `for`:
    /// with a journal several replicas write, one replica at a time asks a PSP about a
    /// payment or changes it, each from the payment as the journal holds it, so that no
    /// replica's write undoes another's. False while another replica holds it; Err when the
    /// journal cannot say. A store only one process writes always grants it. Each grant is
    /// ended by `let_go` (see [`Held`]).
    fn hold(&self, _payment_id: &str, _for: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// One use that `hold` granted is over (its changes committed): the last of this
    /// replica's lets the payment go to the other replicas.
    fn let_go(&self, _payment_id: &str) {}
    /// A channel event (ejection, drain, enable, reload) for the daily report.
    fn event(&self, _kind: &str, _channel: Option<&str>, _detail: &str) {}
}

/// A payment this replica holds (`PaymentStore::hold`), let go when dropped: however the
/// work that holds it ends, a panic included.
pub struct Held {
    store: std::sync::Arc<dyn PaymentStore>,
    id: String,
}

impl Held {
    /// Holds `id` for `for`; None while another replica holds it.
    pub fn take(
        store: &std::sync::Arc<dyn PaymentStore>,
        id: &str,
        r#for: std::time::Duration,
    ) -> Result<Option<Self>, StoreError> {
        Ok(store.hold(id, r#for)?.then(|| Self {
            store: store.clone(),
            id: id.to_string(),
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.store.let_go(&self.id);
    }
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_card_keeps_six_and_four() {
        let card = MaskedCard::from_number("4111111111111111");
        assert_eq!(
            card,
            Some(MaskedCard {
                bin: "411111".into(),
                last4: "1111".into()
            })
        );
        assert_eq!(MaskedCard::from_number("4111"), None);
        assert_eq!(MaskedCard::from_number("4111-1111-1111-1111"), None);
    }
}
