//! The admin API under `/admin/` on the admin listener: live channel figures, the active
//! config's version, and the explanation of a routing decision for a payment body.
//!
//! Every endpoint needs `Authorization: Bearer <PAYGATE_ADMIN_TOKEN>`; without the variable
//! the admin API is disabled (404), never open. The token is compared by its SHA-256 in
//! constant time. Explaining a decision changes no state and sends nothing.

use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use hyper::body::Body;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::payments::read_payment;
use super::{ApiError, json_response};
use crate::gateway::{Gateway, Reloaded};
use crate::layers::{HttpResponse, RequestId, read_body};
use crate::routing::{self, Candidate, PaymentFacts};

/// Admin bodies are small payment examples.
const MAX_ADMIN_BODY: usize = 64 * 1024;
const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const FORMULA: &str = "score = Beta(evidence.successes + 1, evidence failures + 1) draw - latency_penalty_per_second x latency_s - fee_penalty x fee / amount; highest score first; evidence remembers about the last 1000 outcomes and fades with the traffic of its segment (over 30000 payments, 1000 after a change) and with time (10 min); when the detector's log-likelihood ratio of the last 8-64 outcomes against the history before them passes its threshold, the history is dropped and the evidence restarts from those outcomes";

/// The SHA-256 of the admin token.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// From `PAYGATE_ADMIN_TOKEN`; None (admin API disabled) when unset or empty.
    pub fn from_env() -> Option<Self> {
        let token = std::env::var("PAYGATE_ADMIN_TOKEN").ok()?;
        (!token.is_empty()).then(|| Self(Sha256::digest(token.as_bytes()).into()))
    }

    fn admits<B>(&self, request: &Request<B>) -> bool {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let hash: [u8; 32] = Sha256::digest(presented).into();
        // Constant time: every byte is compared whatever the first difference.
        hash.iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

pub async fn handle<B>(
    gateway: &Gateway,
    token: Option<&AdminToken>,
    request: Request<B>,
) -> HttpResponse
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // Set by the request-id layer in front of the admin listener, as on the merchant port.
    let request_id = RequestId::of(&request);
    let Some(token) = token else {
        return ApiError::NotFound("the admin API is disabled: set PAYGATE_ADMIN_TOKEN".into())
            .into_response(&request_id);
    };
    if !token.admits(&request) {
        return ApiError::Unauthenticated.into_response(&request_id);
    }
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["admin", "channels"]) => Ok(channels(gateway)),
        (Method::POST, ["admin", "channels", name, action @ ("drain" | "enable")]) => {
            switch(gateway, name, *action == "drain").await
        }
        (Method::GET, ["admin", "config"]) => Ok(config(gateway)),
        (Method::GET, ["admin", "audit"]) => Ok(json_response(
            StatusCode::OK,
            &json!({ "entries": gateway.audit.entries() }),
        )),
        (Method::POST, ["admin", "reload"]) => reload(gateway).await,
        (Method::POST, ["admin", "explain"]) => {
            let deadline = Instant::now() + ADMIN_BODY_TIMEOUT;
            match read_body(request.into_body(), MAX_ADMIN_BODY, Some(deadline)).await {
                Ok(body) => explain(gateway, &body),
                Err(e) => Err(e),
            }
        }
        _ => Err(ApiError::NotFound("no such admin endpoint".into())),
    };
    result.unwrap_or_else(|e| e.into_response(&request_id))
}

#[derive(Serialize)]
struct ChannelView<'a> {
    name: &'a str,
    state: &'static str,
    success_rate: f64,
    window: routing::Counts,
    latency_ms: f64,
    latency_peak_ms: f64,
    ejections: u32,
    consecutive_faults: u32,
}

fn channels(gateway: &Gateway) -> HttpResponse {
    let snapshot = gateway.snapshot();
    let now = gateway.router.now_ms();
    let views: Vec<ChannelView<'_>> = snapshot
        .config
        .channels
        .iter()
        .zip(&snapshot.scores)
        .map(|(channel, score)| {
            let window = score.overall(now);
            ChannelView {
                name: &channel.name,
                state: if score.is_drained() {
                    "drained"
                } else {
                    score.health.state(now).as_str()
                },
                success_rate: score.evidence(now).rate(),
                window,
                latency_ms: score.latency_ms(),
                latency_peak_ms: score.latency_peak_ms(),
                ejections: score.health.ejections(),
                consecutive_faults: score.health.consecutive_faults(),
            }
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "channels": views }))
}

/// Drain or enable a channel: from the next request on, on this replica at once. In cluster
/// mode the answer adds `shared`: whether every replica has it too (false: Redis did not
/// answer; it is pushed when Redis is back).
async fn switch(gateway: &Gateway, name: &str, drain: bool) -> Result<HttpResponse, ApiError> {
    let switched = gateway
        .set_drained(name, drain)
        .await
        // The name comes from the request path: not quoted back.
        .map_err(|_| ApiError::NotFound("no channel of that name".into()))?;
    let state = if drain { "drained" } else { "enabled" };
    let mut body = json!({ "channel": name, "state": state });
    if let Some(shared) = switched.shared {
        body["shared"] = json!(shared);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// Reloads the routes file; a bad file is refused with `paygate check`'s messages (422) and
/// the old config keeps serving.
async fn reload(gateway: &Gateway) -> Result<HttpResponse, ApiError> {
    let outcome = tokio::task::block_in_place(|| gateway.reload("admin"));
    Ok(match outcome {
        Ok(Reloaded::Unchanged) => json_response(
            StatusCode::OK,
            &json!({ "result": "unchanged", "version": gateway.snapshot().config.version }),
        ),
        Ok(Reloaded::Applied { version, changes }) => json_response(
            StatusCode::OK,
            &json!({ "result": "ok", "version": version, "changes": changes }),
        ),
        Err(error) => {
            return Err(ApiError::ConfigRejected {
                version: gateway.snapshot().config.version.clone(),
                problems: error.to_string().lines().map(str::to_string).collect(),
            });
        }
    })
}

fn config(gateway: &Gateway) -> HttpResponse {
    let snapshot = gateway.snapshot();
    let loaded_at = snapshot
        .config
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json_response(
        StatusCode::OK,
        &json!({
            "version": snapshot.config.version,
            "file": snapshot.config.file.display().to_string(),
            "loaded_at_unix": loaded_at,
        }),
    )
}

#[derive(Serialize)]
struct CandidateView<'a> {
    channel: &'a str,
    #[serde(flatten)]
    candidate: &'a Candidate,
}

/// A payment body plus `"merchant"`: the decision paygate would make for it now.
fn explain(gateway: &Gateway, body: &Bytes) -> Result<HttpResponse, ApiError> {
    let (fields, payment) = read_payment(body)?;
    let merchant: String = fields
        .get("merchant")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| ApiError::InvalidRequest("merchant is required (the merchant id)".into()))?;
    let merchant = merchant.as_str();
    let snapshot = gateway.snapshot();
    let config = &snapshot.config;
    let facts = PaymentFacts {
        merchant,
        currency: &payment.currency,
        method: &payment.method,
        country: payment.country.as_deref(),
        amount: payment.amount,
    };
    let now = gateway.router.now_ms();
    let decision = routing::decide(config, &snapshot.scores, &facts, now, &mut rand::rng())?;
    let name = |id: usize| config.channels[id].name.as_str();
    let candidates: Vec<CandidateView<'_>> = decision
        .candidates
        .iter()
        .map(|c| CandidateView {
            channel: name(c.channel),
            candidate: c,
        })
        .collect();
    let order: Vec<&str> = decision.order.iter().map(|&id| name(id)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "rule": config.rules[decision.rule].name,
            "strategy": decision.strategy.as_str(),
            "label": decision.label,
            "pick": order.first(),
            "order": order,
            "candidates": candidates,
            "formula": FORMULA,
        }),
    ))
}
