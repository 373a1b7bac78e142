//! Shared helpers for the integration tests: start the real `paygate` binary (gateway or
//! simulator) on 127.0.0.1 port 0, learn its port from its listening line, and talk HTTP to
//! it. Processes are killed when their handle drops; every wait is bounded.

#![allow(dead_code)] // each test file uses its own part of this module

pub mod emulators;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous for a debug build on a busy two-core machine, still short enough to fail fast.
const STARTUP: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_paygate");
/// The demo merchant's key and its SHA-256.
pub const KEY: &str = "demo-key";
pub const KEY_SHA256: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
/// A second merchant, for isolation tests.
pub const OTHER_KEY: &str = "other-key";

/// A folder of its own for each test's files.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "paygate-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Seconds since the Unix epoch, as `Paygate-Signature` counts them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// `Paygate-Signature` as the contract defines it, computed here independently of paygate:
/// `t=<t>,v1=<hex HMAC-SHA256 of "t.METHOD.target.body">`.
pub fn merchant_signature(secret: &str, t: u64, method: &str, target: &str, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{method}.{target}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The `[server]` and `[[merchants]]` part every test config starts with: port 0 for both
/// listeners, the demo merchant (`demo-key`) and a second one (`other-key`).
pub fn base_config() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[merchants]]
id = "demo"
api_key_sha256 = "{KEY_SHA256}"

[[merchants]]
id = "other"
api_key_sha256 = "{}"
"#,
        sha256_hex(OTHER_KEY)
    )
}

/// A running `paygate` process, killed on drop.
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:PORT` of the merchant listener (or of the simulator).
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener (gateway only).
    pub admin: String,
    /// Where the process's stderr (its logs) goes.
    pub log: PathBuf,
    /// The routes file a gateway was started on.
    pub routes: PathBuf,
}

impl Process {
    async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Process {
        let log = scratch_dir().join("stderr.log");
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut child = Command::new(BIN)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("start paygate");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = tokio::time::timeout(STARTUP, BufReader::new(stdout).read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("paygate {args:?} printed no listening line; stderr:\n{logs}");
        }
        let urls: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.contains("://"))
            .map(|w| w.trim_end_matches(')'))
            .collect();
        let routes = args
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_default();
        Process {
            routes,
            child,
            base: urls
                .first()
                .expect("a URL in the listening line")
                .to_string(),
            admin: urls.get(1).map(|s| s.to_string()).unwrap_or_default(),
            log,
        }
    }

    /// `paygate --config FILE serve` on `routes` (a whole routes.toml text).
    pub async fn gateway(routes: &str) -> Process {
        Self::gateway_with_env(routes, &[]).await
    }

    pub async fn gateway_with_env(routes: &str, envs: &[(&str, &str)]) -> Process {
        let path = scratch_dir().join("routes.toml");
        std::fs::write(&path, routes).expect("write routes file");
        let config = path.to_string_lossy().into_owned();
        Self::spawn(&["--config", &config, "serve"], envs).await
    }

    /// `paygate --config PATH serve` on a routes file already written.
    pub async fn gateway_in(path: &std::path::Path) -> Process {
        let config = path.to_string_lossy().into_owned();
        Self::spawn(&["--config", &config, "serve"], &[]).await
    }

    /// `paygate mock-psp --listen 127.0.0.1:0 FLAGS...`.
    pub async fn mock_psp(flags: &[&str]) -> Process {
        let mut args = vec!["mock-psp", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        Self::spawn(&args, &[]).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running process")
    }

    /// How many file descriptors the process holds (Linux: `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// `GET /metrics` on the admin listener, as text.
    pub async fn metrics(&self) -> String {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let uri = format!("{}/metrics", self.admin)
            .parse()
            .expect("metrics URL");
        let response = tokio::time::timeout(CALL, client.get(uri))
            .await
            .expect("metrics in time")
            .expect("metrics answer");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("read metrics")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The value of one series (`name{labels}` exactly as exported) on `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running process").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()?;
        status.code()
    }

    /// The simulator's `/_sim/stats`; retried a few times, since a simulator set to refuse
    /// connections refuses the test's too.
    pub async fn stats(&self) -> Value {
        let url = format!("{}/_sim/stats", self.base);
        for _ in 0..50 {
            if let Ok(answer) = try_send(Method::GET, &url, &[], "").await {
                assert_eq!(answer.status, StatusCode::OK);
                return answer.json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no stats from {url}");
    }
}

/// What a request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub json: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The contract error type, for an error answer.
    pub fn error_type(&self) -> &str {
        self.json["error"]["type"].as_str().unwrap_or("")
    }
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    try_send(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("an HTTP answer from {url}: {e}"))
}

pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let response = tokio::time::timeout(CALL, client.request(request))
        .await
        .expect("answer in time")?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        json,
    })
}

/// `POST /v1/payments` as the demo merchant.
pub async fn pay(gateway: &Process, body: &Value) -> Answer {
    pay_as(gateway, KEY, body).await
}

pub async fn pay_as(gateway: &Process, key: &str, body: &Value) -> Answer {
    let auth = format!("Bearer {key}");
    send(
        Method::POST,
        &format!("{}/v1/payments", gateway.base),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

/// `POST /v1/payments/{id}/{action}` (capture or refunds) as the demo merchant.
pub async fn follow_up(gateway: &Process, id: &str, action: &str, body: &str) -> Answer {
    let auth = format!("Bearer {KEY}");
    send(
        Method::POST,
        &format!("{}/v1/payments/{id}/{action}", gateway.base),
        &[("authorization", &auth)],
        body,
    )
    .await
}

pub async fn get_payment(gateway: &Process, key: &str, id: &str) -> Answer {
    let auth = format!("Bearer {key}");
    send(
        Method::GET,
        &format!("{}/v1/payments/{id}", gateway.base),
        &[("authorization", &auth)],
        "",
    )
    .await
}

/// A card payment body.
pub fn card_payment(amount: u64, currency: &str) -> Value {
    serde_json::json!({
        "amount": amount, "currency": currency, "method": "card", "country": "DE",
        "reference": "order-1", "capture": false,
        "card": { "number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123" }
    })
}

/// A `[[channels]]` table pointing at `sim` (a running mock-psp).
pub fn channel(name: &str, sim: &Process, extra: &str) -> String {
    format!(
        "\n[[channels]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}\n",
        sim.base
    )
}

/// What a [`recorder`] received, one entry a request: its `Paygate-Signature` (empty when
/// absent) and its body.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Bytes)>>>;

/// An HTTP/1 server on 127.0.0.1 that records every request and answers the `n`th (from 1)
/// with 200 and `answer(n)`: a merchant's webhook endpoint, or a PSP that approves all.
/// Returns `http://ADDR{path}`.
pub async fn recorder(path: &str, answer: fn(usize) -> Bytes) -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the recorder");
    let url = format!("http://{}{path}", listener.local_addr().expect("bound"));
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let signature = request
                                .headers()
                                .get("paygate-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut all = store.lock().unwrap_or_else(|e| e.into_inner());
                                all.push((signature, body));
                                all.len()
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                answer(n),
                            )))
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
    (url, received)
}

/// The first request a [`recorder`] received, waited for up to 10 s.
pub async fn first_received(received: &Received) -> (String, Bytes) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let first = received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned();
        if let Some(first) = first {
            return first;
        }
        assert!(std::time::Instant::now() < deadline, "nothing received");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
