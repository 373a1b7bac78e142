//! Cost of one adaptive routing decision with five eligible channels whose windows are full
//! (thousands of calls, several segments): rule lookup, eligibility, ejection state, segment
//! figures, five Thompson draws with penalties, and the ordering. Goal: under 2 µs median.
//! Priority and weighted decisions on the same rule are measured beside it.
//!
//! Run: `cargo bench --bench decision`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use paygate::config::Config;
use paygate::routing::{Clock, Observation, PaymentFacts, Router, decide, segment_key};

fn routes(strategy: &str) -> String {
    let mut text = String::new();
    for c in 0..5 {
        text.push_str(&format!(
            "[[channels]]\nname = \"psp_{c}\"\nurl = \"http://127.0.0.1:9\"\nfee = {{ percent = 1.{c}, fixed = 25 }}\n\n"
        ));
    }
    text.push_str(&format!(
        "[[rules]]\nname = \"all\"\nchannels = [\"psp_0\", \"psp_1\", \"psp_2\", \"psp_3\", \"psp_4\"]\nstrategy = \"{strategy}\"\n"
    ));
    text
}

fn bench_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision_5_channels");
    for strategy in ["adaptive", "weighted", "priority"] {
        let config =
            Config::parse(Path::new("bench.toml"), &routes(strategy)).expect("valid routes");
        let router = Router::new(Clock::manual());
        let scores = router.scores_for(&config);
        // Fill 30 s of windows: 2,000 calls per channel over segments and seconds.
        for (id, score) in scores.iter().enumerate() {
            for i in 0..2_000u64 {
                let segment = segment_key(
                    ["card", "wallet"][(i % 2) as usize],
                    ["EUR", "USD"][(i % 4 / 2) as usize],
                );
                let observation = if i % 100 < 85 + id as u64 * 2 {
                    Observation::Success
                } else {
                    Observation::Decline
                };
                let latency = Some(std::time::Duration::from_millis(40 + id as u64 * 10));
                score.observe(
                    i * 15,
                    segment,
                    observation,
                    latency,
                    &config.routing.ejection,
                );
            }
        }
        let now = 30_000;
        let mut rng = rand::rng();
        let payment = PaymentFacts {
            merchant: "demo",
            currency: "EUR",
            method: "card",
            country: Some("DE"),
            amount: 1_999,
        };
        group.bench_function(strategy, |b| {
            b.iter(|| black_box(decide(&config, &scores, black_box(&payment), now, &mut rng)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decision);
criterion_main!(benches);
