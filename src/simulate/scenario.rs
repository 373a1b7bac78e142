//! The scenario file of `paygate simulate`: how fast payments arrive, what they look like, and
//! how each channel behaves over (virtual) time.
//!
//! Owns the TOML schema (serde, unknown keys refused), its validation (every problem with the
//! file, line and column of the table it is in) and the pure function that tells a channel's
//! conditions at a moment ([`ChannelModel::at`]). Must not draw random numbers or know about
//! routing: the engine samples outcomes from the conditions given here.
//!
//! ```toml
//! name = "outage"
//! rate_per_second = 1000
//! slices_secs = [0, 30, 60, 90]     # optional: where the traffic table's time slices start
//!
//! [[payments]]                      # the mix; `share` weighs the entries (default 1)
//! merchant = "shop"
//! currency = "EUR"
//! method = "card"
//! country = "DE"                    # optional
//! amount = { min = 500, max = 20000 } # or amount = 2500
//!
//! [[channels]]                      # one per channel of the routes file, by name
//! name = "psp_a"
//! success = 0.92                    # share of processed payments the PSP approves
//! unavailable = 0.0                 # share refused before processing (503-like: retryable)
//! latency_ms = { p50 = 180, p99 = 900 }   # log-normal answer time
//! unavailable_latency_ms = 5        # how fast a refusal comes back (default 5)
//!
//! [[channels.phases]]               # a step: from 30 s on, refuse everything
//! from_secs = 30
//! unavailable = 1.0
//! [[channels.phases]]               # with `to_secs`: move linearly to the targets
//! from_secs = 90
//! to_secs = 120
//! unavailable = 0.0
//!
//! [[channels.segments]]             # payments matching every key named here (currency,
//! currency = "USD"                  # method, country, bin: a prefix of the payment's BIN)
//! success = 0.95                    # behave otherwise: the channel's base values with the
//! [[channels.segments.phases]]      # ones named here, and this segment's own phases
//! from_secs = 30                    # (the channel's phases do not apply to it); the first
//! success = 0.30                    # segment that matches wins
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Problem};

/// A refusal (503, connection refused) answers much faster than a processed payment; 5 ms is
/// a round trip inside one region plus a load balancer's immediate answer.
const DEFAULT_UNAVAILABLE_LATENCY_MS: u64 = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: Option<String>,
    rate_per_second: Spanned<f64>,
    #[serde(default)]
    slices_secs: Option<Spanned<Vec<u64>>>,
    payments: Spanned<Vec<Spanned<RawPayment>>>,
    channels: Spanned<Vec<Spanned<RawChannel>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayment {
    merchant: String,
    currency: String,
    method: String,
    #[serde(default)]
    country: Option<String>,
    /// The first digits of the card number (6 or 8), for BIN-prefix segments.
    #[serde(default)]
    bin: Option<String>,
    amount: RawAmount,
    #[serde(default = "one")]
    share: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAmount {
    Fixed(u64),
    Range { min: u64, max: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    success: f64,
    #[serde(default)]
    unavailable: f64,
    latency_ms: RawLatency,
    #[serde(default)]
    unavailable_latency_ms: Option<u64>,
    #[serde(default)]
    phases: Vec<Spanned<RawPhase>>,
    #[serde(default)]
    segments: Vec<Spanned<RawSegment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    bin: Option<String>,
    #[serde(default)]
    success: Option<f64>,
    #[serde(default)]
    unavailable: Option<f64>,
    #[serde(default)]
    latency_ms: Option<RawLatency>,
    #[serde(default)]
    phases: Vec<Spanned<RawPhase>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    p50: f64,
    p99: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    from_secs: f64,
    #[serde(default)]
    to_secs: Option<f64>,
    #[serde(default)]
    success: Option<f64>,
    #[serde(default)]
    unavailable: Option<f64>,
    #[serde(default)]
    latency_ms: Option<RawLatency>,
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub rate_per_second: f64,
    /// Starts of the traffic table's time slices, in seconds; none: ten equal slices.
    pub slices_secs: Option<Vec<u64>>,
    pub payments: Vec<PaymentKind>,
    pub channels: Vec<ChannelModel>,
}

/// One entry of the payment mix.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentKind {
    pub merchant: String,
    pub currency: String,
    pub method: String,
    pub country: Option<String>,
    pub bin: Option<String>,
    pub min_amount: u64,
    pub max_amount: u64,
    pub share: u32,
}

/// A channel's behavior at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    pub success: f64,
    pub unavailable: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Conditions {
    /// The chance that a payment sent here is approved: it must be processed, then approved.
    pub fn effective_success(&self) -> f64 {
        (1.0 - self.unavailable) * self.success
    }
}

/// A change of conditions from `from_us`: a step, or a linear move until `to_us`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub from_us: u64,
    pub to_us: Option<u64>,
    pub success: Option<f64>,
    pub unavailable: Option<f64>,
    pub latency_ms: Option<(f64, f64)>,
}

/// How one channel behaves over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelModel {
    pub name: String,
    pub base: Conditions,
    pub unavailable_latency_us: u64,
    /// In time order, never overlapping.
    pub phases: Vec<Phase>,
    /// Payments that behave otherwise here; the first that matches wins.
    pub segments: Vec<SegmentModel>,
}

/// Which payments a segment holds: every key it names must match (`bin` as a prefix).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentMatch {
    pub currency: Option<String>,
    pub method: Option<String>,
    pub country: Option<String>,
    pub bin: Option<String>,
}

impl SegmentMatch {
    pub fn matches(&self, kind: &PaymentKind) -> bool {
        let same = |key: &Option<String>, value: Option<&str>| {
            key.as_deref().is_none_or(|key| value == Some(key))
        };
        same(&self.currency, Some(&kind.currency))
            && same(&self.method, Some(&kind.method))
            && same(&self.country, kind.country.as_deref())
            && self.bin.as_deref().is_none_or(|prefix| {
                kind.bin
                    .as_deref()
                    .is_some_and(|bin| bin.starts_with(prefix))
            })
    }

    /// The keys it names, as `currency=USD bin=4242`, for reports.
    pub fn label(&self) -> String {
        [
            ("currency", &self.currency),
            ("method", &self.method),
            ("country", &self.country),
            ("bin", &self.bin),
        ]
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// One segment of a channel: its own base conditions and phases.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentModel {
    pub matches: SegmentMatch,
    pub base: Conditions,
    pub phases: Vec<Phase>,
}

/// The conditions at virtual time `now_us`: `base` with every phase that has begun applied
/// in order; a phase under way moves each value it names linearly from where the earlier
/// phases left it toward its target.
pub fn conditions_at(base: Conditions, phases: &[Phase], now_us: u64) -> Conditions {
    let mut current = base;
    for phase in phases {
        if now_us < phase.from_us {
            break;
        }
        let progress = match phase.to_us {
            Some(to) if now_us < to => {
                (now_us - phase.from_us) as f64 / (to - phase.from_us) as f64
            }
            _ => 1.0,
        };
        current = phase.apply(current, progress);
    }
    current
}

impl ChannelModel {
    /// The channel-wide conditions at virtual time `now_us` (segments aside).
    pub fn at(&self, now_us: u64) -> Conditions {
        conditions_at(self.base, &self.phases, now_us)
    }

    /// The conditions a payment of `kind` meets at `now_us`: its segment's, else the
    /// channel's.
    pub fn at_for(&self, now_us: u64, kind: &PaymentKind) -> Conditions {
        match self.segments.iter().find(|s| s.matches.matches(kind)) {
            Some(segment) => conditions_at(segment.base, &segment.phases, now_us),
            None => self.at(now_us),
        }
    }

    /// Whether the channel refuses everything at `now_us` (an outage).
    pub fn is_down(&self, now_us: u64) -> bool {
        self.at(now_us).unavailable >= 1.0
    }
}

impl Phase {
    fn apply(&self, start: Conditions, progress: f64) -> Conditions {
        let toward = |from: f64, target: Option<f64>| match target {
            Some(target) => from + (target - from) * progress,
            None => from,
        };
        Conditions {
            success: toward(start.success, self.success),
            unavailable: toward(start.unavailable, self.unavailable),
            p50_ms: toward(start.p50_ms, self.latency_ms.map(|l| l.0)),
            p99_ms: toward(start.p99_ms, self.latency_ms.map(|l| l.1)),
        }
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(file: &Path) -> Result<Scenario, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                message: format!("cannot read the scenario file: {e}"),
            }],
        })?;
        Self::parse(file, &text)
    }

    /// Parses and validates `text` as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ConfigError> {
        let mut check = Checker {
            text,
            problems: Vec::new(),
        };
        let scenario = check.scenario(file, text);
        match scenario {
            Some(scenario) if check.problems.is_empty() => Ok(scenario),
            _ => {
                check.problems.sort_by_key(|p| (p.line, p.column));
                Err(ConfigError {
                    file: file.to_path_buf(),
                    problems: check.problems,
                })
            }
        }
    }

    /// The model of the channel named `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelModel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// Collects problems with their place in the file.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, at: &Range<usize>, message: String) {
        let before = &self.text[..at.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        self.problems.push(Problem {
            line,
            column,
            message,
        });
    }

    fn scenario(&mut self, file: &Path, text: &str) -> Option<Scenario> {
        let raw: RawScenario = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                self.problem(
                    &e.span().unwrap_or(0..0),
                    e.message().trim_end().to_string(),
                );
                return None;
            }
        };
        let rate = *raw.rate_per_second.get_ref();
        if !(rate.is_finite() && rate > 0.0) {
            self.problem(
                &raw.rate_per_second.span(),
                format!("rate_per_second is {rate} but must be greater than 0"),
            );
        }
        if let Some(slices) = &raw.slices_secs {
            self.slices(slices);
        }
        let payments = self.payments(&raw.payments);
        let channels = self.channels(&raw.channels);
        Some(Scenario {
            file: file.to_path_buf(),
            name: raw.name,
            description: raw.description,
            rate_per_second: rate,
            slices_secs: raw.slices_secs.map(Spanned::into_inner),
            payments,
            channels,
        })
    }

    fn slices(&mut self, slices: &Spanned<Vec<u64>>) {
        let starts = slices.get_ref();
        if starts.first() != Some(&0) || starts.windows(2).any(|w| w[0] >= w[1]) {
            self.problem(
                &slices.span(),
                "slices_secs must start at 0 and increase".into(),
            );
        }
    }

    fn payments(&mut self, raw: &Spanned<Vec<Spanned<RawPayment>>>) -> Vec<PaymentKind> {
        if raw.get_ref().is_empty() {
            self.problem(&raw.span(), "payments must list at least one entry".into());
        }
        raw.get_ref()
            .iter()
            .map(|entry| self.payment(entry))
            .collect()
    }

    fn payment(&mut self, entry: &Spanned<RawPayment>) -> PaymentKind {
        let at = entry.span();
        let raw = entry.get_ref();
        let (min_amount, max_amount) = match raw.amount {
            RawAmount::Fixed(amount) => (amount, amount),
            RawAmount::Range { min, max } => (min, max),
        };
        if min_amount == 0 || min_amount > max_amount {
            self.problem(
                &at,
                format!("amount must be above 0 with min <= max (got {min_amount}..{max_amount})"),
            );
        }
        if raw.share == 0 {
            self.problem(&at, "share must be at least 1".into());
        }
        if let Some(bin) = &raw.bin
            && !(6..=8).contains(&bin.len())
        {
            self.problem(
                &at,
                format!(
                    "bin must be the first 6 to 8 digits of a card (got {} characters)",
                    bin.len()
                ),
            );
        }
        if raw
            .bin
            .as_ref()
            .is_some_and(|bin| !bin.bytes().all(|b| b.is_ascii_digit()))
        {
            self.problem(&at, "bin must be digits only".into());
        }
        PaymentKind {
            merchant: raw.merchant.clone(),
            currency: raw.currency.clone(),
            method: raw.method.clone(),
            country: raw.country.clone(),
            bin: raw.bin.clone(),
            min_amount,
            max_amount,
            share: raw.share,
        }
    }

    fn channels(&mut self, raw: &Spanned<Vec<Spanned<RawChannel>>>) -> Vec<ChannelModel> {
        if raw.get_ref().is_empty() {
            self.problem(
                &raw.span(),
                "channels must list at least one channel".into(),
            );
        }
        let mut models: Vec<ChannelModel> = Vec::new();
        for entry in raw.get_ref() {
            let model = self.channel(entry);
            if models.iter().any(|m| m.name == model.name) {
                self.problem(
                    &entry.span(),
                    format!("channel {:?} is described twice", model.name),
                );
            }
            models.push(model);
        }
        models
    }

    fn channel(&mut self, entry: &Spanned<RawChannel>) -> ChannelModel {
        let at = entry.span();
        let raw = entry.get_ref();
        let name = &raw.name;
        self.share(&at, &format!("channel {name:?}: success"), raw.success);
        self.share(
            &at,
            &format!("channel {name:?}: unavailable"),
            raw.unavailable,
        );
        self.latency(&at, name, raw.latency_ms);
        let phases = self.phases(name, &raw.phases);
        let base = Conditions {
            success: raw.success,
            unavailable: raw.unavailable,
            p50_ms: raw.latency_ms.p50,
            p99_ms: raw.latency_ms.p99,
        };
        let segments = raw
            .segments
            .iter()
            .map(|segment| self.segment(name, base, segment))
            .collect();
        ChannelModel {
            name: name.clone(),
            base,
            segments,
            unavailable_latency_us: raw
                .unavailable_latency_ms
                .unwrap_or(DEFAULT_UNAVAILABLE_LATENCY_MS)
                .saturating_mul(1_000),
            phases,
        }
    }

    fn phases(&mut self, channel: &str, raw: &[Spanned<RawPhase>]) -> Vec<Phase> {
        let mut phases: Vec<Phase> = Vec::with_capacity(raw.len());
        for phase in raw {
            let end_of_previous = phases.last().map(|p: &Phase| p.to_us.unwrap_or(p.from_us));
            phases.push(self.phase(channel, phase, end_of_previous));
        }
        phases
    }

    fn segment(
        &mut self,
        channel: &str,
        base: Conditions,
        entry: &Spanned<RawSegment>,
    ) -> SegmentModel {
        let at = entry.span();
        let raw = entry.get_ref();
        let matches = SegmentMatch {
            currency: raw.currency.clone(),
            method: raw.method.clone(),
            country: raw.country.clone(),
            bin: raw.bin.clone(),
        };
        let label = matches.label();
        let what = format!("{channel}, segment {label}");
        if label.is_empty() {
            self.problem(
                &at,
                format!(
                    "channel {channel:?}: a segment must name currency, method, country or bin"
                ),
            );
        }
        if let Some(success) = raw.success {
            self.share(&at, &format!("channel {what:?}: success"), success);
        }
        if let Some(unavailable) = raw.unavailable {
            self.share(&at, &format!("channel {what:?}: unavailable"), unavailable);
        }
        if let Some(latency) = raw.latency_ms {
            self.latency(&at, &what, latency);
        }
        SegmentModel {
            matches,
            base: Conditions {
                success: raw.success.unwrap_or(base.success),
                unavailable: raw.unavailable.unwrap_or(base.unavailable),
                p50_ms: raw.latency_ms.map_or(base.p50_ms, |l| l.p50),
                p99_ms: raw.latency_ms.map_or(base.p99_ms, |l| l.p99),
            },
            phases: self.phases(&what, &raw.phases),
        }
    }

    fn phase(
        &mut self,
        channel: &str,
        entry: &Spanned<RawPhase>,
        end_of_previous: Option<u64>,
    ) -> Phase {
        let at = entry.span();
        let raw = entry.get_ref();
        let what = format!("channel {channel:?}: phase");
        let from_us = self.seconds(&at, &format!("{what} from_secs"), raw.from_secs);
        let to_us = raw
            .to_secs
            .map(|to| self.seconds(&at, &format!("{what} to_secs"), to));
        if to_us.is_some_and(|to| to <= from_us) {
            self.problem(&at, format!("{what}: to_secs must be after from_secs"));
        }
        if end_of_previous.is_some_and(|end| from_us < end) {
            self.problem(
                &at,
                format!("{what}: phases must be in time order and must not overlap"),
            );
        }
        if let Some(success) = raw.success {
            self.share(&at, &format!("{what} success"), success);
        }
        if let Some(unavailable) = raw.unavailable {
            self.share(&at, &format!("{what} unavailable"), unavailable);
        }
        if let Some(latency) = raw.latency_ms {
            self.latency(&at, channel, latency);
        }
        if raw.success.is_none() && raw.unavailable.is_none() && raw.latency_ms.is_none() {
            self.problem(
                &at,
                format!("{what}: names no target (success, unavailable or latency_ms)"),
            );
        }
        Phase {
            from_us,
            to_us,
            success: raw.success,
            unavailable: raw.unavailable,
            latency_ms: raw.latency_ms.map(|l| (l.p50, l.p99)),
        }
    }

    fn share(&mut self, at: &Range<usize>, what: &str, value: f64) {
        if !(0.0..=1.0).contains(&value) {
            self.problem(at, format!("{what} is {value} but must be between 0 and 1"));
        }
    }

    fn latency(&mut self, at: &Range<usize>, channel: &str, latency: RawLatency) {
        let RawLatency { p50, p99 } = latency;
        if !(p50.is_finite() && p99.is_finite() && p50 > 0.0 && p99 >= p50) {
            self.problem(
                at,
                format!(
                    "channel {channel:?}: latency_ms needs 0 < p50 <= p99 (got p50 = {p50}, p99 = {p99})"
                ),
            );
        }
    }

    /// Seconds as whole microseconds of virtual time.
    fn seconds(&mut self, at: &Range<usize>, what: &str, secs: f64) -> u64 {
        if !(secs.is_finite() && secs >= 0.0) {
            self.problem(at, format!("{what} is {secs} but must be 0 or more"));
            return 0;
        }
        (secs * 1e6).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "drift"
rate_per_second = 1000

[[payments]]
merchant = "shop"
currency = "EUR"
method = "card"
amount = { min = 500, max = 2000 }

[[payments]]
merchant = "shop"
currency = "USD"
method = "card"
amount = 700
share = 3

[[channels]]
name = "a"
success = 0.95
latency_ms = { p50 = 100, p99 = 400 }

[[channels.phases]]
from_secs = 60
to_secs = 360
success = 0.70

[[channels]]
name = "b"
success = 0.9
unavailable = 0.01
latency_ms = { p50 = 100, p99 = 400 }

[[channels.phases]]
from_secs = 30
unavailable = 1.0

[[channels.phases]]
from_secs = 90
unavailable = 0.01
"#;

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(Path::new("s.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_mix_and_the_timeline() {
        let scenario = parse(GOOD).unwrap();
        assert_eq!(scenario.payments.len(), 2);
        assert_eq!(scenario.payments[0].min_amount, 500);
        assert_eq!(scenario.payments[1].max_amount, 700);
        assert_eq!(scenario.payments[1].share, 3);
        let b = scenario.channel("b").unwrap();
        assert_eq!(b.unavailable_latency_us, 5_000);
        assert_eq!(b.phases.len(), 2);
        assert_eq!(b.phases[0].from_us, 30_000_000);
        assert_eq!(b.phases[0].to_us, None);
    }

    #[test]
    fn a_drift_moves_linearly_and_then_holds() {
        let scenario = parse(GOOD).unwrap();
        let a = scenario.channel("a").unwrap();
        let secs = |s: f64| (s * 1e6) as u64;
        assert_eq!(a.at(0).success, 0.95);
        assert_eq!(a.at(secs(60.0)).success, 0.95);
        assert!((a.at(secs(210.0)).success - 0.825).abs() < 1e-9);
        assert!((a.at(secs(360.0)).success - 0.70).abs() < 1e-9);
        assert!((a.at(secs(5_000.0)).success - 0.70).abs() < 1e-9);
        // Values a phase does not name stay as they were.
        assert_eq!(a.at(secs(210.0)).p50_ms, 100.0);
    }

    #[test]
    fn a_step_is_an_outage_until_the_next_step() {
        let scenario = parse(GOOD).unwrap();
        let b = scenario.channel("b").unwrap();
        assert!(!b.is_down(29_999_999));
        assert!(b.is_down(30_000_000));
        assert!(b.is_down(89_999_999));
        assert!(!b.is_down(90_000_000));
        assert_eq!(b.at(30_000_000).effective_success(), 0.0);
        assert!((b.at(0).effective_success() - 0.891).abs() < 1e-9);
    }

    #[test]
    fn problems_name_the_file_and_line() {
        let bad = GOOD
            .replace("success = 0.9\n", "success = 1.9\n")
            .replace("from_secs = 90", "from_secs = 20");
        let err = parse(&bad).unwrap_err();
        assert!(
            err.contains("s.toml:28:1: channel \"b\": success is 1.9"),
            "{err}"
        );
        assert!(err.contains("must be in time order"), "{err}");
        let typo =
            parse(&GOOD.replace("unavailable = 0.01\nlatency", "unavailble = 0.01\nlatency"))
                .unwrap_err();
        assert!(
            typo.starts_with("s.toml:") && typo.contains("unavailble"),
            "{typo}"
        );
        let no_rate =
            parse(&GOOD.replace("rate_per_second = 1000", "rate_per_second = 0")).unwrap_err();
        assert!(
            no_rate.contains("s.toml:3:19: rate_per_second"),
            "{no_rate}"
        );
    }

    #[test]
    fn amounts_and_phases_are_checked() {
        let err = parse(&GOOD.replace("amount = 700", "amount = 0")).unwrap_err();
        assert!(err.contains("amount must be above 0"), "{err}");
        let err = parse(&GOOD.replace("to_secs = 360", "to_secs = 10")).unwrap_err();
        assert!(err.contains("to_secs must be after from_secs"), "{err}");
    }

    const SEGMENTED: &str = r#"
name = "segments"
rate_per_second = 100

[[payments]]
merchant = "shop"
currency = "USD"
method = "card"
country = "US"
bin = "41111111"
amount = 100

[[payments]]
merchant = "shop"
currency = "USD"
method = "card"
bin = "555555"
amount = 100

[[payments]]
merchant = "shop"
currency = "EUR"
method = "card"
amount = 100

[[channels]]
name = "a"
success = 0.9
latency_ms = { p50 = 100, p99 = 400 }

[[channels.segments]]
bin = "4111"
country = "US"
latency_ms = { p50 = 300, p99 = 900 }
[[channels.segments.phases]]
from_secs = 10
success = 0.2

[[channels.segments]]
currency = "USD"
success = 0.5
"#;

    #[test]
    fn segments_override_the_base_and_follow_their_own_phases() {
        let scenario = parse(SEGMENTED).unwrap();
        let a = scenario.channel("a").unwrap();
        let [visa_us, master_usd, eur] = [0, 1, 2].map(|i| &scenario.payments[i]);
        let later = 10_000_000;
        // BIN prefix and country: the channel's success, its own latency, then its phase.
        assert_eq!(a.at_for(0, visa_us).success, 0.9);
        assert_eq!(a.at_for(0, visa_us).p50_ms, 300.0);
        assert!((a.at_for(later, visa_us).success - 0.2).abs() < 1e-9);
        // The first segment that matches wins: other USD cards meet the second.
        assert_eq!(a.at_for(later, master_usd).success, 0.5);
        assert_eq!(a.at_for(later, master_usd).p50_ms, 100.0);
        // EUR meets the channel itself, and the channel-wide view ignores segments.
        assert_eq!(a.at_for(later, eur), a.at(later));
        assert_eq!(a.at(later).success, 0.9);
    }

    #[test]
    fn segments_and_bins_are_checked() {
        let err = parse(&SEGMENTED.replace("bin = \"4111\"\ncountry = \"US\"\n", "")).unwrap_err();
        assert!(err.contains("a segment must name currency"), "{err}");
        let err = parse(&SEGMENTED.replace("bin = \"555555\"", "bin = \"55\"")).unwrap_err();
        assert!(err.contains("bin must be the first 6 to 8 digits"), "{err}");
        let err = parse(&SEGMENTED.replace("bin = \"555555\"", "bin = \"5555x5\"")).unwrap_err();
        assert!(err.contains("bin must be digits only"), "{err}");
        let err = parse(&SEGMENTED.replace("success = 0.5", "success = 5.0")).unwrap_err();
        assert!(
            err.contains("segment currency=USD\": success is 5"),
            "{err}"
        );
        let err =
            parse(&SEGMENTED.replace("currency = \"USD\"\nsuccess", "curency = \"USD\"\nsuccess"))
                .unwrap_err();
        assert!(err.contains("curency"), "{err}");
    }
}
