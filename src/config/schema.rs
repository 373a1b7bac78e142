//! The routes.toml file as written: serde types that mirror the file, with source spans kept
//! on every value a check may complain about.
//!
//! Nothing here is validated or resolved; `validate` turns this into a [`super::Config`].
//! Keys fixed by the contract keep their exact names.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::sim::{Behavior, Dialect};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub merchants: Vec<Spanned<RawMerchant>>,
    #[serde(default)]
    pub channels: Vec<Spanned<RawChannel>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub simulators: Vec<Spanned<RawSimulator>>,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub risk: RawRisk,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub reconciliation: RawReconciliation,
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: state shared by replicas through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis_url: Spanned<String>,
    pub key_prefix: Option<Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
    /// `fail_open` (default) or `fail_closed`.
    pub rate_limits: Option<Spanned<String>>,
    /// `fail_closed` (default) or `fail_open`.
    pub idempotency: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub path: Option<Spanned<String>>,
    pub sync: Option<Spanned<String>>,
    pub queue: Option<Spanned<u64>>,
    /// `"postgres://user@host:port/db"`, or `"env:NAME"` when it carries a password.
    pub url: Option<Spanned<String>>,
    pub schema: Option<Spanned<String>>,
    pub readers: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconciliation {
    pub interval_ms: Option<Spanned<u64>>,
    pub max_backoff_ms: Option<Spanned<u64>>,
    pub deadline_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub ttl_secs: Option<Spanned<u64>>,
    pub max_keys: Option<Spanned<u64>>,
    pub in_flight: Option<Spanned<String>>,
}

/// Risk rules: `[risk]` applies to every merchant, `[merchants.risk]` to one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    pub min_amount: Option<Spanned<u64>>,
    pub max_amount: Option<Spanned<u64>>,
    #[serde(default)]
    pub blocked_bins: Vec<Spanned<String>>,
    #[serde(default)]
    pub blocked_countries: Vec<Spanned<String>>,
    #[serde(default)]
    pub velocity: Vec<Spanned<RawVelocity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVelocity {
    pub name: Spanned<String>,
    /// "merchant" or "card".
    pub per: Spanned<String>,
    pub window_secs: Spanned<u64>,
    pub max_count: Option<u64>,
    pub max_amount: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub request_timeout_ms: Option<Spanned<u64>>,
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub max_in_flight: Option<Spanned<u64>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub drain_period_ms: Option<Spanned<u64>>,
    pub watch_routes: Option<bool>,
    pub tls: Option<Spanned<RawServerTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub strategy: Option<Spanned<String>>,
    pub latency_penalty_per_second: Option<Spanned<f64>>,
    pub fee_penalty: Option<Spanned<f64>>,
    pub min_segment_samples: Option<u64>,
    pub ejection: Option<Spanned<RawEjection>>,
    pub retry_budget: Option<Spanned<RawRetryBudget>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEjection {
    pub consecutive_faults: Option<u32>,
    pub base_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub probe_share: Option<f64>,
    pub min_requests: Option<u64>,
    pub availability_floor: Option<f64>,
    pub availability_gap: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub ratio: Option<f64>,
    pub min_retries: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMerchant {
    pub id: Spanned<String>,
    pub api_key_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub currencies: Vec<Spanned<String>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// `"env:NAME"`: the HMAC secret for `Paygate-Signature`; with it, requests must be signed.
    pub signing_secret: Option<Spanned<String>>,
    /// Hex SHA-256 of the merchant's TLS client certificate (DER), as an alternative to keys.
    pub client_cert_sha256: Option<Spanned<String>>,
    pub risk: Option<Spanned<RawRisk>>,
    /// Where final statuses of reconciled payments are POSTed (signed when the merchant has a
    /// signing secret).
    pub webhook_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: u32,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub max_idle_connections: Option<usize>,
    pub max_response_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub currencies: Vec<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub countries: Vec<Spanned<String>>,
    pub min_amount: Option<Spanned<u64>>,
    pub max_amount: Option<Spanned<u64>>,
    pub fee: Option<Spanned<RawFee>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub retryable_codes: Option<Vec<String>>,
    /// PSP code -> normalized code, over the dialect's shipped table.
    #[serde(default)]
    pub decline_codes: BTreeMap<String, Spanned<String>>,
    /// `"env:NAME"`: the PSP's API key (Stripe, Adyen).
    pub api_key: Option<Spanned<String>>,
    /// Stripe's `Stripe-Version`.
    pub api_version: Option<Spanned<String>>,
    /// Adyen's `merchantAccount`.
    pub merchant_account: Option<Spanned<String>>,
    /// Adyen's `returnUrl` for payments that name none.
    pub return_url: Option<Spanned<String>>,
    /// `"env:NAME"`: the secret that signs the PSP's webhooks.
    pub webhook_secret: Option<Spanned<String>>,
    pub weight: Option<u32>,
    pub max_in_flight: Option<u64>,
    pub tls: Option<Spanned<RawChannelTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFee {
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub fixed: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannelTls {
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub channels: Spanned<Vec<Spanned<String>>>,
    pub strategy: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub merchants: Vec<Spanned<String>>,
    #[serde(default)]
    pub currencies: Vec<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub countries: Vec<Spanned<String>>,
    pub min_amount: Option<Spanned<u64>>,
    pub max_amount: Option<Spanned<u64>>,
}

/// An in-process PSP simulator that `serve` starts; channels reach it as `sim://NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulator {
    pub name: Spanned<String>,
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub behavior: Behavior,
    pub schedule: Option<Spanned<String>>,
    /// `paygate-v1` (default) or `adyen`.
    #[serde(default)]
    pub dialect: Dialect,
}
