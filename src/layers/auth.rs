//! Merchant authentication, on every `/v1/` request: `Authorization: Bearer <api key>`,
//! checked against the SHA-256 kept for each merchant, or, on a TLS listener with
//! `client_ca`, the merchant's client certificate. A merchant with a `signing_secret` must
//! also sign each request: `Paygate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "t.METHOD.path-with-query.body">`, within five minutes of paygate's clock. The method and
//! the path are signed so that a captured request cannot be replayed against another
//! payment, as another operation, or later. [`signature_header`] computes the header; the
//! webhooks paygate sends are signed with it too.
//!
//! The key is hashed first and the hash looked up, so the time taken does not depend on how
//! much of a guess matches a real key, nor on whether the merchant exists. Keys, secrets and
//! signatures are never stored or logged.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, header};
use sha2::{Digest, Sha256};

use super::check::Check;
use crate::api::ApiError;
use crate::config::Merchant;
use crate::gateway::Gateway;

const SIGNATURE_HEADER: &str = "paygate-signature";
/// How far a signature's timestamp may be from now, either way.
const SIGNATURE_WINDOW_SECS: u64 = 300;

/// The merchant a request was authenticated as, in the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthenticatedMerchant(pub Arc<str>);

/// SHA-256 of the client certificate (DER) the TLS connection presented.
#[derive(Debug, Clone, Copy)]
pub struct PeerCertificate(pub [u8; 32]);

#[derive(Clone)]
pub struct Authenticate(pub Arc<Gateway>);

impl Check<Bytes> for Authenticate {
    fn check(&self, request: &mut Request<Bytes>) -> Result<(), ApiError> {
        let path = request.uri().path();
        // PSP webhooks carry the PSP's signature, checked by their handler.
        if !path.starts_with("/v1/") || crate::api::psp_webhook_channel(path).is_some() {
            return Ok(());
        }
        let snapshot = self.0.snapshot();
        let config = &snapshot.config;
        let merchant = match bearer(request) {
            Some(key) => {
                let hash: [u8; 32] = Sha256::digest(key).into();
                config.merchant_by_key_hash(&hash)
            }
            None => request
                .extensions()
                .get::<PeerCertificate>()
                .and_then(|cert| config.merchant_by_certificate(&cert.0)),
        }
        .ok_or(ApiError::Unauthenticated)?;
        verify_signature(merchant, request, unix_now())?;
        let id = AuthenticatedMerchant(Arc::from(merchant.id.as_str()));
        request.extensions_mut().insert(id);
        Ok(())
    }
}

fn bearer<B>(request: &Request<B>) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let key = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))?;
    (!key.is_empty()).then_some(key)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn verify_signature(
    merchant: &Merchant,
    request: &Request<Bytes>,
    now: u64,
) -> Result<(), ApiError> {
    let Some(secret) = &merchant.signing_secret else {
        return Ok(());
    };
    let header = request
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    let (timestamp, signature) = parse_signature(header).ok_or(ApiError::Unauthenticated)?;
    if now.abs_diff(timestamp) > SIGNATURE_WINDOW_SECS {
        return Err(ApiError::Unauthenticated);
    }
    let mac = signed_mac(
        &secret.0,
        timestamp,
        request.method().as_str(),
        path_and_query(request.uri()),
        request.body(),
    )
    .ok_or(ApiError::Unauthenticated)?;
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| ApiError::Unauthenticated)
}

/// The `Paygate-Signature` value for one request: `t=<unix_seconds>,v1=<hex HMAC-SHA256>` over
/// `unix_seconds + "." + method + "." + path_and_query + "." + body`. `path_and_query` is the
/// request target as sent (`/v1/payments/pay_1/capture?x=1`), never the scheme or host.
///
/// ```
/// let header = paygate::layers::signature_header(b"whsec", 1_800_000_000, "POST", "/v1/payments", b"{}");
/// assert!(header.starts_with("t=1800000000,v1="));
/// ```
pub fn signature_header(
    secret: &[u8],
    unix_seconds: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    // An HMAC takes a key of any length, so this never falls back; an empty v1 would simply
    // fail verification rather than panic.
    let v1 = signed_mac(secret, unix_seconds, method, path_and_query, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={unix_seconds},v1={v1}")
}

fn signed_mac(
    secret: &[u8],
    unix_seconds: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    for part in [
        unix_seconds.to_string().as_bytes(),
        method.as_bytes(),
        path_and_query.as_bytes(),
    ] {
        mac.update(part);
        mac.update(b".");
    }
    mac.update(body);
    Some(mac)
}

/// The request target that was signed: over HTTP/2 the URI also holds scheme and authority,
/// which the merchant does not sign.
fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// `t=<unix>,v1=<hex>` into its parts.
fn parse_signature(header: &str) -> Option<(u64, Vec<u8>)> {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signature = hex::decode(v).ok(),
            _ => {}
        }
    }
    Some((timestamp?, signature?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Risk, Secret};

    fn merchant() -> Merchant {
        Merchant {
            id: "m".into(),
            methods: Vec::new(),
            currencies: Vec::new(),
            rate_limit: None,
            signing_secret: Some(Secret(b"whsec".to_vec())),
            risk: Risk::default(),
            webhook_url: None,
        }
    }

    fn signed(body: &'static str, t: u64, secret: &[u8]) -> Request<Bytes> {
        signed_for("POST", "/v1/payments", body, t, secret)
    }

    fn signed_for(
        method: &str,
        target: &str,
        body: &'static str,
        t: u64,
        secret: &[u8],
    ) -> Request<Bytes> {
        Request::builder()
            .method(method)
            .uri(target)
            .header(
                SIGNATURE_HEADER,
                signature_header(secret, t, method, target, body.as_bytes()),
            )
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap()
    }

    #[test]
    fn the_signature_covers_method_path_and_query() {
        let m = merchant();
        let now = 1_800_000_000;
        let mac = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
            mac.update(b"1800000000.POST./v1/payments/pay_1/capture?x=1.{}");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(
            signature_header(
                b"whsec",
                now,
                "POST",
                "/v1/payments/pay_1/capture?x=1",
                b"{}"
            ),
            format!("t={now},v1={mac}"),
            "the documented string"
        );
        let good = signed_for("POST", "/v1/payments/pay_1/capture", "{}", now, b"whsec");
        assert!(verify_signature(&m, &good, now).is_ok());
        for (method, target) in [
            ("POST", "/v1/payments/pay_2/capture"),
            ("POST", "/v1/payments/pay_1/refunds"),
            ("PUT", "/v1/payments/pay_1/capture"),
            ("POST", "/v1/payments/pay_1/capture?x=1"),
        ] {
            let mut replayed =
                signed_for("POST", "/v1/payments/pay_1/capture", "{}", now, b"whsec");
            *replayed.method_mut() = method.parse().unwrap();
            *replayed.uri_mut() = target.parse().unwrap();
            assert!(
                verify_signature(&m, &replayed, now).is_err(),
                "{method} {target}"
            );
        }
        // Over HTTP/2 the URI is absolute; only the path and query were signed.
        let mut h2 = signed_for("GET", "/v1/payments/pay_1?a=b", "", now, b"whsec");
        *h2.uri_mut() = "https://pay.example/v1/payments/pay_1?a=b".parse().unwrap();
        assert!(verify_signature(&m, &h2, now).is_ok());
    }

    #[test]
    fn signatures_are_checked_with_a_time_window() {
        let m = merchant();
        let now = 1_800_000_000;
        assert!(verify_signature(&m, &signed("{}", now, b"whsec"), now).is_ok());
        assert!(verify_signature(&m, &signed("{}", now - 299, b"whsec"), now).is_ok());
        assert!(
            verify_signature(&m, &signed("{}", now - 301, b"whsec"), now).is_err(),
            "too old"
        );
        assert!(
            verify_signature(&m, &signed("{}", now + 301, b"whsec"), now).is_err(),
            "from the future"
        );
        assert!(
            verify_signature(&m, &signed("{}", now, b"other"), now).is_err(),
            "wrong secret"
        );
        let mut tampered = signed("{}", now, b"whsec");
        *tampered.body_mut() = Bytes::from_static(b"{\"amount\":1}");
        assert!(
            verify_signature(&m, &tampered, now).is_err(),
            "body changed"
        );
        let unsigned = Request::new(Bytes::new());
        assert!(verify_signature(&m, &unsigned, now).is_err());
        assert_eq!(parse_signature("t=5, v1=00ff"), Some((5, vec![0, 255])));
        assert_eq!(parse_signature("v1=00ff"), None);
    }
}
