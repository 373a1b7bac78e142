//! `POST /v1/payments/{id}/capture` and `POST /v1/payments/{id}/refunds`: sent to the channel
//! that authorized the payment and to no other, for at most what is left.
//!
//! The amount is reserved on the payment before the call and settled after it, so two
//! concurrent captures cannot together exceed the authorization.

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, Scope};
use crate::layers::HttpResponse;
use crate::store::{FollowUp, FollowUpKind, Outcome, Payment, PaymentStatus};
use crate::upstream::{Call, CallContext};

#[derive(Serialize)]
struct Answer<'a> {
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
    let mut reserved = Err(ApiError::NotFound(format!("no payment {id}")));
    store.update(id, &mut |payment| {
        reserved = if *payment.merchant == *scope.merchant {
            reserve(payment, kind, requested)
        } else {
            Err(ApiError::NotFound(format!("no payment {id}")))
        };
    });
    let reservation = reserved?;
    let snapshot = scope.gateway.snapshot();
    let client = snapshot
        .config
        .channel_by_name(&reservation.channel)
        .and_then(|c| snapshot.upstreams.channel(c.id));
    let operation_id = match kind {
        FollowUpKind::Capture => format!("cap_{}", ulid::Ulid::generate()),
        FollowUpKind::Refund => format!("ref_{}", ulid::Ulid::generate()),
    };
    let exchange = match client {
        Some(client) => {
            let call = match kind {
                FollowUpKind::Capture => Call::Capture {
                    psp_reference: &reservation.psp_reference,
                    amount: reservation.amount,
                },
                FollowUpKind::Refund => Call::Refund {
                    psp_reference: &reservation.psp_reference,
                    amount: reservation.amount,
                },
            };
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
    let status = match outcome {
        Outcome::Succeeded => PaymentStatus::Succeeded,
        Outcome::Declined => PaymentStatus::Declined,
        Outcome::Pending | Outcome::Error | Outcome::Timeout => PaymentStatus::Pending,
        Outcome::Unavailable => PaymentStatus::Failed,
    };
    let record = FollowUp {
        id: operation_id,
        payment_id: id.to_string(),
        kind,
        status,
        amount: reservation.amount,
        channel: reservation.channel.clone(),
        psp_reference: exchange.as_ref().and_then(|e| e.psp_reference.clone()),
        decline_code: exchange.as_ref().and_then(|e| e.decline_code.clone()),
    };
    store.update(id, &mut |payment| settle(payment, &record));
    let answer = if status == PaymentStatus::Failed {
        Err(ApiError::AllChannelsFailed {
            payment_id: id.to_string(),
        })
    } else {
        let answer = Answer {
            id: &record.id,
            payment_id: id,
            status,
            amount: record.amount,
            channel: &record.channel,
            psp_reference: record.psp_reference.as_deref(),
            decline_code: record.decline_code.as_deref(),
        };
        Ok(super::answer_recorded(
            scope,
            StatusCode::OK,
            &answer,
            Some(&record.channel),
        ))
    };
    let recorded = match tokio::time::timeout_at(
        super::journal_wait_until(scope.deadline).into(),
        store.durable(id),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(crate::store::StoreError::Unavailable(
            "is not writing".into(),
        )),
    };
    if let Err(e) = recorded {
        return Err(ApiError::Overloaded(format!(
            "{e}: the {kind:?} of payment {id} could not be recorded in time; GET /v1/payments/{id} tells its status"
        )));
    }
    answer
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
    let (left, verb) = match kind {
        FollowUpKind::Capture => (
            payment
                .amount
                .saturating_sub(payment.captured_amount + payment.capture_in_flight),
            "captured",
        ),
        FollowUpKind::Refund => (
            payment
                .captured_amount
                .saturating_sub(payment.refunded_amount + payment.refund_in_flight),
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
        channel: channel.clone(),
        psp_reference: psp_reference.clone(),
    };
    match kind {
        FollowUpKind::Capture => payment.capture_in_flight += amount,
        FollowUpKind::Refund => payment.refund_in_flight += amount,
    }
    Ok(reservation)
}

/// Releases the reservation and books what the channel did. A pending operation stays
/// reserved: the PSP may still carry it out, so its amount must not be offered again.
fn settle(payment: &mut Payment, record: &FollowUp) {
    let (in_flight, done) = match record.kind {
        FollowUpKind::Capture => (&mut payment.capture_in_flight, &mut payment.captured_amount),
        FollowUpKind::Refund => (&mut payment.refund_in_flight, &mut payment.refunded_amount),
    };
    match record.status {
        PaymentStatus::Pending => {}
        PaymentStatus::Succeeded => {
            *in_flight -= record.amount;
            *done += record.amount;
        }
        PaymentStatus::Declined | PaymentStatus::Failed => *in_flight -= record.amount,
    }
    payment.operations.push(record.clone());
}
