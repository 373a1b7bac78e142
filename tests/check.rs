//! `paygate check` and `serve` on valid and broken routes files: every problem named with
//! file, line and column; exit codes 0 and 1; `serve` refuses what `check` refuses.

mod support;

use std::process::Command;

use support::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).args(args).output().expect("run paygate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const BROKEN: &str = r#"[server]
listen = "127.0.0.1:0"

[[merchants]]
id = "demo"
api_key_sha256 = "not-a-hash"

[[channels]]
name = "psp_a"
url = "http://127.0.0.1:9101"
currencies = ["EUR", "EURO"]
min_amount = 500
max_amount = 100
headers = { Authorization = "env:PAYGATE_CHECK_TEST_UNSET" }

[[channels]]
name = "psp_a"
url = "ftp://example"
tls = { ca_file = "missing-ca.pem" }

[[rules]]
name = "eu"
channels = ["psp_a", "psp_z"]
strategy = "fastest"
[rules.match]
countries = ["Germany"]
"#;

#[test]
fn check_names_the_line_of_each_problem() {
    let path = scratch_dir().join("broken.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let file = path.to_string_lossy().into_owned();
    let (code, _, stderr) = run(&["check", &file]);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        (6, "api_key_sha256 must be 64 hex digits"),
        (11, "\"EURO\" is not an ISO 4217 currency code"),
        (12, "min_amount 500 is greater than max_amount 100"),
        (14, "environment variable PAYGATE_CHECK_TEST_UNSET"),
        (17, "duplicate channel \"psp_a\""),
        (18, "\"ftp://example\" is not a channel URL"),
        (19, "missing-ca.pem"),
        (23, "unknown channel \"psp_z\""),
        (24, "unknown strategy \"fastest\""),
        (26, "\"Germany\" is not an ISO 3166-1 alpha-2 country code"),
    ];
    for (line, needle) in expected {
        let prefix = format!("{file}:{line}:");
        let found = stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle));
        assert!(found, "expected {needle:?} at {prefix} in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("{} problem(s)", expected.len())),
        "{stderr}"
    );

    // serve refuses the same file with the same messages.
    let (code, stdout, serve_err) = run(&["--config", &file, "serve"]);
    assert_eq!(code, 1);
    assert!(!stdout.contains("listening"));
    assert!(serve_err.contains(&format!("{file}:23:")), "{serve_err}");
}

#[test]
fn syntax_and_type_errors_have_a_place() {
    let dir = scratch_dir();
    let syntax = dir.join("syntax.toml");
    std::fs::write(
        &syntax,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = \n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", &syntax.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{}:3:", syntax.display())),
        "{stderr}"
    );

    let typed = dir.join("typed.toml");
    std::fs::write(&typed, "[server]\nmax_body_bytes = \"big\"\n").unwrap();
    let (code, _, stderr) = run(&["check", &typed.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{}:2:", typed.display())),
        "{stderr}"
    );

    let unknown = dir.join("unknown.toml");
    std::fs::write(
        &unknown,
        "[server]\nlisten = \"127.0.0.1:0\"\nlisen = \"x\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", &unknown.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{}:3:", unknown.display())) && stderr.contains("lisen"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["check", "/nonexistent/routes.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read the routes file"), "{stderr}");
}

#[test]
fn the_shipped_routes_file_is_valid() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml");
    let (code, stdout, stderr) = run(&["check", shipped]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok, version"), "{stdout}");
    assert!(stdout.contains("3 channels"), "{stdout}");
    // --config works after the subcommand too, and `check` defaults to it.
    let (code, _, _) = run(&["check", "--config", shipped]);
    assert_eq!(code, 0);
}
