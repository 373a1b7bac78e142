//! The accept loop shared by both listeners: a cap on open connections, the TLS handshake
//! when configured, HTTP/1.1 and HTTP/2 on one port, the connection's clock (head deadline,
//! idle timeout), and graceful drain on stop.
//!
//! Every connection runs against two clocks, whatever its protocol:
//! - from accept, a complete request head (TLS handshake included) within
//!   `header_read_timeout`, else it is closed: a client that connects and sends nothing, a
//!   bare HTTP/2 preface, or a head dribbled a byte at a time holds no descriptor for longer;
//! - with no request in flight (HTTP/1 between requests, HTTP/2 with no open stream), it is
//!   closed after `idle_timeout` (HTTP/2 gets a GOAWAY first).
//!
//! hyper alone bounds neither: its HTTP/1 head timer starts only once the protocol is known,
//! which needs bytes, and HTTP/2 has no idle timer. This module owns sockets; it answers no
//! request and decides nothing about payments.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::Service;

use super::heads::{HeadLog, Watched};
use crate::layers::{PeerCertificate, ResponseFuture, TwoLengths};
use crate::metrics::ListenerMetrics;

/// Headers beyond the configured cap that hyper still parses, so that the request-limits
/// layer can answer with a JSON 431; past this hyper answers 431 itself and closes.
const HEADER_SLACK: usize = 64;
/// After a GOAWAY (idle or shutdown) with nothing in flight, how long an HTTP/2 client gets
/// to read it before the socket is closed anyway: a client that never acknowledges must not
/// keep it open.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

pub struct Settings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_headers: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long requests in flight get to finish once the listener stops.
    pub drain: Duration,
    pub metrics: ListenerMetrics,
}

impl Settings {
    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers + HEADER_SLACK);
        builder.http2().timer(TokioTimer::new());
        builder
    }
}

/// What a connection's clock needs, copied into each connection's task.
#[derive(Clone, Copy)]
struct Clock {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    drain: Duration,
}

/// Serves connections from `listener` until `stop` turns true, then lets open connections
/// finish their requests for at most `drain`.
pub async fn accept<S>(
    listener: TcpListener,
    settings: Settings,
    service: S,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(settings.builder());
    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let clock = Clock {
        header_read_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        drain: settings.drain,
    };
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed at once: a flood of connections costs a descriptor for a moment only.
            settings.metrics.refused.inc();
            tracing::debug!(%peer, "connection refused: max_connections open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(permit, &settings.metrics);
        let connection = Connection {
            builder: builder.clone(),
            service: service.clone(),
            stop: stop.clone(),
            clock,
            _open: open,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.run(stream, tls).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Every permit back means every connection has ended.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(settings.drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the connections still open");
    }
}

/// An open connection: holds its place under `max_connections` and in the gauge.
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: &ListenerMetrics) -> Self {
        metrics.open.inc();
        Self {
            _permit: permit,
            gauge: metrics.open.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

struct Connection<S> {
    builder: Arc<Builder<TokioExecutor>>,
    service: S,
    stop: watch::Receiver<bool>,
    clock: Clock,
    _open: Open,
}

type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

impl<S> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    async fn run(
        self,
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<(), ConnectionError> {
        let head_deadline = Instant::now() + self.clock.header_read_timeout;
        let Some(acceptor) = tls else {
            return self.serve(stream, head_deadline, None).await;
        };
        // The handshake counts against the head deadline: a silent TLS client is a silent client.
        let stream = match tokio::time::timeout_at(head_deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}").into()),
            Err(_) => return Err("TLS handshake timed out".into()),
        };
        // The client certificate, when the merchant presented one, identifies it.
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| PeerCertificate(Sha256::digest(cert.as_ref()).into()));
        self.serve(stream, head_deadline, certificate).await
    }

    async fn serve<IO>(
        self,
        io: IO,
        head_deadline: Instant,
        certificate: Option<PeerCertificate>,
    ) -> Result<(), ConnectionError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let heads = Arc::new(HeadLog::default());
        let (activity, watching) = watch::channel(Activity::default());
        let service = Tracked {
            inner: self.service,
            activity: Arc::new(activity),
            heads: heads.clone(),
            certificate,
        };
        let connection = self.builder.serve_connection(
            TokioIo::new(Watched::new(io, heads)),
            TowerToHyperService::new(service),
        );
        drive(connection, watching, self.stop, head_deadline, self.clock).await
    }
}

/// Why a connection is being closed by paygate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// No complete request head by the head deadline.
    HeadTimeout,
    /// Nothing in flight for the idle timeout.
    Idle,
    /// The listener is stopping.
    Stop,
}

/// Runs `connection` until it ends or its clock closes it.
async fn drive<C>(
    connection: C,
    mut activity: watch::Receiver<Activity>,
    mut stop: watch::Receiver<bool>,
    head_deadline: Instant,
    clock: Clock,
) -> Result<(), ConnectionError>
where
    C: GracefulConnection,
    C::Error: Into<ConnectionError>,
{
    let mut connection = pin!(connection);
    let close = tokio::select! {
        ended = connection.as_mut() => return ended.map_err(Into::into),
        close = watch_clock(&mut activity, &mut stop, head_deadline, clock.idle_timeout) => close,
    };
    if close == Close::HeadTimeout {
        // Nothing was asked of us: there is no one to tell.
        tracing::debug!("no request head in time; closing");
        return Ok(());
    }
    tracing::debug!(?close, "closing connection");
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        ended = connection.as_mut() => ended.map_err(Into::into),
        () = settle(&mut activity, clock.drain) => Ok(()),
    }
}

/// Resolves when the connection should be closed, and why.
async fn watch_clock(
    activity: &mut watch::Receiver<Activity>,
    stop: &mut watch::Receiver<bool>,
    head_deadline: Instant,
    idle_timeout: Duration,
) -> Close {
    let mut stopping = pin!(stopped(stop));
    loop {
        let now = *activity.borrow_and_update();
        let (deadline, reason) = match (now.started, now.in_flight) {
            (0, _) => (Some(head_deadline), Close::HeadTimeout),
            (_, 0) => (Some(Instant::now() + idle_timeout), Close::Idle),
            _ => (None, Close::Idle),
        };
        let expiry = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = activity.changed() => {
                if changed.is_err() {
                    // The service is gone, so is the connection; hyper ends it.
                    std::future::pending::<()>().await;
                }
            }
            () = &mut stopping => return Close::Stop,
            () = expiry => return reason,
        }
    }
}

/// Resolves once `stop` turns true. A dropped sender means the listener outlives everything
/// that waits on it: never a stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let dropped = stop.wait_for(|stopped| *stopped).await.is_err();
    if dropped {
        std::future::pending::<()>().await;
    }
}

/// After a graceful shutdown: the requests in flight get up to `drain` to finish, then the
/// client a short grace to read the GOAWAY.
async fn settle(activity: &mut watch::Receiver<Activity>, drain: Duration) {
    let quiet = activity.wait_for(|a| a.in_flight == 0);
    let _ = tokio::time::timeout(drain, quiet).await;
    tokio::time::sleep(CLOSE_GRACE).await;
}

/// A connection's requests: how many reached the service, how many are being answered.
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    started: u64,
    in_flight: usize,
}

/// The per-connection service in front of the layers: counts requests for the connection's
/// clock and adds what only the connection knows (client certificate, ambiguous framing).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<Activity>>,
    heads: Arc<HeadLog>,
    certificate: Option<PeerCertificate>,
}

/// A request being answered; keeps the count right when the client goes away mid-request.
struct InFlight(Arc<watch::Sender<Activity>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .send_modify(|a| a.in_flight = a.in_flight.saturating_sub(1));
    }
}

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let mut index = 0;
        self.activity.send_modify(|a| {
            index = a.started;
            a.started += 1;
            a.in_flight += 1;
        });
        let in_flight = InFlight(self.activity.clone());
        // HTTP/1 requests on a connection are answered in order, so the n-th call is the
        // n-th head the watcher saw.
        if self.heads.is_ambiguous(index) {
            request.extensions_mut().insert(TwoLengths);
        }
        if let Some(certificate) = self.certificate {
            request.extensions_mut().insert(certificate);
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}
