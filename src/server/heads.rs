//! Watches the bytes of an HTTP/1 connection as hyper reads them, to learn what hyper does not
//! pass on: which request heads carried both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper frames such a request by `Transfer-Encoding` alone and silently drops the
//! `Content-Length` header, so the layers would never know the request was ambiguous (the
//! shape of request smuggling, RFC 9112 6.1). This module follows the framing of each request
//! exactly as hyper does (chunked when `Transfer-Encoding` is present, else `Content-Length`,
//! else no body) only to find where the next head starts; it never changes a byte, never
//! buffers more than one short line, and decides nothing: the `framing` layer answers.
//!
//! When the bytes stop making sense (an HTTP/2 preface, a malformed chunk) it stops looking:
//! hyper fails such a connection itself, or it is HTTP/2, where `Transfer-Encoding` is a
//! protocol error the h2 codec refuses.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No head was ambiguous.
const NONE: u64 = u64::MAX;
/// The part of a line kept: header names we look for and a `Content-Length` value fit.
const LINE_KEPT: usize = 64;

/// What the watcher learnt, shared with the connection's service.
#[derive(Debug)]
pub struct HeadLog {
    /// Index (0 for the connection's first request) of the head that carried both lengths.
    /// hyper closes the connection after such a request, so there is at most one.
    ambiguous: AtomicU64,
}

impl Default for HeadLog {
    fn default() -> Self {
        Self {
            ambiguous: AtomicU64::new(NONE),
        }
    }
}

impl HeadLog {
    /// Whether the connection's request number `index` (from 0) carried both lengths.
    pub fn is_ambiguous(&self, index: u64) -> bool {
        self.ambiguous.load(Ordering::Acquire) == index
    }
}

/// The first bytes of a line, without the blanks after a colon (so that a padded
/// `Content-Length` still fits), and whether it was longer.
struct Line {
    kept: [u8; LINE_KEPT],
    len: usize,
    overflowed: bool,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            kept: [0; LINE_KEPT],
            len: 0,
            overflowed: false,
        }
    }
}

impl Line {
    fn push(&mut self, byte: u8) {
        let after_colon = self.len > 0 && self.kept[self.len - 1] == b':';
        if after_colon && (byte == b' ' || byte == b'\t') {
            return;
        }
        match self.kept.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    /// As `push` of each byte.
    fn extend(&mut self, bytes: &[u8]) {
        for (at, &byte) in bytes.iter().enumerate() {
            if self.len == LINE_KEPT {
                let after_colon = self.kept[LINE_KEPT - 1] == b':';
                self.overflowed |= bytes[at..]
                    .iter()
                    .any(|&b| !(after_colon && (b == b' ' || b == b'\t')));
                return;
            }
            self.push(byte);
        }
    }

    /// The kept part of the line, without its `\r`.
    fn text(&self) -> &[u8] {
        let kept = &self.kept[..self.len];
        kept.strip_suffix(b"\r").unwrap_or(kept)
    }

    fn is_empty(&self) -> bool {
        !self.overflowed && self.text().is_empty()
    }
}

/// A chunk-size line read as it comes: hex digits, then anything (extensions) to the line end.
#[derive(Default)]
struct ChunkSize {
    size: u64,
    digits: usize,
    past_digits: bool,
}

#[derive(Default)]
struct Head {
    line: Line,
    lines: u32,
    content_length: Option<u64>,
    has_content_length: bool,
    has_transfer_encoding: bool,
}

enum State {
    Head(Head),
    /// Body bytes left of a `Content-Length` body.
    Fixed(u64),
    ChunkSize(ChunkSize),
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    Trailers(Line),
    /// Not following any more (HTTP/2, a connection hyper will close, bytes hyper refuses).
    Stopped,
}

/// Follows request framing over the bytes read, one byte at a time.
pub struct Watcher {
    state: State,
    heads: u64,
    log: Arc<HeadLog>,
}

impl Watcher {
    pub fn new(log: Arc<HeadLog>) -> Self {
        Self {
            state: State::Head(Head::default()),
            heads: 0,
            log,
        }
    }

    pub fn observe(&mut self, mut bytes: &[u8]) {
        while let Some(&byte) = bytes.first() {
            match &mut self.state {
                State::Stopped => return,
                // Body data is skipped in bulk rather than byte by byte.
                State::Fixed(left) | State::ChunkData(left) => {
                    let take = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = match self.state {
                            State::Fixed(_) => State::Head(Head::default()),
                            _ => State::ChunkEnd,
                        };
                    }
                    continue;
                }
                // A head line is taken up to its end at once (only its start is kept).
                State::Head(head) if byte != b'\n' => {
                    let end = bytes
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap_or(bytes.len());
                    head.line.extend(&bytes[..end]);
                    bytes = &bytes[end..];
                    continue;
                }
                _ => {}
            }
            self.step(byte);
            bytes = &bytes[1..];
        }
    }

    fn step(&mut self, byte: u8) {
        let next = match &mut self.state {
            State::Stopped | State::Fixed(_) | State::ChunkData(_) => return,
            State::Head(head) if byte == b'\n' => {
                let line = std::mem::take(&mut head.line);
                match Self::head_line(head, &line) {
                    HeadStep::More => return,
                    HeadStep::Stop => State::Stopped,
                    HeadStep::End => self.head_ended(),
                }
            }
            State::Head(head) => {
                head.line.push(byte);
                return;
            }
            State::ChunkSize(chunk) if byte == b'\n' => match chunk.digits {
                0 => State::Stopped,
                _ if chunk.size == 0 => State::Trailers(Line::default()),
                _ => State::ChunkData(chunk.size),
            },
            State::ChunkSize(chunk) => {
                let digit = (byte as char).to_digit(16);
                match digit {
                    Some(d) if !chunk.past_digits => {
                        // A size past u64 is one hyper refuses too.
                        let Some(size) = chunk.size.checked_mul(16) else {
                            self.state = State::Stopped;
                            return;
                        };
                        chunk.size = size | u64::from(d);
                        chunk.digits += 1;
                    }
                    _ => chunk.past_digits = true,
                }
                return;
            }
            State::Trailers(line) if byte != b'\n' => {
                line.push(byte);
                return;
            }
            State::Trailers(line) if line.is_empty() => State::Head(Head::default()),
            State::Trailers(_) => State::Trailers(Line::default()),
            State::ChunkEnd => match byte {
                b'\r' => return,
                b'\n' => State::ChunkSize(ChunkSize::default()),
                _ => State::Stopped,
            },
        };
        self.state = next;
    }

    fn head_line(head: &mut Head, line: &Line) -> HeadStep {
        if head.lines == 0 {
            // Empty lines before a request line are allowed (RFC 9112 2.2).
            if line.is_empty() {
                return HeadStep::More;
            }
            head.lines = 1;
            let http2 = line.text().starts_with(b"PRI * HTTP/2.0");
            return if http2 {
                HeadStep::Stop
            } else {
                HeadStep::More
            };
        }
        if line.is_empty() {
            return HeadStep::End;
        }
        head.lines += 1;
        let text = line.text();
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            return HeadStep::More;
        };
        let (name, value) = (&text[..colon], &text[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            head.has_transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            head.has_content_length = true;
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|_| !line.overflowed)
                .and_then(|v| v.trim().parse::<u64>().ok());
            match length {
                // hyper refuses a length it cannot read, and closes the connection.
                None => return HeadStep::Stop,
                Some(length) => head.content_length = head.content_length.or(Some(length)),
            }
        }
        HeadStep::More
    }

    fn head_ended(&mut self) -> State {
        let index = self.heads;
        self.heads += 1;
        let State::Head(head) = &self.state else {
            return State::Stopped;
        };
        if head.has_transfer_encoding && head.has_content_length {
            self.log.ambiguous.store(index, Ordering::Release);
            // hyper closes the connection after this request: nothing follows.
            return State::Stopped;
        }
        if head.has_transfer_encoding {
            return State::ChunkSize(ChunkSize::default());
        }
        match head.content_length {
            Some(length) if length > 0 => State::Fixed(length),
            _ => State::Head(Head::default()),
        }
    }
}

enum HeadStep {
    More,
    End,
    Stop,
}

/// A connection's stream, with a [`Watcher`] on what is read from it.
pub struct Watched<IO> {
    io: IO,
    watcher: Watcher,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, log: Arc<HeadLog>) -> Self {
        Self {
            io,
            watcher: Watcher::new(log),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.watcher.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` bytes; the index of the ambiguous head, if any.
    fn ambiguous(bytes: &[u8], step: usize) -> Option<u64> {
        let log = Arc::new(HeadLog::default());
        let mut watcher = Watcher::new(log.clone());
        for piece in bytes.chunks(step) {
            watcher.observe(piece);
        }
        let index = log.ambiguous.load(Ordering::Acquire);
        (index != NONE).then_some(index)
    }

    #[test]
    fn finds_the_head_with_both_lengths_after_other_requests() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nTE: 1\r\n0\r\nX-Trailer: y\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n0\r\n\r\n";
        for step in [1, 2, 7, stream.len()] {
            assert_eq!(ambiguous(stream, step), Some(3), "in pieces of {step}");
        }
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_heads() {
        let body = "x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let stream = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(ambiguous(stream.as_bytes(), 3), None);
        assert_eq!(
            ambiguous(
                b"\r\nPOST / HTTP/1.1\nContent-Length: 0\ntransfer-encoding: chunked\n\n",
                1
            ),
            Some(0),
            "bare line feeds and a leading empty line"
        );
    }

    #[test]
    fn a_line_taken_at_once_is_kept_as_byte_by_byte() {
        let colon_at_end = format!("{}:", "x".repeat(LINE_KEPT - 1));
        let lines = [
            String::new(),
            "Content-Length:   12".into(),
            format!("{colon_at_end}   \t "),
            format!("{colon_at_end}  7"),
            format!("Content-Length:{}2", " ".repeat(200)),
            "y".repeat(LINE_KEPT),
            "y".repeat(LINE_KEPT + 1),
        ];
        for line in &lines {
            let (mut at_once, mut by_byte) = (Line::default(), Line::default());
            at_once.extend(line.as_bytes());
            line.bytes().for_each(|b| by_byte.push(b));
            assert_eq!(
                (at_once.text(), at_once.overflowed),
                (by_byte.text(), by_byte.overflowed),
                "{line:?}"
            );
        }
    }

    #[test]
    fn stops_at_http2_and_at_bytes_hyper_refuses() {
        let h2 =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(ambiguous(h2, 5), None);
        let padded = format!(
            "POST / HTTP/1.1\r\nContent-Length:{}2\r\n\r\nokPOST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            " ".repeat(200)
        );
        assert_eq!(
            ambiguous(padded.as_bytes(), 9),
            Some(1),
            "padding is not a way past"
        );
        let zeros = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0".repeat(100)
        );
        assert_eq!(
            ambiguous(zeros.as_bytes(), 5),
            Some(1),
            "leading zeros in a chunk size"
        );
        let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(ambiguous(bad_chunk, 4), None);
    }
}
