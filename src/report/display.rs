//! How figures read in every format: percentages, money in major units, and the redaction of
//! anything that looks like a card number in text that came from the journal.
//!
//! Formatting only: no I/O, and never a float for money. Percentages are rounded half up
//! from the exact fraction, so every format shows the same digits.

use crate::config::iso::minor_unit_exponent;

/// `numerator / denominator` as a percentage with two decimals (`"95.00"`), `None` when the
/// denominator is zero.
pub fn percent(numerator: u64, denominator: u64) -> Option<String> {
    let hundredths = percent_hundredths(numerator, denominator)?;
    Some(format!("{}.{:02}", hundredths / 100, hundredths % 100))
}

/// The same percentage in hundredths of a point, rounded half up.
pub fn percent_hundredths(numerator: u64, denominator: u64) -> Option<u128> {
    if denominator == 0 {
        return None;
    }
    let (n, d) = (u128::from(numerator), u128::from(denominator));
    Some((n * 20_000 + d) / (2 * d))
}

/// An amount in minor units shown in major units with the currency's exponent
/// (`1999 EUR` is `"19.99"`, `1999 JPY` is `"1999"`); `None` for a currency whose exponent
/// is unknown, which callers then show in minor units, labelled as such.
pub fn major_units(minor: u64, currency: &str) -> Option<String> {
    let exponent = u32::from(minor_unit_exponent(currency)?);
    if exponent == 0 {
        return Some(minor.to_string());
    }
    let scale = 10u64.pow(exponent);
    Some(format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exponent as usize
    ))
}

/// An amount for people: `"19.99 EUR"`, or `"1999 minor units of XYZ"` when the currency's
/// exponent is unknown.
pub fn money(minor: u64, currency: &str) -> String {
    match major_units(minor, currency) {
        Some(major) => format!("{major} {currency}"),
        None => format!("{minor} minor units of {currency}"),
    }
}

/// Fewest digits that make a run look like a card number (ISO/IEC 7812 PANs are 12 to 19
/// digits long; 12 keeps the shortest ones out too).
const CARD_DIGITS: usize = 12;

/// Replaces every run of `CARD_DIGITS` or more digits (spaces and dashes between digits
/// allowed, as people type card numbers) with `[redacted]`. Journal text (decline codes,
/// names) comes from PSPs and configs; a report must never carry a card number even if one
/// of them leaked it.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let mut run_digits = 0;
    for c in text.chars() {
        let continues_run = c.is_ascii_digit() || (run_digits > 0 && (c == ' ' || c == '-'));
        if continues_run {
            run.push(c);
            run_digits += usize::from(c.is_ascii_digit());
            continue;
        }
        flush_run(&mut out, &mut run, &mut run_digits);
        out.push(c);
    }
    flush_run(&mut out, &mut run, &mut run_digits);
    out
}

fn flush_run(out: &mut String, run: &mut String, run_digits: &mut usize) {
    // Separators after the last digit belong to the surrounding text, not the number.
    let trailing = run.len() - run.trim_end_matches([' ', '-']).len();
    let tail = run.split_off(run.len() - trailing);
    if *run_digits >= CARD_DIGITS {
        out.push_str("[redacted]");
    } else {
        out.push_str(run);
    }
    out.push_str(&tail);
    run.clear();
    *run_digits = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_half_up_from_the_exact_fraction() {
        assert_eq!(percent(19, 20).as_deref(), Some("95.00"));
        assert_eq!(percent(1, 32).as_deref(), Some("3.13"));
        assert_eq!(percent(2, 3).as_deref(), Some("66.67"));
        assert_eq!(percent(0, 0), None);
    }

    #[test]
    fn money_uses_the_currency_exponent() {
        assert_eq!(money(1999, "EUR"), "19.99 EUR");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(1999, "JPY"), "1999 JPY");
        assert_eq!(money(1999, "BHD"), "1.999 BHD");
        assert_eq!(money(1999, "QQQ"), "1999 minor units of QQQ");
    }

    #[test]
    fn card_numbers_are_redacted_and_short_numbers_kept() {
        assert_eq!(
            redact("card 4111111111111111 declined"),
            "card [redacted] declined"
        );
        assert_eq!(redact("4111 1111 1111 1111"), "[redacted]");
        assert_eq!(redact("4111-1111-1111-1111- x"), "[redacted]- x");
        assert_eq!(redact("code 05 - do not honor"), "code 05 - do not honor");
        assert_eq!(redact("psp_a-2026"), "psp_a-2026");
    }
}
