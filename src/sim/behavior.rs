//! How a simulated PSP behaves: outcome shares, fault rates, latency, and the schedule that
//! switches between behaviors over time.
//!
//! Owns the configuration types (serde, validated by [`Behavior::problems`]) and the pure
//! sampling from them. Must not perform I/O (except [`Schedule::from_file`] reading its file),
//! sleep, or touch simulator state: the handler draws here and acts elsewhere.

use std::path::Path;
use std::time::Duration;

use rand::RngExt;
use serde::Deserialize;

use super::SimError;

/// The z-score of the 99th percentile of the standard normal distribution: it turns the
/// distance between p50 and p99 (in log space) into a standard deviation.
const Z_P99: f64 = 2.3263;

/// A lognormal tail is unbounded; no simulated PSP answers slower than this, so a sample can
/// never overflow a `Duration` or park a request for days.
const MAX_LATENCY_MS: f64 = 3_600_000.0;

/// The behavior of the simulator (or of one phase of its schedule).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Share of processed (not pending) payments that succeed; the rest are declined.
    pub success_rate: f64,
    /// Codes picked uniformly for a random decline.
    pub decline_codes: Vec<String>,
    /// Share of requests answered `pending` (on the same scale as the fault rates).
    pub pending_rate: f64,
    /// After this long a pending payment reads as `succeeded`.
    pub pending_resolves_ms: u64,
    /// How long the simulator takes to answer.
    pub latency: Latency,
    /// Share answered 503 without processing anything.
    pub error_503: f64,
    /// Share processed and stored, then answered 500 (the ambiguous case).
    pub error_500: f64,
    /// Share processed, then dropped without an answer.
    pub reset: f64,
    /// Share never answered in practice (one hour), and not processed.
    pub hang: f64,
    /// Share of time the simulator refuses connections (its listener closed, so a connect
    /// gets ECONNREFUSED); while above 0 it also closes every connection after one answer,
    /// so that clients keep connecting and meet the refusals.
    pub refuse: f64,
    /// Share processed, then answered with headers and part of the body before the
    /// connection is aborted.
    pub reset_mid_body: f64,
    /// Share processed, then answered 200 with a body that is not JSON.
    pub garbage: f64,
    /// Share processed, then answered 200 with a status the protocol does not have.
    pub unknown_status: f64,
    /// Share processed, then answered 200 without `psp_reference`.
    pub missing_reference: f64,
    /// Share processed, then answered 200 with a body that never ends (one hour at most).
    pub endless_body: f64,
    /// Share processed, then answered 200 with an 8 MiB body.
    pub huge_body: f64,
    /// Share processed, then answered with the correct body one byte at a time.
    pub dribble: f64,
    /// Between two bytes of a dribbled answer.
    pub dribble_interval_ms: u64,
    /// Share processed, then answered correctly after `late_ms` instead of the latency.
    pub late: f64,
    pub late_ms: u64,
    /// Which endpoints the faults hit.
    pub fault_scope: FaultScope,
    /// A request arriving on a connection that served one and then sat idle this long is
    /// not read: the connection is closed, as a load balancer that dropped it would have it
    /// (0: never).
    pub idle_close_ms: u64,
}

/// Where faults are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// Every protocol endpoint.
    #[default]
    All,
    /// `POST /payments` only: captures, refunds and status queries are answered normally,
    /// so that reconciliation can succeed while payments keep failing.
    Payments,
}

impl std::str::FromStr for FaultScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "payments" => Ok(Self::Payments),
            _ => Err("must be all or payments".into()),
        }
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            success_rate: 1.0,
            decline_codes: vec!["do_not_honor".into(), "insufficient_funds".into()],
            pending_rate: 0.0,
            pending_resolves_ms: 2000,
            latency: Latency::default(),
            error_503: 0.0,
            error_500: 0.0,
            reset: 0.0,
            hang: 0.0,
            refuse: 0.0,
            reset_mid_body: 0.0,
            garbage: 0.0,
            unknown_status: 0.0,
            missing_reference: 0.0,
            endless_body: 0.0,
            huge_body: 0.0,
            dribble: 0.0,
            dribble_interval_ms: 200,
            late: 0.0,
            late_ms: 1000,
            fault_scope: FaultScope::All,
            idle_close_ms: 0,
        }
    }
}

/// Answer latency distribution.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Latency {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
    Lognormal { p50_ms: u64, p99_ms: u64 },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed { ms: 0 }
    }
}

/// A fault injected instead of (or on top of) a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 without processing.
    Unavailable,
    /// Processed, then 500.
    InternalError,
    /// Processed, then the connection is dropped.
    Reset,
    /// Not processed, answered after an hour.
    Hang,
    /// Processed; part of the answer, then the connection is aborted.
    ResetMidBody,
    /// Processed; 200 with a body that is not JSON.
    Garbage,
    /// Processed; 200 with a status outside the protocol.
    UnknownStatus,
    /// Processed; 200 without `psp_reference`.
    MissingReference,
    /// Processed; a 200 body that never ends.
    EndlessBody,
    /// Processed; an 8 MiB 200 body.
    HugeBody,
    /// Processed; the answer one byte at a time.
    Dribble,
    /// Processed; the answer after `late_ms`.
    Late,
}

impl Fault {
    /// The names used in stats, flags and problems, in band order.
    pub const ALL: [Fault; 12] = [
        Fault::Unavailable,
        Fault::InternalError,
        Fault::Reset,
        Fault::Hang,
        Fault::ResetMidBody,
        Fault::Garbage,
        Fault::UnknownStatus,
        Fault::MissingReference,
        Fault::EndlessBody,
        Fault::HugeBody,
        Fault::Dribble,
        Fault::Late,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Unavailable => "error_503",
            Fault::InternalError => "error_500",
            Fault::Reset => "reset",
            Fault::Hang => "hang",
            Fault::ResetMidBody => "reset_mid_body",
            Fault::Garbage => "garbage",
            Fault::UnknownStatus => "unknown_status",
            Fault::MissingReference => "missing_reference",
            Fault::EndlessBody => "endless_body",
            Fault::HugeBody => "huge_body",
            Fault::Dribble => "dribble",
            Fault::Late => "late",
        }
    }
}

/// What the random part of an answer will be, drawn in one go so that the thread-local
/// generator is never held across an `.await`.
#[derive(Debug, Clone)]
pub struct Draw {
    pub fault: Option<Fault>,
    /// True when the roll landed in the pending share (test cards may override it).
    pub pending: bool,
    /// True when a non-pending payment succeeds.
    pub succeeds: bool,
    /// Index into `decline_codes` used for a random decline.
    pub decline_index: usize,
    pub latency: Duration,
}

impl Behavior {
    /// One plain sentence per invalid value; empty when the behavior is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let rates = [
            ("success_rate", self.success_rate),
            ("pending_rate", self.pending_rate),
            ("refuse", self.refuse),
        ]
        .into_iter()
        .chain(Fault::ALL.map(|f| (f.name(), self.rate(f))));
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{name} is {rate} but must be between 0 and 1"));
            }
        }
        let shared = self.fault_sum() + self.pending_rate;
        // A little slack so that 0.1 + 0.2 + 0.7 is not rejected for its rounding.
        if shared > 1.0 + 1e-9 {
            problems.push(format!(
                "the fault rates (error_503, error_500, reset, hang, reset_mid_body, garbage, unknown_status, missing_reference, endless_body, huge_body, dribble, late) + pending_rate is {shared} but must not exceed 1"
            ));
        }
        if self.decline_codes.is_empty() && self.success_rate < 1.0 {
            problems.push("decline_codes is empty but success_rate is below 1".into());
        }
        problems.extend(self.latency.problems());
        problems
    }

    /// The rate of one fault.
    pub fn rate(&self, fault: Fault) -> f64 {
        match fault {
            Fault::Unavailable => self.error_503,
            Fault::InternalError => self.error_500,
            Fault::Reset => self.reset,
            Fault::Hang => self.hang,
            Fault::ResetMidBody => self.reset_mid_body,
            Fault::Garbage => self.garbage,
            Fault::UnknownStatus => self.unknown_status,
            Fault::MissingReference => self.missing_reference,
            Fault::EndlessBody => self.endless_body,
            Fault::HugeBody => self.huge_body,
            Fault::Dribble => self.dribble,
            Fault::Late => self.late,
        }
    }

    fn fault_sum(&self) -> f64 {
        Fault::ALL.iter().map(|f| self.rate(*f)).sum()
    }

    /// Draws the fault, the outcome and the latency for one request.
    pub fn draw(&self) -> Draw {
        let mut rng = rand::rng();
        let roll = rng.random::<f64>();
        let succeeds = rng.random::<f64>() < self.success_rate;
        let decline_index = match self.decline_codes.len() {
            0 => 0,
            n => rng.random_range(0..n),
        };
        let latency = self.latency.sample(&mut rng);
        Draw {
            fault: self.fault_for(roll),
            pending: self.is_pending_roll(roll),
            succeeds,
            decline_index,
            latency,
        }
    }

    /// Faults and pending share one scale, in the documented order, so that each rate is a
    /// share of all requests and their sum is bounded by 1.
    fn fault_for(&self, roll: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for fault in Fault::ALL {
            edge += self.rate(fault);
            if roll < edge {
                return Some(fault);
            }
        }
        None
    }

    fn is_pending_roll(&self, roll: f64) -> bool {
        let start = self.fault_sum();
        roll >= start && roll < start + self.pending_rate
    }

    /// The decline code for a random decline; "declined" only when the list is empty, which
    /// `problems` reports.
    pub fn decline_code(&self, index: usize) -> &str {
        self.decline_codes
            .get(index)
            .map(String::as_str)
            .unwrap_or("declined")
    }
}

impl Latency {
    fn problems(&self) -> Vec<String> {
        match *self {
            Latency::Fixed { .. } => Vec::new(),
            Latency::Uniform { min_ms, max_ms } if min_ms > max_ms => vec![format!(
                "latency min_ms ({min_ms}) is greater than max_ms ({max_ms})"
            )],
            Latency::Uniform { .. } => Vec::new(),
            Latency::Lognormal { p50_ms: 0, .. } => {
                vec!["latency p50_ms must be greater than 0".into()]
            }
            Latency::Lognormal { p50_ms, p99_ms } if p50_ms > p99_ms => vec![format!(
                "latency p50_ms ({p50_ms}) is greater than p99_ms ({p99_ms})"
            )],
            Latency::Lognormal { .. } => Vec::new(),
        }
    }

    /// One latency sample. Invalid parameters (which `problems` reports) still give a finite
    /// answer rather than a panic.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match *self {
            Latency::Fixed { ms } => Duration::from_millis(ms),
            Latency::Uniform { min_ms, max_ms } => {
                let (low, high) = (min_ms.min(max_ms), min_ms.max(max_ms));
                Duration::from_millis(rng.random_range(low..=high))
            }
            Latency::Lognormal { p50_ms, p99_ms } => lognormal(rng, p50_ms, p99_ms),
        }
    }
}

fn lognormal<R: rand::Rng + ?Sized>(rng: &mut R, p50_ms: u64, p99_ms: u64) -> Duration {
    if p50_ms == 0 {
        return Duration::ZERO;
    }
    let mu = (p50_ms as f64).ln();
    let sigma = ((p99_ms.max(p50_ms) as f64).ln() - mu) / Z_P99;
    let ms = (mu + sigma * standard_normal(rng)).exp();
    Duration::from_secs_f64(ms.clamp(0.0, MAX_LATENCY_MS) / 1000.0)
}

/// Box-Muller: two uniforms give one standard normal sample.
fn standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f64 {
    // `random` is in [0, 1); flipping it keeps ln() away from zero.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// From `at_secs` after the simulator started, it behaves like `behavior`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub at_secs: u64,
    #[serde(default)]
    pub behavior: Behavior,
}

/// Phases sorted by `at_secs`; before the first one the simulator uses its base behavior.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Vec<Phase>")]
pub struct Schedule {
    phases: Vec<Phase>,
}

/// The shape of a schedule file: `[[phase]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    #[serde(default)]
    phase: Vec<Phase>,
}

impl From<Vec<Phase>> for Schedule {
    fn from(phases: Vec<Phase>) -> Self {
        Schedule::new(phases)
    }
}

impl Schedule {
    /// Sorts the phases by time (stable, so equal times keep file order and the last wins).
    pub fn new(mut phases: Vec<Phase>) -> Self {
        phases.sort_by_key(|phase| phase.at_secs);
        Schedule { phases }
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    pub fn is_empty(&self) -> bool {
        self.phases.is_empty()
    }

    /// Reads and parses a schedule file; errors name the file, line and column.
    pub fn from_file(path: &Path) -> Result<Schedule, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ScheduleRead {
            path: path.to_path_buf(),
            source,
        })?;
        parse_named(&text, &path.display().to_string())
    }

    /// Parses schedule TOML text; errors name the line and column.
    pub fn parse(text: &str) -> Result<Schedule, SimError> {
        parse_named(text, "schedule")
    }

    /// The behavior in force `elapsed_secs` after the start: a binary search over the sorted
    /// phases, no lock, no allocation.
    pub fn behavior_at<'a>(&'a self, base: &'a Behavior, elapsed_secs: u64) -> &'a Behavior {
        let after = self
            .phases
            .partition_point(|phase| phase.at_secs <= elapsed_secs);
        match after.checked_sub(1) {
            Some(index) => &self.phases[index].behavior,
            None => base,
        }
    }

    /// Every phase's problems, each prefixed with the phase it belongs to.
    pub fn problems(&self) -> Vec<String> {
        self.phases
            .iter()
            .flat_map(|phase| {
                phase
                    .behavior
                    .problems()
                    .into_iter()
                    .map(move |problem| format!("phase at {} s: {problem}", phase.at_secs))
            })
            .collect()
    }
}

fn parse_named(text: &str, source_name: &str) -> Result<Schedule, SimError> {
    let file: ScheduleFile = toml::from_str(text).map_err(|error| {
        let (line, column) = error
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        SimError::ScheduleParse {
            source_name: source_name.to_string(),
            line,
            column,
            message: error.message().to_string(),
        }
    })?;
    Ok(Schedule::new(file.phase))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(latency: &Latency, count: usize) -> Vec<u64> {
        let mut rng = rand::rng();
        let mut all: Vec<u64> = (0..count)
            .map(|_| latency.sample(&mut rng).as_millis() as u64)
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn fixed_latency_is_exact() {
        assert_eq!(samples(&Latency::Fixed { ms: 0 }, 10), vec![0; 10]);
        assert_eq!(samples(&Latency::Fixed { ms: 7 }, 3), vec![7; 3]);
    }

    #[test]
    fn uniform_latency_stays_in_range_and_covers_it() {
        let all = samples(
            &Latency::Uniform {
                min_ms: 5,
                max_ms: 50,
            },
            10_000,
        );
        assert_eq!(all.first(), Some(&5));
        assert_eq!(all.last(), Some(&50));
    }

    #[test]
    fn inverted_uniform_does_not_panic() {
        let all = samples(
            &Latency::Uniform {
                min_ms: 9,
                max_ms: 3,
            },
            100,
        );
        assert!(all.iter().all(|ms| (3..=9).contains(ms)));
    }

    #[test]
    fn lognormal_percentiles_are_roughly_right() {
        let all = samples(
            &Latency::Lognormal {
                p50_ms: 30,
                p99_ms: 250,
            },
            10_000,
        );
        let p50 = all[5_000];
        let p99 = all[9_900];
        assert!((26..=34).contains(&p50), "p50 {p50}");
        assert!((190..=330).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn degenerate_lognormal_is_finite() {
        let zero = samples(
            &Latency::Lognormal {
                p50_ms: 0,
                p99_ms: 10,
            },
            10,
        );
        assert_eq!(zero, vec![0; 10]);
        let flat = samples(
            &Latency::Lognormal {
                p50_ms: 20,
                p99_ms: 20,
            },
            10,
        );
        assert!(flat.iter().all(|ms| *ms == 20 || *ms == 19), "{flat:?}");
    }

    #[test]
    fn default_behavior_has_no_problems() {
        assert!(Behavior::default().problems().is_empty());
    }

    #[test]
    fn problems_name_each_invalid_value() {
        let behavior = Behavior {
            success_rate: 1.5,
            decline_codes: Vec::new(),
            pending_rate: 0.8,
            error_503: 0.5,
            hang: -0.1,
            latency: Latency::Uniform {
                min_ms: 10,
                max_ms: 1,
            },
            ..Behavior::default()
        };
        let problems = behavior.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("success_rate is 1.5"));
        assert!(problems[1].starts_with("hang is -0.1"));
        assert!(problems[2].contains("must not exceed 1"));
        assert_eq!(
            problems[3],
            "latency min_ms (10) is greater than max_ms (1)"
        );

        let declines_without_codes = Behavior {
            success_rate: 0.5,
            decline_codes: Vec::new(),
            ..Behavior::default()
        };
        assert_eq!(
            declines_without_codes.problems(),
            vec!["decline_codes is empty but success_rate is below 1"]
        );
    }

    #[test]
    fn lognormal_problems() {
        let zero = Latency::Lognormal {
            p50_ms: 0,
            p99_ms: 5,
        };
        assert_eq!(
            zero.problems(),
            vec!["latency p50_ms must be greater than 0"]
        );
        let inverted = Latency::Lognormal {
            p50_ms: 50,
            p99_ms: 5,
        };
        assert_eq!(
            inverted.problems(),
            vec!["latency p50_ms (50) is greater than p99_ms (5)"]
        );
    }

    #[test]
    fn rates_that_sum_to_one_with_rounding_are_accepted() {
        let behavior = Behavior {
            error_503: 0.1,
            error_500: 0.2,
            pending_rate: 0.7,
            ..Behavior::default()
        };
        assert!(behavior.problems().is_empty());
    }

    #[test]
    fn fault_bands_follow_the_documented_order() {
        let behavior = Behavior {
            error_503: 0.1,
            error_500: 0.1,
            reset: 0.1,
            hang: 0.1,
            pending_rate: 0.1,
            ..Behavior::default()
        };
        assert_eq!(behavior.fault_for(0.05), Some(Fault::Unavailable));
        assert_eq!(behavior.fault_for(0.15), Some(Fault::InternalError));
        assert_eq!(behavior.fault_for(0.25), Some(Fault::Reset));
        assert_eq!(behavior.fault_for(0.35), Some(Fault::Hang));
        assert_eq!(behavior.fault_for(0.45), None);
        assert!(behavior.is_pending_roll(0.45));
        assert!(!behavior.is_pending_roll(0.55));
        assert!(!behavior.is_pending_roll(0.35));
    }

    #[test]
    fn behavior_parses_with_defaults_and_rejects_unknown_fields() {
        let behavior: Behavior = toml::from_str(
            "success_rate = 0.5\nlatency = { kind = \"uniform\", min_ms = 5, max_ms = 50 }",
        )
        .unwrap();
        assert_eq!(behavior.success_rate, 0.5);
        assert_eq!(behavior.pending_resolves_ms, 2000);
        assert_eq!(
            behavior.latency,
            Latency::Uniform {
                min_ms: 5,
                max_ms: 50
            }
        );
        assert!(toml::from_str::<Behavior>("succes_rate = 0.5").is_err());
        assert!(
            toml::from_str::<Behavior>("latency = { kind = \"fixed\", ms = 1, x = 2 }").is_err()
        );
    }

    const SCHEDULE: &str = r#"
[[phase]]
at_secs = 10
behavior = { error_503 = 1.0 }

[[phase]]
at_secs = 2
[phase.behavior]
success_rate = 0.0
latency = { kind = "lognormal", p50_ms = 30, p99_ms = 250 }
"#;

    #[test]
    fn schedule_parses_and_sorts_phases() {
        let schedule = Schedule::parse(SCHEDULE).unwrap();
        let times: Vec<u64> = schedule.phases().iter().map(|p| p.at_secs).collect();
        assert_eq!(times, vec![2, 10]);
        assert_eq!(schedule.phases()[0].behavior.success_rate, 0.0);
        assert_eq!(schedule.phases()[0].behavior.error_503, 0.0);
        assert_eq!(schedule.phases()[1].behavior.error_503, 1.0);
        assert_eq!(schedule.phases()[1].behavior.success_rate, 1.0);
    }

    #[test]
    fn schedule_selects_the_phase_in_force() {
        let schedule = Schedule::parse(SCHEDULE).unwrap();
        let base = Behavior {
            success_rate: 0.25,
            ..Behavior::default()
        };
        assert_eq!(schedule.behavior_at(&base, 0).success_rate, 0.25);
        assert_eq!(schedule.behavior_at(&base, 1).success_rate, 0.25);
        assert_eq!(schedule.behavior_at(&base, 2).success_rate, 0.0);
        assert_eq!(schedule.behavior_at(&base, 9).success_rate, 0.0);
        assert_eq!(schedule.behavior_at(&base, 10).error_503, 1.0);
        assert_eq!(schedule.behavior_at(&base, u64::MAX).error_503, 1.0);
        assert_eq!(Schedule::default().behavior_at(&base, 5), &base);
    }

    #[test]
    fn schedule_errors_name_the_line() {
        let text = "[[phase]]\nat_secs = 1\nbehavior = { success_rat = 1.0 }\n";
        let error = Schedule::parse(text).unwrap_err().to_string();
        assert!(error.starts_with("schedule:3:"), "{error}");
        assert!(error.contains("success_rat"), "{error}");
        let missing = Schedule::parse("[[phase]]\nbehavior = {}\n")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("at_secs"), "{missing}");
    }

    #[test]
    fn schedule_file_errors_name_the_file() {
        let path = std::env::temp_dir().join(format!("sim-schedule-{}.toml", std::process::id()));
        std::fs::write(&path, "[[phase]]\nat_secs = \"soon\"\n").unwrap();
        let error = Schedule::from_file(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            error.starts_with(&format!("{}:2:", path.display())),
            "{error}"
        );
        let missing = Schedule::from_file(Path::new("/nonexistent/schedule.toml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/schedule.toml"), "{missing}");
    }

    #[test]
    fn schedule_problems_name_the_phase() {
        let schedule =
            Schedule::parse("[[phase]]\nat_secs = 4\nbehavior = { success_rate = 2.0 }\n").unwrap();
        assert_eq!(
            schedule.problems(),
            vec!["phase at 4 s: success_rate is 2 but must be between 0 and 1"]
        );
    }
}
