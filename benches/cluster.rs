//! Cluster mode's Redis round trips, against the machine's Redis on 127.0.0.1:6379, beside
//! the single-node limiter they replace: the shared gateway + merchant rate limit (one GCRA
//! script), a channel's shared rate (the same script on one bucket, once per attempt on a
//! channel with `rate_limit`), and an idempotency claim with its release. A payment in
//! cluster mode makes one round trip (rate limits), two with a new `Idempotency-Key` (plus
//! the claim), three when the key is freed again (surely failed), plus one per attempt on a
//! rate-limited channel.
//!
//! Run: `cargo bench --bench cluster` (Redis must be up).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paygate::cluster::Cluster;
use paygate::config::{Cluster as Settings, FailPolicy, RateLimit};
use paygate::limits::Limits;

fn settings() -> Settings {
    Settings {
        redis_url: "redis://127.0.0.1:6379".into(),
        key_prefix: format!("paygate-bench-{}:", std::process::id()),
        timeout: Duration::from_millis(200),
        rate_limits: FailPolicy::Open,
        idempotency: FailPolicy::Closed,
    }
}

fn cluster(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = runtime
        .block_on(Cluster::connect(&settings()))
        .expect("Redis on 127.0.0.1:6379 (cargo bench --bench cluster needs it)");
    let quota = Some(RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    });
    let mut group = c.benchmark_group("rate_limit_check");
    let local = Limits::new();
    group.bench_function("single_node_governor", |b| {
        b.iter(|| {
            black_box(local.check_global(quota)).ok();
            black_box(local.check_merchant("demo", quota)).ok();
        })
    });
    group.bench_function("cluster_redis_gcra", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cluster.admit(quota, "demo", quota).await) })
    });
    let channel_quota = RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    group.bench_function("cluster_redis_channel_gcra", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cluster.admit_channel("psp_a", channel_quota).await) })
    });
    group.finish();
    let mut n = 0u64;
    c.bench_function("cluster_idempotency_claim_and_release", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let scope = format!("4:demokey-{n}");
            let cluster = &cluster;
            async move {
                let fingerprint = [7u8; 32];
                let claim = cluster
                    .claim(&scope, &fingerprint, Duration::from_secs(60))
                    .await;
                black_box(claim).ok();
                black_box(cluster.release(&scope, &fingerprint).await).ok();
            }
        })
    });
}

criterion_group!(benches, cluster);
criterion_main!(benches);
