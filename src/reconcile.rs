//! Reconciliation of payments in doubt: a payment left `pending` (the PSP said so, the call
//! was ambiguous, or paygate crashed while it was in flight) is asked about on the channel it
//! was recorded as sent to, never another, with a back-off that doubles from
//! `[reconciliation] interval_ms` to `max_backoff_ms`, until the PSP gives a final answer or
//! `deadline_secs` pass. With a PSP reference the dialect's status query is used; without
//! one (no answer ever arrived) the dialect looks the payment up by its `paygate_id`, and a
//! PSP that has no such payment proves it was never received: the payment is `failed`,
//! nothing charged. No query is made before the attempt's own timeout has passed
//! (`in_doubt_until_ms`), so a "never received" cannot race the request itself. A pending
//! payment with no channel was never sent (the channel is journaled before the first byte
//! goes out): once its request is surely over, it is `failed` too.
//!
//! With a journal shared by several replicas, any of them may reconcile a payment, one at a
//! time: it asks only while it holds the payment's lease (`PaymentStore::lease`).
//!
//! The final status is stored (and journaled), and when the merchant has a `webhook_url` it
//! is POSTed there, signed like merchant requests (`Paygate-Signature`) when the merchant
//! has a signing secret, with retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use crate::gateway::Gateway;
use crate::store::{Held, Outcome, Payment, PaymentStatus, now_ms};
use crate::upstream::{Call, CallContext, Lookup};

/// Deliveries of one webhook at most, 1 s, 2 s, 4 s ... apart.
const WEBHOOK_TRIES: u32 = 5;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one status query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries in flight at once, so that a slow PSP cannot hold back the others for long.
const MAX_CONCURRENT_QUERIES: usize = 64;
/// How long a replica keeps the right to reconcile a payment it asked about: past the query's
/// own timeout, so that two replicas never ask at once, and no longer, since a replica that
/// dies holding it delays the payment's reconciliation by that much.
const LEASE: Duration = Duration::from_secs(15);
/// Beyond the request timeout, how long a payment without a channel may still be in its
/// handler (the answer's wait for the journal included).
const UNSENT_GRACE: Duration = Duration::from_secs(5);

/// When each pending payment is next due, and the wait after that.
struct Due {
    at: Instant,
    wait: Duration,
}

/// Runs until the process stops.
pub async fn reconcile_forever(gateway: Arc<Gateway>) {
    let mut due: HashMap<String, Due> = HashMap::new();
    loop {
        let settings = gateway.snapshot().config.reconciliation.clone();
        tokio::time::sleep(settings.interval).await;
        let in_doubt = askable(gateway.store.pending(), now_ms());
        let ids: std::collections::HashSet<&str> = in_doubt.iter().map(|item| item.id()).collect();
        due.retain(|id, _| ids.contains(id.as_str()));
        let mut queries = JoinSet::new();
        for item in in_doubt {
            let now = Instant::now();
            let entry = due.entry(item.id().to_string()).or_insert(Due {
                at: now,
                wait: settings.interval,
            });
            if entry.at > now {
                continue;
            }
            entry.wait = (entry.wait * 2).min(settings.max_backoff);
            entry.at = now + entry.wait;
            let age = Duration::from_millis(now_ms().saturating_sub(item.payment.created_at_ms));
            if age > settings.deadline {
                tracing::warn!(payment = %item.payment.id, item = %item.id(), channel = item.payment.channel.as_deref().unwrap_or("none"), "still pending after the reconciliation deadline: needs operations");
                continue;
            }
            // With a journal shared by replicas, one of them asks about a payment at a time.
            let Ok(Some(held)) = Held::take(&gateway.store, &item.payment.id, LEASE) else {
                continue;
            };
            while queries.len() >= MAX_CONCURRENT_QUERIES {
                queries.join_next().await;
            }
            let gateway = gateway.clone();
            queries.spawn(async move {
                let _held = held;
                match item.operation {
                    None => reconcile(gateway, item.payment, age).await,
                    Some(operation) => reconcile_operation(gateway, item.payment, operation).await,
                }
            });
        }
        while queries.join_next().await.is_some() {}
    }
}

/// One thing awaiting a final answer: a payment, or one capture or refund of it.
struct InDoubt {
    payment: Payment,
    operation: Option<String>,
}

impl InDoubt {
    /// The payment's id, or the operation's.
    fn id(&self) -> &str {
        self.operation.as_deref().unwrap_or(&self.payment.id)
    }
}

/// What is in doubt and may be asked about now: its call's own timeout has passed.
fn askable(pending: Vec<Payment>, now_ms: u64) -> Vec<InDoubt> {
    let passed = |until: Option<u64>| until.is_none_or(|until| now_ms >= until);
    let mut items = Vec::new();
    for payment in pending {
        let operations: Vec<String> = payment
            .operations
            .iter()
            .filter(|op| op.status == PaymentStatus::Pending && passed(op.in_doubt_until_ms))
            .map(|op| op.id.clone())
            .collect();
        for operation in operations {
            items.push(InDoubt {
                payment: payment.clone(),
                operation: Some(operation),
            });
        }
        if payment.status == PaymentStatus::Pending && passed(payment.in_doubt_until_ms) {
            items.push(InDoubt {
                payment,
                operation: None,
            });
        }
    }
    items
}

/// What a query found.
enum Finding {
    Final {
        status: PaymentStatus,
        psp_reference: Option<String>,
        decline_code: Option<String>,
    },
    NotYet,
}

/// Asks one payment's channel; stores a final answer and notifies the merchant.
async fn reconcile(gateway: Arc<Gateway>, payment: Payment, age: Duration) {
    let finding = match &payment.channel {
        Some(channel) => query(&gateway, &payment, channel).await,
        None => never_sent(&gateway, age),
    };
    let Finding::Final {
        status,
        psp_reference,
        decline_code,
    } = finding
    else {
        return;
    };
    let mut settled = None;
    gateway.store.update(&payment.id, &mut |p| {
        // Only the state the query was about: a handler that moved the payment meanwhile
        // (another attempt, a final answer) wins.
        if p.status != PaymentStatus::Pending
            || p.channel != payment.channel
            || p.in_doubt_until_ms != payment.in_doubt_until_ms
        {
            return;
        }
        p.status = status;
        p.reconciled = true;
        p.in_doubt_until_ms = None;
        p.next_action = None;
        if psp_reference.is_some() {
            p.psp_reference = psp_reference.clone();
        }
        p.decline_code = decline_code.clone();
        if status == PaymentStatus::Succeeded && p.capture {
            p.captured_amount = p.amount;
        }
        settled = Some(p.clone());
    });
    let Some(settled) = settled else {
        return;
    };
    if let Err(error) = gateway.store.durable(&settled.id).await {
        tracing::error!(payment = %settled.id, %error, "reconciled status not journaled yet");
    }
    tracing::info!(payment = %settled.id, channel = settled.channel.as_deref().unwrap_or("none"), status = ?status, "payment reconciled");
    notify_merchant(&gateway, settled);
}

/// Re-sends a capture or refund in doubt to its channel with its own `Idempotency-Key`: a PSP
/// that carried it out answers the first outcome again instead of doing it twice (the
/// contract's promise for every call), one that never got it does it now, which is what the
/// merchant asked for.
async fn reconcile_operation(gateway: Arc<Gateway>, payment: Payment, operation_id: String) {
    let Some(op) = payment.operations.iter().find(|op| op.id == operation_id) else {
        return;
    };
    let Some(psp_reference) = payment.psp_reference.as_deref() else {
        return;
    };
    let snapshot = gateway.snapshot();
    let Some(client) = snapshot.client(&op.channel) else {
        tracing::warn!(payment = %payment.id, operation = %op.id, channel = %op.channel, "operation pending on a channel no longer configured");
        return;
    };
    let request_id = format!("rec_{}", ulid::Ulid::generate());
    let context = CallContext {
        paygate_id: &payment.id,
        idempotency_key: &op.id,
        request_id: &request_id,
        traceparent: None,
    };
    let call = crate::api::operation_call(op.kind, psp_reference, op.amount, &payment.currency);
    let exchange = client
        .send(&call, &context, Instant::now() + QUERY_TIMEOUT)
        .await;
    let status = crate::api::operation_status(exchange.outcome);
    let result = match exchange.outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Declined => "declined",
        Outcome::Pending => "pending",
        _ => "error",
    };
    gateway.metrics.reconciliation(&op.channel, result);
    // A re-send refused unprocessed (503) says nothing of the first: still in doubt.
    if matches!(status, PaymentStatus::Pending | PaymentStatus::Failed) {
        return;
    }
    let mut settled = None;
    gateway.store.update(&payment.id, &mut |p| {
        let was_pending = p
            .operations
            .iter()
            .any(|o| o.id == operation_id && o.status == PaymentStatus::Pending);
        if was_pending {
            settled = crate::api::settle_operation(
                p,
                &operation_id,
                status,
                exchange.psp_reference.clone(),
                exchange.decline_code.clone(),
            );
        }
    });
    let Some(op) = settled else {
        return;
    };
    if let Err(error) = gateway.store.durable(&payment.id).await {
        tracing::error!(payment = %payment.id, operation = %op.id, %error, "reconciled operation not journaled yet");
    }
    tracing::info!(payment = %payment.id, operation = %op.id, status = ?op.status, "operation reconciled");
}

/// A payment with no channel never reached a PSP: failed once its request is surely over.
fn never_sent(gateway: &Gateway, age: Duration) -> Finding {
    let request_timeout = gateway.snapshot().config.server.request_timeout;
    if age <= request_timeout + UNSENT_GRACE {
        return Finding::NotYet;
    }
    Finding::Final {
        status: PaymentStatus::Failed,
        psp_reference: None,
        decline_code: None,
    }
}

async fn query(gateway: &Gateway, payment: &Payment, channel: &str) -> Finding {
    let snapshot = gateway.snapshot();
    let Some(client) = snapshot.client(channel) else {
        tracing::warn!(payment = %payment.id, %channel, "pending on a channel no longer configured");
        return Finding::NotYet;
    };
    let settled_after = match client.lookup() {
        Lookup::ByPaygateId { settled_after } => settled_after,
        // Only the PSP's webhook can settle it.
        Lookup::WebhookOnly => return Finding::NotYet,
    };
    let request_id = format!("rec_{}", ulid::Ulid::generate());
    let context = CallContext {
        paygate_id: &payment.id,
        idempotency_key: &payment.id,
        request_id: &request_id,
        traceparent: None,
    };
    let call = Call::Status {
        psp_reference: payment.psp_reference.as_deref(),
    };
    let exchange = client
        .send(&call, &context, Instant::now() + QUERY_TIMEOUT)
        .await;
    // A PSP whose search lags proves "never received" only once it has caught up.
    let caught_up = payment
        .in_doubt_until_ms
        .is_none_or(|until| now_ms() >= until.saturating_add(settled_after.as_millis() as u64));
    let (result, finding) = match exchange.outcome {
        _ if exchange.unknown_to_psp && !caught_up => ("not_found_yet", Finding::NotYet),
        _ if exchange.unknown_to_psp => (
            "never_received",
            Finding::Final {
                status: PaymentStatus::Failed,
                psp_reference: None,
                decline_code: None,
            },
        ),
        Outcome::Succeeded => (
            "succeeded",
            Finding::Final {
                status: PaymentStatus::Succeeded,
                psp_reference: exchange.psp_reference,
                decline_code: None,
            },
        ),
        Outcome::Declined => (
            "declined",
            Finding::Final {
                status: PaymentStatus::Declined,
                psp_reference: exchange.psp_reference,
                decline_code: exchange.decline_code,
            },
        ),
        Outcome::Pending => ("pending", Finding::NotYet),
        _ => {
            tracing::warn!(payment = %payment.id, %channel, detail = exchange.detail.as_deref().unwrap_or(""), "status query failed; asking again later");
            ("error", Finding::NotYet)
        }
    };
    gateway.metrics.reconciliation(channel, result);
    finding
}

/// POSTs the final status to the merchant's webhook, in the background, with retries.
pub(crate) fn notify_merchant(gateway: &Arc<Gateway>, payment: Payment) {
    let snapshot = gateway.snapshot();
    let Some(merchant) = snapshot.config.merchant(&payment.merchant) else {
        return;
    };
    let Some(url) = merchant.webhook_url.clone() else {
        return;
    };
    let secret = merchant.signing_secret.clone();
    let path = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| "/".to_string());
    tokio::spawn(async move {
        let Ok(body) = serde_json::to_vec(&serde_json::json!({
            "type": "payment.reconciled",
            "payment": payment,
        })) else {
            return;
        };
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(webhook_connector());
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=WEBHOOK_TRIES {
            let timestamp = now_ms() / 1000;
            let mut request =
                Request::post(url.as_str()).header("content-type", "application/json");
            if let Some(secret) = &secret {
                let signature =
                    crate::layers::signature_header(&secret.0, timestamp, "POST", &path, &body);
                request = request.header("paygate-signature", signature);
            }
            let Ok(request) = request.body(Full::new(Bytes::from(body.clone()))) else {
                return;
            };
            match tokio::time::timeout(WEBHOOK_TIMEOUT, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => return,
                outcome => {
                    tracing::warn!(payment = %payment.id, attempt, ?outcome, "webhook delivery failed");
                }
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    });
}

fn webhook_connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    match crate::tls::client_config(None, None) {
        Ok(tls) => builder.with_tls_config(tls),
        Err(_) => builder.with_tls_config(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
    .https_or_http()
    .enable_http1()
    .wrap_connector(http)
}
