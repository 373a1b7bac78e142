//! routes.toml: loading, validation with file:line:column, and the immutable snapshot that
//! the rest of paygate reads.
//!
//! A [`Config`] is built whole or not at all: `load` either returns a snapshot in which every
//! reference is resolved (channel ids, environment variables, TLS files, the rule index) or
//! every problem it found. Runtime state (scores, pools, payments) never lives here, so a
//! snapshot can be swapped without losing it. Must not start servers or open connections.

pub mod iso;
mod schema;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use rustc_hash::FxHashMap;

use crate::routing::RuleIndex;
use crate::sim::{Behavior, Dialect, Schedule};

/// One problem in a routes file, at a 1-based line and column (0 when it has no place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a routes file cannot be used: every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                0 => write!(f, "{}: {}", self.file.display(), p.message)?,
                _ => write!(
                    f,
                    "{}:{}:{}: {}",
                    self.file.display(),
                    p.line,
                    p.column,
                    p.message
                )?,
            }
        }
        Ok(())
    }
}

/// How a rule orders its eligible channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Best live score first (see `routing::score`).
    Adaptive,
    /// Random, proportional to each channel's `weight`.
    Weighted,
    /// The order the rule lists.
    Priority,
}

impl Strategy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "adaptive" => Some(Self::Adaptive),
            "weighted" => Some(Self::Weighted),
            "priority" => Some(Self::Priority),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Weighted => "weighted",
            Self::Priority => "priority",
        }
    }
}

/// Index of a channel in [`Config::channels`].
pub type ChannelId = usize;

/// A validated, resolved routes file.
#[derive(Debug)]
pub struct Config {
    pub file: PathBuf,
    /// First 16 hex digits of the SHA-256 of the file's bytes.
    pub version: String,
    pub loaded_at: SystemTime,
    pub server: Server,
    pub routing: Routing,
    pub merchants: Vec<Merchant>,
    pub channels: Vec<Channel>,
    pub rules: Vec<Rule>,
    pub simulators: Vec<Simulator>,
    pub idempotency: Idempotency,
    pub journal: Journal,
    pub reconciliation: Reconciliation,
    /// `[cluster]`: None for a single node.
    pub cluster: Option<Cluster>,
    /// Risk rules for every merchant (each merchant adds its own).
    pub risk: Risk,
    pub rule_index: RuleIndex,
    merchant_by_key: FxHashMap<[u8; 32], usize>,
    merchant_by_certificate: FxHashMap<[u8; 32], usize>,
}

impl Config {
    /// Reads, parses and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                message: format!("cannot read the routes file: {e}"),
            }],
        })?;
        Self::parse(file, &text)
    }

    /// Parses and validates `text` as if read from `file` (relative paths resolve against
    /// the file's folder).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::build(file, text).map_err(|problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        })
    }

    /// The merchant whose API key hashes to `key_sha256`.
    pub fn merchant_by_key_hash(&self, key_sha256: &[u8; 32]) -> Option<&Merchant> {
        self.merchant_by_key
            .get(key_sha256)
            .map(|&i| &self.merchants[i])
    }

    /// The merchant whose TLS client certificate (DER) hashes to `cert_sha256`.
    pub fn merchant_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<&Merchant> {
        self.merchant_by_certificate
            .get(cert_sha256)
            .map(|&i| &self.merchants[i])
    }

    pub fn merchant(&self, id: &str) -> Option<&Merchant> {
        self.merchants.iter().find(|m| m.id == id)
    }

    pub fn channel_by_name(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// One line for `paygate check` and the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "{}: ok, version {}: {} merchants, {} channels, {} rules, {} simulators",
            self.file.display(),
            self.version,
            self.merchants.len(),
            self.channels.len(),
            self.rules.len(),
            self.simulators.len()
        )
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// From accept to a complete request head (TLS handshake included); also bounds each
    /// later HTTP/1 head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open merchant connections at most; more are closed at accept.
    pub max_connections: usize,
    pub max_headers: usize,
    /// Requests handled at once; beyond it paygate answers 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// All merchants together.
    pub rate_limit: Option<RateLimit>,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_period: Duration,
    /// Reload when the routes file changes (else only on SIGHUP or `POST /admin/reload`).
    pub watch_routes: bool,
    pub tls: Option<ServerTls>,
}

/// What to do with a request whose idempotency key is still being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// 409 `idempotency_conflict` at once (the contract's default).
    Reject,
    /// Wait for the first to finish, then answer with its stored response.
    Wait,
}

/// `[idempotency]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    pub ttl: Duration,
    /// Keys kept at most; when full, new keys get 503 until expired ones are swept.
    pub max_keys: usize,
    pub in_flight: InFlight,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            max_keys: 1_000_000,
            in_flight: InFlight::Reject,
        }
    }
}

/// When the merchant gets its answer relative to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalSync {
    /// After the batch holding the payment's outcome is committed (the default).
    Batch,
    /// At once; the record follows within a batch.
    Async,
}

/// `[cluster]`: where replicas share state, and what each feature does while Redis cannot
/// answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub redis_url: String,
    /// Every key paygate writes starts with it (replicas of one gateway share it).
    pub key_prefix: String,
    /// Every Redis call is bounded by it.
    pub timeout: Duration,
    pub rate_limits: FailPolicy,
    /// The shared claim on idempotency keys (default closed: 503 rather than risk a double
    /// charge).
    pub idempotency: FailPolicy,
}

/// What a shared feature does while its store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// Go on without it (a rate limit not enforced for a while costs no money).
    Open,
    /// Refuse with 503 (where going on could cost money).
    Closed,
}

/// `[journal]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Journal {
    pub path: PathBuf,
    pub sync: JournalSync,
    /// Writes waiting for the journal at most; beyond, new payments get 503.
    pub queue: usize,
    /// `url`: the journal lives in PostgreSQL, shared by every replica, instead of `path`.
    pub postgres: Option<Postgres>,
}

/// `[journal] url = "postgres://..."`, `schema`, `readers`, `timeout_ms`.
#[derive(Clone, PartialEq)]
pub struct Postgres {
    /// The connection URL, credentials included (from the environment when it has a
    /// password): never logged, see [`Postgres::location`].
    pub url: String,
    /// The schema the journal's tables live in (created when missing).
    pub schema: String,
    /// Connections (and threads) answering reads.
    pub readers: usize,
    /// Bound on connecting and on every read and commit.
    pub timeout: Duration,
}

impl Postgres {
    /// Host, port, database and schema: what logs and errors may say.
    pub fn location(&self) -> String {
        format!(
            "{} (schema {})",
            without_credentials(&self.url),
            self.schema
        )
    }
}

/// A connection URL as logs and errors may show it: scheme, host, port and path, without
/// user, password or query.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('?').next().unwrap_or(host);
    format!("{scheme}://{host}")
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("location", &self.location())
            .field("readers", &self.readers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[reconciliation]`: how pending payments are re-queried on their channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciliation {
    /// How often due payments are looked for.
    pub interval: Duration,
    /// Longest wait between two queries of one payment (the wait doubles from `interval`).
    pub max_backoff: Duration,
    /// After this, a payment still pending is left to operations (logged, stays pending).
    pub deadline: Duration,
}

impl Default for Reconciliation {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            deadline: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a velocity limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VelocityScope {
    Merchant,
    /// The card's fingerprint (a keyed hash of its number, never the number).
    Card,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Velocity {
    pub name: String,
    pub per: VelocityScope,
    pub window: Duration,
    pub max_count: Option<u64>,
    pub max_amount: Option<u64>,
}

/// Risk rules checked before routing; every listed rule must pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Risk {
    pub min_amount: Option<u64>,
    pub max_amount: Option<u64>,
    pub blocked_bins: Vec<String>,
    pub blocked_countries: Vec<String>,
    pub velocity: Vec<Velocity>,
}

/// A secret from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[routing]`: how the adaptive strategy weighs its figures, when channels are ejected, and
/// how much failover may add to the load.
#[derive(Debug, Clone)]
pub struct Routing {
    pub default_strategy: Strategy,
    /// Success points subtracted per second of latency estimate.
    pub latency_penalty_per_second: f64,
    /// Success points subtracted per unit of fee / amount.
    pub fee_penalty: f64,
    /// Calls a segment needs in the window before its own figure is used.
    pub min_segment_samples: u64,
    pub ejection: Ejection,
    pub retry_budget: RetryBudget,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            default_strategy: Strategy::Adaptive,
            // 100 ms of latency costs half a point of success; a 2% fee costs one point.
            latency_penalty_per_second: 0.05,
            fee_penalty: 0.5,
            min_segment_samples: 20,
            ejection: Ejection::default(),
            retry_budget: RetryBudget::default(),
        }
    }
}

/// `[routing.ejection]`: outlier ejection of faulty channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    /// Faults in a row that eject a channel (Envoy: 5 consecutive 5xx).
    pub consecutive_faults: u32,
    /// Ejection time, times the number of ejections in the streak (Envoy: 30 s).
    pub base_ms: u64,
    /// Longest ejection (Envoy: 300 s).
    pub max_ms: u64,
    /// Share of payments a channel on probation gets after its ejection.
    pub probe_share: f64,
    /// Calls in the window before the availability rules apply.
    pub min_requests: u64,
    /// Eject when the share of calls without a fault falls under this.
    pub availability_floor: f64,
    /// Eject when it is this far under the best peer's.
    pub availability_gap: f64,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_faults: 5,
            base_ms: 30_000,
            max_ms: 300_000,
            probe_share: 0.1,
            min_requests: 50,
            availability_floor: 0.5,
            availability_gap: 0.3,
        }
    }
}

/// `[routing.retry_budget]`: failovers at most `ratio` of the payments of the last 10 s, and
/// never fewer than `min_retries` (Envoy: 20% and 3).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_retries: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug)]
pub struct Merchant {
    pub id: String,
    /// Empty: every method.
    pub methods: Vec<String>,
    /// Empty: every currency.
    pub currencies: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    /// HMAC-SHA256 key for `Paygate-Signature`; when set, unsigned requests are refused.
    pub signing_secret: Option<Secret>,
    pub risk: Risk,
    pub webhook_url: Option<String>,
}

impl Merchant {
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    pub fn allows_currency(&self, currency: &str) -> bool {
        self.currencies.is_empty() || self.currencies.iter().any(|c| c == currency)
    }
}

/// Wire dialect a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    PaygateV1,
    /// Stripe's PaymentIntents API.
    Stripe,
    /// Adyen's Checkout API v72.
    Adyen,
}

impl Protocol {
    pub const NAMES: &[&str] = &["paygate-v1", "stripe", "adyen"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "paygate-v1" => Some(Self::PaygateV1),
            "stripe" => Some(Self::Stripe),
            "adyen" => Some(Self::Adyen),
            _ => None,
        }
    }
}

/// What a real PSP dialect needs beyond the URL: credentials (from the environment), the
/// account, the API version and the webhook secret.
#[derive(Debug, Clone, Default)]
pub struct PspAccount {
    /// Stripe: the secret key (`Authorization: Bearer`); Adyen: `X-API-Key`.
    pub api_key: Option<Secret>,
    /// Stripe: `Stripe-Version`.
    pub api_version: Option<String>,
    /// Adyen: `merchantAccount`.
    pub merchant_account: Option<String>,
    /// Adyen: the `returnUrl` a shopper comes back to after a redirect (3-D Secure), unless
    /// the payment names its own `return_url`.
    pub return_url: Option<String>,
    /// Stripe: the endpoint's `whsec_...` secret; Adyen: the HMAC key (hex).
    pub webhook_secret: Option<Secret>,
}

/// Where a channel's PSP is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://` or `https://` base URL, without a trailing slash.
    Url(String),
    /// An in-process simulator, by name; its address is known once `serve` has started it.
    Simulator(String),
}

/// Fee a channel charges: parts per million of the amount plus a fixed amount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fee {
    pub ppm: u64,
    pub fixed: u64,
}

impl Fee {
    /// The fee in minor units for `amount`, rounded down.
    pub fn of(&self, amount: u64) -> u64 {
        let variable = (u128::from(amount) * u128::from(self.ppm)) / 1_000_000;
        u64::try_from(variable)
            .unwrap_or(u64::MAX)
            .saturating_add(self.fixed)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ChannelTls {
    pub ca_file: Option<PathBuf>,
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug)]
pub struct Channel {
    pub id: ChannelId,
    pub name: String,
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    /// Resolved headers, credentials marked sensitive so that they never print.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_connections: usize,
    /// A PSP answer larger than this is an ambiguous attempt, never buffered whole.
    pub max_response_bytes: usize,
    pub currencies: Vec<String>,
    pub methods: Vec<String>,
    pub countries: Vec<String>,
    pub min_amount: u64,
    pub max_amount: u64,
    pub fee: Fee,
    pub rate_limit: Option<RateLimit>,
    /// Normalized decline codes tried on another channel; unset in the file: the dialect's
    /// soft codes (none for `paygate-v1`).
    pub retryable_codes: Vec<String>,
    /// (PSP code, normalized code) pairs over the dialect's shipped table.
    pub decline_codes: Vec<(String, String)>,
    pub account: PspAccount,
    pub weight: u32,
    /// Calls in flight at most; a channel at its cap is skipped, like one at its rate limit.
    pub max_in_flight: Option<usize>,
    pub tls: ChannelTls,
}

impl Channel {
    /// Whether this channel can take the payment at all (currency, method, country, amount).
    pub fn accepts(&self, payment: &crate::routing::PaymentFacts<'_>) -> bool {
        let listed =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let country_ok = match payment.country {
            Some(country) => listed(&self.countries, country),
            None => self.countries.is_empty(),
        };
        listed(&self.currencies, payment.currency)
            && listed(&self.methods, payment.method)
            && country_ok
            && (self.min_amount..=self.max_amount).contains(&payment.amount)
    }

    pub fn is_retryable_decline(&self, code: &str) -> bool {
        self.retryable_codes.iter().any(|c| c == code)
    }
}

/// What a rule matches on; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Match {
    pub merchants: Vec<String>,
    pub currencies: Vec<String>,
    pub methods: Vec<String>,
    pub countries: Vec<String>,
    pub min_amount: u64,
    pub max_amount: u64,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub channels: Vec<ChannelId>,
    pub strategy: Strategy,
    pub matcher: Match,
}

#[derive(Debug, Clone)]
pub struct Simulator {
    pub name: String,
    pub listen: SocketAddr,
    pub behavior: Behavior,
    pub schedule: Schedule,
    pub dialect: Dialect,
}
