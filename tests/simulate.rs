//! `paygate simulate` through the real binary: the shipped routes and steady scenario give a
//! row per strategy with the adaptive router ahead of round robin (a property of the routing,
//! never a timing), and broken inputs are refused with exit 1 and the file named.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_paygate");
const STRATEGIES: [&str; 6] = [
    "adaptive",
    "round_robin",
    "priority",
    "oracle",
    "hyperswitch",
    "decision_engine",
];

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios")
}

/// Exit code, stdout, stderr.
fn simulate(scenario: &Path, extra: &[&str]) -> (i32, String, String) {
    let routes = scenarios().join("routes.toml");
    let output = Command::new(BIN)
        .arg("simulate")
        .arg("--routes")
        .arg(&routes)
        .arg("--scenario")
        .arg(scenario)
        .args(extra)
        .output()
        .expect("run paygate simulate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The success rate in the strategies table's row for `strategy` (text layout).
fn success_rate(stdout: &str, strategy: &str) -> Option<f64> {
    stdout
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut cells| {
            (cells.next() == Some(strategy))
                .then(|| cells.next())
                .flatten()
        })
        .and_then(|cell| cell.strip_suffix('%'))
        .and_then(|number| number.parse().ok())
}

fn scratch_file(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("write scratch scenario");
    path
}

#[test]
fn steady_scenario_reports_every_strategy_and_adaptive_beats_round_robin() {
    let steady = scenarios().join("steady.toml");
    let (code, stdout, stderr) = simulate(&steady, &["--requests", "20000"]);
    assert_eq!(code, 0, "{stderr}");
    let rates: Vec<f64> = STRATEGIES
        .iter()
        .map(|strategy| {
            success_rate(&stdout, strategy)
                .unwrap_or_else(|| panic!("no row for {strategy}:\n{stdout}"))
        })
        .collect();
    assert!(
        rates[0] > rates[1],
        "adaptive vs round robin: {rates:?}\n{stdout}"
    );
    assert!(stdout.contains("Bars:"), "{stdout}");
    assert!(
        stdout.contains("Traffic share of first attempts: adaptive"),
        "{stdout}"
    );
}

#[test]
fn the_same_seed_gives_the_same_report_and_markdown_has_tables() {
    let steady = scenarios().join("steady.toml");
    let args = ["--requests", "3000", "--seed", "9", "--format", "markdown"];
    let (code, first, stderr) = simulate(&steady, &args);
    assert_eq!(code, 0, "{stderr}");
    let (_, second, _) = simulate(&steady, &args);
    assert_eq!(first, second);
    for strategy in STRATEGIES {
        assert!(first.contains(&format!("| {strategy} |")), "{first}");
    }
}

#[test]
fn a_broken_scenario_is_refused_with_its_file_and_line() {
    let text = std::fs::read_to_string(scenarios().join("steady.toml")).expect("read steady");
    let broken = scratch_file(
        "simulate-broken.toml",
        &text.replace("success = 0.88", "success = 1.88"),
    );
    let (code, stdout, stderr) = simulate(&broken, &["--requests", "100"]);
    assert_eq!(code, 1, "{stdout}");
    let named = format!("{}:", broken.display());
    assert!(
        stderr.contains(&named) && stderr.contains("success is 1.88"),
        "{stderr}"
    );
}

#[test]
fn a_missing_channel_a_missing_file_and_an_endless_run_are_refused() {
    let text = std::fs::read_to_string(scenarios().join("steady.toml")).expect("read steady");
    let without_c = text
        .split("[[channels]]")
        .filter(|part| !part.contains("name = \"psp_c\""))
        .collect::<Vec<_>>()
        .join("[[channels]]");
    let partial = scratch_file("simulate-partial.toml", &without_c);
    let (code, _, stderr) = simulate(&partial, &["--requests", "100"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("simulate-partial.toml") && stderr.contains("\"psp_c\""),
        "{stderr}"
    );
    let slow = scratch_file(
        "simulate-slow.toml",
        &text.replace("rate_per_second = 1000", "rate_per_second = 0.001"),
    );
    let (code, _, stderr) = simulate(&slow, &["--requests", "5000"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("simulate-slow.toml") && stderr.contains("virtual time"),
        "{stderr}"
    );
    let missing = scenarios().join("no-such-scenario.toml");
    let (code, _, stderr) = simulate(&missing, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no-such-scenario.toml"), "{stderr}");
}

#[test]
fn after_an_abrupt_drop_adaptive_beats_the_learned_baselines() {
    let drop = scenarios().join("abrupt-drop.toml");
    let (code, stdout, stderr) = simulate(&drop, &["--requests", "60000"]);
    assert_eq!(code, 0, "{stderr}");
    let rate = |strategy: &str| {
        success_rate(&stdout, strategy)
            .unwrap_or_else(|| panic!("no row for {strategy}:\n{stdout}"))
    };
    let adaptive = rate("adaptive");
    for baseline in ["hyperswitch", "decision_engine", "round_robin"] {
        assert!(
            adaptive > rate(baseline),
            "adaptive vs {baseline}:\n{stdout}"
        );
    }
    assert!(rate("oracle") - adaptive < 0.5, "{stdout}");
}

/// The share of `channel` in the row `seconds` of the traffic table that follows `title`.
fn share_after(stdout: &str, title: &str, seconds: &str, channel: usize) -> f64 {
    stdout
        .split(title)
        .nth(1)
        .and_then(|table| {
            table
                .lines()
                .map(str::split_whitespace)
                .find_map(|mut cells| (cells.next() == Some(seconds)).then_some(cells))
        })
        .and_then(|mut cells| cells.nth(channel))
        .and_then(|cell| cell.strip_suffix('%'))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no {seconds} row after {title:?}:\n{stdout}"))
}

#[test]
fn a_drop_in_one_segment_moves_that_segment_only() {
    let drop = scenarios().join("segment-drop.toml");
    let (code, stdout, stderr) = simulate(&drop, &["--requests", "120000"]);
    assert_eq!(code, 0, "{stderr}");
    let usd = "adaptive, USD card US 411111 payments";
    let eur = "adaptive, EUR card DE payments";
    // USD leaves psp_a (column 0) once the drop is seen; EUR stays on it.
    assert!(share_after(&stdout, usd, "0-30", 0) > 95.0, "{stdout}");
    assert!(share_after(&stdout, usd, "35-60", 0) < 3.0, "{stdout}");
    assert!(share_after(&stdout, eur, "35-60", 0) > 97.0, "{stdout}");
    assert!(
        stdout.contains("PASS  drop of psp_a in currency=USD at 30 s: the other segments' traffic moved by at most"),
        "{stdout}"
    );
    let (code, _, stderr) = simulate(
        &scratch_file(
            "segment-no-keys.toml",
            &std::fs::read_to_string(&drop)
                .expect("read segment-drop")
                .replace(
                    "[[channels.segments]]\ncurrency = \"USD\"",
                    "[[channels.segments]]\nsuccess = 0.5",
                ),
        ),
        &["--requests", "100"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("a segment must name currency, method, country or bin"),
        "{stderr}"
    );
}

#[test]
fn seeds_report_medians_then_the_first_seed() {
    let drop = scenarios().join("abrupt-drop-50.toml");
    let (code, stdout, stderr) = simulate(&drop, &["--requests", "6000", "--seeds", "3"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("paygate simulate: scenario \"abrupt-drop-50\", seeds 1-3: medians"),
        "{stdout}"
    );
    assert!(stdout.contains("passed in"), "{stdout}");
    assert!(
        stdout.contains("seed 1\n"),
        "the first seed's report follows:\n{stdout}"
    );
    assert!(stderr.contains("x 3 seed(s)"), "{stderr}");
    let (code, _, stderr) = simulate(&drop, &["--requests", "100", "--seeds", "0"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--seeds must be between 1 and 99"),
        "{stderr}"
    );
}
