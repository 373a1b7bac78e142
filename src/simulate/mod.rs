//! `paygate simulate`: the real router against simulated channels, in-process, on a virtual
//! clock, so that a million payments take seconds; and the same traffic through three
//! baselines (round robin, static priority, an oracle that knows every channel's true chance
//! of approval), so the report says what the router wins and what it leaves on the table.
//!
//! What is real: `routing::decide` (rule index, eligibility, ejection, probing, Thompson
//! sampling with the latency and fee penalties), `ChannelScore::observe`, `Router::sweep` once
//! per virtual second, the retry budget, and `routing::verdict`, used exactly as
//! `api/payments.rs` uses them. What is simulated: the PSPs (approval, 503-like refusals and
//! latency, changing over time as the scenario file says) and the arrivals. The routes file
//! is loaded with `Config::load`, so it is checked as `serve` would check it; its channels'
//! URLs are never called.
//!
//! Layout: `scenario` (the scenario file and each channel's conditions over time), `engine`
//! (the event loop and the tallies), `baseline` (the comparison strategies), `report` (tables
//! and bars). The six strategies run on their own threads, each with its own router, budget
//! and clock. Must not open sockets, read the wall clock for routing, or touch a gateway's
//! live state.

mod baseline;
mod engine;
mod report;
mod scenario;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

pub use engine::{Strategy, Tally, Truth};
pub use report::Report;
pub use scenario::{ChannelModel, Conditions, PaymentKind, Phase, Scenario};

use crate::config::{Config, ConfigError};
use crate::routing::RoutingError;
use engine::World;

/// `paygate simulate` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The routes file whose rules and channels are simulated.
    #[arg(long, default_value = "routes.toml")]
    pub routes: PathBuf,
    /// The scenario: arrival rate, payment mix, each channel's behavior over time.
    #[arg(long)]
    pub scenario: PathBuf,
    /// How many payments to simulate.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Seed of every random draw; the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run this many seeds (seed, seed + 1, ...) and report the medians first, then the
    /// first seed's full report.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
}

/// Longest run in virtual time: traffic is counted per second, and 11.6 days keeps those
/// counters under 75 MB for six strategies of three channels (50 MB for four).
const MAX_VIRTUAL_SECS: u64 = 1_000_000;
/// Most seeds in one run: medians need a few, not a sweep.
const MAX_SEEDS: u64 = 99;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0}")]
    Routes(ConfigError),
    #[error("{0}")]
    Scenario(ConfigError),
    #[error(
        "{}: channel {channel:?} of the routes file {} is not described (add a [[channels]] entry named {channel:?})",
        scenario.display(),
        routes.display()
    )]
    MissingChannel {
        scenario: PathBuf,
        routes: PathBuf,
        channel: String,
    },
    #[error(
        "{}: channel {channel:?} is not a channel of the routes file {}",
        scenario.display(),
        routes.display()
    )]
    UnknownChannel {
        scenario: PathBuf,
        routes: PathBuf,
        channel: String,
    },
    #[error(
        "{}: payments entry {entry} ({payment}) cannot be routed by {}: {source}",
        scenario.display(),
        routes.display()
    )]
    Unroutable {
        scenario: PathBuf,
        routes: PathBuf,
        entry: usize,
        /// Merchant, currency, method and amount, as one phrase.
        payment: String,
        source: RoutingError,
    },
    #[error("--requests must be at least 1")]
    NoRequests,
    #[error("--seeds must be between 1 and {MAX_SEEDS}")]
    Seeds,
    #[error(
        "{}: {requests} payments at {rate}/s would cover {seconds} s of virtual time, more than {MAX_VIRTUAL_SECS}; raise rate_per_second or lower --requests",
        scenario.display()
    )]
    TooLong {
        scenario: PathBuf,
        requests: u64,
        rate: f64,
        seconds: u64,
    },
    #[error("a simulation thread panicked ({0}); this is a bug")]
    Crashed(&'static str),
    #[error("cannot write the report: {0}")]
    Output(std::io::Error),
}

/// Runs the simulation and prints the report to stdout; a line with the wall time goes to
/// stderr so that stdout stays the same for the same seed.
pub fn run(args: SimulateArgs) -> Result<(), SimulateError> {
    let started = Instant::now();
    let reports = simulate(&args)?;
    let text = match reports.as_slice() {
        [report] => report.render(args.format),
        _ => report::render_medians(&reports, args.format),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(SimulateError::Output)?;
    eprintln!(
        "simulated {} payments x {} strategies x {} seed(s) in {:.2} s",
        args.requests,
        Strategy::ALL.len(),
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads both files, runs every strategy over the same arrivals, and returns the report of
/// each seed.
pub fn simulate(args: &SimulateArgs) -> Result<Vec<Report>, SimulateError> {
    if args.requests == 0 {
        return Err(SimulateError::NoRequests);
    }
    if !(1..=MAX_SEEDS).contains(&args.seeds) {
        return Err(SimulateError::Seeds);
    }
    let config = Config::load(&args.routes).map_err(SimulateError::Routes)?;
    let scenario = Scenario::load(&args.scenario).map_err(SimulateError::Scenario)?;
    let models = models_for(&config, &scenario)?;
    check_routable(&config, &scenario)?;
    let world = World::new(&config, &scenario, models.clone(), args.requests, args.seed);
    let seconds = world.duration_secs();
    if seconds > MAX_VIRTUAL_SECS {
        return Err(SimulateError::TooLong {
            scenario: scenario.file.clone(),
            requests: args.requests,
            rate: scenario.rate_per_second,
            seconds,
        });
    }
    (args.seed..args.seed.saturating_add(args.seeds))
        .map(|seed| {
            let world = World::new(&config, &scenario, models.clone(), args.requests, seed);
            let tallies = run_all(&world)?;
            Ok(Report::new(&world, tallies, engine::truth(&world)))
        })
        .collect()
}

/// The scenario's model of each channel of the routes file, by channel id; every channel must
/// be described, and every description must be of a channel (a typo is not silently idle).
fn models_for<'a>(
    config: &Config,
    scenario: &'a Scenario,
) -> Result<Vec<&'a ChannelModel>, SimulateError> {
    if let Some(stray) = scenario
        .channels
        .iter()
        .find(|model| config.channel_by_name(&model.name).is_none())
    {
        return Err(SimulateError::UnknownChannel {
            scenario: scenario.file.clone(),
            routes: config.file.clone(),
            channel: stray.name.clone(),
        });
    }
    config
        .channels
        .iter()
        .map(|channel| {
            scenario
                .channel(&channel.name)
                .ok_or_else(|| SimulateError::MissingChannel {
                    scenario: scenario.file.clone(),
                    routes: config.file.clone(),
                    channel: channel.name.clone(),
                })
        })
        .collect()
}

/// Every entry of the mix must reach a channel at both ends of its amount range; otherwise
/// the scenario and the routes disagree and the figures would mean little.
fn check_routable(config: &Config, scenario: &Scenario) -> Result<(), SimulateError> {
    for (index, kind) in scenario.payments.iter().enumerate() {
        for amount in [kind.min_amount, kind.max_amount] {
            let facts = crate::routing::PaymentFacts {
                merchant: &kind.merchant,
                currency: &kind.currency,
                method: &kind.method,
                country: kind.country.as_deref(),
                amount,
            };
            if let Err(source) = baseline::eligible(config, &facts) {
                return Err(SimulateError::Unroutable {
                    scenario: scenario.file.clone(),
                    routes: config.file.clone(),
                    entry: index + 1,
                    payment: format!(
                        "{} {} {}, amount {amount}",
                        kind.merchant, kind.currency, kind.method
                    ),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// One thread per strategy: they share nothing but the read-only world.
fn run_all(world: &World<'_>) -> Result<Vec<Tally>, SimulateError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = Strategy::ALL
            .iter()
            .map(|&strategy| (strategy, scope.spawn(move || engine::run(world, strategy))))
            .collect();
        handles
            .into_iter()
            .map(|(strategy, handle)| {
                handle
                    .join()
                    .map_err(|_| SimulateError::Crashed(strategy.name()))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ROUTES: &str = r#"
[[channels]]
name = "a"
url = "http://127.0.0.1:9"
currencies = ["EUR"]
[[channels]]
name = "b"
url = "http://127.0.0.1:9"
currencies = ["EUR"]
[[rules]]
name = "all"
channels = ["a", "b"]
"#;

    fn scenario(channels: &[&str], currency: &str) -> Scenario {
        let mut text = format!(
            "name = \"t\"\nrate_per_second = 10\n[[payments]]\nmerchant = \"m\"\ncurrency = \"{currency}\"\nmethod = \"card\"\namount = 100\n"
        );
        for name in channels {
            text.push_str(&format!(
                "[[channels]]\nname = \"{name}\"\nsuccess = 0.9\nlatency_ms = {{ p50 = 10, p99 = 20 }}\n"
            ));
        }
        Scenario::parse(Path::new("s.toml"), &text).unwrap()
    }

    fn routes() -> Config {
        Config::parse(Path::new("routes.toml"), ROUTES).unwrap()
    }

    #[test]
    fn every_channel_of_the_routes_needs_a_model_and_no_more() {
        let config = routes();
        let both = scenario(&["b", "a"], "EUR");
        let models = models_for(&config, &both).unwrap();
        assert_eq!(models[0].name, "a");
        assert_eq!(models[1].name, "b");
        let missing = models_for(&config, &scenario(&["a"], "EUR")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("s.toml: channel \"b\" of the routes file routes.toml"),
            "{missing}"
        );
        let stray = models_for(&config, &scenario(&["a", "b", "z"], "EUR")).unwrap_err();
        assert!(
            stray.to_string().contains("\"z\" is not a channel"),
            "{stray}"
        );
    }

    #[test]
    fn a_mix_the_routes_cannot_take_is_refused() {
        let config = routes();
        assert!(check_routable(&config, &scenario(&["a", "b"], "EUR")).is_ok());
        let err = check_routable(&config, &scenario(&["a", "b"], "USD")).unwrap_err();
        assert!(
            err.to_string()
                .contains("payments entry 1 (m USD card, amount 100) cannot be routed"),
            "{err}"
        );
    }
}
