//! Refuses requests whose framing two HTTP implementations could read differently, before
//! anything else looks at them (RFC 9112): both `Content-Length` and `Transfer-Encoding`
//! (the connection is closed after the answer, 6.1), and an HTTP/1.1 request without exactly
//! one `Host` (3.2). Both are 400 `invalid_request`.
//!
//! hyper drops `Content-Length` when `Transfer-Encoding` is present, so the request cannot
//! show both: the listener watches the raw head and marks such a request with
//! [`TwoLengths`]. This layer only looks; it never reads the body.

use http::{Request, Version, header};

use super::check::Check;
use crate::api::ApiError;

/// In a request's extensions: its head carried both `Content-Length` and
/// `Transfer-Encoding` (set by the listener, which sees the bytes hyper parsed).
#[derive(Debug, Clone, Copy)]
pub struct TwoLengths;

#[derive(Debug, Clone, Copy)]
pub struct Framing;

impl<B> Check<B> for Framing {
    fn check(&self, request: &mut Request<B>) -> Result<(), ApiError> {
        let headers = request.headers();
        let lengths = headers.contains_key(header::CONTENT_LENGTH)
            && headers.contains_key(header::TRANSFER_ENCODING);
        if lengths || request.extensions().get::<TwoLengths>().is_some() {
            return Err(ApiError::AmbiguousFraming);
        }
        // HTTP/2 carries the authority in `:authority`; Host is an HTTP/1 header.
        let http1 = matches!(request.version(), Version::HTTP_10 | Version::HTTP_11);
        let hosts = headers.get_all(header::HOST).iter().count();
        if http1 && hosts > 1 {
            return Err(ApiError::InvalidRequest(
                "the request has more than one Host header".into(),
            ));
        }
        if request.version() == Version::HTTP_11 && hosts == 0 {
            return Err(ApiError::InvalidRequest(
                "an HTTP/1.1 request needs a Host header".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(request: Request<()>) -> Result<(), &'static str> {
        let mut request = request;
        Framing.check(&mut request).map_err(|e| e.kind())
    }

    #[test]
    fn one_host_and_one_length() {
        let ok = Request::builder().header("host", "x").body(()).unwrap();
        assert_eq!(check(ok), Ok(()));
        let none = Request::builder().body(()).unwrap();
        assert_eq!(check(none), Err("invalid_request"));
        let two = Request::builder()
            .header("host", "x")
            .header("host", "y")
            .body(())
            .unwrap();
        assert_eq!(check(two), Err("invalid_request"));
        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(check(http10), Ok(()), "Host is optional before 1.1");
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(check(h2), Ok(()));
        let mut marked = Request::builder().header("host", "x").body(()).unwrap();
        marked.extensions_mut().insert(TwoLengths);
        assert_eq!(check(marked), Err("invalid_request"));
        let both = Request::builder()
            .header("host", "x")
            .header("content-length", "1")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert_eq!(check(both), Err("invalid_request"));
    }
}
