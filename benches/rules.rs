//! Routing decision time against the size of the rules file: 10 rules vs 10,000 rules of the
//! same shapes (per merchant, per currency, per method, with amount bands), on the same
//! payments. The rule index must make the two indistinguishable; a linear scan of 10,000
//! rules is measured beside them to show what the index saves.
//!
//! Run: `cargo bench --bench rules`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use paygate::config::Config;
use paygate::routing::{Clock, PaymentFacts, Router, decide};

const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "CHF"];
const METHODS: [&str; 2] = ["card", "wallet"];

/// A routes file with `merchants` merchants and, for each, one rule per currency and method
/// and amount band (`bands` bands), then a catch-all.
fn routes(merchants: usize, bands: usize) -> String {
    let mut text = String::new();
    for m in 0..merchants {
        text.push_str(&format!(
            "[[merchants]]\nid = \"m{m}\"\napi_key_sha256 = \"{:064x}\"\n\n",
            m + 1
        ));
    }
    for c in ["a", "b", "c"] {
        text.push_str(&format!(
            "[[channels]]\nname = \"psp_{c}\"\nurl = \"http://127.0.0.1:9\"\nmax_amount = 100000000\n\n"
        ));
    }
    let band = 1_000_000 / bands as u64;
    for m in 0..merchants {
        for currency in CURRENCIES {
            for method in METHODS {
                for b in 0..bands as u64 {
                    text.push_str(&format!(
                        "[[rules]]\nname = \"m{m}-{currency}-{method}-{b}\"\nchannels = [\"psp_a\", \"psp_b\", \"psp_c\"]\nstrategy = \"priority\"\n[rules.match]\nmerchants = [\"m{m}\"]\ncurrencies = [\"{currency}\"]\nmethods = [\"{method}\"]\nmin_amount = {}\nmax_amount = {}\n\n",
                        b * band + 1,
                        (b + 1) * band
                    ));
                }
            }
        }
    }
    text.push_str("[[rules]]\nname = \"big-tickets\"\nchannels = [\"psp_c\"]\nstrategy = \"priority\"\n[rules.match]\nmin_amount = 50000000\n\n");
    text.push_str("[[rules]]\nname = \"rest\"\nchannels = [\"psp_c\"]\nstrategy = \"priority\"\n");
    text
}

/// Payments spread over the merchants, currencies, methods and bands, the last merchant's
/// included (the worst case for a scan).
fn payments(merchants: usize) -> Vec<(String, &'static str, &'static str, u64)> {
    (0..64)
        .map(|i| {
            let merchant = if i % 4 == 0 {
                merchants - 1
            } else {
                (i * 7919) % merchants
            };
            (
                format!("m{merchant}"),
                CURRENCIES[i % CURRENCIES.len()],
                METHODS[i % METHODS.len()],
                ((i as u64 * 104_729) % 999_999) + 1,
            )
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    // 1 merchant x 4 currencies x 2 methods x 1 band + 2 general rules = 10 rules;
    // 250 merchants x 4 x 2 x 5 bands + 2 = 10,002 rules.
    for (label, merchants, bands) in [("10_rules", 1, 1), ("10000_rules", 250, 5)] {
        let text = routes(merchants, bands);
        let config = Config::parse(Path::new("bench.toml"), &text).expect("valid bench routes");
        let scores = Router::new(Clock::manual()).scores_for(&config);
        let mut rng = rand::rng();
        let payments = payments(merchants);
        eprintln!("{label}: {} rules", config.rules.len());
        group.bench_function(label, |b| {
            let mut i = 0;
            b.iter(|| {
                let (merchant, currency, method, amount) = &payments[i % payments.len()];
                i += 1;
                let facts = PaymentFacts {
                    merchant,
                    currency,
                    method,
                    country: Some("DE"),
                    amount: *amount,
                };
                black_box(decide(&config, &scores, black_box(&facts), 0, &mut rng))
            })
        });
        if merchants > 1 {
            group.bench_function(format!("{label}_linear_scan"), |b| {
                let mut i = 0;
                b.iter(|| {
                    let (merchant, currency, method, amount) = &payments[i % payments.len()];
                    i += 1;
                    black_box(config.rules.iter().position(|r| {
                        let m = &r.matcher;
                        let listed =
                            |l: &[String], v: &str| l.is_empty() || l.iter().any(|x| x == v);
                        listed(&m.merchants, merchant)
                            && listed(&m.currencies, currency)
                            && listed(&m.methods, method)
                            && (m.min_amount..=m.max_amount).contains(amount)
                    }))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
