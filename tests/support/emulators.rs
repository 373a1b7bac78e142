//! Third-party PSP emulators for the integration tests, each started on 127.0.0.1 on a free
//! port and killed (its whole process group) when its handle drops:
//!
//! - [`localstripe`]: a stateful fake Stripe (PaymentIntents, PaymentMethods, refunds), PyPI
//!   `localstripe==1.15.10`;
//! - [`prism`] / [`prism_proxy`]: Stoplight Prism (`@stoplight/prism-cli@5.14.2`), an OpenAPI
//!   mock, or a validating proxy in front of another server;
//! - [`stripe_stateful_mock`]: `stripe-stateful-mock@0.0.16`, legacy `/v1/charges` with real
//!   idempotency and forced declines / 500 / 429.
//!
//! They are installed by `bash .ci/emulators.sh` into `$PAYGATE_EMULATORS` (default
//! `$HOME/.cache/paygate-emulators`), which the first emulator a test process starts runs
//! (a fast no-op once installed), so `cargo test` alone works on a fresh machine. An
//! emulator that is still missing fails the test with how to install it: never a silent
//! skip. Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::process::{Child, Command};

/// How long an emulator may take to answer on its port (Prism loads a large spec in 1-3 s; a
/// busy two-core machine may need much more).
const STARTUP: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when an emulator dies at start (another process took the port
/// between our probe and its bind).
const ATTEMPTS: usize = 3;

const INSTALL: &str = "install the emulators with `bash .ci/emulators.sh` (it installs into \
     $PAYGATE_EMULATORS, default $HOME/.cache/paygate-emulators; set the same PAYGATE_EMULATORS \
     for `cargo test`)";

/// A running emulator; killed, with every process it started, on drop.
pub struct Emulator {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// Where the emulator's stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl Emulator {
    /// `base` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The emulator's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // The child leads its own process group (see `spawn_on`): kill the group, so that
        // whatever node or Python started dies with it, then the child itself.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

/// The folder `.ci/emulators.sh` installs into.
pub fn emulators_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PAYGATE_EMULATORS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME or PAYGATE_EMULATORS set");
    PathBuf::from(home).join(".cache/paygate-emulators")
}

/// Runs `.ci/emulators.sh` once per test process, so that `cargo test` alone sets the
/// emulators up on a fresh machine (a fast no-op when they are installed at their versions).
fn install_once() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/emulators.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .env("PAYGATE_EMULATORS", emulators_dir())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("emulators: {script} failed ({status:?})");
        }
    });
}

/// `path` inside the emulators folder, which must exist; otherwise the test fails saying how
/// to install `what`.
fn installed(what: &str, path: &str) -> PathBuf {
    install_once();
    let full = emulators_dir().join(path);
    assert!(
        full.exists(),
        "{what} is not installed (no {}): {INSTALL}",
        full.display()
    );
    full
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("bound address").port()
}

/// Starts `program args` (built by `command(port)`) on free ports until one answers; panics
/// with the log and the install instruction when none does.
async fn start(what: &str, command: impl Fn(u16) -> Command) -> Emulator {
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        let port = free_port();
        match spawn_on(what, port, command(port)).await {
            Ok(emulator) => return emulator,
            Err(failure) => failures.push(failure),
        }
    }
    panic!(
        "{what} did not start on 127.0.0.1 ({ATTEMPTS} attempts); if it is not installed, \
         {INSTALL}\n{}",
        failures.join("\n")
    );
}

async fn spawn_on(what: &str, port: u16, mut command: Command) -> Result<Emulator, String> {
    let log = super::scratch_dir().join(format!("{}.log", what.replace(' ', "-")));
    let out = std::fs::File::create(&log).expect("create emulator log");
    let err = out.try_clone().expect("clone emulator log handle");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let emulator_log = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before answering on {addr}; its output:\n{}",
                emulator_log(&log)
            ));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // Ours, not a process that took the port first: ours is still running.
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(Emulator {
                    addr,
                    base: format!("http://{addr}"),
                    log,
                    child,
                });
            }
            continue;
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(format!(
                "{what} did not answer on {addr} within {STARTUP:?}; its output:\n{}",
                emulator_log(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Python run by [`localstripe`]: localstripe's own `server.start()` binds `::` (every
/// interface) and has no host option, so this serves the same aiohttp `server.app` with
/// aiohttp's `run_app` on 127.0.0.1. It also turns off the store's dump to
/// `/tmp/localstripe.pickle` after every write (shared by parallel instances, and slow).
const LOCALSTRIPE_LAUNCHER: &str = "\
import sys
from aiohttp import web
from localstripe import resources, server
resources.Store.dump_to_disk = lambda self: None
web.run_app(server.app, host='127.0.0.1', port=int(sys.argv[1]), print=None)
";

/// localstripe on 127.0.0.1, with an empty store.
pub async fn localstripe() -> Emulator {
    let python = installed("localstripe", "venv/bin/python");
    installed(
        "localstripe",
        "venv/lib/python3.11/site-packages/localstripe/server.py",
    );
    start("localstripe", |port| {
        let mut command = Command::new(&python);
        command
            .args(["-c", LOCALSTRIPE_LAUNCHER, &port.to_string()])
            .current_dir(std::env::temp_dir());
        command
    })
    .await
}

fn prism_bin() -> PathBuf {
    installed(
        "Prism (@stoplight/prism-cli)",
        "node/node_modules/.bin/prism",
    )
}

/// `prism mock` on `spec`: answers every operation of the spec from its examples/schemas,
/// validating requests (422 + `sl-violations` on a bad one). Keeps no state.
pub async fn prism(spec: &Path) -> Emulator {
    let prism = prism_bin();
    assert!(spec.exists(), "no OpenAPI file {}", spec.display());
    start("prism mock", |port| {
        let mut command = Command::new(&prism);
        command
            .arg("mock")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(spec);
        command
    })
    .await
}

/// `prism proxy --errors` on `spec` in front of `upstream` (e.g. `http://127.0.0.1:PORT`):
/// forwards valid requests, refuses invalid ones with 422 (not forwarded), and turns an
/// upstream response that breaks the spec into a 500 (see tests/emulators.rs).
pub async fn prism_proxy(spec: &Path, upstream: &str) -> Emulator {
    let prism = prism_bin();
    assert!(spec.exists(), "no OpenAPI file {}", spec.display());
    start("prism proxy", |port| {
        let mut command = Command::new(&prism);
        command
            .args(["proxy", "--errors"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(spec)
            .arg(upstream);
        command
    })
    .await
}

/// The Node script run by [`stripe_stateful_mock`]: its own `autostart` calls
/// `app.listen(PORT)`, which binds every interface, so this builds the same Express app
/// (`createExpressApp()`) and listens on 127.0.0.1:$PORT.
const STATEFUL_MOCK_LAUNCHER: &str = "\
const mock = require(process.argv[1]);
mock.createExpressApp().listen(Number(process.env.PORT), '127.0.0.1');
";

/// stripe-stateful-mock on 127.0.0.1 (`PORT` set, `LOG_LEVEL=warn`).
pub async fn stripe_stateful_mock() -> Emulator {
    let package = installed(
        "stripe-stateful-mock",
        "node/node_modules/stripe-stateful-mock",
    );
    installed(
        "stripe-stateful-mock",
        "node/node_modules/stripe-stateful-mock/dist/index.js",
    );
    start("stripe-stateful-mock", |port| {
        let mut command = Command::new("node");
        command
            .args(["-e", STATEFUL_MOCK_LAUNCHER])
            .arg(&package)
            .env("PORT", port.to_string())
            .env("LOG_LEVEL", "warn");
        command
    })
    .await
}

/// The Stripe subset and Adyen Checkout v72 OpenAPI files: `$PAYGATE_PSP_SPECS`, else the
/// `shared/psp-specs` folder beside the checkout, else `/work/shared/psp-specs`.
pub fn psp_spec(file: &str) -> PathBuf {
    let candidates = [
        std::env::var_os("PAYGATE_PSP_SPECS")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/psp-specs"
        ))),
        Some(PathBuf::from("/work/shared/psp-specs")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join(file))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!("the PSP's OpenAPI file {file} is not found: set PAYGATE_PSP_SPECS to the folder that holds it (shared/psp-specs)")
    })
}

/// A canned upstream on 127.0.0.1 for [`prism_proxy`]: answers every request with
/// `answer(method, path)` = (status, JSON body) and `content-type: application/json`.
/// Returns its base URL and a count of the requests it received.
pub async fn json_upstream(answer: fn(&str, &str) -> (u16, String)) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the upstream");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (status, body) =
                                answer(request.method().as_str(), request.uri().path());
                            let _ = request.into_body().collect().await;
                            seen.fetch_add(1, Ordering::SeqCst);
                            let response = http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("a valid canned response");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (base, count)
}
