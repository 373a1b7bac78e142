//! Dialect `paygate-v1`, the contract's PSP protocol (the one `paygate mock-psp` speaks):
//! JSON over `POST {url}/payments`, `.../{ref}/capture`, `.../{ref}/refunds`,
//! `.../{ref}/cancel` and
//! `GET {url}/payments/{ref}`, each answered with `{status, psp_reference, decline_code}`;
//! a payment whose answer never arrived is found with `GET {url}/payments/by-paygate-id/{id}`
//! (404: the PSP never received it).

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::protocol::{Call, CallContext, ProtocolError, PspProtocol, Reply, Step};

pub struct PaygateV1;

#[derive(Serialize)]
struct FollowUp<'a> {
    amount: u64,
    paygate_id: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    psp_reference: Option<String>,
    decline_code: Option<String>,
}

impl PspProtocol for PaygateV1 {
    fn request(
        &self,
        base: &str,
        call: &Call<'_>,
        context: &CallContext<'_>,
        _step: &Step,
    ) -> Result<Request<Full<Bytes>>, ProtocolError> {
        let paygate_id = context.paygate_id;
        let (method, path, body) = match *call {
            Call::Authorize { payment } => (
                Method::POST,
                "/payments".to_string(),
                payment.with_paygate_id(paygate_id),
            ),
            Call::Capture {
                psp_reference,
                amount,
                ..
            } => (
                Method::POST,
                format!("/payments/{}/capture", path_segment(psp_reference)?),
                serde_json::to_vec(&FollowUp { amount, paygate_id }),
            ),
            Call::Refund {
                psp_reference,
                amount,
                ..
            } => (
                Method::POST,
                format!("/payments/{}/refunds", path_segment(psp_reference)?),
                serde_json::to_vec(&FollowUp { amount, paygate_id }),
            ),
            Call::Cancel {
                psp_reference,
                amount,
                ..
            } => (
                Method::POST,
                format!("/payments/{}/cancel", path_segment(psp_reference)?),
                serde_json::to_vec(&FollowUp { amount, paygate_id }),
            ),
            Call::Status {
                psp_reference: Some(psp_reference),
            } => (
                Method::GET,
                format!("/payments/{}", path_segment(psp_reference)?),
                Ok(Vec::new()),
            ),
            Call::Status {
                psp_reference: None,
            } => (
                Method::GET,
                format!("/payments/by-paygate-id/{}", path_segment(paygate_id)?),
                Ok(Vec::new()),
            ),
        };
        let body = body.map_err(|e| ProtocolError(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("idempotency-key", context.idempotency_key)
            .header("x-request-id", context.request_id);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(traceparent) = context.traceparent {
            request = request.header("traceparent", traceparent);
        }
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProtocolError(e.to_string()))
    }

    fn reply(&self, call: &Call<'_>, _step: &Step, status: StatusCode, body: &[u8]) -> Reply {
        let lookup = matches!(
            call,
            Call::Status {
                psp_reference: None
            }
        );
        if lookup && status == StatusCode::NOT_FOUND {
            return Reply::Unknown;
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            return Reply::Unavailable {
                reason: format!("PSP answered {}", status.as_u16()),
            };
        }
        if status.is_server_error() {
            return Reply::Error {
                reason: format!("PSP answered {}", status.as_u16()),
            };
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
            return Reply::Error {
                reason: format!(
                    "PSP answered {} with a body that is not paygate-v1 JSON",
                    status.as_u16()
                ),
            };
        };
        match (answer.status.as_str(), answer.psp_reference) {
            ("succeeded", Some(psp_reference)) if status.is_success() => {
                Reply::Succeeded { psp_reference }
            }
            ("declined", psp_reference) => Reply::Declined {
                psp_reference,
                code: answer.decline_code.unwrap_or_else(|| "declined".into()),
            },
            ("pending", psp_reference) if status.is_success() => Reply::Pending {
                psp_reference,
                action: None,
            },
            (other, _) => Reply::Error {
                reason: format!("PSP answered {} with status {other:?}", status.as_u16()),
            },
        }
    }
}

/// A PSP reference goes into a URL path: refuse anything that could change the path.
pub(super) fn path_segment(reference: &str) -> Result<&str, ProtocolError> {
    let safe = !reference.is_empty()
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    if safe {
        Ok(reference)
    } else {
        Err(ProtocolError(format!(
            "PSP reference {reference:?} cannot be used in a URL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: Call<'static> = Call::Status {
        psp_reference: Some("a-1"),
    };

    #[test]
    fn a_lookup_by_paygate_id_reads_404_as_never_received() {
        let lookup = Call::Status {
            psp_reference: None,
        };
        assert_eq!(
            PaygateV1.reply(&lookup, &Step::First, StatusCode::NOT_FOUND, b"{}"),
            Reply::Unknown
        );
        let context = CallContext {
            paygate_id: "pay_1",
            idempotency_key: "pay_1",
            request_id: "r",
            traceparent: None,
        };
        let request = PaygateV1
            .request("http://psp", &lookup, &context, &Step::First)
            .unwrap();
        assert_eq!(request.uri(), "http://psp/payments/by-paygate-id/pay_1");
        assert!(matches!(
            PaygateV1.reply(&STATUS, &Step::First, StatusCode::NOT_FOUND, b"{}"),
            Reply::Error { .. }
        ));
    }

    #[test]
    fn classifies_answers() {
        let p = PaygateV1;
        assert!(matches!(
            p.reply(&STATUS, &Step::First, StatusCode::SERVICE_UNAVAILABLE, b""),
            Reply::Unavailable { .. }
        ));
        assert!(matches!(
            p.reply(&STATUS, &Step::First, StatusCode::TOO_MANY_REQUESTS, b""),
            Reply::Unavailable { .. }
        ));
        assert!(matches!(
            p.reply(
                &STATUS,
                &Step::First,
                StatusCode::INTERNAL_SERVER_ERROR,
                b"{}"
            ),
            Reply::Error { .. }
        ));
        assert!(matches!(
            p.reply(&STATUS, &Step::First, StatusCode::OK, b"<html>"),
            Reply::Error { .. }
        ));
        assert_eq!(
            p.reply(
                &STATUS,
                &Step::First,
                StatusCode::OK,
                br#"{"status":"succeeded","psp_reference":"a-1"}"#
            ),
            Reply::Succeeded {
                psp_reference: "a-1".into()
            }
        );
        assert_eq!(
            p.reply(
                &STATUS,
                &Step::First,
                StatusCode::NOT_FOUND,
                br#"{"status":"declined","psp_reference":"x","decline_code":"unknown_payment"}"#
            ),
            Reply::Declined {
                psp_reference: Some("x".into()),
                code: "unknown_payment".into()
            }
        );
    }

    #[test]
    fn authorize_adds_paygate_id_and_keeps_unknown_fields() {
        let bytes = br#"{"amount":5,"extra":"kept","n":123456789012345678901234567890}"#;
        let payment = crate::payload::PaymentBody::parse(bytes).unwrap();
        let context = CallContext {
            paygate_id: "pay_1",
            idempotency_key: "pay_1",
            request_id: "req_1",
            traceparent: None,
        };
        let request = PaygateV1
            .request(
                "http://psp",
                &Call::Authorize { payment: &payment },
                &context,
                &Step::First,
            )
            .unwrap();
        assert_eq!(request.uri(), "http://psp/payments");
        assert_eq!(request.headers()["idempotency-key"], "pay_1");
        assert_eq!(
            futures_body(request.into_body()),
            &br#"{"amount":5,"extra":"kept","n":123456789012345678901234567890,"paygate_id":"pay_1"}"#[..]
        );
    }

    #[test]
    fn refuses_references_that_would_change_the_path() {
        let context = CallContext {
            paygate_id: "pay_1",
            idempotency_key: "k",
            request_id: "r",
            traceparent: None,
        };
        let call = Call::Status {
            psp_reference: Some("../admin"),
        };
        assert!(
            PaygateV1
                .request("http://psp", &call, &context, &Step::First)
                .is_err()
        );
    }

    fn futures_body(body: Full<Bytes>) -> Bytes {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { body.collect().await.unwrap().to_bytes() })
    }
}
