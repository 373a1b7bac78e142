//! Channel clients: one pooled HTTP client per channel (keep-alive, connect and request
//! timeouts, rustls for https), and the one function that performs a call and classifies
//! what happened.
//!
//! This module owns every outbound connection; nothing else in paygate opens one to a PSP.
//! It knows nothing about routing or payments beyond the [`Call`] it is handed. The pool is
//! hyper-util's; replacing it stays inside this module.
//!
//! Two faults are settled here rather than left ambiguous or unbounded:
//! - a PSP (or its load balancer) that closed an idle pooled connection: a request that
//!   failed on a reused connection before any answer arrived is sent once more, to the same
//!   channel with the same `Idempotency-Key`, on a fresh connection (`stale.rs`);
//! - a PSP answer is bounded in size (`max_response_bytes`) and, headers and body together,
//!   by one deadline; either limit ends the attempt as ambiguous.

mod adyen;
mod card;
pub mod declines;
mod form;
mod paygate_v1;
pub mod protocol;
mod stale;
mod stripe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use protocol::{Call, CallContext, Lookup, PspProtocol, Reply, Step};

use crate::config::{Channel, Config, Endpoint, Protocol};
use crate::store::Outcome;

/// A call of a dialect that replays by key, answered with a fault or not at all, is sent
/// again after this pause (if the request's deadline allows).
const REPLAY_PAUSE: Duration = Duration::from_millis(50);
/// A call takes at most this many requests (Stripe: PaymentMethod, then PaymentIntent).
const MAX_STEPS: usize = 4;

/// Idle pooled connections are closed after this; PSP load balancers commonly drop idle
/// connections after 60 to 350 s, so staying under the low end avoids writing into a
/// connection the far end has already closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("channel {channel:?}: {source}")]
    Tls {
        channel: String,
        source: crate::tls::TlsError,
    },
    #[error("channel {channel:?} uses simulator {simulator:?}, which is not running")]
    NoSimulator { channel: String, simulator: String },
}

/// What one call came to.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub outcome: Outcome,
    pub psp_reference: Option<String>,
    /// Normalized (the channel's decline table).
    pub decline_code: Option<String>,
    /// The PSP's own code, when it differs from the normalized one.
    pub psp_code: Option<String>,
    pub latency: Duration,
    /// Why a call failed, for logs; never shown to merchants verbatim.
    pub detail: Option<String>,
    /// A pending answer's shopper action (3-D Secure), for the merchant.
    pub action: Option<serde_json::Value>,
    /// A status query the PSP answered with "no such payment".
    pub unknown_to_psp: bool,
    /// The call was sent a second time to the same channel with the same key: on a fresh
    /// connection after the pooled one was found closed (see `stale.rs`), or after a fault
    /// or a lost answer from a PSP that replays by key.
    pub resent: bool,
}

type HttpClient = Client<stale::Stamped<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// The client for one channel.
pub struct ChannelClient {
    pub name: String,
    base: String,
    protocol: Box<dyn PspProtocol>,
    declines: declines::DeclineTable,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    max_response_bytes: usize,
    client: HttpClient,
    /// No pooling: the second try after a pooled connection turned out closed.
    fresh: HttpClient,
}

/// Clients for every channel of a config, indexed by channel id.
pub struct Upstreams {
    channels: Vec<ChannelClient>,
}

impl Upstreams {
    /// Builds a client per channel; `simulators` gives the address of each running
    /// in-process simulator for `sim://` channels.
    pub fn build(
        config: &Config,
        simulators: &HashMap<String, SocketAddr>,
    ) -> Result<Self, UpstreamError> {
        let channels = config
            .channels
            .iter()
            .map(|c| ChannelClient::build(c, simulators))
            .collect::<Result<_, _>>()?;
        Ok(Self { channels })
    }

    pub fn channel(&self, id: usize) -> Option<&ChannelClient> {
        self.channels.get(id)
    }
}

impl ChannelClient {
    fn build(
        channel: &Channel,
        simulators: &HashMap<String, SocketAddr>,
    ) -> Result<Self, UpstreamError> {
        let base = match &channel.endpoint {
            Endpoint::Url(url) => url.clone(),
            Endpoint::Simulator(name) => match simulators.get(name) {
                Some(addr) => format!("http://{addr}"),
                None => {
                    return Err(UpstreamError::NoSimulator {
                        channel: channel.name.clone(),
                        simulator: name.clone(),
                    });
                }
            },
        };
        let tls_error = |source| UpstreamError::Tls {
            channel: channel.name.clone(),
            source,
        };
        let identity = channel
            .tls
            .client_identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let tls = crate::tls::client_config(channel.tls.ca_file.as_deref(), identity)
            .map_err(tls_error)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(channel.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = stale::Stamped(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(channel.max_idle_connections)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(Self {
            name: channel.name.clone(),
            base,
            protocol: dialect(channel),
            declines: declines::DeclineTable::new(channel.protocol, &channel.decline_codes),
            headers: channel.headers.clone(),
            timeout: channel.timeout,
            max_response_bytes: channel.max_response_bytes,
            client,
            fresh,
        })
    }

    /// How a payment of this channel whose answer never arrived is found again.
    pub fn lookup(&self) -> Lookup {
        self.protocol.lookup()
    }

    /// Performs `call`, giving up at the channel's timeout or at `deadline`, whichever is
    /// first: one deadline for connecting, sending and the whole answer. Never fails: every
    /// fault is an [`Exchange`] with its outcome. A dialect that replays by key gets one
    /// more try of a call that ended in doubt, to the same channel with the same key.
    pub async fn send(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        deadline: Instant,
    ) -> Exchange {
        let started = Instant::now();
        let mut exchange = self.attempt(call, context, deadline).await;
        let in_doubt = matches!(exchange.outcome, Outcome::Error | Outcome::Timeout);
        if in_doubt && self.protocol.replays_by_key() && Instant::now() + REPLAY_PAUSE < deadline {
            tokio::time::sleep(REPLAY_PAUSE).await;
            let again = self.attempt(call, context, deadline).await;
            tracing::debug!(channel = %self.name, first = exchange.outcome.as_str(), again = again.outcome.as_str(), "call in doubt sent again with the same key");
            // A refused re-send says nothing of the first send: the call stays in doubt.
            if again.outcome != Outcome::Unavailable {
                exchange = again;
            }
            exchange.resent = true;
        }
        exchange.latency = started.elapsed();
        exchange
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        deadline: Instant,
    ) -> Exchange {
        let started = Instant::now();
        let limit = deadline.min(started + self.timeout);
        let mut resent = false;
        let mut step = Step::First;
        let reply = match tokio::time::timeout_at(
            limit.into(),
            self.steps(call, context, started, &mut resent, &mut step),
        )
        .await
        {
            Ok(reply) => reply,
            Err(_) => Err((
                self.fault(call, &step, Outcome::Timeout),
                "no whole answer before the timeout".to_string(),
            )),
        };
        let latency = started.elapsed();
        let mut exchange = match reply {
            Ok(Reply::Succeeded { psp_reference }) => {
                exchange(Outcome::Succeeded, Some(psp_reference), latency, None)
            }
            Ok(Reply::Declined {
                psp_reference,
                code,
            }) => {
                let mut declined = exchange(Outcome::Declined, psp_reference, latency, None);
                // The table is of card declines; a refused capture, refund or cancel keeps
                // the PSP's own reason.
                let normalized = match call {
                    Call::Authorize { .. } | Call::Status { .. } => self.declines.normalize(&code),
                    _ => code.clone(),
                };
                declined.psp_code = (normalized != code).then_some(code);
                declined.decline_code = Some(normalized);
                declined
            }
            Ok(Reply::Pending {
                psp_reference,
                action,
            }) => {
                let mut pending = exchange(Outcome::Pending, psp_reference, latency, None);
                pending.action = action;
                pending
            }
            Ok(Reply::Unavailable { reason }) => {
                exchange(Outcome::Unavailable, None, latency, Some(reason))
            }
            Ok(Reply::Error { reason }) => exchange(Outcome::Error, None, latency, Some(reason)),
            Ok(Reply::Unknown) => {
                let mut unknown = exchange(Outcome::Declined, None, latency, None);
                unknown.unknown_to_psp = true;
                unknown
            }
            // A dialect still asking for more: its last request may have moved money.
            Ok(Reply::Then(_)) => exchange(
                self.fault(call, &step, Outcome::Error),
                None,
                latency,
                Some(format!("the call took more than {MAX_STEPS} requests")),
            ),
            Err((outcome, reason)) => exchange(outcome, None, latency, Some(reason)),
        };
        // A resend's refusal (connection refused, 503) says nothing of the first send, which
        // the PSP may have read: never a reason to try another channel.
        if resent
            && exchange.outcome == Outcome::Unavailable
            && self.protocol.may_move_money(call, &step)
        {
            exchange.outcome = Outcome::Error;
        }
        exchange.resent = resent;
        exchange
    }

    /// A fault at a step that cannot have moved money is a refusal: the payment may go to
    /// another channel.
    fn fault(&self, call: &Call<'_>, step: &Step, outcome: Outcome) -> Outcome {
        if self.protocol.may_move_money(call, step) {
            outcome
        } else {
            Outcome::Unavailable
        }
    }

    /// Walks the requests of `call`; `step` is where it stands, read after a timeout.
    async fn steps(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        started: Instant,
        resent: &mut bool,
        step: &mut Step,
    ) -> Result<Reply, (Outcome, String)> {
        for _ in 0..MAX_STEPS {
            let reply = self
                .exchange(call, context, step, started, resent)
                .await
                .map_err(|(outcome, reason)| (self.fault(call, step, outcome), reason))?;
            match reply {
                Reply::Then(next) => *step = Step::Then(next),
                // A fault at a step that moved no money is a refusal too.
                Reply::Error { reason } if !self.protocol.may_move_money(call, step) => {
                    return Ok(Reply::Unavailable { reason });
                }
                reply => return Ok(reply),
            }
        }
        Ok(Reply::Then(String::new()))
    }

    async fn exchange(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        step: &Step,
        started: Instant,
        resent: &mut bool,
    ) -> Result<Reply, (Outcome, String)> {
        let mut first = self.request(call, context, step)?;
        let connection = stale::capture(&mut first);
        let response = match self.client.request(first).await {
            Ok(response) => response,
            Err(error) if stale::closed_before_answer(&error, &connection, started) => {
                tracing::debug!(channel = %self.name, error = %error_chain(&error), "pooled connection was closed by the PSP; sending again on a fresh one");
                *resent = true;
                self.fresh
                    .request(self.request(call, context, step)?)
                    .await
                    .map_err(failure)?
            }
            Err(error) => return Err(failure(error)),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), self.max_response_bytes)
            .collect()
            .await
            .map_err(|e| (Outcome::Error, format!("reading the PSP answer: {e}")))?
            .to_bytes();
        Ok(self.protocol.reply(call, step, status, &body))
    }

    fn request(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        step: &Step,
    ) -> Result<http::Request<Full<Bytes>>, (Outcome, String)> {
        let mut request = self
            .protocol
            .request(&self.base, call, context, step)
            .map_err(|e| (Outcome::Unavailable, e.to_string()))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}

/// A connect error means nothing was written: the PSP surely did not process it. Anything
/// later (reset, closed mid-answer) may have been processed.
fn failure(error: hyper_util::client::legacy::Error) -> (Outcome, String) {
    let outcome = if error.is_connect() {
        Outcome::Unavailable
    } else {
        Outcome::Error
    };
    (outcome, error_chain(&error))
}

/// The implementation of a channel's `protocol`, with the channel's credentials.
pub fn dialect(channel: &Channel) -> Box<dyn PspProtocol> {
    match channel.protocol {
        Protocol::PaygateV1 => Box::new(paygate_v1::PaygateV1),
        Protocol::Stripe => Box::new(stripe::Stripe::new(channel)),
        Protocol::Adyen => Box::new(adyen::Adyen::new(channel)),
    }
}

fn exchange(
    outcome: Outcome,
    psp_reference: Option<String>,
    latency: Duration,
    detail: Option<String>,
) -> Exchange {
    Exchange {
        outcome,
        psp_reference,
        decline_code: None,
        psp_code: None,
        action: None,
        latency,
        detail,
        unknown_to_psp: false,
        resent: false,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
