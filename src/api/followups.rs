//! `POST /v1/payments/{id}/capture`, `POST /v1/payments/{id}/refunds` and
//! `POST /v1/payments/{id}/cancel` (a void of an authorization nothing was captured of): sent
//! to the channel that authorized the payment and to no other, for at most what is left.
//!
//! The amount is reserved on the payment before the call and settled after it, so two
//! concurrent captures cannot together exceed the authorization. With a journal replicas
//! share, the replica holds the payment (its lease) from before it reads it until the outcome
//! is committed, so that captures and refunds of one payment on several replicas at once are
//! booked one after the other, none written over by another replica's view.

use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, Scope};
use crate::layers::HttpResponse;
use crate::store::{FollowUp, FollowUpKind, Outcome, Payment, PaymentStatus};
use crate::upstream::{Call, CallContext};

#[derive(Serialize)]
pub(crate) struct Answer<'a> {
    id: &'a str,
    payment_id: &'a str,
    status: PaymentStatus,
    amount: u64,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    psp_reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_code: Option<&'a str>,
}

/// What was reserved for one capture or refund.
struct Reservation {
    amount: u64,
    currency: String,
    channel: String,
    psp_reference: String,
}

pub async fn follow_up(
    scope: &Scope,
    id: &str,
    kind: FollowUpKind,
    body: &Bytes,
) -> Result<HttpResponse, ApiError> {
    let requested = requested_amount(body)?;
    let store = &scope.gateway.store;
    let snapshot = scope.gateway.snapshot();
    let operation_id = match kind {
        FollowUpKind::Capture => format!("cap_{}", ulid::Ulid::generate()),
        FollowUpKind::Refund => format!("ref_{}", ulid::Ulid::generate()),
        FollowUpKind::Cancel => format!("can_{}", ulid::Ulid::generate()),
    };
    let in_doubt_until = |channel: &str| {
        let timeout = snapshot
            .config
            .channel_by_name(channel)
            .map_or(std::time::Duration::MAX, |c| c.timeout);
        super::in_doubt_until(scope, timeout)
    };
    // Held until the outcome is committed (the end of this function): meanwhile no other
    // replica changes the payment, and this one reads it as the journal holds it.
    let lease = snapshot.config.server.request_timeout + super::HOLD_MARGIN;
    let _held = super::hold(store, id, lease, scope.deadline).await?;
    let mut reserved = Err(ApiError::NotFound(format!("no payment {id}")));
    let found = store.update(id, &mut |payment| {
        reserved = if *payment.merchant == *scope.merchant {
            reserve(payment, kind, requested, &operation_id, &in_doubt_until)
        } else {
            Err(ApiError::NotFound(format!("no payment {id}")))
        };
    });
    // A payment the journal cannot read now is not "no payment": 503, nothing sent.
    if !found {
        store.find(id).map_err(|error| {
            ApiError::Overloaded(format!("{error}; nothing was sent, retry shortly"))
        })?;
    }
    let reservation = reserved?;
    // The write-ahead intent, as for payments: the operation (pending) and the merchant's key
    // are on disk before the call, or the call does not happen.
    if let Some(key) = &scope.key {
        let target = crate::store::idempotency::target(id, Some(&operation_id));
        let settings = &snapshot.config.idempotency;
        scope.gateway.idempotency.bind(key, &target, settings);
    }
    let until = Instant::now() + super::INTENT_WAIT;
    if let Err(error) = super::wait_durable(scope, id, until).await {
        tracing::error!(request_id = %scope.request_id, payment = %id, operation = %operation_id, %error, "intent not recorded: the operation is not sent");
        store.update(id, &mut |payment| {
            if let Some(op) = payment
                .operations
                .iter_mut()
                .find(|op| op.id == operation_id)
            {
                op.status = PaymentStatus::Failed;
                op.in_doubt_until_ms = None;
            }
        });
        return Err(ApiError::Overloaded(format!(
            "{error}; the {} of payment {id} was not sent",
            kind_name(kind)
        )));
    }
    let client = snapshot.client(&reservation.channel);
    let exchange = match client {
        Some(client) => {
            let call = operation_call(
                kind,
                &reservation.psp_reference,
                reservation.amount,
                &reservation.currency,
            );
            let context = CallContext {
                paygate_id: id,
                idempotency_key: &operation_id,
                request_id: &scope.request_id,
                traceparent: scope.traceparent.as_ref(),
            };
            Some(client.send(&call, &context, scope.deadline).await)
        }
        None => None,
    };
    let outcome = exchange
        .as_ref()
        .map_or(Outcome::Unavailable, |e| e.outcome);
    let status = operation_status(outcome);
    let mut record = None;
    store.update(id, &mut |payment| {
        record = settle(
            payment,
            &operation_id,
            status,
            exchange.as_ref().and_then(|e| e.psp_reference.clone()),
            exchange.as_ref().and_then(|e| e.decline_code.clone()),
        );
    });
    let record = record.ok_or_else(|| {
        ApiError::NotFound(format!(
            "operation {operation_id} vanished from payment {id}"
        ))
    })?;
    let answer = if status == PaymentStatus::Failed {
        Err(ApiError::AllChannelsFailed {
            payment_id: id.to_string(),
        })
    } else {
        let body = answer_of(&record);
        Ok(super::answer_recorded(
            scope,
            StatusCode::OK,
            &body,
            Some(&record.channel),
        ))
    };
    // The intent is on disk, so an outcome that cannot be committed in time is still the
    // truth to answer (a crash leaves the operation pending, and reconciliation settles it).
    if let Err(error) =
        super::wait_durable(scope, id, super::journal_wait_until(scope.deadline)).await
    {
        tracing::error!(request_id = %scope.request_id, payment = %id, operation = %record.id, %error, "outcome not yet journaled when answering; the intent is");
    }
    answer
}

fn kind_name(kind: FollowUpKind) -> &'static str {
    match kind {
        FollowUpKind::Capture => "capture",
        FollowUpKind::Refund => "refund",
        FollowUpKind::Cancel => "cancel",
    }
}

/// The call that carries out (or, re-sent with the same key, replays) an operation.
pub fn operation_call<'a>(
    kind: FollowUpKind,
    psp_reference: &'a str,
    amount: u64,
    currency: &'a str,
) -> Call<'a> {
    match kind {
        FollowUpKind::Capture => Call::Capture {
            psp_reference,
            amount,
            currency,
        },
        FollowUpKind::Refund => Call::Refund {
            psp_reference,
            amount,
            currency,
        },
        FollowUpKind::Cancel => Call::Cancel {
            psp_reference,
            amount,
            currency,
        },
    }
}

/// What an operation's call came to.
pub fn operation_status(outcome: Outcome) -> PaymentStatus {
    match outcome {
        Outcome::Succeeded => PaymentStatus::Succeeded,
        Outcome::Declined => PaymentStatus::Declined,
        Outcome::Pending | Outcome::Error | Outcome::Timeout => PaymentStatus::Pending,
        Outcome::Unavailable => PaymentStatus::Failed,
    }
}

/// The answer to a capture or refund (and to a repeat of it with the same key).
pub(crate) fn answer_of(op: &FollowUp) -> Answer<'_> {
    Answer {
        id: &op.id,
        payment_id: &op.payment_id,
        status: op.status,
        amount: op.amount,
        channel: &op.channel,
        psp_reference: op.psp_reference.as_deref(),
        decline_code: op.decline_code.as_deref(),
    }
}

/// `{"amount": n}` or an empty body (the whole remaining amount).
fn requested_amount(body: &Bytes) -> Result<Option<u64>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let invalid = |m: &str| ApiError::InvalidRequest(m.to_string());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(invalid(
            "the body must be a JSON object such as {\"amount\": 500}",
        ));
    };
    match fields.get("amount") {
        None | Some(Value::Null) => Ok(None),
        Some(amount) => match amount.as_u64() {
            Some(0) | None => Err(invalid(
                "amount must be an integer number of minor units greater than 0",
            )),
            Some(n) => Ok(Some(n)),
        },
    }
}

fn reserve(
    payment: &mut Payment,
    kind: FollowUpKind,
    requested: Option<u64>,
    operation_id: &str,
    in_doubt_until: &dyn Fn(&str) -> u64,
) -> Result<Reservation, ApiError> {
    let invalid = |m: String| Err(ApiError::InvalidRequest(m));
    if payment.status != PaymentStatus::Succeeded {
        return invalid(format!(
            "payment {} is {:?}; only a succeeded payment can be captured or refunded",
            payment.id, payment.status
        ));
    }
    let (Some(channel), Some(psp_reference)) = (&payment.channel, &payment.psp_reference) else {
        return invalid(format!("payment {} has no authorizing channel", payment.id));
    };
    if payment.cancel_sent() {
        return invalid(format!(
            "payment {} is canceled (or its cancel is in doubt)",
            payment.id
        ));
    }
    let in_flight = payment.in_flight(kind);
    let (left, verb) = match kind {
        FollowUpKind::Cancel => {
            if payment.captured_amount > 0 || payment.in_flight(FollowUpKind::Capture) > 0 {
                return invalid(format!(
                    "payment {} has captures: refund it instead of canceling",
                    payment.id
                ));
            }
            if requested.is_some_and(|amount| amount != payment.amount) {
                return invalid(format!(
                    "amount: a cancel releases the whole authorization of {}",
                    payment.amount
                ));
            }
            (payment.amount, "canceled")
        }
        FollowUpKind::Capture => (
            payment
                .amount
                .saturating_sub(payment.captured_amount + in_flight),
            "captured",
        ),
        FollowUpKind::Refund => (
            payment
                .captured_amount
                .saturating_sub(payment.refunded_amount + in_flight),
            "refunded",
        ),
    };
    let amount = requested.unwrap_or(left);
    if left == 0 {
        return invalid(format!(
            "amount: nothing is left to be {verb} on payment {}",
            payment.id
        ));
    }
    if amount > left {
        return invalid(format!(
            "amount {amount} is more than the {left} that can still be {verb}"
        ));
    }
    let reservation = Reservation {
        amount,
        currency: payment.currency.clone(),
        channel: channel.clone(),
        psp_reference: psp_reference.clone(),
    };
    // The pending operation is the reservation.
    payment.operations.push(FollowUp {
        id: operation_id.to_string(),
        payment_id: payment.id.clone(),
        kind,
        status: PaymentStatus::Pending,
        amount,
        channel: channel.clone(),
        psp_reference: None,
        decline_code: None,
        in_doubt_until_ms: Some(in_doubt_until(channel)),
    });
    Ok(reservation)
}

/// Books what the channel did with a pending operation; the operation as it now stands. A
/// pending answer keeps it reserved: the PSP may still carry it out, so its amount must not
/// be offered again. An operation already settled (by reconciliation) is left as it is.
pub fn settle(
    payment: &mut Payment,
    operation_id: &str,
    status: PaymentStatus,
    psp_reference: Option<String>,
    decline_code: Option<String>,
) -> Option<FollowUp> {
    let op = payment
        .operations
        .iter_mut()
        .find(|op| op.id == operation_id)?;
    if op.status != PaymentStatus::Pending {
        return Some(op.clone());
    }
    // A pending answer may name the operation at the PSP (Adyen's `received`), which its
    // webhook refers to later.
    if status == PaymentStatus::Pending {
        op.psp_reference = psp_reference.or(op.psp_reference.take());
        return Some(op.clone());
    }
    op.status = status;
    op.in_doubt_until_ms = None;
    op.psp_reference = psp_reference.or(op.psp_reference.take());
    op.decline_code = decline_code;
    let op = op.clone();
    if status == PaymentStatus::Succeeded {
        match op.kind {
            FollowUpKind::Capture => payment.captured_amount += op.amount,
            FollowUpKind::Refund => payment.refunded_amount += op.amount,
            FollowUpKind::Cancel => {}
        }
    }
    Some(op)
}
