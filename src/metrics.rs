//! Every Prometheus metric paygate exports, registered once, with the label children the
//! request path needs resolved ahead of time (per channel, per merchant x channel x status,
//! per route x common status), so that recording is an atomic add and never takes a lock
//! that all requests share.
//!
//! Label values are bounded by the config: route templates, channel and merchant ids,
//! outcomes, statuses, risk rule names. No payment id, key or amount is ever a label. This
//! module records and encodes; it decides nothing.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;
use crate::store::{Outcome, PaymentStatus};

/// Payment latencies from 1 ms to 30 s: fine where PSPs answer (20 ms to 2 s), coarse in the
/// tail where timeouts live.
/// A round trip to Redis on a local network: tenths of a millisecond, with room for a slow one.
const REDIS_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 3.5, 5.0, 10.0,
    30.0,
];

/// The route templates of the merchant API, as the `route` label.
pub const ROUTES: [&str; 7] = [
    "/v1/payments",
    "/v1/payments/{id}",
    "/v1/payments/{id}/capture",
    "/v1/payments/{id}/refunds",
    "/v1/payments/{id}/cancel",
    "/v1/psp/{channel}/webhooks",
    "other",
];

/// Statuses resolved ahead of time for every route; others are resolved when seen.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 422, 429, 431, 502, 503, 504,
];

/// The states `paygate_channel_state` reports.
pub const CHANNEL_STATES: [&str; 4] = ["healthy", "ejected", "probing", "drained"];

/// Scopes of `paygate_rate_limited_total`.
#[derive(Debug, Clone, Copy)]
pub enum LimitScope {
    Merchant = 0,
    Channel = 1,
    Global = 2,
}

/// Origins of `paygate_cluster_switches_total`.
#[derive(Debug, Clone, Copy)]
pub enum SwitchOrigin {
    /// Made by an operator on this replica.
    Local = 0,
    /// Made on another replica, received through the shared record.
    Peer = 1,
}

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    payments: IntCounterVec,
    attempts: IntCounterVec,
    channel_latency: HistogramVec,
    success_rate: GaugeVec,
    score: GaugeVec,
    state: IntGaugeVec,
    failovers: IntCounterVec,
    rate_limited: [IntCounter; 3],
    pub idempotent_replays: IntCounter,
    pub inflight: IntGauge,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    risk_rejections: IntCounterVec,
    ejections: IntCounterVec,
    resends: IntCounterVec,
    reconciliations: IntCounterVec,
    psp_webhook_events: IntCounterVec,
    cluster_errors: IntCounterVec,
    /// Given to the cluster's client, which times its own calls.
    pub cluster_calls: HistogramVec,
    cluster_switches: [IntCounter; 2],
    pub idempotency_keys: IntGauge,
    open_connections: IntGaugeVec,
    connections_refused: IntCounterVec,
    /// Per route, the common statuses' counters and the duration histogram.
    routes: Vec<RouteMetrics>,
}

struct RouteMetrics {
    statuses: Vec<(u16, IntCounter)>,
    duration: Histogram,
}

/// A listener's connection figures (`listener` is `merchant` or `admin`).
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: IntCounter,
}

/// A channel's metrics, resolved when a config is loaded.
pub struct ChannelMetrics {
    attempts: [IntCounter; Outcome::ALL.len()],
    latency: Histogram,
    pub success_rate: Gauge,
    pub score: Gauge,
    states: [IntGauge; CHANNEL_STATES.len()],
    resends: IntCounter,
}

impl ChannelMetrics {
    pub fn resent(&self) {
        self.resends.inc();
    }

    pub fn attempt(&self, outcome: Outcome, latency: Duration) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.attempts[index].inc();
        self.latency.observe(latency.as_secs_f64());
    }

    /// Sets the state gauge: 1 for `state`, 0 for the others.
    pub fn set_state(&self, state: &str) {
        for (name, gauge) in CHANNEL_STATES.iter().zip(&self.states) {
            gauge.set(i64::from(*name == state));
        }
    }
}

/// Everything the payment path records for one config: channel metrics by channel id,
/// payment counters by merchant, channel (or none) and status, failovers by channel pair.
pub struct ConfigMetrics {
    pub channels: Vec<ChannelMetrics>,
    payments: Vec<IntCounter>,
    failovers: Vec<IntCounter>,
    channel_count: usize,
}

impl ConfigMetrics {
    /// `channel`: the channel that answered, or None.
    pub fn payment(&self, merchant: usize, channel: Option<usize>, status: PaymentStatus) {
        let column = channel.map_or(0, |c| c + 1);
        let status = PaymentStatus::ALL
            .iter()
            .position(|s| *s == status)
            .unwrap_or(0);
        let index =
            (merchant * (self.channel_count + 1) + column) * PaymentStatus::ALL.len() + status;
        if let Some(counter) = self.payments.get(index) {
            counter.inc();
        }
    }

    pub fn failover(&self, from: usize, to: usize) {
        if let Some(counter) = self.failovers.get(from * self.channel_count + to) {
            counter.inc();
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let vec =
        GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    vec
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    vec
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    histogram_vec_in(registry, name, help, labels, &LATENCY_BUCKETS)
}

fn histogram_vec_in(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    vec
}

impl Metrics {
    /// Registers every metric. The names and label sets are constants of this file, so a
    /// registration failure is a programming error caught by the first test, not an input
    /// error: it panics at start-up, never on a request.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let http_requests = counter_vec(
            r,
            "paygate_http_requests_total",
            "Merchant API requests by route template and status.",
            &["route", "status"],
        );
        let http_duration = histogram_vec(
            r,
            "paygate_http_request_duration_seconds",
            "Merchant API request duration by route template.",
            &["route"],
        );
        let routes = ROUTES
            .iter()
            .map(|route| RouteMetrics {
                statuses: COMMON_STATUSES
                    .iter()
                    .map(|s| {
                        (
                            *s,
                            http_requests.with_label_values(&[*route, s.to_string().as_str()]),
                        )
                    })
                    .collect(),
                duration: http_duration.with_label_values(&[route]),
            })
            .collect();
        let rate_limited = counter_vec(
            r,
            "paygate_rate_limited_total",
            "Requests or channel calls held back by a rate limit, by scope.",
            &["scope"],
        );
        let metrics = Self {
            payments: counter_vec(
                r,
                "paygate_payments_total",
                "Payments by merchant, answering channel (none when none answered) and status.",
                &["merchant", "channel", "status"],
            ),
            attempts: counter_vec(
                r,
                "paygate_channel_attempts_total",
                "Calls to channels by outcome.",
                &["channel", "outcome"],
            ),
            channel_latency: histogram_vec(
                r,
                "paygate_channel_latency_seconds",
                "Latency of channel calls.",
                &["channel"],
            ),
            success_rate: gauge_vec(
                r,
                "paygate_channel_success_rate",
                "The router's live success-rate estimate per channel.",
                &["channel"],
            ),
            score: gauge_vec(
                r,
                "paygate_channel_score",
                "The router's expected score per channel (success rate less the latency penalty).",
                &["channel"],
            ),
            state: int_gauge_vec(
                r,
                "paygate_channel_state",
                "1 for the channel's current state.",
                &["channel", "state"],
            ),
            failovers: counter_vec(
                r,
                "paygate_failovers_total",
                "Payments moved from one channel to the next.",
                &["from", "to"],
            ),
            rate_limited: [
                rate_limited.with_label_values(&["merchant"]),
                rate_limited.with_label_values(&["channel"]),
                rate_limited.with_label_values(&["global"]),
            ],
            idempotent_replays: {
                let c = IntCounter::new(
                    "paygate_idempotent_replays_total",
                    "Requests answered from a stored idempotent answer.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            inflight: {
                let g = IntGauge::new(
                    "paygate_inflight_requests",
                    "Merchant requests being handled.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            reloads: counter_vec(
                r,
                "paygate_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            config_info: int_gauge_vec(
                r,
                "paygate_config_info",
                "1, labelled with the active routes file's version.",
                &["version"],
            ),
            risk_rejections: counter_vec(
                r,
                "paygate_risk_rejections_total",
                "Payments refused by a risk rule.",
                &["rule"],
            ),
            ejections: counter_vec(
                r,
                "paygate_channel_ejections_total",
                "Channel ejections.",
                &["channel"],
            ),
            resends: counter_vec(
                r,
                "paygate_channel_resends_total",
                "Calls sent again to the same channel with the same key: on a fresh connection because the pooled one was found closed by the PSP before any answer, or after a fault or a lost answer from a PSP that replays by key (stripe, adyen).",
                &["channel"],
            ),
            reconciliations: counter_vec(
                r,
                "paygate_reconciliations_total",
                "Status queries for payments in doubt, by what they found (succeeded, declined, never_received, pending, error).",
                &["channel", "result"],
            ),
            cluster_errors: counter_vec(
                r,
                "paygate_cluster_errors_total",
                "Calls to the cluster's shared store (Redis) that failed or timed out, by the feature that made them; each was handled by that feature's fail_open / fail_closed policy.",
                &["feature"],
            ),
            cluster_calls: histogram_vec_in(
                r,
                "paygate_cluster_call_duration_seconds",
                "Time of each call to the cluster's shared store (Redis), one round trip, from this replica's side (its own scheduling included), by the feature that made it; failed and timed-out calls too.",
                &["feature"],
                &REDIS_BUCKETS,
            ),
            cluster_switches: {
                let switches = counter_vec(
                    r,
                    "paygate_cluster_switches_total",
                    "Drains and enables applied on this replica in cluster mode, by origin: local (an operator called this replica) or peer (another replica's switch, received through Redis, that changed the channel here).",
                    &["origin"],
                );
                [
                    switches.with_label_values(&["local"]),
                    switches.with_label_values(&["peer"]),
                ]
            },
            psp_webhook_events: counter_vec(
                r,
                "paygate_psp_webhook_events_total",
                "Events of verified PSP webhooks, by whether they settled something in doubt (settled) or changed nothing (unchanged: a repeat, not final, or not paygate's).",
                &["channel", "result"],
            ),
            idempotency_keys: {
                let g = IntGauge::new("paygate_idempotency_keys", "Idempotency records held.")
                    .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            open_connections: int_gauge_vec(
                r,
                "paygate_open_connections",
                "Client connections open, by listener.",
                &["listener"],
            ),
            connections_refused: counter_vec(
                r,
                "paygate_connections_refused_total",
                "Client connections closed at accept because max_connections were open, by listener.",
                &["listener"],
            ),
            http_requests,
            routes,
            registry,
        };
        for listener in ["merchant", "admin"] {
            metrics.listener(listener);
        }
        for result in ["ok", "rejected"] {
            metrics.reloads.with_label_values(&[result]);
        }
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = metrics.registry.register(Box::new(process));
        }
        metrics
    }

    /// Resolves the children a config's payments will record into.
    pub fn for_config(&self, config: &Config) -> ConfigMetrics {
        let channels: Vec<ChannelMetrics> = config
            .channels
            .iter()
            .map(|c| self.channel(&c.name))
            .collect();
        let mut payments = Vec::new();
        for merchant in &config.merchants {
            let columns =
                std::iter::once("none").chain(config.channels.iter().map(|c| c.name.as_str()));
            for channel in columns {
                for status in PaymentStatus::ALL {
                    payments.push(self.payments.with_label_values(&[
                        &merchant.id,
                        channel,
                        status.as_str(),
                    ]));
                }
            }
        }
        let mut failovers = Vec::new();
        for from in &config.channels {
            for to in &config.channels {
                failovers.push(self.failovers.with_label_values(&[&from.name, &to.name]));
            }
        }
        ConfigMetrics {
            channel_count: channels.len(),
            channels,
            payments,
            failovers,
        }
    }

    fn channel(&self, name: &str) -> ChannelMetrics {
        ChannelMetrics {
            attempts: Outcome::ALL.map(|o| self.attempts.with_label_values(&[name, o.as_str()])),
            latency: self.channel_latency.with_label_values(&[name]),
            success_rate: self.success_rate.with_label_values(&[name]),
            score: self.score.with_label_values(&[name]),
            states: CHANNEL_STATES.map(|s| self.state.with_label_values(&[name, s])),
            resends: self.resends.with_label_values(&[name]),
        }
    }

    /// One reconciliation query of a payment in doubt and what it found.
    pub fn reconciliation(&self, channel: &str, result: &str) {
        self.reconciliations
            .with_label_values(&[channel, result])
            .inc();
    }

    /// Cluster mode is on: every feature's error series is exported from the start, at 0, so
    /// that `rate()` sees a replica's very first errors.
    pub fn cluster_mode(&self) {
        for feature in crate::cluster::FEATURES {
            self.cluster_errors.with_label_values(&[feature]);
        }
    }

    /// A call to the cluster's shared store that failed or timed out.
    pub fn cluster_error(&self, feature: &str) {
        self.cluster_errors.with_label_values(&[feature]).inc();
    }

    /// A drain or enable applied here in cluster mode.
    pub fn switch_applied(&self, origin: SwitchOrigin) {
        self.cluster_switches[origin as usize].inc();
    }

    /// The events of one verified PSP webhook.
    pub fn psp_webhook(&self, channel: &str, settled: usize, unchanged: usize) {
        for (result, n) in [("settled", settled), ("unchanged", unchanged)] {
            self.psp_webhook_events
                .with_label_values(&[channel, result])
                .inc_by(n as u64);
        }
    }

    /// The connection figures of the listener called `name`.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.open_connections.with_label_values(&[name]),
            refused: self.connections_refused.with_label_values(&[name]),
        }
    }

    /// One merchant API request: its route template, status and duration.
    pub fn request(&self, route: usize, status: u16, duration: Duration) {
        let Some(metrics) = self.routes.get(route) else {
            return;
        };
        metrics.duration.observe(duration.as_secs_f64());
        match metrics.statuses.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.inc(),
            None => self
                .http_requests
                .with_label_values(&[ROUTES[route], status.to_string().as_str()])
                .inc(),
        }
    }

    pub fn rate_limited(&self, scope: LimitScope) {
        self.rate_limited[scope as usize].inc();
    }

    pub fn risk_rejected(&self, rule: &str) {
        self.risk_rejections.with_label_values(&[rule]).inc();
    }

    pub fn ejected(&self, channel: &str) {
        self.ejections.with_label_values(&[channel]).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "rejected" }])
            .inc();
    }

    /// Marks `version` as the active config (and forgets the previous one).
    pub fn config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// Drops the series of channels no longer configured, so dashboards do not show them.
    pub fn forget_channel(&self, name: &str) {
        for outcome in Outcome::ALL {
            let _ = self.attempts.remove_label_values(&[name, outcome.as_str()]);
        }
        let _ = self.success_rate.remove_label_values(&[name]);
        let _ = self.score.remove_label_values(&[name]);
        for state in CHANNEL_STATES {
            let _ = self.state.remove_label_values(&[name, state]);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        buffer
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The route template index of a merchant API path.
pub fn route_of(path: &str) -> usize {
    if crate::api::psp_webhook_channel(path).is_some() {
        return 5;
    }
    let Some(rest) = path.strip_prefix("/v1/payments") else {
        return 6;
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match (rest.is_empty(), segments.as_slice()) {
        (true, _) => 0,
        (false, [id]) if !id.is_empty() => 1,
        (false, [_, "capture"]) => 2,
        (false, [_, "refunds"]) => 3,
        (false, [_, "cancel"]) => 4,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported() {
        let metrics = Metrics::new();
        let config = Config::parse(
            std::path::Path::new("t.toml"),
            "[[merchants]]\nid = \"m\"\napi_key_sha256 = \"c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c\"\n[[channels]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let resolved = metrics.for_config(&config);
        resolved.channels[0].attempt(Outcome::Succeeded, Duration::from_millis(20));
        resolved.channels[0].set_state("healthy");
        resolved.payment(0, Some(0), PaymentStatus::Succeeded);
        resolved.payment(0, None, PaymentStatus::Failed);
        resolved.failover(0, 0);
        metrics.request(route_of("/v1/payments"), 201, Duration::from_millis(25));
        metrics.request(
            route_of("/v1/payments/pay_1"),
            418,
            Duration::from_millis(1),
        );
        metrics.rate_limited(LimitScope::Merchant);
        metrics.idempotent_replays.inc();
        metrics.inflight.set(0);
        metrics.reload(true);
        metrics.config_version("abc");
        metrics.switch_applied(SwitchOrigin::Peer);
        let text = String::from_utf8(metrics.encode()).unwrap();
        for name in [
            "paygate_http_requests_total{route=\"/v1/payments\",status=\"201\"} 1",
            "paygate_http_requests_total{route=\"/v1/payments/{id}\",status=\"418\"} 1",
            "paygate_http_request_duration_seconds_bucket",
            "paygate_payments_total{channel=\"a\",merchant=\"m\",status=\"succeeded\"} 1",
            "paygate_payments_total{channel=\"none\",merchant=\"m\",status=\"failed\"} 1",
            "paygate_channel_attempts_total{channel=\"a\",outcome=\"succeeded\"} 1",
            "paygate_channel_latency_seconds_bucket{channel=\"a\",le=\"0.025\"} 1",
            "paygate_channel_success_rate{channel=\"a\"}",
            "paygate_channel_score{channel=\"a\"}",
            "paygate_channel_state{channel=\"a\",state=\"healthy\"} 1",
            "paygate_channel_state{channel=\"a\",state=\"ejected\"} 0",
            "paygate_failovers_total{from=\"a\",to=\"a\"} 1",
            "paygate_rate_limited_total{scope=\"merchant\"} 1",
            "paygate_idempotent_replays_total 1",
            "paygate_inflight_requests 0",
            "paygate_config_reloads_total{result=\"ok\"} 1",
            "paygate_config_info{version=\"abc\"} 1",
            "paygate_open_connections{listener=\"merchant\"} 0",
            "paygate_connections_refused_total{listener=\"admin\"} 0",
            "paygate_cluster_switches_total{origin=\"local\"} 0",
            "paygate_cluster_switches_total{origin=\"peer\"} 1",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    #[test]
    fn routes_are_templates() {
        assert_eq!(ROUTES[route_of("/v1/payments")], "/v1/payments");
        assert_eq!(ROUTES[route_of("/v1/payments/pay_9")], "/v1/payments/{id}");
        assert_eq!(
            ROUTES[route_of("/v1/payments/pay_9/capture")],
            "/v1/payments/{id}/capture"
        );
        assert_eq!(
            ROUTES[route_of("/v1/payments/pay_9/refunds")],
            "/v1/payments/{id}/refunds"
        );
        assert_eq!(
            ROUTES[route_of("/v1/payments/pay_9/cancel")],
            "/v1/payments/{id}/cancel"
        );
        assert_eq!(
            ROUTES[route_of("/v1/psp/stripe_eu/webhooks")],
            "/v1/psp/{channel}/webhooks"
        );
        assert_eq!(ROUTES[route_of("/v1/psp/a/b/webhooks")], "other");
        assert_eq!(ROUTES[route_of("/v1/other")], "other");
    }
}
