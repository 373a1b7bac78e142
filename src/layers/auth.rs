//! Merchant authentication, on every `/v1/` request: `Authorization: Bearer <api key>`,
//! checked against the SHA-256 kept for each merchant, or, on a TLS listener with
//! `client_ca`, the merchant's client certificate. A merchant with a `signing_secret` must
//! also sign each request: `Paygate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "t.body">`, within five minutes of paygate's clock, so a captured request cannot be
//! replayed later.
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
        if !request.uri().path().starts_with("/v1/") {
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
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret.0).map_err(|_| ApiError::Unauthenticated)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(request.body());
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| ApiError::Unauthenticated)
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
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        let v1 = hex::encode(mac.finalize().into_bytes());
        Request::builder()
            .header(SIGNATURE_HEADER, format!("t={t},v1={v1}"))
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap()
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
