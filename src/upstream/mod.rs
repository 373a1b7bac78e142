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

mod paygate_v1;
pub mod protocol;
mod stale;

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

pub use protocol::{Call, CallContext, PspProtocol, Reply};

use crate::config::{Channel, Config, Endpoint, Protocol};
use crate::store::Outcome;

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
    pub decline_code: Option<String>,
    pub latency: Duration,
    /// Why a call failed, for logs; never shown to merchants verbatim.
    pub detail: Option<String>,
    /// A status query the PSP answered with "no such payment".
    pub unknown_to_psp: bool,
    /// The call was sent a second time on a fresh connection after the pooled one was found
    /// closed (see `stale.rs`).
    pub resent: bool,
}

type HttpClient = Client<stale::Stamped<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// The client for one channel.
pub struct ChannelClient {
    pub name: String,
    base: String,
    protocol: Box<dyn PspProtocol>,
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
        let protocol = dialect(channel.protocol);
        Ok(Self {
            name: channel.name.clone(),
            base,
            protocol,
            headers: channel.headers.clone(),
            timeout: channel.timeout,
            max_response_bytes: channel.max_response_bytes,
            client,
            fresh,
        })
    }

    /// Performs `call`, giving up at the channel's timeout or at `deadline`, whichever is
    /// first: one deadline for connecting, sending and the whole answer. Never fails: every
    /// fault is an [`Exchange`] with its outcome.
    pub async fn send(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        deadline: Instant,
    ) -> Exchange {
        let started = Instant::now();
        let limit = deadline.min(started + self.timeout);
        let mut resent = false;
        let reply = match tokio::time::timeout_at(
            limit.into(),
            self.exchange(call, context, started, &mut resent),
        )
        .await
        {
            Ok(reply) => reply,
            Err(_) => Err((
                Outcome::Timeout,
                "no whole answer before the timeout".to_string(),
            )),
        };
        let latency = started.elapsed();
        let mut exchange = match reply {
            Ok(Reply::Succeeded { psp_reference }) => {
                exchange(Outcome::Succeeded, Some(psp_reference), None, latency, None)
            }
            Ok(Reply::Declined {
                psp_reference,
                code,
            }) => exchange(Outcome::Declined, psp_reference, Some(code), latency, None),
            Ok(Reply::Pending { psp_reference }) => {
                exchange(Outcome::Pending, psp_reference, None, latency, None)
            }
            Ok(Reply::Unavailable { reason }) => {
                exchange(Outcome::Unavailable, None, None, latency, Some(reason))
            }
            Ok(Reply::Error { reason }) => {
                exchange(Outcome::Error, None, None, latency, Some(reason))
            }
            Ok(Reply::Unknown) => {
                let mut unknown = exchange(Outcome::Declined, None, None, latency, None);
                unknown.unknown_to_psp = true;
                unknown
            }
            Err((outcome, reason)) => exchange(outcome, None, None, latency, Some(reason)),
        };
        // A resend's refusal (connection refused, 503) says nothing of the first send, which
        // the PSP may have read: never a reason to try another channel.
        if resent && exchange.outcome == Outcome::Unavailable {
            exchange.outcome = Outcome::Error;
        }
        exchange.resent = resent;
        exchange
    }

    async fn exchange(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
        started: Instant,
        resent: &mut bool,
    ) -> Result<Reply, (Outcome, String)> {
        let mut first = self.request(call, context)?;
        let connection = stale::capture(&mut first);
        let response = match self.client.request(first).await {
            Ok(response) => response,
            Err(error) if stale::closed_before_answer(&error, &connection, started) => {
                tracing::debug!(channel = %self.name, error = %error_chain(&error), "pooled connection was closed by the PSP; sending again on a fresh one");
                *resent = true;
                self.fresh
                    .request(self.request(call, context)?)
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
        Ok(self.protocol.reply(call, status, &body))
    }

    fn request(
        &self,
        call: &Call<'_>,
        context: &CallContext<'_>,
    ) -> Result<http::Request<Full<Bytes>>, (Outcome, String)> {
        let mut request = self
            .protocol
            .request(&self.base, call, context)
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

/// The implementation of a channel's `protocol`.
pub fn dialect(protocol: Protocol) -> Box<dyn PspProtocol> {
    match protocol {
        Protocol::PaygateV1 => Box::new(paygate_v1::PaygateV1),
    }
}

fn exchange(
    outcome: Outcome,
    psp_reference: Option<String>,
    decline_code: Option<String>,
    latency: Duration,
    detail: Option<String>,
) -> Exchange {
    Exchange {
        outcome,
        psp_reference,
        decline_code,
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
