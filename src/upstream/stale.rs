//! Telling a pooled connection the PSP had already closed from a PSP that may have read the
//! request.
//!
//! Load balancers in front of PSPs drop idle keep-alive connections, and a request written
//! into one that the pool has not yet seen closed meets an end of stream or a reset before
//! any byte of an answer. On a connection that served earlier requests, that is the closed
//! idle connection far more often than a PSP that read the request and died; and the second
//! try goes to the same channel with the same `Idempotency-Key`, so even then the PSP answers
//! it as a duplicate instead of charging again. A failure on a fresh connection, or after the
//! answer began, is never retried here: it stays ambiguous.
//!
//! Owns the connector wrapper that stamps each connection with the moment it was made and
//! the test on a failed call. Must not decide anything about payments.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use tower::Service;

/// When a connection was established, carried in its `Connected` extras.
#[derive(Debug, Clone, Copy)]
struct Born(Instant);

/// A connector whose connections carry [`Born`].
#[derive(Debug, Clone)]
pub struct Stamped<C>(pub C);

impl<C> Service<Uri> for Stamped<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = StampedStream<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(StampedStream {
                inner: stream,
                born: Born(Instant::now()),
            })
        })
    }
}

pub struct StampedStream<S> {
    inner: S,
    born: Born,
}

impl<S: Connection> Connection for StampedStream<S> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.born)
    }
}

impl<S: Read + Unpin> Read for StampedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Write + Unpin> Write for StampedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Asks the client to tell which connection `request` goes out on.
pub fn capture<B>(request: &mut http::Request<B>) -> CaptureConnection {
    hyper_util::client::legacy::connect::capture_connection(request)
}

/// True when `error` is the end of a connection made before this call began (so reused from
/// the pool) that came before any answer: end of stream, reset or broken pipe.
pub fn closed_before_answer(
    error: &hyper_util::client::legacy::Error,
    connection: &CaptureConnection,
    started: Instant,
) -> bool {
    if error.is_connect() {
        return false;
    }
    let reused = connection.connection_metadata().as_ref().is_some_and(|c| {
        let mut extras = http::Extensions::new();
        c.get_extras(&mut extras);
        extras.get::<Born>().is_some_and(|born| born.0 < started)
    });
    reused && is_closed_connection(error)
}

fn is_closed_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}
