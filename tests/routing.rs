//! Adaptive routing through the real gateway and real simulators: ejection of a failing
//! channel and its recovery by probing, the retry budget holding during an outage, the
//! explanation of a decision, and no double charge when a channel refuses connections.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const ADMIN_TOKEN: &str = "test-admin-token";

async fn admin(gateway: &Process, method: Method, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send(
        method,
        &format!("{}{path}", gateway.admin),
        &[("authorization", &auth)],
        body,
    )
    .await
}

fn channel_view<'a>(channels: &'a Answer, name: &str) -> &'a Value {
    channels.json["channels"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("channel {name} in {:?}", channels.json))
}

fn routes(channels: &str, rule: &str, routing: &str) -> String {
    format!(
        "{}\n[routing]\n{routing}\n{channels}\n{rule}",
        base_config()
    )
}

#[tokio::test]
async fn a_failing_channel_is_ejected_then_probed_back() {
    let dir = scratch_dir();
    let schedule = dir.join("outage.toml");
    std::fs::write(
        &schedule,
        "[[phase]]\nat_secs = 0\nbehavior = { error_503 = 1.0 }\n\n[[phase]]\nat_secs = 2\nbehavior = {}\n",
    )
    .unwrap();
    let started = Instant::now();
    let flaky =
        Process::mock_psp(&["--name", "a", "--schedule", &schedule.to_string_lossy()]).await;
    let steady = Process::mock_psp(&["--name", "b"]).await;
    let config = routes(
        &(channel("a", &flaky, "") + &channel("b", &steady, "")),
        "[[rules]]\nname = \"all\"\nchannels = [\"a\", \"b\"]\nstrategy = \"priority\"\n",
        "[routing.ejection]\nconsecutive_faults = 3\nbase_ms = 3000\nprobe_share = 1.0\n",
    );
    let gateway = Process::gateway_with_env(&config, &[("PAYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;

    // During the outage every payment still succeeds: a's 503s fail over to b, and after the
    // third in a row a is ejected and no longer tried.
    for i in 0..10 {
        let paid = pay(&gateway, &card_payment(100, "EUR")).await;
        assert_eq!(
            paid.status,
            StatusCode::CREATED,
            "payment {i}: {:?}",
            paid.json
        );
        assert_eq!(paid.json["channel"], "b");
        let attempts = paid.json["attempts"].as_array().unwrap().len();
        assert_eq!(attempts, if i < 3 { 2 } else { 1 }, "payment {i}");
    }
    let stats = flaky.stats().await;
    assert_eq!(stats["requests"], 3, "{stats}");
    assert_eq!(stats["payments"], 0, "a 503 processes nothing");
    let channels = admin(&gateway, Method::GET, "/admin/channels", "").await;
    assert_eq!(channels.status, StatusCode::OK);
    assert_eq!(channel_view(&channels, "a")["state"], "ejected");
    assert_eq!(channel_view(&channels, "a")["ejections"], 1);
    assert_eq!(channel_view(&channels, "b")["state"], "healthy");

    // After the PSP recovers (2 s) and the ejection ends (3 s), a is on probation; the next
    // payment probes it, succeeds, and a is healthy again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let channels = admin(&gateway, Method::GET, "/admin/channels", "").await;
        if started.elapsed() > Duration::from_millis(2_200)
            && channel_view(&channels, "a")["state"] == "probing"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never reached probation: {:?}",
            channels.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = pay(&gateway, &card_payment(100, "EUR")).await;
    assert_eq!(probe.status, StatusCode::CREATED);
    assert_eq!(probe.json["channel"], "a", "{:?}", probe.json);
    let channels = admin(&gateway, Method::GET, "/admin/channels", "").await;
    assert_eq!(channel_view(&channels, "a")["state"], "healthy");
    assert_eq!(flaky.stats().await["payments"], 1);
}

#[tokio::test]
async fn the_retry_budget_caps_failover_during_an_outage() {
    let down = Process::mock_psp(&["--name", "down", "--error-503", "1"]).await;
    let spare = Process::mock_psp(&["--name", "spare"]).await;
    let config = routes(
        &(channel("down", &down, "") + &channel("spare", &spare, "")),
        "[[rules]]\nname = \"all\"\nchannels = [\"down\", \"spare\"]\nstrategy = \"priority\"\n",
        // Ejection out of the way, so that only the budget limits failover.
        "[routing.ejection]\nconsecutive_faults = 1000\nmin_requests = 1000\n[routing.retry_budget]\nratio = 0.2\nmin_retries = 3\n",
    );
    let gateway = Process::gateway(&config).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(pay(&gateway, &card_payment(100, "EUR")).await.status);
    }
    // Payment k may fail over while retries < max(3, 0.2 k): payments 1, 2, 3 and 20.
    let failed_over: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == StatusCode::CREATED)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(failed_over, vec![1, 2, 3, 20], "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::BAD_GATEWAY)
    );
    assert_eq!(spare.stats().await["payments"], 4);
    assert_eq!(down.stats().await["requests"], 20);
}

#[tokio::test]
async fn explain_shows_candidates_scores_and_the_pick() {
    let a = Process::mock_psp(&["--name", "a"]).await;
    let b = Process::mock_psp(&["--name", "b", "--success-rate", "0"]).await;
    let config = routes(
        &(channel("a", &a, "fee = { percent = 2.0, fixed = 10 }")
            + &channel("b", &b, "currencies = [\"USD\"]")),
        "[[rules]]\nname = \"cards\"\nchannels = [\"a\", \"b\"]\n",
        "strategy = \"adaptive\"",
    );
    let gateway = Process::gateway_with_env(&config, &[("PAYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    for _ in 0..5 {
        pay(&gateway, &card_payment(1_000, "EUR")).await;
    }
    let body = json!({"merchant": "demo", "amount": 1000, "currency": "EUR", "method": "card"});
    let explained = admin(&gateway, Method::POST, "/admin/explain", &body.to_string()).await;
    assert_eq!(explained.status, StatusCode::OK, "{:?}", explained.json);
    let e = &explained.json;
    assert_eq!(e["rule"], "cards");
    assert_eq!(e["strategy"], "adaptive");
    assert_eq!(e["pick"], "a");
    assert_eq!(e["order"], json!(["a"]));
    assert_eq!(e["candidates"][0]["channel"], "a");
    assert_eq!(e["candidates"][0]["standing"], "eligible");
    assert_eq!(e["candidates"][0]["fee"], 30, "2% of 1000 plus 10");
    assert_eq!(e["candidates"][0]["counts"]["successes"], 5);
    // The evidence routing draws from, and its change detector: five approvals (fading a
    // little with time, 30 s time constant), no change detected.
    let evidence = &e["candidates"][0]["evidence"];
    let (outcomes, successes) = (
        evidence["outcomes"].as_f64(),
        evidence["successes"].as_f64(),
    );
    assert!(
        outcomes.is_some_and(|n| (4.0..=5.0).contains(&n)),
        "{evidence}"
    );
    assert_eq!(outcomes, successes, "{evidence}");
    let detector = &e["candidates"][0]["detector"];
    assert_eq!(detector["changes"], 0);
    let recent = detector["recent"]["outcomes"].as_f64();
    assert!(
        recent.is_some_and(|n| (4.0..=5.0).contains(&n)),
        "{detector}"
    );
    assert!(e["candidates"][0]["score"].is_number());
    assert_eq!(e["candidates"][1]["channel"], "b");
    assert_eq!(e["candidates"][1]["standing"], "ineligible");
    assert!(e["formula"].as_str().unwrap().contains("Beta"));
    // Explaining sends nothing.
    assert_eq!(a.stats().await["payments"], 5);

    let no_token = send(
        Method::GET,
        &format!("{}/admin/channels", gateway.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let bad = admin(&gateway, Method::POST, "/admin/explain", "{\"amount\": 5}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Without PAYGATE_ADMIN_TOKEN the admin API is off, not open.
    let closed = Process::gateway(&config).await;
    let answer = admin(&closed, Method::GET, "/admin/channels", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(Method::GET, &format!("{}/healthz", closed.admin), &[], "")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refused_connections_fail_over_and_never_charge_twice() {
    let refusing = Process::mock_psp(&["--name", "refusing", "--refuse", "0.3"]).await;
    let steady = Process::mock_psp(&["--name", "steady"]).await;
    let config = routes(
        &(channel("refusing", &refusing, "") + &channel("steady", &steady, "")),
        "[[rules]]\nname = \"all\"\nchannels = [\"refusing\", \"steady\"]\nstrategy = \"weighted\"\n",
        // Failover safety, not the retry budget (its own test): a budget that a loaded
        // machine's timing cannot exhaust.
        "[routing.retry_budget]\nratio = 1.0\nmin_retries = 1000\n",
    );
    let gateway = std::sync::Arc::new(Process::gateway(&config).await);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let gateway = gateway.clone();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..25 {
                let answer = pay(&gateway, &card_payment(100 + worker, "EUR")).await;
                answers.push((answer.status, answer.json));
            }
            answers
        });
    }
    let mut ids = Vec::new();
    let mut in_doubt = Vec::new();
    let mut failed_over = 0;
    while let Some(answers) = tasks.join_next().await {
        for (status, json) in answers.expect("worker") {
            let attempts = json["attempts"]
                .as_array()
                .unwrap_or_else(|| panic!("{status}: {json}"));
            let id = json["id"].as_str().unwrap().to_string();
            if status == StatusCode::ACCEPTED {
                // The simulator closes its listener to refuse; a connect that completed just
                // before the close is reset after the request was written. That is ambiguous,
                // and paygate must leave it pending on that channel, never fail it over.
                assert_eq!(json["status"], "pending", "{json}");
                assert_eq!(attempts.last().unwrap()["outcome"], "error", "{json}");
                assert_eq!(json["channel"], attempts.last().unwrap()["channel"]);
                in_doubt.push(id);
                continue;
            }
            assert_eq!(status, StatusCode::CREATED, "{json}");
            assert_eq!(json["status"], "succeeded");
            failed_over += usize::from(attempts.len() > 1);
            ids.push(id);
        }
    }
    assert_eq!(ids.len() + in_doubt.len(), 200);
    assert!(in_doubt.len() <= 10, "{} payments in doubt", in_doubt.len());
    // Across both simulators, each payment id was received exactly once.
    let mut seen: HashMap<String, u64> = HashMap::new();
    for sim in [&refusing, &steady] {
        let stats = sim.stats().await;
        for (key, count) in stats["idempotency_keys"].as_object().unwrap() {
            *seen.entry(key.clone()).or_default() += count.as_u64().unwrap();
        }
    }
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} reached the PSPs {:?} times",
            seen.get(id)
        );
    }
    for id in &in_doubt {
        assert!(
            seen.get(id).is_none_or(|n| *n <= 1),
            "{id}: {:?}",
            seen.get(id)
        );
    }
    assert!((ids.len()..=200).contains(&seen.len()), "{}", seen.len());
    assert!(
        failed_over > 0,
        "some connections must have been refused and failed over"
    );
}

#[tokio::test]
async fn traffic_leaves_a_channel_whose_approvals_collapse_within_a_few_hundred_payments() {
    // psp_a approves 95% until 3 s after it starts, then 30% (declines: ejection never fires).
    let dir = scratch_dir();
    let schedule = dir.join("collapse.toml");
    std::fs::write(
        &schedule,
        "[[phase]]\nat_secs = 0\nbehavior = { success_rate = 0.95 }\n\n[[phase]]\nat_secs = 3\nbehavior = { success_rate = 0.30 }\n",
    )
    .unwrap();
    let a = Process::mock_psp(&["--name", "a", "--schedule", &schedule.to_string_lossy()]).await;
    let collapse_at = Instant::now() + Duration::from_secs(3);
    let b = Process::mock_psp(&["--name", "b", "--success-rate", "0.80"]).await;
    let c = Process::mock_psp(&["--name", "c", "--success-rate", "0.60"]).await;
    let config = routes(
        &(channel("a", &a, "") + &channel("b", &b, "") + &channel("c", &c, "")),
        "[[rules]]\nname = \"all\"\nchannels = [\"a\", \"b\", \"c\"]\nstrategy = \"adaptive\"\n",
        "",
    );
    let gateway = std::sync::Arc::new(Process::gateway(&config).await);
    // Eight merchants' workers until 1,500 payments have gone out after the collapse (or 20 s).
    let after = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (gateway, after) = (gateway.clone(), after.clone());
        workers.spawn(async move {
            while Instant::now() < deadline && after.lock().unwrap().len() < 1_500 {
                let sent = Instant::now();
                let answer = pay(&gateway, &card_payment(100 + worker, "EUR")).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json);
                if sent > collapse_at {
                    let channel = answer.json["channel"].as_str().unwrap_or("").to_string();
                    after.lock().unwrap().push(channel);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let after = after.lock().unwrap().clone();
    assert!(after.len() >= 600, "too little traffic: {}", after.len());
    let share_of_a = |payments: &[String]| {
        payments.iter().filter(|c| *c == "a").count() as f64 / payments.len() as f64
    };
    // Past the first 300 payments after the collapse, most traffic has moved.
    let later = &after[300..];
    assert!(
        share_of_a(later) < 0.2,
        "psp_a kept {:.0}% of {} payments after the first 300 (first 300: {:.0}%)",
        100.0 * share_of_a(later),
        later.len(),
        100.0 * share_of_a(&after[..300])
    );
}
