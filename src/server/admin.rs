//! The admin listener's endpoints: `/healthz` (the process answers) and `/readyz` (it takes
//! traffic; 503 from the moment shutdown starts). Metrics and the token-protected `/admin/`
//! API join here.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Request, StatusCode};
use serde_json::json;
use tower::Service;

use crate::api::json_response;
use crate::layers::{HttpResponse, ResponseFuture};

#[derive(Clone)]
pub struct Admin {
    ready: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(ready: Arc<AtomicBool>) -> Self {
        Self { ready }
    }

    fn answer(&self, path: &str) -> HttpResponse {
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" if self.ready.load(Ordering::SeqCst) => {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
            "/readyz" => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "shutting_down"}),
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"type": "not_found", "message": format!("no such endpoint: {path}"), "request_id": ""}}),
            ),
        }
    }
}

impl<B> Service<Request<B>> for Admin {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = self.answer(request.uri().path());
        Box::pin(async move { Ok(response) })
    }
}
