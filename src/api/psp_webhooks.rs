//! `POST /v1/psp/{channel}/webhooks`: a PSP's own notifications (Stripe events, Adyen
//! notifications), verified with the channel's `webhook_secret`, settle what is in doubt on
//! that channel: a pending payment, a pending capture or refund.
//!
//! Owns only the settling: verification and parsing are `psp_events`', and nothing here
//! routes or calls a PSP. A notification only ever moves something out of `pending`, so the
//! same event twice (PSPs deliver at least once) changes nothing the second time, and an
//! event about another channel's payment, or about a payment whose call is still in flight
//! (its handler decides, and may be failing over), is ignored. Unsigned or badly signed: 401 and
//! nothing changes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::ApiError;
use crate::config::{Channel, Protocol};
use crate::gateway::Gateway;
use crate::layers::HttpResponse;
use crate::psp_events::{self, Dialect, EventKind, EventResult, PspEvent, WebhookError};
use crate::store::{FollowUp, FollowUpKind, Outcome, Payment, PaymentStatus};
use crate::upstream::declines::DeclineTable;

/// What became of the events of one notification, for the log and the answer.
#[derive(Debug, Default, serde::Serialize)]
struct Tally {
    settled: usize,
    unchanged: usize,
}

pub async fn receive(
    gateway: &Arc<Gateway>,
    channel_name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<HttpResponse, ApiError> {
    let snapshot = gateway.snapshot();
    let not_found = || ApiError::NotFound(format!("no PSP webhook endpoint for {channel_name}"));
    let channel = snapshot
        .config
        .channel_by_name(channel_name)
        .ok_or_else(not_found)?;
    let dialect = match channel.protocol {
        Protocol::Stripe => Dialect::Stripe,
        Protocol::Adyen => Dialect::Adyen,
        Protocol::PaygateV1 => return Err(not_found()),
    };
    let secret = channel
        .account
        .webhook_secret
        .as_ref()
        .ok_or_else(not_found)?;
    let verified = psp_events::verify(
        dialect,
        headers,
        body,
        &secret.0,
        crate::store::now_ms() / 1000,
        psp_events::DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|error| match error {
        WebhookError::Malformed(reason) => {
            ApiError::InvalidRequest(format!("the PSP notification is malformed: {reason}"))
        }
        refused => {
            tracing::warn!(channel = %channel.name, error = %refused, "PSP webhook refused");
            ApiError::Unauthenticated
        }
    })?;
    let declines = DeclineTable::new(channel.protocol, &channel.decline_codes);
    let mut tally = Tally::default();
    for event in &verified.events {
        match settle(gateway, channel, &declines, event).await? {
            Some(payment) => {
                tally.settled += 1;
                tracing::info!(channel = %channel.name, payment = %payment.id, event = %event.event_id, "settled by the PSP's webhook");
                crate::reconcile::notify_merchant(gateway, payment);
            }
            None => tally.unchanged += 1,
        }
    }
    gateway
        .metrics
        .psp_webhook(&channel.name, tally.settled, tally.unchanged);
    Ok(match dialect {
        // Adyen wants exactly this body, or it delivers again.
        Dialect::Adyen => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"[accepted]")));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        Dialect::Stripe => super::json_response(StatusCode::OK, &tally),
    })
}

/// Applies one event; the payment as it stands after a change it made, None when it changed
/// nothing (already settled, another channel's, not paygate's, or not a final answer). Err
/// (503, so that the PSP delivers it again) while another replica changes the payment.
async fn settle(
    gateway: &Arc<Gateway>,
    channel: &Channel,
    declines: &DeclineTable,
    event: &PspEvent,
) -> Result<Option<Payment>, ApiError> {
    let (status, raw_code) = match &event.result {
        EventResult::Succeeded => (PaymentStatus::Succeeded, None),
        EventResult::Failed { raw_code } => (
            PaymentStatus::Declined,
            Some(raw_code.as_deref().unwrap_or("declined")),
        ),
        EventResult::Pending => return Ok(None),
    };
    // As for answers: a payment's decline is normalized, an operation's keeps the PSP's words.
    let code = raw_code.map(str::to_string);
    let decline_code = raw_code.map(|raw| declines.normalize(raw));
    let store = &gateway.store;
    let lease = gateway.snapshot().config.server.request_timeout + super::HOLD_MARGIN;
    let hold = |id| super::hold(store, id, lease, Instant::now() + super::HOLD_WAIT);
    // Kept until the settlement is committed, at the end.
    let mut _held = None;
    let mut settled = None;
    match (&event.kind, &event.operation_id) {
        (EventKind::Capture | EventKind::Refund | EventKind::Cancellation, Some(reference)) => {
            let kind = match event.kind {
                EventKind::Capture => FollowUpKind::Capture,
                EventKind::Refund => FollowUpKind::Refund,
                _ => FollowUpKind::Cancel,
            };
            let payment_id = match &event.payment_id {
                Some(id) => id.clone(),
                None => {
                    let Some(payment) = store.pending().into_iter().find(|p| {
                        p.id == *reference
                            || (p.psp_reference.is_some()
                                && p.psp_reference == event.original_reference)
                            || p.operations.iter().any(|op| names(op, reference, event))
                    }) else {
                        return Ok(None);
                    };
                    payment.id
                }
            };
            _held = Some(hold(&payment_id).await?);
            store.update(&payment_id, &mut |p| {
                if let Some(id) = pending_operation(p, channel, kind, reference, event) {
                    super::settle_operation(
                        p,
                        &id,
                        status,
                        event.psp_reference.clone(),
                        code.clone(),
                    );
                    settled = Some(p.clone());
                }
            });
        }
        // Stripe's `payment_intent.succeeded` is the capture of an automatic-capture payment,
        // so it settles a pending authorization too.
        (EventKind::Authorization | EventKind::Capture, _) => {
            let Some(payment_id) = event.payment_id.as_deref() else {
                return Ok(None);
            };
            _held = Some(hold(payment_id).await?);
            let now = crate::store::now_ms();
            store.update(payment_id, &mut |p| {
                if p.status != PaymentStatus::Pending
                    || p.channel.as_deref() != Some(channel.name.as_str())
                {
                    return;
                }
                // While a call to this channel may still be in flight, its handler decides
                // (it may be failing over after a soft decline the PSP also notifies).
                let booked = p.attempts.last().is_some_and(|a| {
                    a.channel == channel.name
                        && matches!(
                            a.outcome,
                            Outcome::Pending | Outcome::Error | Outcome::Timeout
                        )
                });
                let over = p.in_doubt_until_ms.is_none_or(|until| now >= until);
                if !booked && !over {
                    return;
                }
                p.status = status;
                p.reconciled = true;
                p.in_doubt_until_ms = None;
                p.next_action = None;
                if event.psp_reference.is_some() {
                    p.psp_reference = event.psp_reference.clone();
                }
                p.decline_code = decline_code.clone();
                if status == PaymentStatus::Succeeded && p.capture {
                    p.captured_amount = p.amount;
                }
                settled = Some(p.clone());
            });
        }
        _ => return Ok(None),
    }
    let Some(payment) = settled else {
        return Ok(None);
    };
    if let Err(error) = store.durable(&payment.id).await {
        tracing::error!(payment = %payment.id, %error, "webhook settlement not journaled yet");
    }
    Ok(Some(payment))
}

/// Whether an event names the operation: by paygate's id (the modification's reference) or
/// by the PSP's reference of it (which its `received` answer gave).
fn names(op: &FollowUp, reference: &str, event: &PspEvent) -> bool {
    op.id == reference || (op.psp_reference.is_some() && op.psp_reference == event.psp_reference)
}

/// The pending operation on this channel an event settles: the one it names, or else, when
/// the event names only the payment (a PSP that notifies before its answer reached paygate,
/// or that echoes the payment's reference), the only pending one of its kind.
fn pending_operation(
    payment: &Payment,
    channel: &Channel,
    kind: FollowUpKind,
    reference: &str,
    event: &PspEvent,
) -> Option<String> {
    let pending = || {
        payment
            .operations
            .iter()
            .filter(|op| op.channel == channel.name && op.status == PaymentStatus::Pending)
    };
    // An event that names an operation is about that one, even if it is settled already
    // (a repeat): never another.
    if let Some(op) = payment
        .operations
        .iter()
        .find(|op| names(op, reference, event))
    {
        let open = op.channel == channel.name && op.status == PaymentStatus::Pending;
        return open.then(|| op.id.clone());
    }
    let mut of_kind = pending().filter(|op| {
        op.kind == kind
            && event
                .amount
                .as_ref()
                .is_none_or(|(amount, _)| *amount == op.amount)
    });
    match (of_kind.next(), of_kind.next()) {
        (Some(op), None) => Some(op.id.clone()),
        _ => None,
    }
}
