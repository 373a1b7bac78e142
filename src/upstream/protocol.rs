//! The seam between paygate and a PSP's wire dialect: how a call becomes an HTTP request and
//! how the PSP's answer becomes a [`Reply`].
//!
//! A dialect is one implementation of [`PspProtocol`] in its own file; adding a PSP never
//! touches the client, the handlers or routing. A dialect performs no I/O: a call that takes
//! the PSP several requests (Stripe's PaymentMethod, then its PaymentIntent) is a chain of
//! [`Step`]s that the client walks, each answer naming the next step.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;

use crate::payload::PaymentBody;

/// What paygate asks of a channel.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// A new payment: the merchant's body, passed through with unknown fields.
    Authorize { payment: &'a PaymentBody<'a> },
    Capture {
        psp_reference: &'a str,
        amount: u64,
        currency: &'a str,
    },
    Refund {
        psp_reference: &'a str,
        amount: u64,
        currency: &'a str,
    },
    /// A void of the whole authorization (`amount`), before any capture.
    Cancel {
        psp_reference: &'a str,
        amount: u64,
        currency: &'a str,
    },
    /// The current status of a payment (reconciliation): by the PSP's reference when an
    /// answer gave one, otherwise by the `paygate_id` of the [`CallContext`] (the payment's
    /// answer never arrived). Each dialect finds a payment its own way.
    Status { psp_reference: Option<&'a str> },
}

/// Identifiers that travel with every call.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The payment's id, which the PSP sees as `paygate_id`.
    pub paygate_id: &'a str,
    /// Unique per operation, so that a PSP can drop a duplicate.
    pub idempotency_key: &'a str,
    pub request_id: &'a str,
    pub traceparent: Option<&'a HeaderValue>,
}

/// The PSP's answer, as paygate understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Succeeded {
        psp_reference: String,
    },
    /// `code` is the PSP's own (raw) code; the client normalizes it with the channel's
    /// decline table.
    Declined {
        psp_reference: Option<String>,
        code: String,
    },
    /// `action`: what the shopper must do for the PSP to decide (3-D Secure: a redirect or a
    /// challenge), as the PSP describes it, for the merchant.
    Pending {
        psp_reference: Option<String>,
        action: Option<serde_json::Value>,
    },
    /// This step is done and moved no money yet; the call goes on with the next request,
    /// built from what this answer gave (Stripe: the PaymentMethod's id).
    Then(String),
    /// The PSP surely did not process the call (503, 429): another channel may be tried.
    Unavailable {
        reason: String,
    },
    /// The PSP may have processed the call but the answer is a fault (5xx, garbage).
    Error {
        reason: String,
    },
    /// A status query the PSP answered with "no such payment": asked after the attempt's
    /// own timeout, this proves the payment was never received.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the PSP request: {0}")]
pub struct ProtocolError(pub String);

/// Where a call stands: its first request, or a later one carrying what the previous answer
/// gave ([`Reply::Then`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    First,
    Then(String),
}

/// How a payment whose answer never arrived is found again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// [`Call::Status`] without a reference finds it by its `paygate_id`; "no such payment"
    /// proves it was never received once this long has passed since the attempt's own
    /// timeout (a PSP whose search index lags needs a while to be sure).
    ByPaygateId { settled_after: std::time::Duration },
    /// The PSP has no lookup: only its webhook (or a re-send with the same key while the
    /// payment's data is still in memory) settles the payment.
    WebhookOnly,
}

/// What 401, 403 and 429 mean at every real PSP: refused before anything was processed, so
/// another channel may be tried.
pub fn refused_unprocessed(psp: &str, status: StatusCode) -> Option<Reply> {
    let why = match status.as_u16() {
        401 | 403 => "credentials refused",
        429 => "rate limited",
        _ => return None,
    };
    Some(Reply::Unavailable {
        reason: format!("{psp} answered {} ({why})", status.as_u16()),
    })
}

pub trait PspProtocol: Send + Sync + 'static {
    /// The request for `step` of `call` against the channel's base URL (no trailing slash).
    fn request(
        &self,
        base: &str,
        call: &Call<'_>,
        context: &CallContext<'_>,
        step: &Step,
    ) -> Result<Request<Full<Bytes>>, ProtocolError>;

    /// Reads the PSP's answer to `step` of `call`.
    fn reply(&self, call: &Call<'_>, step: &Step, status: StatusCode, body: &[u8]) -> Reply;

    /// Whether a lost answer to this step may have moved money. A step that cannot (Stripe's
    /// PaymentMethod) fails as unavailable, and the payment may go to another channel.
    fn may_move_money(&self, _call: &Call<'_>, _step: &Step) -> bool {
        true
    }

    /// Whether the PSP replays the first outcome of a request re-sent with the same
    /// `Idempotency-Key`: then a call whose answer was lost or a fault is sent once more to
    /// the same channel before the payment is left in doubt.
    fn replays_by_key(&self) -> bool {
        false
    }

    fn lookup(&self) -> Lookup {
        Lookup::ByPaygateId {
            settled_after: std::time::Duration::ZERO,
        }
    }
}
