//! The accept loop shared by both listeners: TLS handshake when configured, HTTP/1.1 and
//! HTTP/2 on one port, header-read timeout, header count cap, and graceful drain on stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

use crate::layers::PeerCertificate;

/// Headers beyond the configured cap that hyper still parses, so that the request-limits
/// layer can answer with a JSON 431; past this hyper answers 431 itself and closes.
const HEADER_SLACK: usize = 64;

pub struct Settings {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Settings {
    pub fn plain(header_read_timeout: Duration) -> Self {
        Self {
            header_read_timeout,
            max_headers: 100,
            tls: None,
        }
    }

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

/// Serves connections from `listener` until `stop` turns true, then lets open connections
/// finish their requests for at most `drain`.
pub async fn accept<S>(
    listener: TcpListener,
    settings: Settings,
    service: S,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(settings.builder());
    let tls = settings.tls.map(tokio_rustls::TlsAcceptor::from);
    let handshake_timeout = settings.header_read_timeout;
    let graceful = GracefulShutdown::new();
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
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service_base = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let service = TowerToHyperService::new(service_base);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // The client certificate, when the merchant presented one, identifies it.
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| PeerCertificate(Sha256::digest(cert.as_ref()).into()));
                    let service = TowerToHyperService::new(tower::util::MapRequest::new(
                        service_base,
                        move |mut request: Request<Incoming>| {
                            if let Some(certificate) = certificate {
                                request.extensions_mut().insert(certificate);
                            }
                            request
                        },
                    ));
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the connections still open");
    }
}
