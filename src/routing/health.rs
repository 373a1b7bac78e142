//! Outlier ejection of one channel: healthy, ejected for a back-off that grows with each
//! ejection, then probing with a small share of traffic, then healthy again.
//!
//! Only channel faults (5xx, timeouts, resets, refused connections) count here; a declined
//! card is the PSP working, not failing. The state lives in atomics so the hot path reads it
//! without a lock. Must not decide routes: `routing::decide` reads the state and applies the
//! panic rule (never leave a rule with no channel).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::Ejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    Ejected,
    Probing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Ejected => "ejected",
            Self::Probing => "probing",
        }
    }
}

/// Why a channel was ejected, for logs and the explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    ConsecutiveFaults,
    SuccessRate,
}

const HEALTHY: u64 = 0;
const EJECTED: u64 = 1;

#[derive(Default)]
pub struct Health {
    /// `EJECTED` with the time it ends in the high bits, or `HEALTHY`. An ejection that has
    /// run out reads as probing until a call settles it either way.
    word: AtomicU64,
    /// Ejections in the current streak; the back-off is this times the base, capped.
    ejections: AtomicU32,
    /// When the last ejection started; a channel quiet for long starts a new streak.
    last_ejected_ms: AtomicU64,
    consecutive_faults: AtomicU32,
}

fn ejected_until(word: u64) -> Option<u64> {
    (word & 1 == EJECTED).then_some(word >> 1)
}

impl Health {
    pub fn state(&self, now_ms: u64) -> State {
        match ejected_until(self.word.load(Ordering::Acquire)) {
            None => State::Healthy,
            Some(until) if now_ms < until => State::Ejected,
            Some(_) => State::Probing,
        }
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn consecutive_faults(&self) -> u32 {
        self.consecutive_faults.load(Ordering::Relaxed)
    }

    /// A call that reached the PSP and got an answer (approved or declined). Ends probing.
    /// An answer that arrives while the channel is still ejected belongs to a call sent before
    /// the ejection: it proves nothing about the channel now and restores nothing.
    pub fn on_answer(&self, now_ms: u64) {
        self.consecutive_faults.store(0, Ordering::Relaxed);
        let word = self.word.load(Ordering::Acquire);
        if matches!(ejected_until(word), Some(until) if now_ms >= until) {
            let _ = self
                .word
                .compare_exchange(word, HEALTHY, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A channel fault. Returns the cause when this fault ejected the channel.
    pub fn on_fault(&self, now_ms: u64, settings: &Ejection) -> Option<Cause> {
        let faults = self.consecutive_faults.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.state(now_ms) == State::Probing;
        if probing || faults >= settings.consecutive_faults {
            return self
                .eject(now_ms, settings)
                .then_some(Cause::ConsecutiveFaults);
        }
        None
    }

    /// Ejects unless already ejected; true when this call did it.
    pub fn eject(&self, now_ms: u64, settings: &Ejection) -> bool {
        let word = self.word.load(Ordering::Acquire);
        if matches!(ejected_until(word), Some(until) if now_ms < until) {
            return false;
        }
        // Healthy for twice the longest back-off: the earlier trouble is forgiven, as Envoy
        // lowers its ejection multiplier while a host stays healthy.
        let quiet = now_ms.saturating_sub(self.last_ejected_ms.load(Ordering::Relaxed))
            > settings.max_ms.saturating_mul(2);
        let streak = if quiet {
            0
        } else {
            self.ejections.load(Ordering::Relaxed)
        };
        let times = streak.saturating_add(1);
        let backoff = settings
            .base_ms
            .saturating_mul(u64::from(times))
            .min(settings.max_ms);
        let next = ((now_ms + backoff) << 1) | EJECTED;
        if self
            .word
            .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.ejections.store(times, Ordering::Relaxed);
        self.last_ejected_ms.store(now_ms, Ordering::Relaxed);
        self.consecutive_faults.store(0, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Ejection {
        Ejection {
            consecutive_faults: 3,
            base_ms: 1_000,
            max_ms: 2_500,
            ..Ejection::default()
        }
    }

    #[test]
    fn consecutive_faults_eject_and_back_off_grows() {
        let health = Health::default();
        let s = settings();
        assert_eq!(health.on_fault(0, &s), None);
        health.on_answer(0); // an answer resets the streak
        assert_eq!(health.on_fault(1, &s), None);
        assert_eq!(health.on_fault(2, &s), None);
        assert_eq!(health.on_fault(3, &s), Some(Cause::ConsecutiveFaults));
        assert_eq!(health.state(500), State::Ejected);
        assert_eq!(health.state(1_003), State::Probing);
        // A failed probe ejects again, for twice as long.
        assert_eq!(health.on_fault(1_100, &s), Some(Cause::ConsecutiveFaults));
        assert_eq!(health.state(3_099), State::Ejected);
        assert_eq!(health.state(3_100), State::Probing);
        // A third time would be 3 s; the cap holds it at 2.5 s.
        assert_eq!(health.on_fault(3_100, &s), Some(Cause::ConsecutiveFaults));
        assert_eq!(health.state(5_599), State::Ejected);
        assert_eq!(health.state(5_600), State::Probing);
        // An answer while still ejected (a call from before) restores nothing ...
        health.on_answer(5_599);
        assert_eq!(health.state(5_599), State::Ejected);
        // ... a successful probe does.
        health.on_answer(5_600);
        assert_eq!(health.state(5_600), State::Healthy);
        assert_eq!(health.ejections(), 3);
        // Long after, a new ejection starts again from the base back-off.
        for t in 0..3 {
            health.on_fault(60_000 + t, &s);
        }
        assert_eq!(health.state(60_002 + 999), State::Ejected);
        assert_eq!(health.state(60_002 + 1_000), State::Probing);
    }
}
