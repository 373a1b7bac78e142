//! The result of `paygate simulate` as tables: one row per strategy (success, failures,
//! latency, fees), the traffic share of each channel per time slice, the outage figures, and
//! the bars the adaptive router must clear, each marked PASS or FAIL with its numbers.
//!
//! Owns the arithmetic on finished tallies and the text and Markdown layouts. Must not run
//! anything or write anywhere: it returns a `String` for the caller to print.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use super::Format;
use super::engine::{Drop, REACTION_PAYMENTS, Reaction, Strategy, Tally, Truth, World, percent};

/// Bar: the adaptive router's success rate within this many points of the oracle's.
pub const ORACLE_GAP_POINTS: f64 = 0.5;
/// Bar: after an abrupt drop, the degraded channel's share of the first attempts of the
/// [`REACTION_PAYMENTS`] payments it hits (those sent once an answer could have told) ...
pub const EARLY_SHARE_PERCENT: f64 = 10.0;
/// ... and of the later ones, until the drop ends.
pub const LATER_SHARE_PERCENT: f64 = 3.0;
/// Bar: in a segment-only drop, the most any channel's share of the other segments' first
/// attempts may move (the 30 s before against the drop).
pub const OTHER_SEGMENTS_POINTS: f64 = 2.0;
/// Bar: its lead over round robin at least (best − average channel) minus this many points.
pub const ROUND_ROBIN_SLACK_POINTS: f64 = 1.0;
/// Bar: a dead channel's share of first attempts must fall under this ...
pub const DEAD_SHARE_PERCENT: f64 = 5.0;
/// ... within this many seconds of the outage's start, and stay under it.
pub const DEAD_SETTLE_SECS: f64 = 2.0;

/// A stretch of virtual time during which one channel refuses everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    pub channel: usize,
    pub from_us: u64,
    pub to_us: u64,
}

/// How a strategy coped with one outage, in one-second buckets of first attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct OutageFigures {
    /// The dead channel's share in the outage's first second.
    pub first_second_percent: f64,
    /// From the outage's start to the end of the first second after which its share stays
    /// under [`DEAD_SHARE_PERCENT`] until the outage ends; none if it never does.
    pub settled_after_secs: Option<f64>,
    /// Its highest share in any later second of the outage.
    pub worst_later_percent: f64,
    /// Merchant-visible failures whose last attempt went to it while it was down.
    pub failed_on_it: u64,
}

/// One bar: whether it passed, the figure it judges (to take medians over seeds), and what
/// it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub passed: bool,
    pub figure: f64,
    pub text: String,
}

impl Bar {
    fn new(passed: bool, figure: f64, text: String) -> Self {
        Self {
            passed,
            figure,
            text,
        }
    }

    fn render(&self, format: Format, out: &mut String) {
        let mark = if self.passed { "PASS" } else { "FAIL" };
        let bullet = if format == Format::Markdown { "- " } else { "" };
        let _ = writeln!(out, "{bullet}{mark}  {}", self.text);
    }
}

pub struct Report {
    pub scenario: String,
    pub scenario_file: PathBuf,
    pub description: Option<String>,
    pub routes_file: PathBuf,
    pub requests: u64,
    pub seed: u64,
    pub rate_per_second: f64,
    pub duration_secs: u64,
    pub channel_names: Vec<String>,
    /// Currency of each payment kind, to add fees up by currency.
    pub kind_currencies: Vec<String>,
    /// Each payment kind as "USD card US", and whether any channel treats kinds apart (then
    /// the adaptive router's traffic is shown per kind).
    pub kind_labels: Vec<String>,
    pub segmented: bool,
    pub tallies: Vec<Tally>,
    pub truth: Truth,
    /// Time slices of the traffic table, `[from, to)` seconds.
    pub slices: Vec<(u64, u64)>,
    pub outages: Vec<Outage>,
}

impl Report {
    pub fn new(world: &World<'_>, tallies: Vec<Tally>, truth: Truth) -> Self {
        let duration_secs = world.duration_secs();
        let scenario = world.scenario;
        Self {
            scenario: scenario.name.clone(),
            scenario_file: scenario.file.clone(),
            description: scenario.description.clone(),
            routes_file: world.config.file.clone(),
            requests: world.requests,
            seed: world.seed,
            rate_per_second: scenario.rate_per_second,
            duration_secs,
            channel_names: world
                .config
                .channels
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            kind_currencies: scenario
                .payments
                .iter()
                .map(|p| p.currency.clone())
                .collect(),
            kind_labels: scenario
                .payments
                .iter()
                .map(|p| {
                    let mut label = format!("{} {}", p.currency, p.method);
                    for extra in [&p.country, &p.bin].into_iter().flatten() {
                        label = format!("{label} {extra}");
                    }
                    label
                })
                .collect(),
            segmented: world.models.iter().any(|m| !m.segments.is_empty()),
            tallies,
            truth,
            slices: slices(scenario.slices_secs.as_deref(), duration_secs),
            outages: outages(world, duration_secs * 1_000_000),
        }
    }

    pub fn tally(&self, strategy: Strategy) -> Option<&Tally> {
        self.tallies.iter().find(|t| t.strategy == strategy)
    }

    pub fn outage_figures(&self, tally: &Tally, outage: &Outage) -> OutageFigures {
        let from_sec = outage.from_us / 1_000_000;
        let to_sec = outage.to_us.div_ceil(1_000_000).min(self.duration_secs);
        let shares: Vec<f64> = (from_sec..to_sec)
            .map(|second| {
                let counts = tally.first_attempts_in(second, second + 1);
                percent(counts[outage.channel], counts.iter().sum())
            })
            .collect();
        let settled = (0..shares.len())
            .find(|&j| shares[j..].iter().all(|&share| share < DEAD_SHARE_PERCENT));
        let start_secs = outage.from_us as f64 / 1e6;
        OutageFigures {
            first_second_percent: shares.first().copied().unwrap_or(0.0),
            settled_after_secs: settled.map(|j| (from_sec + j as u64 + 1) as f64 - start_secs),
            worst_later_percent: shares.iter().skip(1).copied().fold(0.0, f64::max),
            failed_on_it: tally.failed_while_down[outage.channel],
        }
    }

    /// The bars, evaluated on the adaptive router's figures.
    pub fn bars(&self) -> Vec<Bar> {
        let (Some(adaptive), Some(oracle), Some(round_robin)) = (
            self.tally(Strategy::Adaptive),
            self.tally(Strategy::Oracle),
            self.tally(Strategy::RoundRobin),
        ) else {
            return Vec::new();
        };
        let (a, o, r) = (
            adaptive.success_percent(),
            oracle.success_percent(),
            round_robin.success_percent(),
        );
        let gap = o - a;
        let needed = self.truth.best_percent - self.truth.mean_percent - ROUND_ROBIN_SLACK_POINTS;
        let mut bars = vec![
            Bar::new(
                gap <= ORACLE_GAP_POINTS,
                gap,
                format!(
                    "adaptive within {ORACLE_GAP_POINTS:.1} point of the oracle: {a:.2}% vs {o:.2}% (gap {gap:.2})"
                ),
            ),
            Bar::new(
                a - r >= needed,
                a - r,
                format!(
                    "adaptive ahead of round robin by at least best - average - {ROUND_ROBIN_SLACK_POINTS:.0} = {:.2} - {:.2} - {ROUND_ROBIN_SLACK_POINTS:.0} = {needed:.2} points: {a:.2}% - {r:.2}% = {:.2}",
                    self.truth.best_percent,
                    self.truth.mean_percent,
                    a - r
                ),
            ),
        ];
        for baseline in [Strategy::Hyperswitch, Strategy::DecisionEngine] {
            if let Some(other) = self.tally(baseline) {
                let b = other.success_percent();
                bars.push(Bar::new(
                    a > b,
                    a - b,
                    format!(
                        "adaptive ahead of {}: {a:.2}% vs {b:.2}% (lead {:.2})",
                        baseline.name(),
                        a - b
                    ),
                ));
            }
        }
        for outage in &self.outages {
            bars.extend(self.outage_bars(adaptive, outage));
        }
        if let Some(reaction) = total_reaction(adaptive) {
            let drops = adaptive.drops.len();
            let early = reaction.informed_early_percent();
            let later = percent(reaction.later_to_it, reaction.later);
            bars.push(Bar::new(
                early < EARLY_SHARE_PERCENT,
                early,
                format!(
                    "after {drops} abrupt drop(s), first attempts to the degraded channel among the first {REACTION_PAYMENTS} payments each hits, once it could have answered: {early:.1}% (under {EARLY_SHARE_PERCENT:.0}%; {:.1}% counting the {} sent before any answer)",
                    percent(reaction.early_to_it, reaction.early),
                    reaction.early_blind
                ),
            ));
            bars.push(Bar::new(
                later < LATER_SHARE_PERCENT,
                later,
                format!(
                    "after {drops} abrupt drop(s), first attempts to the degraded channel from then on: {later:.2}% (under {LATER_SHARE_PERCENT:.0}%)"
                ),
            ));
        }
        for (drop, _) in adaptive.drops.iter().filter(|(d, _)| d.segment.is_some()) {
            let moved = self.other_segments_moved(adaptive, drop);
            bars.push(Bar::new(
                moved < OTHER_SEGMENTS_POINTS,
                moved,
                format!(
                    "drop of {} in {} at {:.0} s: the other segments' traffic moved by at most {moved:.2} points (under {OTHER_SEGMENTS_POINTS:.0})",
                    self.channel_names[drop.channel],
                    drop.segment.as_deref().unwrap_or_default(),
                    drop.from_us as f64 / 1e6
                ),
            ));
        }
        bars
    }

    /// The most any channel's share of the first attempts of the kinds `drop` does not hit
    /// moved: the 30 s before it against its span.
    pub fn other_segments_moved(&self, tally: &Tally, drop: &Drop) -> f64 {
        let (from, to) = (drop.from_us / 1_000_000, drop.to_us.div_ceil(1_000_000));
        let others = |kind: usize| !drop.kinds[kind];
        let shares = |counts: Vec<u64>| -> Vec<f64> {
            let total = counts.iter().sum();
            counts.iter().map(|&c| percent(c, total)).collect()
        };
        let before = shares(tally.first_attempts_of(others, from.saturating_sub(30), from));
        let during = shares(tally.first_attempts_of(others, from, to));
        before
            .iter()
            .zip(&during)
            .map(|(b, d)| (b - d).abs())
            .fold(0.0, f64::max)
    }

    fn reaction_table(&self) -> Table {
        let mut table = Table::new(&[
            "strategy",
            "to it, first 1000 payments",
            "of which before any answer",
            "to it once it could answer",
            "to it from then on",
        ]);
        for tally in &self.tallies {
            let Some(r) = total_reaction(tally) else {
                continue;
            };
            table.row(vec![
                tally.strategy.name().into(),
                format!("{:.1}%", percent(r.early_to_it, r.early)),
                r.early_blind.to_string(),
                format!("{:.1}%", r.informed_early_percent()),
                format!("{:.2}%", percent(r.later_to_it, r.later)),
            ]);
        }
        table
    }

    fn outage_bars(&self, adaptive: &Tally, outage: &Outage) -> [Bar; 2] {
        let name = &self.channel_names[outage.channel];
        let figures = self.outage_figures(adaptive, outage);
        let settled = match figures.settled_after_secs {
            Some(secs) => format!("{secs:.0} s"),
            None => "never".into(),
        };
        [
            Bar::new(
                figures
                    .settled_after_secs
                    .is_some_and(|secs| secs <= DEAD_SETTLE_SECS),
                figures.settled_after_secs.unwrap_or(f64::INFINITY),
                format!(
                    "outage of {name}: its share of first attempts under {DEAD_SHARE_PERCENT:.0}% within {DEAD_SETTLE_SECS:.0} s and after: {settled} (first second {:.1}%, worst later second {:.2}%)",
                    figures.first_second_percent, figures.worst_later_percent
                ),
            ),
            Bar::new(
                figures.failed_on_it == 0,
                figures.failed_on_it as f64,
                format!(
                    "outage of {name}: no merchant-visible failure stranded on it: {}",
                    figures.failed_on_it
                ),
            ),
        ]
    }

    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        self.header(format, &mut out);
        heading(format, "Strategies", &mut out);
        self.summary_table().render(format, &mut out);
        for tally in &self.tallies {
            heading(
                format,
                &format!("Traffic share of first attempts: {}", tally.strategy.name()),
                &mut out,
            );
            self.traffic_table(tally, |_| true).render(format, &mut out);
        }
        if let (true, Some(adaptive)) = (self.segmented, self.tally(Strategy::Adaptive)) {
            for (kind, label) in self.kind_labels.iter().enumerate() {
                heading(
                    format,
                    &format!("Traffic share of first attempts: adaptive, {label} payments"),
                    &mut out,
                );
                self.traffic_table(adaptive, |k| k == kind)
                    .render(format, &mut out);
            }
        }
        if let Some(adaptive) = self.tally(Strategy::Adaptive)
            && !adaptive.drops.is_empty()
        {
            let title = format!(
                "Abrupt drops ({}): first attempts of the payments each hits to the degraded channel",
                adaptive.drops.len()
            );
            heading(format, &title, &mut out);
            self.reaction_table().render(format, &mut out);
        }
        for outage in &self.outages {
            let name = &self.channel_names[outage.channel];
            let title = format!(
                "Outage of {name} from {:.0} s to {:.0} s (1-second buckets of first attempts)",
                outage.from_us as f64 / 1e6,
                outage.to_us as f64 / 1e6
            );
            heading(format, &title, &mut out);
            self.outage_table(outage).render(format, &mut out);
        }
        heading(format, "Bars", &mut out);
        for bar in self.bars() {
            bar.render(format, &mut out);
        }
        out
    }

    fn header(&self, format: Format, out: &mut String) {
        let title = format!(
            "paygate simulate: scenario {:?} ({})",
            self.scenario,
            self.scenario_file.display()
        );
        if format == Format::Markdown {
            let _ = writeln!(out, "## {title}\n");
        } else {
            let _ = writeln!(out, "{title}");
        }
        if let Some(description) = &self.description {
            let _ = writeln!(out, "{description}");
        }
        let _ = writeln!(
            out,
            "routes {}; {} payments at {}/s over {} s of virtual time; seed {}",
            self.routes_file.display(),
            self.requests,
            self.rate_per_second,
            self.duration_secs,
            self.seed
        );
        let _ = writeln!(
            out,
            "true chance of approval, averaged over arrivals (channels that are up): best channel {:.2}%, average channel {:.2}%",
            self.truth.best_percent, self.truth.mean_percent
        );
    }

    fn summary_table(&self) -> Table {
        let mut table = Table::new(&[
            "strategy",
            "success",
            "declined",
            "failed",
            "unroutable",
            "p50 ms",
            "p99 ms",
            "attempts/payment",
            "retries refused",
            "fees (minor units)",
        ]);
        for t in &self.tallies {
            table.row(vec![
                t.strategy.name().into(),
                format!("{:.2}%", t.success_percent()),
                format!("{:.2}%", percent(t.declined, t.payments)),
                t.failed.to_string(),
                t.unroutable.to_string(),
                t.latency_percentile(0.50).to_string(),
                t.latency_percentile(0.99).to_string(),
                format!("{:.3}", t.attempts as f64 / t.payments.max(1) as f64),
                t.retries_refused.to_string(),
                self.fees(t),
            ]);
        }
        table
    }

    /// Fees by currency, "EUR 123, USD 45".
    fn fees(&self, tally: &Tally) -> String {
        let mut by_currency: BTreeMap<&str, u64> = BTreeMap::new();
        for (kind, fee) in tally.fees.iter().enumerate() {
            *by_currency.entry(&self.kind_currencies[kind]).or_default() += fee;
        }
        by_currency
            .iter()
            .map(|(currency, fee)| format!("{currency} {fee}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn traffic_table(&self, tally: &Tally, of: impl Fn(usize) -> bool + Copy) -> Table {
        let mut header = vec!["seconds".to_string()];
        header.extend(self.channel_names.iter().cloned());
        let mut table = Table {
            header,
            rows: Vec::new(),
        };
        for &(from, to) in &self.slices {
            let counts = tally.first_attempts_of(of, from, to);
            let total = counts.iter().sum();
            let mut row = vec![format!("{from}-{to}")];
            row.extend(
                counts
                    .iter()
                    .map(|&count| format!("{:.1}%", percent(count, total))),
            );
            table.row(row);
        }
        table
    }

    fn outage_table(&self, outage: &Outage) -> Table {
        let mut table = Table::new(&[
            "strategy",
            "share in first second",
            "under 5% after",
            "worst later second",
            "failures stranded on it",
        ]);
        for tally in &self.tallies {
            let figures = self.outage_figures(tally, outage);
            table.row(vec![
                tally.strategy.name().into(),
                format!("{:.1}%", figures.first_second_percent),
                figures
                    .settled_after_secs
                    .map_or_else(|| "never".into(), |secs| format!("{secs:.0} s")),
                format!("{:.2}%", figures.worst_later_percent),
                figures.failed_on_it.to_string(),
            ]);
        }
        table
    }
}

/// Several seeds of one scenario: each strategy's median, lowest and highest success, each
/// bar judged on the seed whose figure is the median, then the first seed's full report.
pub fn render_medians(reports: &[Report], format: Format) -> String {
    let mut out = String::new();
    let Some(first) = reports.first() else {
        return out;
    };
    let last_seed = first.seed + reports.len() as u64 - 1;
    let title = format!(
        "paygate simulate: scenario {:?}, seeds {}-{last_seed}: medians",
        first.scenario, first.seed
    );
    if format == Format::Markdown {
        let _ = writeln!(out, "## {title}\n");
    } else {
        let _ = writeln!(out, "{title}");
    }
    let mut table = Table::new(&[
        "strategy",
        "median success",
        "lowest",
        "highest",
        "median p99 ms",
    ]);
    for tally in &first.tallies {
        let strategy = tally.strategy;
        let of = |figure: &dyn Fn(&Tally) -> f64| -> Vec<f64> {
            let mut figures: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.tally(strategy).map(figure))
                .collect();
            figures.sort_by(f64::total_cmp);
            figures
        };
        let success = of(&|t| t.success_percent());
        let p99 = of(&|t| t.latency_percentile(0.99) as f64);
        table.row(vec![
            strategy.name().into(),
            format!("{:.2}%", median(&success)),
            format!("{:.2}%", success.first().copied().unwrap_or_default()),
            format!("{:.2}%", success.last().copied().unwrap_or_default()),
            format!("{:.0}", median(&p99)),
        ]);
    }
    table.render(format, &mut out);
    heading(format, "Bars: the median seed of each", &mut out);
    let bars: Vec<Vec<Bar>> = reports.iter().map(Report::bars).collect();
    for i in 0..bars[0].len() {
        let mut seeds: Vec<(f64, u64, &Bar)> = bars
            .iter()
            .zip(reports)
            .filter_map(|(bars, report)| bars.get(i).map(|bar| (bar.figure, report.seed, bar)))
            .collect();
        seeds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, seed, bar) = seeds[(seeds.len() - 1) / 2];
        let passed = seeds.iter().filter(|(_, _, bar)| bar.passed).count();
        Bar::new(
            bar.passed,
            bar.figure,
            format!(
                "{} [seed {seed}; passed in {passed} of {} seeds]",
                bar.text,
                seeds.len()
            ),
        )
        .render(format, &mut out);
    }
    out.push('\n');
    out.push_str(&first.render(format));
    out
}

/// The middle of sorted figures (the lower middle for an even count).
fn median(sorted: &[f64]) -> f64 {
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// The reactions to every drop of the run, added up; none without drops.
fn total_reaction(tally: &Tally) -> Option<Reaction> {
    tally.drops.iter().map(|(_, r)| r).fold(None, |sum, r| {
        let mut sum = sum.unwrap_or_default();
        sum.add(r);
        Some(sum)
    })
}

/// `[from, to)` second ranges from the scenario's slice starts, or ten equal slices.
fn slices(starts: Option<&[u64]>, duration_secs: u64) -> Vec<(u64, u64)> {
    let starts: Vec<u64> = match starts {
        Some(starts) => starts
            .iter()
            .copied()
            .filter(|&s| s < duration_secs)
            .collect(),
        None => {
            let step = duration_secs.div_ceil(10).max(1);
            (0..duration_secs).step_by(step as usize).collect()
        }
    };
    starts
        .iter()
        .enumerate()
        .map(|(i, &from)| (from, starts.get(i + 1).copied().unwrap_or(duration_secs)))
        .collect()
}

/// Every stretch in which a channel refuses everything and that begins within the run: a
/// phase that steps `unavailable` to 1, until a later phase names `unavailable` again.
fn outages(world: &World<'_>, run_end_us: u64) -> Vec<Outage> {
    let mut found = Vec::new();
    for (channel, model) in world.models.iter().enumerate() {
        for (i, phase) in model.phases.iter().enumerate() {
            let down = phase.to_us.is_none() && phase.unavailable.is_some_and(|u| u >= 1.0);
            if !down || phase.from_us >= run_end_us {
                continue;
            }
            let to_us = model.phases[i + 1..]
                .iter()
                .find(|later| later.unavailable.is_some())
                .map_or(run_end_us, |later| later.from_us);
            found.push(Outage {
                channel,
                from_us: phase.from_us,
                to_us: to_us.min(run_end_us),
            });
        }
    }
    found
}

fn heading(format: Format, title: &str, out: &mut String) {
    match format {
        Format::Text => {
            let _ = writeln!(out, "\n{title}:");
        }
        Format::Markdown => {
            let _ = writeln!(out, "\n### {title}\n");
        }
    }
}

/// Rows of cells; the first column reads left-aligned, the figures right-aligned.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, format: Format, out: &mut String) {
        match format {
            Format::Text => self.text(out),
            Format::Markdown => self.markdown(out),
        }
    }

    fn text(&self, out: &mut String) {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, &width))| match column {
                    0 => format!("{cell:<width$}"),
                    _ => format!("{cell:>width$}"),
                })
                .collect();
            let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
        }
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let rule: Vec<&str> = (0..self.header.len())
            .map(|column| if column == 0 { "---" } else { "---:" })
            .collect();
        let _ = writeln!(out, "| {} |", rule.join(" | "));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_default_to_ten_and_follow_the_scenario() {
        assert_eq!(slices(None, 100).len(), 10);
        assert_eq!(slices(None, 100)[9], (90, 100));
        assert_eq!(
            slices(None, 7),
            (0..7).map(|s| (s, s + 1)).collect::<Vec<_>>()
        );
        assert_eq!(
            slices(Some(&[0, 30, 90, 500]), 200),
            vec![(0, 30), (30, 90), (90, 200)]
        );
    }

    #[test]
    fn tables_align_in_text_and_pipe_in_markdown() {
        let mut table = Table::new(&["strategy", "success"]);
        table.row(vec!["oracle".into(), "91.50%".into()]);
        let mut text = String::new();
        table.render(Format::Text, &mut text);
        assert_eq!(text, "  strategy  success\n  oracle     91.50%\n");
        let mut markdown = String::new();
        table.render(Format::Markdown, &mut markdown);
        assert_eq!(
            markdown,
            "| strategy | success |\n| --- | ---: |\n| oracle | 91.50% |\n"
        );
    }
}
