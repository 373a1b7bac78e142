//! Time as routing sees it: milliseconds since the router started, from the real clock when
//! serving and from a virtual clock in `paygate simulate`, so the same scoring and ejection
//! code runs a million simulated payments in seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub enum Clock {
    Real(Instant),
    /// Set by the simulation driver.
    Virtual(Arc<AtomicU64>),
}

impl Clock {
    pub fn real() -> Self {
        Self::Real(Instant::now())
    }

    pub fn manual() -> Self {
        Self::Virtual(Arc::new(AtomicU64::new(0)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Self::Real(start) => start.elapsed().as_millis() as u64,
            Self::Virtual(now) => now.load(Ordering::Relaxed),
        }
    }

    /// Moves a virtual clock to `ms` (never backwards); a real clock ignores it.
    pub fn advance_to(&self, ms: u64) {
        if let Self::Virtual(now) = self {
            now.fetch_max(ms, Ordering::Relaxed);
        }
    }
}
