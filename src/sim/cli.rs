//! The `paygate mock-psp` command: its flags, turning them into a behavior and schedule,
//! and running the simulator until SIGINT or SIGTERM.
//!
//! Owns the command line only. Must print exactly one line to stdout (the listening line,
//! which tests read to learn the port) and must refuse to start with an invalid behavior.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::adyen::Notifier;
use super::behavior::{Behavior, FaultScope, Latency, Schedule};
use super::server::{bind, serve};
use super::{Dialect, SimError, Simulator};

/// Flags of `paygate mock-psp`. Every behavior flag left out keeps its default.
#[derive(clap::Args, Debug, Clone)]
pub struct MockPspArgs {
    /// Address to listen on (port 0 picks a free port; the listening line tells which).
    #[arg(long, default_value = "127.0.0.1:9101")]
    pub listen: SocketAddr,
    /// Name used in psp_references (`<name>-<n>`) and in the stats.
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// The API spoken on the protocol endpoints: paygate-v1 or adyen (Checkout API v72).
    #[arg(long, value_enum, default_value_t = Dialect::PaygateV1)]
    pub dialect: Dialect,
    /// Adyen only: POST a notification (AUTHORISATION, CAPTURE, REFUND, CANCELLATION) here
    /// after each payment and modification.
    #[arg(long, requires = "adyen_hmac_key")]
    pub webhook_url: Option<String>,
    /// Adyen only: the hex HMAC key that signs notifications (additionalData.hmacSignature).
    #[arg(long, requires = "webhook_url")]
    pub adyen_hmac_key: Option<String>,
    /// Share of processed payments that succeed (0..=1).
    #[arg(long)]
    pub success_rate: Option<f64>,
    /// Decline codes picked uniformly for a random decline, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub decline_codes: Option<Vec<String>>,
    /// Share of payments answered pending (0..=1).
    #[arg(long)]
    pub pending_rate: Option<f64>,
    /// Milliseconds after which a pending payment reads as succeeded.
    #[arg(long)]
    pub pending_resolves_ms: Option<u64>,
    /// Latency: fixed:MS | uniform:MIN:MAX | lognormal:P50:P99 (milliseconds).
    #[arg(long, value_parser = parse_latency)]
    pub latency: Option<Latency>,
    /// Share answered 503 without processing.
    #[arg(long = "error-503")]
    pub error_503: Option<f64>,
    /// Share processed, then answered 500.
    #[arg(long = "error-500")]
    pub error_500: Option<f64>,
    /// Share processed, then dropped without an answer.
    #[arg(long)]
    pub reset: Option<f64>,
    /// Share never answered (one hour) and not processed.
    #[arg(long)]
    pub hang: Option<f64>,
    /// Share of time connections are refused (listener closed); keep-alive is off meanwhile.
    #[arg(long)]
    pub refuse: Option<f64>,
    /// Share processed, then aborted after the headers and part of the body.
    #[arg(long)]
    pub reset_mid_body: Option<f64>,
    /// Share processed, then answered 200 with a body that is not JSON.
    #[arg(long)]
    pub garbage: Option<f64>,
    /// Share processed, then answered 200 with a status outside the protocol.
    #[arg(long)]
    pub unknown_status: Option<f64>,
    /// Share processed, then answered 200 without psp_reference.
    #[arg(long)]
    pub missing_reference: Option<f64>,
    /// Share processed, then answered 200 with a body that never ends.
    #[arg(long)]
    pub endless_body: Option<f64>,
    /// Share processed, then answered 200 with an 8 MiB body.
    #[arg(long)]
    pub huge_body: Option<f64>,
    /// Share processed, then answered one byte every --dribble-interval-ms.
    #[arg(long)]
    pub dribble: Option<f64>,
    #[arg(long)]
    pub dribble_interval_ms: Option<u64>,
    /// Share processed, then answered after --late-ms instead of the latency.
    #[arg(long)]
    pub late: Option<f64>,
    #[arg(long)]
    pub late_ms: Option<u64>,
    /// Where faults are drawn: all (every endpoint) or payments (POST /payments only).
    #[arg(long)]
    pub fault_scope: Option<FaultScope>,
    /// Close, unread, a request on a connection idle this long after an answer (0: never).
    #[arg(long)]
    pub idle_close_ms: Option<u64>,
    /// TOML file of `[[phase]]` tables (`at_secs`, `behavior`) switching behavior over time.
    #[arg(long)]
    pub schedule: Option<PathBuf>,
    /// PEM certificate chain: serve https.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

impl MockPspArgs {
    /// The base behavior: defaults overridden by each flag given.
    pub fn behavior(&self) -> Behavior {
        let defaults = Behavior::default();
        Behavior {
            success_rate: self.success_rate.unwrap_or(defaults.success_rate),
            decline_codes: self.decline_codes.clone().unwrap_or(defaults.decline_codes),
            pending_rate: self.pending_rate.unwrap_or(defaults.pending_rate),
            pending_resolves_ms: self
                .pending_resolves_ms
                .unwrap_or(defaults.pending_resolves_ms),
            latency: self.latency.clone().unwrap_or(defaults.latency),
            error_503: self.error_503.unwrap_or(defaults.error_503),
            error_500: self.error_500.unwrap_or(defaults.error_500),
            reset: self.reset.unwrap_or(defaults.reset),
            hang: self.hang.unwrap_or(defaults.hang),
            refuse: self.refuse.unwrap_or(defaults.refuse),
            reset_mid_body: self.reset_mid_body.unwrap_or(defaults.reset_mid_body),
            garbage: self.garbage.unwrap_or(defaults.garbage),
            unknown_status: self.unknown_status.unwrap_or(defaults.unknown_status),
            missing_reference: self.missing_reference.unwrap_or(defaults.missing_reference),
            endless_body: self.endless_body.unwrap_or(defaults.endless_body),
            huge_body: self.huge_body.unwrap_or(defaults.huge_body),
            dribble: self.dribble.unwrap_or(defaults.dribble),
            dribble_interval_ms: self
                .dribble_interval_ms
                .unwrap_or(defaults.dribble_interval_ms),
            late: self.late.unwrap_or(defaults.late),
            late_ms: self.late_ms.unwrap_or(defaults.late_ms),
            fault_scope: self.fault_scope.unwrap_or(defaults.fault_scope),
            idle_close_ms: self.idle_close_ms.unwrap_or(defaults.idle_close_ms),
        }
    }

    fn schedule(&self) -> Result<Schedule, SimError> {
        match &self.schedule {
            Some(path) => Schedule::from_file(path),
            None => Ok(Schedule::default()),
        }
    }

    /// The notifier the webhook flags ask for; errors are plain sentences.
    fn notifier(&self) -> Result<Option<Notifier>, String> {
        let (Some(url), Some(key)) = (&self.webhook_url, &self.adyen_hmac_key) else {
            return Ok(None);
        };
        if self.dialect != Dialect::Adyen {
            return Err("--webhook-url needs --dialect adyen".into());
        }
        Notifier::new(url, key).map(Some)
    }

    fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, SimError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let config = crate::tls::server_config(cert, key, self.client_ca.as_deref())?;
        Ok(Some(config))
    }
}

/// Run the CLI: bind, print exactly one line `mock-psp <name> listening on
/// http://<addr>` (https:// with TLS) and flush it, serve until SIGINT/SIGTERM, return Ok.
pub async fn run(args: MockPspArgs) -> Result<(), SimError> {
    let behavior = args.behavior();
    let schedule = args.schedule()?;
    let mut problems = behavior.problems();
    problems.extend(schedule.problems());
    let notifier = args.notifier().unwrap_or_else(|problem| {
        problems.push(problem);
        None
    });
    if !problems.is_empty() {
        return Err(SimError::InvalidBehavior(problems));
    }
    let tls = args.tls()?;
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
    // Installed before announcing, so a signal sent right after the line is never missed.
    let shutdown = shutdown_signal()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    announce(&format!(
        "mock-psp {} listening on {scheme}://{addr}",
        args.name
    ))?;
    let sim = Simulator::with_dialect(args.name, behavior, schedule, args.dialect, notifier);
    serve(sim, listener, tls, shutdown).await
}

fn announce(line: &str) -> Result<(), SimError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(SimError::Stdout)?;
    stdout.flush().map_err(SimError::Stdout)
}

#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SimError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SimError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(SimError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SimError> {
    Ok(async {
        // Without a handler there is no clean way to stop; waiting forever is the safe choice.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

/// `fixed:MS` | `uniform:MIN:MAX` | `lognormal:P50:P99`, all in milliseconds.
pub fn parse_latency(spec: &str) -> Result<Latency, String> {
    let mut parts = spec.split(':');
    let kind = parts.next().unwrap_or_default();
    let numbers = parts
        .map(|part| part.trim().parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| format!("{spec:?}: the numbers must be whole milliseconds"))?;
    let latency = match (kind, numbers.as_slice()) {
        ("fixed", [ms]) => Latency::Fixed { ms: *ms },
        ("uniform", [min_ms, max_ms]) => Latency::Uniform {
            min_ms: *min_ms,
            max_ms: *max_ms,
        },
        ("lognormal", [p50_ms, p99_ms]) => Latency::Lognormal {
            p50_ms: *p50_ms,
            p99_ms: *p99_ms,
        },
        _ => {
            return Err(format!(
                "{spec:?}: expected fixed:MS, uniform:MIN:MAX or lognormal:P50:P99"
            ));
        }
    };
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: MockPspArgs,
    }

    fn parse(flags: &[&str]) -> Result<MockPspArgs, clap::Error> {
        let argv = std::iter::once("mock-psp").chain(flags.iter().copied());
        Command::try_parse_from(argv).map(|command| command.args)
    }

    #[test]
    fn latency_specs() {
        assert_eq!(parse_latency("fixed:7"), Ok(Latency::Fixed { ms: 7 }));
        assert_eq!(
            parse_latency("uniform:5:50"),
            Ok(Latency::Uniform {
                min_ms: 5,
                max_ms: 50
            })
        );
        assert_eq!(
            parse_latency("lognormal:30:250"),
            Ok(Latency::Lognormal {
                p50_ms: 30,
                p99_ms: 250
            })
        );
        for bad in [
            "fixed",
            "fixed:1:2",
            "uniform:5",
            "gauss:1:2",
            "fixed:-1",
            "fixed:x",
            "",
        ] {
            assert!(parse_latency(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_defaults() {
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--success-rate",
            "0.25",
            "--decline-codes",
            "a,b",
            "--error-503",
            "0.1",
            "--latency",
            "uniform:1:2",
        ])
        .unwrap();
        let behavior = args.behavior();
        assert_eq!(behavior.success_rate, 0.25);
        assert_eq!(behavior.decline_codes, vec!["a", "b"]);
        assert_eq!(behavior.error_503, 0.1);
        assert_eq!(behavior.pending_resolves_ms, 2000);
        assert_eq!(
            behavior.latency,
            Latency::Uniform {
                min_ms: 1,
                max_ms: 2
            }
        );
        assert_eq!(parse(&[]).unwrap().behavior(), Behavior::default());
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--client-ca", "ca.pem"]).is_err());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_ok());
    }

    #[tokio::test]
    async fn invalid_behavior_is_refused_naming_each_problem() {
        let args = parse(&["--success-rate", "2", "--hang=-1"]).unwrap();
        let error = run(args).await.unwrap_err().to_string();
        assert!(error.contains("success_rate is 2"), "{error}");
        assert!(error.contains("hang is -1"), "{error}");
    }
}
