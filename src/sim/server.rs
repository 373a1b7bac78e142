//! Listening for the simulator: accepting TCP connections, the optional TLS handshake,
//! serving HTTP/1.1 and HTTP/2 on each connection, and shutting down.
//!
//! Owns connection tasks and their lifetime. Must not look at requests (that is `protocol`
//! or `adyen`, by the simulator's dialect) and must not let one bad connection or accept error stop the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Dialect, SimError, Simulator, adyen, protocol};

/// How long open connections get to finish after shutdown; a hang fault would otherwise keep
/// the process alive for an hour.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// After an accept error (typically out of file descriptors) wait a little instead of
/// spinning on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One refusal cycle: with `refuse` = r the listener is closed for the first r of each.
const REFUSE_PERIOD_MS: u64 = 100;

/// Serve on an already-bound listener until `shutdown` resolves (tls: Some => https, ALPN
/// h2/http1.1). Connections still open `SHUTDOWN_GRACE` after shutdown are dropped.
pub async fn serve(
    sim: Arc<Simulator>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut listener = Some(listener);
    loop {
        let refuse = sim.behavior_now().refuse;
        let (open, slice_end) = refusal_slice(sim.started.elapsed(), refuse);
        let slice_end = tokio::time::Instant::from_std(sim.started + slice_end);
        if !open {
            // Serve what already completed its handshake, then close: connects are refused by
            // the kernel until the slice ends. (Closing with a backlog would reset those
            // connections after the client wrote its request: a different fault.)
            if let Some(active) = listener.take() {
                while let Ok(Ok((stream, _))) =
                    tokio::time::timeout(Duration::ZERO, active.accept()).await
                {
                    let mut builder = Builder::new(TokioExecutor::new());
                    builder.http1().keep_alive(false);
                    connections.spawn(connection(
                        stream,
                        acceptor.clone(),
                        Arc::clone(&sim),
                        builder,
                        graceful.watcher(),
                    ));
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(slice_end) => continue,
            }
        }
        if listener.is_none() {
            match bind(addr).await {
                Ok(reopened) => listener = Some(reopened),
                Err(error) => {
                    tracing::warn!(%error, "mock-psp: cannot reopen the listener");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some(active) = &listener else { continue };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = active.accept() => accepted,
            () = tokio::time::sleep_until(slice_end), if refuse > 0.0 => continue,
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
        let mut builder = Builder::new(TokioExecutor::new());
        // While refusing, one answer per connection, so that clients reconnect and meet
        // the closed listener as a real flapping PSP would make them.
        builder.http1().keep_alive(refuse == 0.0);
        let task = connection(
            stream,
            acceptor.clone(),
            Arc::clone(&sim),
            builder,
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

/// Whether the listener is open at `elapsed`, and when the current slice ends (as time since
/// the simulator started).
fn refusal_slice(elapsed: Duration, refuse: f64) -> (bool, Duration) {
    let now = elapsed.as_millis() as u64;
    let start = now - now % REFUSE_PERIOD_MS;
    let closed_ms = (refuse.clamp(0.0, 1.0) * REFUSE_PERIOD_MS as f64).round() as u64;
    if now - start < closed_ms {
        return (false, Duration::from_millis(start + closed_ms));
    }
    (true, Duration::from_millis(start + REFUSE_PERIOD_MS))
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
    let idle_close = sim.behavior_now().idle_close_ms;
    let stream = IdleClose {
        inner: stream,
        after: (idle_close > 0).then(|| Duration::from_millis(idle_close)),
        answered_at: None,
        sim: Arc::clone(&sim),
    };
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
    let service = service_fn(move |request| {
        let sim = Arc::clone(&sim);
        async move {
            match sim.dialect() {
                Dialect::PaygateV1 => protocol::handle(sim, request).await,
                Dialect::Adyen => adyen::handle(sim, request).await,
            }
        }
    });
    let connection = builder.serve_connection(io, service).into_owned();
    // Errors here are clients going away and injected resets: nothing to act on.
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "mock-psp: connection ended with an error");
    }
}

/// The `idle_close_ms` behaviour: a load balancer that dropped a keep-alive connection left
/// idle too long, which the client has not noticed yet. The first bytes that arrive after an
/// answer and a silence of at least `after` are not handed to hyper: the connection ends
/// unread, so the request is never processed, every time, with no timer to race the client.
struct IdleClose<S> {
    inner: S,
    after: Option<Duration>,
    /// When the last answer bytes were written, until the next request's first bytes arrive.
    answered_at: Option<std::time::Instant>,
    sim: Arc<Simulator>,
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !matches!(polled, Poll::Ready(Ok(()))) || buf.filled().len() == before {
            return polled;
        }
        let idle_too_long = match (self.after, self.answered_at.take()) {
            (Some(after), Some(answered_at)) => answered_at.elapsed() >= after,
            _ => false,
        };
        if !idle_too_long {
            return polled;
        }
        self.sim.stats.idle_closed();
        buf.set_filled(before);
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "idle_close_ms: the connection was idle too long",
        )))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if self.after.is_some() && matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.answered_at = Some(std::time::Instant::now());
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_slices_follow_the_share() {
        let at = |ms| refusal_slice(Duration::from_millis(ms), 0.3);
        assert_eq!(at(0), (false, Duration::from_millis(30)));
        assert_eq!(at(29), (false, Duration::from_millis(30)));
        assert_eq!(at(30), (true, Duration::from_millis(100)));
        assert_eq!(at(130), (true, Duration::from_millis(200)));
        assert!(
            refusal_slice(Duration::from_millis(5), 0.0).0,
            "never closed at 0"
        );
    }
}
