//! Turns a parsed routes file into a [`Config`], collecting every problem with its place
//! instead of stopping at the first.
//!
//! Reads the environment (for `env:NAME` headers) and the TLS files the config names, so that
//! a file `paygate check` accepts is one `serve` can start on; never opens a socket.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::schema::*;
use super::*;
use crate::routing::RuleIndex;

/// Defaults from the contract (server) and from what a PSP call usually needs (channels).
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";
const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 15_000;
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Keep-alive idle time: merchants reuse a connection within seconds under any traffic, and
/// nginx's `keepalive_timeout` (75 s) and Envoy's idle timeout (1 h) bracket it.
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Open merchant connections: each costs a descriptor and a few KiB, so 10,000 fit the usual
/// 65,536-descriptor limit with room for channel pools and the journal.
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Above this a `max_connections` is surely a typo: no process gets that many descriptors.
const MAX_MAX_CONNECTIONS: u64 = 1_000_000;
/// The same bound hyper applies by default; real merchants send a dozen.
const DEFAULT_MAX_HEADERS: u64 = 100;
const DEFAULT_CHANNEL_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 256;
/// A PSP answer is a few hundred bytes; 1 MiB leaves room for any real one and bounds a
/// runaway body.
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
const DEFAULT_SIMULATOR_LISTEN: &str = "127.0.0.1:0";
/// Requests in flight at once; Envoy's circuit breakers default to 1024 per cluster, a
/// gateway in front of several PSPs holds more.
const DEFAULT_MAX_IN_FLIGHT: u64 = 10_000;
/// Long enough for a payment at the default request timeout (15 s) to finish.
const DEFAULT_DRAIN_PERIOD_MS: u64 = 20_000;
/// Writes waiting for the journal: a few seconds of traffic at a few thousand payments a second.
const DEFAULT_JOURNAL_QUEUE: u64 = 10_000;
/// Longest BIN prefix a rule may block (BINs are 6 to 8 digits).
const MAX_BIN_LEN: usize = 8;

/// Header names whose values are secrets and so must come from the environment.
const SECRET_HEADER_HINTS: [&str; 4] = ["authorization", "key", "secret", "token"];

pub(super) fn build(file: &Path, text: &str) -> Result<Config, Vec<Problem>> {
    let mut check = Checker::new(file, text);
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.span().unwrap_or(0..0);
            check.problem(&at, e.message().trim_end().to_string());
            return Err(check.problems);
        }
    };
    let server = check.server(&raw.server);
    let routing = check.routing(&raw.routing);
    let default_strategy = routing.default_strategy;
    let merchants = check.merchants(&raw.merchants);
    let simulators = check.simulators(&raw.simulators);
    let channels = check.channels(&raw.channels, &simulators);
    let rules = check.rules(&raw.rules, &channels, &merchants, default_strategy);
    let idempotency = check.idempotency(&raw.idempotency);
    let journal = check.journal(&raw.journal);
    let reconciliation = check.reconciliation(&raw.reconciliation);
    let cluster = raw.cluster.as_ref().map(|c| check.cluster(c));
    let risk = check.risk(&raw.risk);
    if !check.problems.is_empty() {
        check.problems.sort_by_key(|p| (p.line, p.column));
        return Err(check.problems);
    }
    let merchant_by_key = merchants
        .iter()
        .enumerate()
        .filter_map(|(i, (_, identity))| identity.api_key.map(|key| (key, i)))
        .collect::<FxHashMap<_, _>>();
    let merchant_by_certificate = merchants
        .iter()
        .enumerate()
        .filter_map(|(i, (_, identity))| identity.certificate.map(|cert| (cert, i)))
        .collect::<FxHashMap<_, _>>();
    let rule_index = RuleIndex::build(&rules);
    Ok(Config {
        file: file.to_path_buf(),
        version: hex::encode(&Sha256::digest(text.as_bytes())[..8]),
        loaded_at: SystemTime::now(),
        server,
        routing,
        merchants: merchants.into_iter().map(|(m, _)| m).collect(),
        channels,
        rules,
        simulators,
        idempotency,
        journal,
        reconciliation,
        cluster,
        risk,
        rule_index,
        merchant_by_key,
        merchant_by_certificate,
    })
}

struct Checker<'a> {
    base: PathBuf,
    line_starts: Vec<usize>,
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn new(file: &Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            base,
            line_starts,
            text,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, at: &Range<usize>, message: String) {
        let offset = at.start.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        self.problems.push(Problem {
            line,
            column,
            message,
        });
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    fn address(&mut self, value: Option<&Spanned<String>>, default: &str, key: &str) -> SocketAddr {
        let fallback = || {
            default
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        let Some(value) = value else {
            return fallback();
        };
        value.get_ref().parse().unwrap_or_else(|_| {
            self.problem(
                &value.span(),
                format!(
                    "`{key}` must be an IP address and port such as \"127.0.0.1:8080\", not {:?}",
                    value.get_ref()
                ),
            );
            fallback()
        })
    }

    fn positive(&mut self, value: Option<&Spanned<u64>>, default: u64, key: &str) -> u64 {
        match value {
            None => default,
            Some(v) if *v.get_ref() == 0 => {
                self.problem(&v.span(), format!("`{key}` must be greater than 0"));
                default
            }
            Some(v) => *v.get_ref(),
        }
    }

    fn server(&mut self, raw: &RawServer) -> Server {
        let listen = self.address(raw.listen.as_ref(), DEFAULT_LISTEN, "listen");
        let admin_listen = self.address(
            raw.admin_listen.as_ref(),
            DEFAULT_ADMIN_LISTEN,
            "admin_listen",
        );
        if let (Some(at), true) = (
            raw.admin_listen.as_ref(),
            listen == admin_listen && listen.port() != 0,
        ) {
            self.problem(
                &at.span(),
                "`admin_listen` must differ from `listen`: the admin API never shares the merchant port".into(),
            );
        }
        let max_body_bytes = self.positive(
            raw.max_body_bytes.as_ref(),
            DEFAULT_MAX_BODY_BYTES,
            "max_body_bytes",
        );
        let request_timeout_ms = self.positive(
            raw.request_timeout_ms.as_ref(),
            DEFAULT_REQUEST_TIMEOUT_MS,
            "request_timeout_ms",
        );
        let header_read_timeout_ms = self.positive(
            raw.header_read_timeout_ms.as_ref(),
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            "header_read_timeout_ms",
        );
        let idle_timeout_ms = self.positive(
            raw.idle_timeout_ms.as_ref(),
            DEFAULT_IDLE_TIMEOUT_MS,
            "idle_timeout_ms",
        );
        let mut max_connections = self.positive(
            raw.max_connections.as_ref(),
            DEFAULT_MAX_CONNECTIONS,
            "max_connections",
        );
        if let Some(at) = raw.max_connections.as_ref()
            && max_connections > MAX_MAX_CONNECTIONS
        {
            self.problem(
                &at.span(),
                format!("`max_connections` must be at most {MAX_MAX_CONNECTIONS}"),
            );
            max_connections = DEFAULT_MAX_CONNECTIONS;
        }
        let max_headers =
            self.positive(raw.max_headers.as_ref(), DEFAULT_MAX_HEADERS, "max_headers");
        let max_in_flight = self.positive(
            raw.max_in_flight.as_ref(),
            DEFAULT_MAX_IN_FLIGHT,
            "max_in_flight",
        );
        let rate_limit = self.rate_limit(raw.rate_limit.as_ref());
        let drain_period_ms = self.positive(
            raw.drain_period_ms.as_ref(),
            DEFAULT_DRAIN_PERIOD_MS,
            "drain_period_ms",
        );
        let tls = raw.tls.as_ref().map(|tls| self.server_tls(tls.get_ref()));
        Server {
            listen,
            admin_listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_millis(request_timeout_ms),
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            max_headers: usize::try_from(max_headers).unwrap_or(usize::MAX),
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
            rate_limit,
            drain_period: Duration::from_millis(drain_period_ms),
            watch_routes: raw.watch_routes.unwrap_or(true),
            tls,
        }
    }

    fn server_tls(&mut self, raw: &RawServerTls) -> ServerTls {
        let cert = self.certificate_file(&raw.cert);
        let key = self.key_file(&raw.key);
        let client_ca = raw.client_ca.as_ref().map(|ca| self.certificate_file(ca));
        ServerTls {
            cert,
            key,
            client_ca,
        }
    }

    fn certificate_file(&mut self, raw: &Spanned<String>) -> PathBuf {
        let path = self.resolve(raw.get_ref());
        if let Err(e) = crate::tls::load_certs(&path) {
            self.problem(&raw.span(), e.to_string());
        }
        path
    }

    fn key_file(&mut self, raw: &Spanned<String>) -> PathBuf {
        let path = self.resolve(raw.get_ref());
        if let Err(e) = crate::tls::load_key(&path) {
            self.problem(&raw.span(), e.to_string());
        }
        path
    }

    fn strategy(&mut self, raw: &Spanned<String>) -> Option<Strategy> {
        let parsed = Strategy::parse(raw.get_ref());
        if parsed.is_none() {
            self.problem(
                &raw.span(),
                format!(
                    "unknown strategy {:?}: use \"adaptive\", \"weighted\" or \"priority\"",
                    raw.get_ref()
                ),
            );
        }
        parsed
    }

    fn routing(&mut self, raw: &RawRouting) -> Routing {
        let defaults = Routing::default();
        let weight =
            |check: &mut Self, value: Option<&Spanned<f64>>, default: f64, key: &str| match value {
                Some(v) if !(v.get_ref().is_finite() && *v.get_ref() >= 0.0) => {
                    check.problem(&v.span(), format!("`{key}` must be a number of 0 or more"));
                    default
                }
                Some(v) => *v.get_ref(),
                None => default,
            };
        Routing {
            default_strategy: raw
                .strategy
                .as_ref()
                .and_then(|s| self.strategy(s))
                .unwrap_or(defaults.default_strategy),
            latency_penalty_per_second: weight(
                self,
                raw.latency_penalty_per_second.as_ref(),
                defaults.latency_penalty_per_second,
                "latency_penalty_per_second",
            ),
            fee_penalty: weight(
                self,
                raw.fee_penalty.as_ref(),
                defaults.fee_penalty,
                "fee_penalty",
            ),
            min_segment_samples: raw
                .min_segment_samples
                .unwrap_or(defaults.min_segment_samples),
            ejection: self.ejection(raw.ejection.as_ref()),
            retry_budget: self.retry_budget(raw.retry_budget.as_ref()),
        }
    }

    fn ejection(&mut self, raw: Option<&Spanned<RawEjection>>) -> Ejection {
        let defaults = Ejection::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let e = raw.get_ref();
        let ejection = Ejection {
            consecutive_faults: e.consecutive_faults.unwrap_or(defaults.consecutive_faults),
            base_ms: e.base_ms.unwrap_or(defaults.base_ms),
            max_ms: e.max_ms.unwrap_or(defaults.max_ms),
            probe_share: e.probe_share.unwrap_or(defaults.probe_share),
            min_requests: e.min_requests.unwrap_or(defaults.min_requests),
            availability_floor: e.availability_floor.unwrap_or(defaults.availability_floor),
            availability_gap: e.availability_gap.unwrap_or(defaults.availability_gap),
        };
        let shares = [
            ejection.probe_share,
            ejection.availability_floor,
            ejection.availability_gap,
        ];
        if ejection.consecutive_faults == 0
            || ejection.base_ms == 0
            || ejection.max_ms < ejection.base_ms
            || !shares.iter().all(|s| (0.0..=1.0).contains(s))
        {
            self.problem(
                &raw.span(),
                "ejection: consecutive_faults and base_ms must be over 0, max_ms at least base_ms, and probe_share, availability_floor and availability_gap between 0 and 1".into(),
            );
        }
        ejection
    }

    fn retry_budget(&mut self, raw: Option<&Spanned<RawRetryBudget>>) -> RetryBudget {
        let defaults = RetryBudget::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let budget = RetryBudget {
            ratio: raw.get_ref().ratio.unwrap_or(defaults.ratio),
            min_retries: raw.get_ref().min_retries.unwrap_or(defaults.min_retries),
        };
        if !(budget.ratio.is_finite() && budget.ratio >= 0.0) {
            self.problem(&raw.span(), "retry_budget: ratio must be 0 or more".into());
        }
        budget
    }

    fn unique(&mut self, seen: &mut HashSet<String>, name: &Spanned<String>, what: &str) {
        if name.get_ref().is_empty() {
            self.problem(&name.span(), format!("{what} name must not be empty"));
        } else if !seen.insert(name.get_ref().clone()) {
            self.problem(
                &name.span(),
                format!(
                    "duplicate {what} {:?}: names must be unique",
                    name.get_ref()
                ),
            );
        }
    }

    fn currencies(&mut self, raw: &[Spanned<String>]) -> Vec<String> {
        for code in raw {
            if !iso::is_currency(code.get_ref()) {
                self.problem(
                    &code.span(),
                    format!(
                        "{:?} is not an ISO 4217 currency code (three capital letters, such as \"EUR\")",
                        code.get_ref()
                    ),
                );
            }
        }
        plain(raw)
    }

    fn countries(&mut self, raw: &[Spanned<String>]) -> Vec<String> {
        for code in raw {
            if !iso::is_country(code.get_ref()) {
                self.problem(
                    &code.span(),
                    format!(
                        "{:?} is not an ISO 3166-1 alpha-2 country code (two capital letters, such as \"DE\")",
                        code.get_ref()
                    ),
                );
            }
        }
        plain(raw)
    }

    fn amount_range(
        &mut self,
        min: Option<&Spanned<u64>>,
        max: Option<&Spanned<u64>>,
        what: &str,
    ) -> (u64, u64) {
        let low = min.map_or(1, |m| *m.get_ref());
        let high = max.map_or(u64::MAX, |m| *m.get_ref());
        if low > high {
            let at = min.map_or(0..0, Spanned::span);
            self.problem(
                &at,
                format!("{what}: min_amount {low} is greater than max_amount {high}"),
            );
        }
        (low, high)
    }

    fn rate_limit(&mut self, raw: Option<&Spanned<RawRateLimit>>) -> Option<RateLimit> {
        let raw = raw?;
        let limit = raw.get_ref();
        if limit.per_second == 0 || limit.burst == Some(0) {
            self.problem(
                &raw.span(),
                "rate_limit: per_second and burst must be greater than 0".into(),
            );
            return None;
        }
        Some(RateLimit {
            per_second: limit.per_second,
            burst: limit.burst.unwrap_or(limit.per_second),
        })
    }

    fn merchants(&mut self, raw: &[Spanned<RawMerchant>]) -> Vec<(Merchant, Identity)> {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut merchants = Vec::with_capacity(raw.len());
        for merchant in raw {
            let m = merchant.get_ref();
            self.unique(&mut names, &m.id, "merchant");
            let identity = Identity {
                api_key: m
                    .api_key_sha256
                    .as_ref()
                    .map(|k| self.sha256_hex(k, "api_key_sha256")),
                certificate: m
                    .client_cert_sha256
                    .as_ref()
                    .map(|c| self.sha256_hex(c, "client_cert_sha256")),
            };
            if identity.api_key.is_none() && identity.certificate.is_none() {
                self.problem(
                    &m.id.span(),
                    format!(
                        "merchant {:?} needs api_key_sha256 or client_cert_sha256 to authenticate",
                        m.id.get_ref()
                    ),
                );
            }
            for (hash, at) in [
                (identity.api_key, m.api_key_sha256.as_ref()),
                (identity.certificate, m.client_cert_sha256.as_ref()),
            ] {
                if let (Some(hash), Some(at)) = (hash, at)
                    && hash != [0; 32]
                    && !hashes.insert(hash)
                {
                    self.problem(
                        &at.span(),
                        format!(
                            "merchant {:?} shares a key or certificate with another merchant",
                            m.id.get_ref()
                        ),
                    );
                }
            }
            let currencies = self.currencies(&m.currencies);
            let rate_limit = self.rate_limit(m.rate_limit.as_ref());
            let signing_secret = m.signing_secret.as_ref().and_then(|s| {
                self.secret(
                    s,
                    &format!("signing_secret of merchant {:?}", m.id.get_ref()),
                )
            });
            let risk = m
                .risk
                .as_ref()
                .map(|r| self.risk(r.get_ref()))
                .unwrap_or_default();
            let webhook_url = m
                .webhook_url
                .as_ref()
                .map(|url| self.http_url(url, "webhook_url"));
            merchants.push((
                Merchant {
                    id: m.id.get_ref().clone(),
                    methods: plain(&m.methods),
                    currencies,
                    rate_limit,
                    signing_secret,
                    risk,
                    webhook_url,
                },
                identity,
            ));
        }
        merchants
    }

    fn sha256_hex(&mut self, raw: &Spanned<String>, key: &str) -> [u8; 32] {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(raw.get_ref(), &mut hash).is_err() {
            self.problem(
                &raw.span(),
                format!("{key} must be 64 hex digits of a SHA-256 (for a key: printf %s KEY | sha256sum)"),
            );
        }
        hash
    }

    /// An `"env:NAME"` value, read from the environment.
    fn secret(&mut self, raw: &Spanned<String>, what: &str) -> Option<Secret> {
        let Some(var) = raw.get_ref().strip_prefix("env:") else {
            self.problem(
                &raw.span(),
                format!("{what} must be \"env:VARIABLE\": secrets never live in the routes file"),
            );
            return None;
        };
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Some(Secret(value.into_bytes())),
            _ => {
                self.problem(
                    &raw.span(),
                    format!("environment variable {var} ({what}) is not set"),
                );
                None
            }
        }
    }

    fn http_url(&mut self, raw: &Spanned<String>, key: &str) -> String {
        let ok = raw
            .get_ref()
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            self.problem(
                &raw.span(),
                format!(
                    "{key} {:?} must be an http:// or https:// URL",
                    raw.get_ref()
                ),
            );
        }
        raw.get_ref().clone()
    }

    fn cluster(&mut self, raw: &RawCluster) -> Cluster {
        // A Redis with a password: the whole URL from the environment.
        let url = match raw.redis_url.get_ref().strip_prefix("env:") {
            Some(_) => self
                .secret(&raw.redis_url, "redis_url")
                .and_then(|s| String::from_utf8(s.0).ok())
                .unwrap_or_default(),
            None => raw.redis_url.get_ref().clone(),
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            let shown = if raw.redis_url.get_ref().starts_with("env:") {
                raw.redis_url.get_ref().clone()
            } else {
                url.clone()
            };
            self.problem(
                &raw.redis_url.span(),
                format!("redis_url {shown:?} must be a redis:// or rediss:// URL"),
            );
        }
        let rate_limits =
            self.fail_policy(raw.rate_limits.as_ref(), "rate_limits", FailPolicy::Open);
        let idempotency =
            self.fail_policy(raw.idempotency.as_ref(), "idempotency", FailPolicy::Closed);
        let timeout = self.positive(raw.timeout_ms.as_ref(), 50, "timeout_ms");
        Cluster {
            redis_url: url,
            key_prefix: raw
                .key_prefix
                .as_ref()
                .map_or_else(|| "paygate:".to_string(), |p| p.get_ref().clone()),
            timeout: Duration::from_millis(timeout),
            rate_limits,
            idempotency,
        }
    }

    fn fail_policy(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: FailPolicy,
    ) -> FailPolicy {
        match raw.map(|p| (p, p.get_ref().as_str())) {
            None => default,
            Some((_, "fail_open")) => FailPolicy::Open,
            Some((_, "fail_closed")) => FailPolicy::Closed,
            Some((policy, other)) => {
                self.problem(
                    &policy.span(),
                    format!("{key} {other:?}: write \"fail_open\" or \"fail_closed\""),
                );
                default
            }
        }
    }

    fn journal(&mut self, raw: &RawJournal) -> Journal {
        let path = raw
            .path
            .as_ref()
            .map_or("paygate.db", |p| p.get_ref().as_str());
        let sync = match &raw.sync {
            None => JournalSync::Batch,
            Some(v) => match v.get_ref().as_str() {
                "batch" => JournalSync::Batch,
                "async" => JournalSync::Async,
                other => {
                    self.problem(
                        &v.span(),
                        format!("journal sync must be \"batch\" or \"async\", not {other:?}"),
                    );
                    JournalSync::Batch
                }
            },
        };
        let queue = self.positive(raw.queue.as_ref(), DEFAULT_JOURNAL_QUEUE, "queue");
        Journal {
            path: self.resolve(path),
            sync,
            queue: usize::try_from(queue).unwrap_or(usize::MAX),
            postgres: raw.url.as_ref().and_then(|url| self.postgres(raw, url)),
        }
    }

    /// `[journal] url`: a PostgreSQL URL. One with a password must come from the environment
    /// (`"env:NAME"`), since secrets never live in the routes file.
    fn postgres(&mut self, raw: &RawJournal, url: &Spanned<String>) -> Option<Postgres> {
        let text = match url.get_ref().strip_prefix("env:") {
            Some(_) => String::from_utf8(self.secret(url, "journal url")?.0).ok()?,
            None => url.get_ref().clone(),
        };
        let is_postgres = text.starts_with("postgres://") || text.starts_with("postgresql://");
        if !is_postgres || text.parse::<::postgres::Config>().is_err() {
            self.problem(
                &url.span(),
                "journal url must be a postgres:// URL (postgres://user@host:5432/database)".into(),
            );
            return None;
        }
        let userinfo = text
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(userinfo, _)| userinfo);
        if url.get_ref().starts_with("postgres") && userinfo.is_some_and(|u| u.contains(':')) {
            self.problem(
                &url.span(),
                "journal url carries a password: give it as \"env:VARIABLE\", secrets never live in the routes file".into(),
            );
            return None;
        }
        let schema = raw
            .schema
            .as_ref()
            .map_or("paygate", |s| s.get_ref().as_str());
        let valid_schema = !schema.is_empty()
            && schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_schema && let Some(raw_schema) = &raw.schema {
            self.problem(
                &raw_schema.span(),
                format!("journal schema {schema:?} must be 1 to 63 of a-z, 0-9 and _, not starting with a digit"),
            );
        }
        let readers = self.positive(raw.readers.as_ref(), 4, "readers");
        let timeout_ms = self.positive(raw.timeout_ms.as_ref(), 2_000, "timeout_ms");
        Some(Postgres {
            url: text,
            schema: schema.to_string(),
            readers: usize::try_from(readers).unwrap_or(4).min(64),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    fn reconciliation(&mut self, raw: &RawReconciliation) -> Reconciliation {
        let defaults = Reconciliation::default();
        let ms = |d: Duration| d.as_millis() as u64;
        Reconciliation {
            interval: Duration::from_millis(self.positive(
                raw.interval_ms.as_ref(),
                ms(defaults.interval),
                "interval_ms",
            )),
            max_backoff: Duration::from_millis(self.positive(
                raw.max_backoff_ms.as_ref(),
                ms(defaults.max_backoff),
                "max_backoff_ms",
            )),
            deadline: Duration::from_secs(self.positive(
                raw.deadline_secs.as_ref(),
                defaults.deadline.as_secs(),
                "deadline_secs",
            )),
        }
    }

    fn idempotency(&mut self, raw: &RawIdempotency) -> Idempotency {
        let defaults = Idempotency::default();
        let ttl = self.positive(raw.ttl_secs.as_ref(), defaults.ttl.as_secs(), "ttl_secs");
        let max_keys = self.positive(raw.max_keys.as_ref(), defaults.max_keys as u64, "max_keys");
        let in_flight = match &raw.in_flight {
            None => defaults.in_flight,
            Some(v) => match v.get_ref().as_str() {
                "reject" => InFlight::Reject,
                "wait" => InFlight::Wait,
                other => {
                    self.problem(
                        &v.span(),
                        format!("in_flight must be \"reject\" or \"wait\", not {other:?}"),
                    );
                    defaults.in_flight
                }
            },
        };
        Idempotency {
            ttl: Duration::from_secs(ttl),
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            in_flight,
        }
    }

    fn risk(&mut self, raw: &RawRisk) -> Risk {
        if let (Some(min), Some(max)) = (&raw.min_amount, &raw.max_amount)
            && min.get_ref() > max.get_ref()
        {
            self.problem(
                &min.span(),
                format!(
                    "risk: min_amount {} is greater than max_amount {}",
                    min.get_ref(),
                    max.get_ref()
                ),
            );
        }
        for bin in &raw.blocked_bins {
            let b = bin.get_ref();
            if b.is_empty() || b.len() > MAX_BIN_LEN || !b.bytes().all(|c| c.is_ascii_digit()) {
                self.problem(
                    &bin.span(),
                    format!("blocked BIN {b:?} must be 1 to {MAX_BIN_LEN} digits"),
                );
            }
        }
        let blocked_countries = self.countries(&raw.blocked_countries);
        let velocity = raw
            .velocity
            .iter()
            .filter_map(|v| self.velocity(v))
            .collect();
        Risk {
            min_amount: raw.min_amount.as_ref().map(|v| *v.get_ref()),
            max_amount: raw.max_amount.as_ref().map(|v| *v.get_ref()),
            blocked_bins: plain(&raw.blocked_bins),
            blocked_countries,
            velocity,
        }
    }

    fn velocity(&mut self, raw: &Spanned<RawVelocity>) -> Option<Velocity> {
        let v = raw.get_ref();
        let per = match v.per.get_ref().as_str() {
            "merchant" => VelocityScope::Merchant,
            "card" => VelocityScope::Card,
            other => {
                self.problem(
                    &v.per.span(),
                    format!("velocity `per` must be \"merchant\" or \"card\", not {other:?}"),
                );
                return None;
            }
        };
        if *v.window_secs.get_ref() == 0 {
            self.problem(
                &v.window_secs.span(),
                "velocity window_secs must be greater than 0".into(),
            );
            return None;
        }
        if v.max_count.is_none() && v.max_amount.is_none() {
            self.problem(
                &raw.span(),
                format!(
                    "velocity rule {:?} needs max_count or max_amount",
                    v.name.get_ref()
                ),
            );
            return None;
        }
        Some(Velocity {
            name: v.name.get_ref().clone(),
            per,
            window: Duration::from_secs(*v.window_secs.get_ref()),
            max_count: v.max_count,
            max_amount: v.max_amount,
        })
    }

    fn simulators(&mut self, raw: &[Spanned<RawSimulator>]) -> Vec<Simulator> {
        let mut names = HashSet::new();
        let mut simulators = Vec::with_capacity(raw.len());
        for sim in raw {
            let s = sim.get_ref();
            self.unique(&mut names, &s.name, "simulator");
            for problem in s.behavior.problems() {
                self.problem(
                    &sim.span(),
                    format!("simulator {:?}: {problem}", s.name.get_ref()),
                );
            }
            let listen = self.address(s.listen.as_ref(), DEFAULT_SIMULATOR_LISTEN, "listen");
            let schedule = match &s.schedule {
                None => Schedule::default(),
                Some(path) => {
                    Schedule::from_file(&self.resolve(path.get_ref())).unwrap_or_else(|e| {
                        self.problem(&path.span(), e.to_string());
                        Schedule::default()
                    })
                }
            };
            simulators.push(Simulator {
                name: s.name.get_ref().clone(),
                listen,
                behavior: s.behavior.clone(),
                schedule,
                dialect: s.dialect,
            });
        }
        simulators
    }

    fn endpoint(&mut self, raw: &Spanned<String>, simulators: &[Simulator]) -> Endpoint {
        let url = raw.get_ref().trim_end_matches('/');
        if let Some(name) = url.strip_prefix("sim://") {
            if !simulators.iter().any(|s| s.name == name) {
                self.problem(
                    &raw.span(),
                    format!("no [[simulators]] entry is named {name:?}"),
                );
            }
            return Endpoint::Simulator(name.to_string());
        }
        let valid = match url.parse::<http::Uri>() {
            Ok(uri) => {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && uri.query().is_none()
            }
            Err(_) => false,
        };
        if !valid {
            self.problem(
                &raw.span(),
                format!(
                    "{:?} is not a channel URL: use http://host:port, https://host:port or sim://NAME",
                    raw.get_ref()
                ),
            );
        }
        Endpoint::Url(url.to_string())
    }

    fn headers(
        &mut self,
        raw: &std::collections::BTreeMap<String, Spanned<String>>,
        channel: &str,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(
                    &value.span(),
                    format!("{name:?} is not a valid HTTP header name"),
                );
                continue;
            };
            let text = match value.get_ref().strip_prefix("env:") {
                Some(var) => match std::env::var(var) {
                    Ok(v) => v,
                    Err(_) => {
                        self.problem(
                            &value.span(),
                            format!("environment variable {var} (header {name} of channel {channel:?}) is not set"),
                        );
                        continue;
                    }
                },
                None if is_secret_header(name) => {
                    self.problem(
                        &value.span(),
                        format!("header {name} of channel {channel:?} holds a credential: write \"env:VARIABLE\" and set the variable, never the secret itself"),
                    );
                    continue;
                }
                None => value.get_ref().clone(),
            };
            match HeaderValue::from_str(&text) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.push((header, v));
                }
                Err(_) => self.problem(
                    &value.span(),
                    format!("the value of header {name} of channel {channel:?} is not a valid HTTP header value"),
                ),
            }
        }
        headers
    }

    /// The keys a real PSP dialect needs, each where it is required.
    fn psp_account(
        &mut self,
        c: &RawChannel,
        protocol: Protocol,
        span: &std::ops::Range<usize>,
    ) -> PspAccount {
        let name = c.name.get_ref();
        let api_key = match (&c.api_key, protocol) {
            (Some(key), _) => self.secret(key, &format!("api_key of channel {name:?}")),
            (None, Protocol::PaygateV1) => None,
            (None, _) => {
                self.problem(
                    span,
                    format!(
                        "channel {name:?} speaks a PSP's dialect: set api_key = \"env:VARIABLE\""
                    ),
                );
                None
            }
        };
        let merchant_account = c.merchant_account.as_ref().map(|m| m.get_ref().clone());
        if protocol == Protocol::Adyen && merchant_account.as_deref().is_none_or(str::is_empty) {
            self.problem(
                span,
                format!("channel {name:?} speaks adyen: set merchant_account (the Adyen merchant account's name)"),
            );
        }
        let webhook_secret = c
            .webhook_secret
            .as_ref()
            .and_then(|s| self.secret(s, &format!("webhook_secret of channel {name:?}")));
        if protocol == Protocol::Adyen
            && let (Some(secret), Some(raw)) = (&webhook_secret, &c.webhook_secret)
            && hex::decode(&secret.0).is_err()
        {
            self.problem(
                &raw.span(),
                format!("webhook_secret of channel {name:?}: an Adyen HMAC key is hexadecimal"),
            );
        }
        PspAccount {
            api_key,
            api_version: c.api_version.as_ref().map(|v| v.get_ref().clone()),
            merchant_account,
            return_url: c
                .return_url
                .as_ref()
                .map(|u| self.http_url(u, "return_url")),
            webhook_secret,
        }
    }

    fn decline_codes(
        &mut self,
        raw: &std::collections::BTreeMap<String, Spanned<String>>,
    ) -> Vec<(String, String)> {
        let mut codes = Vec::with_capacity(raw.len());
        for (psp_code, code) in raw {
            if crate::upstream::declines::is_normalized(code.get_ref()) {
                codes.push((psp_code.clone(), code.get_ref().clone()));
            } else {
                let known: Vec<&str> = crate::upstream::declines::NORMALIZED
                    .iter()
                    .map(|(name, _)| *name)
                    .collect();
                self.problem(
                    &code.span(),
                    format!(
                        "decline code {:?} is not one of paygate's normalized codes: {}",
                        code.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
        codes
    }

    fn channel_tls(&mut self, raw: Option<&Spanned<RawChannelTls>>) -> ChannelTls {
        let Some(raw) = raw else {
            return ChannelTls::default();
        };
        let tls = raw.get_ref();
        let ca_file = tls.ca_file.as_ref().map(|ca| self.certificate_file(ca));
        let client_identity = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some((self.certificate_file(cert), self.key_file(key))),
            (None, None) => None,
            _ => {
                self.problem(
                    &raw.span(),
                    "tls: client_cert and client_key go together: give both or neither".into(),
                );
                None
            }
        };
        ChannelTls {
            ca_file,
            client_identity,
        }
    }

    fn fee(&mut self, raw: Option<&Spanned<RawFee>>) -> Fee {
        let Some(raw) = raw else {
            return Fee::default();
        };
        let fee = raw.get_ref();
        if !(0.0..=100.0).contains(&fee.percent) {
            self.problem(
                &raw.span(),
                format!("fee percent {} must be between 0 and 100", fee.percent),
            );
            return Fee::default();
        }
        // percent is a rate, not money: held as parts per million so fees compute in integers.
        let ppm = (fee.percent * 10_000.0).round() as u64;
        Fee {
            ppm,
            fixed: fee.fixed,
        }
    }

    fn channels(&mut self, raw: &[Spanned<RawChannel>], simulators: &[Simulator]) -> Vec<Channel> {
        let mut names = HashSet::new();
        let mut channels = Vec::with_capacity(raw.len());
        for (id, channel) in raw.iter().enumerate() {
            let c = channel.get_ref();
            self.unique(&mut names, &c.name, "channel");
            let name = c.name.get_ref().clone();
            let endpoint = self.endpoint(&c.url, simulators);
            let protocol = match &c.protocol {
                None => Protocol::PaygateV1,
                Some(p) => Protocol::parse(p.get_ref()).unwrap_or_else(|| {
                    self.problem(
                        &p.span(),
                        format!(
                            "unknown protocol {:?}: the supported ones are {}",
                            p.get_ref(),
                            Protocol::NAMES.join(", ")
                        ),
                    );
                    Protocol::PaygateV1
                }),
            };
            let account = self.psp_account(c, protocol, &channel.span());
            let decline_codes = self.decline_codes(&c.decline_codes);
            let headers = self.headers(&c.headers, &name);
            let timeout = self.positive(
                c.timeout_ms.as_ref(),
                DEFAULT_CHANNEL_TIMEOUT_MS,
                "timeout_ms",
            );
            let connect_timeout = self.positive(
                c.connect_timeout_ms.as_ref(),
                DEFAULT_CONNECT_TIMEOUT_MS,
                "connect_timeout_ms",
            );
            let max_response_bytes = self.positive(
                c.max_response_bytes.as_ref(),
                DEFAULT_MAX_RESPONSE_BYTES,
                "max_response_bytes",
            );
            let currencies = self.currencies(&c.currencies);
            let countries = self.countries(&c.countries);
            let (min_amount, max_amount) = self.amount_range(
                c.min_amount.as_ref(),
                c.max_amount.as_ref(),
                &format!("channel {name:?}"),
            );
            let fee = self.fee(c.fee.as_ref());
            let rate_limit = self.rate_limit(c.rate_limit.as_ref());
            let tls = self.channel_tls(c.tls.as_ref());
            channels.push(Channel {
                id,
                name,
                endpoint,
                protocol,
                headers,
                timeout: Duration::from_millis(timeout),
                connect_timeout: Duration::from_millis(connect_timeout),
                max_idle_connections: c
                    .max_idle_connections
                    .unwrap_or(DEFAULT_MAX_IDLE_CONNECTIONS),
                max_response_bytes: usize::try_from(max_response_bytes).unwrap_or(usize::MAX),
                currencies,
                methods: plain(&c.methods),
                countries,
                min_amount,
                max_amount,
                fee,
                rate_limit,
                retryable_codes: c
                    .retryable_codes
                    .clone()
                    .unwrap_or_else(|| crate::upstream::declines::soft_codes(protocol)),
                decline_codes,
                account,
                weight: c.weight.unwrap_or(1),
                max_in_flight: c
                    .max_in_flight
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                tls,
            });
        }
        channels
    }

    fn rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        channels: &[Channel],
        merchants: &[(Merchant, Identity)],
        default_strategy: Strategy,
    ) -> Vec<Rule> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.len());
        for rule in raw {
            let r = rule.get_ref();
            self.unique(&mut names, &r.name, "rule");
            let name = r.name.get_ref().clone();
            let strategy = r
                .strategy
                .as_ref()
                .and_then(|s| self.strategy(s))
                .unwrap_or(default_strategy);
            let ids = self.rule_channels(r, channels);
            if strategy == Strategy::Weighted
                && !ids.is_empty()
                && ids.iter().all(|&i| channels[i].weight == 0)
            {
                self.problem(
                    &r.channels.span(),
                    format!("rule {name:?} is weighted but every channel it lists has weight 0"),
                );
            }
            let matcher = self.matcher(&r.matcher, merchants, &name);
            rules.push(Rule {
                name,
                channels: ids,
                strategy,
                matcher,
            });
        }
        rules
    }

    fn rule_channels(&mut self, rule: &RawRule, channels: &[Channel]) -> Vec<ChannelId> {
        if rule.channels.get_ref().is_empty() {
            self.problem(
                &rule.channels.span(),
                format!("rule {:?} lists no channel", rule.name.get_ref()),
            );
        }
        let mut ids = Vec::with_capacity(rule.channels.get_ref().len());
        for name in rule.channels.get_ref() {
            match channels.iter().find(|c| &c.name == name.get_ref()) {
                Some(c) if ids.contains(&c.id) => self.problem(
                    &name.span(),
                    format!(
                        "rule {:?} lists channel {:?} twice",
                        rule.name.get_ref(),
                        name.get_ref()
                    ),
                ),
                Some(c) => ids.push(c.id),
                None => self.problem(
                    &name.span(),
                    format!(
                        "rule {:?} names unknown channel {:?}",
                        rule.name.get_ref(),
                        name.get_ref()
                    ),
                ),
            }
        }
        ids
    }

    fn matcher(&mut self, raw: &RawMatch, merchants: &[(Merchant, Identity)], rule: &str) -> Match {
        for merchant in &raw.merchants {
            if !merchants.iter().any(|(m, _)| &m.id == merchant.get_ref()) {
                self.problem(
                    &merchant.span(),
                    format!(
                        "rule {rule:?} matches unknown merchant {:?}",
                        merchant.get_ref()
                    ),
                );
            }
        }
        let currencies = self.currencies(&raw.currencies);
        let countries = self.countries(&raw.countries);
        let (min_amount, max_amount) = self.amount_range(
            raw.min_amount.as_ref(),
            raw.max_amount.as_ref(),
            &format!("rule {rule:?}"),
        );
        Match {
            merchants: plain(&raw.merchants),
            currencies,
            methods: plain(&raw.methods),
            countries,
            min_amount,
            max_amount,
        }
    }
}

/// How a merchant proves who it is: SHA-256 of its API key and/or of its client certificate.
struct Identity {
    api_key: Option<[u8; 32]>,
    certificate: Option<[u8; 32]>,
}

fn plain(raw: &[Spanned<String>]) -> Vec<String> {
    raw.iter().map(|s| s.get_ref().clone()).collect()
}

fn is_secret_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HEADER_HINTS.iter().any(|hint| lower.contains(hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match build(Path::new("routes.toml"), text) {
            Ok(_) => Vec::new(),
            Err(p) => p,
        }
    }

    const KEY: &str = "2b7fcaa2a5d9a6a4d4b4bf6c5b6a3f6ad1f5b5ea0c2b6a5f6e2c0b8b9e7d6e1f";

    #[test]
    fn reports_each_problem_at_its_line() {
        let text = format!(
            r#"
[[merchants]]
id = "m"
api_key_sha256 = "{KEY}"

[[channels]]
name = "a"
url = "http://127.0.0.1:1"
currencies = ["EUR", "EURO"]
min_amount = 10
max_amount = 5

[[channels]]
name = "a"
url = "http://127.0.0.1:2"

[[rules]]
name = "r"
channels = ["a", "nope"]
"#
        );
        let found = problems(&text);
        let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![9, 10, 14, 19], "{found:?}");
        assert!(found[0].message.contains("\"EURO\" is not an ISO 4217"));
        assert!(
            found[1]
                .message
                .contains("min_amount 10 is greater than max_amount 5")
        );
        assert!(found[2].message.contains("duplicate channel \"a\""));
        assert!(found[3].message.contains("unknown channel \"nope\""));
        assert_eq!(found[3].column, 18);
    }

    #[test]
    fn syntax_error_has_a_place() {
        let found = problems("[server]\nlisten = \n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 2);
    }

    #[test]
    fn credentials_must_come_from_the_environment() {
        let text = r#"
[[channels]]
name = "a"
url = "http://127.0.0.1:1"
headers = { Authorization = "Bearer sk_live_123", X-Psp-Key = "env:PAYGATE_TEST_SURELY_UNSET" }
"#;
        let found = problems(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|p| p.message.contains("holds a credential"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.message.contains("PAYGATE_TEST_SURELY_UNSET"))
        );
    }

    #[test]
    fn psp_dialects_need_their_account_keys() {
        let text = r#"
[[channels]]
name = "s"
url = "https://api.stripe.com"
protocol = "stripe"

[[channels]]
name = "a"
url = "https://checkout-test.adyen.com/v72"
protocol = "adyen"
api_key = "env:PATH"
decline_codes = { "12" = "no_money" }

[[channels]]
name = "x"
url = "http://127.0.0.1:1"
protocol = "soap"
"#;
        let found = problems(text);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].message.contains("api_key"), "{found:?}");
        assert!(found.iter().any(|p| p.message.contains("merchant_account")));
        assert!(found.iter().any(|p| {
            p.message
                .contains("\"no_money\" is not one of paygate's normalized codes")
        }));
        assert!(found.iter().any(|p| {
            p.message
                .contains("the supported ones are paygate-v1, stripe, adyen")
        }));
        assert!(found.iter().all(|p| p.line > 1), "{found:?}");
        let config = build(
            Path::new("routes.toml"),
            "[[channels]]\nname = \"s\"\nurl = \"https://api.stripe.com\"\nprotocol = \"stripe\"\napi_key = \"env:PATH\"\n",
        )
        .unwrap();
        let channel = &config.channels[0];
        assert!(channel.is_retryable_decline("issuer_unavailable"));
        assert!(!channel.is_retryable_decline("insufficient_funds"));
    }

    #[test]
    fn connection_keys_have_defaults_and_bounds() {
        let config = build(Path::new("routes.toml"), "").unwrap();
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.server.max_connections, 10_000);
        let text = "[server]\nidle_timeout_ms = 500\nmax_connections = 3\n";
        let config = build(Path::new("routes.toml"), text).unwrap();
        assert_eq!(config.server.idle_timeout, Duration::from_millis(500));
        assert_eq!(config.server.max_connections, 3);
        let found = problems("[server]\nidle_timeout_ms = 0\nmax_connections = 2000000\n");
        let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3], "{found:?}");
        assert!(found[1].message.contains("at most 1000000"));
    }

    #[test]
    fn fee_is_integer_parts_per_million() {
        let fee = Fee {
            ppm: 19_000,
            fixed: 25,
        };
        assert_eq!(fee.of(10_000), 215);
        let all = Fee {
            ppm: 1_000_000,
            fixed: 1,
        };
        assert_eq!(
            all.of(u64::MAX),
            u64::MAX,
            "saturates instead of overflowing"
        );
    }
}

#[cfg(test)]
mod simulator_dialect_tests {
    use super::*;
    use crate::sim::Dialect;

    #[test]
    fn a_simulator_may_speak_adyen() {
        let text = "[[simulators]]\nname = \"ady\"\nlisten = \"127.0.0.1:0\"\ndialect = \"adyen\"\n\n[[simulators]]\nname = \"v1\"\nlisten = \"127.0.0.1:0\"\n";
        let config = build(Path::new("routes.toml"), text).map_err(|p| format!("{p:?}"));
        let dialects: Vec<Dialect> = config
            .unwrap()
            .simulators
            .iter()
            .map(|s| s.dialect)
            .collect();
        assert_eq!(dialects, [Dialect::Adyen, Dialect::PaygateV1]);
        let bad = "[[simulators]]\nname = \"x\"\ndialect = \"stripe\"\n";
        assert!(build(Path::new("routes.toml"), bad).is_err());
    }
}
