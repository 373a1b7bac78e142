//! Listening for the simulator: accepting TCP connections, the optional TLS handshake,
//! serving HTTP/1.1 and HTTP/2 on each connection, and shutting down.
//!
//! Owns connection tasks and their lifetime. Must not look at requests (that is
//! `protocol`) and must not let one bad connection or accept error stop the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{SimError, Simulator, protocol};

/// How long open connections get to finish after shutdown; a hang fault would otherwise keep
/// the process alive for an hour.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// After an accept error (typically out of file descriptors) wait a little instead of
/// spinning on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serve on an already-bound listener until `shutdown` resolves (tls: Some => https, ALPN
/// h2/http1.1). Connections still open `SHUTDOWN_GRACE` after shutdown are dropped.
pub async fn serve(
    sim: Arc<Simulator>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let acceptor = tls.map(TlsAcceptor::from);
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set does not grow with every client ever seen.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "mock-psp: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let task = connection(
            stream,
            acceptor.clone(),
            Arc::clone(&sim),
            builder.clone(),
            graceful.watcher(),
        );
        connections.spawn(task);
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("mock-psp: dropping connections still open after the grace period");
    }
    connections.shutdown().await;
    Ok(())
}

/// Bind `addr` (port 0 allowed), spawn `serve` on the current tokio runtime (running
/// forever), return the bound address.
pub async fn spawn(sim: Arc<Simulator>, addr: SocketAddr) -> Result<SocketAddr, SimError> {
    let listener = bind(addr).await?;
    let bound = listener.local_addr().map_err(SimError::LocalAddr)?;
    tokio::spawn(async move {
        if let Err(error) = serve(sim, listener, None, std::future::pending()).await {
            tracing::error!(%error, "mock-psp stopped");
        }
    });
    Ok(bound)
}

pub(super) async fn bind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

async fn connection(
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
    sim: Arc<Simulator>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) {
    // Answers are small; Nagle would hold them back waiting for more bytes.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        return serve_connection(TokioIo::new(stream), sim, builder, watcher).await;
    };
    match acceptor.accept(stream).await {
        Ok(tls) => serve_connection(TokioIo::new(tls), sim, builder, watcher).await,
        Err(error) => tracing::debug!(%error, "mock-psp: TLS handshake failed"),
    }
}

async fn serve_connection<I>(
    io: I,
    sim: Arc<Simulator>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| protocol::handle(Arc::clone(&sim), request));
    let connection = builder.serve_connection(io, service).into_owned();
    // Errors here are clients going away and injected resets: nothing to act on.
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "mock-psp: connection ended with an error");
    }
}
