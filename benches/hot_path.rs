//! Criterion micro-benchmarks of the request path's pieces, each alone: the adaptive decision
//! over 3, 10 and 100 eligible channels, metric recording, an idempotency lookup in a store
//! of 1,000,000 keys, reading a 400-byte payment body, and each PSP dialect's authorize
//! request and the reading of its answer.
//!
//! Run: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use paygate::config::{Config, Idempotency, Journal, JournalSync};
use paygate::metrics::Metrics;
use paygate::routing::{Clock, Observation, PaymentFacts, Router, decide, segment_key};
use paygate::store::idempotency::{
    Begin, IdempotencyStore, MemoryIdempotency, Scope, StoredResponse,
};
use paygate::store::{JournalStore, PaymentStore};
use paygate::store::{Outcome, PaymentStatus};

const BODY: &str = r#"{"amount":1999,"currency":"EUR","method":"card","country":"DE","reference":"order-8812-2026-11-25-0001","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123","holder":"Jane Example"},"metadata":{"cart":"c-77120-0001","customer":"cus-000000001","channel":"web","campaign":"black-friday","note":"benchmark payload padded to about four hundred bytes......"}}"#;

fn routes(channels: usize) -> String {
    let mut text = String::from(
        "[[merchants]]\nid = \"demo\"\napi_key_sha256 = \"c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c\"\n\n",
    );
    let mut names = Vec::new();
    for c in 0..channels {
        text.push_str(&format!(
            "[[channels]]\nname = \"psp_{c}\"\nurl = \"http://127.0.0.1:9\"\nfee = {{ percent = 1.5, fixed = 25 }}\n\n"
        ));
        names.push(format!("\"psp_{c}\""));
    }
    text.push_str(&format!(
        "[[rules]]\nname = \"all\"\nchannels = [{}]\n",
        names.join(", ")
    ));
    text
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("adaptive_decision");
    for channels in [3, 10, 100] {
        let config = Config::parse(Path::new("bench.toml"), &routes(channels)).expect("routes");
        let scores = Router::new(Clock::manual()).scores_for(&config);
        let segment = segment_key("card", "EUR");
        for (id, score) in scores.iter().enumerate() {
            for i in 0..500u64 {
                let observation = if (i + id as u64) % 10 < 9 {
                    Observation::Success
                } else {
                    Observation::Decline
                };
                score.observe(
                    i * 50,
                    segment,
                    observation,
                    Some(Duration::from_millis(40)),
                    &config.routing.ejection,
                );
            }
        }
        let payment = PaymentFacts {
            merchant: "demo",
            currency: "EUR",
            method: "card",
            country: Some("DE"),
            amount: 1_999,
        };
        let mut rng = rand::rng();
        group.bench_function(format!("{channels}_channels"), |b| {
            b.iter(|| {
                black_box(decide(
                    &config,
                    &scores,
                    black_box(&payment),
                    25_000,
                    &mut rng,
                ))
            })
        });
    }
    group.finish();
}

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let config = Config::parse(Path::new("bench.toml"), &routes(3)).expect("routes");
    let resolved = metrics.for_config(&config);
    c.bench_function("metrics_record_one_payment", |b| {
        b.iter(|| {
            metrics.request(0, 201, Duration::from_micros(900));
            resolved.channels[1].attempt(Outcome::Succeeded, Duration::from_micros(700));
            resolved.payment(0, Some(1), PaymentStatus::Succeeded);
        })
    });
}

/// Records an answer for keys `order-0` to `order-999999` of merchant `demo`.
fn answer_keys(store: &dyn IdempotencyStore, settings: &Idempotency, now: Instant) {
    let answer = StoredResponse {
        status: 201,
        body: bytes::Bytes::from_static(b"{\"id\":\"pay_1\"}"),
        channel: Some("psp_0".into()),
    };
    for n in 0..1_000_000u64 {
        let scope = Scope::new("demo", &format!("order-{n}"));
        let _ = store.begin(&scope, [7; 32], now, settings);
        store.finish(&scope, Some(answer.clone()), now, settings);
    }
}

/// Times a replay of the keys `answer_keys` recorded, spread over all of them.
fn replay_keys(
    c: &mut Criterion,
    name: &str,
    store: &dyn IdempotencyStore,
    settings: &Idempotency,
    now: Instant,
) {
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            n = (n + 7_919) % 1_000_000;
            let scope = Scope::new("demo", &format!("order-{n}"));
            let found = store.begin(&scope, [7; 32], now, settings);
            assert!(matches!(found, Begin::Replay(_)));
            black_box(found)
        })
    });
}

fn idempotency(c: &mut Criterion) {
    let store = MemoryIdempotency::new();
    let settings = Idempotency {
        max_keys: 2_000_000,
        ..Idempotency::default()
    };
    let now = Instant::now();
    answer_keys(&store, &settings, now);
    replay_keys(c, "idempotency_lookup_1m_keys", &store, &settings, now);
}

/// The store `paygate serve` uses: records in the journal, a Bloom filter in front.
fn journal_idempotency(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("paygate-bench-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = JournalStore::open(&Journal {
        path: dir.join("journal.db"),
        sync: JournalSync::Batch,
        queue: 2_000_000,
        postgres: None,
    })
    .expect("journal");
    let settings = Idempotency::default();
    let now = Instant::now();
    answer_keys(&store, &settings, now);
    // Wait until the writer has committed them all (memory then holds none).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(store.durable("barrier"))
        .expect("committed");
    assert_eq!(store.len(), 1_000_000);
    replay_keys(
        c,
        "journal_idempotency_replay_1m_keys",
        &store,
        &settings,
        now,
    );
    let mut n = 0u64;
    c.bench_function("journal_idempotency_new_key_1m_keys", |b| {
        b.iter(|| {
            n += 1;
            let scope = Scope::new("demo", &format!("new-{n}"));
            let found = store.begin(&scope, [7; 32], now, &settings);
            assert!(matches!(found, Begin::Proceed));
            store.finish(&scope, None, now, &settings);
            black_box(found)
        })
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The merchant body from bytes to the PSP's body, both ways side by side: a `Map` of
/// `Value`s serialized again with `paygate_id` (before), and the raw fields forwarded as they
/// came (now: `api::read_payment` then `PaymentBody::with_paygate_id`).
fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("merchant_body_to_psp");
    group.bench_function("map_then_serialize", |b| {
        b.iter(|| {
            let mut fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(black_box(BODY.as_bytes())).expect("json");
            fields.insert("paygate_id".into(), "pay_01JD".into());
            black_box(serde_json::to_vec(&fields).expect("serialize"))
        })
    });
    group.bench_function("raw_fields_forwarded", |b| {
        b.iter(|| {
            let (body, payment) =
                paygate::api::read_payment(black_box(BODY.as_bytes())).expect("valid");
            black_box(payment);
            black_box(body.with_paygate_id("pay_01JD").expect("serialize"))
        })
    });
    group.finish();
}

/// Each dialect's authorize, side by side on the same body: the PSP request built from it
/// (`paygate-v1`: the body forwarded; `stripe`: the PaymentIntent form, after the
/// PaymentMethod step; `adyen`: the `/payments` JSON) and the PSP's success answer read.
fn dialects(c: &mut Criterion) {
    use paygate::upstream::{Call, CallContext, Step, dialect};
    let routes = "[[channels]]\nname = \"v1\"\nurl = \"http://127.0.0.1:9\"\n\n\
        [[channels]]\nname = \"stripe\"\nurl = \"http://127.0.0.1:9\"\nprotocol = \"stripe\"\napi_key = \"env:PATH\"\n\n\
        [[channels]]\nname = \"adyen\"\nurl = \"http://127.0.0.1:9\"\nprotocol = \"adyen\"\napi_key = \"env:PATH\"\n\
        merchant_account = \"Bench\"\nreturn_url = \"https://shop.example/return\"\n";
    let config = Config::parse(Path::new("bench.toml"), routes).expect("routes");
    let context = CallContext {
        paygate_id: "pay_01JD0000000000000000000000",
        idempotency_key: "pay_01JD0000000000000000000000",
        request_id: "req_01JD0000000000000000000000",
        traceparent: None,
    };
    let cases = [
        ("paygate_v1", Step::First, &br#"{"status":"succeeded","psp_reference":"a-1"}"#[..]),
        (
            "stripe",
            Step::Then("pm_1".into()),
            &br#"{"id":"pi_1","object":"payment_intent","status":"requires_capture","amount":1999}"#[..],
        ),
        (
            "adyen",
            Step::First,
            &br#"{"pspReference":"PSP0000000000001","resultCode":"Authorised","merchantReference":"pay_01JD"}"#[..],
        ),
    ];
    let mut group = c.benchmark_group("dialect_authorize");
    for ((name, step, answer), channel) in cases.into_iter().zip(&config.channels) {
        let psp = dialect(channel);
        group.bench_function(name, |b| {
            b.iter(|| {
                let (body, _) =
                    paygate::api::read_payment(black_box(BODY.as_bytes())).expect("valid");
                let call = Call::Authorize { payment: &body };
                let request = psp
                    .request("http://psp", &call, &context, &step)
                    .expect("a request");
                black_box(request);
                black_box(psp.reply(&call, &step, http::StatusCode::OK, black_box(answer)))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    decision,
    metrics,
    idempotency,
    journal_idempotency,
    parse,
    dialects
);
criterion_main!(benches);
