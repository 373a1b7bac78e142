//! Decline codes: paygate's normalized codes, each dialect's shipped table from the PSP's
//! own codes to them, and which normalized codes are soft (another channel may approve).
//!
//! Owns the vocabulary that the daily report, metrics and `retryable_codes` speak; the PSP's
//! raw code is kept beside the normalized one on the attempt. Must not decide failover
//! itself: the channel's `retryable_codes` (defaulting to [`soft_codes`]) does.

use std::collections::HashMap;

use crate::config::Protocol;

/// Every normalized code, with whether it is soft: a decline a different acquirer or a later
/// try may approve, with nothing charged now.
pub const NORMALIZED: &[(&str, bool)] = &[
    ("card_declined", false),
    ("insufficient_funds", false),
    ("do_not_honor", false),
    ("expired_card", false),
    ("incorrect_cvc", false),
    ("incorrect_number", false),
    ("invalid_expiry", false),
    ("invalid_amount", false),
    ("lost_or_stolen", false),
    ("fraud_suspected", false),
    ("blocked", false),
    ("not_permitted", false),
    ("limit_exceeded", false),
    ("authentication_required", false),
    ("duplicate_transaction", false),
    ("card_not_supported", true),
    ("currency_not_supported", true),
    ("issuer_unavailable", true),
    ("acquirer_error", true),
    ("processing_error", true),
    ("try_again_later", true),
];

/// What an unlisted raw code of a real PSP becomes (the raw code stays on the attempt).
pub const FALLBACK: &str = "card_declined";

/// Stripe's `decline_code` and `code` values (docs.stripe.com/declines/codes).
const STRIPE: &[(&str, &str)] = &[
    ("generic_decline", "card_declined"),
    ("card_declined", "card_declined"),
    ("no_action_taken", "card_declined"),
    ("testmode_decline", "card_declined"),
    ("new_account_information_available", "card_declined"),
    ("insufficient_funds", "insufficient_funds"),
    ("do_not_honor", "do_not_honor"),
    ("call_issuer", "do_not_honor"),
    ("do_not_try_again", "do_not_honor"),
    ("expired_card", "expired_card"),
    ("incorrect_cvc", "incorrect_cvc"),
    ("invalid_cvc", "incorrect_cvc"),
    ("incorrect_number", "incorrect_number"),
    ("invalid_number", "incorrect_number"),
    ("invalid_account", "incorrect_number"),
    ("invalid_expiry_month", "invalid_expiry"),
    ("invalid_expiry_year", "invalid_expiry"),
    ("invalid_amount", "invalid_amount"),
    ("amount_too_large", "invalid_amount"),
    ("amount_too_small", "invalid_amount"),
    ("lost_card", "lost_or_stolen"),
    ("stolen_card", "lost_or_stolen"),
    ("fraudulent", "fraud_suspected"),
    ("merchant_blacklist", "fraud_suspected"),
    ("pickup_card", "blocked"),
    ("restricted_card", "blocked"),
    ("security_violation", "blocked"),
    ("transaction_not_allowed", "not_permitted"),
    ("not_permitted", "not_permitted"),
    ("service_not_allowed", "not_permitted"),
    ("revocation_of_authorization", "not_permitted"),
    ("stop_payment_order", "not_permitted"),
    ("card_velocity_exceeded", "limit_exceeded"),
    ("withdrawal_count_limit_exceeded", "limit_exceeded"),
    ("authentication_required", "authentication_required"),
    ("offline_pin_required", "authentication_required"),
    ("online_or_offline_pin_required", "authentication_required"),
    ("duplicate_transaction", "duplicate_transaction"),
    ("card_not_supported", "card_not_supported"),
    ("currency_not_supported", "currency_not_supported"),
    ("issuer_not_available", "issuer_unavailable"),
    ("processing_error", "processing_error"),
    ("reenter_transaction", "try_again_later"),
    ("try_again_later", "try_again_later"),
    ("approve_with_id", "try_again_later"),
];

/// Adyen's `refusalReasonCode` values and the `refusalReason` / notification `reason` texts
/// (docs.adyen.com/development-resources/refusal-reasons), matched without regard to case.
const ADYEN: &[(&str, &str)] = &[
    ("2", "card_declined"),
    ("refused", "card_declined"),
    ("3", "do_not_honor"),
    ("referral", "do_not_honor"),
    ("4", "acquirer_error"),
    ("acquirer error", "acquirer_error"),
    ("5", "blocked"),
    ("blocked card", "blocked"),
    ("6", "expired_card"),
    ("expired card", "expired_card"),
    ("7", "invalid_amount"),
    ("invalid amount", "invalid_amount"),
    ("8", "incorrect_number"),
    ("invalid card number", "incorrect_number"),
    ("9", "issuer_unavailable"),
    ("issuer unavailable", "issuer_unavailable"),
    ("10", "card_not_supported"),
    ("not supported", "card_not_supported"),
    ("11", "authentication_required"),
    ("3d not authenticated", "authentication_required"),
    ("12", "insufficient_funds"),
    ("not enough balance", "insufficient_funds"),
    ("14", "fraud_suspected"),
    ("acquirer fraud", "fraud_suspected"),
    ("15", "card_declined"),
    ("cancelled", "card_declined"),
    ("16", "card_declined"),
    ("shopper cancelled", "card_declined"),
    ("17", "not_permitted"),
    ("invalid pin", "not_permitted"),
    ("18", "blocked"),
    ("pin tries exceeded", "blocked"),
    ("19", "processing_error"),
    ("pin validation not possible", "processing_error"),
    ("20", "fraud_suspected"),
    ("fraud", "fraud_suspected"),
    ("21", "processing_error"),
    ("not submitted", "processing_error"),
    ("22", "fraud_suspected"),
    ("fraud-cancelled", "fraud_suspected"),
    ("23", "not_permitted"),
    ("transaction not permitted", "not_permitted"),
    ("24", "incorrect_cvc"),
    ("cvc declined", "incorrect_cvc"),
    ("25", "blocked"),
    ("restricted card", "blocked"),
    ("26", "not_permitted"),
    ("revocation of auth", "not_permitted"),
    ("27", "do_not_honor"),
    ("declined non generic", "do_not_honor"),
    ("do not honour", "do_not_honor"),
    ("28", "limit_exceeded"),
    ("withdrawal amount exceeded", "limit_exceeded"),
    ("29", "limit_exceeded"),
    ("withdrawal count exceeded", "limit_exceeded"),
    ("31", "fraud_suspected"),
    ("issuer suspected fraud", "fraud_suspected"),
    ("32", "not_permitted"),
    ("avs declined", "not_permitted"),
    ("33", "authentication_required"),
    ("card requires online pin", "authentication_required"),
    ("38", "authentication_required"),
    ("authentication required", "authentication_required"),
    ("40", "try_again_later"),
    ("42", "authentication_required"),
    ("46", "blocked"),
];

/// Whether `code` is one of paygate's normalized codes.
pub fn is_normalized(code: &str) -> bool {
    NORMALIZED.iter().any(|(name, _)| *name == code)
}

/// The normalized codes that are soft: a channel's `retryable_codes` when it lists none. For
/// `paygate-v1`, whose codes are the PSP's own, none (a listed code is retried, no other).
pub fn soft_codes(protocol: Protocol) -> Vec<String> {
    match protocol {
        Protocol::PaygateV1 => Vec::new(),
        Protocol::Stripe | Protocol::Adyen => NORMALIZED
            .iter()
            .filter(|(_, soft)| *soft)
            .map(|(name, _)| (*name).to_string())
            .collect(),
    }
}

/// One channel's mapping: the dialect's shipped table with the channel's overrides on top.
#[derive(Debug, Clone)]
pub struct DeclineTable {
    /// `paygate-v1` speaks normalized codes already: its codes pass through unchanged.
    passthrough: bool,
    codes: HashMap<String, &'static str>,
}

impl DeclineTable {
    /// `overrides` are (raw code, normalized code) pairs the config has validated.
    pub fn new(protocol: Protocol, overrides: &[(String, String)]) -> Self {
        let shipped: &[(&str, &str)] = match protocol {
            Protocol::PaygateV1 => &[],
            Protocol::Stripe => STRIPE,
            Protocol::Adyen => ADYEN,
        };
        let mut codes: HashMap<String, &'static str> = shipped
            .iter()
            .map(|(raw, code)| (raw.to_ascii_lowercase(), *code))
            .collect();
        for (raw, code) in overrides {
            if let Some((name, _)) = NORMALIZED.iter().find(|(name, _)| name == code) {
                codes.insert(raw.to_ascii_lowercase(), name);
            }
        }
        Self {
            passthrough: protocol == Protocol::PaygateV1,
            codes,
        }
    }

    /// The normalized code for a PSP's raw code.
    pub fn normalize(&self, raw: &str) -> String {
        match self.codes.get(&raw.to_ascii_lowercase()) {
            Some(code) => (*code).to_string(),
            None if self.passthrough => raw.to_string(),
            None => FALLBACK.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_code_maps_to_a_normalized_one() {
        for (raw, code) in STRIPE.iter().chain(ADYEN) {
            assert!(is_normalized(code), "{raw} -> {code}");
        }
    }

    #[test]
    fn tables_normalize_with_overrides_and_fallback() {
        let stripe = DeclineTable::new(
            Protocol::Stripe,
            &[("do_not_honor".into(), "try_again_later".into())],
        );
        assert_eq!(stripe.normalize("insufficient_funds"), "insufficient_funds");
        assert_eq!(stripe.normalize("do_not_honor"), "try_again_later");
        assert_eq!(stripe.normalize("something_new"), "card_declined");
        let adyen = DeclineTable::new(Protocol::Adyen, &[]);
        assert_eq!(adyen.normalize("12"), "insufficient_funds");
        assert_eq!(adyen.normalize("Not enough balance"), "insufficient_funds");
        assert_eq!(adyen.normalize("9"), "issuer_unavailable");
        let v1 = DeclineTable::new(Protocol::PaygateV1, &[]);
        assert_eq!(
            v1.normalize("whatever_the_psp_says"),
            "whatever_the_psp_says"
        );
    }

    #[test]
    fn soft_codes_default_only_for_real_dialects() {
        assert!(soft_codes(Protocol::PaygateV1).is_empty());
        let soft = soft_codes(Protocol::Stripe);
        assert!(soft.contains(&"issuer_unavailable".to_string()));
        assert!(!soft.contains(&"insufficient_funds".to_string()));
    }
}
