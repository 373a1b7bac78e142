//! The seam between paygate and a PSP's wire dialect: how a call becomes an HTTP request and
//! how the PSP's answer becomes a [`Reply`].
//!
//! A dialect is one implementation of [`PspProtocol`] in its own file; adding a PSP never
//! touches the client, the handlers or routing. A dialect performs no I/O.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;

use crate::payload::PaymentBody;

/// What paygate asks of a channel.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// A new payment: the merchant's body, passed through with unknown fields.
    Authorize {
        payment: &'a PaymentBody<'a>,
    },
    Capture {
        psp_reference: &'a str,
        amount: u64,
    },
    Refund {
        psp_reference: &'a str,
        amount: u64,
    },
    /// The current status of a payment (reconciliation): by the PSP's reference when an
    /// answer gave one, otherwise by the `paygate_id` of the [`CallContext`] (the payment's
    /// answer never arrived). Each dialect finds a payment its own way.
    Status {
        psp_reference: Option<&'a str>,
    },
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
    Declined {
        psp_reference: Option<String>,
        code: String,
    },
    Pending {
        psp_reference: Option<String>,
    },
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

pub trait PspProtocol: Send + Sync + 'static {
    /// The request for `call` against the channel's base URL (no trailing slash).
    fn request(
        &self,
        base: &str,
        call: &Call<'_>,
        context: &CallContext<'_>,
    ) -> Result<Request<Full<Bytes>>, ProtocolError>;

    /// Reads the PSP's answer to `call`.
    fn reply(&self, call: &Call<'_>, status: StatusCode, body: &[u8]) -> Reply;
}
