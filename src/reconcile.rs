//! Reconciliation of pending payments: a payment left `pending` (the PSP said so, or the call
//! was ambiguous) is re-queried with `GET` on its own channel, never another, with a back-off
//! that doubles from `[reconciliation] interval_ms` to `max_backoff_ms`, until the PSP gives
//! a final answer or `deadline_secs` pass. The final status is stored (and journaled), and
//! when the merchant has a `webhook_url` it is POSTed there, signed like merchant requests
//! (`Paygate-Signature`) when the merchant has a signing secret, with retries.
//!
//! A pending payment without a PSP reference (the call timed out before any answer) cannot be
//! queried by the paygate-v1 protocol: it stays pending and is reported for operations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use crate::gateway::Gateway;
use crate::store::{Outcome, Payment, PaymentStatus, now_ms};
use crate::upstream::{Call, CallContext};

/// Deliveries of one webhook at most, 1 s, 2 s, 4 s ... apart.
const WEBHOOK_TRIES: u32 = 5;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one status query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

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
        let pending = gateway.store.pending();
        due.retain(|id, _| pending.iter().any(|p| &p.id == id));
        for payment in pending {
            let now = Instant::now();
            let entry = due.entry(payment.id.clone()).or_insert(Due {
                at: now,
                wait: settings.interval,
            });
            if entry.at > now {
                continue;
            }
            entry.wait = (entry.wait * 2).min(settings.max_backoff);
            entry.at = now + entry.wait;
            let age = Duration::from_millis(now_ms().saturating_sub(payment.created_at_ms));
            if age > settings.deadline {
                tracing::warn!(payment = %payment.id, "still pending after the reconciliation deadline: needs operations");
                continue;
            }
            reconcile(&gateway, &payment).await;
        }
    }
}

/// Queries one payment's channel; stores a final answer and notifies the merchant.
async fn reconcile(gateway: &Arc<Gateway>, payment: &Payment) {
    let (Some(channel), Some(reference)) = (&payment.channel, &payment.psp_reference) else {
        return;
    };
    let snapshot = gateway.snapshot();
    let Some(client) = snapshot
        .config
        .channel_by_name(channel)
        .and_then(|c| snapshot.upstreams.channel(c.id))
    else {
        tracing::warn!(payment = %payment.id, %channel, "pending on a channel no longer configured");
        return;
    };
    let request_id = format!("rec_{}", ulid::Ulid::generate());
    let context = CallContext {
        paygate_id: &payment.id,
        idempotency_key: &payment.id,
        request_id: &request_id,
        traceparent: None,
    };
    let call = Call::Status {
        psp_reference: reference,
    };
    let exchange = client
        .send(&call, &context, Instant::now() + QUERY_TIMEOUT)
        .await;
    let status = match exchange.outcome {
        Outcome::Succeeded => PaymentStatus::Succeeded,
        Outcome::Declined => PaymentStatus::Declined,
        _ => return,
    };
    let mut settled = None;
    gateway.store.update(&payment.id, &mut |p| {
        if p.status != PaymentStatus::Pending {
            return;
        }
        p.status = status;
        p.reconciled = true;
        p.decline_code = exchange.decline_code.clone();
        settled = Some(p.clone());
    });
    let Some(settled) = settled else {
        return;
    };
    if let Err(error) = gateway.store.durable(&settled.id).await {
        tracing::error!(payment = %settled.id, %error, "reconciled status not journaled yet");
    }
    tracing::info!(payment = %settled.id, channel = %channel, status = ?status, "payment reconciled");
    notify_merchant(gateway, settled);
}

/// POSTs the final status to the merchant's webhook, in the background, with retries.
fn notify_merchant(gateway: &Arc<Gateway>, payment: Payment) {
    let snapshot = gateway.snapshot();
    let Some(merchant) = snapshot.config.merchant(&payment.merchant) else {
        return;
    };
    let Some(url) = merchant.webhook_url.clone() else {
        return;
    };
    let secret = merchant.signing_secret.clone();
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
            if let Some(secret) = &secret
                && let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret.0)
            {
                mac.update(format!("{timestamp}.").as_bytes());
                mac.update(&body);
                let signature = hex::encode(mac.finalize().into_bytes());
                request =
                    request.header("paygate-signature", format!("t={timestamp},v1={signature}"));
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
