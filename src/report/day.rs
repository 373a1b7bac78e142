//! The day a report covers: a UTC calendar date parsed from `YYYY-MM-DD`, and the journal's
//! millisecond bounds of it.
//!
//! Pure arithmetic, no clock and no I/O. UTC days are always 24 hours long, so hours are a
//! plain division of the offset into the day.

use std::fmt;

pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;
pub const HOURS: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid date {input:?}: {reason} (expected YYYY-MM-DD, e.g. 2026-11-24)")]
pub struct DayError {
    input: String,
    reason: &'static str,
}

/// A calendar day in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    year: i32,
    month: u8,
    day: u8,
}

impl Day {
    /// Parses exactly `YYYY-MM-DD` (years 1970 to 9999, the journal's epoch onwards).
    pub fn parse(input: &str) -> Result<Day, DayError> {
        let fail = |reason| DayError {
            input: input.to_string(),
            reason,
        };
        let bytes = input.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(fail("wrong shape"));
        }
        let year = digits(&bytes[0..4]).ok_or_else(|| fail("the year is not a number"))?;
        let month = digits(&bytes[5..7]).ok_or_else(|| fail("the month is not a number"))?;
        let day = digits(&bytes[8..10]).ok_or_else(|| fail("the day is not a number"))?;
        if year < 1970 {
            return Err(fail("years before 1970 are not in any journal"));
        }
        if !(1..=12).contains(&month) {
            return Err(fail("no such month"));
        }
        if day < 1 || day > days_in_month(year as i32, month as u8) as u32 {
            return Err(fail("no such day in that month"));
        }
        Ok(Day {
            year: year as i32,
            month: month as u8,
            day: day as u8,
        })
    }

    /// First millisecond of the day, in the journal's clock (Unix epoch, UTC).
    pub fn start_ms(self) -> i64 {
        days_since_epoch(self.year, self.month, self.day) * MS_PER_DAY
    }

    /// First millisecond after the day.
    pub fn end_ms(self) -> i64 {
        self.start_ms() + MS_PER_DAY
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, &b| {
        b.is_ascii_digit().then(|| value * 10 + u32::from(b - b'0'))
    })
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Leap years in 1..=year (Gregorian rule, extended backwards).
fn leap_years_through(year: i32) -> i64 {
    let y = i64::from(year);
    y / 4 - y / 100 + y / 400
}

fn days_since_epoch(year: i32, month: u8, day: u8) -> i64 {
    let whole_years =
        365 * i64::from(year - 1970) + leap_years_through(year - 1) - leap_years_through(1969);
    let whole_months: i64 = (1..month).map(|m| i64::from(days_in_month(year, m))).sum();
    whole_years + whole_months + i64::from(day) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days_map_to_epoch_milliseconds() {
        // Reference values from `date -u -d 2026-11-24 +%s`.
        let cases = [
            ("1970-01-01", 0),
            ("2000-03-01", 951_868_800),
            ("2024-02-29", 1_709_164_800),
            ("2026-11-24", 1_795_478_400),
        ];
        for (text, seconds) in cases {
            let day = Day::parse(text).unwrap();
            assert_eq!(day.start_ms(), seconds * 1000, "{text}");
            assert_eq!(day.to_string(), text);
        }
    }

    #[test]
    fn malformed_dates_are_refused() {
        for text in [
            "",
            "2026-1-24",
            "2026/11/24",
            "2026-13-01",
            "2026-02-29",
            "2026-11-31",
            "24-11-2026",
            "1969-12-31",
            "2026-11-2x",
            "+026-11-24",
        ] {
            assert!(Day::parse(text).is_err(), "{text}");
        }
    }
}
