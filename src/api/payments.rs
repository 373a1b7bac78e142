//! `POST /v1/payments` and `GET /v1/payments/{id}`: validate the payment, route it, try its
//! channels in the decided order with failover, and keep every attempt.
//!
//! Failover happens here and only here: on a failure that surely did not charge (the
//! channel was unavailable, or declined with a code it lists as retryable) the next channel
//! is tried; after an ambiguous failure (timeout, error after sending) the payment is left
//! `pending` on that channel and never sent elsewhere.

use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use serde_json::value::RawValue;

use super::{ApiError, Scope, respond};
use crate::config::iso;
use crate::layers::HttpResponse;
use crate::limits::Skip;
use crate::metrics::LimitScope;
use crate::payload::PaymentBody;
use crate::routing::{self, Observation, PaymentFacts, Verdict};
use crate::store::{Attempt, MaskedCard, Outcome, Payment, PaymentStatus, StoreError, now_ms};
use crate::upstream::{Call, CallContext};

/// Longest `method` or `reference` accepted; longer values are surely mistakes.
const MAX_TEXT_LEN: usize = 255;

/// The fields paygate itself reads from a payment body; the rest passes through to the PSP.
pub struct NewPayment {
    pub(crate) amount: u64,
    pub(crate) currency: String,
    pub(crate) method: String,
    pub(crate) country: Option<String>,
    reference: Option<String>,
    capture: bool,
    card: Option<MaskedCard>,
    /// For the risk rules only: never stored, logged or shown.
    card_number: Option<String>,
}

/// The merchant body parser: the body's fields, kept raw for the PSP, and what paygate reads
/// from them. Every error is a 400 that names a field or a position, never a value.
pub fn read_payment(body: &[u8]) -> Result<(PaymentBody<'_>, NewPayment), ApiError> {
    let payload = PaymentBody::parse(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let new = NewPayment::read(&payload)?;
    Ok((payload, new))
}

pub async fn create(scope: &Scope, body: &Bytes) -> Result<HttpResponse, ApiError> {
    let (payload, new) = read_payment(body)?;
    let snapshot = scope.gateway.snapshot();
    let config = &snapshot.config;
    check_merchant_allows(config, &scope.merchant, &new)?;
    assess_risk(scope, config, &new)?;
    let facts = PaymentFacts {
        merchant: &scope.merchant,
        currency: &new.currency,
        method: &new.method,
        country: new.country.as_deref(),
        amount: new.amount,
    };
    let router = &scope.gateway.router;
    let decision = routing::decide(
        config,
        &snapshot.scores,
        &facts,
        router.now_ms(),
        &mut rand::rng(),
    )?;
    tracing::debug!(request_id = %scope.request_id, rule = %config.rules[decision.rule].name, label = ?decision.label, order = ?decision.order, "routing decision");
    router.budget.on_payment(router.now_ms());
    let segment = routing::segment_key(&new.method, &new.currency);
    let id = format!("pay_{}", ulid::Ulid::generate());
    let capture = new.capture;
    // Recorded before any channel is called, so that a payment a PSP may have charged is
    // never unknown to paygate; the merchant's key names it from now on, so a retry (during
    // or after a crash) finds this payment instead of making another.
    scope
        .gateway
        .store
        .insert(new.into_payment(&id, &scope.merchant))
        .map_err(|e| ApiError::Overloaded(format!("{e}; the payment was not sent")))?;
    if let Some(key) = &scope.key {
        let target = crate::store::idempotency::target(&id, None);
        scope
            .gateway
            .idempotency
            .bind(key, &target, &config.idempotency);
    }

    let mut finished = None;
    let mut last_decline = None;
    let mut attempted: Option<usize> = None;
    let mut skipped = false;
    let mut unrecorded = None;
    for &channel_id in &decision.order {
        if Instant::now() >= scope.deadline {
            break;
        }
        let (Some(client), Some(channel)) = (
            snapshot.upstreams.channel(channel_id),
            config.channels.get(channel_id),
        ) else {
            continue;
        };
        // A channel at its contracted rate or in-flight cap is passed over, not failed.
        let _in_flight = match crate::channel_limits::admit(&scope.gateway, channel).await {
            Ok(guard) => guard,
            Err(reason) => {
                tracing::debug!(request_id = %scope.request_id, channel = %channel.name, ?reason, "channel skipped");
                if reason == Skip::RateLimited {
                    scope.gateway.metrics.rate_limited(LimitScope::Channel);
                }
                skipped = true;
                continue;
            }
        };
        if attempted.is_some()
            && !router
                .budget
                .try_retry(router.now_ms(), &config.routing.retry_budget)
        {
            tracing::warn!(request_id = %scope.request_id, payment = %id, "retry budget exhausted: no further failover");
            break;
        }
        if let Err(error) = record_intent(scope, &id, channel).await {
            tracing::error!(request_id = %scope.request_id, payment = %id, channel = %channel.name, %error, "intent not recorded: the payment is not sent");
            unrecorded = Some(error);
            break;
        }
        if let Some(previous) = attempted {
            snapshot.metrics.failover(previous, channel_id);
        }
        attempted = Some(channel_id);
        let context = CallContext {
            paygate_id: &id,
            idempotency_key: &id,
            request_id: &scope.request_id,
            traceparent: scope.traceparent.as_ref(),
        };
        let exchange = client
            .send(
                &Call::Authorize { payment: &payload },
                &context,
                scope.deadline,
            )
            .await;
        if exchange.resent {
            snapshot.metrics.channels[channel_id].resent();
        }
        snapshot.metrics.channels[channel_id].attempt(exchange.outcome, exchange.latency);
        if let Some(observation) = Observation::from_outcome(exchange.outcome) {
            let answered = observation != Observation::Fault;
            let ejected = snapshot.scores[channel_id].observe(
                router.now_ms(),
                segment,
                observation,
                answered.then_some(exchange.latency),
                &config.routing.ejection,
            );
            if let Some(cause) = ejected {
                scope.gateway.metrics.ejected(&channel.name);
                scope
                    .gateway
                    .store
                    .event("ejection", Some(&channel.name), "consecutive faults");
                tracing::warn!(channel = %channel.name, ?cause, "channel ejected");
            }
        }
        if let Some(detail) = &exchange.detail {
            tracing::warn!(request_id = %scope.request_id, payment = %id, channel = %channel.name, outcome = exchange.outcome.as_str(), %detail, "channel attempt failed");
        }
        let attempt = Attempt {
            channel: channel.name.clone(),
            outcome: exchange.outcome,
            latency_ms: exchange.latency.as_millis() as u64,
            psp_reference: exchange.psp_reference.clone(),
            decline_code: exchange.decline_code.clone(),
            psp_code: exchange.psp_code.clone(),
            at_ms: now_ms(),
        };
        let retryable_decline = exchange.outcome == Outcome::Declined
            && exchange
                .decline_code
                .as_deref()
                .is_some_and(|code| channel.is_retryable_decline(code));
        let status = match routing::verdict(exchange.outcome, retryable_decline) {
            Verdict::Final(status) => Some(status),
            Verdict::FailOver => None,
        };
        if retryable_decline {
            last_decline = Some(attempt.clone());
        }
        scope.gateway.store.update(&id, &mut |p| {
            p.attempts.push(attempt.clone());
            if let Some(status) = status {
                p.status = status;
                p.channel = Some(attempt.channel.clone());
                p.psp_reference = attempt.psp_reference.clone();
                p.decline_code = attempt.decline_code.clone();
                p.next_action = exchange.action.clone();
                if status != PaymentStatus::Pending {
                    p.in_doubt_until_ms = None;
                }
                if status == PaymentStatus::Succeeded && capture {
                    p.captured_amount = p.amount;
                }
            }
        });
        if status.is_some() {
            finished = Some(attempt);
            break;
        }
    }
    let failure = if let Some(error) = unrecorded {
        // The channel whose intent failed was never called: the payment stands where its
        // last real attempt left it.
        scope.gateway.store.update(&id, &mut |p| {
            p.channel = p.attempts.last().map(|a| a.channel.clone());
        });
        settle(scope, &id, None, last_decline, true)
            .map(|_| ApiError::Overloaded(format!("{error}; payment {id} was not sent")))
    } else if attempted.is_none() && skipped {
        scope
            .gateway
            .store
            .update(&id, &mut |p| p.status = PaymentStatus::Failed);
        Some(ApiError::Overloaded(
            "every eligible channel is at its rate or in-flight limit; the payment was not sent"
                .into(),
        ))
    } else {
        settle(scope, &id, finished, last_decline, attempted.is_some())
    };
    // The final state, read once for the log line, the metrics and the answer.
    let payment = scope
        .gateway
        .store
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("payment {id} vanished from the store")))?;
    record_payment(scope, &snapshot, &payment);
    let answer = match failure {
        Some(failure) => Err(failure),
        None => {
            let status = match payment.status {
                PaymentStatus::Pending => StatusCode::ACCEPTED,
                _ => StatusCode::CREATED,
            };
            Ok(super::answer_recorded(
                scope,
                status,
                &payment,
                payment.channel.as_deref(),
            ))
        }
    };
    // With `journal.sync = "batch"` the answer waits for the journal to hold the outcome (and
    // the answer recorded for its idempotency key). The intent was committed before the call,
    // so an outcome that cannot be committed in time is still the truth to answer: after a
    // crash the payment is reconciled on its recorded channel, and the key finds it.
    if attempted.is_some()
        && let Err(error) =
            super::wait_durable(scope, &id, super::journal_wait_until(scope.deadline)).await
    {
        tracing::error!(request_id = %scope.request_id, payment = %id, %error, "outcome not yet journaled when answering; the intent is");
    }
    answer
}

/// The write-ahead intent: the journal holds the payment, the channel it is about to go to
/// and the merchant's key (bound before) before the first byte is sent. Failing that (disk
/// full, journal behind), the call does not happen.
async fn record_intent(
    scope: &Scope,
    id: &str,
    channel: &crate::config::Channel,
) -> Result<(), StoreError> {
    let until = super::in_doubt_until(scope, channel.timeout);
    scope.gateway.store.update(id, &mut |p| {
        p.channel = Some(channel.name.clone());
        p.in_doubt_until_ms = Some(until);
    });
    super::wait_durable(scope, id, Instant::now() + super::INTENT_WAIT).await
}

/// The one log line per payment, and `paygate_payments_total` for its final state.
fn record_payment(scope: &Scope, snapshot: &crate::gateway::Snapshot, payment: &Payment) {
    tracing::info!(
        request_id = %scope.request_id,
        payment = %payment.id,
        merchant = %payment.merchant,
        channel = payment.channel.as_deref().unwrap_or("none"),
        status = ?payment.status,
        attempts = payment.attempts.len(),
        latency_ms = scope.received.elapsed().as_millis() as u64,
        "payment"
    );
    let config = &snapshot.config;
    let Some(merchant) = config
        .merchants
        .iter()
        .position(|m| m.id == payment.merchant)
    else {
        return;
    };
    let channel = payment
        .channel
        .as_deref()
        .and_then(|name| config.channel_by_name(name))
        .map(|c| c.id);
    snapshot.metrics.payment(merchant, channel, payment.status);
}

/// The risk rules, global then the merchant's; 422 `risk_rejected` naming the rule.
fn assess_risk(
    scope: &Scope,
    config: &crate::config::Config,
    new: &NewPayment,
) -> Result<(), ApiError> {
    let merchant = config
        .merchant(&scope.merchant)
        .ok_or(ApiError::Unauthenticated)?;
    let facts = crate::risk::Facts {
        merchant: &scope.merchant,
        amount: new.amount,
        country: new.country.as_deref(),
        card_number: new.card_number.as_deref(),
    };
    scope
        .gateway
        .risk
        .assess([&config.risk, &merchant.risk], &facts)
        .map_err(|rejection| {
            scope.gateway.metrics.risk_rejected(&rejection.0);
            tracing::info!(request_id = %scope.request_id, merchant = %scope.merchant, rule = %rejection.0, "risk rejected");
            ApiError::RiskRejected { rule: rejection.0 }
        })
}

/// Sets the final status when no attempt gave one; the error to answer with, if any.
fn settle(
    scope: &Scope,
    id: &str,
    finished: Option<Attempt>,
    last_decline: Option<Attempt>,
    tried_any: bool,
) -> Option<ApiError> {
    if finished.is_some() {
        return None;
    }
    let store = &scope.gateway.store;
    if let Some(decline) = last_decline {
        // Every channel that answered refused the card, if retryably: that is the answer.
        store.update(id, &mut |p| {
            p.status = PaymentStatus::Declined;
            p.channel = Some(decline.channel.clone());
            p.psp_reference = decline.psp_reference.clone();
            p.decline_code = decline.decline_code.clone();
        });
        return None;
    }
    store.update(id, &mut |p| {
        p.status = PaymentStatus::Failed;
        p.in_doubt_until_ms = None;
    });
    let payment_id = id.to_string();
    Some(if Instant::now() >= scope.deadline || !tried_any {
        ApiError::DeadlineExceeded {
            payment_id: Some(payment_id),
        }
    } else {
        ApiError::AllChannelsFailed { payment_id }
    })
}

pub fn get(scope: &Scope, id: &str) -> Result<HttpResponse, ApiError> {
    let payment = scope
        .gateway
        .store
        .find(id)
        .map_err(|error| ApiError::Overloaded(format!("{error}; retry shortly")))?
        .filter(|p| *p.merchant == *scope.merchant)
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    Ok(respond(
        StatusCode::OK,
        &payment,
        payment.channel.as_deref(),
    ))
}

fn check_merchant_allows(
    config: &crate::config::Config,
    merchant: &str,
    new: &NewPayment,
) -> Result<(), ApiError> {
    let Some(merchant) = config.merchants.iter().find(|m| m.id == merchant) else {
        return Err(ApiError::Unauthenticated);
    };
    if !merchant.allows_currency(&new.currency) {
        return Err(ApiError::InvalidRequest(format!(
            "currency: {} is not enabled for this merchant",
            new.currency
        )));
    }
    if !merchant.allows_method(&new.method) {
        return Err(ApiError::InvalidRequest(format!(
            "method: {:?} is not enabled for this merchant",
            new.method
        )));
    }
    Ok(())
}

impl NewPayment {
    /// Reads the fields paygate uses. Every message names the field and what it must be, and
    /// never repeats what was sent.
    pub(crate) fn read(body: &PaymentBody<'_>) -> Result<Self, ApiError> {
        let amount = amount(body.get("amount"))?;
        let currency = text(body, "currency")?
            .ok_or_else(|| invalid("currency is required (ISO 4217, such as \"EUR\")"))?;
        if !iso::is_currency(&currency) {
            return Err(invalid(
                "currency must be an ISO 4217 code in capitals, such as \"EUR\"",
            ));
        }
        let method = text(body, "method")?.ok_or_else(|| invalid("method is required"))?;
        let country = text(body, "country")?;
        if country.as_deref().is_some_and(|c| !iso::is_country(c)) {
            return Err(invalid(
                "country must be an ISO 3166-1 alpha-2 code in capitals, such as \"DE\"",
            ));
        }
        let capture = match body.get("capture").map(RawValue::get) {
            None | Some("null") => false,
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(invalid("capture must be true or false")),
        };
        let (card_number, card) = card(body)?.unzip();
        Ok(Self {
            amount,
            currency,
            method,
            country,
            reference: text(body, "reference")?,
            capture,
            card,
            card_number,
        })
    }

    fn into_payment(self, id: &str, merchant: &str) -> Payment {
        Payment {
            id: id.to_string(),
            merchant: merchant.to_string(),
            status: PaymentStatus::Pending,
            amount: self.amount,
            currency: self.currency,
            method: self.method,
            country: self.country,
            reference: self.reference,
            channel: None,
            psp_reference: None,
            decline_code: None,
            card: self.card,
            next_action: None,
            captured_amount: 0,
            refunded_amount: 0,
            reconciled: false,
            capture: self.capture,
            in_doubt_until_ms: None,
            attempts: Vec::new(),
            operations: Vec::new(),
            created_at_ms: now_ms(),
            version: 0,
        }
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::InvalidRequest(message.to_string())
}

/// `amount`, read from its raw text so that no value is ever rounded on the way.
fn amount(raw: Option<&RawValue>) -> Result<u64, ApiError> {
    let Some(text) = raw.map(RawValue::get) else {
        return Err(invalid("amount is required (an integer in minor units)"));
    };
    let integer = text.bytes().all(|b| b.is_ascii_digit());
    let number = text
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(0) => Err(invalid("amount must be greater than 0")),
        Ok(amount) => Ok(amount),
        Err(_) if integer => Err(invalid("amount is too large for minor units")),
        Err(_) if text.starts_with('-') => Err(invalid("amount must be greater than 0")),
        Err(_) if number => Err(invalid(
            "amount must be an integer number of minor units (1999 for 19.99), not a decimal",
        )),
        Err(_) => Err(invalid("amount must be an integer number of minor units")),
    }
}

/// An optional string field of at most [`MAX_TEXT_LEN`] characters.
fn text(body: &PaymentBody<'_>, name: &str) -> Result<Option<String>, ApiError> {
    let Some(raw) = body.get(name) else {
        return Ok(None);
    };
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(Some(s)) if s.is_empty() || s.len() > MAX_TEXT_LEN => Err(ApiError::InvalidRequest(
            format!("{name} must be 1 to {MAX_TEXT_LEN} characters"),
        )),
        Ok(value) => Ok(value),
        Err(_) => Err(ApiError::InvalidRequest(format!("{name} must be a string"))),
    }
}

/// The card number (never kept beyond the request) and its masked form, when the body has a
/// card. The message never repeats what was sent.
fn card(body: &PaymentBody<'_>) -> Result<Option<(String, MaskedCard)>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Card {
        number: String,
    }
    let Some(raw) = body.get("card") else {
        return Ok(None);
    };
    let invalid = || invalid("card.number must be a string of 12 to 19 digits");
    let card: Card = serde_json::from_str(raw.get()).map_err(|_| invalid())?;
    let masked = MaskedCard::from_number(&card.number).ok_or_else(invalid)?;
    Ok(Some((card.number, masked)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<NewPayment, String> {
        let body = PaymentBody::parse(json.as_bytes()).unwrap();
        NewPayment::read(&body).map_err(|e| e.to_string())
    }

    #[test]
    fn amount_must_be_a_positive_integer() {
        let base = r#""currency":"EUR","method":"card""#;
        assert!(read(&format!("{{\"amount\":1999,{base}}}")).is_ok());
        for (amount, needle) in [
            ("0", "greater than 0"),
            ("-5", "greater than 0"),
            ("19.99", "not a decimal"),
            ("1e3", "not a decimal"),
            ("\"1999\"", "integer"),
            ("true", "integer"),
            ("123456789012345678901234567890", "too large"),
        ] {
            let err = read(&format!("{{\"amount\":{amount},{base}}}"))
                .err()
                .unwrap();
            assert!(
                err.contains("amount") && err.contains(needle),
                "{amount}: {err}"
            );
        }
    }

    #[test]
    fn card_errors_never_echo_the_number() {
        let err = read(r#"{"amount":1,"currency":"EUR","method":"card","card":{"number":"4111 1111 1111 1111"}}"#)
            .err()
            .unwrap();
        assert!(err.contains("card.number"));
        assert!(!err.contains("4111"));
    }
}
