//! Cluster mode through the real binary: replicas share the merchant and gateway rate limits,
//! idempotency keys, channel limits and drains through a real Redis on 127.0.0.1 (each test
//! under its own key prefix), and while Redis is gone the configured policy holds
//! (`fail_open`: payments go on, counted; `fail_closed`: 503 or the channel skipped), then
//! service resumes when Redis is back, without a restart.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// The machine's Redis (`.ci/run` starts it when it is down).
const REDIS: &str = "127.0.0.1:6379";

fn redis_is_up(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("address"), Duration::from_secs(1))
        .is_ok()
}

fn require_redis() {
    assert!(
        redis_is_up(REDIS),
        "Redis is not running on {REDIS}: start it with `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no` (.ci/run does)"
    );
}

/// A key prefix no other test or run shares.
fn prefix() -> String {
    format!("paygate-test-{}-{}:", std::process::id(), unix_now_nanos())
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn routes(
    redis: &str,
    prefix: &str,
    policy: &str,
    per_second: u32,
    burst: u32,
    sim: &Process,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[cluster]
redis_url = "redis://{redis}"
key_prefix = "{prefix}"
timeout_ms = 200
rate_limits = "{policy}"

[[merchants]]
id = "demo"
api_key_sha256 = "{KEY_SHA256}"
rate_limit = {{ per_second = {per_second}, burst = {burst} }}
{}
[[rules]]
name = "all"
channels = ["a"]
"#,
        channel("a", sim, "")
    )
}

#[tokio::test]
async fn replicas_share_one_merchant_limit() {
    require_redis();
    let sim = Process::mock_psp(&["--name", "a", "--success-rate", "1"]).await;
    let prefix = prefix();
    let text = routes(REDIS, &prefix, "fail_open", 1, 10, &sim);
    let a = Process::gateway(&text).await;
    let b = Process::gateway(&text).await;
    let mut accepted = [0u32; 2];
    let mut limited = [0u32; 2];
    for i in 0..30 {
        let replica = i % 2;
        let gateway = if replica == 0 { &a } else { &b };
        let answer = pay(gateway, &card_payment(100, "EUR")).await;
        match answer.status {
            StatusCode::CREATED => accepted[replica] += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.error_type(), "rate_limited");
                assert!(!answer.header("retry-after").is_empty());
                limited[replica] += 1;
            }
            other => panic!("unexpected {other}: {}", answer.json),
        }
    }
    let total = accepted[0] + accepted[1];
    // One bucket of 10 for both replicas (plus at most the refill of the run's few seconds);
    // two separate buckets would have let 20 through.
    assert!(
        (10..=13).contains(&total),
        "accepted {accepted:?}, limited {limited:?}"
    );
    assert!(
        limited[0] > 0 && limited[1] > 0,
        "both replicas enforce the shared limit"
    );
    assert_eq!(sim.stats().await["payments"], u64::from(total));
    assert_eq!(
        a.metric("paygate_rate_limited_total{scope=\"merchant\"}")
            .await
            + b.metric("paygate_rate_limited_total{scope=\"merchant\"}")
                .await,
        f64::from(limited[0] + limited[1])
    );
    // One timed round trip per payment, each replica counting its own (no key: no claim).
    for (gateway, n) in [(&a, 0), (&b, 1)] {
        let calls = gateway
            .metric("paygate_cluster_call_duration_seconds_count{feature=\"rate_limits\"}")
            .await;
        assert_eq!(calls, f64::from(accepted[n] + limited[n]));
        // Every feature's error series is there from the start, at 0.
        let metrics = gateway.metrics().await;
        for feature in ["rate_limits", "idempotency", "channel_limits", "switches"] {
            let series = format!("paygate_cluster_errors_total{{feature=\"{feature}\"}} 0");
            assert!(metrics.contains(&series), "no {series}");
        }
    }
}

/// A Redis of the test's own, on a port of its own, to stop and start again.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn on_a_free_port() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start(port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_is_up(&format!("127.0.0.1:{port}")) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The statuses of `n` payments in a row.
async fn statuses(gateway: &Process, n: usize) -> Vec<u16> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(
            pay(gateway, &card_payment(100, "EUR"))
                .await
                .status
                .as_u16(),
        );
    }
    seen
}

#[tokio::test]
async fn redis_stopped_mid_run_fails_open_or_closed_as_configured_and_recovers() {
    let mut redis = OwnRedis::on_a_free_port();
    let (port, addr) = (redis.port, redis.addr());
    let sim = Process::mock_psp(&["--name", "a", "--success-rate", "1"]).await;
    let open = Process::gateway(&routes(&addr, &prefix(), "fail_open", 1, 2, &sim)).await;
    let closed = Process::gateway(&routes(&addr, &prefix(), "fail_closed", 1, 2, &sim)).await;
    assert_eq!(statuses(&open, 3).await, [201, 201, 429]);
    assert_eq!(statuses(&closed, 3).await, [201, 201, 429]);

    let ready = |p: &Process| format!("{}/readyz", p.admin);
    assert_eq!(
        send(http::Method::GET, &ready(&open), &[], "").await.json["status"],
        "ready"
    );

    redis.stop();
    // Without Redis: the replica whose idempotency is fail_closed (both are, by default) is
    // not ready, so a load balancer sends its traffic elsewhere.
    let readiness = send(http::Method::GET, &ready(&closed), &[], "").await;
    assert_eq!(readiness.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readiness.json["status"], "redis_unavailable");
    // fail_open: a limit not enforced for a while costs no money, payments go on.
    assert_eq!(statuses(&open, 3).await, [201, 201, 201]);
    assert!(
        open.metric("paygate_cluster_errors_total{feature=\"rate_limits\"}")
            .await
            >= 3.0
    );
    // Idempotency keys default to fail_closed: a keyed payment is not sent (503) rather than
    // risk a double charge across replicas.
    let before = sim.stats().await["payments"].as_u64().unwrap_or(0);
    let keyed = pay_with_key(&open, "order-redis-down", &card_payment(100, "EUR")).await;
    assert_eq!(
        keyed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        keyed.json
    );
    assert_eq!(sim.stats().await["payments"].as_u64().unwrap_or(0), before);
    assert!(
        open.metric("paygate_cluster_errors_total{feature=\"idempotency\"}")
            .await
            >= 1.0
    );
    // fail_closed: 503 `overloaded`, nothing sent.
    let refused = pay(&closed, &card_payment(100, "EUR")).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(refused.error_type(), "overloaded");

    // Redis back (empty): the shared limit holds again, without a restart.
    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = pay(&closed, &card_payment(100, "EUR")).await.status;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "not recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        send(http::Method::GET, &ready(&closed), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let after = statuses(&closed, 3).await;
    assert!(after.contains(&429) && !after.contains(&503), "{after:?}");
    assert_eq!(
        open.metric("paygate_payments_total{channel=\"a\",merchant=\"demo\",status=\"succeeded\"}")
            .await,
        5.0
    );
}

async fn pay_with_key(gateway: &Process, key: &str, body: &serde_json::Value) -> Answer {
    let auth = format!("Bearer {KEY}");
    send(
        http::Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn one_idempotency_key_sent_to_two_replicas_at_once_reaches_the_psp_once() {
    require_redis();
    let sim = Process::mock_psp(&[
        "--name",
        "a",
        "--success-rate",
        "1",
        "--latency",
        "fixed:300",
    ])
    .await;
    let text = routes(REDIS, &prefix(), "fail_open", 1000, 1000, &sim);
    let a = Process::gateway(&text).await;
    let b = Process::gateway(&text).await;
    let key = format!("order-{}", unix_now_nanos());
    let body = card_payment(2500, "EUR");
    let (first, second) =
        tokio::join!(pay_with_key(&a, &key, &body), pay_with_key(&b, &key, &body));
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", first.json, second.json);
    assert_eq!(
        sim.stats().await["payments"],
        1,
        "the PSP saw the payment once"
    );
    let (winner, loser) = if first.status == StatusCode::CREATED {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // Retries: the replica that took it replays its answer; the other refuses, sends nothing.
    assert_eq!(
        pay_with_key(winner, &key, &body).await.status,
        StatusCode::OK
    );
    let elsewhere = pay_with_key(loser, &key, &body).await;
    assert_eq!(elsewhere.status, StatusCode::CONFLICT);
    assert_eq!(elsewhere.error_type(), "idempotency_conflict");
    let mut other = body.clone();
    other["amount"] = serde_json::json!(2600);
    assert_eq!(
        pay_with_key(loser, &key, &other).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(sim.stats().await["payments"], 1);
}

#[tokio::test]
async fn a_key_whose_payment_surely_failed_is_free_again_on_every_replica() {
    require_redis();
    let sim = Process::mock_psp(&["--name", "a", "--error-503", "1"]).await;
    let text = routes(REDIS, &prefix(), "fail_open", 1000, 1000, &sim);
    let a = Process::gateway(&text).await;
    let b = Process::gateway(&text).await;
    let key = format!("order-{}", unix_now_nanos());
    let body = card_payment(900, "EUR");
    let failed = pay_with_key(&a, &key, &body).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.json);
    // Nothing was charged, so the key may be used afresh, on the other replica too.
    let again = pay_with_key(&b, &key, &body).await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY, "{}", again.json);
    assert_ne!(
        again.json["error"]["payment_id"],
        failed.json["error"]["payment_id"]
    );
}

const ADMIN_TOKEN: &str = "cluster-admin-token";

/// A routes file with two channels tried in priority order, `a` (with `a_extra` on its
/// table) then `b`, and `[cluster]` on `redis` under `prefix`. No merchant or gateway limit,
/// so that a payment needs Redis only for what the test looks at.
fn two_channels(
    redis: &str,
    prefix: &str,
    policy: &str,
    a_extra: &str,
    a: &Process,
    b: &Process,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
watch_routes = false

[cluster]
redis_url = "redis://{redis}"
key_prefix = "{prefix}"
timeout_ms = 200
rate_limits = "{policy}"

[[merchants]]
id = "demo"
api_key_sha256 = "{KEY_SHA256}"
{}{}
[[rules]]
name = "all"
channels = ["a", "b"]
strategy = "priority"
"#,
        channel("a", a, a_extra),
        channel("b", b, "")
    )
}

async fn replica(routes: &str) -> Process {
    Process::gateway_with_env(routes, &[("PAYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

async fn admin(gateway: &Process, method: http::Method, path: &str) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send(
        method,
        &format!("{}{path}", gateway.admin),
        &[("authorization", &auth)],
        "",
    )
    .await
}

/// The channel that took one new payment on `gateway` (its `X-Paygate-Channel`).
async fn routed_to(gateway: &Process) -> String {
    let answer = pay(gateway, &card_payment(100, "EUR")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let channel = answer.header("x-paygate-channel").to_string();
    assert_eq!(answer.json["channel"], channel.as_str());
    channel
}

/// Pays on `gateway` until a payment goes to `channel`, for at most `within`; how long it
/// took from `since`.
async fn until_routed_to(
    gateway: &Process,
    channel: &str,
    since: Instant,
    within: Duration,
) -> Duration {
    for _ in 0..10_000 {
        if routed_to(gateway).await == channel {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "no payment went to {channel} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no payment went to {channel} in 10,000 tries");
}

/// The state `GET /admin/channels` shows for `channel`.
async fn state_of(gateway: &Process, channel: &str) -> String {
    let listing = admin(gateway, http::Method::GET, "/admin/channels").await;
    assert_eq!(listing.status, StatusCode::OK);
    listing.json["channels"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == channel))
        .and_then(|c| c["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

async fn processed(sim: &Process) -> u64 {
    sim.stats().await["payments"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_drain_on_one_replica_stops_traffic_on_the_other_within_a_second() {
    require_redis();
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let text = two_channels(REDIS, &prefix(), "fail_open", "", &sim_a, &sim_b);
    let one = replica(&text).await;
    let other = replica(&text).await;
    assert_eq!(routed_to(&other).await, "a");

    let asked = Instant::now();
    let drained = admin(&one, http::Method::POST, "/admin/channels/a/drain").await;
    assert_eq!(drained.status, StatusCode::OK);
    assert_eq!(
        drained.json,
        serde_json::json!({"channel": "a", "state": "drained", "shared": true})
    );
    let took = until_routed_to(&other, "b", asked, Duration::from_secs(1)).await;
    eprintln!("drain reached the other replica's routing within {took:?}");
    // From then on the drained channel gets nothing from the other replica.
    let before = processed(&sim_a).await;
    for _ in 0..5 {
        assert_eq!(routed_to(&other).await, "b");
    }
    assert_eq!(processed(&sim_a).await, before);
    assert_eq!(state_of(&other, "a").await, "drained");
    assert_eq!(
        other
            .metric("paygate_cluster_switches_total{origin=\"peer\"}")
            .await,
        1.0
    );
    assert_eq!(
        one.metric("paygate_cluster_switches_total{origin=\"local\"}")
            .await,
        1.0
    );
    let audit = admin(&other, http::Method::GET, "/admin/audit").await;
    let entry = &audit.json["entries"][0];
    assert_eq!(
        (&entry["action"], &entry["trigger"]),
        (&serde_json::json!("drain"), &serde_json::json!("peer"))
    );

    // A reload of the routes file does not undo the shared drain.
    let edited = text.replace(
        "strategy = \"priority\"",
        "strategy = \"priority\"\n# edited",
    );
    std::fs::write(&other.routes, edited).expect("rewrite the routes file");
    let reloaded = admin(&other, http::Method::POST, "/admin/reload").await;
    assert_eq!(reloaded.json["result"], "ok", "{}", reloaded.json);
    assert_eq!(state_of(&other, "a").await, "drained");
    assert_eq!(routed_to(&other).await, "b");

    // Enabled on the other replica: the first one routes to a again within a second.
    let asked = Instant::now();
    let enabled = admin(&other, http::Method::POST, "/admin/channels/a/enable").await;
    assert_eq!(
        enabled.json,
        serde_json::json!({"channel": "a", "state": "enabled", "shared": true})
    );
    let took = until_routed_to(&one, "a", asked, Duration::from_secs(1)).await;
    eprintln!("enable reached the first replica's routing within {took:?}");
    assert_eq!(state_of(&one, "a").await, "healthy");
    assert_eq!(
        one.metric("paygate_cluster_switches_total{origin=\"peer\"}")
            .await,
        1.0
    );
    // The subscriptions stayed up the whole time (their pings answered).
    let errors = "paygate_cluster_errors_total{feature=\"switches\"}";
    assert_eq!(one.metric(errors).await + other.metric(errors).await, 0.0);
}

#[tokio::test]
async fn a_replica_started_after_a_drain_comes_up_with_it_drained() {
    require_redis();
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let text = two_channels(REDIS, &prefix(), "fail_open", "", &sim_a, &sim_b);
    let first = replica(&text).await;
    let drained = admin(&first, http::Method::POST, "/admin/channels/a/drain").await;
    assert_eq!(drained.json["shared"], true, "{}", drained.json);

    let later = replica(&text).await;
    // Its very first answers already hold the drain: it read the record before listening.
    assert_eq!(state_of(&later, "a").await, "drained");
    for _ in 0..3 {
        assert_eq!(routed_to(&later).await, "b");
    }
    assert_eq!(processed(&sim_a).await, 0);
    assert_eq!(
        later
            .metric("paygate_cluster_switches_total{origin=\"peer\"}")
            .await,
        1.0
    );
    // A switch the record holds as enabled is not a drain: another channel stays healthy.
    assert_eq!(state_of(&later, "b").await, "healthy");
}

#[tokio::test]
async fn a_drain_while_redis_is_down_applies_at_once_and_reaches_the_other_replica_once_redis_is_back()
 {
    let mut redis = OwnRedis::on_a_free_port();
    let (port, addr) = (redis.port, redis.addr());
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let text = two_channels(&addr, &prefix(), "fail_open", "", &sim_a, &sim_b);
    let one = replica(&text).await;
    let other = replica(&text).await;
    assert_eq!(routed_to(&one).await, "a");
    assert_eq!(routed_to(&other).await, "a");

    redis.stop();
    let drained = admin(&one, http::Method::POST, "/admin/channels/a/drain").await;
    assert_eq!(drained.status, StatusCode::OK);
    assert_eq!(
        drained.json,
        serde_json::json!({"channel": "a", "state": "drained", "shared": false})
    );
    // Applied here at once, counted as a failed shared call; the other replica cannot know.
    assert_eq!(routed_to(&one).await, "b");
    assert!(
        one.metric("paygate_cluster_errors_total{feature=\"switches\"}")
            .await
            >= 1.0
    );
    assert_eq!(routed_to(&other).await, "a");
    assert_eq!(state_of(&other, "a").await, "healthy");

    // Redis back, empty: the pending drain is pushed and the other replica applies it.
    let _redis = OwnRedis::start(port);
    let back = Instant::now();
    let took = until_routed_to(&other, "b", back, Duration::from_secs(10)).await;
    eprintln!("the pending drain reached the other replica {took:?} after Redis was back");
    let before = processed(&sim_a).await;
    for _ in 0..3 {
        assert_eq!(routed_to(&other).await, "b");
        assert_eq!(routed_to(&one).await, "b");
    }
    assert_eq!(processed(&sim_a).await, before);
    assert_eq!(state_of(&other, "a").await, "drained");
    assert_eq!(
        other
            .metric("paygate_cluster_switches_total{origin=\"peer\"}")
            .await,
        1.0
    );
    assert_eq!(
        one.metric("paygate_cluster_switches_total{origin=\"local\"}")
            .await,
        1.0
    );
    // And the record holds it: enabling on the other replica now is shared at once.
    let enabled = admin(&other, http::Method::POST, "/admin/channels/a/enable").await;
    assert_eq!(enabled.json["shared"], true, "{}", enabled.json);
    until_routed_to(&one, "a", Instant::now(), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_drain_redis_lost_in_a_restart_is_written_again_for_replicas_started_later() {
    let mut redis = OwnRedis::on_a_free_port();
    let (port, addr) = (redis.port, redis.addr());
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let prefix = prefix();
    let text = two_channels(&addr, &prefix, "fail_open", "", &sim_a, &sim_b);
    let one = replica(&text).await;
    let drained = admin(&one, http::Method::POST, "/admin/channels/a/drain").await;
    assert_eq!(drained.json["shared"], true, "{}", drained.json);

    // Redis restarts with nothing (it keeps no data on disk): the record of the drain is gone.
    redis.stop();
    let _redis = OwnRedis::start(port);
    let client = redis::Client::open(format!("redis://{addr}")).expect("a Redis URL");
    let held = || -> Option<String> {
        let mut connection = client.get_connection().ok()?;
        redis::cmd("HGET")
            .arg(format!("{prefix}channels"))
            .arg("a")
            .query(&mut connection)
            .ok()?
    };
    // The replica subscribes again, finds the drain missing, and writes it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        if let Some(record) = held() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the lost drain was never written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(record.contains(":drained:"), "{record}");
    // So a replica started now comes up drained, like the one that drained it.
    let later = replica(&text).await;
    assert_eq!(state_of(&later, "a").await, "drained");
    for gateway in [&one, &later] {
        assert_eq!(routed_to(gateway).await, "b");
    }
    assert_eq!(processed(&sim_a).await, 0);
}

#[tokio::test]
async fn a_reload_names_the_cluster_settings_that_wait_for_a_restart() {
    require_redis();
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let text = two_channels(REDIS, &prefix(), "fail_open", "", &sim_a, &sim_b);
    let gateway = replica(&text).await;
    let slower = text.replace("timeout_ms = 200", "timeout_ms = 300");
    assert_ne!(slower, text);
    std::fs::write(&gateway.routes, slower).expect("routes file");
    let reloaded = admin(&gateway, http::Method::POST, "/admin/reload").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.json);
    assert_eq!(
        reloaded.json["changes"],
        serde_json::json!([
            "[cluster] redis_url, key_prefix or timeout_ms changed (they apply at restart)"
        ])
    );
    // Still sharing through the connection it opened at start.
    assert_eq!(routed_to(&gateway).await, "a");
}

#[tokio::test]
async fn a_channel_limit_holds_across_two_replicas() {
    require_redis();
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let limit = "rate_limit = { per_second = 1, burst = 5 }";
    let text = two_channels(REDIS, &prefix(), "fail_open", limit, &sim_a, &sim_b);
    let one = replica(&text).await;
    let other = replica(&text).await;
    let started = Instant::now();
    let mut on_a = [0u64; 2];
    let mut order = Vec::new();
    for i in 0..20 {
        let gateway = if i % 2 == 0 { &one } else { &other };
        let channel = routed_to(gateway).await;
        if channel == "a" {
            on_a[i % 2] += 1;
        }
        order.push(channel);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = on_a[0] + on_a[1];
    // The burst first, from both replicas, then what the rate refilled while the run lasted;
    // two buckets of 5 would have let at least 10 through.
    assert!(
        order[..5].iter().all(|c| c == "a"),
        "the burst goes to a: {order:?}"
    );
    assert!(on_a[0] > 0 && on_a[1] > 0, "{on_a:?}");
    let allowed = 5 + elapsed.ceil() as u64;
    assert!(
        (5..=allowed).contains(&total) && total < 10,
        "{total} payments on a in {elapsed:.2} s: {order:?}"
    );
    assert_eq!(processed(&sim_a).await, total);
    assert_eq!(processed(&sim_b).await, 20 - total);
    let skipped = one
        .metric("paygate_rate_limited_total{scope=\"channel\"}")
        .await
        + other
            .metric("paygate_rate_limited_total{scope=\"channel\"}")
            .await;
    assert_eq!(skipped, (20 - total) as f64);
}

#[tokio::test]
async fn without_redis_a_channel_limit_falls_back_to_the_replica_s_bucket_or_skips_the_channel() {
    let mut redis = OwnRedis::on_a_free_port();
    let addr = redis.addr();
    let sim_a = Process::mock_psp(&["--name", "a"]).await;
    let sim_b = Process::mock_psp(&["--name", "b"]).await;
    let limit = "rate_limit = { per_second = 1, burst = 2 }";
    let open = replica(&two_channels(
        &addr,
        &prefix(),
        "fail_open",
        limit,
        &sim_a,
        &sim_b,
    ))
    .await;
    let closed = replica(&two_channels(
        &addr,
        &prefix(),
        "fail_closed",
        limit,
        &sim_a,
        &sim_b,
    ))
    .await;
    redis.stop();

    // fail_open: this replica's own bucket of 2, then the next channel.
    let mut routed = Vec::new();
    for _ in 0..4 {
        routed.push(routed_to(&open).await);
    }
    assert_eq!(routed, ["a", "a", "b", "b"]);
    // fail_closed: the limited channel is treated as at its limit.
    let mut routed = Vec::new();
    for _ in 0..3 {
        routed.push(routed_to(&closed).await);
    }
    assert_eq!(routed, ["b", "b", "b"]);
    assert_eq!(processed(&sim_a).await, 2);
    assert_eq!(processed(&sim_b).await, 5);
    let errors = "paygate_cluster_errors_total{feature=\"channel_limits\"}";
    assert_eq!(open.metric(errors).await, 4.0);
    assert_eq!(closed.metric(errors).await, 3.0);
    let skipped = "paygate_rate_limited_total{scope=\"channel\"}";
    assert_eq!(open.metric(skipped).await, 2.0);
    assert_eq!(closed.metric(skipped).await, 3.0);
}
