//! The discrete-event loop of `paygate simulate`: payments arrive on a virtual clock, each
//! attempt answers after a sampled latency, and the strategy under test learns only from
//! answers that have arrived, as it would in production.
//!
//! Events are arrivals (payment i at i / rate) and answers (an attempt's start plus its
//! latency) in a binary heap, so attempts of different payments interleave and feedback is
//! delayed. Before each event the router's clock moves to the event's time, and the real
//! router's sweep runs once per virtual second. An answer is handled like the payment handler
//! (`api/payments.rs`) handles one: observed into the live scores (latency only for answered
//! calls), then `routing::verdict` says final or fail over, and a failover needs the retry
//! budget. A payment that runs out of channels or budget is a merchant-visible failure.
//!
//! Channel randomness is keyed by (seed, payment, channel), not drawn from one stream, so a
//! payment sent to the same channel at the same moment meets the same fate under every
//! strategy (common random numbers): the strategies are compared on the same luck, and the
//! differences in the report come from routing. Must not print or read files.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::{SmallRng, StdRng};
use rand::{RngExt, SeedableRng};

use super::baseline;
use super::scenario::{ChannelModel, Conditions, Phase, Scenario, conditions_at};
use crate::config::{ChannelId, Config};
use crate::routing::{
    self, ChannelScore, Clock, Observation, PaymentFacts, Router, RoutingError, Verdict,
};
use crate::sim::Latency;
use crate::store::{Outcome, PaymentStatus};

/// Payment latencies are counted per millisecond up to one minute, beyond it in one bucket:
/// exact percentiles in 480 KB per strategy, whatever the number of payments.
pub const MAX_LATENCY_MS: usize = 60_000;

/// Random lane of a payment's own draws (its kind and amount); channel lanes follow.
const PAYMENT_LANE: u64 = 0;
/// A step down of at least this much chance of approval (declines, not refusals) is an
/// abrupt drop whose reaction the report measures ...
const DROP_POINTS: f64 = 0.2;
/// ... over this many first attempts of the payments it hits, then until it ends.
pub const REACTION_PAYMENTS: u64 = 1_000;

/// How the channels of a payment are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The real router: `routing::decide` on live scores, with ejection and sweeps.
    Adaptive,
    RoundRobin,
    Priority,
    /// Knows each channel's true chance of approval at every moment.
    Oracle,
    /// Hyperswitch-style success-rate routing (see `baseline`).
    Hyperswitch,
    /// decision-engine-style success-rate routing (see `baseline`).
    DecisionEngine,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Adaptive,
        Strategy::RoundRobin,
        Strategy::Priority,
        Strategy::Oracle,
        Strategy::Hyperswitch,
        Strategy::DecisionEngine,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::RoundRobin => "round_robin",
            Self::Priority => "priority",
            Self::Oracle => "oracle",
            Self::Hyperswitch => "hyperswitch",
            Self::DecisionEngine => "decision_engine",
        }
    }

    fn learner(self) -> Option<baseline::Learner> {
        match self {
            Self::Hyperswitch => Some(baseline::Learner::Hyperswitch),
            Self::DecisionEngine => Some(baseline::Learner::DecisionEngine),
            _ => None,
        }
    }
}

/// What every run shares: the routes, the scenario, the model each channel follows.
pub struct World<'a> {
    pub config: &'a Config,
    pub scenario: &'a Scenario,
    /// The model of each channel, by channel id.
    pub models: Vec<&'a ChannelModel>,
    pub requests: u64,
    pub seed: u64,
    /// Running sum of the mix's shares, to draw a payment kind with one random number.
    cumulative_shares: Vec<u64>,
}

impl<'a> World<'a> {
    /// `models[id]` must describe channel `id` of `config`.
    pub fn new(
        config: &'a Config,
        scenario: &'a Scenario,
        models: Vec<&'a ChannelModel>,
        requests: u64,
        seed: u64,
    ) -> Self {
        let cumulative_shares = scenario
            .payments
            .iter()
            .scan(0u64, |sum, kind| {
                *sum += u64::from(kind.share);
                Some(*sum)
            })
            .collect();
        Self {
            config,
            scenario,
            models,
            requests,
            seed,
            cumulative_shares,
        }
    }

    /// When payment `number` arrives, in microseconds of virtual time.
    pub fn arrival_us(&self, number: u64) -> u64 {
        (number as f64 * 1e6 / self.scenario.rate_per_second) as u64
    }

    /// Virtual time covered by the arrivals, in whole seconds (rounded up).
    pub fn duration_secs(&self) -> u64 {
        self.arrival_us(self.requests).div_ceil(1_000_000).max(1)
    }

    /// The kind (index into the mix) and amount of payment `number`.
    pub fn payment(&self, number: u64) -> (usize, u64) {
        let mut rng = self.draws(number, PAYMENT_LANE);
        let total = self.cumulative_shares.last().copied().unwrap_or(1).max(1);
        let ticket = rng.random_range(0..total);
        let kind = self.cumulative_shares.partition_point(|&sum| sum <= ticket);
        let kind = kind.min(self.scenario.payments.len().saturating_sub(1));
        let entry = &self.scenario.payments[kind];
        let amount = rng.random_range(entry.min_amount..=entry.max_amount.max(entry.min_amount));
        (kind, amount)
    }

    /// The conditions a payment of mix entry `kind` meets on `channel` at `now_us`.
    pub fn conditions(&self, channel: ChannelId, kind: usize, now_us: u64) -> Conditions {
        self.models[channel].at_for(now_us, &self.scenario.payments[kind])
    }

    /// Every abrupt drop of approvals that begins within the run: a step phase of a channel
    /// or of one of its segments that lowers the chance of approval by [`DROP_POINTS`] or
    /// more without refusing everything (that is an outage), until the next phase of the
    /// same timeline.
    pub fn drops(&self) -> Vec<Drop> {
        let run_end_us = self.duration_secs() * 1_000_000;
        let kinds = &self.scenario.payments;
        let mut found = Vec::new();
        for (channel, model) in self.models.iter().enumerate() {
            let owner = |kind| model.segments.iter().position(|s| s.matches.matches(kind));
            let mut timelines = vec![(None, model.base, &model.phases)];
            for (i, segment) in model.segments.iter().enumerate() {
                timelines.push((Some(i), segment.base, &segment.phases));
            }
            for (segment, base, phases) in timelines {
                let hit: Vec<bool> = kinds.iter().map(|kind| owner(kind) == segment).collect();
                if !hit.contains(&true) {
                    continue;
                }
                found.extend(
                    steps_down(base, phases, run_end_us).map(|(from_us, to_us)| Drop {
                        channel,
                        from_us,
                        to_us,
                        segment: segment.map(|i| model.segments[i].matches.label()),
                        kinds: hit.clone(),
                    }),
                );
            }
        }
        found
    }

    /// The routing facts of a payment of mix entry `kind`.
    fn facts(&self, kind: usize, amount: u64) -> PaymentFacts<'a> {
        let entry = &self.scenario.payments[kind];
        PaymentFacts {
            merchant: &entry.merchant,
            currency: &entry.currency,
            method: &entry.method,
            country: entry.country.as_deref(),
            amount,
        }
    }

    /// A generator private to (seed, payment, lane), the same in every run.
    fn draws(&self, payment: u64, lane: u64) -> SmallRng {
        SmallRng::seed_from_u64(mix(
            self.seed ^ mix(payment ^ lane.wrapping_mul(0xD6E8_FEB8_6659_FD93))
        ))
    }
}

/// The `[from, to)` spans of the step phases of one timeline that lower the chance of
/// approval by [`DROP_POINTS`] or more and refuse less than everything.
fn steps_down(
    base: Conditions,
    phases: &[Phase],
    run_end_us: u64,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    phases.iter().enumerate().filter_map(move |(i, phase)| {
        if phase.to_us.is_some() || phase.from_us >= run_end_us || phase.from_us == 0 {
            return None;
        }
        let before = conditions_at(base, phases, phase.from_us - 1);
        let after = conditions_at(base, phases, phase.from_us);
        let dropped = before.effective_success() - after.effective_success() >= DROP_POINTS;
        let to_us = phases.get(i + 1).map_or(run_end_us, |next| next.from_us);
        (dropped && after.unavailable < 1.0).then_some((phase.from_us, to_us.min(run_end_us)))
    })
}

/// An abrupt drop of one channel's approvals for some payment kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct Drop {
    pub channel: ChannelId,
    pub from_us: u64,
    pub to_us: u64,
    /// The segment's keys; none for the whole channel.
    pub segment: Option<String>,
    /// Which payment kinds (mix entries) it hits.
    pub kinds: Vec<bool>,
}

/// How a strategy reacted to one [`Drop`], counted in the first attempts of the payments it
/// hits that arrived after it began.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reaction {
    /// Among the first [`REACTION_PAYMENTS`]: how many, how many went to the channel, and
    /// how many of those were sent before any answer to a call sent after the drop had come
    /// back from it (no router can know of the drop before then).
    pub early: u64,
    pub early_to_it: u64,
    pub early_blind: u64,
    /// Of the first [`REACTION_PAYMENTS`], those that arrived once such an answer was in.
    pub early_informed: u64,
    /// From then on until the drop ends.
    pub later: u64,
    pub later_to_it: u64,
    informed: bool,
}

impl Reaction {
    pub fn add(&mut self, other: &Reaction) {
        self.early += other.early;
        self.early_to_it += other.early_to_it;
        self.early_blind += other.early_blind;
        self.early_informed += other.early_informed;
        self.later += other.later;
        self.later_to_it += other.later_to_it;
    }

    /// The channel's share of the early first attempts sent once it could have answered.
    pub fn informed_early_percent(&self) -> f64 {
        percent(self.early_to_it - self.early_blind, self.early_informed)
    }
}

/// MurmurHash3's 64-bit finalizer: neighbouring inputs give unrelated outputs, so the seeds of
/// payment i and i + 1 are never close (close seeds could give overlapping streams).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

/// What one strategy achieved over the run.
#[derive(Debug, Clone)]
pub struct Tally {
    pub strategy: Strategy,
    pub channels: usize,
    pub payments: u64,
    pub succeeded: u64,
    pub declined: u64,
    pub pending: u64,
    /// Merchant-visible failures: every channel refused, or the budget refused a failover.
    pub failed: u64,
    /// Payments no rule or channel could take (422).
    pub unroutable: u64,
    pub attempts: u64,
    pub retries_refused: u64,
    /// Payments by total latency in ms (all attempts); the last bucket holds the longer ones.
    pub latency_ms: Vec<u64>,
    /// Fees of succeeded payments in minor units, by payment kind (so by currency).
    pub fees: Vec<u64>,
    /// Failures whose last attempt went to a channel, by channel.
    pub failed_at: Vec<u64>,
    /// Failures whose last attempt went to a channel that was down at the time, by channel.
    pub failed_while_down: Vec<u64>,
    /// First attempts by second of virtual time, payment kind and channel:
    /// `[(second * kinds + kind) * channels + channel]`.
    pub first_attempts: Vec<u32>,
    pub kinds: usize,
    /// The drops of [`World::drops`] and how this strategy reacted to each.
    pub drops: Vec<(Drop, Reaction)>,
}

impl Tally {
    fn new(strategy: Strategy, world: &World<'_>) -> Self {
        let channels = world.config.channels.len();
        let seconds = world.duration_secs() as usize;
        let kinds = world.scenario.payments.len();
        Self {
            strategy,
            channels,
            payments: 0,
            succeeded: 0,
            declined: 0,
            pending: 0,
            failed: 0,
            unroutable: 0,
            attempts: 0,
            retries_refused: 0,
            latency_ms: vec![0; MAX_LATENCY_MS + 1],
            fees: vec![0; world.scenario.payments.len()],
            failed_at: vec![0; channels],
            failed_while_down: vec![0; channels],
            first_attempts: vec![0; seconds * kinds * channels],
            kinds,
            drops: world
                .drops()
                .into_iter()
                .map(|drop| (drop, Reaction::default()))
                .collect(),
        }
    }

    /// Succeeded payments per payment, in percent.
    pub fn success_percent(&self) -> f64 {
        percent(self.succeeded, self.payments)
    }

    /// The latency (ms) under which a share `q` of the finished payments answered.
    pub fn latency_percentile(&self, q: f64) -> u64 {
        let finished: u64 = self.latency_ms.iter().sum();
        let rank = ((q * finished as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, &count) in self.latency_ms.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return ms as u64;
            }
        }
        MAX_LATENCY_MS as u64
    }

    /// First attempts per channel over seconds `from..to` of virtual time.
    pub fn first_attempts_in(&self, from: u64, to: u64) -> Vec<u64> {
        self.first_attempts_of(|_| true, from, to)
    }

    /// First attempts per channel over seconds `from..to`, of the payment kinds `of` takes.
    pub fn first_attempts_of(&self, of: impl Fn(usize) -> bool, from: u64, to: u64) -> Vec<u64> {
        let mut counts = vec![0u64; self.channels];
        let row = self.kinds * self.channels;
        let seconds = (self.first_attempts.len() / row.max(1)) as u64;
        for second in from..to.min(seconds) {
            for kind in (0..self.kinds).filter(|&kind| of(kind)) {
                let at = (second as usize * self.kinds + kind) * self.channels;
                for (channel, count) in counts.iter_mut().enumerate() {
                    *count += u64::from(self.first_attempts[at + channel]);
                }
            }
        }
        counts
    }

    fn record_first_attempt(&mut self, at_us: u64, kind: usize, channel: ChannelId) {
        let index = ((at_us / 1_000_000) as usize * self.kinds + kind) * self.channels + channel;
        if let Some(count) = self.first_attempts.get_mut(index) {
            *count += 1;
        }
        for (drop, reaction) in &mut self.drops {
            if at_us < drop.from_us || at_us >= drop.to_us || !drop.kinds[kind] {
                continue;
            }
            let to_it = u64::from(channel == drop.channel);
            if reaction.early < REACTION_PAYMENTS {
                reaction.early += 1;
                reaction.early_to_it += to_it;
                reaction.early_blind += to_it * u64::from(!reaction.informed);
                reaction.early_informed += u64::from(reaction.informed);
            } else {
                reaction.later += 1;
                reaction.later_to_it += to_it;
            }
        }
    }

    /// An answer from `channel` to a call sent at `sent_us` for a payment of `kind`: once
    /// one sent after a drop comes back, the router can know of it.
    fn record_answer(&mut self, sent_us: u64, kind: usize, channel: ChannelId) {
        for (drop, reaction) in &mut self.drops {
            if channel == drop.channel && sent_us >= drop.from_us && drop.kinds[kind] {
                reaction.informed = true;
            }
        }
    }
}

/// `part / whole` in percent; 0 for an empty whole.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / whole as f64
}

/// The true chances of approval averaged over the arrivals: of the best eligible channel at
/// each moment, and of an eligible channel picked at random. Their gap is what routing can
/// win over blind spreading. A channel that refuses everything at that moment is left out:
/// every strategy fails its payments over, so it is never where a payment ends (counting it
/// as 0% would ask for more than even the oracle can win over round robin).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    pub best_percent: f64,
    pub mean_percent: f64,
}

pub fn truth(world: &World<'_>) -> Truth {
    let (mut best, mut mean, mut counted) = (0.0, 0.0, 0u64);
    for number in 0..world.requests {
        let (kind, amount) = world.payment(number);
        let Ok((_, eligible)) = baseline::eligible(world.config, &world.facts(kind, amount)) else {
            continue;
        };
        let at = world.arrival_us(number);
        let chances: Vec<f64> = eligible
            .iter()
            .map(|&id| world.conditions(id, kind, at))
            .filter(|conditions| conditions.unavailable < 1.0)
            .map(|conditions| conditions.effective_success())
            .collect();
        counted += 1;
        if chances.is_empty() {
            continue;
        }
        best += chances.iter().copied().fold(0.0, f64::max);
        mean += chances.iter().sum::<f64>() / chances.len() as f64;
    }
    let average = |sum: f64| {
        if counted == 0 {
            0.0
        } else {
            sum * 100.0 / counted as f64
        }
    };
    Truth {
        best_percent: average(best),
        mean_percent: average(mean),
    }
}

/// A payment between its arrival and its final answer.
#[derive(Debug)]
struct InFlight {
    number: u64,
    kind: usize,
    amount: u64,
    segment: u64,
    arrived_us: u64,
    order: Vec<ChannelId>,
    /// Index in `order` of the attempt under way.
    tried: usize,
    /// Whether the channel of the attempt under way was down when it was sent.
    sent_to_dead: bool,
}

/// An attempt's answer, due at `at_us`.
#[derive(Debug)]
struct Answer {
    at_us: u64,
    /// Tie-break in sending order, so that equal times replay identically.
    seq: u64,
    channel: ChannelId,
    outcome: Outcome,
    latency: Duration,
    payment: InFlight,
}

impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}

impl Eq for Answer {}

impl PartialOrd for Answer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Answer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// Runs every payment of `world` through `strategy`.
pub fn run(world: &World<'_>, strategy: Strategy) -> Tally {
    let mut run = Run::new(world, strategy);
    run.go();
    run.tally
}

/// One strategy's pass over the arrivals, with its own router, budget and clock.
struct Run<'w, 'a> {
    world: &'w World<'a>,
    strategy: Strategy,
    router: Router,
    scores: Vec<Arc<ChannelScore>>,
    /// Handed to `routing::decide` (Thompson draws, probes): seeded, so runs repeat.
    rng: StdRng,
    /// Round robin's next turn, by rule.
    turns: Vec<u64>,
    /// The learned baselines' memory.
    learned: Option<baseline::SuccessRouter>,
    answers: BinaryHeap<Reverse<Answer>>,
    seq: u64,
    next_sweep_ms: u64,
    tally: Tally,
}

impl<'w, 'a> Run<'w, 'a> {
    fn new(world: &'w World<'a>, strategy: Strategy) -> Self {
        let router = Router::new(Clock::manual());
        let scores = router.scores_for(world.config);
        Self {
            world,
            strategy,
            router,
            scores,
            rng: StdRng::seed_from_u64(world.seed),
            turns: vec![0; world.config.rules.len()],
            learned: strategy.learner().map(baseline::SuccessRouter::new),
            answers: BinaryHeap::new(),
            seq: 0,
            next_sweep_ms: 1_000,
            tally: Tally::new(strategy, world),
        }
    }

    fn go(&mut self) {
        let mut next = 0;
        loop {
            let arrival = (next < self.world.requests).then(|| self.world.arrival_us(next));
            let answer_due = self.answers.peek().map(|answer| answer.0.at_us);
            // An answer due at the same moment as an arrival is known before it is routed.
            let answer_first = match (arrival, answer_due) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(arrival), Some(due)) => due <= arrival,
            };
            if answer_first {
                if let Some(Reverse(answer)) = self.answers.pop() {
                    self.tick(answer.at_us);
                    self.on_answer(answer);
                }
            } else if let Some(at_us) = arrival {
                self.tick(at_us);
                self.on_arrival(next, at_us);
                next += 1;
            } else {
                break;
            }
        }
    }

    /// Moves the clock and runs the router's once-a-second sweep when a second has passed.
    fn tick(&mut self, now_us: u64) {
        self.router.clock.advance_to(now_us / 1_000);
        let now_ms = self.router.now_ms();
        if now_ms < self.next_sweep_ms {
            return;
        }
        if self.strategy == Strategy::Adaptive {
            self.router.sweep(self.world.config, &self.scores);
        }
        self.next_sweep_ms = (now_ms / 1_000 + 1) * 1_000;
    }

    fn on_arrival(&mut self, number: u64, at_us: u64) {
        let (kind, amount) = self.world.payment(number);
        let facts = self.world.facts(kind, amount);
        self.tally.payments += 1;
        let Ok(order) = self.order(kind, &facts, at_us) else {
            self.tally.unroutable += 1;
            return;
        };
        self.router.budget.on_payment(self.router.now_ms());
        let payment = InFlight {
            number,
            kind,
            amount,
            segment: routing::segment_key(facts.method, facts.currency),
            arrived_us: at_us,
            order,
            tried: 0,
            sent_to_dead: false,
        };
        self.attempt(payment, at_us);
    }

    fn order(
        &mut self,
        kind: usize,
        facts: &PaymentFacts<'_>,
        at_us: u64,
    ) -> Result<Vec<ChannelId>, RoutingError> {
        let config = self.world.config;
        match self.strategy {
            Strategy::Adaptive => {
                let now_ms = self.router.now_ms();
                routing::decide(config, &self.scores, facts, now_ms, &mut self.rng)
                    .map(|decision| decision.order)
            }
            Strategy::RoundRobin => {
                let (rule, eligible) = baseline::eligible(config, facts)?;
                let turn = self.turns[rule];
                self.turns[rule] += 1;
                Ok(baseline::round_robin(eligible, turn))
            }
            Strategy::Priority => {
                baseline::eligible(config, facts).map(|(_, eligible)| baseline::priority(eligible))
            }
            Strategy::Oracle => {
                let world = self.world;
                baseline::eligible(config, facts).map(|(_, eligible)| {
                    baseline::oracle(eligible, |id| {
                        world.conditions(id, kind, at_us).effective_success()
                    })
                })
            }
            Strategy::Hyperswitch | Strategy::DecisionEngine => {
                let (_, eligible) = baseline::eligible(config, facts)?;
                let segment = routing::segment_key(facts.method, facts.currency);
                Ok(match &self.learned {
                    Some(learned) => learned.order(segment, eligible, &mut self.rng),
                    None => eligible,
                })
            }
        }
    }

    /// Sends the payment to the next channel of its order: samples that channel's answer
    /// from its conditions now, and schedules it.
    fn attempt(&mut self, mut payment: InFlight, at_us: u64) {
        let channel = payment.order[payment.tried];
        let model = self.world.models[channel];
        let conditions = self.world.conditions(channel, payment.kind, at_us);
        let mut rng = self.world.draws(payment.number, channel as u64 + 1);
        let refused = rng.random::<f64>() < conditions.unavailable;
        let approved = rng.random::<f64>() < conditions.success;
        let latency = Latency::Lognormal {
            p50_ms: conditions.p50_ms.round() as u64,
            p99_ms: conditions.p99_ms.round() as u64,
        }
        .sample(&mut rng);
        let (outcome, latency) = match (refused, approved) {
            (true, _) => (
                Outcome::Unavailable,
                Duration::from_micros(model.unavailable_latency_us),
            ),
            (false, true) => (Outcome::Succeeded, latency),
            (false, false) => (Outcome::Declined, latency),
        };
        if payment.tried == 0 {
            self.tally
                .record_first_attempt(at_us, payment.kind, channel);
        }
        self.tally.attempts += 1;
        payment.sent_to_dead = conditions.unavailable >= 1.0;
        self.seq += 1;
        self.answers.push(Reverse(Answer {
            at_us: at_us + latency.as_micros() as u64,
            seq: self.seq,
            channel,
            outcome,
            latency,
            payment,
        }));
    }

    fn on_answer(&mut self, answer: Answer) {
        let Answer {
            at_us,
            channel,
            outcome,
            latency,
            payment,
            ..
        } = answer;
        let sent_us = at_us.saturating_sub(latency.as_micros() as u64);
        self.tally.record_answer(sent_us, payment.kind, channel);
        if self.strategy == Strategy::Adaptive {
            self.observe(channel, payment.segment, outcome, latency);
        }
        if let Some(learned) = &mut self.learned
            && outcome != Outcome::Pending
        {
            learned.observe(payment.segment, channel, outcome == Outcome::Succeeded);
        }
        // The simulated PSPs decline with codes no channel lists as retryable.
        match routing::verdict(outcome, false) {
            Verdict::Final(status) => self.finish(&payment, at_us, status, channel),
            Verdict::FailOver => self.fail_over(payment, at_us, channel),
        }
    }

    /// Teaches the live scores what the answer taught, as the payment handler does.
    fn observe(&self, channel: ChannelId, segment: u64, outcome: Outcome, latency: Duration) {
        let Some(observation) = Observation::from_outcome(outcome) else {
            return;
        };
        let answered = observation != Observation::Fault;
        self.scores[channel].observe(
            self.router.now_ms(),
            segment,
            observation,
            answered.then_some(latency),
            &self.world.config.routing.ejection,
        );
    }

    fn fail_over(&mut self, mut payment: InFlight, at_us: u64, channel: ChannelId) {
        payment.tried += 1;
        if payment.tried >= payment.order.len() {
            return self.finish(&payment, at_us, PaymentStatus::Failed, channel);
        }
        let budget = &self.world.config.routing.retry_budget;
        if !self.router.budget.try_retry(self.router.now_ms(), budget) {
            self.tally.retries_refused += 1;
            return self.finish(&payment, at_us, PaymentStatus::Failed, channel);
        }
        self.attempt(payment, at_us);
    }

    fn finish(&mut self, payment: &InFlight, at_us: u64, status: PaymentStatus, last: ChannelId) {
        let tally = &mut self.tally;
        let elapsed_ms = (at_us - payment.arrived_us).div_ceil(1_000) as usize;
        tally.latency_ms[elapsed_ms.min(MAX_LATENCY_MS)] += 1;
        match status {
            PaymentStatus::Succeeded => {
                tally.succeeded += 1;
                tally.fees[payment.kind] += self.world.config.channels[last].fee.of(payment.amount);
            }
            PaymentStatus::Declined => tally.declined += 1,
            PaymentStatus::Pending => tally.pending += 1,
            PaymentStatus::Failed => {
                tally.failed += 1;
                tally.failed_at[last] += 1;
                if payment.sent_to_dead {
                    tally.failed_while_down[last] += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ROUTES: &str = r#"
[[merchants]]
id = "shop"
api_key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"

[[channels]]
name = "a"
url = "http://127.0.0.1:9"
[[channels]]
name = "b"
url = "http://127.0.0.1:9"
[[channels]]
name = "c"
url = "http://127.0.0.1:9"

[[rules]]
name = "all"
channels = ["a", "b", "c"]
strategy = "adaptive"
"#;

    const SCENARIO: &str = r#"
name = "small outage"
rate_per_second = 500

[[payments]]
merchant = "shop"
currency = "EUR"
method = "card"
amount = { min = 100, max = 5000 }

[[channels]]
name = "a"
success = 0.95
latency_ms = { p50 = 100, p99 = 300 }
[[channels.phases]]
from_secs = 10
unavailable = 1.0

[[channels]]
name = "b"
success = 0.85
latency_ms = { p50 = 100, p99 = 300 }

[[channels]]
name = "c"
success = 0.6
latency_ms = { p50 = 100, p99 = 300 }
"#;

    fn fixture() -> (Config, Scenario) {
        let config = Config::parse(Path::new("routes.toml"), ROUTES).unwrap();
        let scenario = Scenario::parse(Path::new("s.toml"), SCENARIO).unwrap();
        (config, scenario)
    }

    fn world<'a>(config: &'a Config, scenario: &'a Scenario, requests: u64) -> World<'a> {
        let models = config
            .channels
            .iter()
            .map(|c| scenario.channel(&c.name).unwrap())
            .collect();
        World::new(config, scenario, models, requests, 7)
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let (config, scenario) = fixture();
        let world = world(&config, &scenario, 3_000);
        let first = run(&world, Strategy::Adaptive);
        let second = run(&world, Strategy::Adaptive);
        assert_eq!(first.succeeded, second.succeeded);
        assert_eq!(first.first_attempts, second.first_attempts);
        assert_eq!(first.latency_ms, second.latency_ms);
    }

    #[test]
    fn every_payment_is_accounted_for() {
        let (config, scenario) = fixture();
        let world = world(&config, &scenario, 4_000);
        for strategy in Strategy::ALL {
            let t = run(&world, strategy);
            let finished = t.succeeded + t.declined + t.pending + t.failed + t.unroutable;
            assert_eq!((t.payments, finished), (4_000, 4_000), "{strategy:?}");
            assert_eq!(t.latency_ms.iter().sum::<u64>(), 4_000 - t.unroutable);
            let firsts: u64 = t.first_attempts.iter().map(|&n| u64::from(n)).sum();
            assert_eq!(firsts, 4_000);
        }
    }

    #[test]
    fn the_oracle_beats_round_robin_and_shuns_the_dead_channel() {
        let (config, scenario) = fixture();
        // 40 s at 500/s: the outage of `a` starts at 10 s.
        let world = world(&config, &scenario, 20_000);
        let oracle = run(&world, Strategy::Oracle);
        let round_robin = run(&world, Strategy::RoundRobin);
        let adaptive = run(&world, Strategy::Adaptive);
        assert!(oracle.success_percent() > round_robin.success_percent() + 5.0);
        assert!(adaptive.success_percent() > round_robin.success_percent());
        // Before the outage the oracle sends everything to a, after it nothing.
        assert_eq!(oracle.first_attempts_in(0, 10), vec![5_000, 0, 0]);
        assert_eq!(oracle.first_attempts_in(10, 40)[0], 0);
        // The real router stops sending to a within the first second of the outage.
        let after = adaptive.first_attempts_in(11, 40);
        let share = percent(after[0], after.iter().sum());
        assert!(share < 5.0, "{after:?}");
        // Refusals fail over: no failure is stranded on the dead channel.
        assert_eq!(oracle.failed_while_down[0], 0);
        assert_eq!(adaptive.failed_while_down[0], 0);
        // The dead channel is left out of the truth while it is down.
        let truth = truth(&world);
        assert!((truth.best_percent - (0.95 * 0.25 + 0.85 * 0.75) * 100.0).abs() < 0.01);
        let mean = (0.80 * 0.25 + 0.725 * 0.75) * 100.0;
        assert!((truth.mean_percent - mean).abs() < 0.01, "{truth:?}");
    }

    #[test]
    fn priority_keeps_sending_to_the_dead_channel_and_fails_over() {
        let (config, scenario) = fixture();
        let world = world(&config, &scenario, 20_000);
        let priority = run(&world, Strategy::Priority);
        assert_eq!(priority.first_attempts_in(10, 40), vec![15_000, 0, 0]);
        // Every payment of the outage needs a failover; the budget (20%) refuses most.
        assert!(
            priority.retries_refused > 10_000,
            "{}",
            priority.retries_refused
        );
        assert_eq!(priority.failed, priority.failed_at[0]);
        assert!(priority.latency_percentile(0.5) >= 5);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let (config, scenario) = fixture();
        let world = world(&config, &scenario, 1);
        let mut tally = Tally::new(Strategy::Oracle, &world);
        tally.latency_ms[10] = 50;
        tally.latency_ms[20] = 49;
        tally.latency_ms[900] = 1;
        assert_eq!(tally.latency_percentile(0.5), 10);
        assert_eq!(tally.latency_percentile(0.51), 20);
        assert_eq!(tally.latency_percentile(0.99), 20);
        assert_eq!(tally.latency_percentile(1.0), 900);
    }

    #[test]
    fn drops_are_steps_down_of_a_channel_or_a_segment_and_reactions_are_counted() {
        let config = Config::parse(Path::new("routes.toml"), ROUTES).unwrap();
        let text = SCENARIO
            .replace(
                "[[channels.phases]]\nfrom_secs = 10\nunavailable = 1.0",
                "[[channels.segments]]\ncurrency = \"USD\"\n[[channels.segments.phases]]\nfrom_secs = 4\nsuccess = 0.3\n[[channels.phases]]\nfrom_secs = 6\nsuccess = 0.9\n[[channels.phases]]\nfrom_secs = 8\nsuccess = 0.5",
            )
            .replace(
                "amount = { min = 100, max = 5000 }",
                "amount = { min = 100, max = 5000 }\n[[payments]]\nmerchant = \"shop\"\ncurrency = \"USD\"\nmethod = \"card\"\namount = 100",
            );
        let scenario = Scenario::parse(Path::new("s.toml"), &text).unwrap();
        let world = world(&config, &scenario, 6_000);
        // 0.95 -> 0.9 is no drop; 0.9 -> 0.5 at 8 s is, for EUR; USD drops at 4 s.
        let drops = world.drops();
        assert_eq!(drops.len(), 2, "{drops:?}");
        assert_eq!(
            (drops[0].from_us, drops[0].to_us, drops[0].kinds.clone()),
            (8_000_000, 12_000_000, vec![true, false])
        );
        assert_eq!(drops[1].segment.as_deref(), Some("currency=USD"));
        assert_eq!(
            (drops[1].from_us, drops[1].kinds.clone()),
            (4_000_000, vec![false, true])
        );
        let tally = run(&world, Strategy::Priority);
        // Priority sends every payment to a first: all of the first 1,000 it hits, and after.
        let (_, usd) = &tally.drops[1];
        assert_eq!(
            (usd.early, usd.early_to_it),
            (REACTION_PAYMENTS, REACTION_PAYMENTS)
        );
        assert!(usd.early_blind > 0 && usd.early_blind < usd.early);
        assert_eq!(usd.later_to_it, usd.later);
        let oracle = run(&world, Strategy::Oracle);
        assert_eq!(oracle.drops[1].1.early_to_it, 0);
    }
}
