//! Overhead of the merchant safety layers per request: authentication (key hash and lookup),
//! the gateway and merchant rate limits, and the idempotency layer (request hash, record
//! lookup, the task that shields the payment from cancellation, storing the answer), run as
//! the real tower stack around an API that answers at once. Goal: under 3 µs median.
//!
//! Run: `cargo bench --bench safety`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use paygate::config::Config;
use paygate::gateway::Gateway;
use paygate::layers::{Authenticate, CheckLayer, IdempotencyLayer, RateLimitLayer};
use paygate::store::MemoryStore;
use paygate::store::idempotency::MemoryIdempotency;
use tower::{Service, ServiceBuilder, ServiceExt};

const ROUTES: &str = r#"
[idempotency]
max_keys = 100000000

[server]
rate_limit = { per_second = 4000000000, burst = 4000000000 }

[[merchants]]
id = "demo"
api_key_sha256 = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
rate_limit = { per_second = 4000000000, burst = 4000000000 }

[[channels]]
name = "psp"
url = "http://127.0.0.1:9"

[[rules]]
name = "all"
channels = ["psp"]
"#;

/// A realistic 400-byte merchant body.
const BODY: &str = r#"{"amount":1999,"currency":"EUR","method":"card","country":"DE","reference":"order-8812-2026-11-25-0001","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123","holder":"Jane Example"},"metadata":{"cart":"c-77120-0001","customer":"cus-000000001","channel":"web","campaign":"black-friday","note":"benchmark payload padded to about four hundred bytes......"}}"#;

fn bench_safety(c: &mut Criterion) {
    // One thread, as a request sees it: the task the idempotency layer spawns runs on the
    // worker that handles the request (a multi-thread runtime driven from the bench thread
    // would time a cross-thread wake-up per request instead).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config::parse(Path::new("bench.toml"), ROUTES).expect("valid routes");
    let gateway = {
        let _guard = runtime.enter();
        Arc::new(
            Gateway::new(
                config,
                HashMap::new(),
                Arc::new(MemoryStore::new()),
                Arc::new(MemoryIdempotency::new()),
            )
            .expect("gateway"),
        )
    };
    let api = tower::service_fn(|_: Request<Bytes>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"id\":\"pay_1\"}")));
        *response.status_mut() = StatusCode::CREATED;
        Ok::<_, Infallible>(response)
    });
    let stack = ServiceBuilder::new()
        .layer(CheckLayer(Authenticate(gateway.clone())))
        .layer(RateLimitLayer(gateway.clone()))
        .layer(IdempotencyLayer(gateway.clone()))
        .service(api);
    let mut group = c.benchmark_group("safety_layers");
    // Criterion calls the routine once per sample: the counter lives outside so that every
    // request carries a new key (a first request, not a replay).
    let next_key = std::cell::Cell::new(0u64);
    group.bench_function("auth_rate_limit_idempotency", |b| {
        b.to_async(&runtime).iter(|| {
            let n = next_key.get() + 1;
            next_key.set(n);
            let request = Request::post("/v1/payments")
                .header("authorization", "Bearer demo-key")
                .header("idempotency-key", format!("order-{n}"))
                .body(Bytes::from_static(BODY.as_bytes()))
                .expect("request");
            let service = stack.clone();
            async move {
                let response = service.oneshot(request).await;
                std::hint::black_box(response)
            }
        })
    });
    group.bench_function("auth_rate_limit_idempotency_replay", |b| {
        // Keys seen before (the first 10,000 of the run above): the lookup answers from the
        // stored record without calling the API.
        let mut n = 0u64;
        b.to_async(&runtime).iter(|| {
            n = n % 10_000 + 1;
            let request = Request::post("/v1/payments")
                .header("authorization", "Bearer demo-key")
                .header("idempotency-key", format!("order-{n}"))
                .body(Bytes::from_static(BODY.as_bytes()))
                .expect("request");
            let service = stack.clone();
            async move { std::hint::black_box(service.oneshot(request).await) }
        })
    });
    group.bench_function("auth_rate_limit_no_key", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::post("/v1/payments")
                .header("authorization", "Bearer demo-key")
                .body(Bytes::from_static(BODY.as_bytes()))
                .expect("request");
            let service = stack.clone();
            async move { std::hint::black_box(service.oneshot(request).await) }
        })
    });
    group.bench_function("auth_rate_limit_only", |b| {
        let mut checks = ServiceBuilder::new()
            .layer(CheckLayer(Authenticate(gateway.clone())))
            .layer(RateLimitLayer(gateway.clone()))
            .service(api);
        b.to_async(&runtime).iter(|| {
            let request = Request::post("/v1/payments")
                .header("authorization", "Bearer demo-key")
                .body(Bytes::from_static(BODY.as_bytes()))
                .expect("request");
            let response = checks.call(request);
            async move { std::hint::black_box(response.await) }
        })
    });
    group.finish();
    eprintln!(
        "requests with a new key: {}, idempotency records held: {}",
        next_key.get(),
        gateway.idempotency.len()
    );
}

criterion_group!(benches, bench_safety);
criterion_main!(benches);
