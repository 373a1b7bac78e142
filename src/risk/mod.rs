//! Risk rules, checked before routing: amount bounds, blocked BIN prefixes and countries, and
//! velocity limits per merchant or per card over a window. Global rules (`[risk]`) apply
//! first, then the merchant's own (`[merchants.risk]`).
//!
//! A card is known here only by its fingerprint, a keyed hash (HMAC-SHA256, key from
//! `PAYGATE_FINGERPRINT_KEY`, else random per process) of its number: the number itself is
//! never stored. A payment is counted toward velocity only when every rule passed. This
//! module never routes or answers: it returns the name of the rule that refused.

mod velocity;

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Risk, VelocityScope};
use velocity::VelocityWindow;

/// Keys tracked for velocity at most; beyond, new cards and merchants are not tracked until
/// idle ones are swept (a bounded memory beats an unbounded one under a card-testing attack).
const MAX_TRACKED: usize = 1_000_000;

/// What risk needs to know about a payment.
pub struct Facts<'a> {
    pub merchant: &'a str,
    pub amount: u64,
    pub country: Option<&'a str>,
    pub card_number: Option<&'a str>,
}

/// Rule name that refused the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

/// A velocity window's identity: rule name, and merchant or card fingerprint.
type Key = (String, String);

pub struct RiskState {
    fingerprint_key: Vec<u8>,
    started: Instant,
    windows: DashMap<Key, Arc<VelocityWindow>>,
}

impl RiskState {
    pub fn new() -> Self {
        let fingerprint_key = match std::env::var("PAYGATE_FINGERPRINT_KEY") {
            Ok(key) if !key.is_empty() => key.into_bytes(),
            _ => {
                let key: [u8; 32] = rand::random();
                key.to_vec()
            }
        };
        Self {
            fingerprint_key,
            started: Instant::now(),
            windows: DashMap::new(),
        }
    }

    /// The card's fingerprint: hex of the first 16 bytes of HMAC-SHA256(key, number).
    pub fn fingerprint(&self, card_number: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.fingerprint_key) else {
            return String::new();
        };
        mac.update(card_number.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Checks the global rules, then the merchant's; counts the payment when both pass.
    pub fn assess(&self, rules: [&Risk; 2], payment: &Facts<'_>) -> Result<(), Rejection> {
        let now = self.started.elapsed().as_millis() as u64;
        let fingerprint = payment.card_number.map(|n| self.fingerprint(n));
        for risk in rules {
            check_static(risk, payment)?;
            for rule in &risk.velocity {
                let Some(key) = velocity_key(
                    rule.per,
                    &rule.name,
                    payment.merchant,
                    fingerprint.as_deref(),
                ) else {
                    continue;
                };
                let window_ms = rule.window.as_millis() as u64;
                let (count, amount) = self
                    .windows
                    .get(&key)
                    .map_or((0, 0), |w| w.totals(now, window_ms));
                let over_count = rule.max_count.is_some_and(|max| count + 1 > max);
                let over_amount = rule
                    .max_amount
                    .is_some_and(|max| amount + payment.amount > max);
                if over_count || over_amount {
                    return Err(Rejection(rule.name.clone()));
                }
            }
        }
        self.count(rules, payment, fingerprint.as_deref(), now);
        Ok(())
    }

    fn count(&self, rules: [&Risk; 2], payment: &Facts<'_>, fingerprint: Option<&str>, now: u64) {
        for rule in rules.iter().flat_map(|r| &r.velocity) {
            let Some(key) = velocity_key(rule.per, &rule.name, payment.merchant, fingerprint)
            else {
                continue;
            };
            let window_ms = rule.window.as_millis() as u64;
            if let Some(window) = self.windows.get(&key) {
                window.add(now, window_ms, payment.amount);
                continue;
            }
            if self.windows.len() < MAX_TRACKED {
                self.windows
                    .entry(key)
                    .or_default()
                    .add(now, window_ms, payment.amount);
            }
        }
    }

    /// Drops windows with nothing left in them; `longest` is the longest velocity window.
    pub fn sweep(&self, longest: std::time::Duration) -> usize {
        let now = self.started.elapsed().as_millis() as u64;
        let before = self.windows.len();
        self.windows
            .retain(|_, w| !w.is_idle(now, longest.as_millis() as u64));
        before.saturating_sub(self.windows.len())
    }
}

impl Default for RiskState {
    fn default() -> Self {
        Self::new()
    }
}

fn velocity_key(
    per: VelocityScope,
    rule: &str,
    merchant: &str,
    fingerprint: Option<&str>,
) -> Option<Key> {
    let subject = match per {
        VelocityScope::Merchant => merchant.to_string(),
        VelocityScope::Card => fingerprint?.to_string(),
    };
    Some((rule.to_string(), subject))
}

fn check_static(risk: &Risk, payment: &Facts<'_>) -> Result<(), Rejection> {
    if risk.min_amount.is_some_and(|min| payment.amount < min) {
        return Err(Rejection("min_amount".into()));
    }
    if risk.max_amount.is_some_and(|max| payment.amount > max) {
        return Err(Rejection("max_amount".into()));
    }
    if let Some(number) = payment.card_number
        && risk
            .blocked_bins
            .iter()
            .any(|bin| number.starts_with(bin.as_str()))
    {
        return Err(Rejection("blocked_bin".into()));
    }
    if let Some(country) = payment.country
        && risk.blocked_countries.iter().any(|c| c == country)
    {
        return Err(Rejection("blocked_country".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Velocity;
    use std::time::Duration;

    fn facts<'a>(amount: u64, card: &'a str) -> Facts<'a> {
        Facts {
            merchant: "m",
            amount,
            country: Some("DE"),
            card_number: Some(card),
        }
    }

    #[test]
    fn static_rules_name_themselves() {
        let state = RiskState::new();
        let global = Risk {
            blocked_countries: vec!["DE".into()],
            ..Risk::default()
        };
        let merchant = Risk {
            min_amount: Some(100),
            blocked_bins: vec!["400000".into()],
            ..Risk::default()
        };
        let none = Risk::default();
        let reject = |rules, f| state.assess(rules, &f).unwrap_err().0;
        assert_eq!(
            reject([&global, &none], facts(500, "4111111111111111")),
            "blocked_country"
        );
        assert_eq!(
            reject([&none, &merchant], facts(50, "4111111111111111")),
            "min_amount"
        );
        assert_eq!(
            reject([&none, &merchant], facts(500, "4000001234567899")),
            "blocked_bin"
        );
        assert!(
            state
                .assess([&none, &merchant], &facts(500, "4111111111111111"))
                .is_ok()
        );
    }

    #[test]
    fn velocity_per_card_counts_only_accepted_payments() {
        let state = RiskState::new();
        let risk = Risk {
            velocity: vec![Velocity {
                name: "card-3-per-hour".into(),
                per: VelocityScope::Card,
                window: Duration::from_secs(3600),
                max_count: Some(3),
                max_amount: Some(1_000),
            }],
            ..Risk::default()
        };
        let none = Risk::default();
        let card = "4111111111111111";
        for _ in 0..3 {
            assert!(state.assess([&none, &risk], &facts(100, card)).is_ok());
        }
        assert_eq!(
            state
                .assess([&none, &risk], &facts(100, card))
                .unwrap_err()
                .0,
            "card-3-per-hour"
        );
        // Another card is not affected; an amount over the cap is refused alone.
        assert!(
            state
                .assess([&none, &risk], &facts(100, "5555555555554444"))
                .is_ok()
        );
        assert!(
            state
                .assess([&none, &risk], &facts(2_000, "4242424242424242"))
                .is_err()
        );
        assert!(
            state
                .assess([&none, &risk], &facts(900, "4242424242424242"))
                .is_ok()
        );
    }

    #[test]
    fn fingerprints_are_keyed_and_never_the_number() {
        let state = RiskState::new();
        let print = state.fingerprint("4111111111111111");
        assert_eq!(print.len(), 32);
        assert!(!print.contains("4111111111111111"));
        assert_eq!(print, state.fingerprint("4111111111111111"));
        assert_ne!(
            print,
            RiskState::new().fingerprint("4111111111111111"),
            "random key per process"
        );
    }
}
